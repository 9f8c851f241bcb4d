"""Bound checks that several claims share, each a :class:`~verify.tolerance.Comparison` whose
"model" is a measured deviation of the construction, "ref" 0 and "tol" the stated bound plus
round-off (shapes ``[S, B, k]``: step, prompt, quantity)."""
from __future__ import annotations

import math

import numpy as np
import torch

from .reference import Ridge, sigmoid_prime
from .tolerance import Comparison, solve_tolerance, tolerance


#: ``max |sigma''| = 1/(6 sqrt 3)`` and ``max |sigma'''| = 1/8``: the sigmoid's interpolation error constants
SIGMA2_MAX, SIGMA3_MAX = 1 / (6 * math.sqrt(3)), 1 / 8


def sigmoid_fit_errors(heads: int, radius: float, reach: float = 0.0) -> tuple[float, float]:
    """``(eps0, eps1)``: bounds on ``|sigma_tilde - sigma|`` and ``|h_hat - sigma'|`` over the scores
    ``|s| <= max(R, reach)``, for h_hat sigma' interpolated at ``heads`` equispaced knots on ``[-R, R]``
    (flat outside) and sigma_tilde its antiderivative with ``sigma_tilde(-R) = sigma(-R)``
    (:func:`constructions.parts.relu_antiderivative`), ``h = 2R/(heads - 1)``:

    * on ``[-R, R]``: ``|h_hat - sigma'| <= h^2 max|sigma'''| / 8 = h^2/64``, and integrating from -R,
      ``|sigma_tilde - sigma| <= 2R h^2/64 = R h^2/32``;
    * outside (``reach > R``): h_hat is the constant ``sigma'(R)`` and sigma' lies in ``(0, sigma'(R)]``,
      so ``|h_hat - sigma'| <= sigma'(R)``, and the gap in sigma grows by at most ``sigma'(R) (|s| - R)``."""
    h = 2 * radius / (heads - 1)
    eps1, eps0 = h * h * SIGMA3_MAX / 8, 2 * radius * h * h * SIGMA3_MAX / 8
    if reach > radius:
        edge = float(sigmoid_prime(radius))
        eps1, eps0 = max(eps1, edge), eps0 + edge * (reach - radius)
    return eps0, eps1


def slot_matches_iterates(p, c, ref, slot: str = "w") -> Comparison:
    """The replicated slot ``slot`` of every token after step t equals the reference's ``w_t``
    (tolerance model, scale = the reference's running magnitude).  ``ref`` is fitted."""
    W = np.asarray(c.read_slot(*p.arrays, slot), dtype=np.float64)[1:]  # [S, B, T, d]
    dev = np.abs(W - ref.iterates_[1:, :, None, :]).max(axis=(2, 3))[..., None]  # [S, B, 1]
    scale = np.maximum.accumulate(ref.magnitude_, axis=0)[1:][..., None]
    return Comparison(dev, np.zeros_like(dev), tolerance(c.dtype, p.spec.n, p.spec.d, scale), scale)


def ridge_quantities(p, lam: float):
    """(w* [B, d], kappa(A) [B], eigenvalues of A [B, d]) for ``A = X^T X/n + lam I``."""
    A = np.einsum("bni,bnj->bij", p.X, p.X) / p.spec.n + lam * np.eye(p.spec.d)
    ev = np.linalg.eigvalsh(A)
    return Ridge(lam).fit(p.X, p.y).iterates_[-1], ev[:, -1] / ev[:, 0], ev


def ridge_rate(p, c, ref, lam: float, factor) -> Comparison:
    """``|y_t - y_ridge| <= factor_t |x_q| |w*|`` + round-off (the trace's and the solve's);
    ``factor [S, B]``, ``ref`` the unfitted reference of the trace."""
    w_star, kappa, _ = ridge_quantities(p, lam)
    model = np.asarray(c.trace(*p.arrays), dtype=np.float64)  # [S, B, m]
    target = np.einsum("bmd,bd->bm", p.Xq, w_star)[None]
    qn = np.linalg.norm(p.Xq, axis=-1)[None] * np.linalg.norm(w_star, axis=-1)[None, :, None]  # [1, B, m]
    ref.fit(p.X, p.y)
    roundoff = tolerance(c.dtype, p.spec.n, p.spec.d, ref.scale(p.Xq)) + solve_tolerance(
        torch.float64, p.spec.d, kappa[None, :, None], qn)
    allowed = factor[:, :, None] * qn + roundoff
    dev = np.abs(model - target)
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)
