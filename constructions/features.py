"""An MLP then linear self-attention: GD on features (von Oswald et al. 2023, Prop. 2).

Notation: B batch, n context examples, m queries, d input dim, k features, h hidden units,
D = d + k + 1 residual width, L = steps + 1 layers.  Feature map
``m(x) = W_out relu(W_in x + b_in)`` (``W_in [h, d]``, ``b_in [h]``, ``W_out [k, h]``); loss on
the features ``L_m(w) = 1/(2n) sum_i (w.m(x_i) - y_i)^2``, ``w_0 = 0``, ``w <- w - lr grad L_m(w)``.

Token layout (von Oswald's ``(x, y)`` with a feature slot):

=========  =======================  ===================
slot       context token i          query token
=========  =======================  ===================
``x``      x_i                      x_q
``f``      0, then m(x_i)           0, then m(x_q)
``y``      y_i - w_t.m(x_i)         -w_t.m(x_q)
=========  =======================  ===================

Block 0 (the *prefix*: ``Construction.n_prefix = 1``) is the feature MLP alone; blocks 1..L-1
are the GD layers of :func:`constructions.parts.gd_head` reading the feature slot.  The readout
is ``-y`` of the query.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from verify import baselines
from verify.claims import LAM, LR, Claim, Outcome, Part, Proof
from verify.knobs import ridge_lam, stable_lr
from verify.prompts import PromptSpec
from verify.reference import GD, KernelStep, OnFeatures, relu_feature_bound, relu_features

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .registry import Bench, Paper, Result, register, register_paper
from .spec import BlockSpec


def random_relu_features(d: int, k: int, seed: int = 0, scale: float = 1.0) -> dict:
    """Random ReLU features ``m(x) = relu(W x + b)`` with ``W ~ N(0, scale^2/d)`` ``[k, d]`` and
    ``b ~ U(-scale, scale)`` (``W_out = I_k``), as plain lists (the ``features`` of
    :func:`feature_gd`).  Rahimi and Recht's random features with the ReLU."""
    d, k = parts.positive_int(d, "d"), parts.positive_int(k, "k")
    scale = parts.real(scale, "scale")
    seed = parts.seed(seed)
    parts.budget("random_relu_features", layers=1, width=d, mlp=k, heads=0)  # before drawing k x d weights
    rng = np.random.default_rng(seed)
    W = rng.normal(size=(k, d)) * scale / np.sqrt(d)
    b = rng.uniform(-scale, scale, size=k)
    return dict(W_in=W.tolist(), b_in=b.tolist(), W_out=np.eye(k).tolist())


def relu_polynomial_features(d: int, degree: int, knots: int = 8, bound: float = 1.0) -> dict:
    """A polynomial basis from ReLUs on ``[-bound, bound]``: for every coordinate j and power
    ``p = 1..degree`` the feature ``m_{j,p}(x)`` is the piecewise-linear interpolant of ``x_j^p``
    at the knots ``u_k = k h`` and ``-u_k`` (``h = bound/knots``, k = 0..knots).  On ``[0, bound]``
    ``x^p`` is convex and 0 at 0, so its interpolant is ``sum_k (s_k - s_{k-1}) relu(x - u_k)`` with
    slopes ``s_k`` rising (``s_{-1} = 0``): every term has one sign; on ``[-bound, 0]`` it is
    ``(-1)^p`` times the same in ``relu(-x - u_k)``.  So at any x the terms do not cancel and the
    features round like their values.  On the interval
    ``|m_{j,p}(x) - x_j^p| <= h^2 p (p-1) bound^(p-2)/8`` (the interpolation error of a function with
    ``|f''| <= p(p-1) bound^(p-2)``); outside it the features continue linearly.  ``k = d * degree``
    features, ``2 d knots`` hidden units, as plain lists (the ``features`` of :func:`feature_gd`)."""
    d, degree, K = parts.positive_int(d, "d"), parts.positive_int(degree, "degree"), parts.positive_int(knots, "knots")
    bound = parts.real(bound, "bound")
    parts.budget("relu_polynomial_features", layers=1, width=d, mlp=2 * d * K, heads=0)
    u = np.arange(K + 1) * (bound / K)
    W_in = np.zeros((2 * d * K, d))
    b_in = np.zeros(2 * d * K)
    W_out = np.zeros((d * degree, 2 * d * K))
    for j in range(d):
        pos, neg = slice(2 * j * K, (2 * j + 1) * K), slice((2 * j + 1) * K, (2 * j + 2) * K)
        W_in[pos, j], W_in[neg, j] = 1.0, -1.0
        b_in[pos] = b_in[neg] = -u[:-1]
        for p in range(1, degree + 1):
            slope = np.diff(u**p) / np.diff(u)
            rise = np.diff(np.concatenate([[0.0], slope]))  # >= 0: x^p is convex on [0, bound]
            W_out[j * degree + p - 1, pos] = rise
            W_out[j * degree + p - 1, neg] = (-1) ** p * rise
    return dict(W_in=W_in.tolist(), b_in=b_in.tolist(), W_out=W_out.tolist())


def _features(features, d: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    if not isinstance(features, dict) or set(features) != {"W_in", "b_in", "W_out"}:
        raise ConstructionError("features must be a dict with keys W_in [h, d], b_in [h], W_out [k, h] (e.g. "
                                "constructions.features.random_relu_features(d, k))")
    W_in = parts.real_array(features["W_in"], "features['W_in']")
    b_in = parts.real_array(features["b_in"], "features['b_in']")
    W_out = parts.real_array(features["W_out"], "features['W_out']")
    if W_in.ndim != 2 or W_in.shape[1] != d or b_in.shape != (W_in.shape[0],) or W_out.ndim != 2 \
            or W_out.shape[1] != W_in.shape[0]:
        raise ConstructionError(f"features: expected W_in [h, {d}], b_in [h], W_out [k, h]; got W_in {W_in.shape}, "
                                f"b_in {b_in.shape}, W_out {W_out.shape}")
    return W_in, b_in, W_out


def feature_gd(d: int, steps: int, lr: float, features=None, k: int = 16, seed: int = 0, lam: float = 0.0) -> Construction:
    """A ReLU MLP writes features m(x) into every token; each following LSA layer is one GD step
    on the feature regression.

    **Theorem** (von Oswald et al. 2023, Prop. 2, §3.4).  If a first block maps every token to
    ``(x, m(x), y)``, then after LSA layer t the query readout equals ``m(x_q) . w_t``, where
    ``w_t`` is GD on ``L_m(w) = 1/(2n) sum_i (w.m(x_i) - y_i)^2`` from ``w_0 = 0`` with step
    ``lr``.  After one layer the prediction is the kernel smoother
    ``(lr/n) sum_i y_i k(x_i, x_q)`` with ``k(x, x') = m(x).m(x')`` (the paper's App. A.8 writes
    the identity without the factor lr/n).

    **Proof sketch.**  The MLP is token-local, so block 0 writes ``m(x_j)`` into the ``f`` slot of
    every token, queries included, and leaves ``y`` untouched.  From then on the GD head of
    :func:`constructions.parts.gd_head` with ``P = lr I_k`` reads ``f`` where Prop. 1 reads x:
    its induction (``vonoswald23-prop1``) holds with ``m(x)`` in place of x.  Checked in exact
    rational arithmetic with every feature unit open and closed (``icl-verify prove
    vonoswald23-prop2``).

    **Paper mapping.**  The paper's MLP is trained; here ``features`` is any one-hidden-layer
    ReLU map ``m(x) = W_out relu(W_in x + b_in)`` (``{"W_in": [h, d], "b_in": [h], "W_out": [k, h]}``),
    or, by default, k random ReLU features (:func:`random_relu_features` with ``seed``).  The
    second named family, :func:`relu_polynomial_features`, is the ReLU interpolant of the monomials
    ``x_j^p`` on a bounded interval (within ``h^2 p(p-1) bound^(p-2)/8`` of them there); GD on
    those features is exact, the features approximate the polynomials.

    **Ridge on the representation** (Guo et al. 2023, in-context learning with representations:
    a fixed ReLU-MLP representation, then ridge regression on it in context).  With ``lam > 0``
    each layer is GD on ``L_m(w) + (lam/2)|w|^2``, which converges to the ridge solution on the
    features ``(M^T M/n + lam I)^{-1} M^T y/n`` (``M = m(X)``): the decay head adds
    ``lr lam (y0_j - y_j)`` to every token's ``y`` (``y0`` keeps the labels; the head's score
    reads a constant ``one`` key, so its mean over the n keys is that value), which is the
    ``-lr lam w`` term of the step (``guo23-representation``).

    **Resources.**  ``steps + 1`` layers (1 MLP block + ``steps`` LSA layers), 1 head of width
    ``k + 1`` (2 heads with ``lam > 0``), width ``d + k + 1`` (``d + k + 3`` with ``lam > 0``),
    MLP width h (k by default), linear attention.

    **Exactness.**  Exact (float64 round-off).

    **Domain.**  ``lr * lambda_max(M^T M/n + lam I) <= 2`` for the feature matrix ``M = m(X)``, per
    prompt; ``lam >= 0``.
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    if features is None:
        features = random_relu_features(d, k, seed)
    W_in, b_in, W_out = _features(features, d)
    k, h = W_out.shape
    parts.budget("feature_gd", layers=steps + 1, width=d + k + (3 if lam else 1), heads=2 if lam else 1, d_head=k + 1,
                 mlp=h)
    lay = parts.lsa_layout(d, ("f", k, "zero"), *((("y0", 1, "y"), ("one", 1, "one")) if lam else ()))
    heads = [parts.gd_head(lay, lr * np.eye(k), x="f")]
    if lam:  # the ridge term -lr lam w as lr lam (y0 - y) on every token's y
        rate = lr * lam
        heads.append(parts.product_head(lay, {"y0": [[rate]], "y": [[-rate]]}, {"one": [[1.0]]}, {"y": [[1.0]]}))
    blocks = [BlockSpec(None, parts.feature_mlp(lay, W_in, b_in, W_out))]
    blocks += [parts.block("linear", heads) for _ in range(steps)]
    step = parts.step_check(lr, lam)
    params = dict(d=d, steps=steps, lr=lr, features=dict(W_in=W_in.tolist(), b_in=b_in.tolist(), W_out=W_out.tolist()))
    if lam:
        params["lam"] = lam

    def domain(X, y, Xq):
        step(torch_features(params["features"], X), y, None)

    return Construction("feature_gd", params, blocks, lay, d, domain=domain, n_prefix=1)


def torch_features(features: dict, X: torch.Tensor) -> torch.Tensor:
    """``m(X)`` in torch, in X's dtype and device (the domain check and the benchmark baseline)."""
    Wi, bi, Wo = (torch.as_tensor(np.asarray(features[k], dtype=np.float64)).to(X) for k in ("W_in", "b_in", "W_out"))
    return torch.relu(X @ Wi.T + bi) @ Wo.T


def _feature_map(c):
    f = c.params["features"]
    return lambda X: relu_features(X, f["W_in"], f["b_in"], f["W_out"])


def _feature_bound(c):
    f = c.params["features"]
    return lambda X: relu_feature_bound(X, f["W_in"], f["b_in"], f["W_out"])


def _drawn(p, k):
    """Features for the prompt, each named family on half of the seeds (random ReLU features;
    the ReLU polynomial basis of degree 1-3 on the prompt's range), and a stable step on them (a
    fraction ``lr_factor`` of the limit; any step when every feature is 0 on the whole batch)."""
    if k.seed % 2:
        bound = max(float(np.abs(p.X).max()), float(np.abs(p.Xq).max()), 1e-3)
        feats = relu_polynomial_features(p.spec.d, 1 + (k.seed // 2) % 3, knots=max(1, k.features // 2), bound=bound)
    else:
        feats = random_relu_features(p.spec.d, k.features, seed=k.seed % 2**31)
    F = relu_features(p.X, feats["W_in"], feats["b_in"], feats["W_out"])
    return feats, stable_lr(F, k.lr_factor) if np.abs(F).max() > 0 else k.lr_factor


def _case(p, k):
    feats, lr = _drawn(p, k)
    c = feature_gd(p.spec.d, k.steps, lr, features=feats)
    return c, OnFeatures(_feature_map(c), GD(k.steps, lr), _feature_bound(c))


def _ridge_case(p, k):
    """feature_gd with a ridge term: lam = ridge_lam of the features, a stable step for it."""
    feats, _ = _drawn(p, k)
    F = relu_features(p.X, feats["W_in"], feats["b_in"], feats["W_out"])
    lam = ridge_lam(F, k.log10_lam) if np.abs(F).max() > 0 else 10.0**k.log10_lam
    lr = stable_lr(F, k.lr_factor, lam)
    c = feature_gd(p.spec.d, k.steps, lr, features=feats, lam=lam)
    return c, OnFeatures(_feature_map(c), GD(k.steps, lr, lam), _feature_bound(c))


def _kernel_case(p, k):
    feats, lr = _drawn(p, k)
    c = feature_gd(p.spec.d, 1, lr, features=feats)
    return c, KernelStep(_feature_map(c), lr, _feature_bound(c))


#: the proof's feature map: small-denominator rationals, d = 2, h = 4 units, k = 3 features
PROOF_FEATURES = dict(W_in=[[1.0, -0.5], [-1.0, 0.5], [0.5, 1.0], [0.25, -1.0]], b_in=[0.25, 0.0, -0.25, 0.5],
                      W_out=[[1.0, 0.0, 0.5, 0.0], [0.0, 1.0, 0.0, -0.5], [0.5, -0.5, 0.0, 1.0]])


def feature_exact() -> Outcome:
    """feature_gd(d=2, 3 steps) equals GD on the features, and after one step the kernel smoother,
    in exact rational arithmetic on random rational prompts, every feature unit open and closed."""
    from verify import exact as ex

    c = feature_gd(2, 3, LR, features=PROOF_FEATURES)
    one = feature_gd(2, 1, LR, features=PROOF_FEATURES)
    ridge = feature_gd(2, 3, LR, features=PROOF_FEATURES, lam=LAM)  # LR * LAM = 3/128: exact in float
    fm = _feature_map(c)
    gates = ex.ReluGates(blocks={0})
    ok = True
    for seed in (0, 1, 2):
        X, y, Xq = ex.rational_prompt(PromptSpec(B=2, n=6, m=2, d=2, seed=seed))
        ok &= ex.trace_equals(c, OnFeatures(fm, GD(3, Fraction(LR))), X, y, Xq, record=gates)
        ok &= ex.trace_equals(one, KernelStep(fm, Fraction(LR)), X, y, Xq)
        ok &= ex.trace_equals(ridge, OnFeatures(fm, GD(3, Fraction(LR), Fraction(LAM))), X, y, Xq)
    if gates.stuck():
        return Outcome(False, f"the proof's prompts are not generic: feature units never switched {gates.stuck()}")
    return Outcome(ok, "feature_gd(d=2, k=3, 3 steps) = GD on m(x) exactly, with lam = 1/8 GD on the ridge objective "
                       "on m(x), and its first layer = the kernel smoother (lr/n) sum_i y_i m(x_i).m(x_q), on 3 rational "
                       "prompts; every feature unit open and closed"
                   if ok else "feature_gd differs from GD on the features in exact arithmetic")


def _baseline(prep, c):
    f = c.params["features"]
    return lambda: baselines.predict(torch_features(f, prep.Xq),
                                     baselines.gd(torch_features(f, prep.X), prep.y, c.steps, lr=c.params["lr"]))


register(
    feature_gd, summary="a ReLU MLP writes features m(x), then one GD step on (m(x_i), y_i) per LSA layer",
    source="von Oswald et al. 2023, Prop. 2", exactness="exact",
    paper_resources='Prop. 2: an MLP block, then one LSA layer per GD step',
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, k=20), baseline=_baseline),
    claims=[
        Claim("vonoswald23-prop2", "von Oswald et al. 2023", "Prop. 2, §3.4",
              "a ReLU MLP block writing m(x) followed by L LSA layers = L GD steps on the least squares of "
              "(m(x_i), y_i); the query readout after layer t is m(x_q).w_t",
              "GD on the features (numpy)", _case, OnFeatures, knobs=dict(features=(1, 12)),
              proof=Proof("exact-rational", (Part("exact feature_gd", feature_exact),))),
        Claim("vonoswald23-prop2-kernel", "von Oswald et al. 2023", "Prop. 2, App. A.8 (kernel view)",
              "after one LSA layer on features the prediction is the kernel smoother (lr/n) sum_i y_i k(x_i, x_q) "
              "with k(x, x') = m(x).m(x')",
              "kernel smoother from the Gram matrix (numpy)", _kernel_case, KernelStep, variant="steps=1",
              knobs=dict(features=(1, 12), steps=1),
              proof=Proof("exact-rational", (Part("exact feature_gd", feature_exact),))),
        Claim("guo23-representation", "Guo et al. 2023", "in-context ridge on a fixed ReLU-MLP representation",
              "a ReLU MLP block writing the representation m(x), then L LSA layers (a GD head and a decay head) = L "
              "GD steps on the ridge objective 1/(2n) sum_i (w.m(x_i) - y_i)^2 + (lam/2)|w|^2, converging to ridge on "
              "the representation; the readout after layer t is m(x_q).w_t",
              "ridge GD on the features (numpy)", _ridge_case, OnFeatures, variant="lam>0",
              knobs=dict(features=(1, 12)),
              proof=Proof("exact-rational", (Part("exact feature_gd", feature_exact),))),
    ],
)

register_paper(Paper(
    "Guo et al. 2023", "How do transformers learn in-context beyond simple functions? A case study on learning with "
                       "representations (arXiv 2310.10616)", (
        Result("ridge on a representation", "a fixed MLP representation, then in-context ridge regression on it by GD "
                                            "layers", ("guo23-representation",)),
    )))

