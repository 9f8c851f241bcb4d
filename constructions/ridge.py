"""Closed-form ridge regression in context: Newton-Schulz in O(log kappa) layers.

Notation: B batch, n context examples, m queries, d input dim, D residual
width, L layers.  Ridge (toolkit convention): ``A = X^T X/n + lam I``,
``b = X^T y/n``, ``w* = A^{-1} b``.

Newton-Schulz for ``A^{-1}``: ``M_{k+1} = 2 M_k - M_k A M_k`` from ``M_0 = alpha I``
with ``alpha = 1/(x_bound^2 + lam)``.  Since ``lambda_max(X^T X/n) <= max_i |x_i|^2
<= x_bound^2``, the error ``E_k = I - M_k A = E_0^(2^k)`` has eigenvalues in
``[0, q^(2^k)]``, ``q = 1 - lam/(x_bound^2 + lam)`` (strictly inside the
convergence region, claims.md sec. 11.8).

Token layout (Fu et al.'s ``[T x; x]`` tokens, claims.md sec. 7, with the scaled
iterate ``Mt_k = M_k / alpha``, ``Mt_0 = I``):

==========  =====================  ========================  =============
slot        context token i        ridge token k = 1..d      query token
==========  =====================  ========================  =============
``x``       x_i                    sqrt(n lam) e_k           x_q
``u``       Mt_k x_i (starts x_i)  Mt_k sqrt(n lam) e_k      (unused)
``y``       y_i                    0                         0 (prediction)
``one``     1                      1                         1
``rgate``   -1                     0                         -1
==========  =====================  ========================  =============

The d *ridge tokens* make the keys' second moment exactly A:
``(1/n) sum_{keys} x_j x_j^T = X^T X/n + lam I`` (the attention divides by n,
the number of examples, not by the n + d keys), and their ``u`` slots are the
columns of ``sqrt(n lam) Mt``: the iterate itself.

Stability.  Fu et al.'s layer ``u_t <- 2 u_t - alpha Mt A Mt x_t`` doubles any
round-off in a token's own copy ``u_t`` at every layer (2^L growth: the keys'
sum does not depend on it).  Here every token instead *recomputes* ``2 Mt x_t``
from the ridge tokens (``(1/n) sum_k (x_t.x_k) u_k (2/lam)``) and removes its old
copy through them (``-(1/n) sum_k (u_t.x_k) x_k / lam = -u_t``), so the state is
the matrix Mt held by the ridge tokens, and the classical Newton-Schulz
iteration on it is self-correcting.  The Newton term's score reads the token's
own copy (``u_t . x_j = x_j^T Mt x_t``) so that the stored matrix S follows
``2S - alpha S A S``; the transposed score ``x_t . u_j`` would give
``2S - alpha S A S^T``, which doubles antisymmetric round-off at every layer.  Heads restricted to ridge tokens use the
gate ``B * rgate_j`` inside the ReLU (as Bai et al. gate the query).
"""
from __future__ import annotations

import math

import numpy as np

from .bai import sign_split
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .linear_gd import _positive_int, _real
from .transformer import AttentionSpec, BlockSpec


def newton_iters(lam: float, x_bound: float, eps: float = 2.0**-53) -> int:
    """Smallest k with ``q^(2^k) <= eps``, ``q = x_bound^2 / (x_bound^2 + lam)``: the count
    at which the Newton-Schulz error contracts to float64 round-off for every prompt
    within the norm bound."""
    q = x_bound**2 / (x_bound**2 + lam)
    return max(1, math.ceil(math.log2(math.log(eps) / math.log(q)))) if q > 0 else 1


def newton_heads(lay: ResidualLayout, alpha: float, lam: float, mask_const: float,
                 fu_printed_values: bool = False) -> list[dict]:
    """Six ReLU heads whose sum maps every key token's ``u_t = Mt x_t`` to ``Mt' x_t``,
    ``Mt' = 2 Mt - alpha Mt A Mt``:

    * Newton term (2 heads, sign split, all keys): score ``u_t.x_j``, value ``u_j``,
      output ``-alpha``: ``-alpha (1/n) sum_j u_j x_j^T u_t = -alpha Mt A Mt x_t``.
    * fresh ``2 Mt x_t`` (2 heads, ridge keys only): score ``x_t.x_k``, value ``u_k``,
      output ``2/lam``.
    * old copy removed (2 heads, ridge keys only): score ``u_t.x_k``, value ``x_k``,
      output ``-1/lam``: ``-u_t``.

    ``fu_printed_values``: the Newton pair with Fu et al.'s printed ``V_1 = V_2``
    (``relu(z) v + relu(-z) v = |z| v``, claims.md sec. 11.17); only for the regression test.
    """
    d = lay["x"].size
    I = np.eye(d)
    # score u_t.x_j = x_j^T Mt x_t, not x_t.u_j = x_t^T Mt x_j: the latter iterates
    # S <- 2S - alpha S A S^T on the stored Mt, which doubles any antisymmetric round-off
    newton = sign_split(lay, {"u": I}, {"x": I}, {"u": I}, {"u": -alpha * I}, d, 0.0, gate="rgate")  # B = 0: ungated
    if fu_printed_values:
        newton[1]["W_O"] = -newton[1]["W_O"]
    fresh = sign_split(lay, {"x": I}, {"x": I}, {"u": I}, {"u": 2.0 / lam * I}, d, mask_const, gate="rgate")
    remove = sign_split(lay, {"u": I}, {"x": I}, {"x": I}, {"u": -1.0 / lam * I}, d, mask_const, gate="rgate")
    return newton + fresh + remove


def _ridge_tokens(lay: ResidualLayout, lam: float):
    d = lay["x"].size

    def tokens(n: int) -> np.ndarray:
        t = np.zeros((d, lay.width))
        t[:, lay["x"].index] = np.sqrt(n * lam) * np.eye(d)
        t[:, lay["u"].index] = np.sqrt(n * lam) * np.eye(d)
        t[:, lay["one"].index] = 1.0
        return t  # rgate = 0: admitted by the ridge-only heads

    return tokens


def newton_mask_bound(n: int, lam: float, x_bound: float) -> float:
    """``2 kappa_b max(x_bound^2, sqrt(n lam) x_bound)``: bounds every score the ridge-only
    heads must gate out (``|x_t.x_j|`` and ``|u_t.x_j| <= |Mt| |x_t||x_j|``, ``|Mt| <= kappa_b``)."""
    kappa_b = (x_bound**2 + lam) / lam
    return 2 * kappa_b * max(x_bound**2, math.sqrt(n * lam) * x_bound)


def ridge_newton(d: int, lam: float, iters: int | None = None, x_bound: float = 1.0, mask_const: float = 1e15,
                 _fu_printed_values: bool = False) -> Construction:
    """Ridge regression by Newton-Schulz: one layer per iteration, O(log kappa) layers.

    **Theorem** (Fu et al. 2023, Thm 5.1 and App. B.2, claims.md sec. 7, with the sign fix
    of sec. 11.17 and a start strictly inside the convergence region, sec. 11.8).  After
    step layer k the ``u`` slot of every context and ridge token holds ``Mt_k x`` with
    ``M_k = alpha Mt_k`` the k-th Newton-Schulz iterate for ``A^{-1}``
    (``M_{k+1} = 2 M_k - M_k A M_k``, ``M_0 = alpha I``, ``alpha = 1/(x_bound^2 + lam)``,
    ``A = X^T X/n + lam I``), and ``trace()[k-1] = Xq @ M_k X^T y/n``.  Since
    ``|I - M_k A| <= q^(2^k)``, ``q = x_bound^2/(x_bound^2 + lam)``, the prediction
    converges quadratically to ridge: ``|w_k - w*| <= q^(2^k) |w*|``.  The default
    ``iters = newton_iters(lam, x_bound)`` reaches float64 round-off: about
    ``log2(kappa_b) + 5.3`` layers, ``kappa_b = (x_bound^2 + lam)/lam >= kappa(A)``.

    **Proof sketch.**  See :func:`newton_heads`: the six heads add
    ``2 Mt x_t - u_t - alpha Mt A Mt x_t`` to ``u_t = Mt x_t``; the ridge tokens make
    the keys' second moment A and carry Mt's columns.  (Fu et al.'s score ``x_t . T x_j``
    would iterate ``2S - alpha S A S^T`` on the stored matrix, which doubles antisymmetric
    round-off every layer; the score ``u_t . x_j`` used here keeps the iteration
    self-correcting: ``tests/test_ridge.py::test_deep_newton_stays_at_round_off``.)  The readout (score
    ``x_q.u_j``, value ``y_j``, times alpha) gives ``alpha x_q^T Mt X^T y/n``.

    **Resources.**  ``iters + 1`` layers (iters Newton layers + 1 readout); 6 ReLU heads
    per Newton layer (3 sign-split pairs), 1 linear head in the readout; width ``2d + 3``;
    no MLP; d extra key tokens.  Fu et al.: k + 8 layers, 2 heads, O(d) width, an MLP per
    layer (their initialisation and readout use 8 layers; here the embedding fills
    ``u = x`` and one layer reads out).

    **Exactness.**  Exact: each layer equals one Newton-Schulz iteration up to float64
    round-off (and round-off does not grow with depth, see the module docstring); the
    iteration converges to ridge at the rate above.

    **Domain.**  ``lam > 0``; every context input ``|x_i| <= x_bound`` (the start value
    depends on it: a prompt beyond it raises instead of diverging silently);
    ``mask_const >= 2 kappa_b max(x_bound^2, sqrt(n lam) x_bound)`` (every gated score).
    """
    d = _positive_int(d, "d")
    lam, x_bound, mask_const = _real(lam, "lam"), _real(x_bound, "x_bound"), _real(mask_const, "mask_const")
    iters = newton_iters(lam, x_bound) if iters is None else _positive_int(iters, "iters")
    alpha = 1.0 / (x_bound**2 + lam)
    lay = ResidualLayout.of([("x", d, "x"), ("u", d, "x"), ("y", 1, "y"), ("one", 1, "one"),
                             ("rgate", 1, "minus_one")], Readout("y", 1.0))
    step = BlockSpec(AttentionSpec.from_heads("relu", newton_heads(lay, alpha, lam, mask_const, _fu_printed_values)))
    readout = dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"u": np.eye(d)}, d),
                   W_V=lay.read({"y": np.eye(1, d)}, d), W_O=lay.write({"y": alpha * np.eye(d, 1)}, d))
    blocks = [step] * iters + [BlockSpec(AttentionSpec.from_heads("linear", [readout]))]

    def domain(X, y, Xq):
        n = X.shape[1]
        xmax = float(X.norm(dim=-1).max())
        if xmax > x_bound * (1 + 1e-6):  # slack: float32 rounding moves a norm by <= 6e-8 relative
            raise ConstructionError(
                f"a context input has norm {xmax:.6g} > x_bound={x_bound:.6g}: the start value "
                f"alpha = 1/(x_bound^2 + lam) may leave the convergence region; rebuild with x_bound >= {xmax:.6g}"
            )
        need = newton_mask_bound(n, lam, x_bound)
        if mask_const < need:
            raise ConstructionError(f"mask_const={mask_const:.6g} is below the gated-score bound {need:.6g} "
                                    f"for n={n}; rebuild with mask_const >= {need:.6g}")

    params = dict(d=d, lam=lam, iters=iters, x_bound=x_bound, mask_const=mask_const)
    if _fu_printed_values:
        params["_fu_printed_values"] = True
    return Construction("ridge_newton", params, blocks, lay, d, n_readout=1,
                        extra_tokens=_ridge_tokens(lay, lam), domain=domain)
