"""Ridge on every prefix by Sherman-Morrison (recursive least squares), one example per step.

Notation: B batch, n context examples, m queries, d input dim, D residual
width.  With ``mu = n lam`` and ``A_t = mu I + sum_{i<=t} x_i x_i^T`` the step for
example t is the RLS update (Akyurek et al. 2022, Thm 2 / App. B)::

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
from fractions import Fraction

import numpy as np
import torch

from verify import baselines
from verify.bounds import ridge_quantities
from verify.claims import Claim, Outcome, Part, Proof, lemma
from verify.reference import RecursiveLeastSquares
from verify.tolerance import Comparison, solve_tolerance, tolerance

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, register


#: the largest reciprocal start ``C = 1 + x_bound^2/(n lam)`` the construction accepts.  ``|P_t| <=
#: 1/(n lam) = (C - 1)/x_bound^2``, and RLS in float64 loses about C eps against the closed form
#: (``python benchmarks/sm_conditioning.py``, table in docs/tolerance.md: the numpy recursion 1-2 eps
#: at C <= 100, ~10 at 1e3, ~100 at 1e4, 1e10 at 1e12; this construction 2-5 eps at C <= 100, ~30 at
#: 1e3).  Within C <= 1e3 the claim's tolerance scale, which holds ``|P_t| max|x|^2 <= C - 1``, is
#: at most 1e3 times the prompt's own size, and the result is ridge to round-off.
SM_C_MAX = 1e3


def reciprocal_start(lam: float, n: int, x_bound: float) -> float:
    """``C = 1 + x_bound^2/(n lam) >= c = 1 + x.P x`` for every step: the reciprocal's start is 1/C."""
    return 1.0 + x_bound * x_bound / (n * lam)


def reciprocal_iters(C: float, eps: float = 2.0**-53) -> int:
    """Newton iterations for ``1/c``, ``c in [1, C]``, from ``r_0 = 1/C``: smallest J with
    ``(1 - 1/C)^(2^J) <= eps``."""
    return parts.squaring_iters(1.0 - 1.0 / C, eps)


def _unit(size: int, i: int) -> np.ndarray:
    return np.eye(size)[i : i + 1]  # [1, size]


def ridge_sherman_morrison(d: int, lam: float, n: int, x_bound: float = 1.0, mask_const: float = 1e15) -> Construction:
    """Ridge on every prefix: one Sherman-Morrison (RLS) update per example.

    **Theorem** (Akyurek et al. 2022, Thm 2 and App. B; the RLS form of
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

    **Exactness.**  Exact to round-off on the domain (``C eps`` at most, C as below): every operation is exact
    algebra except ``1/c``, whose Newton iteration is run until its error
    ``(1 - c/C)^(2^J)`` is below ``2^-53``.  Akyurek's own chain is approximate
    (softmax/GeLU/LayerNorm primitives).

    **Resources.**  ``n (2J + 4) + 1`` layers (the last is the readout ``<w, x_q>``).

    **Domain.**  Prompts with exactly n examples; ``|x_i| <= x_bound`` for every context
    input (the reciprocal's start uses it); ``mask_const`` above every gated score
    (``sm_mask_bound``); ``C = 1 + x_bound^2/(n lam) <= SM_C_MAX = 1e3`` (smaller lam is refused:
    the recursion's round-off grows like C eps, :data:`SM_C_MAX`).
    """
    d, n = parts.positive_int(d, "d"), parts.positive_int(n, "n")
    lam, x_bound, B = parts.real(lam, "lam"), parts.real(x_bound, "x_bound"), parts.real(mask_const, "mask_const")
    mu = n * lam
    C = reciprocal_start(lam, n, x_bound)
    if not C <= SM_C_MAX:
        raise ConstructionError(
            f"lam = {lam:.3g} is too small for x_bound = {x_bound:.3g} at n = {n}: the conditioning C = 1 + "
            f"x_bound^2/(n lam) = {C:.3g} exceeds {SM_C_MAX:.0e}, where RLS in floating point loses about C eps; "
            f"use lam >= {x_bound * x_bound / (n * (SM_C_MAX - 1)):.3g} (or ridge_newton)")
    J = reciprocal_iters(C)
    parts.budget("ridge_sherman_morrison", layers=n * (2 * J + 4) + 1, width=d * d + n + 3 * d + 6, heads=2 * d + 2,
                 d_head=d + 1, mlp=4 * d + 12)
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
            sel += parts.sign_split(lay, {"one": [[1.0]]}, {"x": _unit(d, k).T}, {"P": col}, {"u": n * np.eye(d)}, 1, **gate)
        # e = y_t - x_t.w: score (w_i.x_j - y_j), value one, output -n
        sel += parts.sign_split(lay, {"w": np.eye(d, d + 1), "one": -np.eye(d + 1)[d:]}, {"x": np.eye(d, d + 1),
                          "y": np.eye(d + 1)[d:]}, {"one": [[1.0]]}, {"e": [[-float(n)]]}, d + 1, **gate)
        blocks.append(parts.block("relu", sel, parts.bias_mlp(lay, {"c": 1.0, "r": 1.0 / C})))
        # c += x_t.u: score u_i.x_j gated to t, value one, output n
        cu = parts.sign_split(lay, {"u": np.eye(d)}, {"x": np.eye(d)}, {"one": [[1.0]]}, {"c": [[float(n)]]}, d, **gate)
        blocks.append(parts.block("relu", cu))
        for _ in range(J):  # r <- r + r (1 - c r): s = c r, then r += (1 - s) r and s <- 0
            blocks.append(parts.block("linear", [parts.product_head(lay, {"c": [[1.0]]}, {"r": [[1.0]]}, {"s": [[1.0]]})]))
            blocks.append(parts.block("linear", [
                parts.product_head(lay, {"one": [[1.0]], "s": [[-1.0]]}, {"r": [[1.0]]}, {"r": [[1.0]]}),
                parts.product_head(lay, {"s": [[-1.0]]}, {"one": [[1.0]]}, {"s": [[1.0]]}),
            ]))
        # v = r u
        blocks.append(parts.block("linear", [parts.product_head(lay, {"r": [[1.0]]}, {"u": np.eye(d)}, {"v": np.eye(d)})]))
        # P <- P - u v^T (row a: u[a] v), w <- w + e v; the MLP clears the scratch
        upd = [parts.product_head(lay, {"u": _unit(d, a).T}, {"v": np.eye(d)}, {"P": -Pidx(a)}) for a in range(d)]
        upd.append(parts.product_head(lay, {"e": [[1.0]]}, {"v": np.eye(d)}, {"w": np.eye(d)}))
        blocks.append(parts.block("linear", upd, parts.zero_mlp(lay, ["u", "v", "c", "e", "r", "s"])))
    # readout: score x_i . w_j (w replicated), value one: y_i += <w, x_i>
    readout = dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"w": np.eye(d)}, d),
                   W_V=lay.read({"one": np.eye(1, d)}, d), W_O=lay.write({"y": np.eye(d, 1)}, d))
    blocks.append(parts.block("linear", [readout]))

    domain = parts.all_checks(
        parts.norm_check(x_bound, "the reciprocal iteration's start 1/C assumes it"),
        parts.mask_check(B, lambda X, y, Xq: sm_mask_bound(X, y, lam, x_bound), "the gated scores of every step"))
    split = parts.fixed_examples(n, "ridge_sherman_morrison", "one step per example: rebuild with n set to the "
                                 "prompt's number of examples")

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
    return 2 * (x_bound + x_bound * x_bound / mu + w_bound * x_bound + y.abs().amax(-1) + 1.0)


# -- claims -------------------------------------------------------------------------------------------
def sm_lam(n: int, x_bound: float, log10_C1: float) -> float:
    """The lam at which ``C - 1 = x_bound^2/(n lam) = 10^log10_C1`` (the claim draws C over the domain)."""
    return x_bound * x_bound / (n * 10.0**log10_C1)


def _case(p, k):
    x_bound = float(np.linalg.norm(p.X, axis=-1).max())
    lam = sm_lam(p.spec.n, x_bound, k.log10_C1)
    bound = sm_mask_bound(*(torch.from_numpy(a) for a in p.arrays[:2]), lam, x_bound)
    c = ridge_sherman_morrison(p.spec.d, lam, p.spec.n, x_bound=x_bound, mask_const=10.0**k.log10_mask * float(bound.max()))
    return c, RecursiveLeastSquares(lam)


def _final_is_ridge(p, k, c) -> Comparison:
    """The last step equals the toolkit's closed-form ridge (np.linalg.solve) within the solve's
    round-off plus the trace's tolerance."""
    lam = c.params["lam"]
    w_star, kappa, _ = ridge_quantities(p, lam)
    model = np.asarray(c.predict(*p.arrays), dtype=np.float64)[None]  # [1, B, m]
    target = np.einsum("bmd,bd->bm", p.Xq, w_star)[None]
    qn = np.linalg.norm(p.Xq, axis=-1)[None] * np.linalg.norm(w_star, axis=-1)[None, :, None]
    ref = RecursiveLeastSquares(lam).fit(p.X, p.y)
    tol = tolerance(c.dtype, p.spec.n, p.spec.d, ref.scale(p.Xq), c.step_blocks)[-1:]
    allowed = tol + solve_tolerance(torch.float64, p.spec.d, kappa[None, :, None], qn)
    # only the last step is compared with the closed form: earlier rows are 0 within 1 (ratio 0)
    dev = np.concatenate([np.zeros((p.spec.n - 1,) + target.shape[1:]), np.abs(model - target)])
    allowed = np.concatenate([np.ones((p.spec.n - 1,) + target.shape[1:]), allowed])
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)


# -- proofs ----------------------------------------------------------------------------------------------
PROOF_LAM, PROOF_N = 4.0, 2


def exact_rls(c: Construction | None = None) -> Outcome:
    """ridge_sherman_morrison(d=2, n=2) equals RLS with the same J-step Newton reciprocal, every step,
    in exact rational arithmetic, on prompts whose two rows are not orthogonal (``log10_kappa = 0.5``:
    with ``X^T X = n I`` and ``n = d`` the rows are orthogonal, and the rank-one correction of the
    second step never meets the first example).  Larger n is out of reach exactly: each step's
    Newton reciprocal raises the previous step's Fractions to the power ``2^J``."""
    from verify import exact as ex
    from verify.prompts import PromptSpec

    c = c or ridge_sherman_morrison(2, lam=PROOF_LAM, n=PROOF_N, x_bound=1.0)
    C = reciprocal_start(PROOF_LAM, PROOF_N, 1.0)
    J = (c.step_blocks - 4) // 2  # the Newton steps the construction runs per reciprocal
    if 2.0**J * math.log1p(-1 / C) > -53 * math.log(2):  # (1 - 1/C)^(2^J) > 2^-53
        return Outcome(False, f"the construction's J = {J} Newton steps leave the reciprocal's relative error "
                              f"(1 - 1/C)^(2^J) = {(1 - 1 / C) ** (2**J):.3g} above 2^-53")
    ref = RecursiveLeastSquares(Fraction(PROOF_LAM), reciprocal=(Fraction(1.0 / C), J))
    prompts = [ex.unit_ball(*ex.rational_prompt(PromptSpec(seed=s, B=2, n=PROOF_N, d=2, m=1, log10_kappa=0.5)))
               for s in (0,)]
    crossed = all((np.einsum("bd,bd->b", X[:, 0], X[:, 1]) != 0).all() for X, _, _ in prompts)
    if not crossed:
        return Outcome(False, "the proof's prompts are not generic: two rows of a prompt are orthogonal")
    ok = all(ex.trace_equals(c, ref, *pr) for pr in prompts)
    return Outcome(ok, f"ridge_sherman_morrison(d=2, n=2) = RLS with J={J} Newton reciprocal steps exactly, "
                       "every step, on 2 rational prompts with non-orthogonal rows" if ok else
                   f"ridge_sherman_morrison(d=2, n=2) differs from RLS with J={J} Newton reciprocal steps in exact "
                   "arithmetic")


def _baseline(prep, c):
    return lambda: baselines.ridge(prep.X, prep.y, c.params["lam"])


register(
    ridge_sherman_morrison,
    summary="one Sherman–Morrison update per example, as a group of `2J + 4` blocks; ridge on every prefix",
    source="Akyürek et al. 2022, Thm 2", exactness="exact to round-off on its domain",
    paper_resources="Thm 2: O(n) layers, width O(d²)",
    bench=Bench(lambda d, n: dict(lam=0.5, n=n, x_bound=1.0, mask_const=1e12), batch=64, baseline=_baseline),
    claims=[
        Claim("akyurek22-thm2", "Akyurek et al. 2022", "Thm 2, App. B (Sherman-Morrison / RLS)",
              "one step (a fixed group of 2J+4 blocks) per example applies the Sherman-Morrison update: after step t "
              "the prediction is ridge on the first t+1 examples (mu = n lam), the last step the toolkit's ridge",
              "RLS recursion with exact division; np.linalg.solve ridge (numpy)", _case, RecursiveLeastSquares,
              prompt=dict(n=(1, 16), d=(1, 8)), bounds=_final_is_ridge,
              # C - 1 from 0.1 to SM_C_MAX - 1: the whole domain in lam (larger lam only shrinks C)
              knobs=dict(log10_C1=(-1.0, float(np.log10(SM_C_MAX - 1)))),
              proof=Proof("exact-rational", (lemma("lemma Sherman-Morrison", "lemma_sherman_morrison"),
                                             lemma("lemma Newton reciprocal", "lemma_newton_reciprocal"),
                                             Part("exact ridge_sherman_morrison", exact_rls)))),
    ],
)
