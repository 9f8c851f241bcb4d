"""Ridge on every prefix by Sherman-Morrison (recursive least squares), one example per step.

Notation: B batch, n context examples, m queries, d input dim, D residual
width.  With ``mu = n lam`` and ``A_t = mu I + sum_{i<=t} x_i x_i^T`` the step for
example t is the RLS update (Akyurek et al. 2022, Thm 2 / App. B; claims.md sec. 2.4)::

    u = P x_t,  c = 1 + x_t.u,  e = y_t - x_t.w,  w <- w + u e / c,  P <- P - u u^T / c

from ``P = I/mu``, ``w = 0``, so that after step t ``P = A_t^{-1}`` and ``w`` is the
ridge solution on the first t + 1 examples; after the last step it is the
toolkit's ridge ``(X^T X/n + lam I)^{-1} X^T y/n``.

Why a step takes several blocks.  A block (attention + ReLU MLP) computes, per
head, sums of ``(q_i . k_j) v_j`` -- bilinear in the state and one other token --
and piecewise-linear maps: it cannot divide, and it cannot form ``u u^T`` (the
state twice) in the same pass that forms u.  The step is therefore a fixed
group of ``2J + 4`` blocks, and ``1/c`` comes from J Newton iterations
``r <- r (2 - c r)`` started at ``r_0 = 1/C`` with ``C = 1 + x_bound^2/mu >= c``, which
reach float64 round-off (``(1 - 1/C)^(2^J) <= 2^-53``) for every prompt in the
domain.  The whole state (P, w) and the scratch are replicated in every token
(as in Bai et al.'s constructions); products of replicated quantities use a
linear head whose key reads ``one`` (the mean over the n context keys of a
replicated value is that value); example t is selected with ReLU heads gated
by ``B * posgate_j[t]``.

Token layout: ``x`` (d), ``y``, ``posgate`` (n), ``P`` (d^2, row-major, starts at
I/mu in every token), ``w`` (d), scratch ``u`` (d), ``v`` (d), ``c``, ``e``, ``r``,
``s``, and ``one``.  Readout: ``<w, x_q>`` written into the query's ``y``.
"""
from __future__ import annotations

import math

import numpy as np

from .bai import sign_split
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .linear_gd import _positive_int, _real
from .transformer import AttentionSpec, BlockSpec, MLPSpec


def reciprocal_iters(C: float, eps: float = 2.0**-53) -> int:
    """Newton iterations for ``1/c``, ``c in [1, C]``, from ``r_0 = 1/C``: smallest J with
    ``(1 - 1/C)^(2^J) <= eps``."""
    q = 1.0 - 1.0 / C
    return max(1, math.ceil(math.log2(math.log(eps) / math.log(q)))) if q > 0 else 1


def _unit(size: int, i: int) -> np.ndarray:
    return np.eye(size)[i : i + 1]  # [1, size]


def _prod(lay, q: dict, v: dict, o: dict, e: int = 1) -> dict:
    """Linear head ``out = (q_i . 1) * mean_j v_j``: the product of a token's own scalar(s)
    with a quantity replicated in every context token (key = ``one``)."""
    ev = np.shape(next(iter(v.values())))[1]
    return dict(W_Q=lay.read(q, e), W_K=lay.read({"one": np.ones((1, e))}, e), W_V=lay.read(v, ev),
                W_O=lay.write(o, ev))


def _zero_mlp(lay, slots) -> MLPSpec:
    """MLP that sets the given slots to exactly 0: ``z - relu(z) + relu(-z) = 0``."""
    size = sum(lay[s].size for s in slots)
    W_in = np.zeros((lay.width, 2 * size))
    W_out = np.zeros((2 * size, lay.width))
    col = 0
    for s in slots:
        for j in range(lay[s].start, lay[s].stop):
            W_in[j, col], W_in[j, col + 1] = 1.0, -1.0
            W_out[col, j], W_out[col + 1, j] = -1.0, 1.0
            col += 2
    return MLPSpec("relu", W_in, np.zeros(2 * size), W_out, np.zeros(lay.width))


def _bias_mlp(lay, values: dict) -> MLPSpec:
    """MLP that adds constants to slots (its output bias)."""
    b = np.zeros(lay.width)
    for s, v in values.items():
        b[lay[s].index] += v
    return MLPSpec("relu", np.zeros((lay.width, 1)), np.zeros(1), np.zeros((1, lay.width)), b)


def _relu_block(heads, mlp=None) -> BlockSpec:
    return BlockSpec(AttentionSpec.from_heads("relu", heads), mlp)


def _linear_block(heads, mlp=None) -> BlockSpec:
    return BlockSpec(AttentionSpec.from_heads("linear", heads), mlp)


def ridge_sherman_morrison(d: int, lam: float, n: int, x_bound: float = 1.0, mask_const: float = 1e15) -> Construction:
    """Ridge on every prefix: one Sherman-Morrison (RLS) update per example.

    **Theorem** (Akyurek et al. 2022, Thm 2 and App. B, claims.md sec. 2.4; the RLS form of
    the Sherman-Morrison update).  With ``mu = n lam``, after step t (examples 0..t)
    every token holds ``P = (mu I + X_{<=t}^T X_{<=t})^{-1}`` and
    ``w = P X_{<=t}^T y_{<=t}``, the ridge solution on the first t + 1 examples with the
    regulariser scaled so that the last step equals the toolkit's ridge
    ``(X^T X/n + lam I)^{-1} X^T y/n``; ``trace()[t] = Xq @ w``.

    **What it needs.**  Each step is ``2J + 4`` blocks (module docstring): 1 ReLU block
    selecting example t (2d + 2 heads: ``u = P x_t``, ``e = y_t - x_t.w``), 1 ReLU block
    for ``c = 1 + x_t.u`` (2 heads), ``2J`` linear blocks of Newton iterations for
    ``r = 1/c`` (products of replicated scalars), 1 linear block ``v = r u``, 1 linear block
    ``P <- P - u v^T`` (d heads), ``w <- w + e v`` with an MLP that clears the scratch.
    No division and no multiplication by an MLP: products come from attention (linear
    score times value), selection from ReLU gating.  Width ``d^2 + 4d + n + 6``
    (O(d^2), as Akyurek's Thm 2 states); ``J = reciprocal_iters(1 + x_bound^2/mu)``.

    **Exactness.**  Exact to float64 round-off on the domain: every operation is exact
    algebra except ``1/c``, whose Newton iteration is run until its error
    ``(1 - c/C)^(2^J)`` is below ``2^-53``.  Akyurek's own chain is approximate
    (softmax/GeLU/LayerNorm primitives).

    **Resources.**  ``n (2J + 4) + 1`` layers (the last is the readout ``<w, x_q>``).

    **Domain.**  Prompts with exactly n examples; ``|x_i| <= x_bound`` for every context
    input (the reciprocal's start uses it); ``mask_const`` above every gated score
    (``sm_mask_bound``).
    """
    d, n = _positive_int(d, "d"), _positive_int(n, "n")
    lam, x_bound, B = _real(lam, "lam"), _real(x_bound, "x_bound"), _real(mask_const, "mask_const")
    mu = n * lam
    C = 1.0 + x_bound**2 / mu
    J = reciprocal_iters(C)
    scratch = [("u", d, "zero"), ("v", d, "zero"), ("c", 1, "zero"), ("e", 1, "zero"), ("r", 1, "zero"),
               ("s", 1, "zero")]
    lay = ResidualLayout.of(
        [("x", d, "x"), ("y", 1, "y"), ("posgate", n, "posgate"), ("P", d * d, "zero"), ("w", d, "zero"),
         *scratch, ("one", 1, "one")],
        Readout("y", 1.0),
    )
    Pidx = lambda a: np.eye(d * d)[a * d : (a + 1) * d]  # noqa: E731  rows of P's slot holding row a
    blocks = []
    for t in range(n):
        gate = dict(mask_const=B, gate=("posgate", t))  # admits example t only
        # u = P x_t = sum_k x_t[k] P[:, k]: score x_t[k] (key, gated to token t), value column k of P
        sel = []
        for k in range(d):
            col = np.zeros((d * d, d))
            col[np.arange(d) * d + k, np.arange(d)] = 1.0  # P[a, k] -> head dim a
            sel += sign_split(lay, {"one": [[1.0]]}, {"x": _unit(d, k).T}, {"P": col}, {"u": n * np.eye(d)}, 1, **gate)
        # e = y_t - x_t.w: score (w_i.x_j - y_j), value one, output -n
        sel += sign_split(lay, {"w": np.eye(d, d + 1), "one": -np.eye(d + 1)[d:]}, {"x": np.eye(d, d + 1),
                          "y": np.eye(d + 1)[d:]}, {"one": [[1.0]]}, {"e": [[-float(n)]]}, d + 1, **gate)
        blocks.append(_relu_block(sel, _bias_mlp(lay, {"c": 1.0, "r": 1.0 / C})))
        # c += x_t.u: score u_i.x_j gated to t, value one, output n
        cu = sign_split(lay, {"u": np.eye(d)}, {"x": np.eye(d)}, {"one": [[1.0]]}, {"c": [[float(n)]]}, d, **gate)
        blocks.append(_relu_block(cu))
        for _ in range(J):  # r <- r + r (1 - c r): s = c r, then r += (1 - s) r and s <- 0
            blocks.append(_linear_block([_prod(lay, {"c": [[1.0]]}, {"r": [[1.0]]}, {"s": [[1.0]]})]))
            blocks.append(_linear_block([
                _prod(lay, {"one": [[1.0]], "s": [[-1.0]]}, {"r": [[1.0]]}, {"r": [[1.0]]}),
                _prod(lay, {"s": [[-1.0]]}, {"one": [[1.0]]}, {"s": [[1.0]]}),
            ]))
        # v = r u
        blocks.append(_linear_block([_prod(lay, {"r": [[1.0]]}, {"u": np.eye(d)}, {"v": np.eye(d)})]))
        # P <- P - u v^T (row a: u[a] v), w <- w + e v; the MLP clears the scratch
        upd = [_prod(lay, {"u": _unit(d, a).T}, {"v": np.eye(d)}, {"P": -Pidx(a)}) for a in range(d)]
        upd.append(_prod(lay, {"e": [[1.0]]}, {"v": np.eye(d)}, {"w": np.eye(d)}))
        blocks.append(_linear_block(upd, _zero_mlp(lay, ["u", "v", "c", "e", "r", "s"])))
    # readout: score x_i . w_j (w replicated), value one: y_i += <w, x_i>
    readout = dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"w": np.eye(d)}, d),
                   W_V=lay.read({"one": np.eye(1, d)}, d), W_O=lay.write({"y": np.eye(d, 1)}, d))
    blocks.append(_linear_block([readout]))

    def domain(X, y, Xq):
        xmax = float(X.norm(dim=-1).max())
        if xmax > x_bound * (1 + 1e-6):  # slack: float32 rounding moves a norm by <= 6e-8 relative
            raise ConstructionError(f"a context input has norm {xmax:.6g} > x_bound={x_bound:.6g}: the reciprocal "
                                    f"iteration's start 1/C assumes it; rebuild with x_bound >= {xmax:.6g}")
        need = float(sm_mask_bound(X, y, lam, x_bound).max())
        if B < need:
            raise ConstructionError(f"mask_const={B:.6g} is below the gated-score bound {need:.6g}; "
                                    f"rebuild with mask_const >= {need:.6g}")

    def split(n_prompt: int) -> int:
        if n_prompt != n:
            raise ConstructionError(f"ridge_sherman_morrison was built for n={n} examples (one step each), "
                                    f"got {n_prompt}; rebuild with n={n_prompt}")
        return n_prompt

    return Construction(
        "ridge_sherman_morrison", dict(d=d, lam=lam, n=n, x_bound=x_bound, mask_const=B), blocks, lay, d,
        n_readout=1, step_blocks=2 * J + 4, split=split, domain=domain,
        constants={"P": (np.eye(d) / mu).ravel()},
    )


def sm_mask_bound(X, y, lam: float, x_bound: float):
    """Per prompt, a bound on every score the gated heads must reject: ``|x_j[k]| <= x_bound``
    (the heads forming ``u = P x_t``), ``|u.x_j| <= x_bound^2/mu`` (``c``),
    ``|w.x_j - y_j| <= |w| x_bound + max|y|`` (``e``) with ``|w_t| <= |X|_F |y| / mu`` (any
    prefix's ridge solution), ``mu = n lam``; times 2."""
    n = X.shape[1]
    mu = n * lam
    w_bound = (X.norm(dim=-1) ** 2).sum(-1).sqrt() * y.norm(dim=-1) / mu
    return 2 * (x_bound + x_bound**2 / mu + w_bound * x_bound + y.abs().amax(-1) + 1.0)
