"""The algorithms themselves in batched torch (differentiable, any device): what a user would write.

Shapes: X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]``; iterates ``[B, d]``, predictions
``[B, m]``.  Toolkit conventions (``L(w) = 1/(2n)|Xw - y|^2 + (lam/2)|w|^2``, ``w_0 = 0``).
``icl-verify bench`` times them beside the constructions (:class:`constructions.Bench`), and
:mod:`verify.train` uses them as tuned baselines.  The independent float64 references that the
claims are checked against are :mod:`verify.reference` (numpy), not these.
"""
from __future__ import annotations

import torch

from constructions.errors import ConstructionError


def gd(X, y, steps: int, lr: float | None = None, lam: float = 0.0, precond=None, link=None) -> torch.Tensor:
    """``steps`` steps of ``w <- w - P (X^T (link(Xw) - y)/n + lam w)`` from 0, ``P = lr I`` or
    ``precond`` (``[d, d]``, or ``[steps, d, d]`` one per step); ``link``: e.g. ``torch.sigmoid``
    for logistic regression.  Without ``precond`` and ``link`` it also runs on numpy arrays (the
    hand-written numpy loop ``icl-verify bench`` sets beside a single prompt's latency)."""
    n = X.shape[1]
    P = None if precond is None else torch.as_tensor(precond).to(X)
    Xt = X.swapaxes(1, 2)  # torch and numpy alike: without precond or link it runs on numpy arrays too
    w = 0 * Xt[..., :1]  # [B, d, 1] zeros
    for t in range(steps):
        s = X @ w
        r = (s if link is None else link(s)) - y[..., None]
        g = (Xt @ r) / n + lam * w
        w = w - (lr * g if P is None else (P[t] if P.ndim == 3 else P) @ g)
    return w[..., 0]


def sgd_pass(X, y, beta: float, lam: float = 0.0, w0=None):
    """One pass of SGD in prompt order, ``w <- w + beta ((y_t - w . x_t) x_t - lam w)`` from ``w0``
    (default 0): the delta rule / LMS (Akyurek et al.'s pass is beta = 2 lr).  Iterates
    ``[B, n + 1, d]``, ``w_0`` first (torch)."""
    w = torch.zeros(X.shape[0], X.shape[2], dtype=X.dtype, device=X.device)
    if w0 is not None:
        w = w + torch.as_tensor(w0, dtype=X.dtype, device=X.device)
    out = [w]
    for t in range(X.shape[1]):
        w = w + beta * ((y[:, t] - (w * X[:, t]).sum(-1))[:, None] * X[:, t] - lam * w)
        out.append(w)
    return torch.stack(out, 1)


def heavy_ball(X, y, steps: int, lr: float, beta: float) -> torch.Tensor:
    """``w <- w - lr grad L(w) + beta (w - w_prev)`` from ``w_prev = w = 0``."""
    n = X.shape[1]
    w = prev = torch.zeros(X.shape[0], X.shape[2], 1, dtype=X.dtype, device=X.device)
    for _ in range(steps):
        w, prev = w - lr * X.transpose(1, 2) @ (X @ w - y[..., None]) / n + beta * (w - prev), w
    return w[..., 0]


def gd_plus_plus(X, y, Xq, steps: int, lr, gamma) -> torch.Tensor:
    """GD++ predictions (:class:`verify.reference.GDPlusPlus`): a GD step on the residuals, then
    every input (queries too) mapped by ``I - gamma X^T X/n``.  ``lr`` and ``gamma``: one value
    for every step, or one per step (a sequence or a 1-d tensor of length ``steps``, e.g. fitted
    per layer; differentiable when tensors)."""
    n = X.shape[1]
    r, Xc, Q = y, X, Xq
    pred = torch.zeros(Xq.shape[:2], dtype=X.dtype, device=X.device)
    eye = torch.eye(X.shape[2], dtype=X.dtype, device=X.device)
    per = lambda v: v if isinstance(v, (list, tuple)) or torch.is_tensor(v) and v.ndim == 1 else [v] * steps  # noqa: E731
    lrs, gammas = per(lr), per(gamma)
    if len(lrs) != steps or len(gammas) != steps:
        raise ConstructionError(f"GD++ over {steps} steps needs one lr and one gamma, or {steps} of each; got "
                                f"{len(lrs)} and {len(gammas)}")
    for t in range(steps):
        lr, gamma = lrs[t], gammas[t]
        g = Xc.transpose(1, 2) @ r[..., None] / n
        pred = pred + lr * (Q @ g)[..., 0]
        r = r - lr * (Xc @ g)[..., 0]
        M = eye - gamma * Xc.transpose(1, 2) @ Xc / n
        Xc, Q = Xc @ M, Q @ M
    return pred


def newton_logistic(X, y, steps: int, lam: float) -> torch.Tensor:
    """``steps`` Newton steps on the l2-regularised logistic loss from 0 (labels in {0, 1}):
    ``w <- w - H^{-1} g``, ``g = X^T (sigma(Xw) - y)/n + lam w``, ``H = X^T diag(sigma') X/n + lam I``."""
    n, d = X.shape[1], X.shape[2]
    w = X.new_zeros(X.shape[0], d, 1)
    eye = torch.eye(d, dtype=X.dtype, device=X.device)
    for _ in range(steps):
        p = torch.sigmoid(X @ w)
        g = X.transpose(1, 2) @ (p - y[..., None]) / n + lam * w
        H = X.transpose(1, 2) @ (p * (1 - p) * X) / n + lam * eye
        w = w - torch.linalg.solve(H, g)
    return w[..., 0]


def two_layer_gd(X, y, steps: int, lr: float, start: dict) -> tuple:
    """``steps`` GD steps on the square loss of ``f(x) = sum_k u_k sigmoid(v_k.x)`` from ``start``
    (``{"V": [K, d], "u": [K]}``), by hand-written gradients: ``(V [B, K, d], u [B, K])``."""
    n = X.shape[1]
    V = torch.as_tensor(start["V"], dtype=X.dtype, device=X.device).expand(X.shape[0], -1, -1)
    u = torch.as_tensor(start["u"], dtype=X.dtype, device=X.device).expand(X.shape[0], -1)
    for _ in range(steps):
        a = torch.sigmoid(X @ V.transpose(1, 2))  # [B, n, K]
        e = (a @ u[..., None])[..., 0] - y  # [B, n]
        gu = (e[..., None] * a).sum(1) / n
        gV = u[..., None] * ((e[..., None] * a * (1 - a)).transpose(1, 2) @ X) / n
        u, V = u - lr * gu, V - lr * gV
    return V, u


def ridge(X, y, lam: float) -> torch.Tensor:
    """``(X^T X/n + lam I)^{-1} X^T y/n`` (lam = 0: the least-squares solution by lstsq)."""
    n, d = X.shape[1], X.shape[2]
    if lam == 0:
        return torch.linalg.lstsq(X, y[..., None]).solution[..., 0]
    A = X.transpose(1, 2) @ X / n + lam * torch.eye(d, dtype=X.dtype, device=X.device)
    return torch.linalg.solve(A, X.transpose(1, 2) @ y[..., None] / n)[..., 0]


def predict(Xq, w) -> torch.Tensor:
    """``x_q . w`` for every query: ``[B, m]``."""
    return (Xq @ w[..., None])[..., 0]
