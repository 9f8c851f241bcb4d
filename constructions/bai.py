"""Bai et al. 2023, "Transformers as Statisticians": ReLU-attention constructions and their claims.

Notation: B batch, n context examples (N in the paper), m queries, d input dim, D residual
width, L layers.  Architecture (Bai Defs. 1-3): ReLU attention divided by n,
``h_i <- h_i + sum_heads (1/n) sum_j relu(q_i.k_j) v_j``, summed over *all* tokens (no
attention mask: the query is excluded by a gate inside the ReLU), then an optional ReLU MLP.

Token layout (Bai's ``[x; y'; w; scratch; 1; t]``):

=========  ==========================  ==================
slot       context token i             query token
=========  ==========================  ==================
``x``      x_i                         x_q
``y``      y_i                         0 (prediction written here)
``w``      w_t (replicated iterate)    w_t
``one``    1                           1
``gate``   0                           -1
=========  ==========================  ==================

``gate = t - 1`` is Bai's ``-B(1 - t_j)`` offset divided by B: a head adds ``B * gate_j`` to
its score, an exact 0 on context keys and ``-B`` on query keys, so ``relu`` drops query keys
once B exceeds every score (docs/pitfalls.md #15).  The iterate w is replicated in every
token; the readout block writes ``<w, x_i>`` into every token's ``y`` slot and the
prediction is ``+y`` of the query (Bai's sign, docs/pitfalls.md #1).

Sign split (docs/pitfalls.md #17): a linear score z is carried by two ReLU heads,
``relu(z) v`` and ``relu(-z) (-v)``; their sum is ``z v`` exactly (:func:`parts.sign_split`).
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from verify import baselines
from verify.bounds import slot_matches_iterates
from verify.claims import LAM, LR, MASK, Claim, Outcome, Part, Proof, induction, lemma
from verify.knobs import lasso_lam, masking_constant, ridge_lam, stable_lr
from verify.prompts import Prompt, PromptSpec
from verify.reference import (
    GD, ISTA, BinaryTest, LinkSelect, LogisticGD, PreICLSelect, ProxGD, Ridge, RidgeSelect, lasso_objective,
    lasso_solution, sigmoid,
)
from verify.tolerance import Comparison, compare_trace, tolerance

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper
from .spec import BlockSpec, MLPSpec


def _bai_layout(d: int) -> ResidualLayout:
    spec = [("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), ("one", 1, "one"), ("gate", 1, "train_gate")]
    return ResidualLayout.of(spec, Readout("y", 1.0))


def score_bound(X: torch.Tensor, y: torch.Tensor, Xq: torch.Tensor, lam: float) -> torch.Tensor:
    """Per prompt ``max(1, 2 |w*| max_i |x_i|)``: a bound on every gated-out score ``|<x_i, w_t>|``
    of stable GD on ``1/(2n)|Xw - y|^2 + (lam/2)|w|^2`` (w* its ridge / min-norm solution).

    With a stable step, ``w_t = (I - (I - lr A)^t) A^+ b`` so ``|w_t| <= 2 |A^+ b|``
    (A = X^T X/n + lam I, b = X^T y/n)."""
    n, d = X.shape[1], X.shape[2]
    A = X.transpose(1, 2) @ X / n + lam * torch.eye(d, dtype=X.dtype, device=X.device)
    b = (X.transpose(1, 2) @ y[..., None] / n)[..., 0]
    w = parts.spd_solve(A, b)
    xmax = torch.cat([X, Xq], 1).norm(dim=-1).max(-1).values
    return torch.clamp(2 * w.norm(dim=-1) * xmax, min=1.0)


def lasso_score_bound(X: torch.Tensor, y: torch.Tensor, Xq: torch.Tensor, lam: float) -> torch.Tensor:
    """ISTA iterates are Fejer-monotone (lr <= 2/L): ``|w_t - w*| <= |w*|``, so ``|w_t| <= 2|w*|``,
    and ``F(w*) <= F(0)`` gives ``|w*|_2 <= |w*|_1 <= |y|^2 / (2 n lam)``.  With lam = 0 this is GD."""
    if lam == 0:
        return score_bound(X, y, Xq, 0.0)
    xmax = torch.cat([X, Xq], 1).norm(dim=-1).max(-1).values
    return torch.clamp((y**2).sum(-1) / (X.shape[1] * lam) * xmax, min=1.0)


# -- factories -------------------------------------------------------------------------------
def relu_gd(d: int, steps: int, lr: float, lam: float = 0.0, mask_const: float = 1e9) -> Construction:
    """Gradient descent with ReLU attention (Bai et al. 2023, Prop. C.2 / Thm 13, square loss).

    **Theorem** (Bai et al. 2023, Prop. C.2 with Cor. C.1 for the l2 term).  After
    step layer t the ``w`` slot of *every* token equals ``w_t`` of GD on
    ``L(w) = 1/(2n)|Xw - y|^2 + (lam/2)|w|^2`` from ``w_0 = 0`` with step ``lr``; the readout
    layer writes ``<w_t, x_q>`` into the query's ``y`` slot, so ``trace()[t-1] = Xq @ w_t``.

    **Proof sketch.**  The two GD heads have scores ``+-(w.x_j - y_j) + B gate_j``: on context
    keys (gate 0) ``relu(z) - relu(-z) = z``, so with values ``-+lr x_j`` they add
    ``-lr (1/n) sum_j (w.x_j - y_j) x_j``; on the query key (gate -1) both scores are ``<= 0``
    once ``B >= |<w, x_q>|``.  The l2 head (score ``1 + B gate_j``, value ``-lr lam w_j``) adds
    ``-lr lam w`` since w is replicated.

    **Resources.**  ``steps + 1`` layers (steps GD layers + 1 readout layer, as Thm 13's
    L + 1); 2 heads per GD layer (3 with ``lam > 0``), 2 in the readout; width ``2d + 3``;
    ReLU attention normalised by n; no MLP.

    **Exactness.**  Exact (float64 round-off), for any ``mask_const`` above the score bound.

    **Domain.**  ``lr * lambda_max(X^T X/n + lam I) <= 2`` and
    ``mask_const >= max(1, 2 |w*| max_i |x_i|)`` (w* the ridge/min-norm solution, which bounds
    every stable iterate by ``|w_t| <= 2 |w*|``).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    mask_const = parts.real(mask_const, "mask_const")
    parts.budget("relu_gd", layers=steps + 1, width=2 * d + 3, heads=3, d_head=d + 2)
    lay = _bai_layout(d)
    heads = parts.relu_gd_heads(lay, lr, mask_const) + ([parts.relu_decay_head(lay, lr * lam, mask_const)] if lam > 0 else [])
    blocks = [parts.block("relu", heads) for _ in range(steps)] + [parts.block("relu", parts.relu_readout_heads(lay, mask_const))]
    domain = parts.all_checks(parts.step_check(lr, lam), parts.mask_check(
        mask_const, lambda X, y, Xq: score_bound(X, y, Xq, lam), "2 |w*| max|x_i|"))
    return Construction("relu_gd", dict(d=d, steps=steps, lr=lr, lam=lam, mask_const=mask_const), blocks, lay, d,
                        n_readout=1, mask_query=False, domain=domain)


def _decoder_layout(d: int) -> ResidualLayout:
    spec = [("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), ("one", 1, "one"), ("pred", 1, "zero")]
    return ResidualLayout.of(spec, Readout("pred", 1.0))


DECODER_ATTENTION = ("relu", "linear")


def decoder_gd(d: int, steps: int, lr: float, attention: str = "relu") -> Construction:
    """GD at every prefix: a decoder (causal) transformer predicting each y_i from the examples
    before it (Bai et al. 2023, App. B, Prop. B.1: the decoder version of ICGD, square loss).

    **Theorem** (Bai et al. 2023, Prop. B.1; the layout and the self-attending readout are ours: the
    text of App. B was not available when this was written, so what is stated and checked is the
    decoder form of ICGD with the normalisation ``1/((i-1) v 1)``, not the paper's own weights).  On a prompt ``(x_1, y_1), ...,
    (x_n, y_n)`` followed by queries, after step layer t the ``w`` slot of context token i
    (1-based) is the GD iterate ``w_t`` on the ``i - 1`` examples before it,
    ``L_i(w) = 1/(2 ((i-1) v 1)) sum_{j<i} (w.x_j - y_j)^2``, from ``w_0 = 0`` (so 0 at i = 1); the
    ``w`` slot of every query is GD's ``w_t`` on all n examples.  The readout layer writes
    ``<w, x>`` of every token into its ``pred`` slot: at context token i the prediction of y_i from
    the examples before it, at a query the prediction from all n (``trace()``, as for
    :func:`relu_gd`).  :func:`prefix_predictions` reads every position.

    **Proof sketch.**  Each step layer is strictly causal attention (token i sees the context keys
    j < i, queries see all n) whose divisor is the number of keys a row sees, at least 1
    (``divisor="keys"``: Bai's ``1/((i-1) v 1)``).  Its score is ``(w_i, -1).(x_j, y_j) = w_i.x_j -
    y_j`` and its value ``-lr x_j`` (``attention="linear"``: one head; ``"relu"``: the sign split
    ``relu(z) - relu(-z) = z``, two heads), which adds ``-lr grad L_i(w_i)`` to token i's own
    iterate.  The readout head is a ``"self"`` head (each token attends to itself only, a sliding
    window of one token): score ``w_i.x_i``, value 1, into ``pred``.  No gate or masking constant
    is needed: the masks, not a large score offset, keep queries and later tokens out.

    **Resources.**  ``steps + 1`` layers; 1 head per layer (linear) or 2 (ReLU); width ``2d + 3``;
    no MLP.

    **Exactness.**  Exact (float64 round-off).

    **Domain.**  GD is stable on every prefix: ``lr * lambda_max(X_{<i}^T X_{<i}/((i-1) v 1)) <= 2``
    for every i (:func:`constructions.parts.prefix_step_check`; a prefix of one example has
    curvature ``|x_1|^2``, so a step stable for the whole prompt can diverge on a short prefix).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr = parts.real(lr, "lr")
    if not isinstance(attention, str) or attention not in DECODER_ATTENTION:
        raise ConstructionError(f"attention must be one of {DECODER_ATTENTION}, got {attention!r}")
    parts.budget("decoder_gd", layers=steps + 1, width=2 * d + 3, heads=2, d_head=d + 1)
    lay = _decoder_layout(d)
    gd = parts.bilinear_heads(lay, {"w": np.eye(d, d + 1), "one": -np.eye(d + 1)[d:]},
                              {"x": np.eye(d, d + 1), "y": np.eye(d + 1)[d:]}, {"x": np.eye(d)}, {"w": -lr * np.eye(d)},
                              d + 1, attention)
    readout = parts.bilinear_heads(lay, {"w": np.eye(d)}, {"x": np.eye(d)}, {"one": [[1.0]]}, {"pred": [[1.0]]}, d,
                                   attention)
    blocks = [parts.block(attention, gd, causal="strict", divisor="keys") for _ in range(steps)]
    blocks.append(parts.block(attention, readout, causal="self", divisor="keys"))
    return Construction("decoder_gd", dict(d=d, steps=steps, lr=lr, attention=attention), blocks, lay, d, n_readout=1,
                        domain=parts.prefix_step_check(lr))


def prefix_predictions(c: Construction, X, y, Xq, check: bool = True):
    """The ``pred`` slot of every token after the last layer, ``[B, n + m]`` (unbatched ``[n + m]``):
    for :func:`decoder_gd`, position i's prediction of y_i from the examples before it, then the
    queries' predictions from all n."""
    if "pred" not in c.layout:
        raise ConstructionError(f"{c.name} has no pred slot; prefix_predictions reads decoder_gd's")
    return c.residuals(X, y, Xq, check)[-1, ..., c.layout["pred"].start]


def prefix_gd(X, y, steps: int, lr) -> tuple[np.ndarray, np.ndarray]:
    """GD on each prefix ``X[:, :i]`` (i = 0..n-1; i = 0 is the empty prefix, whose iterate stays
    0) by the reference :class:`verify.reference.GD` (floats or Fractions): the iterates
    ``[steps + 1, B, n, d]`` and their magnitudes ``[steps + 1, B, n]`` (``GD.magnitude_``)."""
    X, y = np.asarray(X), np.asarray(y)
    B, n, d = X.shape
    ws, mags = np.zeros((steps + 1, B, n, d), dtype=X.dtype), np.zeros((steps + 1, B, n), dtype=X.dtype)
    if X.dtype == object:
        ws[...], mags[...] = Fraction(0), Fraction(0)
    for i in range(1, n):
        ref = GD(steps, lr=lr).fit(X[:, :i], y[:, :i])
        ws[:, :, i], mags[:, :, i] = ref.iterates_, ref.magnitude_
    return ws, mags


def lasso_ista(d: int, steps: int, lr: float, lam: float, mask_const: float = 1e9) -> Construction:
    """LASSO by proximal gradient descent (ISTA) in context (Bai et al. 2023, Thm 10, Prop. C.1).

    **Theorem** (Bai et al. 2023, Thm 10 and App. C, Prop. C.1).  Step layer t maps the replicated
    iterate by ``w <- S_{lr lam}(w - lr grad L0(w))`` with ``L0(w) = 1/(2n)|Xw - y|^2`` and
    ``S_c(v) = sign(v) max(|v| - c, 0)``: its attention is the GD step of :func:`relu_gd` and
    its MLP is the soft threshold ``relu(v - c) - relu(-v - c)`` written residually (4d ReLUs).
    The iterates are ISTA's; for ``lr <= 1/lambda_max(X^T X/n)`` the LASSO objective
    ``F(w) = 1/(2n)|Xw - y|^2 + lam |w|_1`` satisfies ``F(w_L) - F* <= |w*|^2 / (2 lr L)``.

    **Resources.**  ``steps + 1`` layers, 2 heads per layer, MLP width 4d, width ``2d + 3``,
    ReLU attention and ReLU MLP.

    **Exactness.**  Exact per step (float64 round-off); the objective gap falls as O(1/L).

    **Domain.**  ``lr * lambda_max(X^T X/n) <= 2`` and ``mask_const`` above the score bound
    ``max_i |x_i| |y|^2 / (n lam)`` (ISTA is Fejer-monotone, ``|w*|_1 <= |y|^2/(2 n lam)``).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    mask_const = parts.real(mask_const, "mask_const")
    parts.budget("lasso_ista", layers=steps + 1, width=2 * d + 3, heads=2, d_head=d + 2, mlp=4 * d)
    lay = _bai_layout(d)
    mlp = parts.soft_threshold_mlp(lay, lr * lam)
    blocks = [parts.block("relu", parts.relu_gd_heads(lay, lr, mask_const), mlp) for _ in range(steps)]
    blocks.append(parts.block("relu", parts.relu_readout_heads(lay, mask_const)))
    domain = parts.all_checks(parts.step_check(lr), parts.mask_check(
        mask_const, lambda X, y, Xq: lasso_score_bound(X, y, Xq, lam), "|y|^2/(n lam) max|x_i|"))
    return Construction("lasso_ista", dict(d=d, steps=steps, lr=lr, lam=lam, mask_const=mask_const), blocks, lay, d,
                        n_readout=1, mask_query=False, domain=domain)


def prox_shrink(lr: float, lam: float) -> float:
    """The l2 prox's coefficient ``c = lr lam/(1 + lr lam)`` (``w <- (1 - c) w``), one float for the
    construction's weight and the reference."""
    return lr * lam / (1 + lr * lam)


PROXES = ("box", "l2")


def proximal_gd(d: int, steps: int, lr: float, prox: str, param: float, mask_const: float = 1e9) -> Construction:
    """Proximal GD in context beyond l1: projected GD onto a box, or ridge by the l2 prox (Bai et
    al. 2023, App. C, Thm C.1 / Prop. C.1: a proximal step as an MLP after the attention's GD step).

    **Theorem** (Bai et al. 2023, App. C).  Step layer t maps the replicated iterate by
    ``w <- prox(w - lr grad L0(w))``, ``L0(w) = 1/(2n)|Xw - y|^2``: its attention is the GD step of
    :func:`relu_gd`, its MLP the proximal map, exact with ReLUs:

    * ``prox="box"``, ``param = R``: the projection ``clip(w, -R, R)``
      (:func:`constructions.parts.box_projection_mlp`), projected GD on ``{|w|_inf <= R}``;
    * ``prox="l2"``, ``param = lam``: the prox of ``(lam/2)|w|^2``, ``v/(1 + lr lam)``
      (:func:`constructions.parts.shrink_mlp`), whose fixed point is ridge
      ``(X^T X/n + lam I)^{-1} X^T y/n``.

    **Resources.**  ``steps + 1`` layers, 2 heads per layer, MLP width 2d, width ``2d + 3``,
    ReLU attention and ReLU MLP.

    **Exactness.**  Exact (float64 round-off), for any ``mask_const`` above the score bound.

    **Domain.**  ``lr * lambda_max(X^T X/n) <= 2``; ``param > 0`` (R or lam); ``mask_const`` above
    the score bound: ``max(1, sqrt(d) R max_i |x_i|)`` for the box (every iterate is in it), and
    relu_gd's ``max(1, 2 |w*| max_i |x_i|)`` for l2 (the prox-gradient map is nonexpansive, so
    ``|w_t - w*| <= |w*|``).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, param = parts.real(lr, "lr"), parts.real(param, "param")
    mask_const = parts.real(mask_const, "mask_const")
    if not isinstance(prox, str) or prox not in PROXES:
        raise ConstructionError(f"prox must be one of {PROXES}, got {prox!r}")
    parts.budget("proximal_gd", layers=steps + 1, width=2 * d + 3, heads=2, d_head=d + 2, mlp=2 * d)
    lay = _bai_layout(d)
    mlp = parts.box_projection_mlp(lay, param) if prox == "box" else parts.shrink_mlp(lay, prox_shrink(lr, param))
    blocks = [parts.block("relu", parts.relu_gd_heads(lay, lr, mask_const), mlp) for _ in range(steps)]
    blocks.append(parts.block("relu", parts.relu_readout_heads(lay, mask_const)))

    def bound(X, y, Xq):
        if prox == "l2":
            return score_bound(X, y, Xq, param)
        xmax = torch.cat([X, Xq], 1).norm(dim=-1).max(-1).values
        return torch.clamp(np.sqrt(d) * param * xmax, min=1.0)

    domain = parts.all_checks(parts.step_check(lr), parts.mask_check(mask_const, bound, "the iterate's score bound"))
    return Construction("proximal_gd", dict(d=d, steps=steps, lr=lr, prox=prox, param=param, mask_const=mask_const),
                        blocks, lay, d, n_readout=1, mask_query=False, domain=domain)


def sigmoid_knots(heads: int, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Knots ``s_0 = -R < ... < s_{heads-1} = R`` and ReLU coefficients ``a_m`` of the
    piecewise-linear interpolant of the logistic sigmoid, flat outside ``[-R, R]``:
    ``sigma_hat(s) = sigma(-R) + sum_m a_m relu(s - s_m)`` (:func:`constructions.parts.relu_interpolant`).
    Returns (knots, a, sigma(-R))."""
    return parts.relu_interpolant(sigmoid, heads, radius)


logistic_radius = parts.logistic_radius


def _logistic_knots(steps: int, lr: float, x_bound: float, heads: int, lr_name: str = "lr", lam: float = 0.0):
    """``(R, knots, a, sigma(-R))`` for logistic GD's interpolated sigmoid (:func:`sigmoid_knots` on
    ``[-R, R]``, ``R =`` :func:`logistic_radius`), refusing a step beyond ``2 / (x_bound^2/4 + lam)``
    (``8 / x_bound^2`` without the ridge term: the limit of the error bound) and knots that are not
    distinct numbers."""
    if lr * (x_bound * x_bound / 4 + lam) > 2.0:
        limit = 2 / (x_bound * x_bound / 4 + lam)
        raise ConstructionError(f"{lr_name}={lr:.6g} exceeds 2/(x_bound^2/4 + lam)={limit:.6g}, the step limit "
                                "of logistic GD's error bound")
    radius = logistic_radius(steps, lr, x_bound)
    with np.errstate(divide="ignore", invalid="ignore"):  # coinciding knots are refused just below
        knots, a, base = sigmoid_knots(heads, radius)
    if not (np.isfinite(a).all() and np.all(np.diff(knots) > 0)):
        raise ConstructionError(f"the sigmoid's knots on [-R, R], R = steps {lr_name} x_bound^2 = {radius:.3g}, are "
                                f"not distinct numbers; raise {lr_name} or x_bound (R must be a normal float)")
    return radius, knots, a, base


def sigmoid_fit_error(heads: int, radius: float) -> float:
    """``sup_{[-R, R]} |sigma - sigma_hat| <= h^2 max|sigma''| / 8``, ``h = 2R/(heads-1)``,
    ``max|sigma''| = 1/(6 sqrt 3)`` (linear-interpolation error bound)."""
    h = 2 * radius / (heads - 1)
    return h**2 / (8 * 6 * np.sqrt(3))


def logistic_gd(d: int, steps: int, lr: float, heads: int, x_bound: float, mask_const: float = 1e9,
                lam: float = 0.0) -> Construction:
    """GD on the logistic loss with the sigmoid replaced by a sum of ``heads`` ReLUs (Bai et al. 2023, Thm 13).

    **Theorem** (Bai et al. 2023, Thm 13; the GLM results, Thms 7-8).  Labels ``y_i in {0, 1}``;
    loss ``l(s, y) = -y s + log(1 + e^s)``, ``d l/ds = sigma(s) - y``.  The construction runs GD
    exactly with ``sigma`` replaced by ``sigma_hat``, the piecewise-linear interpolant of sigma at
    ``heads`` equispaced knots on ``[-R, R]`` (flat outside), ``R = logistic_radius(steps, lr,
    x_bound)``.  With ``eps = sup_{[-R, R]} |sigma - sigma_hat| <= h^2 / (8 * 6 sqrt 3)``,
    ``h = 2R/(heads - 1)`` (:func:`sigmoid_fit_error`), the iterates satisfy
    ``|w_hat_t - w_t| <= eps * t * lr * x_bound`` (Thm 13's linear accumulation, by
    non-expansiveness of convex GD for ``lr <= 8 / x_bound^2``), so the error falls as heads^-2.
    With ``lam > 0`` (Bai et al.'s Cor. C.1: one more head, :func:`constructions.parts.relu_decay_head`)
    each layer is GD on the loss plus ``(lam/2)|w|^2``; the same bound holds for
    ``lr <= 2 / (x_bound^2/4 + lam)``, where that map is non-expansive too, and the iterates stay
    within the same radius.

    **Resources.**  ``steps + 1`` layers; ``heads + 2`` heads per GD layer (one per ReLU, one
    for ``sigma(-R)``, one for the labels; one more with ``lam > 0``), 2 in the readout; width ``2d + 3``.

    **Exactness.**  Approximate, with the error bound above (exact GD with ``sigma_hat``: proved for
    symbolic d and n by :func:`glm_induction`).  ``trace()[t-1]`` is the logit ``<w_hat_t, x_q>``.

    **Domain.**  ``|x_i| <= x_bound`` for every token, ``y_i in {0, 1}``, ``lr <= 2 / (x_bound^2/4 + lam)``
    (2 / max curvature, curvature <= x_bound^2 / 4 + lam), ``mask_const >= max(1, 2R)`` (every
    gated-out score is at most 2R), ``lam >= 0``.
    """
    d, steps, heads = parts.positive_int(d, "d"), parts.positive_int(steps, "steps"), parts.positive_int(heads, "heads")
    if heads < 2:
        raise ConstructionError("heads must be >= 2 (the interpolant needs two knots)")
    parts.budget("logistic_gd", layers=steps + 1, width=2 * d + 3, heads=heads + 3, d_head=d + 2)
    lr, x_bound, mask_const = parts.real(lr, "lr"), parts.real(x_bound, "x_bound"), parts.real(mask_const, "mask_const")
    lam = parts.real(lam, "lam", strict=False)
    radius, knots, a, base = _logistic_knots(steps, lr, x_bound, heads, lam=lam)
    if mask_const < max(1.0, 2 * radius):
        raise ConstructionError(f"mask_const={mask_const:.6g} must be >= max(1, 2R={2 * radius:.6g}) "
                                "to gate out the query (|<w, x_q>| + |knot| <= 2R)")
    lay = _bai_layout(d)
    hs = _logistic_heads(lay, lr, knots, a, base, mask_const) + ([parts.relu_decay_head(lay, lr * lam, mask_const)]
                                                                if lam > 0 else [])
    blocks = [parts.block("relu", hs) for _ in range(steps)] + [parts.block("relu", parts.relu_readout_heads(lay, mask_const))]
    domain = parts.all_checks(parts.norm_check(x_bound, "the sigmoid's knots cover only the scores of inputs "
                                               "within it", queries=True), parts.label_check((0, 1), "logistic_gd"))
    params = dict(d=d, steps=steps, lr=lr, heads=heads, x_bound=x_bound, mask_const=mask_const) | (
        dict(lam=lam) if lam else {})
    return Construction("logistic_gd", params, blocks, lay, d, n_readout=1, mask_query=False, domain=domain)


def _logistic_heads(lay, lr: float, knots, a, base: float, mask_const: float, w: str = "w",
                    linear_labels: bool = False, gate: str = "gate") -> list[dict]:
    """One logistic-GD step on the iterate in slot ``w``, ``w <- w - lr (1/n) sum_j (sigma_hat(w.x_j) - y_j) x_j``
    with ``sigma_hat = base + sum_m a_m relu(s - s_m)`` (:func:`sigmoid_knots`): a head per knot,
    one for the constant, and the labels' term, by one head ``relu(y_j) x_j`` (= ``y_j x_j`` for
    labels in {0, 1}) or, with ``linear_labels``, a sign-split pair (``y_j x_j`` for any label)."""
    d = lay["x"].size
    hs = [parts.gated_relu_head(lay, {w: np.eye(d, d + 1), "one": -s_m * np.eye(d + 1)[d:]},
                                {"x": np.eye(d, d + 1), "one": np.eye(d + 1)[d:]},
                                {"x": np.eye(d)}, {w: -lr * a_m * np.eye(d)}, d + 1, mask_const, gate)
          for s_m, a_m in zip(knots, a)]  # relu(w.x_j - s_m) with value -lr a_m x_j
    hs.append(parts.gated_relu_head(lay, {"one": [[1.0]]}, {"one": [[1.0]]}, {"x": np.eye(d)},
                                    {w: -lr * base * np.eye(d)}, 1, mask_const, gate))  # constant sigma(-R)
    label = ({"one": [[1.0]]}, {"y": [[1.0]]}, {"x": np.eye(d)}, {w: lr * np.eye(d)}, 1, mask_const, gate)
    return hs + (parts.sign_split(lay, *label) if linear_labels else [parts.gated_relu_head(lay, *label)])


def select_score_bound(X, y, Xq, lam: float, n_train: int) -> torch.Tensor:
    """Per prompt, the bound on every score ridge_select's gates push below zero: GD's iterate bound
    on the train split (:func:`score_bound`, with the validation inputs and queries among the
    read-out tokens) plus ``max_i |y_i|`` (the validation residuals)."""
    return score_bound(X[:, :n_train], y[:, :n_train], torch.cat([X[:, n_train:], Xq], 1), lam) + y.abs().amax(-1)


def _validation(lay, K: int, gamma: float, mask_const: float, s_val: float):
    """Bai's post-ICL validation (Prop. 15) on the predictions in slots ``f0..f{K-1}`` of every
    token: the heads writing the exact validation losses ``L_k`` and the three ReLU MLPs of the
    selection weights ``a_k`` (:func:`ridge_select`'s docstring; slots ``L, c, u, a`` + k)."""
    # (2) validation losses: score +-(f_k - y) on validation keys, value (f_k - y)
    loss = [h for k in range(K) for h in parts.sign_split(
        lay, {"one": [[1.0]]}, {f"f{k}": [[1.0]], "y": [[-1.0]]}, {f"f{k}": [[1.0]], "y": [[-1.0]]},
        {f"L{k}": [[s_val]]}, 1, mask_const, gate="vgate")]
    # MLP: c_k = sum_j relu(L_k - L_j)
    pairs = [(k, j) for k in range(K) for j in range(K) if j != k] or [(0, 0)]
    W_in = np.zeros((lay.width, len(pairs)))
    W_out = np.zeros((len(pairs), lay.width))
    for col, (k, j) in enumerate(pairs):
        W_in[:, col] = lay.read({f"L{k}": [[1.0]], f"L{j}": [[-1.0]]}, 1)[:, 0] if j != k else 0.0
        W_out[col] += lay.write({f"c{k}": [[1.0]]}, 1)[0]
    mlp_c = MLPSpec("relu", W_in, np.zeros(len(pairs)), W_out, np.zeros(lay.width))
    # MLP: u_k = relu(1 - c_k / gamma)
    mlp_u = MLPSpec("relu", lay.read({f"c{k}": np.eye(K)[k:k + 1] * (-1 / gamma) for k in range(K)}, K),
                          np.ones(K), lay.write({f"u{k}": np.eye(K)[:, k:k + 1] for k in range(K)}, K),
                          np.zeros(lay.width))
    # MLP: P_k = relu(1 - sum_{j<=k} u_j); a_k = P_{k-1} - P_k with P_0 = 1 (the bias of a_0)
    W_in = lay.read({f"u{j}": -np.triu(np.ones((K, K)))[j:j + 1] for j in range(K)}, K)
    W_out = lay.write({f"a{k}": (np.eye(K)[:, k:k + 1] - (np.eye(K, k=1)[:, k:k + 1])) * -1.0 for k in range(K)}, K)
    b_out = lay.write({"a0": [[1.0]]}, 1)[0]
    mlp_a = MLPSpec("relu", W_in, np.ones(K), W_out, b_out)
    return loss, mlp_c, mlp_u, mlp_a


def ridge_select(d: int, lams, steps: int, lr: float, n_train: int, n_val: int, gamma: float,
                 mask_const: float = 1e9) -> Construction:
    """In-context algorithm selection by post-ICL validation (Bai et al. 2023, Prop. 15, Thm 16).

    **Theorem** (Bai et al. 2023, Prop. 15 / Thm H.1-H.3 and Thm 16).  The first ``n_train``
    context examples are train tokens, the next ``n_val`` validation tokens.  For every
    ``lam_k`` in ``lams`` the step layers run ``steps`` GD steps (step ``lr``) on the train-split
    ridge objective ``1/(2 n_train) sum_train (w.x_i - y_i)^2 + (lam_k/2)|w|^2`` in parallel
    heads.  The readout blocks then (1) write ``f_k(x_i) = <w_k, x_i>`` into every token, (2)
    write the exact validation losses ``L_k = (1/n_val) sum_val (f_k(x_i) - y_i)^2`` (2 ReLU
    heads per k: ``relu(r) r + relu(-r) r = r^2``), and with ReLU MLPs
    ``c_k = sum_j relu(L_k - L_j)``, ``u_k = relu(1 - c_k/gamma)``,
    ``P_k = relu(1 - sum_{j<=k} u_j)``, weights ``a_k = P_{k-1} - P_k`` (``P_0 = 1``),
    (3) output ``sum_k a_k <w_k, x_q>``.  The weights are non-negative, sum to 1, and
    ``a_k > 0`` only if ``L_k <= min_j L_j + gamma``; by convexity the selected predictor's
    validation loss is at most ``min_k L_k + gamma``.

    **Resources.**  ``steps + 5`` layers: ``steps`` GD layers with ``3K`` heads, then readout
    blocks with ``2K`` (predictions), ``2K`` (losses) + MLP ``K^2``, MLP ``K``, MLP ``K``, ``2K``
    (aggregation) heads; width ``(K + 1) d + 5K + 4``.  ReLU attention and ReLU MLPs.  Value
    matrices carry ``n / n_train`` and ``n / n_val`` to turn the attention's 1/n into split
    averages (docs/pitfalls.md #3), so ``n_train`` and ``n_val`` are fixed when the
    construction is built.

    **Exactness.**  Exact (float64 round-off; the selection maps are piecewise linear with
    Lipschitz constant ``~1/gamma``).

    **Domain.**  ``n = n_train + n_val``; ``lr * lambda_max(X_tr^T X_tr/n_train + lam_k I) <= 2``
    for every k; ``mask_const >= 2 |w*_k| max_i |x_i| + max_i |y_i|`` (:func:`select_score_bound`).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    n_train, n_val = parts.positive_int(n_train, "n_train"), parts.positive_int(n_val, "n_val")
    lr, gamma, mask_const = parts.real(lr, "lr"), parts.real(gamma, "gamma"), parts.real(mask_const, "mask_const")
    lams = parts.real_array(lams, "lams")
    if lams.ndim > 1 or lams.size == 0:
        raise ConstructionError(f"lams must be one or more regularisation strengths (a vector), got shape {lams.shape}")
    lams = [parts.real(v, "lams[k]", strict=False) for v in np.atleast_1d(lams)]
    K, n = len(lams), n_train + n_val
    parts.budget("ridge_select", layers=steps + 6, width=d * K + 5 * K + d + 5, heads=3 * K, d_head=d + 2,
                 mlp=K * K + 2 * K)
    extra = [(f"w{k}", d, "zero") for k in range(1, K)]
    extra += [(f"{name}{k}", 1, "zero") for name in ("f", "L", "c", "u", "a") for k in range(K)]
    spec = [("x", d, "x"), ("y", 1, "y"), ("w0", d, "zero"), *extra, ("one", 1, "one"),
            ("tgate", 1, "train_gate"), ("vgate", 1, "val_gate")]
    lay = ResidualLayout.of(spec, Readout("y", 1.0))
    s_tr, s_val = n / n_train, n / n_val
    step_heads = []
    for k, lam in enumerate(lams):
        step_heads += parts.relu_gd_heads(lay, lr, mask_const, w=f"w{k}", gate="tgate", scale=s_tr)
        step_heads.append(parts.relu_decay_head(lay, s_tr * lr * lam, mask_const, w=f"w{k}", gate="tgate"))
    # (1) predictions f_k(x_i) = <w_k, x_i>
    pred = [h for k in range(K)
            for h in parts.relu_readout_heads(lay, mask_const, w=f"w{k}", out=f"f{k}", gate="tgate", scale=s_tr)]
    loss, mlp_c, mlp_u, mlp_a = _validation(lay, K, gamma, mask_const, s_val)
    # (3) aggregation: score +-<x_i, w_k> on train keys, value a_k: writes sum_k a_k <w_k, x_i> into y
    agg = [h for k in range(K) for h in parts.sign_split(
        lay, {"x": np.eye(d)}, {f"w{k}": np.eye(d)}, {f"a{k}": [[1.0]]}, {"y": [[s_tr]]}, d, mask_const, gate="tgate")]
    blocks = [parts.block("relu", step_heads) for _ in range(steps)] + [
        parts.block("relu", pred), parts.block("relu", loss, mlp_c), BlockSpec(None, mlp_u),
        BlockSpec(None, mlp_a), parts.block("relu", agg)]
    domain = parts.all_checks(
        *[parts.step_check(lr, lam, rows=n_train) for lam in lams],
        *[parts.mask_check(mask_const, lambda X, y, Xq, lam=lam: select_score_bound(X, y, Xq, lam, n_train),
                           "2 |w*_k| max|x_i| + max|y_i|") for lam in lams])
    split = parts.fixed_examples(n, "ridge_select", f"rebuild with n_train + n_val matching the prompt (built for "
                                 f"n_train + n_val = {n_train} + {n_val})", n_train=n_train)
    return Construction(
        "ridge_select", dict(d=d, lams=lams, steps=steps, lr=lr, n_train=n_train, n_val=n_val, gamma=gamma,
                             mask_const=mask_const),
        blocks, lay, d, n_readout=5, mask_query=False, split=split, domain=domain,
    )


def link_select(d: int, steps: int, lr: float, lr_class: float, heads: int, x_bound: float, n_train: int,
                n_val: int, gamma: float, mask_const: float = 1e9) -> Construction:
    """Link-function selection by post-ICL validation (Bai et al. 2023, Thm I.2).

    **Theorem** (Bai et al. 2023, Thm I.2, with Prop. 15 and Thm 13).  On the first ``n_train``
    context examples (train tokens) the step layers run, in parallel heads, ``steps`` steps of GD
    on the square loss (the identity link; step ``lr``) on the iterate ``w`` and of logistic GD
    (step ``lr_class``, sigma the interpolant of ``heads`` ReLUs, the label term linear in y) on
    ``v``.  The readout writes the two candidates' predictions into every token, ``f0 = <w, x_i>``
    and ``f1 = sigma_hat(<v, x_i>)`` (the logit by 2 heads, sigma_hat by a ReLU MLP), their exact
    validation losses on the next ``n_val`` examples, the selection weights of
    :func:`ridge_select` (``a_k > 0`` only if ``L_k <= min_j L_j + gamma``), and outputs
    ``a0 f0 + a1 f1`` (2 sign-split heads per candidate reading the query's own ``f_k``): the
    link whose predictions validate better, by the square loss.

    **Resources.**  ``steps + 5`` layers: ``steps`` layers of ``2 + (heads + 3)`` heads, then the
    predictions (4 heads, an MLP of ``heads`` units), the losses (4 heads, MLP 2), two MLPs of 2,
    the aggregation (4 heads); width ``3d + 15``.

    **Exactness.**  Exact (float64 round-off) against the numpy pipeline
    (:class:`verify.reference.LinkSelect`); the selected predictor's validation loss is at most
    ``min_k L_k + gamma``.

    **Domain.**  ``n = n_train + n_val``; ``lr lambda_max(X_tr^T X_tr/n_train) <= 2``;
    ``|x| <= x_bound`` for every token, ``lr_class <= 8 / x_bound^2``; ``mask_const`` above
    :func:`link_select_bound`.
    """
    d, steps, heads = parts.positive_int(d, "d"), parts.positive_int(steps, "steps"), parts.positive_int(heads, "heads")
    n_train, n_val = parts.positive_int(n_train, "n_train"), parts.positive_int(n_val, "n_val")
    if heads < 2:
        raise ConstructionError("heads must be >= 2 (the interpolant needs two knots)")
    lr, lr_class, x_bound = parts.real(lr, "lr"), parts.real(lr_class, "lr_class"), parts.real(x_bound, "x_bound")
    gamma, mask_const = parts.real(gamma, "gamma"), parts.real(mask_const, "mask_const")
    parts.budget("link_select", layers=steps + 5, width=3 * d + 15, heads=heads + 5, d_head=d + 2, mlp=heads + 1)
    radius, knots, a, base = _logistic_knots(steps, lr_class, x_bound, heads, "lr_class")
    K, n = 2, n_train + n_val
    slots = [(f"{name}{k}", 1, "zero") for name in ("f", "L", "c", "u", "a") for k in range(K)]
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), ("v", d, "zero"), ("logit", 1, "zero"),
                             *slots, ("one", 1, "one"), ("tgate", 1, "train_gate"), ("vgate", 1, "val_gate")],
                            Readout("y", 1.0))
    s_tr, s_val = n / n_train, n / n_val
    step = parts.relu_gd_heads(lay, lr, mask_const, w="w", gate="tgate", scale=s_tr)
    step += _logistic_heads(lay, s_tr * lr_class, knots, a, base, mask_const, w="v", linear_labels=True, gate="tgate")
    pred = parts.relu_readout_heads(lay, mask_const, w="w", out="f0", gate="tgate", scale=s_tr) + \
        parts.relu_readout_heads(lay, mask_const, w="v", out="logit", gate="tgate", scale=s_tr)
    # f1 = sigma_hat(logit) = base + sum_m a_m relu(logit - s_m), in every token
    sigma = parts.units_mlp(lay, "relu", [({"logit": [1.0]}, -s_m, {"f1": [a_m]}) for s_m, a_m in zip(knots, a)],
                            bias_out={"f1": [base]})
    loss, mlp_c, mlp_u, mlp_a = _validation(lay, K, gamma, mask_const, s_val)
    agg = [h for k in range(K) for h in parts.sign_split(
        lay, {f"f{k}": [[1.0]]}, {"one": [[1.0]]}, {f"a{k}": [[1.0]]}, {"y": [[s_tr]]}, 1, mask_const, gate="tgate")]
    blocks = [parts.block("relu", step) for _ in range(steps)] + [
        parts.block("relu", pred, sigma), parts.block("relu", loss, mlp_c), BlockSpec(None, mlp_u),
        BlockSpec(None, mlp_a), parts.block("relu", agg)]
    domain = parts.all_checks(
        parts.step_check(lr, 0.0, rows=n_train),
        parts.norm_check(x_bound, "the sigmoid's knots cover only the scores of inputs within it", queries=True),
        parts.mask_check(mask_const, lambda X, y, Xq: link_select_bound(X, y, Xq, n_train, steps, lr_class, x_bound,
                                                                        radius), "the gated scores' bound"))
    split = parts.fixed_examples(n, "link_select", f"rebuild with n_train + n_val matching the prompt (built for "
                                 f"n_train + n_val = {n_train} + {n_val})", n_train=n_train)
    return Construction(
        "link_select", dict(d=d, steps=steps, lr=lr, lr_class=lr_class, heads=heads, x_bound=x_bound,
                            n_train=n_train, n_val=n_val, gamma=gamma, mask_const=mask_const),
        blocks, lay, d, n_readout=5, mask_query=False, split=split, domain=domain)


def link_select_bound(X, y, Xq, n_train: int, steps: int, lr_class: float, x_bound: float, radius: float):
    """Per prompt, a bound on every score :func:`link_select`'s gates push below zero: the square-loss
    branch's :func:`select_score_bound` (lam = 0), the logistic branch's ``|v_t| |x| + R`` with
    ``|v_t| <= t lr_class (1 + max|y_j|) x_bound``, and ``1 + max|y_j|`` (the sigmoid branch's
    validation residual)."""
    ridge = select_score_bound(X, y, Xq, 0.0, n_train)
    logistic = steps * lr_class * (1 + y.abs().max(-1).values) * x_bound * x_bound + radius
    return torch.clamp(torch.maximum(ridge, torch.maximum(logistic, 1 + y.abs().max(-1).values)), min=1.0)


#: binary_test's smallest bump half-width: float32 spaces numbers near 1 by 1.2e-7, so a narrower
#: bump at y = 1 would be lost to rounding
BINARY_EPS_MIN = 1e-6


def binary_psi_knots(eps: float) -> list[tuple[float, float]]:
    """The 6 ReLUs ``c relu(y + b)`` of Bai et al.'s psi (Lemma 18): triangular bumps of height 1
    and half-width eps at 0 and at 1, ``(1/eps)[relu(y - t + eps) - 2 relu(y - t) + relu(y - t - eps)]``."""
    return [(c / eps, -t + s) for t in (0.0, 1.0) for c, s in ((1.0, eps), (-2.0, 0.0), (1.0, -eps))]


def binary_test(d: int, eps: float = 0.1, threshold: float = 0.5) -> Construction:
    """Pre-ICL testing: are all labels binary? (Bai et al. 2023, Lemma 18 and Cor. H.1).

    **Theorem** (Bai et al. 2023, Lemma 18, Cor. H.1, App. H.3).  Layer 1 (6 ReLU heads) writes
    ``Psi = (1/n) sum_i psi(y_i)`` into every token, psi the sum of 6 ReLUs
    (:func:`binary_psi_knots`): 1 at y in {0, 1}, 0 farther than eps from both.  Layer 2 (2 ReLU
    heads) writes ``clip((Psi - threshold)/(1 - threshold), 0, 1)`` into the query's ``test``
    slot: 1 when every label is exactly 0 or 1, 0 when at most a fraction ``threshold`` of them
    is within eps of {0, 1}.  To flag one non-binary label among n, build with
    ``threshold = 1 - 1/(2n)`` (then Psi <= 1 - 1/n stays clear of it).

    **Resources.**  2 layers, 6 heads, width ``d + 4``, ReLU attention normalised by n; no MLP.

    **Exactness.**  Exact (float64 round-off): psi is exactly a sum of ReLUs; checked by
    ``bai23-binary-test`` against the same function in numpy, and proved for symbolic d and n and
    every real label (:func:`binary_induction`).

    **Domain.**  ``eps in [1e-6, 1/2]`` (float32 spaces numbers near 1 by 1.2e-7), ``threshold in [0, 1)``; query tokens are not keys (the
    query mask), so no gate is needed.
    """
    d = parts.positive_int(d, "d")
    eps = parts.real(eps, "eps")
    if not BINARY_EPS_MIN <= eps <= 0.5:
        raise ConstructionError(f"eps must be in [{BINARY_EPS_MIN:g}, 1/2] (the bumps at 0 and 1 must not overlap, and "
                                f"below 1e-6 float32 cannot resolve the bump at y = 1), got {eps}")
    threshold = parts.real(threshold, "threshold", strict=False)
    if threshold >= 1:
        raise ConstructionError(f"threshold must be in [0, 1), got {threshold}")
    parts.budget("binary_test", layers=2, width=d + 4, heads=8, d_head=1)
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("one", 1, "one"), ("psi", 1, "zero"),
                             ("test", 1, "zero")], Readout("test", 1.0))
    # score relu(y_j + b) (key reads y and one, query reads one), value one, output c into psi
    psi = [dict(W_Q=lay.read({"one": [[1.0]]}, 1), W_K=lay.read({"y": [[1.0]], "one": [[b]]}, 1),
                W_V=lay.read({"one": [[1.0]]}, 1), W_O=lay.write({"psi": [[c]]}, 1)) for c, b in binary_psi_knots(eps)]
    s = 1.0 / (1.0 - threshold)
    # score relu(s (Psi_i - t)) and relu(s (Psi_i - 1)) (query reads psi and one, key reads one)
    thr = [dict(W_Q=lay.read({"psi": [[s]], "one": [[-s * t]]}, 1), W_K=lay.read({"one": [[1.0]]}, 1),
                W_V=lay.read({"one": [[1.0]]}, 1), W_O=lay.write({"test": [[sign]]}, 1))
           for t, sign in ((threshold, 1.0), (1.0, -1.0))]
    blocks = [parts.block("relu", psi), parts.block("relu", thr)]
    return Construction("binary_test", dict(d=d, eps=eps, threshold=threshold), blocks, lay, d, step_blocks=2)


def pre_select_bounds(X, y, Xq, lam: float, steps: int, lr_class: float, x_bound: float, radius: float):
    """Per prompt ``(gated, branches)`` for :func:`pre_icl_select`: ``gated`` bounds every score a
    gate must push below zero (the ridge branch's ``2 |w*| max|x|``, the logistic branch's
    ``|v_t| |x| + R`` with ``|v_t| <= t lr_class (1 + max|y_j|) x_bound``, and the binary test's
    ``|b| <= 2``); ``branches`` bounds ``|f_ridge - f_logistic|`` at the query, the selection
    MLP's constant."""
    ridge = score_bound(X, y, Xq, lam)
    logistic = steps * lr_class * (1 + y.abs().max(-1).values) * x_bound * x_bound
    return torch.clamp(torch.maximum(ridge, logistic + radius), min=2.0), ridge + logistic


def pre_icl_select(d: int, steps: int, lr: float, lr_class: float, heads: int, x_bound: float, lam: float = 0.0,
                   eps: float = 0.1, threshold: float = 0.5, select_const: float = 1e3,
                   mask_const: float = 1e9) -> Construction:
    """Regression or classification, chosen in context by pre-ICL testing (Bai et al. 2023, Prop. 19, App. H.4).

    **Theorem** (Bai et al. 2023, Prop. 19 with Lemma 18 and Thms 4, 13).  Block 1 runs the binary
    test: 6 gated ReLU heads write ``Psi = (1/n) sum_i psi(y_i)`` into every token (psi as in
    :func:`binary_test`) and a ReLU MLP writes ``test = clip((Psi - threshold)/(1 - threshold), 0, 1)``
    (1 when every label is 0 or 1).  Each of the ``steps`` step layers then carries out, in
    parallel heads on two iterates, one ridge-GD step (step ``lr``, l2 weight ``lam``) on ``w`` and
    one logistic-GD step (step ``lr_class``, sigma a sum of ``heads`` ReLUs as in
    :func:`logistic_gd`, the label term linear in y) on ``v``.  The readout block writes
    ``f_r = <w, x_i>`` and ``f_c = <v, x_i>`` into every token, and a ReLU MLP outputs
    ``f_r + relu(f_c - f_r - M (1 - test)) - relu(f_r - f_c - M (1 - test))``
    (``M = select_const``): ``f_c`` (the logit) when the test says binary, ``f_r`` (the ridge
    prediction) when it says not, once ``M >= |f_r - f_c|``.  In general the output is
    ``f_r + S_g(f_c - f_r)``, S the soft threshold at ``g = M (1 - test)``, so a test strictly
    between 0 and 1 (labels neither clearly binary nor clearly not) moves ``f_r`` part of the way
    to ``f_c``; the numpy pipeline (:class:`verify.reference.PreICLSelect`) computes the same.

    **Resources.**  ``steps + 2`` layers: the test (6 heads, an MLP of 2 units), ``steps`` layers of
    ``2 + heads + 3`` heads (3 more with ``lam > 0``: the l2 head), the readout (4 heads, an MLP of
    4 units); width ``3d + 7``.

    **Exactness.**  Exact (float64 round-off) against the numpy pipeline: binary test, ridge GD and
    logistic GD with the interpolated sigmoid on the same prompt, and the selection formula.

    **Domain.**  ``lr lambda_max(X^T X/n + lam I) <= 2``; ``|x| <= x_bound`` for every token and
    ``lr_class <= 8 / x_bound^2``; ``mask_const`` and ``select_const`` above the per-prompt bounds
    of :func:`pre_select_bounds`.
    """
    d, steps, heads = parts.positive_int(d, "d"), parts.positive_int(steps, "steps"), parts.positive_int(heads, "heads")
    if heads < 2:
        raise ConstructionError("heads must be >= 2 (the interpolant needs two knots)")
    lr, lr_class, x_bound = parts.real(lr, "lr"), parts.real(lr_class, "lr_class"), parts.real(x_bound, "x_bound")
    lam, eps = parts.real(lam, "lam", strict=False), parts.real(eps, "eps")
    threshold = parts.real(threshold, "threshold", strict=False)
    select_const, mask_const = parts.real(select_const, "select_const"), parts.real(mask_const, "mask_const")
    if not BINARY_EPS_MIN <= eps <= 0.5 or threshold >= 1:
        raise ConstructionError(f"eps must be in [{BINARY_EPS_MIN:g}, 1/2] and threshold in [0, 1) (as in "
                                f"binary_test), got eps={eps}, threshold={threshold}")
    parts.budget("pre_icl_select", layers=steps + 2, width=3 * d + 7, heads=heads + 6, d_head=d + 2)
    radius, knots, a, base = _logistic_knots(steps, lr_class, x_bound, heads, "lr_class")
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("w", d, "zero"), ("v", d, "zero"), ("one", 1, "one"),
                             ("gate", 1, "train_gate"), ("psi", 1, "zero"), ("test", 1, "zero"), ("fr", 1, "zero"),
                             ("fc", 1, "zero")], Readout("y", 1.0))
    psi = [parts.gated_relu_head(lay, {"one": [[1.0]]}, {"y": [[1.0]], "one": [[b]]}, {"one": [[1.0]]},
                                 {"psi": [[c]]}, 1, mask_const) for c, b in binary_psi_knots(eps)]
    s = 1.0 / (1.0 - threshold)
    test = parts.units_mlp(lay, "relu", [({"psi": [s]}, -s * threshold, {"test": [1.0]}),
                                         ({"psi": [s]}, -s, {"test": [-1.0]})])
    step = parts.relu_gd_heads(lay, lr, mask_const, w="w") + (
        [parts.relu_decay_head(lay, lr * lam, mask_const, w="w")] if lam > 0 else [])
    step += _logistic_heads(lay, lr_class, knots, a, base, mask_const, w="v", linear_labels=True)
    readout = parts.relu_readout_heads(lay, mask_const, w="w", out="fr") + parts.relu_readout_heads(
        lay, mask_const, w="v", out="fc")
    M = select_const
    select = parts.units_mlp(lay, "relu", [
        ({"fr": [1.0]}, 0.0, {"y": [1.0]}), ({"fr": [-1.0]}, 0.0, {"y": [-1.0]}),  # f_r, as relu(f_r) - relu(-f_r)
        ({"fc": [1.0], "fr": [-1.0], "test": [M]}, -M, {"y": [1.0]}),
        ({"fr": [1.0], "fc": [-1.0], "test": [M]}, -M, {"y": [-1.0]})])
    blocks = [parts.block("relu", psi, test)] + [parts.block("relu", step) for _ in range(steps)] + [
        parts.block("relu", readout, select)]
    bounds = lambda X, y, Xq: pre_select_bounds(X, y, Xq, lam, steps, lr_class, x_bound, radius)  # noqa: E731
    domain = parts.all_checks(
        parts.step_check(lr, lam),
        parts.norm_check(x_bound, "the sigmoid's knots cover only the scores of inputs within it", queries=True),
        parts.mask_check(mask_const, lambda X, y, Xq: bounds(X, y, Xq)[0], "the gated scores' bound"),
        parts.mask_check(select_const, lambda X, y, Xq: bounds(X, y, Xq)[1], "|f_ridge - f_logistic| (select_const)"))
    return Construction("pre_icl_select", dict(d=d, steps=steps, lr=lr, lr_class=lr_class, heads=heads,
                                               x_bound=x_bound, lam=lam, eps=eps, threshold=threshold,
                                               select_const=select_const, mask_const=mask_const),
                        blocks, lay, d, n_prefix=1, n_readout=1, mask_query=False, domain=domain)


# -- claims: cases and bounds ---------------------------------------------------------------------------
def _torch(p: Prompt):
    return tuple(torch.from_numpy(a) for a in p.arrays)


def _relu_gd_case(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    mask = masking_constant(k.log10_mask, score_bound(*_torch(p), 0.0))
    return relu_gd(p.spec.d, k.steps, lr, mask_const=mask), GD(k.steps, lr=lr)


def _decoder_case(p, k):
    """A step stable on every prefix; linear attention on even seeds, ReLU on odd ones."""
    lr = float(k.lr_factor / parts.prefix_lambda_max(torch.from_numpy(p.X)).max())
    return decoder_gd(p.spec.d, k.steps, lr, DECODER_ATTENTION[1 - k.seed % 2]), GD(k.steps, lr=lr)


def _decoder_bounds(p, k, c):
    """Every context position after every step: its ``w`` slot against GD on the examples before
    it, and the readout applied there (its ``pred`` slot) against ``<w_t, x_i>``; arrays
    ``[S, B, n]`` (tolerance model, scale = the prefix GD's running magnitude, times |x_i| for the
    prediction)."""
    n, nk = p.spec.n, c.n_keys(p.spec.n)
    ws, mags = prefix_gd(p.X, p.y, c.steps, c.params["lr"])
    hs = torch.as_tensor(np.asarray(c.residuals(*p.arrays), dtype=np.float64)).to(c.dtype)  # [L+1, B, T, D]
    lay, xn = c.layout, np.linalg.norm(p.X, axis=-1)
    with torch.no_grad():
        preds = np.stack([c.model(h, nk, norm=n, start=c.n_step_blocks)[:, :n, lay["pred"].start].double().numpy()
                          for h in hs[1:c.n_step_blocks + 1]])  # [S, B, n]
    W = hs[1:c.n_step_blocks + 1, :, :n, lay["w"].index].double().numpy()
    scale = np.maximum.accumulate(mags, axis=0)[1:]
    dev_w = np.abs(W - ws[1:]).max(-1)
    dev_p = np.abs(preds - np.einsum("sbnd,bnd->sbn", ws[1:], p.X))
    tol_w = tolerance(c.dtype, n, p.spec.d, scale)
    tol_p = tolerance(c.dtype, n, p.spec.d, scale * xn[None])
    return Comparison(dev_w, np.zeros_like(dev_w), tol_w, scale).join(
        Comparison(dev_p, np.zeros_like(dev_p), tol_p, scale * xn[None]))


def decoder_induction(attention: str = "linear", lr: float = LR):
    """decoder_gd for symbolic d and n: context token i holds its own iterate ``w_i`` (the columns
    of W), the query ``w_q``; a step is GD on each token's prefix,
    ``W <- W - lr X ((X^T W - y^T 1^T) o M) D`` with M the strictly causal mask (``M_ji = 1`` for
    j < i) and D the divisors ``1/((i-1) v 1)`` (:data:`verify.symbolic.CAUSAL`), and
    ``w_q <- w_q - lr X (X^T w_q - y^T)/n``; the readout writes ``x_i . w_i`` at every position."""
    import sympy as sp

    from verify import symbolic as S

    lr_ = S.exact(lr)
    V = dict(W=sp.MatrixSymbol("W", S.d, S.n), w=sp.MatrixSymbol("w_q", S.d, 1))
    M, D = S.CAUSAL["strict"]

    def state(v):
        return [S.context(x=S.X, y=S.Y, w=v["W"]), S.query(x=S.XQ, y=S.Z11, w=v["w"])]

    def step(v, layer):
        residual = S.X.T * v["W"] - S.Y.T * sp.OneMatrix(1, S.n)  # [keys j, tokens i]: x_j . w_i - y_j
        return dict(W=v["W"] - lr_ * S.X * sp.HadamardProduct(residual, M) * D,
                    w=v["w"] - lr_ * S.X * (S.X.T * v["w"] - S.Y.T) / S.n)

    return S.Induction(lambda dd: decoder_gd(dd, 2, lr, attention), V, state, step,
                       dict(W=sp.ZeroMatrix(S.d, S.n), w=sp.ZeroMatrix(S.d, 1)), lambda v: v["w"].T * S.XQ,
                       prefix_prediction=lambda v: S.diagonal(S.X.T * v["W"]))


#: the prefix-risk report's setting: d, n, steps, lr, noise, prompts
DECODER_RISK = dict(d=5, n=20, steps=20, lr=1.5, noise=0.1, prompts=2000)


def decoder_risk(seed: int = 0, **setting) -> dict:
    """The prefix-risk curve of :func:`decoder_gd`: ``E (y_hat_i - y_i)^2`` at every position i
    (predicting y_i from the i - 1 examples before it), measured on the transformer's output, beside
    least squares (min-norm) and Bayes ridge (``lam = sigma^2/(i-1)``, w ~ N(0, I)) on the same prefixes.
    Inputs x uniform on the unit sphere (every prefix's curvature is at most 1, so ``lr <= 2`` is
    stable on every prefix), w ~ N(0, I_d), label noise sigma."""
    S = {**DECODER_RISK, **setting}
    d, n, B, sigma = S["d"], S["n"], S["prompts"], S["noise"]
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, n, d))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    y = np.einsum("bnd,bd->bn", X, rng.normal(size=(B, d))) + sigma * rng.normal(size=(B, n))
    c = decoder_gd(d, S["steps"], S["lr"], "linear")
    pred = prefix_predictions(c, X, y, X[:, -1:])[:, :n]
    ls, bayes = np.zeros((B, n)), np.zeros((B, n))
    for i in range(1, n):  # the reference's closed forms on the first i examples, predicting y_{i+1}
        ls[:, i] = Ridge(0.0).fit(X[:, :i], y[:, :i]).predict(X[:, i:i + 1])[:, 0]
        bayes[:, i] = Ridge(sigma**2 / i).fit(X[:, :i], y[:, :i]).predict(X[:, i:i + 1])[:, 0]
    risk = lambda p: ((p - y) ** 2).mean(0)  # noqa: E731
    return dict(setting=S, transformer=risk(pred), least_squares=risk(ls), bayes_ridge=risk(bayes))


def _decoder_report(seed: int) -> str:
    r = decoder_risk(seed)
    S, at = r["setting"], [i for i in (1, 2, 3, 5, 8, 12, 16, 20) if i <= r["setting"]["n"]]
    row = lambda name, v: f"  {name:<34}" + "".join(f"{v[i - 1]:>8.3f}" for i in at)  # noqa: E731
    return "\n".join([
        f"bai23-decoder, prefix risk E(y_hat_i - y_i)^2 at position i (predicting y_i from the i-1 examples before it; "
        f"d={S['d']}, x on the unit sphere, w ~ N(0, I), sigma={S['noise']}, {S['prompts']} prompts, seed {seed}):",
        f"  {'position i':<34}" + "".join(f"{i:>8d}" for i in at),
        row(f"decoder_gd, {S['steps']} steps, lr {S['lr']:g}", r["transformer"]),
        row("least squares (min-norm)", r["least_squares"]), row("ridge, Bayes lambda = sigma^2/(i-1)", r["bayes_ridge"])])


def _relu_ridge_case(p, k):
    lam = ridge_lam(p.X, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor, lam)
    mask = masking_constant(k.log10_mask, score_bound(*_torch(p), lam))
    return relu_gd(p.spec.d, k.steps, lr, lam=lam, mask_const=mask), GD(k.steps, lr=lr, lam=lam)


def _iterates_in_every_token(p, k, c):
    """The replicated ``w`` slot of every token after step t equals GD's ``w_t``."""
    ref = GD(k.steps, lr=c.params["lr"], lam=c.params["lam"]).fit(p.X, p.y)
    return slot_matches_iterates(p, c, ref)


#: duality-gap target of the LASSO reference solution (relative to max(1, F(0)))
LASSO_GAP = 1e-12


def _lasso_case(p, k):
    lam = lasso_lam(p.X, p.y, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor / 2)  # <= 1/L: the O(1/L) objective bound's step limit
    mask = masking_constant(k.log10_mask, lasso_score_bound(*_torch(p), lam))
    return lasso_ista(p.spec.d, k.steps, lr, lam, mask_const=mask), ISTA(k.steps, lr, lam)


def _prox_case(p, k):
    """Box (radius a fraction of the least-squares solution's largest entry, so it binds) or l2
    (lam = ridge_lam), each on half of the seeds; a stable step."""
    lr = stable_lr(p.X, k.lr_factor)
    if k.seed % 2:
        w = np.linalg.lstsq(p.X[0], p.y[0], rcond=None)[0]
        R = max(float(np.abs(w).max()), 1e-3) * (0.2 + 0.6 * (k.seed % 7) / 6)
        c = proximal_gd(p.spec.d, k.steps, lr, "box", R)
        return c, ProxGD(k.steps, lr, "box", R)
    lam = ridge_lam(p.X, k.log10_lam)
    c = proximal_gd(p.spec.d, k.steps, lr, "l2", lam)
    return c, ProxGD(k.steps, lr, "l2", prox_shrink(lr, lam))


def _lasso_bounds(p, k, c) -> Comparison:
    """ISTA's rate, on the model's own iterate: ``F(w_hat_t) - F* <= |w*|^2 / (2 lr t)`` for the
    query token's ``w`` slot after layer t, F* certified by a duality gap.  The slack for the model
    is ``Lip * tol_w``: the slot's tolerance (the ``w`` tolerance of the iterate claim) times F's
    Lipschitz constant on that ball, ``|X^T X/n| (|w_t| + tol_w) + |X^T y|/n + lam sqrt(d)``."""
    lr, lam = c.params["lr"], c.params["lam"]
    ref = ISTA(k.steps, lr, lam).fit(p.X, p.y)
    W = np.asarray(c.read_slot(*p.arrays, "w"), dtype=np.float64)[1:, :, -1]  # query token's w: [S, B, d]
    w_star, lower = lasso_solution(p.X, p.y, lam, gap=LASSO_GAP)
    F = np.stack([lasso_objective(p.X, p.y, w, lam) for w in W])  # [S, B]
    t = np.arange(1, k.steps + 1)[:, None]
    n, d = p.spec.n, p.spec.d
    F0 = np.maximum(1.0, (p.y**2).sum(-1) / (2 * n))  # F(0): the scale of every objective value
    roundoff = LASSO_GAP * F0 + tolerance(torch.float64, n, d, F0[None])[0]  # certificate + evaluation
    scale = np.maximum.accumulate(ref.magnitude_, axis=0)[1:]  # [S, B]
    tol_w = tolerance(c.dtype, n, d, scale)
    gram = np.linalg.norm(np.einsum("bni,bnj->bij", p.X, p.X) / n, ord=2, axis=(1, 2))  # [B]
    lip = gram[None] * (np.linalg.norm(ref.iterates_[1:], axis=-1) + tol_w) \
        + np.linalg.norm(np.einsum("bni,bn->bi", p.X, p.y) / n, axis=-1)[None] + lam * np.sqrt(d)
    allowed = (w_star**2).sum(-1)[None] / (2 * lr * t) + roundoff[None] + lip * tol_w
    dev = np.maximum(F - lower[None], 0.0)[..., None]
    return Comparison(dev, np.zeros_like(dev), allowed[..., None], allowed[..., None])


def _glm_case(p, k, lam_factor: float = 0.0):
    """``lr = lr_factor / (x_bound^2/4 + lam)`` (at most 1.95 over the curvature bound); ``lam =
    lam_factor x_bound^2 / 4`` (0 for ``bai23-glm``)."""
    y01 = (p.y > 0).astype(np.float64)
    p01 = Prompt(p.X, y01, p.Xq, p.w_star, p.spec)
    x_bound = float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max())
    lam = lam_factor * x_bound**2 / 4
    lr = k.lr_factor / (x_bound**2 / 4 + lam)
    radius = logistic_radius(k.steps, lr, x_bound)
    c = logistic_gd(p.spec.d, k.steps, lr, k.heads, x_bound, mask_const=masking_constant(k.log10_mask, max(1.0, 2 * radius)),
                    lam=lam)
    return c, LogisticGD(k.steps, lr, sigmoid_knots(k.heads, radius)[0], lam), p01


def _glm_ridge_case(p, k):
    return _glm_case(p, k, k.lam_factor)


def _glm_bounds(p, k, c) -> Comparison:
    """Bai Thm 13: ``|w_hat_t - w_t| <= eps t lr x_bound`` against exact logistic GD (on the same
    regularised loss when ``lam > 0``)."""
    lr, x_bound, heads = c.params["lr"], c.params["x_bound"], c.params["heads"]
    eps_fit = sigmoid_fit_error(heads, logistic_radius(k.steps, lr, x_bound))
    exact = LogisticGD(k.steps, lr, lam=c.params.get("lam", 0.0)).fit(p.X, p.y)
    W = np.asarray(c.read_slot(*p.arrays, "w"), dtype=np.float64)[1:, :, -1]  # query token's w: [S, B, d]
    dev = np.linalg.norm(W - exact.iterates_[1:], axis=-1)[..., None]
    t = np.arange(1, k.steps + 1)[:, None, None]
    scale = np.maximum.accumulate(exact.magnitude_, axis=0)[1:][..., None]
    allowed = eps_fit * t * lr * x_bound + tolerance(c.dtype, p.spec.n, p.spec.d, scale)
    return Comparison(dev, np.zeros_like(dev), allowed, scale)


def select_split(n: int) -> int:
    """The claims' train split: 60% of the examples (at least 1 of each)."""
    return max(1, min(n - 1, int(np.ceil(0.6 * n))))


def _select_case(p, k):
    """Three lambdas a decade apart, a 60/40 split; gamma from its knob, or on odd knob seeds twice
    the largest runner-up gap of the batch (after the last step), so that the selection weights
    are fractional and the validation-loss and selection maps are exercised."""
    n_train = select_split(p.spec.n)
    Xtr = p.X[:, :n_train]
    base = ridge_lam(Xtr, k.log10_lam - 1.0)
    lams = [base * 10.0**j for j in range(3)]
    lr = stable_lr(Xtr, k.lr_factor, lams[-1])
    gamma = float(10.0**k.log10_gamma * np.mean(p.y**2))
    if k.seed % 2:  # half the prompts near a tie: the runner-up within gamma, fractional weights
        L = RidgeSelect(lams, k.steps, lr, n_train, gamma).fit(p.X, p.y).losses_[-1]  # [B, K]
        gap = np.sort(L - L.min(-1, keepdims=True), axis=-1)[:, 1]
        gamma = max(gamma, 2 * float(gap.max()))
    bound = max(float(select_score_bound(*_torch(p), lam, n_train).max()) for lam in lams)
    c = ridge_select(p.spec.d, lams, k.steps, lr, n_train, p.spec.n - n_train, gamma,
                     mask_const=masking_constant(k.log10_mask, bound))
    return c, RidgeSelect(lams, k.steps, lr, n_train, gamma)


def _select_bounds(p, k, c) -> Comparison:
    """Validation loss of the selected predictor <= min_k L_k + gamma, after every step."""
    return _validation_bounds(p, c, lambda: RidgeSelect(c.params["lams"], k.steps, c.params["lr"], c.params["n_train"],
                                                        c.params["gamma"]))


def _validation_bounds(p, c, reference) -> Comparison:
    """The post-ICL validation guarantee for ``c`` and its :class:`ValidationSelect` ``reference()``:
    the selected predictor's validation loss is at most ``min_k L_k + gamma`` after every step."""
    n_train, gamma = c.params["n_train"], c.params["gamma"]
    Xv, yv = p.X[:, n_train:], p.y[:, n_train:]
    ref = reference().fit(p.X, p.y)
    cmp = compare_trace(c, reference(), p.X, p.y, Xv)
    loss = ((cmp.model - yv[None]) ** 2).mean(-1)  # [S, B]
    slack = 2 * np.sqrt(loss) * cmp.tol.max(-1)  # round-off of the predictions, propagated to the loss
    dev = np.maximum(loss - ref.losses_[1:].min(-1), 0.0)[..., None]
    allowed = (gamma + slack)[..., None]
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)


def _link_case(p, k):
    """The prompt's real labels (the square loss should validate better) or 0/1 labels ``y > 0``
    (the logistic link), by the knobs' seed; a 60/40 split; gamma from its knob, or on every other
    pair of seeds twice the runner-up's loss gap, so that the weights are fractional."""
    y = p.y if k.seed % 2 == 0 else (p.y > 0).astype(np.float64)
    p = Prompt(p.X, y, p.Xq, p.w_star, p.spec)
    n_train = select_split(p.spec.n)
    lr = stable_lr(p.X[:, :n_train], k.lr_factor)
    x_bound = float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max())
    lr_class = k.lr_factor * 4.0 / x_bound**2
    radius = logistic_radius(k.steps, lr_class, x_bound)
    knots = sigmoid_knots(k.heads, radius)[0]
    gamma = float(10.0**k.log10_gamma * np.mean(p.y**2)) + 1e-12
    if (k.seed // 2) % 2:  # near a tie: the runner-up within gamma
        L = LinkSelect(k.steps, lr, lr_class, knots, n_train, gamma).fit(p.X, p.y).losses_[-1]
        gamma = max(gamma, 2 * float(np.abs(L[:, 0] - L[:, 1]).max()))
    bound = link_select_bound(*_torch(p), n_train, k.steps, lr_class, x_bound, radius)
    c = link_select(p.spec.d, k.steps, lr, lr_class, k.heads, x_bound, n_train, p.spec.n - n_train, gamma,
                    mask_const=masking_constant(k.log10_mask, bound))
    return c, LinkSelect(k.steps, lr, lr_class, knots, n_train, gamma), p


def _link_bounds(p, k, c) -> Comparison:
    """Validation loss of the selected link <= min_k L_k + gamma, after every step."""
    P = c.params
    knots = sigmoid_knots(P["heads"], logistic_radius(P["steps"], P["lr_class"], P["x_bound"]))[0]
    return _validation_bounds(p, c, lambda: LinkSelect(P["steps"], P["lr"], P["lr_class"], knots, P["n_train"],
                                                       P["gamma"]))


#: the noise levels of ``bai23-noise-selection``'s mixture (signal ``w ~ N(0, I/d)``, so tau = 1)
NOISE_LEVELS = (0.1, 1.0)


def noise_mixture(spec: PromptSpec):
    """Prompts of a mixture of noise levels (Bai et al. 2023, Thm 17 / App. I.1's setting):
    ``x ~ N(0, I_d)``, ``w ~ N(0, I_d / d)``, ``y = <w, x> + sigma eps`` with sigma drawn per prompt
    from :data:`NOISE_LEVELS`; the queries are the d basis vectors, so a linear predictor's answers
    are its weights.  Returns ``X, y, Xq, w, sigma``."""
    rng = np.random.default_rng([spec.seed, 17])
    B, n, d = spec.B, spec.n, spec.d
    X, w = rng.standard_normal((B, n, d)), rng.standard_normal((B, d)) / np.sqrt(d)
    sigma = rng.choice(NOISE_LEVELS, size=B)
    y = np.einsum("bnd,bd->bn", X, w) + sigma[:, None] * rng.standard_normal((B, n))
    return X, y, np.broadcast_to(np.eye(d), (B, d, d)).copy(), w, sigma


def bayes_lams(d: int, n_train: int) -> list[float]:
    """Each level's Bayes ridge in the toolkit's convention: for ``w ~ N(0, I/d)`` the posterior mean
    is ``(X^T X + sigma^2 d I)^{-1} X^T y``, i.e. ``lam = sigma^2 d / n_train`` in
    ``(X^T X/n_train + lam I)^{-1} X^T y/n_train`` (docs/bai.md)."""
    return [s * s * d / n_train for s in NOISE_LEVELS]


def check_noise_selection(prompt, knobs) -> Comparison:
    """``bai23-noise-selection``: ridge_select over the levels' Bayes lambdas on a noise mixture.
    With Gaussian inputs the test risk of a linear predictor is exact, ``R(v) = |v - w|^2 + sigma^2``;
    the selected predictor is ``sum_k a_k w_k`` (read from the construction at the basis queries), so
    by convexity and the selection rule (``a_k > 0`` only if ``L_k <= min_j L_j + gamma``)
    ``R_sel <= min_k R_k + gamma + 2 max_k |L_k - R_k|``: the validation losses' deviation from the
    risks is the whole slack.  Checked per prompt, with the round-off of the construction's weights."""
    X, y, Xq, w, sigma = noise_mixture(prompt.spec)
    B, n, d = X.shape
    n_train = select_split(n)
    lams = bayes_lams(d, n_train)
    lr = stable_lr(X[:, :n_train], knobs.lr_factor, lams[-1])
    steps = max(knobs.steps, 8)
    gamma = float(10.0**knobs.log10_gamma * np.mean(y**2))
    bound = max(float(select_score_bound(*(torch.from_numpy(a) for a in (X, y, Xq)), lam, n_train).max())
                for lam in lams)
    c = ridge_select(d, lams, steps, lr, n_train, n - n_train, gamma, mask_const=masking_constant(knobs.log10_mask, bound))
    ref = RidgeSelect(lams, steps, lr, n_train, gamma).fit(X, y)
    w_sel = c.predict(X, y, Xq)  # [B, d]: the selected linear predictor's weights
    err = tolerance(torch.float64, n, d, ref.scale(Xq))[-1]  # [B, d]: their round-off
    risk = lambda v: ((v - w) ** 2).sum(-1) + sigma**2  # noqa: E731
    R = np.stack([risk(ref.W_[-1][:, k]) for k in range(len(lams))], -1)  # [B, K]
    delta = np.abs(ref.losses_[-1] - R).max(-1)
    e = np.linalg.norm(err, axis=-1)
    dev = np.maximum(risk(w_sel) - R.min(-1), 0.0)
    allowed = gamma + 2 * delta + 2 * e * np.linalg.norm(w_sel - w, axis=-1) + e * e
    return Comparison(dev[None, :, None], np.zeros((1, B, 1)), allowed[None, :, None], allowed[None, :, None])


def _binary_case(p, k):
    """Labels by the knobs' seed: exactly binary (y > 0), binary with one label moved by up to
    2 eps, or the prompt's real-valued labels; threshold 1 - 1/(2n) flags one non-binary label."""
    eps = 0.1
    threshold = 1.0 - 0.5 / p.spec.n
    return binary_test(p.spec.d, eps, threshold), BinaryTest(eps, threshold), _binary_labels(p, k, eps)


def _binary_labels(p, k, eps: float) -> Prompt:
    """The prompt with labels by the knobs' seed: exactly binary (y > 0), binary with one label
    moved by up to 2 eps, or its own real-valued labels."""
    kind = k.seed % 3
    y = p.y.copy()
    if kind < 2:
        y = (p.y > 0).astype(np.float64)
        if kind == 1:
            y[:, 0] += np.random.default_rng(k.seed).uniform(-2 * eps, 2 * eps, size=y.shape[0])
    return Prompt(p.X, y, p.Xq, p.w_star, p.spec)


def _pre_select_case(p, k):
    """Labels by the knobs' seed, as in :func:`_binary_case` (binary, one label moved by up to 2 eps,
    or the prompt's real labels: the logistic branch, a test between 0 and 1, the ridge branch);
    ridge GD at a stable step with lambda from its knob, logistic GD at ``lr_factor * 4 / x_bound^2``;
    threshold ``1 - 1/(2n)``; the masking and selection constants above the domain's bounds."""
    eps = 0.1
    p = _binary_labels(p, k, eps)
    lam = ridge_lam(p.X, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor, lam)
    x_bound = float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max())
    lr_class = k.lr_factor * 4.0 / x_bound**2
    radius = logistic_radius(k.steps, lr_class, x_bound)
    gated, branches = pre_select_bounds(*_torch(p), lam, k.steps, lr_class, x_bound, radius)
    threshold = 1.0 - 0.5 / p.spec.n
    c = pre_icl_select(p.spec.d, k.steps, lr, lr_class, k.heads, x_bound, lam=lam, eps=eps, threshold=threshold,
                       select_const=2 * float(branches.max()), mask_const=masking_constant(k.log10_mask, gated))
    ref = PreICLSelect(k.steps, lr, lr_class, sigmoid_knots(k.heads, radius)[0], eps, threshold,
                       c.params["select_const"], lam=lam)
    return c, ref, p


# -- proofs ---------------------------------------------------------------------------------------------
def relu_gd_induction(lam: float = 0.0, lr: float = LR):
    """Bai et al.: the iterate w replicated in every token's ``w`` slot, for symbolic d and n."""
    import sympy as sp

    from verify import symbolic as S

    lr_, lm = S.exact(lr), S.exact(lam)
    WC = sp.MatrixSymbol("w", S.d, 1)

    def state(v):
        w = v["w"]
        return [S.context(x=S.X, y=S.Y, w=w * sp.OneMatrix(1, S.n)), S.query(x=S.XQ, y=S.Z11, w=w)]

    def step(v, layer):
        return dict(w=v["w"] - lr_ * (S.X * (S.X.T * v["w"] - S.Y.T) / S.n + lm * v["w"]))

    return S.Induction(lambda dd: relu_gd(dd, 2, lr=lr, lam=lam, mask_const=MASK), dict(w=WC), state, step,
                       dict(w=sp.ZeroMatrix(S.d, 1)), lambda v: v["w"].T * S.XQ)


def _rational_prompts(seeds=(0, 1, 2), **spec):
    from verify import exact as ex

    for seed in seeds:
        yield ex.rational_prompt(PromptSpec(seed=seed, **spec))


def _proximal_induction(build, prox, lr: float = LR):
    """relu_gd's state and readout with the step ``w <- prox(w - lr grad L0(w))``, ``prox`` a scalar
    function applied to every coordinate: the MLP is lifted as coordinatewise units and compared
    with ``prox`` on all of R (:func:`verify.symbolic.pointwise_equal`)."""
    import dataclasses

    from verify import symbolic as S

    lr_ = S.exact(lr)

    def step(v, layer):
        w = v["w"]
        return dict(w=S.coordinatewise(prox, w - lr_ * S.X * (S.X.T * w - S.Y.T) / S.n))

    return dataclasses.replace(relu_gd_induction(0.0, lr), build=build, step=step)


def lasso_induction(lr: float = LR, lam: float = LAM):
    """lasso_ista: one ISTA step per layer, ``S_c(v) = sign(v) max(|v| - c, 0)`` with c = lr lam,
    for symbolic d and n."""
    import sympy as sp

    from verify import symbolic as S

    c = S.exact(lr) * S.exact(lam)
    return _proximal_induction(lambda dd: lasso_ista(dd, 2, lr=lr, lam=lam, mask_const=MASK),
                               lambda z: sp.sign(z) * sp.Max(sp.Abs(z) - c, 0), lr)


#: the general proofs' proximal parameters: the box radius, and a lam with lr lam/(1 + lr lam) = 3/4
#: exact in floating point (the factory stores that shrink coefficient)
PROX_PROOF = dict(box=1 / 32, l2=16.0)


def prox_induction(prox: str, lr: float = LR):
    """proximal_gd: projected GD (``clip(v, -R, R)``) or the l2 prox (``v/(1 + lr lam)``), one step
    per layer, for symbolic d and n."""
    import sympy as sp

    from verify import symbolic as S

    if prox not in PROX_PROOF:
        raise ConstructionError(f"prox must be one of {tuple(PROX_PROOF)}, got {prox!r}")
    param = PROX_PROOF[prox]
    p = S.exact(param)
    f = (lambda z: sp.Max(sp.Min(z, p), -p)) if prox == "box" else (lambda z: z / (1 + S.exact(lr) * p))
    return _proximal_induction(lambda dd: proximal_gd(dd, 2, lr, prox, param, mask_const=MASK), f, lr)


#: the selection proof's candidates, steps and slack (exact floats; the proof is for every split)
SELECTION_PROOF = dict(lams=[4.0, 1 / 2, 1 / 16], steps=2, gamma=1 / 16)


def select_induction():
    """ridge_select for symbolic d, n_train and n_val (:data:`SELECTION_PROOF`'s three lambdas).
    Every token holds the K iterates ``w_k``; a step layer is one ridge-GD step for each lambda on
    the train split, ``w_k <- w_k - lr (X_1 (X_1^T w_k - Y_1^T)/n_1 + lam_k w_k)``; the readout
    writes ``f_k = <w_k, x>`` into every token, the validation losses
    ``L_k = |X_2^T w_k - Y_2^T|^2/(n - n_1)``, the selection weights ``a_k`` of
    :class:`verify.reference.ValidationSelect` (``c_k = sum_j relu(L_k - L_j)``,
    ``u_k = relu(1 - c_k/gamma)``, ``P_k = relu(1 - sum_{j<=k} u_j)``, ``a_k = P_{k-1} - P_k``,
    ``P_{-1} = 1``), and outputs ``sum_k a_k <w_k, x_q>``."""
    import sympy as sp

    from verify import symbolic as S

    P = SELECTION_PROOF
    lr, lams, gamma = S.exact(LR), [S.exact(v) for v in P["lams"]], S.exact(P["gamma"])
    K = len(lams)
    V = {f"w{k}": sp.MatrixSymbol(f"w_{k}", S.d, 1) for k in range(K)}
    relu = lambda A, b=0: S.coordinatewise(lambda z: sp.Max(z + b, 0), A)  # noqa: E731

    def state(v):
        return [S.train(x=S.X1, y=S.Y1, **{k: w * sp.OneMatrix(1, S.N1) for k, w in v.items()}),
                S.validation(x=S.X2, y=S.Y2, **{k: w * sp.OneMatrix(1, S.n - S.N1) for k, w in v.items()}),
                S.query(x=S.XQ, y=S.Z11, **v)]

    def step(v, layer):
        return {f"w{k}": w - lr * (S.X1 * (S.X1.T * w - S.Y1.T) / S.N1 + lams[k] * w)
                for k, w in ((k, v[f"w{k}"]) for k in range(K))}

    def prediction(v):
        r = [S.X2.T * v[f"w{k}"] - S.Y2.T for k in range(K)]
        L = [r_k.T * r_k / (S.n - S.N1) for r_k in r]
        c = [sp.MatAdd(*[relu(L[k] - L[j]) for j in range(K) if j != k]) for k in range(K)]
        u = [relu(-c[k] / gamma, 1) for k in range(K)]
        Pk = [relu(-sp.MatAdd(*u[:k + 1]), 1) for k in range(K)]
        a = [sp.Identity(1) - Pk[0], *(Pk[k - 1] - Pk[k] for k in range(1, K))]
        return sp.MatAdd(*[a[k] * v[f"w{k}"].T * S.XQ for k in range(K)])

    def build(dd, n_train, n_val):
        return ridge_select(dd, P["lams"], P["steps"], lr=LR, n_train=n_train, n_val=n_val, gamma=P["gamma"],
                            mask_const=MASK)

    return S.Induction(build, V, state, step, {k: sp.ZeroMatrix(S.d, 1) for k in V}, prediction, split=True)


#: the binary test proof's parameters (dyadic: every weight and knot an exact float)
BINARY_PROOF = dict(eps=1 / 8, threshold=1 / 2)


def _psi_map(eps):
    """psi as the proofs state it, without ReLUs: triangular bumps of height 1 and half-width eps at 0
    and 1 (a sympy function of one variable)."""
    import sympy as sp

    return lambda y: sp.Max(0, 1 - sp.Abs(y) / eps) + sp.Max(0, 1 - sp.Abs(y - 1) / eps)


def _test_map(t):
    """The test's threshold map ``clip((Psi - t)/(1 - t), 0, 1)`` (a sympy function of one variable)."""
    import sympy as sp

    return lambda z: sp.Max(sp.Min((z - t) / (1 - t), 1), 0)


def binary_induction():
    """binary_test, for symbolic d and n and every real label: layer 1 adds
    ``Psi = (1/n) sum_j psi(y_j)`` to every token's ``psi`` slot, psi stated without ReLUs as two
    triangular bumps of half-width eps, ``max(0, 1 - |y|/eps) + max(0, 1 - |y - 1|/eps)``; layer 2 adds
    ``clip((Psi - threshold)/(1 - threshold), 0, 1)`` to every token's ``test`` slot.  Each head
    applies ``relu`` to every score (an entrywise map of the score matrix); the proof shows that
    the six heads' maps sum to psi and the two threshold heads' to the clip, on all of R."""
    import sympy as sp

    from verify import symbolic as S

    eps, t = S.exact(BINARY_PROOF["eps"]), S.exact(BINARY_PROOF["threshold"])
    V = dict(psi=sp.MatrixSymbol("Psi", 1, 1), test=sp.MatrixSymbol("T", 1, 1))

    def state(v):
        ones = sp.OneMatrix(1, S.n)
        return [S.context(x=S.X, y=S.Y, psi=v["psi"] * ones, test=v["test"] * ones),
                S.query(x=S.XQ, y=S.Z11, psi=v["psi"], test=v["test"])]

    def step(v, layer):
        if layer == 0:
            return dict(v, psi=v["psi"] + sp.OneMatrix(1, S.n) * S.coordinatewise(_psi_map(eps), S.Y.T) / S.n)
        return dict(v, test=v["test"] + S.coordinatewise(_test_map(t), v["psi"]))

    return S.Induction(lambda dd: binary_test(dd, **BINARY_PROOF), V, state, step,
                       {k: sp.ZeroMatrix(1, 1) for k in V}, lambda v: v["test"])


def _verdict(ok: bool, not_generic: str, differs: str, proved: str) -> Outcome:
    """A proof part's outcome: ``differs`` when the identity failed, else, when ``not_generic`` says
    what the prompts left unexercised, that; else ``proved``."""
    if not ok:
        return Outcome(False, differs)
    if not_generic:
        return Outcome(False, f"the proof's prompts are not generic: {not_generic}")
    return Outcome(True, proved)


#: the logistic proofs' parameters: lr_class = 1/4 (its products with the ReLU slopes are exact floats),
#: x_bound = 1, 5 knots on [-R, R], R = steps/4 (every knot a dyadic rational)
GLM_PROOF = dict(steps=2, lr=0.25, heads=5, x_bound=1.0)


def _exact_sigmoid(steps: int, lr: float, heads: int, x_bound: float) -> tuple:
    """``(knots, a, base)`` of the sum-of-ReLU sigmoid the logistic constructions store, as Fractions
    with exactly those floats (:func:`sigmoid_knots` on ``[-R, R]``, ``R = logistic_radius``)."""
    from verify import exact as ex

    knots, a, base = sigmoid_knots(heads, logistic_radius(steps, lr, x_bound))
    return ex.to_exact(knots), ex.to_exact(a), Fraction(base)


def _logistic_prompts(B: int, n: int, d: int, seeds=(0, 1), real: bool = False):
    """Rational prompts with every input and query in the unit ball, with 0/1 labels ``y > 0``
    (``real``: also with the real labels)."""
    from verify import exact as ex

    out = []
    for seed in seeds:
        X, y, Xq = ex.rational_prompt(PromptSpec(seed=seed, B=B, n=n, d=d, m=2))
        Z = ex.unit_ball(np.concatenate([X, Xq], 1), y, None)[0]
        X, Xq = Z[:, :n], Z[:, n:]
        out += [(X, (y > 0).astype(np.float64), Xq)] + ([(X, y, Xq)] if real else [])
    return out


def _sigma_hat_map():
    """The logistic proofs' sum-of-ReLU sigmoid, ``sigma_hat(s) = base + sum_m a_m relu(s - s_m)`` with
    the floats the factories store at :data:`GLM_PROOF` (a sympy function of one variable)."""
    import sympy as sp

    from verify import symbolic as S

    P = GLM_PROOF
    knots, a, base = (np.vectorize(S.exact, otypes=[object])(v) for v in
                      sigmoid_knots(P["heads"], logistic_radius(P["steps"], P["lr"], P["x_bound"])))
    return lambda z: base + sum(am * sp.Max(z - sm, 0) for sm, am in zip(knots, a))


def glm_induction(lam: float = 0.0):
    """logistic_gd: one GD step on the logistic loss per layer, with the construction's sum-of-ReLU
    sigmoid ``sigma_hat(s) = base + sum_m a_m relu(s - s_m)`` (:func:`sigmoid_knots`, the stored
    floats), ``w <- w - lr ((1/n) X (sigma_hat(X^T w) - y^T) + lam w)``, for symbolic d and n.  Each
    knot's head applies ``relu(w.x_j - s_m)`` to every score (an entrywise map of the score matrix);
    the heads' maps sum to ``sigma_hat`` on all of R, and the label head's ``relu(y_j)`` to ``y_j`` on
    the domain's labels in [0, 1]."""
    import dataclasses

    from verify import symbolic as S

    P = GLM_PROOF
    lr_, lm, sigma_hat = S.exact(P["lr"]), S.exact(lam), _sigma_hat_map()

    def step(v, layer):
        w = v["w"]
        return dict(w=w - lr_ * (S.X * (S.coordinatewise(sigma_hat, S.X.T * w) - S.Y.T) / S.n + lm * w))

    build = lambda dd: logistic_gd(dd, P["steps"], P["lr"], P["heads"], P["x_bound"], mask_const=MASK, lam=lam)  # noqa: E731
    return dataclasses.replace(relu_gd_induction(0.0, P["lr"]), build=build, step=step, domains={S.Y: (0, 1)})


def _link_proof_build():
    P = GLM_PROOF
    return link_select(2, P["steps"], LR, P["lr"], P["heads"], P["x_bound"], 4, 4, LINK_PROOF_GAMMA, mask_const=MASK)


#: link_select's proof slack: a near tie between the links on one prompt (fractional weights)
LINK_PROOF_GAMMA = 1 / 4


def link_sigma_lemma(c: Construction | None = None) -> Outcome:
    """link_select's sigmoid MLP, read from the factory, reads only the logit and writes only
    ``f1 = base + sum_m a_m relu(logit - s_m)`` (:func:`verify.reference.relu_sum`), for every real
    logit: both sides are piecewise linear, so equality at the breakpoints, between them and beyond
    each end is equality everywhere (:func:`verify.symbolic.piecewise_linear_equal`)."""
    from verify import exact as ex
    from verify.reference import relu_sum
    from verify.symbolic import piecewise_linear_equal

    c = c or _link_proof_build()
    m, lay = c.blocks[c.n_step_blocks].mlp, c.layout
    i, o = lay["logit"].start, lay["f1"].start
    knots, a, base = _exact_sigmoid(GLM_PROOF["steps"], GLM_PROOF["lr"], GLM_PROOF["heads"], GLM_PROOF["x_bound"])
    alone = not (np.delete(m.W_in, i, axis=0).any() or np.delete(m.W_out, o, axis=1).any()
                 or np.delete(m.b_out, o).any())
    W, b, V = (ex.to_exact(t) for t in (m.W_in[i], m.b_in, m.W_out[:, o]))
    b0, frac = Fraction(m.b_out[o]), lambda p: Fraction(int(p.p), int(p.q))  # noqa: E731
    mlp = lambda p: sum(V[f] * max(W[f] * frac(p) + b[f], 0) for f in range(len(b))) + b0  # noqa: E731
    ok = alone and piecewise_linear_equal(mlp, lambda p: np.asarray(relu_sum(frac(p), knots, a, base)).item(),
                                          [*knots, *(-b[f] / W[f] for f in range(len(b)) if W[f])])
    return Outcome(ok, "link_select's sigmoid MLP writes sigma_hat(logit) into f1 for every real logit" if ok else
                   "link_select's sigmoid MLP is not the sum-of-ReLU sigmoid of the logit")


def link_exact(c: Construction | None = None) -> Outcome:
    """link_select equals both links' GD + validation + selection (:class:`LinkSelect` with the
    sum-of-ReLU sigmoid) in exact arithmetic on rational prompts with real and with 0/1 labels,
    after both steps: some selection weight strictly between 0 and 1, and every ReLU of the
    selection MLPs open and closed (but ``P_K = 1 - sum_k u_k``, which is <= 0 whenever the best
    candidate has ``u = 1``)."""
    from verify import exact as ex

    P = GLM_PROOF
    c = c or _link_proof_build()
    relu = _exact_sigmoid(P["steps"], P["lr"], P["heads"], P["x_bound"])
    ref = LinkSelect(P["steps"], Fraction(LR), Fraction(P["lr"]), None, 4, Fraction(LINK_PROOF_GAMMA), relu=relu)
    steps = P["steps"]
    gates = ex.ReluGates(blocks={steps + 1, steps + 2, steps + 3})
    ok, weights = True, []
    # seed 0 with real labels (the square loss wins), seed 1 with 0/1 labels (the logistic link wins) and
    # with real labels (a near tie): together generic; seed 0's 0/1 labels add nothing
    for pr in _logistic_prompts(2, 8, 2, seeds=(0, 1), real=True)[1:]:
        ok = ex.trace_equals(c, ref, *pr, record=gates)
        weights.append(ref.weights_[-1])
        if not ok:
            break
    weights = np.concatenate(weights)
    stuck = gates.stuck(ignore={("mlp", steps + 3, 1)})
    fractional = bool(((weights > 0) & (weights < 1)).any())
    return _verdict(ok, (stuck or not fractional) and f"fractional weights {fractional}, gates never switched {stuck}",
                    "link_select differs from both links' GD + validation + selection in exact arithmetic",
                    "link_select(d=2, 2 steps) = both links' GD + validation + selection exactly on 3x2 rational "
                    "prompts (4 train + 4 validation; real and 0/1 labels); fractional weights and every selection "
                    "gate open and closed")


#: pre_icl_select's proof: the binary test's eps and threshold (exact), and a selection constant above
#: |f_ridge - f_logistic| on the proof's prompts
PRE_SELECT_PROOF = dict(eps=1 / 8, threshold=1 / 2, select_const=2.0**10)


def pre_select_induction():
    """pre_icl_select, for symbolic d and n and every real label.  The prefix block writes the binary
    test into every token (``psi``: ``Psi = (1/n) sum_j psi(y_j)``, ``test = clip((Psi - t)/(1 - t), 0,
    1)``, as in :func:`binary_induction`); each step layer is one ridge-GD step on ``w`` and one
    logistic-GD step on ``v`` (the stored sum-of-ReLU sigmoid, labels entering linearly); the
    readout writes ``f_r = <w, x_q>``, ``f_c = <v, x_q>`` and outputs
    ``f_r + relu(f_c - f_r - M (1 - test)) - relu(f_r - f_c - M (1 - test))`` (M = ``select_const``)."""
    import sympy as sp

    from verify import symbolic as S

    P, Q = GLM_PROOF, PRE_SELECT_PROOF
    eps, t, M = S.exact(Q["eps"]), S.exact(Q["threshold"]), S.exact(Q["select_const"])
    lr, lr_c, lm, sigma_hat = S.exact(LR), S.exact(P["lr"]), S.exact(LAM), _sigma_hat_map()
    ones = sp.OneMatrix(1, S.n)
    psi = ones * S.coordinatewise(_psi_map(eps), S.Y.T) / S.n
    test = S.coordinatewise(_test_map(t), psi)
    V = dict(w=sp.MatrixSymbol("w", S.d, 1), v=sp.MatrixSymbol("v", S.d, 1))

    def state(v):
        return [S.context(x=S.X, y=S.Y, w=v["w"] * ones, v=v["v"] * ones, psi=psi * ones, test=test * ones),
                S.query(x=S.XQ, y=S.Z11, w=v["w"], v=v["v"], psi=psi, test=test)]

    def step(v, layer):
        w, u = v["w"], v["v"]
        return dict(w=w - lr * (S.X * (S.X.T * w - S.Y.T) / S.n + lm * w),
                    v=u - lr_c * S.X * (S.coordinatewise(sigma_hat, S.X.T * u) - S.Y.T) / S.n)

    def prediction(v):
        fr, fc = v["w"].T * S.XQ, v["v"].T * S.XQ
        gated = lambda z: sp.Max(z - M, 0)  # noqa: E731  relu(. - M (1 - test)), the -M in the bias
        return fr + S.coordinatewise(gated, fc - fr + M * test) - S.coordinatewise(gated, fr - fc + M * test)

    build = lambda dd: pre_icl_select(dd, P["steps"], LR, P["lr"], P["heads"], P["x_bound"], lam=LAM, eps=Q["eps"],  # noqa: E731
                                      threshold=Q["threshold"], select_const=Q["select_const"], mask_const=MASK)
    return S.Induction(build, V, state, step, {k: sp.ZeroMatrix(S.d, 1) for k in V}, prediction)


# -- registration -------------------------------------------------------------------------------------------
def _gd_baseline(prep, c):
    return lambda: baselines.gd(prep.X, prep.y, c.steps, lr=c.params["lr"], lam=c.params.get("lam", 0.0))


register(
    relu_gd, summary="one GD step with ReLU attention; the iterate sits in every token",
    source="Bai et al. 2023, Prop. C.2, Cor. C.1", exactness="exact",
    paper_resources='Thm 13: L + 1 layers, M = 2 heads, 2 in the last; D = Θ(d)',
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01), baseline=_gd_baseline),
    claims=[
        Claim("bai23-icgd", "Bai et al. 2023", "Prop. C.2 / Thm 13 (square loss)",
              "ReLU attention, 2 sign-split heads per layer: every token's w slot after layer t is the GD iterate "
              "w_t; a 2-head readout layer writes <w_t, x_q> (query gated by -B(1-t_j), B varied)",
              "GD iterates (numpy)", _relu_gd_case, GD, bounds=_iterates_in_every_token,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction relu_gd", relu_gd_induction)))),
        Claim("bai23-ridge-relu", "Bai et al. 2023", "Cor. C.1 / Thm 4 (l2 head)",
              "a third ReLU head with constant score adds -lr*lam*w: each layer is one GD step on the ridge objective",
              "GD iterates on the ridge objective (numpy)", _relu_ridge_case, GD, variant="lam>0",
              bounds=_iterates_in_every_token,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction relu_gd(lam>0)", lambda: relu_gd_induction(LAM))))),
    ],
)

register(
    decoder_gd, summary="one GD step at every prefix: strictly causal attention divided by each row's key count, a "
                        "self-attending readout", source="Bai et al. 2023, App. B, Prop. B.1", exactness="exact",
    paper_resources="Prop. B.1: the encoder construction's layers and heads, with causal attention",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01), baseline=_gd_baseline),
    claims=[
        Claim("bai23-decoder", "Bai et al. 2023", "App. B, Prop. B.1 (decoder-based ICGD)",
              "a causal transformer: after layer t every context token i holds GD's w_t on the i-1 examples before it "
              "(divisor (i-1) v 1), every query GD's w_t on all n; the readout predicts y_i at every position and the "
              "queries from all n (linear and ReLU attention)",
              "GD iterates on every prefix (numpy)", _decoder_case, GD, bounds=_decoder_bounds,
              report=_decoder_report,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      *(induction(f"induction decoder_gd({a})", lambda a=a: decoder_induction(a))
                                        for a in DECODER_ATTENTION)))),
    ],
)

register(
    lasso_ista, summary="one ISTA step: attention GD and a soft-threshold ReLU MLP", source="Bai et al. 2023, Thm 10",
    exactness="exact per step; gap O(1/L)",
    paper_resources='Thm 10 / Prop. C.1: 2 heads, soft threshold in an MLP of hidden size 4d; O(βB_w²/ε) layers',
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, lam=0.01), baseline=_gd_baseline),
    claims=[
        Claim("bai23-lasso", "Bai et al. 2023", "Thm 10, Prop. C.1 (ISTA, soft-threshold MLP)",
              "attention GD step + 4d-ReLU soft-threshold MLP per layer = one ISTA step; objective gap "
              "F(w_t) - F* <= |w*|^2/(2 lr t)",
              "ISTA iterates; FISTA solution with a duality-gap certificate (numpy)", _lasso_case, ISTA,
              prompt=dict(log10_kappa=(0.0, 1.5)), bounds=_lasso_bounds,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction lasso_ista", lasso_induction)))),
    ],
)


def _prox_baseline(prep, c):
    lr, prox, param = c.params["lr"], c.params["prox"], c.params["param"]
    X, y = prep.X, prep.y

    def run():
        w = torch.zeros(X.shape[0], X.shape[2], dtype=X.dtype, device=X.device)
        for _ in range(c.steps):
            w = w + lr * (X.transpose(1, 2) @ (y - (X @ w[..., None])[..., 0])[..., None])[..., 0] / X.shape[1]
            w = w.clamp(-param, param) if prox == "box" else w / (1 + lr * param)
        return w

    return run


register(
    proximal_gd, summary="one proximal GD step: attention GD, then a ReLU MLP projecting onto a box or shrinking by "
                         "the l2 prox", source="Bai et al. 2023, App. C", exactness="exact",
    paper_resources="App. C: 2 heads, the proximal map in an MLP after the GD step",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, prox="l2", param=0.01), baseline=_prox_baseline),
    claims=[
        Claim("bai23-prox", "Bai et al. 2023", "App. C, Thm C.1 / Prop. C.1 (proximal steps beyond l1)",
              "attention GD step + a 2d-ReLU MLP per layer = one proximal GD step: projected GD onto {|w|_inf <= R} "
              "(clip) or the l2-squared prox v/(1 + lr lam), whose fixed point is ridge",
              "projected / l2-prox GD iterates (numpy)", _prox_case, ProxGD,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction proximal_gd(box)", lambda: prox_induction("box")),
                                      induction("induction proximal_gd(l2)", lambda: prox_induction("l2"))))),
    ],
)


def _logistic_baseline(prep, c):
    return lambda: baselines.gd(prep.X, prep.y, c.steps, lr=c.params["lr"], link=torch.sigmoid)


register(
    logistic_gd, summary="one logistic-GD step, with σ a sum of `heads` ReLUs", source="Bai et al. 2023, Thm 13",
    exactness="approximate: ‖ŵ_t − w_t‖ ≤ ε·t·η·B_x, ε ~ heads⁻²",
    paper_resources='Thm 13: L + 1 layers, M heads = the ReLU count of an ε-approximation of the link',
    bench=Bench(lambda d, n: dict(steps=10, lr=1.0, heads=8, x_bound=1.0), labels="binary",
                baseline=_logistic_baseline),
    claims=[
        Claim("bai23-glm", "Bai et al. 2023", "Thm 13 (GLM / logistic ICGD)",
              "GD on the logistic loss with sigma replaced by `heads` ReLUs is exact GD with the interpolant, and "
              "|w_hat_t - w_t| <= eps*t*lr*B_x against exact logistic GD (eps = fit error ~ heads^-2)",
              "logistic GD with the interpolated / the exact sigmoid (numpy)", _glm_case, LogisticGD,
              bounds=_glm_bounds,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction logistic_gd", glm_induction)))),
        Claim("bai23-glm-ridge", "Bai et al. 2023", "Thm 13 with Cor. C.1 (l2-regularised logistic ICGD)",
              "with one more head (score 1, value -lr lam w) each layer is GD on the logistic loss plus (lam/2)|w|^2 with "
              "sigma replaced by `heads` ReLUs, and |w_hat_t - w_t| <= eps*t*lr*B_x against exact regularised logistic GD",
              "regularised logistic GD with the interpolated / the exact sigmoid (numpy)", _glm_ridge_case, LogisticGD,
              variant="lam>0", knobs=dict(lam_factor=(0.01, 4.0)), bounds=_glm_bounds,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction logistic_gd(lam>0)", lambda: glm_induction(LAM))))),
    ],
)


def _select_baseline(prep, c):
    P, ntr = c.params, c.params["n_train"]
    return lambda: [baselines.gd(prep.X[:, :ntr], prep.y[:, :ntr], c.steps, lr=P["lr"], lam=lam) for lam in P["lams"]]


register(
    ridge_select, summary="ridge GD for each λ; exact validation losses; λ chosen in context",
    source="Bai et al. 2023, Prop. 15, Thm 16", exactness="exact; validation loss ≤ best + γ",
    paper_resources='Prop. 15 / Thm 16: 3 layers after the base algorithms, O(K) heads, D = Θ(Kd)',
    bench=Bench(lambda d, n: dict(lams=(0.01, 0.1, 1.0), steps=10, lr=0.01, gamma=0.01, n_train=n - n // 4,
                                  n_val=n // 4, mask_const=1e9), baseline=_select_baseline),
    claims=[
        Claim("bai23-selection", "Bai et al. 2023", "Prop. 15, Thm 16 (post-ICL validation)",
              "GD for 3 ridge lambdas in parallel heads, exact validation losses, ReLU-MLP selection and aggregation "
              "= the numpy selection rule; the selected predictor's validation loss <= min_k L_k + gamma",
              "train/validation split + selection rule (numpy)", _select_case, RidgeSelect,
              prompt=dict(n=(4, 40)), bounds=_select_bounds,
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction ridge_select", select_induction)))),
        Claim("bai23-noise-selection", "Bai et al. 2023", "Thm 17, App. I.1 (noise-level selection)",
              "on a mixture of noise levels {0.1, 1}, ridge GD at each level's Bayes lambda = sigma_k^2 d/n_train in "
              "parallel heads and post-ICL validation select a predictor whose test risk (exact, Gaussian x) is at most "
              "min_k R_k + gamma + 2 max_k |L_k - R_k|: the validation losses' deviation from the risks is the slack",
              "the exact Gaussian-design risks of the candidates (numpy)", check_noise_selection, kind="bound",
              variant="noise mixture", prompt=dict(n=(10, 60)),
              proof=Proof("none", note="no proof: a per-prompt inequality (convexity of the risk and the selection "
                                       "rule), checked on the construction's own selected weights")),
    ],
)


def _link_baseline(prep, c):
    P, ntr = c.params, c.params["n_train"]
    return lambda: (baselines.gd(prep.X[:, :ntr], prep.y[:, :ntr], c.steps, lr=P["lr"]),
                    baselines.gd(prep.X[:, :ntr], prep.y[:, :ntr], c.steps, lr=P["lr_class"], link=torch.sigmoid))


register(
    link_select, summary="GD for the identity link and logistic GD in parallel heads; the link chosen by validation loss",
    source="Bai et al. 2023, Thm I.2", exactness="exact; validation loss ≤ best + γ",
    paper_resources="Thm I.2: the two GLM algorithms' layers side by side, then Prop. 15's validation layers",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, lr_class=1.0, heads=8, x_bound=1.0, n_train=n - n // 4,
                                  n_val=n // 4, gamma=0.01, mask_const=1e9), labels="binary", baseline=_link_baseline),
    claims=[
        Claim("bai23-link-selection", "Bai et al. 2023", "Thm I.2 (link selection by post-ICL validation)",
              "GD on the square loss and logistic GD (sigma a sum of ReLUs) in parallel heads on the train split, "
              "exact validation losses of x.w and sigma_hat(x.v), the selection MLPs of Prop. 15 = the numpy rule; "
              "the selected link's validation loss <= min_k L_k + gamma",
              "train/validation split + both links' GD + selection rule (numpy)", _link_case, LinkSelect,
              prompt=dict(n=(4, 40)), bounds=_link_bounds,
              proof=Proof("exact-rational", (Part("lemma sigmoid MLP", link_sigma_lemma),
                                             Part("exact link_select", link_exact)))),
    ],
)


def _binary_baseline(prep, c):
    y, eps, t = prep.y, c.params["eps"], c.params["threshold"]
    return lambda: (((y.abs() <= eps) | ((y - 1).abs() <= eps)).to(y.dtype).mean(-1) >= t)


register(
    binary_test, summary="pre-ICL test: are all labels binary? 6 ReLU heads sum psi(y_i), 2 heads threshold",
    source="Bai et al. 2023, Lemma 18, Cor. H.1", exactness="exact",
    paper_resources='Lemma 18: one layer with 6 heads; Cor. H.1: a 2-head thresholding layer',
    bench=Bench(lambda d, n: dict(eps=0.1, threshold=0.5), labels="binary", baseline=_binary_baseline),
    claims=[
        Claim("bai23-binary-test", "Bai et al. 2023", "Lemma 18, Cor. H.1 (pre-ICL testing)",
              "one ReLU layer with 6 heads writes Psi = (1/n) sum_i psi(y_i) (psi: two triangular bumps of width eps at "
              "0 and 1, exactly 6 ReLUs), a 2-head layer thresholds it: 1 iff all labels are binary",
              "the same psi and threshold (numpy)", _binary_case, BinaryTest, prompt=dict(n=(2, 40)),
              proof=Proof("general", (induction("induction binary_test", binary_induction),))),
    ],
)

def _pre_select_baseline(prep, c):
    P = c.params
    return lambda: (baselines.gd(prep.X, prep.y, c.steps, lr=P["lr"], lam=P["lam"]),
                    baselines.gd(prep.X, prep.y, c.steps, lr=P["lr_class"], link=torch.sigmoid))


register(
    pre_icl_select, summary="the binary test, then ridge GD and logistic GD in parallel heads; the output is the branch "
                            "the test selects", source="Bai et al. 2023, Prop. 19, App. H.4", exactness="exact",
    paper_resources="Prop. 19: the binary-test layers, then the two base algorithms' layers side by side (their "
                    "heads added), one selection layer",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01, lr_class=1.0, heads=8, x_bound=1.0, threshold=1 - 0.5 / n,
                                  select_const=1e3, mask_const=1e9), labels="binary", baseline=_pre_select_baseline),
    claims=[
        Claim("bai23-pre-icl-select", "Bai et al. 2023", "Prop. 19, App. H.4 (pre-ICL testing selects the task)",
              "one transformer runs the binary test, ridge GD and logistic GD (sigma a sum of ReLUs) in parallel "
              "heads, and outputs the logistic logit when all labels are binary, the ridge prediction when they "
              "are not (the same selection formula as numpy in between), at every step",
              "binary test + ridge GD + logistic GD with the interpolated sigmoid + selection (numpy)",
              _pre_select_case, PreICLSelect, prompt=dict(n=(2, 40)),
              proof=Proof("general", (lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction pre_icl_select", pre_select_induction)))),
    ],
)

register_paper(Paper(
    "Bai et al. 2023", "Transformers as Statisticians: provable in-context learning with in-context algorithm "
                       "selection (NeurIPS 2023, arXiv 2306.04637)", (
        Result("Thm 4", "ridge regression by in-context GD in O(kappa log 1/eps) layers", ("bai23-ridge",)),
        Result("Prop. C.2, Cor. C.1", "ReLU attention carries out GD (the iterate in every token), with an l2 head",
               ("bai23-icgd", "bai23-ridge-relu")),
        Result("Thm 10", "LASSO by ISTA: attention GD and a soft-threshold MLP", ("bai23-lasso",)),
        Result("Thm 13", "GLMs (logistic regression) by GD with sigma from sums of ReLUs",
               ("bai23-glm", "bai23-glm-ridge")),
        Result("Prop. 15, Thm 16", "post-ICL validation: ridge for several lambda, selection by validation loss",
               ("bai23-selection",)),
        Result("Lemma 18, Cor. H.1", "pre-ICL testing: are all labels binary?", ("bai23-binary-test",)),
        Result("Prop. B.1", "decoder (causal) versions predicting at every prefix", ("bai23-decoder",)),
        Result("Thm C.1", "proximal steps beyond l1 (l2 squared, box projection)", ("bai23-prox",)),
        Result("Thm 17, App. I.1", "noise-level selection among Bayes ridge estimators", ("bai23-noise-selection",)),
        Result("Prop. 19, App. H.4", "regression or classification, chosen by the binary test",
               ("bai23-pre-icl-select",)),
        Result("Thm I.2", "link-function selection by validation loss", ("bai23-link-selection",)),
        Result("weight norms", "the parameter norm of every construction", (), "not yet (bai23-norms)"),
        Result("Thm G.1", "GD on a two-layer neural network in context",
               ("bai23-two-layer", "bai23-two-layer-local")),
    )))
