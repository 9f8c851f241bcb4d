"""Closed-form ridge regression in context: Newton-Schulz in O(log kappa) layers.

Notation: B batch, n context examples, m queries, d input dim, D residual
width, L layers.  Ridge (toolkit convention): ``A = X^T X/n + lam I``,
``b = X^T y/n``, ``w* = A^{-1} b``.

Newton-Schulz for ``A^{-1}``: ``M_{k+1} = 2 M_k - M_k A M_k`` from ``M_0 = alpha I``
with ``alpha = 1/(x_bound^2 + lam)``.  Since ``lambda_max(X^T X/n) <= max_i |x_i|^2
<= x_bound^2``, the error ``E_k = I - M_k A = E_0^(2^k)`` has eigenvalues in
``[0, q^(2^k)]``, ``q = 1 - lam/(x_bound^2 + lam)`` (strictly inside the
convergence region, docs/pitfalls.md #8).

Token layout (Fu et al.'s ``[T x; x]`` tokens, App. B.2, with the scaled
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
from fractions import Fraction

import numpy as np
import torch

from verify.bounds import ridge_rate
from verify.claims import MASK, Claim, Outcome, Part, Proof, induction, lemma
from verify.knobs import ridge_lam
from verify.reference import NewtonSchulz

from . import parts
from .construction import Construction
from .layout import Readout, ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper


def newton_alpha(lam: float, x_bound: float) -> float:
    """The start ``M_0 = alpha I``, ``alpha = 1/(x_bound^2 + lam)``: inside the convergence region
    for every prompt with ``|x_i| <= x_bound`` (docs/pitfalls.md #8)."""
    return 1.0 / (x_bound * x_bound + lam)


def newton_rate(lam: float, x_bound: float) -> float:
    """``q = x_bound^2 / (x_bound^2 + lam)``: ``|I - M_k A| <= q^(2^k)``."""
    return x_bound * x_bound / (x_bound * x_bound + lam)


def newton_iters(lam: float, x_bound: float, eps: float = 2.0**-53) -> int:
    """Smallest k with ``q^(2^k) <= eps`` (:func:`newton_rate`): the count at which the
    Newton-Schulz error contracts to float64 round-off for every prompt within the norm bound."""
    return parts.squaring_iters(newton_rate(lam, x_bound), eps)


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
    (``relu(z) v + relu(-z) v = |z| v``, docs/pitfalls.md #17); only for the regression test.
    """
    d = lay["x"].size
    I = np.eye(d)
    # score u_t.x_j = x_j^T Mt x_t, not x_t.u_j = x_t^T Mt x_j: the latter iterates
    # S <- 2S - alpha S A S^T on the stored Mt, which doubles any antisymmetric round-off
    newton = parts.sign_split(lay, {"u": I}, {"x": I}, {"u": I}, {"u": -alpha * I}, d, 0.0, gate="rgate")  # B = 0: ungated
    if fu_printed_values:
        newton[1]["W_O"] = -newton[1]["W_O"]
    fresh = parts.sign_split(lay, {"x": I}, {"x": I}, {"u": I}, {"u": 2.0 / lam * I}, d, mask_const, gate="rgate")
    remove = parts.sign_split(lay, {"u": I}, {"x": I}, {"x": I}, {"u": -1.0 / lam * I}, d, mask_const, gate="rgate")
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
    kappa_b = (x_bound * x_bound + lam) / lam
    return 2 * kappa_b * max(x_bound * x_bound, math.sqrt(n * lam) * x_bound)


def ridge_newton(d: int, lam: float, iters: int | None = None, x_bound: float = 1.0, mask_const: float = 1e15,
                 _fu_printed_values: bool = False) -> Construction:
    """Ridge regression by Newton-Schulz: one layer per iteration, O(log kappa) layers.

    **Theorem** (Fu et al. 2023, Thm 5.1 and App. B.2, with the sign fix of docs/pitfalls.md #17
    and a start strictly inside the convergence region, #8).  After
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
    ``mask_const >= 2 kappa_b max(x_bound^2, sqrt(n lam) x_bound)`` (every gated score);
    ``max |x_i|`` with its cube inside the run dtype's normal range with 1/eps to spare
    (:func:`constructions.parts.magnitude_check`: float64 about [4.6e-98, 3.4e97], float32 [4.6e-11,
    3.4e10]); outside it the Newton products underflow (measured: 78% error at |x| ~ 1e-16 in
    float32) or overflow to NaN, and the prompt is refused.
    """
    d = parts.positive_int(d, "d")
    lam, x_bound = parts.real(lam, "lam"), parts.real(x_bound, "x_bound")
    mask_const = parts.real(mask_const, "mask_const")
    iters = newton_iters(lam, x_bound) if iters is None else parts.positive_int(iters, "iters")
    parts.budget("ridge_newton", layers=iters + 1, width=2 * d + 3, heads=6, d_head=d + 1)
    alpha = newton_alpha(lam, x_bound)
    lay = ResidualLayout.of([("x", d, "x"), ("u", d, "x"), ("y", 1, "y"), ("one", 1, "one"),
                             ("rgate", 1, "minus_one")], Readout("y", 1.0))
    step = parts.block("relu", newton_heads(lay, alpha, lam, mask_const, _fu_printed_values))
    readout = dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"u": np.eye(d)}, d),
                   W_V=lay.read({"y": np.eye(1, d)}, d), W_O=lay.write({"y": alpha * np.eye(d, 1)}, d))
    blocks = [step] * iters + [parts.block("linear", [readout])]
    domain = parts.all_checks(
        parts.norm_check(x_bound, "the start value alpha = 1/(x_bound^2 + lam) may leave the convergence region"),
        parts.magnitude_check(3, "the Newton term's products (score x^T Mt x times value Mt x)"),
        parts.mask_check(mask_const, lambda X, y, Xq: torch.full((X.shape[0],), newton_mask_bound(X.shape[1], lam, x_bound), dtype=torch.float64),
                         "2 kappa_b max(x_bound^2, sqrt(n lam) x_bound)"))

    params = dict(d=d, lam=lam, iters=iters, x_bound=x_bound, mask_const=mask_const)
    if _fu_printed_values:
        params["_fu_printed_values"] = True
    return Construction("ridge_newton", params, blocks, lay, d, n_readout=1,
                        extra_tokens=_ridge_tokens(lay, lam), domain=domain)


# -- claims ----------------------------------------------------------------------------------------------
def _newton_case(p, k):
    lam = ridge_lam(p.X, k.log10_lam)
    x_bound = float(np.linalg.norm(p.X, axis=-1).max())
    mask = 10.0**k.log10_mask * newton_mask_bound(p.spec.n, lam, x_bound)
    c = ridge_newton(p.spec.d, lam, x_bound=x_bound, mask_const=mask)
    return c, NewtonSchulz(c.params["iters"], lam, newton_alpha(lam, x_bound))


def _newton_rate(p, k, c):
    """``|w_k - w*| <= q^(2^k) |w*|``, ``q = x_bound^2/(x_bound^2 + lam)``; and the last layer is
    ridge to round-off, ``2^-53 |w*|`` (the contract of :func:`newton_iters`, independent of the
    count the construction was built with)."""
    lam, x_bound, iters = c.params["lam"], c.params["x_bound"], c.params["iters"]
    q = newton_rate(lam, x_bound)
    factor = q ** (2.0 ** np.arange(1, iters + 1))
    factor[-1] = 2.0**-53
    factor = np.broadcast_to(factor[:, None], (iters, p.spec.B))
    return ridge_rate(p, c, NewtonSchulz(iters, lam, newton_alpha(lam, x_bound)), lam, factor)


def _printed_case(p, k):
    c, ref = _newton_case(p, k)
    P = c.params
    return ridge_newton(p.spec.d, P["lam"], x_bound=P["x_bound"], mask_const=P["mask_const"],
                        _fu_printed_values=True), ref


# -- proofs ------------------------------------------------------------------------------------------------
PROOF_LAM, PROOF_XB = 1 / 4, 1.0  # n lam = 1 at n = 4: the ridge tokens sqrt(n lam) e_k are exact there


def newton_induction():
    """Fu et al.: the scaled iterate Mt = M_k/alpha held by every token's ``u = Mt x`` and by the
    ridge tokens ``u = sqrt(n lam) Mt e_k``, for symbolic d and n."""
    import sympy as sp

    from verify import symbolic as S

    lam = S.exact(PROOF_LAM)
    alpha = S.exact(newton_alpha(PROOF_LAM, PROOF_XB))  # the construction's M_0 = alpha I, as stored
    s = sp.sqrt(S.n * lam)
    I = sp.Identity(S.d)
    Mt = sp.MatrixSymbol("M", S.d, S.d)  # the scaled iterate M_k / alpha
    A = S.X * S.X.T / S.n + lam * I

    def state(v):
        M = v["M"]
        ridge = S.Group("ridge", S.d, "extra", dict(x=s * I, u=s * M, y=sp.ZeroMatrix(1, S.d), one=sp.OneMatrix(1, S.d),
                                                    rgate=sp.ZeroMatrix(1, S.d)))
        return [S.context(x=S.X, u=M * S.X, y=S.Y), ridge, S.query(x=S.XQ, u=M * S.XQ, y=S.Z11)]

    def step(v, layer):
        return dict(M=2 * v["M"] - alpha * v["M"] * A * v["M"])

    return S.Induction(lambda dd: ridge_newton(dd, PROOF_LAM, iters=2, x_bound=PROOF_XB, mask_const=MASK),
                       dict(M=Mt), state, step, dict(M=I), lambda v: alpha * S.XQ.T * v["M"] * S.X * S.Y.T / S.n)


def newton_count() -> Outcome:
    """The factory's default iteration count is the smallest k with ``q^(2^k) <= 2^-53``, at the
    proof's lam and x_bound and at a spread of others (in logs: ``2^k log q <= -53 log 2``)."""
    worst = []
    for lam, xb in ((PROOF_LAM, PROOF_XB), (1e-3, 1.0), (0.5, 2.0), (1e-6, 3.0)):
        k = ridge_newton(2, lam, x_bound=xb, mask_const=MASK).params["iters"]
        log_q = math.log1p(-lam / (xb**2 + lam))  # log q, q = x_bound^2/(x_bound^2 + lam)
        reaches = lambda j: 2.0**j * log_q <= -53 * math.log(2)  # noqa: E731
        if not (reaches(k) and (k == 1 or not reaches(k - 1))):
            worst.append((lam, xb, k))
    return Outcome(not worst, "iters = the smallest k with q^(2^k) <= 2^-53 at 4 (lam, x_bound)" if not worst
                   else f"iters is not the smallest count reaching 2^-53 at (lam, x_bound, iters) = {worst}")


def printed_values_counterexample() -> Outcome:
    """Negative control: with Fu et al.'s printed V_1 = V_2 the first layer misses the Newton-Schulz
    iterate exactly (a rational counterexample), where the fixed layer is exact."""
    from verify import exact as ex
    from verify.prompts import PromptSpec

    alpha = Fraction(newton_alpha(PROOF_LAM, PROOF_XB))
    X_, y_, Xq_ = ex.unit_ball(*ex.rational_prompt(PromptSpec(seed=0, B=1, n=4, d=2, m=1)))
    want = NewtonSchulz(1, Fraction(PROOF_LAM), alpha).fit(ex.to_exact(X_), ex.to_exact(y_)).trace(ex.to_exact(Xq_))
    got = ex.trace(ridge_newton(2, PROOF_LAM, iters=1, x_bound=PROOF_XB, mask_const=MASK, _fu_printed_values=True),
                   X_, y_, Xq_)
    fixed = ridge_newton(2, PROOF_LAM, iters=1, x_bound=PROOF_XB, mask_const=MASK)
    ok_fixed = bool((ex.trace(fixed, X_, y_, Xq_) == want).all())
    miss = bool((got != want).any())
    return Outcome(ok_fixed and miss, f"layer 1 misses Newton by {float((got - want).flat[0]):.3g} exactly "
                                      f"(the fixed layer: equal exactly: {ok_fixed})")


def _baseline(prep, c):
    from verify import baselines

    return lambda: baselines.ridge(prep.X, prep.y, c.params["lam"])


register(
    ridge_newton, summary="one Newton–Schulz iteration `M ← 2M − MAM` toward `A⁻¹`; reaches ridge in O(log κ) layers",
    source="Fu et al. 2023, Thm 5.1 (sign-fixed, stabilised)", exactness="exact per layer; error `q^(2^k)`",
    paper_resources='Thm 5.1: k + 8 layers for k Newton iterations, 2 heads, O(d) width, an MLP per layer',
    bench=Bench(lambda d, n: dict(lam=0.5, iters=10, x_bound=1.0, mask_const=1e12), baseline=_baseline),
    claims=[
        Claim("fu23-newton", "Fu et al. 2023", "Thm 5.1, App. B.2 (with the V_2 = -V_1 fix)",
              "one attention+MLP layer per Newton-Schulz iteration M <- 2M - MAM for A = X^T X/n + lam I (d ridge "
              "tokens make the keys' moment A); prediction -> ridge with |w_k - w*| <= q^(2^k)|w*|, the last layer "
              "ridge to round-off",
              "Newton-Schulz iterates M_k X^T y/n; np.linalg.solve ridge (numpy)", _newton_case, NewtonSchulz,
              bounds=_newton_rate,
              proof=Proof("general", (lemma("lemma Newton-Schulz error squaring", "lemma_newton_schulz"),
                                      lemma("lemma sign split", "lemma_sign_split"),
                                      induction("induction ridge_newton", newton_induction),
                                      Part("iteration count reaches round-off", newton_count)),
                          note="the layer identity; the convergence rate follows from the error-squaring lemma")),
        Claim("fu23-printed-values", "Fu et al. 2023", "App. B (V_1 = V_2 as printed); docs/pitfalls.md #17",
              "negative control: the printed value matrices compute relu(z)v + relu(-z)v = |z|v and miss the "
              "Newton iterate (from the first layer with a negative score; d >= 2 here)",
              "Newton-Schulz iterates (numpy)", _printed_case, NewtonSchulz, variant="printed values",
              kind="negative", negative_from=1, prompt=dict(d=(2, 12)),
              proof=Proof("exact-rational", (Part("counterexample", printed_values_counterexample),))),
    ],
)

register_paper(Paper(
    "Fu et al. 2023", "Transformers learn higher-order optimization methods for in-context learning: a study with "
                      "linear models (arXiv 2310.17086)", (
        Result("Thm 5.1, App. B.2", "one layer per Newton-Schulz iteration; ridge in O(log kappa) layers",
               ("fu23-newton", "fu23-printed-values")),
    )))
