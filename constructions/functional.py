"""Functional gradient descent in context with ReLU attention (Cheng, Chen and Sra 2023).

Notation: B batch, n context examples, m queries, d input dim, H heads, L = steps layers.
Kernel ``K(x, x') = sum_h relu(x^T W_h x')`` (one ReLU head per ``W_h``).  The functional loss
``1/(2n) sum_i (f(x_i) - y_i)^2 + (lam/2) |f|_H^2`` in the kernel's function space; a step from
``f_0 = 0`` with rate ``lr`` is ``f <- (f + (lr/n) sum_i r_i K(., x_i)) / (1 + lr lam)`` with
residuals ``r_i = y_i - f(x_i)`` (a gradient step on the data term, then the proximal map of the
ridge term, which divides by ``1 + lr lam``).  With lam = 0 it is plain functional GD.

Token layout (von Oswald's, with the labels kept for the ridge term):

=========  ======================  ===================
slot       context token i         query token
=========  ======================  ===================
``x``      x_i                     x_q
``y``      r_i = y_i - f_t(x_i)    -f_t(x_q)
``y0``     y_i (lam > 0)           0
=========  ======================  ===================

Layer t: ReLU attention, head h scoring ``relu(lr x_j^T W_h x_i)`` on the n context keys with
value ``y`` (the residual) and output ``-1/n`` into ``y``: every token's ``y`` loses
``(lr/n) sum_i K(x_j, x_i) r_i``, so the context residuals and the query's ``-f`` take the data
step at once.  For lam > 0 an MLP of two ReLU units adds ``c (y0 - y)``, ``c = lr lam/(1 + lr lam)``
(``relu(z) - relu(-z) = z`` exactly): ``y <- (y + lr lam y0)/(1 + lr lam)``, the proximal map.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np
import torch

from verify.claims import Claim, Outcome, Part, Proof
from verify.prompts import PromptSpec
from verify.prompts import Prompt
from verify.reference import KernelGD, kernel_matrix
from verify.tolerance import Comparison, C, eps

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .registry import Bench, Paper, Result, register, register_paper


def shrink(lr: float, lam: float) -> float:
    """The proximal step's coefficient ``c = lr lam / (1 + lr lam)`` (float; the construction's
    weight and, as a number, the reference's, so that both use the same value)."""
    return lr * lam / (1 + lr * lam)


def _kernels(heads, d: int) -> list[np.ndarray]:
    if heads is None:
        return [np.eye(d)]
    if isinstance(heads, np.ndarray) and heads.ndim == 2:
        heads = [heads]
    if not isinstance(heads, (list, tuple, np.ndarray)) or len(heads) == 0:
        raise ConstructionError("heads must be a non-empty list of [d, d] matrices W_h (kernel sum_h relu(x^T W_h x'))")
    return [parts.real_array(W, f"heads[{h}]", (d, d)) for h, W in enumerate(heads)]


KERNELS = ("relu", "exp")


def functional_gd(d: int, steps: int, lr: float, lam: float = 0.0, heads=None, kernel: str = "relu") -> Construction:
    """Each layer is one step of functional GD in the attention's kernel space (ReLU or exp attention).

    **Theorem** (Cheng et al. 2023, functional GD by nonlinear attention; ReLU attention).
    After layer t the query readout is ``f_t(x_q)``, where ``f_0 = 0`` and
    ``f_{t+1} = (f_t + (lr/n) sum_i (y_i - f_t(x_i)) K(., x_i)) / (1 + lr lam)`` with the kernel
    ``K(x, x') = sum_h relu(x^T W_h x')`` (``heads = [W_1, ...]``, default ``[I]``), or with
    ``kernel="exp"`` ``K(x, x') = sum_h exp(x^T W_h x')``, the kernel of exponential attention (Cheng
    et al.'s exp / softmax-type kernels: the softmax's numerator without its normaliser).  Its fixed point is
    kernel ridge ``f*(x) = k(x)^T (K + n lam I)^{-1} y``, reached at the rate
    ``rho = max_i |1 - lr kappa_i/n| / (1 + lr lam)`` (``kappa_i`` the eigenvalues of the Gram
    matrix K, symmetric when every W_h is): the query's error is at most ``|k(x_q)| rho^t |alpha|``
    (``cheng23-kernel-ridge``).

    **Proof.**  By induction on t, with ``y`` holding ``r_i`` on context tokens and ``-f_t(x_q)`` on
    queries: head h adds ``-(1/n) sum_i relu(lr x_j^T W_h x_i) r_i = -(lr/n) sum_i relu(x_j^T W_h x_i) r_i``
    (lr > 0; an exp head scores ``x_j^T W_h x_i`` and carries lr in its output, since exp is not
    homogeneous) to token j's ``y``; for a context token that is ``r_j - (lr/n) sum_i K(x_j, x_i) r_i =
    y_j - (f_t + (lr/n) sum_i r_i K(., x_i))(x_j)``, for the query the same with its ``-f``; the MLP
    then maps ``y`` to ``(y + lr lam y0)/(1 + lr lam)``, which is the new residual on context tokens
    and ``-f_{t+1}(x_q)`` on queries (``y0 = 0`` there).  Checked in exact rational arithmetic
    (``icl-verify prove cheng23-functional-gd``).

    **Paper mapping.**  Cheng et al. write the update with the attention's nonlinearity as the
    kernel and a learned step; here the kernel is ReLU attention's, the step ``lr`` and the ridge
    term's prox are explicit, and the loss has the toolkit's ``1/(2n)``.

    **Resources.**  ``steps`` layers, H heads of width d, width ``d + 1`` (``d + 2`` with the
    ridge term's ``y0``), ReLU (or exp) attention; an MLP of 2 units per layer when lam > 0.

    **Exactness.**  Exact (float64 round-off).  The exp kernel cannot be evaluated in exact rational
    arithmetic, so its form is checked in floats only (``cheng23-exp-kernel``).

    **Domain.**  ``lr > 0``, ``lam >= 0``, every ``W_h`` finite ``[d, d]``; the iteration may diverge
    for a step beyond the kernel's stability (the overflow check refuses inf).
    """
    d, steps = parts.positive_int(d, "d"), parts.positive_int(steps, "steps")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    H = len(heads) if isinstance(heads, (list, tuple)) else 1
    parts.budget("functional_gd", layers=steps, width=d + 2, heads=max(H, 1), d_head=d, mlp=2 if lam else 0)
    Ws = _kernels(heads, d)
    extra = [("y0", 1, "y")] if lam else []
    lay = parts.lsa_layout(d, *extra)
    c = shrink(lr, lam)
    mlp = parts.units_mlp(lay, "relu", [({"y0": [c], "y": [-c]}, 0.0, {"y": [1.0]}),
                                        ({"y0": [-c], "y": [c]}, 0.0, {"y": [-1.0]})]) if lam else None
    if not isinstance(kernel, str) or kernel not in KERNELS:
        raise ConstructionError(f"kernel must be one of {KERNELS}, got {kernel!r}")
    if kernel == "relu":  # relu is positively homogeneous: lr goes into the score
        heads_ = [parts.gd_head(lay, lr * W) for W in Ws]
    else:  # exp is not: the score is x_j^T W x_i and lr scales the output
        heads_ = [dict(h, W_O=lr * h["W_O"]) for h in (parts.gd_head(lay, W) for W in Ws)]
    blocks = [parts.block(kernel, heads_, mlp) for _ in range(steps)]
    params = dict(d=d, steps=steps, lr=lr, lam=lam, heads=[W.tolist() for W in Ws], kernel=kernel)
    return Construction("functional_gd", params, blocks, lay, d)


def _reference(c, shrink_value=None) -> KernelGD:
    p = c.params
    return KernelGD(p["steps"], p["lr"], shrink(p["lr"], p["lam"]) if shrink_value is None else shrink_value,
                    [np.asarray(W) for W in p["heads"]], p.get("kernel", "relu"))


def _heads(k, d: int) -> list[np.ndarray]:
    """1-3 symmetric kernels ``W_h = I + 0.5 S_h`` (S_h random symmetric, unit norm) from the seed."""
    rng = np.random.default_rng(k.seed)
    out = []
    for _ in range(1 + k.seed % 3):
        S = rng.normal(size=(d, d))
        S = (S + S.T) / 2
        out.append(np.eye(d) + 0.5 * S / max(np.linalg.norm(S, 2), 1e-12))
    return out


def _gram(X, Ws, kernel: str = "relu"):
    return kernel_matrix(X, X, Ws, kernel)


def _stable(p, k, Ws, kernel: str = "relu"):
    """A rate and ridge at which the iteration contracts on every prompt of the batch:
    ``lam = lam_min + 10^log10_lam`` with ``lam_min = max(0, -kappa_min/n)`` and
    ``lr = lr_factor / (kappa_max/n + lam)`` (lr_factor < 2: then rho < 1)."""
    K = _gram(p.X, Ws, kernel)
    ev = np.linalg.eigvalsh(K) / p.X.shape[1]
    lam = max(0.0, float(-ev.min())) + 10.0**k.log10_lam
    lr = k.lr_factor / (float(ev.max()) + lam)
    return lr, lam


def _case(p, k, kernel: str = "relu"):
    Ws = _heads(k, p.spec.d)
    lr, lam = _stable(p, k, Ws, kernel)
    lam = lam if k.seed % 2 else 0.0  # plain functional GD on half of the prompts
    c = functional_gd(p.spec.d, k.steps, lr, lam, Ws, kernel)
    return c, _reference(c)


def _exp_case(p, k):
    """The exp kernel on inputs scaled into the unit ball (scores |x_j^T W x_i| <= 1.5, so the kernel's
    values stay within e^{+-1.5}; the prompt is adapted, as a case may)."""
    s = 1.01 * max(float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max()), 1e-300)
    q = Prompt(X=p.X / s, y=p.y, Xq=p.Xq / s, w_star=p.w_star, spec=p.spec)
    return (*_case(q, k, "exp"), q)


def check_kernel_ridge(prompt, knobs) -> Comparison:
    """``cheng23-kernel-ridge``: with symmetric kernels and a contracting (lr, lam)
    (:func:`_stable`), after every layer t the context error ``e_t = f_t(X) - f*(X)`` (read from the
    construction's own ``y`` slots) obeys ``|e_{t+1}| <= rho |e_t|``, and the query readout is within
    ``|k_q| rho^t |alpha|`` of kernel ridge ``f*(x_q)``, plus the error model's round-off on each.
    Why: ``f_t = sum_i a_t,i K(., x_i)`` with ``a_{t+1} = (a_t + (lr/n)(y - K a_t))/(1 + lr lam)``
    from ``a_0 = 0``; ``alpha`` is its fixed point, so ``a_t - alpha = M^t (-alpha)`` with
    ``M = (I - (lr/n) K)/(1 + lr lam)``, ``|M| = rho``, and ``f_t(x_q) - f*(x_q) = k_q^T (a_t - alpha)``."""
    Ws = _heads(knobs, prompt.spec.d)
    lr, lam = _stable(prompt, knobs, Ws)
    X, y, Xq = prompt.X, prompt.y, prompt.Xq
    B, n, d = X.shape
    steps = max(knobs.steps, 3)
    c = functional_gd(d, steps, lr, lam, Ws)
    K = _gram(X, Ws)
    Kq = kernel_matrix(Xq, X, Ws)
    alpha = np.linalg.solve(K + n * lam * np.eye(n), y[..., None])[..., 0]
    f_ctx, f_q = np.einsum("bji,bi->bj", K, alpha), np.einsum("bqi,bi->bq", Kq, alpha)
    ev = np.linalg.eigvalsh(K)
    rho = np.abs(1 - lr * ev / n).max(-1) / (1 + lr * lam)
    r = c.read_slot(X, y, Xq, "y")[:, :, :n, 0]  # [S+1, B, n] context residuals
    e = (y[None] - r) - f_ctx[None]
    en = np.linalg.norm(e, axis=-1)  # [S+1, B]
    tr = c.trace(X, y, Xq)  # [S, B, m]
    u = C * eps(torch.float64) * (n + d) * (np.abs(y).max(-1) + np.abs(alpha).max(-1) * np.abs(K).sum(-1).max(-1)) * (steps + 1)
    kq = np.linalg.norm(Kq, axis=-1)  # [B, m]
    an = np.linalg.norm(alpha, axis=-1)
    m, t = [], []
    for s in range(steps):  # per layer: the context error's contraction, then every query's error
        m += [en[s + 1][:, None], np.abs(tr[s] - f_q)]
        t += [(rho * en[s] + u * np.sqrt(n))[:, None], kq * (rho ** (s + 1) * an)[:, None] + (u * (1 + lr * kq.max(-1)))[:, None]]
    m, t = np.concatenate(m, -1)[None], np.concatenate(t, -1)[None]
    return Comparison(m, np.zeros_like(m), t, t)


#: the exact-rational proof's kernels and knobs: dyadic entries, so lr * W is exact in float
PROOF_HEADS = [np.array([[1.0, 0.25], [0.25, 0.5]]), np.array([[0.5, -0.75], [-0.75, 1.0]])]


def functional_exact() -> Outcome:
    """functional_gd(d=2, 3 steps, 2 heads), with and without the ridge prox, equals kernel GD in
    exact rational arithmetic on random rational prompts."""
    from verify import exact as ex

    ok = True
    for lam in (0.0, 0.5):
        c = functional_gd(2, 3, 0.125, lam, PROOF_HEADS)
        ref = KernelGD(3, Fraction(1, 8), Fraction(shrink(0.125, lam)), [ex.to_exact(W) for W in PROOF_HEADS])
        for seed in (0, 1, 2):
            X, y, Xq = ex.rational_prompt(PromptSpec(B=2, n=5, m=2, d=2, seed=seed))
            ok &= ex.trace_equals(c, ref, X, y, Xq)
    return Outcome(ok, "functional_gd(d=2, 2 heads, 3 steps) = kernel GD (lam = 0) and proximal kernel GD (lam = 1/2) "
                       "exactly on 3 rational prompts each" if ok else
                   "functional_gd differs from kernel GD in exact arithmetic")


def _baseline(prep, c):
    X, y, Xq = prep.X, prep.y, prep.Xq
    Ws = [torch.tensor(W, dtype=X.dtype, device=X.device) for W in c.params["heads"]]
    lr, cs, steps = c.params["lr"], shrink(c.params["lr"], c.params["lam"]), c.params["steps"]

    phi = torch.relu if c.params.get("kernel", "relu") == "relu" else torch.exp

    def run():
        K = sum(phi(X @ W @ X.transpose(-1, -2)) for W in Ws)
        Kq = sum(phi(Xq @ W @ X.transpose(-1, -2)) for W in Ws)
        r, f = y.clone(), torch.zeros(Xq.shape[:2], dtype=X.dtype, device=X.device)
        for _ in range(steps):
            r, f = r - lr / X.shape[1] * (K @ r[..., None])[..., 0], f + lr / X.shape[1] * (Kq @ r[..., None])[..., 0]
            r, f = r + cs * (y - r), (1 - cs) * f
        return f

    return run


register(
    functional_gd, summary="ReLU attention whose heads sum kernels relu(x^T W_h x'): each layer one step of functional "
                           "GD (with lam > 0: proximal, converging to kernel ridge)",
    source="Cheng et al. 2023", exactness="exact",
    paper_resources="one attention layer per functional GD step, one head per kernel",
    bench=Bench(lambda d, n: dict(steps=10, lr=0.01), baseline=_baseline),
    claims=[
        Claim("cheng23-functional-gd", "Cheng et al. 2023", "functional GD by ReLU attention",
              "after layer t the readout is f_t(x_q), f_{t+1} = (f_t + (lr/n) sum_i (y_i - f_t(x_i)) K(., x_i))/(1 + lr lam), "
              "K = sum_h relu(x^T W_h x'): functional GD (lam = 0) or its proximal form for kernel ridge",
              "kernel GD (numpy)", _case, KernelGD, prompt=dict(n=(2, 24)),
              proof=Proof("exact-rational", (Part("exact functional_gd", functional_exact),))),
        Claim("cheng23-exp-kernel", "Cheng et al. 2023", "functional GD by exp attention (softmax-type kernel)",
              "with exp attention (the softmax's numerator, no normaliser) the heads sum kernels exp(x^T W_h x'), and "
              "after layer t the readout is f_t(x_q) of functional GD (or its proximal form) in that kernel's space",
              "kernel GD with the exp kernel (numpy)", _exp_case, KernelGD, variant="exp", prompt=dict(n=(2, 24)),
              proof=Proof("none", note="no proof in exact arithmetic: exp of a rational is not rational; the same induction "
                                       "as cheng23-functional-gd with the kernel changed, checked in floats on every "
                                       "layer")),
        Claim("cheng23-kernel-ridge", "Cheng et al. 2023", "functional GD converges to kernel ridge",
              "with symmetric kernels and a contracting step, the context error to kernel ridge f* = k^T (K + n lam I)^{-1} y "
              "shrinks by rho = max|1 - lr kappa/n|/(1 + lr lam) per layer, and the query readout is within the "
              "bound it implies of f*(x_q)", "kernel ridge (numpy solve)", check_kernel_ridge, kind="bound",
              prompt=dict(n=(2, 24)),
              proof=Proof("none", note="no proof: a numerical bound (the symmetric Gram matrix's spectral contraction, checked "
                                       "on the construction's own residuals)")),
    ],
)

register_paper(Paper(
    "Cheng et al. 2023", "Transformers implement functional gradient descent to learn non-linear functions in context "
                         "(Cheng, Chen, Sra; arXiv 2312.06528)", (
        Result("functional GD, ReLU attention", "each layer one step of functional GD in the attention's kernel space, "
                                                "heads summing kernels", ("cheng23-functional-gd",)),
        Result("convergence", "the iteration converges to kernel ridge at the Gram matrix's rate",
               ("cheng23-kernel-ridge",)),
        Result("exp / softmax-type kernels", "the kernel attention the exponential nonlinearity defines",
               ("cheng23-exp-kernel",)),
    )))
