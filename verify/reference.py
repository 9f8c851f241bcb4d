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

from fractions import Fraction

import numpy as np


def _dtype(a):
    """float64, or object for exact (``fractions.Fraction``) inputs: every reference runs
    unchanged in exact rational arithmetic (:mod:`verify.exact`) when its inputs and
    parameters are Fractions; only the error-model magnitudes are computed in float."""
    return object if np.asarray(a).dtype == object else np.float64


def _batch(X, y):
    dt = _dtype(X)
    X, y = np.asarray(X, dtype=dt), np.asarray(y, dtype=dt)
    if X.ndim == 2:
        X, y = X[None], y[None]
    return X, y


def _norm(a, ord=None, axis=None):
    """``np.linalg.norm(a, ord, axis)`` in float64 (for magnitudes, also of exact inputs),
    computed as ``m |a / m|`` with ``m = max |a|`` over the reduced axes, so that it neither
    underflows nor overflows where the entries do not (a plain ``sqrt(sum a^2)`` of entries near
    1e-160 is 0, which would give the error model a zero scale)."""
    a = np.asarray(a, dtype=np.float64)
    if a.size == 0:
        return np.linalg.norm(a, ord, axis)
    m = np.abs(a).max(axis=axis, keepdims=True)
    safe = np.where(m > 0, m, 1.0)
    return np.linalg.norm(a / safe, ord, axis) * (m.squeeze(axis) if axis is not None else float(m.squeeze()))


def _unsigned_grad(X, r):
    """(1/n) sum_i |r_i| |x_i|  per batch item: the magnitude of the gradient's terms."""
    return np.einsum("bn,bn->b", np.abs(r).astype(np.float64), _norm(X, axis=-1)) / X.shape[1]


class Reference:
    """Common predict/trace/scale on top of ``iterates_`` and ``magnitude_``."""

    iterates_: np.ndarray
    magnitude_: np.ndarray

    def _q(self, Xq):
        Xq = np.asarray(Xq, dtype=_dtype(Xq))
        return Xq[None] if Xq.ndim == 2 else Xq

    def predict(self, Xq) -> np.ndarray:
        return np.einsum("bmd,bd->bm", self._q(Xq), self.iterates_[-1])

    def trace(self, Xq) -> np.ndarray:
        return np.einsum("bmd,sbd->sbm", self._q(Xq), self.iterates_[1:])

    def scale(self, Xq) -> np.ndarray:
        """``|x_q| * max_{k <= t} magnitude_k`` for t = 1..S: ``[S, B, m]``."""
        running = np.maximum.accumulate(self.magnitude_, axis=0)[1:]  # [S, B]
        return _norm(self._q(Xq), axis=-1)[None] * running[:, :, None]


class GD(Reference):
    """Gradient descent on the toolkit loss, ``w <- w - P_t grad L(w)``.

    ``GD(steps, lr, lam)`` uses ``P_t = lr I``; ``GD(steps, precond=P)`` uses
    ``P`` (``[d, d]``, or ``[steps, d, d]`` for one per step).
    """

    def __init__(self, steps: int, lr: float | None = None, lam: float = 0.0, precond=None):
        if (lr is None) == (precond is None):
            raise ValueError("give exactly one of lr and precond")
        self.steps, self.lr, self.lam, self.precond = steps, lr, lam, precond

    def fit(self, X, y, unsigned=None) -> "GD":
        """``unsigned``: entrywise bounds on the terms each input was summed from (inputs computed
        with round-off, e.g. features :func:`relu_feature_bound`), used in the magnitudes in place of
        ``|X|``."""
        U = None if unsigned is None else _batch(np.asarray(unsigned, dtype=np.float64), y)[0]
        X, y = _batch(X, y)
        U = X if U is None else U
        B, n, d = X.shape
        if self.precond is None:
            Ps = np.broadcast_to(self.lr * np.eye(d, dtype=X.dtype), (self.steps, d, d))
        else:
            Ps = np.broadcast_to(np.asarray(self.precond, dtype=X.dtype), (self.steps, d, d))
        w = np.zeros((B, d), dtype=X.dtype)
        ws, mags = [w], []
        for P in Ps:
            r = y - np.einsum("bnd,bd->bn", X, w)
            grad = -np.einsum("bnd,bn->bd", X, r) / n + (self.lam * w if self.lam else 0)  # 0.0 * w would make exact w float
            mags.append(_norm(w, axis=-1) + _norm(P, 2) * (_unsigned_grad(U, r) + self.lam * _norm(w, axis=-1)))
            w = w - grad @ P.T
            ws.append(w)
        mags.append(_norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class HeavyBall(Reference):
    """Heavy-ball GD (Polyak 1964) on the least-squares loss:
    ``w_{t+1} = w_t - lr grad L(w_t) + beta (w_t - w_{t-1})``, ``w_{-1} = w_0 = 0``.

    ``magnitude_``: ``|w_t| + lr (1/n) sum_i |r_i| |x_i| + beta |w_t - w_{t-1}|`` (the terms a
    step sums)."""

    def __init__(self, steps: int, lr: float, beta: float):
        self.steps, self.lr, self.beta = steps, lr, beta

    def fit(self, X, y) -> "HeavyBall":
        X, y = _batch(X, y)
        B, n, d = X.shape
        w = prev = np.zeros((B, d), dtype=X.dtype)
        ws, mags = [w], []
        for _ in range(self.steps):
            r = y - np.einsum("bnd,bd->bn", X, w)
            mags.append(_norm(w, axis=-1) + self.lr * _unsigned_grad(X, r) + self.beta * _norm(w - prev, axis=-1))
            w, prev = w + self.lr * np.einsum("bnd,bn->bd", X, r) / n + self.beta * (w - prev), w
            ws.append(w)
        mags.append(_norm(w, axis=-1))
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
        T = np.broadcast_to(np.eye(d, dtype=X.dtype), (B, d, d)).copy()
        w = np.zeros((B, d), dtype=X.dtype)
        ws, mags = [w], []
        for _ in range(self.steps):
            g = np.einsum("bnd,bn->bd", X, r) / n
            S = np.einsum("bni,bnj->bij", X, X) / n
            mags.append(_norm(w, axis=-1) * (1 + self.gamma * _norm(S, 2, axis=(1, 2)))
                        + self.lr * _unsigned_grad(X, r))
            w = w + self.lr * np.einsum("bij,bi->bj", T, g)
            r = r - self.lr * np.einsum("bnd,bd->bn", X, g)
            M = np.eye(d, dtype=X.dtype) - self.gamma * S
            X = np.einsum("bnd,bde->bne", X, M)
            T = np.einsum("bij,bjk->bik", M, T)
            ws.append(w)
        mags.append(_norm(w, axis=-1))
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
        self.magnitude_ = np.stack([np.zeros(B), _norm(w, axis=-1)])
        return self


def soft_threshold(v: np.ndarray, c: float) -> np.ndarray:
    return np.sign(v) * np.maximum(np.abs(v) - c, 0)  # int 0: exact inputs stay exact


class ProxGD(Reference):
    """Proximal GD on ``1/(2n)|Xw - y|^2``: ``w <- prox(w - lr grad)`` with the box projection
    ``clip(., -R, R)`` (``prox="box"``, ``param = R``), the prox of ``(lam/2)|w|^2``,
    ``v -> (1 - c) v`` with ``c = lr lam/(1 + lr lam)`` given as ``param`` (``prox="l2"``, so exact
    arithmetic uses the same number as the construction's weight), or the soft threshold
    ``S_param`` (``prox="l1"``: ISTA).  ``magnitude_``: ``|w|`` plus the step's unsigned gradient
    and the prox's own terms (``param`` per coordinate for l1)."""

    def __init__(self, steps: int, lr, prox: str, param):
        self.steps, self.lr, self.prox, self.param = steps, lr, prox, param

    def _prox(self, v):
        if self.prox == "box":
            return np.minimum(np.maximum(v, -self.param), self.param)
        if self.prox == "l1":
            return soft_threshold(v, self.param)
        return v - self.param * v

    def fit(self, X, y) -> "ProxGD":
        X, y = _batch(X, y)
        B, n, d = X.shape
        w = np.zeros((B, d), dtype=X.dtype)
        ws, mags = [w], []
        extra = float(self.param) * np.sqrt(d) if self.prox == "l1" else 0.0
        for _ in range(self.steps):
            r = y - np.einsum("bnd,bd->bn", X, w)
            mags.append(_norm(w, axis=-1) + float(self.lr) * _unsigned_grad(X, r) + extra)
            w = self._prox(w + self.lr * np.einsum("bnd,bn->bd", X, r) / n)
            ws.append(w)
        mags.append(_norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class ISTA(ProxGD):
    """Proximal GD for LASSO ``1/(2n)|Xw - y|^2 + lam |w|_1``: ``w <- S_{lr lam}(w - lr grad)``."""

    def __init__(self, steps: int, lr: float, lam: float):
        super().__init__(steps, lr, "l1", lr * lam)
        self.lam = lam


def lasso_objective(X, y, w, lam) -> np.ndarray:
    X, y = _batch(X, y)
    r = np.einsum("bnd,bd->bn", X, w) - y
    return (r**2).sum(-1) / (2 * X.shape[1]) + lam * np.abs(w).sum(-1)


def lasso_solution(X, y, lam: float, gap: float = 1e-12, max_iter: int = 200_000):
    """An accurate LASSO minimiser by FISTA, stopped on a duality-gap certificate.

    Returns ``(w, lower)``: ``w [B, d]`` and a lower bound on the optimal objective
    (the dual value ``u.y - n/2 |u|^2`` at a feasible ``|X^T u|_inf <= lam``), so that
    ``F(w) - lower <= gap * max(1, F(0))`` certifies w."""
    X, y = _batch(X, y)
    B, n, d = X.shape
    L = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / n)[:, -1].max()
    w = z = np.zeros((B, d))
    tk = 1.0
    target = gap * np.maximum(1.0, (y**2).sum(-1) / (2 * n))
    for it in range(max_iter):
        r = y - np.einsum("bnd,bd->bn", X, z)
        w_new = soft_threshold(z + np.einsum("bnd,bn->bd", X, r) / (n * L), lam / L)
        tk_new = (1 + np.sqrt(1 + 4 * tk * tk)) / 2
        z = w_new + (tk - 1) / tk_new * (w_new - w)
        w, tk = w_new, tk_new
        if it % 50 == 0 or it == max_iter - 1:
            r = y - np.einsum("bnd,bd->bn", X, w)
            corr = np.abs(np.einsum("bnd,bn->bd", X, r) / n).max(-1)
            u = r / n * np.minimum(1.0, lam / np.maximum(corr, 1e-300))[:, None]
            lower = np.einsum("bn,bn->b", u, y) - n / 2 * (u**2).sum(-1)
            if np.all(lasso_objective(X, y, w, lam) - lower <= target):
                return w, lower
    raise RuntimeError("lasso_solution did not reach its duality-gap target")


def sigmoid(s):
    return 0.5 * (1.0 + np.tanh(0.5 * np.asarray(s, dtype=np.float64)))


class LogisticGD(Reference):
    """GD on the logistic loss ``(1/n) sum_i -y_i s_i + log(1 + e^{s_i})``, ``s_i = w.x_i``.

    ``knots=None``: the exact sigmoid.  ``knots``: the sigmoid replaced by its
    piecewise-linear interpolant at these knots (``np.interp``, flat outside), as
    in Bai et al.'s sum-of-ReLU approximation; the unsigned size of that sum's
    terms is at most ``0.5 (|s| + R) + 2`` with ``R = max|knots|``.  ``relu = (knots, a, base)``
    instead: that interpolant in the form the construction stores it, ``base + sum_m a_m
    relu(s - s_m)`` (:func:`relu_sum`; exact for Fractions, for the proofs).  ``lam > 0``: GD on the
    loss plus ``(lam/2)|w|^2``.  ``w0``: the start (default 0)."""

    def __init__(self, steps: int, lr: float, knots=None, lam: float = 0.0, relu=None, w0=None):
        self.steps, self.lr, self.lam, self.relu, self.w0 = steps, lr, lam, relu, w0
        if relu is not None:
            knots = relu[0]
        self.knots = None if knots is None else np.asarray(knots, dtype=np.float64)

    def _sigma(self, s):
        if self.relu is not None:
            return relu_sum(s, *self.relu)
        return sigmoid(s) if self.knots is None else np.interp(s, self.knots, sigmoid(self.knots))

    def link_terms(self, s):
        """The unsigned size of the terms that evaluating the link at scores ``s`` sums: 1 for the
        exact sigmoid, ``0.5 (|s| + R) + 2`` for the interpolant (class docstring)."""
        return np.ones_like(s) if self.knots is None else 0.5 * (np.abs(s) + np.abs(self.knots).max()) + 2

    def fit(self, X, y) -> "LogisticGD":
        X, y = _batch(X, y)
        B, n, d = X.shape
        w = np.zeros((B, d), dtype=X.dtype) * y[:, :1]
        if self.w0 is not None:
            w = w + np.asarray(self.w0, dtype=X.dtype)
        ws, mags = [w], []
        for _ in range(self.steps):
            s = np.einsum("bnd,bd->bn", X, w)
            g = self._sigma(s) - y
            terms = 1.0 + np.abs(y) if self.knots is None else 0.5 * (np.abs(s) + np.abs(self.knots).max()) + 2 + np.abs(y)
            mags.append(_norm(w, axis=-1) + self.lr * (_unsigned_grad(X, terms) + self.lam * _norm(w, axis=-1)))
            w = w - self.lr * (np.einsum("bnd,bn->bd", X, g) / n + (self.lam * w if self.lam else 0))
            ws.append(w)
        mags.append(_norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


def sigmoid_prime(s):
    """``sigma'(s) = sigma(s) (1 - sigma(s))``."""
    p = sigmoid(s)
    return p * (1.0 - p)


def relu_sum(s, knots, a, base, unsigned: bool = False):
    """``base + sum_m a_m relu(s - s_m)`` elementwise, in float64 or exactly for Fraction arrays:
    a piecewise-linear function given by its ReLU coefficients (the form a ReLU MLP computes it in;
    :func:`constructions.parts.relu_interpolant` gives the interpolant's).  ``unsigned``: the size of
    the terms summed, ``|base| + sum_m |a_m| relu(s - s_m)`` (for the error model, in float64)."""
    s = np.asarray(s)
    if unsigned:
        s = s.astype(np.float64)
    out = np.full(s.shape, abs(base) if unsigned else base, dtype=s.dtype if s.dtype == object else np.float64)
    for s_m, a_m in zip(knots, a):
        out = out + (abs(a_m) if unsigned else a_m) * np.maximum(s - s_m, 0)
    return out


def smoothed(s, links):
    """``(f_tilde, h_hat, |terms of f_tilde|, |terms of h_hat|)`` at the scores ``s`` for
    ``links = (knots, b, h0, c0)`` (:func:`constructions.parts.relu_antiderivative`):
    ``h_hat(s) = h0 + sum_m b_m relu(s - s_m)`` and its antiderivative
    ``f_tilde(s) = c0 + h0 s + sum_m b_m relu(s - s_m)^2 / 2``, in float64 or exactly for Fraction
    arrays; the unsigned sizes (float64) are for the error model."""
    knots, b, h0, c0 = links
    half = [b_m / 2 for b_m in b]
    sq = lambda t, c, unsigned=False: sum(((abs(c_m) if unsigned else c_m) * np.maximum(t - s_m, 0) ** 2  # noqa: E731
                                           for s_m, c_m in zip(knots, c)), np.zeros(np.shape(t), dtype=np.asarray(t).dtype))
    s = np.asarray(s)
    sf = s.astype(np.float64)
    value = c0 + h0 * s + sq(s, half)
    value_u = abs(c0) + abs(h0) * np.abs(sf) + sq(sf, half, True)
    return value, relu_sum(s, knots, b, h0), value_u, relu_sum(s, knots, b, h0, unsigned=True)


class TwoLayerGD(Reference):
    """GD on the square loss of a two-layer network from a given start ``(V_0 [K, d], u_0 [K])``
    (or one per prompt, ``[B, K, d]`` and ``[B, K]``)::

        f(x) = sum_k u_k act(v_k.x),   L(V, u) = 1/(2n) sum_i (f(x_i) - y_i)^2,  e_i = f(x_i) - y_i
        u <- u - lr (1/n) sum_i e_i act(s_i),   v_k <- v_k - lr (1/n) sum_i e_i u_k act'(s_ik) x_i

    ``links=None``: act = sigmoid; ``links=(knots, b, h0, c0)``: act = the smoothed function and
    act' = its ReLU-sum derivative (:func:`smoothed`), an exact derivative pair.  ``V_ [S+1, B, K, d]``,
    ``u_ [S+1, B, K]``; ``iterates_ [S+1, B, K(d+1)]`` holds ``(u, V)`` flattened; ``trace`` gives
    ``f_t(x_q)``.

    ``magnitude_`` (error model): the terms step t + 1 sums, ``|theta_t| + lr (1/n) sum_i r_i g_i``
    (``r_i`` the unsigned residual with each score's round-off carried through act', ``g_i`` the
    unsigned gradient of ``f(x_i)``), carried forward by the GD map's growth ``|I - lr H_t|`` (H_t the
    Hessian of the loss at theta_t): on a non-convex loss that map may expand, so an earlier step's
    round-off is multiplied by it (docs/tolerance.md)."""

    def __init__(self, steps: int, lr, V0, u0, links=None):
        self.steps, self.lr, self.links = steps, lr, links
        self.V0, self.u0 = np.asarray(V0), np.asarray(u0)

    def act(self, s):
        """``(act, act', |terms of act|, |terms of act'|)`` at the scores ``s``."""
        if self.links is None:
            return sigmoid(s), sigmoid_prime(s), np.ones(np.shape(s)), np.full(np.shape(s), 0.25)
        return smoothed(s, self.links)

    def curvature(self, s) -> np.ndarray:
        """act'' at the scores (float64): ``sum_m b_m [s > s_m]`` for the smoothed function."""
        s = np.asarray(s, dtype=np.float64)
        if self.links is None:
            p = sigmoid(s)
            return p * (1 - p) * (1 - 2 * p)
        knots, b = self.links[0], self.links[1]
        return sum(float(b_m) * (s > float(s_m)) for s_m, b_m in zip(knots, b))

    def sum_length(self, d: int) -> int:
        """The ``d`` of the error model's ``(n + d)``: a layer sums d (a score), K (``u . p``) and J
        (the squared ReLUs) terms besides the n of the update."""
        return d + self.u0.shape[-1] + (len(self.links[0]) if self.links is not None else 0)

    def start(self, B: int):
        return np.broadcast_to(self.V0, (B,) + self.V0.shape[-2:]), np.broadcast_to(self.u0, (B,) + self.u0.shape[-1:])

    def hessian(self, X, y, theta) -> np.ndarray:
        """The loss's Hessian ``[B, P, P]`` in float64 at ``theta = (V [B, K, d], u [B, K])``, in the
        order ``(u, V row-major)``, P = K (d + 1)."""
        X, y = (np.asarray(a, dtype=np.float64) for a in (X, y))
        V, u = (np.asarray(a, dtype=np.float64) for a in theta)
        B, n, d = X.shape
        K = u.shape[-1]
        S = np.einsum("bnd,bkd->bnk", X, V)
        a, h = (np.asarray(v, dtype=np.float64) for v in self.act(S)[:2])
        e = np.einsum("bnk,bk->bn", a, u) - y
        G = np.concatenate([a, np.einsum("bk,bnk,bnd->bnkd", u, h, X).reshape(B, n, K * d)], -1)  # grad f_i
        H = np.einsum("bnp,bnq->bpq", G, G) / n
        cross = np.einsum("bn,bnk,bnd->bkd", e, h, X) / n  # d^2 f / du_k dv_k, weighted by e
        diag = np.einsum("bn,bk,bnk,bni,bnj->bkij", e, u, self.curvature(S), X, X) / n
        for k in range(K):
            sl = slice(K + k * d, K + (k + 1) * d)
            H[:, k, sl] += cross[:, k]
            H[:, sl, k] += cross[:, k]
            H[:, sl, sl] += diag[:, k]
        return H

    def fit(self, X, y) -> "TwoLayerGD":
        X, y = _batch(X, y)
        B, n, d = X.shape
        V, u = (np.array(a) for a in self.start(B))
        Xf, yf = X.astype(np.float64), np.abs(y).astype(np.float64)
        xn = _norm(X, axis=-1)  # [B, n]
        Vs, us, terms, growth = [V], [u], [], []
        for _ in range(self.steps):
            S = np.einsum("bnd,bkd->bnk", X, V)
            a, h, au, hu = self.act(S)
            au, hu = np.asarray(au, dtype=np.float64), np.asarray(hu, dtype=np.float64)
            e = np.einsum("bnk,bk->bn", a, u) - y
            Vf, uf = V.astype(np.float64), u.astype(np.float64)
            ua, vn = np.abs(uf), _norm(Vf, axis=-1)  # [B, K]
            r = np.einsum("bk,bnk->bn", ua, au + hu * vn[:, None, :] * xn[..., None]) + yf
            g = np.sqrt((au * au).sum(-1) + np.einsum("bk,bnk->bn", ua * ua, hu * hu) * xn * xn)
            theta = np.sqrt(_norm(Vf, axis=(1, 2)) ** 2 + _norm(uf, axis=-1) ** 2)
            terms.append(theta + float(self.lr) * (r * g).sum(-1) / n)
            ev = np.linalg.eigvalsh(self.hessian(Xf, y, (Vf, uf)))
            growth.append(np.abs(1 - float(self.lr) * ev).max(-1))
            gu, gV = np.einsum("bn,bnk->bk", e, a) / n, np.einsum("bn,bk,bnk,bnd->bkd", e, u, h, X) / n
            u, V = u - self.lr * gu, V - self.lr * gV
            Vs.append(V)
            us.append(u)
        self.V_, self.u_ = np.stack(Vs), np.stack(us)
        self.iterates_ = np.concatenate([self.u_, self.V_.reshape(self.V_.shape[:2] + (-1,))], -1)
        carried, mags = np.zeros(B), [terms[0] if terms else np.zeros(B)]
        for t in range(self.steps):  # an error made in step k is multiplied by the growth of steps k+1 .. t
            carried = np.maximum(carried * growth[t], terms[t])
            mags.append(np.maximum(carried, _norm(self.iterates_[t + 1].astype(np.float64), axis=-1)))
        self.magnitude_ = np.stack(mags)
        return self

    def _f(self, Xq, t: int):
        S = np.einsum("bmd,bkd->bmk", Xq, self.V_[t])
        return np.einsum("bmk,bk->bm", self.act(S)[0], self.u_[t]), S

    def trace(self, Xq) -> np.ndarray:
        Xq = self._q(Xq)
        return np.stack([self._f(Xq, t)[0] for t in range(1, self.V_.shape[0])])

    def predict(self, Xq) -> np.ndarray:
        return self.trace(Xq)[-1]

    def scale(self, Xq) -> np.ndarray:
        """``[S, B, m]``: the readout's own terms ``sum_k |u_k| (|act terms| + |act' terms| |v_k| |x_q|)``
        plus the parameters' carried error (:attr:`magnitude_`) times the unsigned gradient of
        ``f(x_q)`` in the parameters."""
        Xq = self._q(Xq)
        qn = _norm(Xq, axis=-1)  # [B, m]
        running = np.maximum.accumulate(self.magnitude_, axis=0)[1:]  # [S, B]
        out = []
        for t in range(1, self.V_.shape[0]):
            V, u = self.V_[t].astype(np.float64), np.abs(self.u_[t].astype(np.float64))
            S = np.einsum("bmd,bkd->bmk", Xq.astype(np.float64), V)
            au, hu = (np.asarray(v, dtype=np.float64) for v in self.act(S)[2:])
            own = np.einsum("bk,bmk->bm", u, au + hu * _norm(V, axis=-1)[:, None, :] * qn[..., None])
            grad = np.sqrt((au * au).sum(-1) + np.einsum("bk,bmk->bm", u * u, hu * hu) * qn * qn)
            out.append(own + grad * running[t - 1][:, None])
        return np.stack(out)


class NewtonLogistic(Reference):
    """Newton's method on the l2-regularised logistic loss (labels in {0, 1})::

        L(w) = (1/n) sum_i [log(1 + e^{s_i}) - y_i s_i] + (lam/2)|w|^2,   s_i = w.x_i
        g(w) = (1/n) sum_i (sigma(s_i) - y_i) x_i + lam w
        H(w) = (1/n) sum_i sigma'(s_i) x_i x_i^T + lam I,      w <- w - H(w)^{-1} g(w),  w_0 = 0.

    ``hessian=None``: the exact sigma and sigma'.  ``hessian=(knots, b, h0, c0)``: sigma' replaced
    by the ReLU sum ``h_hat(s) = h0 + sum_m b_m relu(s - s_m)`` (:func:`relu_sum`) and sigma by its
    antiderivative ``sigma_tilde(s) = c0 + h0 s + sum_m b_m relu(s - s_m)^2 / 2``, so that the step is
    Newton's method on a smooth convex loss (``sigma_tilde' = h_hat`` exactly).
    ``iters=None``: the exact inverse; ``iters=K``: ``H^{-1}`` replaced by K Newton-Schulz
    iterations ``M <- 2M - M H M`` from ``M_0 = alpha I``; ``inner_ [S, K, B, d, d]`` holds them.

    ``magnitude_`` (error model): ``|w_t| + b_t (|M| + tr(M H_u M))`` with ``b_t`` the unsigned
    gradient ``(1/n) sum_i (rho_i + eta_i |w_t| |x_i|) |x_i| + lam |w_t|`` (``rho_i``, ``eta_i``: the
    unsigned sizes of the sigma and sigma' sums, plus ``|y_i|``; the second term carries each
    token's score round-off through the Hessian) and ``H_u`` the Hessian with ``eta_i``: the terms
    that the step's Newton-Schulz products and its update sum."""

    def __init__(self, steps: int, lam, hessian=None, iters: int | None = None, alpha=None):
        if (iters is None) != (alpha is None):
            raise ValueError("give both iters and alpha (Newton-Schulz), or neither (exact inverse)")
        self.steps, self.lam, self.hessian, self.iters, self.alpha = steps, lam, hessian, iters, alpha

    def links(self, s):
        """``(sigma, sigma', |terms of sigma|, |terms of sigma'|)`` at the scores ``s``."""
        if self.hessian is None:
            return sigmoid(s), sigmoid_prime(s), np.ones(np.shape(s)), np.full(np.shape(s), 0.25)
        return smoothed(s, self.hessian)

    def fit(self, X, y) -> "NewtonLogistic":
        X, y = _batch(X, y)
        B, n, d = X.shape
        exact = X.dtype == object
        I = np.vectorize(Fraction)(np.eye(d, dtype=int)).astype(object) if exact else np.eye(d)
        w = np.full((B, d), Fraction(0), dtype=object) if exact else np.zeros((B, d))
        ws, mags, inner = [w], [], []
        xn = _norm(X, axis=-1)  # [B, n]
        Xf = X.astype(np.float64)
        for _ in range(self.steps):
            s = np.einsum("bnd,bd->bn", X, w)
            sv, hv, su, hu = self.links(s)
            G = np.einsum("bnd,bn->bd", X, sv - y) / n + self.lam * w
            H = np.einsum("bn,bni,bnj->bij", hv, X, X) / n + self.lam * I
            if self.iters is None:
                M = np.linalg.inv(H)
            else:
                M = np.broadcast_to(self.alpha * I, (B, d, d)).copy()
                Ms = []
                for _ in range(self.iters):
                    M = 2 * M - M @ H @ M
                    Ms.append(M)
                inner.append(np.stack(Ms))
            wn = _norm(w, axis=-1)
            b = np.einsum("bn,bn->b", su + np.abs(y).astype(np.float64) + hu * wn[:, None] * xn, xn) / n \
                + float(self.lam) * wn
            Hu = np.einsum("bn,bni,bnj->bij", hu, Xf, Xf) / n + float(self.lam) * np.eye(d)
            Mf = np.asarray(M, dtype=np.float64)
            mags.append(wn + b * (_norm(Mf, 2, axis=(1, 2)) + np.trace(Mf @ Hu @ Mf, axis1=1, axis2=2)))
            w = w - np.einsum("bij,bj->bi", M, G)
            ws.append(w)
        mags.append(_norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        if inner:
            self.inner_ = np.stack(inner)
        return self


class ValidationSelect:
    """Post-ICL validation (Bai et al. 2023, Prop. 15), in numpy, over any candidates.

    Each candidate is a :class:`Reference` (run on the first ``n_train`` examples) with a link
    ``g`` (None: the identity), predicting ``g(<w_k, x>)``; validation losses ``L_k`` of the
    predictions on the remaining examples; weights ``c_k = sum_j relu(L_k - L_j)``,
    ``u_k = relu(1 - c_k/gamma)``, ``P_k = relu(1 - sum_{j<=k} u_j)``, ``a_k = P_{k-1} - P_k``
    (``P_0 = 1``); prediction ``sum_k a_k g_k(<w_k, x_q>)``.  ``trace(Xq)`` applies the selection
    to the iterates after every step; ``scale(Xq)`` is the error-model scale.
    """

    def __init__(self, candidates, n_train: int, gamma: float, links=None):
        self.candidates, self.n_train, self.gamma = list(candidates), n_train, gamma
        self.links = list(links) if links is not None else [None] * len(self.candidates)

    def _f(self, X, W):
        """``g_k(<w_k, x>)`` for inputs ``X [B, m, d]`` and iterates ``W [S, B, K, d]`` -> ``[S, B, K, m]``."""
        s = np.einsum("bmd,sbkd->sbkm", X, W)
        return np.stack([s[:, :, k] if g is None else g(s[:, :, k]) for k, g in enumerate(self.links)], axis=2)

    def fit(self, X, y) -> "ValidationSelect":
        X, y = _batch(X, y)
        tr, va = slice(0, self.n_train), slice(self.n_train, None)
        self.gds_ = [g.fit(X[:, tr], y[:, tr]) for g in self.candidates]
        self.W_ = np.stack([g.iterates_ for g in self.gds_], axis=2)  # [S+1, B, K, d]
        r = self._f(X[:, va], self.W_) - y[:, None, va]
        self.losses_ = (r**2).mean(-1)  # [S+1, B, K]
        self.weights_ = self.select(self.losses_)
        return self

    def select(self, L: np.ndarray) -> np.ndarray:
        c = np.maximum(L[..., :, None] - L[..., None, :], 0).sum(-1)
        u = np.maximum(1 - c / self.gamma, 0)
        P = np.maximum(1 - np.cumsum(u, axis=-1), 0)
        return np.concatenate([1 - P[..., :1], P[..., :-1] - P[..., 1:]], axis=-1)

    def trace(self, Xq) -> np.ndarray:
        Xq = np.asarray(Xq, dtype=_dtype(Xq))
        Xq = Xq[None] if Xq.ndim == 2 else Xq
        return np.einsum("sbk,sbkm->sbm", self.weights_[1:], self._f(Xq, self.W_[1:]))

    def predict(self, Xq) -> np.ndarray:
        return self.trace(Xq)[-1]

    def scale(self, Xq) -> np.ndarray:
        """GD's scale for the worst candidate (for a candidate with a link, also the size of the link's
        terms, :meth:`LogisticGD.link_terms`), times the selection's conditioning ``1 + K max_k L_k /
        gamma`` where it is not flat: the weights move with the losses (slope ``1/gamma`` per
        candidate) only when a second candidate is within ``gamma`` of the best (plus a margin
        ``SELECT_TIE_MARGIN * max_k L_k`` for the losses' own round-off).  Elsewhere the weights are
        one-hot with a loss gap above the margin, round-off in the losses cannot move them, and the
        scale is GD's.  ``test_select.py`` checks both: the slope near a tie and flatness away."""
        Xq = np.asarray(Xq, dtype=_dtype(Xq))
        Xq = Xq[None] if Xq.ndim == 2 else Xq
        s = np.einsum("bmd,sbkd->sbkm", Xq, self.W_[1:])  # the candidates' scores at the queries
        # a linked candidate's prediction also sums its link's terms (e.g. the sigmoid interpolant's
        # constant 1/2), whatever the size of x_q
        linked = [g.link_terms(s[:, :, k]) for k, (g, link) in enumerate(zip(self.gds_, self.links))
                  if link is not None]
        base = np.max([g.scale(Xq) for g in self.gds_] + linked, axis=0)  # [S, B, m]
        return base * self.conditioning()[:, :, None]

    def conditioning(self) -> np.ndarray:
        """``[S, B]``: ``1 + K max_k L_k / gamma`` after the steps with a near tie, else 1."""
        L = self.losses_[1:]  # [S, B, K]
        K = L.shape[-1]
        top = L.max(-1)
        if K == 1:
            return np.ones(top.shape)
        second = np.sort(L - L.min(-1, keepdims=True), axis=-1)[..., 1]  # the runner-up's gap
        near = second <= self.gamma + SELECT_TIE_MARGIN * top
        return np.where(near, 1 + K * top / self.gamma, 1.0)


class RidgeSelect(ValidationSelect):
    """:class:`ValidationSelect` over ridge GD (``steps``, ``lr``) for every ``lam_k`` in ``lams``:
    Bai et al.'s post-ICL validation among ridge estimators (Prop. 15)."""

    def __init__(self, lams, steps: int, lr: float, n_train: int, gamma: float):
        self.lams, self.steps, self.lr = list(lams), steps, lr
        super().__init__([GD(steps, lr=lr, lam=lam) for lam in self.lams], n_train, gamma)


class LinkSelect(ValidationSelect):
    """:class:`ValidationSelect` between two links (Bai et al. 2023, Thm I.2): GD on the square loss
    (identity link, ``steps``, ``lr``) and logistic GD (``lr_class``, the sigmoid interpolated at
    ``knots``, predicting the mean ``sigma_hat(<v, x>)``)."""

    def __init__(self, steps: int, lr: float, lr_class: float, knots, n_train: int, gamma: float, relu=None):
        logistic = LogisticGD(steps, lr_class, knots, relu=relu)
        super().__init__([GD(steps, lr=lr), logistic], n_train, gamma, links=[None, logistic._sigma])


#: the loss gap (relative to the largest loss) within which RidgeSelect's conditioning counts a tie as
#: near: well above the losses' relative round-off in float32 (``C eps (t+1)(n+d) <= 1e-4`` for the
#: claims' sizes)
SELECT_TIE_MARGIN = 1e-3


class NewtonSchulz(Reference):
    """Newton-Schulz for ridge: ``M_0 = alpha I``, ``M_{k+1} = 2 M_k - M_k A M_k``,
    ``A = X^T X/n + lam I``; iterates ``w_k = M_k X^T y/n``.

    ``magnitude_`` (for the error model): ``b_u (|M_k| + tr(M_k A M_k))`` with
    ``b_u = (1/n) sum_i |y_i| |x_i|``: the layer's sums have terms of size
    ``tr(M A M)`` (the unsigned ``(1/n) sum_j |M x_j|^2``), the readout's of size
    ``|M| b_u`` (unsigned ``X^T y/n``)."""

    def __init__(self, iters: int, lam: float, alpha: float):
        self.steps, self.lam, self.alpha = iters, lam, alpha

    def fit(self, X, y) -> "NewtonSchulz":
        X, y = _batch(X, y)
        B, n, d = X.shape
        A = np.einsum("bni,bnj->bij", X, X) / n + self.lam * np.eye(d, dtype=X.dtype)
        b = np.einsum("bnd,bn->bd", X, y) / n
        b_u = _unsigned_grad(X, y)
        M = np.broadcast_to(self.alpha * np.eye(d, dtype=X.dtype), (B, d, d)).copy()
        ws, mags = [np.zeros((B, d), dtype=X.dtype)], [np.zeros(B)]
        for _ in range(self.steps):
            M = 2 * M - M @ A @ M
            ws.append(np.einsum("bij,bj->bi", M, b))
            mags.append(b_u * (_norm(M, 2, axis=(1, 2)) + np.trace(M @ A @ M, axis1=1, axis2=2)))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class RecursiveLeastSquares(Reference):
    """Ridge on every prefix by the Sherman-Morrison / RLS recursion (exact division):
    ``mu = n lam``, ``P = I/mu``, ``w = 0``; per example ``u = P x``, ``c = 1 + x.u``,
    ``w <- w + u (y - x.w)/c``, ``P <- P - u u^T/c``.  ``iterates_[t+1]`` is the ridge
    solution on examples 0..t; ``magnitude_`` bounds the terms the updates sum:
    ``|w_t| + |P_t| max|x| (max|y| + max|x| |w_t|)``.

    ``reciprocal=(r0, J)``: ``1/c`` replaced by J Newton iterations ``r <- r (2 - c r)``
    from ``r0``, the recursion that :func:`constructions.ridge_sherman_morrison` runs (its
    exact-rational check compares with this; the float checks use exact division)."""

    def __init__(self, lam: float, reciprocal: tuple | None = None):
        self.lam, self.reciprocal = lam, reciprocal

    def _inverse(self, c):
        if self.reciprocal is None:
            return 1 / c
        r = np.full_like(c, self.reciprocal[0])
        for _ in range(self.reciprocal[1]):
            r = r * (2 - c * r)
        return r

    def fit(self, X, y) -> "RecursiveLeastSquares":
        X, y = _batch(X, y)
        B, n, d = X.shape
        P = np.broadcast_to(np.eye(d, dtype=X.dtype) / (n * self.lam), (B, d, d)).copy()
        w = np.zeros((B, d), dtype=X.dtype)
        xm, ym = _norm(X, axis=-1).max(-1), np.abs(y).max(-1)
        ws, mags = [w], []
        for t in range(n):
            x = X[:, t]
            mags.append(_norm(w, axis=-1) + _norm(P, 2, axis=(1, 2)) * xm * (ym + xm * _norm(w, axis=-1)))
            u = np.einsum("bij,bj->bi", P, x)
            c = 1 + np.einsum("bi,bi->b", x, u)
            e = y[:, t] - np.einsum("bi,bi->b", x, w)
            r = self._inverse(c)
            w = w + u * (e * r)[:, None]
            P = P - np.einsum("bi,bj->bij", u, u) * r[:, None, None]
            ws.append(w)
        mags.append(_norm(w, axis=-1))
        self.iterates_, self.magnitude_ = np.stack(ws), np.stack(mags)
        return self


class BinaryTest(Reference):
    """Bai et al.'s pre-ICL binary test: ``Psi = (1/n) sum_i psi(y_i)`` with psi the two
    triangular bumps of half-width eps at 0 and 1, then ``clip((Psi - t)/(1 - t), 0, 1)``.
    ``trace(Xq)`` is ``[1, B, m]`` (one step); ``scale`` the size of the summed terms,
    ``(1/(1 - t)) (8/eps) (max|y| + 2)``."""

    def __init__(self, eps: float, threshold: float):
        self.eps, self.threshold = eps, threshold

    def fit(self, X, y) -> "BinaryTest":
        X, y = _batch(X, y)
        bump = lambda v: np.maximum(1 - np.abs(v) / self.eps, 0)  # noqa: E731
        self.psi_ = (bump(y) + bump(y - 1)).mean(-1)
        self.test_ = np.clip((self.psi_ - self.threshold) / (1 - self.threshold), 0, 1)
        self.size_ = 8 / self.eps * (np.abs(y).max(-1) + 2) / (1 - self.threshold)
        return self

    def trace(self, Xq) -> np.ndarray:
        return np.broadcast_to(self.test_[None, :, None], (1, len(self.test_), self._q(Xq).shape[1])).copy()

    def predict(self, Xq) -> np.ndarray:
        return self.trace(Xq)[-1]

    def scale(self, Xq) -> np.ndarray:
        return np.broadcast_to(self.size_[None, :, None], self.trace(Xq).shape).copy()


class PreICLSelect:
    """Regression or classification chosen by the binary test (Bai et al. 2023, Prop. 19), in numpy.

    ``test`` of :class:`BinaryTest`; ridge GD (``steps``, ``lr``, ``lam``) and logistic GD
    (``steps``, ``lr_class``, the sigmoid interpolated at ``knots``) on the same prompt; after
    step t the output ``f_r + S_g(f_c - f_r)`` with ``f_r = <w_t, x_q>``, ``f_c = <v_t, x_q>``,
    S the soft threshold at ``g = M (1 - test)``: ``f_c`` when test = 1, ``f_r`` when test = 0
    (and ``|f_c - f_r| <= M``).  ``scale`` adds the branches' scales and, where the output is not
    flat in the test, ``M`` times the test's scale: the output moves with the test (slope M) only
    where the soft threshold is active, ``|f_c - f_r| > g``; ``|f_c - f_r| >= g / 2`` leaves a
    margin of half the threshold for the test's round-off."""

    def __init__(self, steps: int, lr: float, lr_class: float, knots, eps: float, threshold: float,
                 select_const: float, lam: float = 0.0, relu=None):
        self.ridge, self.logistic = GD(steps, lr=lr, lam=lam), LogisticGD(steps, lr_class, knots, relu=relu)
        self.test, self.M = BinaryTest(eps, threshold), select_const

    def fit(self, X, y) -> "PreICLSelect":
        for r in (self.ridge, self.logistic, self.test):
            r.fit(X, y)
        return self

    def trace(self, Xq) -> np.ndarray:
        fr, fc = self.ridge.trace(Xq), self.logistic.trace(Xq)
        g = self.M * (1 - self.test.trace(Xq))  # [1, B, m]
        return fr + np.maximum(fc - fr - g, 0) - np.maximum(fr - fc - g, 0)

    def predict(self, Xq) -> np.ndarray:
        return self.trace(Xq)[-1]

    def scale(self, Xq) -> np.ndarray:
        fr, fc = self.ridge.trace(Xq), self.logistic.trace(Xq)
        active = np.abs(fc - fr) >= self.M * (1 - self.test.trace(Xq)) / 2
        return self.ridge.scale(Xq) + self.logistic.scale(Xq) + np.where(active, self.M * self.test.scale(Xq), 0.0)


def relu_features(X, W_in, b_in, W_out) -> np.ndarray:
    """``m(x) = W_out relu(W_in x + b_in)`` for every row x of ``X [..., d]`` -> ``[..., k]`` (exact
    for Fraction inputs and weights)."""
    X = np.asarray(X, dtype=_dtype(X))
    exact = np.vectorize(Fraction, otypes=[object])  # the float weights' exact values
    conv = (lambda a: exact(np.asarray(a, dtype=np.float64))) if X.dtype == object else (
        lambda a: np.asarray(a, dtype=np.float64))
    W_in, b_in, W_out = conv(W_in), conv(b_in), conv(W_out)
    return np.maximum(X @ W_in.T + b_in, 0) @ W_out.T


def relu_feature_bound(X, W_in, b_in, W_out) -> np.ndarray:
    """``|W_out| (u * open)`` for every row x of ``X`` (float64), ``u = |W_in| |x| + |b_in|`` the
    unsigned size of the terms each hidden unit sums: it bounds the unit's round-off where the sum
    ``W_in x + b_in`` cancels (the features' entry in the tolerance model's scale).  ``open`` drops
    the units whose sum is below ``-margin u``, ``margin = C (d + 1) eps(float32)`` (the widest
    round-off the toolkit runs in): they are exactly 0 in every pass."""
    from .tolerance import C

    a = lambda v: np.abs(np.asarray(v, dtype=np.float64))  # noqa: E731
    X = np.asarray(X, dtype=np.float64)
    u = a(X) @ a(W_in).T + a(b_in)
    margin = C * (X.shape[-1] + 1) * float(np.finfo(np.float32).eps)
    return (u * (X @ np.asarray(W_in, dtype=np.float64).T + np.asarray(b_in, dtype=np.float64) > -margin * u)) @ a(W_out).T


class LMS(Reference):
    """The delta rule / least mean squares, one example per step in prompt order (S = n steps):
    ``w_t = w_{t-1} + beta ((y_t - w_{t-1} . x_t) x_t - lam w_{t-1})`` from ``w_0`` (default 0), one pass
    of SGD on ``(1/2)(w . x - y)^2 + (lam/2)|w|^2`` with step beta (Akyurek et al.'s pass, their
    loss without the 1/2, is beta = 2 lr).  ``residuals_`` ``[B, n]``: ``w_{t-1} . x_t - y_t``.
    ``magnitude_``: ``|w_t|`` plus the update's unsigned size."""

    def __init__(self, beta, lam=0.0, w0=None):
        self.beta, self.lam, self.w0 = beta, lam, w0

    def fit(self, X, y) -> "LMS":
        X, y = _batch(X, y)
        B, n, d = X.shape
        w = np.zeros((B, d), dtype=X.dtype) * y[:, :1]
        if self.w0 is not None:
            w = w + np.asarray(self.w0, dtype=X.dtype)
        ws, mags, es = [w], [np.zeros(B)], []
        for t in range(n):
            e = np.einsum("bd,bd->b", w, X[:, t]) - y[:, t]
            step = -e[:, None] * X[:, t] - (self.lam * w if self.lam else 0)
            mags.append(_norm(w, axis=-1) + float(self.beta) * _norm(step, axis=-1))
            w = w + self.beta * step
            ws.append(w)
            es.append(e)
        self.iterates_, self.magnitude_, self.residuals_ = np.stack(ws), np.stack(mags), np.stack(es, 1)
        return self


class OnFeatures:
    """A reference run on features: ``fit(X, y)`` fits ``inner`` on ``(m(X), y)``; ``trace`` and
    ``scale`` read the queries ``m(Xq)`` (``m`` a callable, e.g. :func:`relu_features` with its
    weights bound).  von Oswald et al. 2023, Prop. 2: GD on the feature regression.  ``bound``
    (e.g. :func:`relu_feature_bound` with the weights bound): the features' unsigned size, used in
    the scale in place of ``|m(x)|``; the inner reference must then take it (:meth:`GD.fit`'s
    ``unsigned``)."""

    def __init__(self, features, inner, bound=None):
        self.features, self.inner, self.bound = features, inner, bound

    def fit(self, X, y) -> "OnFeatures":
        F = self.features(X)
        self.k_ = F.shape[-1]
        if self.bound is None:
            self.inner.fit(F, y)
        else:
            self.inner.fit(F, y, unsigned=self.bound(X))
        self.iterates_, self.magnitude_ = self.inner.iterates_, self.inner.magnitude_
        return self

    def sum_length(self, d: int) -> int:
        """The layers sum over the k features (scores) and the feature MLP over d inputs and a bias."""
        return max(self.k_, d + 1)

    def predict(self, Xq):
        return self.inner.predict(self.features(Xq))

    def trace(self, Xq):
        return self.inner.trace(self.features(Xq))

    def scale(self, Xq):
        return self.inner.scale((self.bound or self.features)(Xq))


class KernelStep(Reference):
    """One GD step from 0 on features, read as a kernel smoother: the prediction at ``x_q`` is
    ``(lr/n) sum_i y_i k(x_i, x_q)`` with ``k(x, x') = m(x).m(x')`` (von Oswald et al. 2023,
    Prop. 2 and App. A.8), computed from the Gram matrix, without forming any iterate."""

    def __init__(self, features, lr, bound=None):
        self.features, self.lr, self.bound = features, lr, bound

    def fit(self, X, y) -> "KernelStep":
        X, y = _batch(X, y)
        self.F_, self.y_ = self.features(X), y
        self.U_ = self.F_ if self.bound is None else self.bound(X)
        return self

    def sum_length(self, d: int) -> int:
        return max(self.F_.shape[-1], d + 1)

    def trace(self, Xq):
        Fq = self.features(self._q(Xq))
        K = np.einsum("bnk,bmk->bnm", self.F_, Fq)  # k(x_i, x_q)
        return (self.lr * np.einsum("bn,bnm->bm", self.y_, K) / self.F_.shape[1])[None]

    def predict(self, Xq):
        return self.trace(Xq)[-1]

    def scale(self, Xq):
        Uq = (self.bound or self.features)(self._q(Xq))
        terms = np.einsum("bn,bn->b", np.abs(self.y_).astype(np.float64), _norm(self.U_, axis=-1)) / self.U_.shape[1]
        return (abs(float(self.lr)) * terms[:, None] * _norm(Uq, axis=-1))[None]


class NadarayaWatson:
    """The Nadaraya-Watson kernel smoother ``f(x_q) = sum_i k(x_q, x_i) y_i / sum_i k(x_q, x_i)``
    with ``k = exp(beta x . x')`` (``"exp"``) or ``exp(-beta |x - x'|^2 / 2)`` (``"gaussian"``),
    computed from the log-kernel by log-sum-exp (numpy), one "step": ``trace`` ``[1, B, m]``.
    ``scale``: the size of the output (a convex combination of the y_i) times the relative error
    that rounding a score puts into its weight (``exp(s (1 + eps)) = exp(s) (1 + s eps)``)."""

    def __init__(self, beta: float, kernel: str = "exp"):
        self.beta, self.kernel = float(beta), kernel

    def fit(self, X, y) -> "NadarayaWatson":
        self.X_, self.y_ = (np.asarray(a, dtype=np.float64) for a in _batch(X, y))
        return self

    def _logk(self, Xq):
        Xq = np.asarray(Xq, dtype=np.float64)
        Xq = Xq[None] if Xq.ndim == 2 else Xq
        s = self.beta * np.einsum("bmd,bnd->bmn", Xq, self.X_)
        if self.kernel == "gaussian":
            s = s - self.beta * ((Xq**2).sum(-1)[..., None] + (self.X_**2).sum(-1)[:, None, :]) / 2
        return s

    def predict(self, Xq):
        s = self._logk(Xq)
        w = np.exp(s - s.max(-1, keepdims=True))
        return np.einsum("bmn,bn->bm", w, self.y_) / w.sum(-1)

    def trace(self, Xq):
        return self.predict(Xq)[None]

    def scale(self, Xq):
        """``max|y| (1 + max_i |score_i|)``, the score being the attention's own
        (``beta x_q . x_i``, minus ``beta |x_i|^2/2`` for the Gaussian): rounding it by a relative
        eps moves its weight by the factor ``1 + eps |score|``."""
        Xq = np.asarray(Xq, dtype=np.float64)
        Xq = Xq[None] if Xq.ndim == 2 else Xq
        score = np.abs(self.beta * np.einsum("bmd,bnd->bmn", Xq, self.X_))
        if self.kernel == "gaussian":
            score = score + self.beta * (self.X_**2).sum(-1)[:, None, :] / 2
        return (np.abs(self.y_).max(-1)[:, None] * (1 + score.max(-1)))[None]


def kernel_matrix(A, Bm, kernels, kernel: str = "relu"):
    """``[B, p, q]``: ``K(a_j, b_i) = sum_h phi(a_j^T W_h b_i)`` with ``phi`` = relu (``kernel="relu"``)
    or exp (``"exp"``, floats only) for inputs ``A [B, p, d]``, ``Bm [B, q, d]``."""
    phi = (lambda s: np.maximum(s, 0)) if kernel == "relu" else np.exp
    return sum(phi(np.einsum("bjd,de,bie->bji", A, W, Bm)) for W in kernels)


class KernelGD:
    """Functional GD from ``f_0 = 0`` with the kernel ``K(x, x') = sum_h phi(x^T W_h x')`` (``phi``
    relu, or exp with ``kernel="exp"``) and rate
    ``lr``, each step followed by the ridge term's proximal map (``shrink = lr lam/(1 + lr lam)``,
    0 for plain functional GD): ``r <- r - (lr/n) K r``, ``f(x_q) <- f(x_q) + (lr/n) k_q^T r``, then
    ``r <- r + shrink (y - r)``, ``f <- (1 - shrink) f``.  Runs in exact rational arithmetic for
    Fraction inputs and parameters.  ``trace`` ``[S, B, m]``; ``scale`` the running largest of
    ``|f_t(x_q)| + (lr/n) sum_i |k_q,i| |r_i|`` (the terms each step sums)."""

    def __init__(self, steps: int, lr, shrink, kernels, kernel: str = "relu"):
        self.steps, self.lr, self.shrink, self.kernels = steps, lr, shrink, [np.asarray(W) for W in kernels]
        self.kernel = kernel

    def fit(self, X, y) -> "KernelGD":
        self.X_, self.y_ = _batch(X, y)
        return self

    def _k(self, A, Bm):
        return kernel_matrix(A, Bm, self.kernels, self.kernel)

    def _unsigned(self, A, Bm):
        """The kernel's terms as the error model sees them: ``|K|`` for relu; for exp, each
        ``exp(s)`` times ``1 + |s|``, since a round-off of size u in the score s moves exp(s) by
        about ``u exp(s)``, relative to s's own size."""
        if self.kernel == "relu":
            return np.abs(self._k(A, Bm).astype(np.float64))
        ss = [np.einsum("bjd,de,bie->bji", A, W, Bm).astype(np.float64) for W in self.kernels]
        return sum(np.exp(v) * (1 + np.abs(v)) for v in ss)

    def _run(self, Xq):
        Xq = np.asarray(Xq, dtype=_dtype(Xq))
        Xq = Xq[None] if Xq.ndim == 2 else Xq
        X, y = self.X_, self.y_
        n = X.shape[1]
        K, Kq = self._k(X, X), self._k(Xq, X)
        Ku = self._unsigned(Xq, X)
        r, f = y.copy(), np.zeros(Xq.shape[:2], dtype=X.dtype) * y[:, :1]
        fs, mags, mag = [], [], np.zeros(Xq.shape[:2])
        for _ in range(self.steps):
            upd = np.einsum("bqi,bi->bq", Kq, r) * self.lr / n
            mag = np.maximum(mag, np.abs(f.astype(np.float64)) + np.einsum(
                "bqi,bi->bq", Ku, np.abs(r.astype(np.float64))) * float(self.lr) / n)
            r, f = r - np.einsum("bji,bi->bj", K, r) * self.lr / n, f + upd
            if self.shrink:
                r, f = r + self.shrink * (y - r), f - self.shrink * f
            fs.append(f)
            mags.append(mag + np.abs(y.astype(np.float64)).max(-1)[:, None])
        return np.stack(fs), np.stack(mags)

    def predict(self, Xq):
        return self._run(Xq)[0][-1]

    def trace(self, Xq):
        return self._run(Xq)[0]

    def scale(self, Xq):
        return self._run(Xq)[1]

