"""Independent float64 reference algorithms (numpy only, no torch, no attention).

Shapes: X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]``; unbatched inputs are
accepted and batched internally.  S = number of steps.

Interface (every reference): ``fit(X, y)`` returns self and stores

* ``iterates_``  ``[S+1, B, d]``: w_0 = 0, w_1, ..., w_S (for GD++ the
  *effective* weights: the prediction after step t is ``x_q . w_t``);
* ``magnitude_`` ``[S+1, B]``: the size of the terms summed in step t, used
  by :mod:`verify.tolerance` (|w_t| plus the unsigned gradient
  ``|P_t| (1/n) sum_i |r_i| |x_i|``);

then ``predict(Xq)`` ``[B, m]``, ``trace(Xq)`` ``[S, B, m]`` (after each
step), ``scale(Xq)`` ``[S, B, m]`` (the error-model scale).

Conventions: ``L(w) = 1/(2n) sum_i (w.x_i - y_i)^2 + (lam/2)|w|^2``,
``w_0 = 0``, ``w <- w - P grad L(w)``; ridge
``w* = (X^T X/n + lam I)^{-1} X^T y/n``.
"""
from __future__ import annotations

import numpy as np


def _batch(X, y):
    X, y = np.asarray(X, dtype=np.float64), np.asarray(y, dtype=np.float64)
    if X.ndim == 2:
        X, y = X[None], y[None]
    return X, y


def _unsigned_grad(X, r):
    """(1/n) sum_i |r_i| |x_i|  per batch item: the magnitude of the gradient's terms."""
    return np.einsum("bn,bn->b", np.abs(r), np.linalg.norm(X, axis=-1)) / X.shape[1]


class Reference:
    """Common predict/trace/scale on top of ``iterates_`` and ``magnitude_``."""

    iterates_: np.ndarray
    magnitude_: np.ndarray

    def _q(self, Xq):
        Xq = np.asarray(Xq, dtype=np.float64)
        return Xq[None] if Xq.ndim == 2 else Xq

    def predict(self, Xq) -> np.ndarray:
        return np.einsum("bmd,bd->bm", self._q(Xq), self.iterates_[-1])

    def trace(self, Xq) -> np.ndarray:
        return np.einsum("bmd,sbd->sbm", self._q(Xq), self.iterates_[1:])

    def scale(self, Xq) -> np.ndarray:
        """``|x_q| * max_{k <= t} magnitude_k`` for t = 1..S: ``[S, B, m]``."""
        running = np.maximum.accumulate(self.magnitude_, axis=0)[1:]  # [S, B]
        return np.linalg.norm(self._q(Xq), axis=-1)[None] * running[:, :, None]


class GD(Reference):
    """Gradient descent on the toolkit loss, ``w <- w - P_t grad L(w)``.

    ``GD(steps, lr, lam)`` uses ``P_t = lr I``; ``GD(steps, precond=P)`` uses
    ``P`` (``[d, d]``, or ``[steps, d, d]`` for one per step).
    """

    def __init__(self, steps: int, lr: float | None = None, lam: float = 0.0, precond=None):
        if (lr is None) == (precond is None):
            raise ValueError("give exactly one of lr and precond")
        self.steps, self.lr, self.lam, self.precond = steps, lr, lam, precond

    def fit(self, X, y) -> "GD":
        X, y = _batch(X, y)
        B, n, d = X.shape
        if self.precond is None:
            Ps = np.broadcast_to(self.lr * np.eye(d), (self.steps, d, d))
        else:
            Ps = np.broadcast_to(np.asarray(self.precond, dtype=np.float64), (self.steps, d, d))
        w = np.zeros((B, d))
        ws, mags = [w], []
        for P in Ps:
            r = y - np.einsum("bnd,bd->bn", X, w)
            grad = -np.einsum("bnd,bn->bd", X, r) / n + self.lam * w
            mags.append(np.linalg.norm(w, axis=-1) + np.linalg.norm(P, 2) * (_unsigned_grad(X, r) + self.lam * np.linalg.norm(w, axis=-1)))
            w = w - grad @ P.T
            ws.append(w)
        mags.append(np.linalg.norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class GDPlusPlus(Reference):
    """GD++ (von Oswald et al. 2023, App. A.10), toolkit normalisation.

    Per step, from the current inputs X_t, residuals r_t and ``S_t = X_t^T X_t/n``:
    ``g_t = X_t^T r_t / n``; ``r_{t+1} = r_t - lr X_t g_t``; every input (queries
    too) becomes ``(I - gamma S_t) x``.  With ``T_t`` the accumulated input map,
    the effective weights are ``w_{t+1} = w_t + lr T_t^T g_t``.
    """

    def __init__(self, steps: int, lr: float, gamma: float):
        self.steps, self.lr, self.gamma = steps, lr, gamma

    def fit(self, X, y) -> "GDPlusPlus":
        X, r = _batch(X, y)
        B, n, d = X.shape
        T = np.broadcast_to(np.eye(d), (B, d, d)).copy()
        w = np.zeros((B, d))
        ws, mags = [w], []
        for _ in range(self.steps):
            g = np.einsum("bnd,bn->bd", X, r) / n
            S = np.einsum("bni,bnj->bij", X, X) / n
            mags.append(np.linalg.norm(w, axis=-1) * (1 + self.gamma * np.linalg.norm(S, 2, axis=(1, 2)))
                        + self.lr * _unsigned_grad(X, r))
            w = w + self.lr * np.einsum("bij,bi->bj", T, g)
            r = r - self.lr * np.einsum("bnd,bd->bn", X, g)
            M = np.eye(d) - self.gamma * S
            X = np.einsum("bnd,bde->bne", X, M)
            T = np.einsum("bij,bjk->bik", M, T)
            ws.append(w)
        mags.append(np.linalg.norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class Ridge(Reference):
    """Closed-form ridge ``(X^T X/n + lam I)^{-1} X^T y/n`` (least squares if lam = 0,
    then the minimum-norm solution via lstsq)."""

    def __init__(self, lam: float = 0.0):
        self.lam = lam

    def fit(self, X, y) -> "Ridge":
        X, y = _batch(X, y)
        B, n, d = X.shape
        if self.lam > 0:
            A = np.einsum("bni,bnj->bij", X, X) / n + self.lam * np.eye(d)
            w = np.linalg.solve(A, np.einsum("bnd,bn->bd", X, y)[..., None] / n)[..., 0]
        else:
            w = np.stack([np.linalg.lstsq(Xb, yb, rcond=None)[0] for Xb, yb in zip(X, y)])
        self.iterates_ = np.stack([np.zeros_like(w), w])
        self.magnitude_ = np.stack([np.zeros(B), np.linalg.norm(w, axis=-1)])
        return self
