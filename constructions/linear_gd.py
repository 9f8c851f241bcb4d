"""Linear-self-attention constructions: GD, ridge GD, GD++, preconditioned GD.

Notation: B batch, n context examples, m queries, d input dim, D residual
width, L layers (= steps).  Toolkit loss
``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2 + (lam/2)|w|^2``, ``w_0 = 0``.

Token layout (von Oswald et al. 2023, sec. 3.2, columns renamed):

=========  ==================  =============
slot       context token i     query token
=========  ==================  =============
``x``      x_i                 x_q
``y``      y_i                 0
``y0``     y_i  (lam > 0)      0
``one``    1    (lam > 0)      1
=========  ==================  =============

Invariant after layer t (the induction hypothesis of every proof here): the
``y`` slot of context token i holds the residual ``y_i - w_t.x_i`` and the
``y`` slot of every query holds ``-w_t.x_q``.  The readout is therefore
``-y`` (von Oswald's sign, claims.md sec. 11.1).  Attention is linear and
divided by n (the number of context examples); queries are masked out of the
keys/values, which stacking needs (claims.md sec. 11.2).
"""
from __future__ import annotations

import numpy as np
import torch

from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .transformer import AttentionSpec, BlockSpec

STABILITY_SLACK = 1e-9  # relative slack on the stability limits (round-off of the eigenvalue solver)


# -- parameter validation ----------------------------------------------------
def _positive_int(v, name: str) -> int:
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 1:
        raise ConstructionError(f"{name} must be a positive integer, got {v!r}")
    return int(v)


def _real(v, name: str, low: float = 0.0, strict: bool = True) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise ConstructionError(f"{name} must be a real number, got {v!r}") from None
    if not np.isfinite(f) or (f <= low if strict else f < low):
        raise ConstructionError(f"{name} must be finite and {'>' if strict else '>='} {low}, got {v!r}")
    return f


def _layout(d: int, ridge: bool) -> ResidualLayout:
    spec = [("x", d, "x"), ("y", 1, "y")]
    if ridge:
        spec += [("y0", 1, "y"), ("one", 1, "one")]
    return ResidualLayout.of(spec, Readout("y", -1.0))


# -- heads ---------------------------------------------------------------------
def gd_head(lay: ResidualLayout, P: np.ndarray) -> dict:
    """One head: ``y_j <- y_j - (1/n) sum_i (x_j^T P x_i) y_i`` for every token j.

    With ``y_i`` the residuals this is ``w <- w - P grad L(w)``.  The score is
    ``q_j.k_i`` with ``q_j = P^T x_j`` (W_Q's x block is P because tokens are
    row vectors) and ``k_i = x_i``: the transpose trap of claims.md sec. 11.5.
    """
    d = lay["x"].size
    return dict(
        W_Q=lay.read({"x": P}, d),
        W_K=lay.read({"x": np.eye(d)}, d),
        W_V=lay.read({"y": np.eye(1)}, 1),
        W_O=lay.write({"y": -np.eye(1)}, 1),
    )


def gd_plus_plus_head(lay: ResidualLayout, lr: float, gamma: float) -> dict:
    """One head (von Oswald App. A.10): score ``x_j.x_i``, value ``(x_i, y_i)``,
    output ``(-gamma x, -lr y)``: ``x_j <- (I - gamma S) x_j`` and the GD step."""
    d = lay["x"].size
    E = d + 1  # head columns 0..d-1 carry x, column d carries y
    y_col = np.eye(E)[d:]  # [1, E]
    value = lay.read({"x": np.eye(d, E), "y": y_col}, E)
    out = lay.write({"x": -gamma * np.eye(E, d), "y": -lr * y_col.T}, E)
    return dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"x": np.eye(d)}, d), W_V=value, W_O=out)


def ridge_decay_head(lay: ResidualLayout, rate: float) -> dict:
    """One head that adds ``rate * (y0_j - y_j)`` to ``y_j``: the ``-lr*lam*w`` term.

    Score ``q_j.k_i = rate (y0_j - y_j) * one_i``, value ``one_i = 1``: the mean
    over the n context keys is exactly ``rate (y0_j - y_j)`` (after Bai et al.
    Cor. C.1's l2 head).  Context: ``r <- r + rate (y - r)``; query (y0 = 0):
    ``s <- (1 - rate) s``; both equal ``w <- (1 - rate) w``.
    """
    return dict(
        W_Q=lay.read({"y0": [[rate]], "y": [[-rate]]}, 1),
        W_K=lay.read({"one": [[1.0]]}, 1),
        W_V=lay.read({"one": [[1.0]]}, 1),
        W_O=lay.write({"y": [[1.0]]}, 1),
    )


# -- domain checks ---------------------------------------------------------------
def _cov(X: torch.Tensor) -> torch.Tensor:
    return X.transpose(1, 2) @ X / X.shape[1]


def _lambda_max(X: torch.Tensor) -> torch.Tensor:
    return torch.linalg.eigvalsh(_cov(X))[:, -1]


def _stability_error(what: str, value: float, limit: float, b: int, fix: str) -> ConstructionError:
    return ConstructionError(
        f"{what}={value:.6g} exceeds the stability limit {limit:.6g} for prompt {b} of the batch, "
        f"so the iteration would diverge; {fix}, or pass check=False to run it anyway"
    )


def _gd_domain(lr: float, lam: float):
    def check(X, y, Xq):
        lmax = _lambda_max(X) + lam
        for b, v in enumerate(lmax.tolist()):
            if lr * v > 2.0 * (1 + STABILITY_SLACK):
                raise _stability_error("lr", lr, 2.0 / v, b, "use lr <= 2/lambda_max(X^T X/n + lam I)")

    return check


def _pgd_domain(Ps: np.ndarray):
    def check(X, y, Xq):
        A = _cov(X)
        I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
        for t, P in enumerate(Ps):
            rho = torch.linalg.eigvals(I - torch.from_numpy(P).to(A) @ A).abs().max(-1).values
            for b, v in enumerate(rho.tolist()):
                if v > 1 + STABILITY_SLACK:
                    raise _stability_error(
                        f"spectral radius of I - P A (layer {t})", v, 1.0, b,
                        "scale the preconditioner P down",
                    )

    return check


def _gdpp_domain(lr: float, gamma: float):
    def check(X, y, Xq):
        for b, v in enumerate(_lambda_max(X).tolist()):
            if lr * v > 2.0 * (1 + STABILITY_SLACK):
                raise _stability_error("lr", lr, 2.0 / v, b, "use lr <= 2/lambda_max(X^T X/n)")
            if gamma * v > 2.0 * (1 + STABILITY_SLACK):
                raise _stability_error("gamma", gamma, 2.0 / v, b, "use gamma <= 2/lambda_max(X^T X/n)")

    return check


# -- factories -------------------------------------------------------------------
def gd(d: int, steps: int, lr: float, lam: float = 0.0) -> Construction:
    """Gradient descent in context: one linear self-attention layer per GD step.

    **Theorem** (von Oswald et al. 2023, Prop. 1, sec. 3.2 / claims.md sec. 3.2;
    ridge term after Bai et al. 2023, Cor. C.1).  For every prompt and every
    t = 1..steps, the query readout after layer t equals ``x_q . w_t`` where
    ``w_0 = 0`` and ``w_{t+1} = w_t - lr * grad L(w_t)``,
    ``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2 + (lam/2)|w|^2``.  For ``lam = 0`` this
    is least-squares GD; for ``lam > 0`` GD on the ridge objective, which
    converges to ``(X^T X/n + lam I)^{-1} X^T y/n``.

    **Proof sketch.**  Induction on the invariant of the module docstring: the
    GD head adds ``-(lr/n) sum_i r_i x_i.x_j = lr grad_LS(w_t).x_j`` to every
    token's ``y`` slot; the ridge head adds ``lr*lam*(y0_j - y_j)`` =
    ``lr*lam*w_t.x_j``.  Both read the pre-layer state, as the step does.

    **Resources.**  ``steps`` layers; 1 head (2 with ``lam > 0``); width
    ``d + 1`` (``d + 3`` with ``lam > 0``); linear attention, no MLP.

    **Exactness.**  Exact: float64 round-off only (tolerance model in
    :mod:`verify.tolerance`).  Paper mapping: von Oswald's ``P = (eta/N) I``
    with eta = ``lr``; their readout ``-y_query`` is this layout's readout.

    **Domain.**  ``lr * lambda_max(X^T X/n + lam I) <= 2`` per prompt, checked
    at prediction time (``check=False`` skips it).
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    lr, lam = _real(lr, "lr"), _real(lam, "lam", strict=False)
    lay = _layout(d, ridge=lam > 0)
    heads = [gd_head(lay, lr * np.eye(d))]
    if lam > 0:
        heads.append(ridge_decay_head(lay, lr * lam))
    blocks = [BlockSpec(AttentionSpec.from_heads("linear", heads)) for _ in range(steps)]
    return Construction("gd", dict(d=d, steps=steps, lr=lr, lam=lam), blocks, lay, d, domain=_gd_domain(lr, lam))


def gd_plus_plus(d: int, steps: int, lr: float, gamma: float) -> Construction:
    """GD++: each layer transforms the inputs and takes a GD step on them.

    **Theorem** (von Oswald et al. 2023, App. A.10 / claims.md sec. 3.3).  With
    ``S_t = X_t^T X_t / n`` over the current context inputs, layer t maps every
    token (queries included, claims.md sec. 11.14) by
    ``x <- (I - gamma S_t) x`` and ``y <- y - lr (1/n) sum_i y_i x_i.x`` using the
    pre-layer values.  The query readout after layer t is therefore
    ``sum_{k<t} lr g_k . x_q^(k)`` with ``g_k = X_k^T r_k / n``, which equals
    ``x_q . w_t`` for the effective weights of :class:`verify.reference.GDPlusPlus`.

    **Resources.**  ``steps`` layers, 1 head, width ``d + 1``, head width
    ``d + 1``, linear attention, no MLP.

    **Exactness.**  Exact (float64 round-off).  Paper mapping: the toolkit
    normalises the covariance by n, so von Oswald's gamma equals ``gamma / n``;
    their ``P = diag(-gamma I, eta/N)`` is this head's ``W_O``.

    **Domain.**  ``lr * lambda_max(S_0) <= 2`` and ``gamma * lambda_max(S_0) <= 2``
    (then ``S_t``'s eigenvalues never grow: ``l -> l (1 - gamma l)^2 <= l``).
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    lr, gamma = _real(lr, "lr"), _real(gamma, "gamma", strict=False)
    lay = _layout(d, ridge=False)
    blocks = [BlockSpec(AttentionSpec.from_heads("linear", [gd_plus_plus_head(lay, lr, gamma)])) for _ in range(steps)]
    return Construction(
        "gd_plus_plus", dict(d=d, steps=steps, lr=lr, gamma=gamma), blocks, lay, d, domain=_gdpp_domain(lr, gamma)
    )


def preconditioned_gd(d: int, steps: int, precond) -> Construction:
    """Preconditioned GD: ``w <- w - P grad L(w)`` per layer, any d x d matrix P.

    **Theorem** (Ahn et al. 2023, sec. 3 / claims.md sec. 6).  The query readout
    after layer t equals ``x_q . w_t`` with ``w_0 = 0``,
    ``w_{t+1} = w_t - P_t grad L(w_t)``, ``L(w) = 1/(2n)|Xw - y|^2``.
    ``precond`` is one ``[d, d]`` matrix (used in every layer) or ``[steps, d, d]``
    (one per layer).  P need not be symmetric.

    **Paper mapping.**  Ahn's layer ``Z + (1/n) P Z M Z^T Q Z`` with
    ``P = [[0,0],[0,1]]``, ``Q = -[[A,0],[0,0]]`` applies the preconditioner
    ``A^T`` (claims.md sec. 11.5): pass ``precond = A.T`` to reproduce a given A.
    Here ``W_Q``'s x block is P itself (tokens are row vectors, so
    ``q_j = P^T x_j`` and the score is ``x_j^T P x_i``).

    **Resources.**  ``steps`` layers, 1 head, width ``d + 1``, linear attention.

    **Exactness.**  Exact (float64 round-off).

    **Domain.**  Spectral radius of ``I - P_t X^T X/n`` at most 1 for every layer.
    """
    d, steps = _positive_int(d, "d"), _positive_int(steps, "steps")
    Ps = np.array(precond, dtype=np.float64)
    if Ps.shape == (d, d):
        Ps = np.broadcast_to(Ps, (steps, d, d)).copy()
    if Ps.shape != (steps, d, d):
        raise ConstructionError(f"precond must have shape ({d}, {d}) or ({steps}, {d}, {d}), got {Ps.shape}")
    if not np.isfinite(Ps).all():
        raise ConstructionError("precond contains NaN or inf")
    lay = _layout(d, ridge=False)
    blocks = [BlockSpec(AttentionSpec.from_heads("linear", [gd_head(lay, P)])) for P in Ps]
    return Construction(
        "preconditioned_gd", dict(d=d, steps=steps, precond=Ps.tolist()), blocks, lay, d, domain=_pgd_domain(Ps)
    )
