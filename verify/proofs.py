"""The proof registry: for each registered claim, how it is proved and the proof itself.

Kinds (``icl-verify prove`` prints them, ``docs/claims.md`` lists them):

* ``general`` -- a sympy proof for symbolic d and n (:mod:`verify.symbolic`):
  base case, one step layer = one algorithm step from an arbitrary state, and
  the readout; with scalar lemmas where the construction uses ReLU pairs.  It
  proves the claim for every d, n and number of layers.
* ``exact-rational`` -- the construction's forward pass in exact rational
  arithmetic equals the algorithm exactly (zero tolerance) at concrete sizes on
  random rational prompts (:mod:`verify.exact`), plus any general lemmas; for
  constructions outside the symbolic fragment (MLPs, position gates, reciprocal
  iterations).
* ``none`` -- approximate constructions: their error *rate* is checked
  numerically (``icl-verify check``), there is no identity to prove.

Every proof builds the construction through the public factory (the same code
that builds the torch weights) with exactly representable parameters, so the
weights it reads are the weights a user gets.
"""
from __future__ import annotations

import time
from dataclasses import dataclass, field
from fractions import Fraction

import numpy as np
import sympy as sp

import constructions
from constructions.sherman_morrison import reciprocal_iters

from . import exact as ex
from .prompts import PromptSpec
from .reference import ISTA, NewtonSchulz, RecursiveLeastSquares, RidgeSelect
from .symbolic import (
    XQ, Group, Induction, NotLiftable, Outcome, X, Y, _advance, _groups, _sizes, complete, d, exact, is_zero,
    lemma_newton_reciprocal, lemma_newton_schulz, lemma_sherman_morrison, lemma_sign_split, lemma_soft_threshold,
    lemma_softmax_gradients, lemma_softmax_jacobian_norm,
    lift_layer, n, prove_induction,
)

# exactly representable parameters (their products too), so the float weights are these rationals
LR, LAM, GAMMA, MASK = 3 / 16, 1 / 8, 5 / 32, 2.0**20
W = sp.MatrixSymbol("W", 1, d)  # the iterate as a row (von Oswald's layout)
WC = sp.MatrixSymbol("w", d, 1)  # the iterate as a column (Bai's replicated slot)
I = sp.Identity(d)
Z11 = sp.ZeroMatrix(1, 1)


def _ctx(**slots) -> Group:
    return Group("context", n, "train", slots)


def _qry(**slots) -> Group:
    return Group("query", 1, "query", slots)


# -- von Oswald / Ahn: linear self-attention ------------------------------------------------
def gd_induction(lam: float = 0.0, mask: bool = True, lr: float = LR) -> Induction:
    """von Oswald Prop. 1 (ridge GD with ``lam > 0``): state ``y_i - W x_i`` / ``-W x_q``."""
    lr_, lm = exact(lr), exact(lam)

    def build(dd):
        c = constructions.gd(dd, 2, lr=lr, lam=lam)
        if not mask:
            c = constructions.Construction(c.name, c.params, c.blocks, c.layout, c.d, mask_query=False)
        return c

    def state(v):
        w = v["W"]
        extra = dict(y0=Y) if lam else {}
        return [_ctx(x=X, y=Y - w * X, **extra), _qry(x=XQ, y=-w * XQ, **(dict(y0=Z11) if lam else {}))]

    def step(v, layer):
        return dict(W=v["W"] - lr_ * ((v["W"] * X - Y) * X.T / n + lm * v["W"]))

    return Induction(build, dict(W=W), state, step, dict(W=sp.ZeroMatrix(1, d)), lambda v: v["W"] * XQ)


def gdpp_induction(lr: float = LR, gamma: float = GAMMA) -> Induction:
    """GD++: state (T, R, W) = (input map, residuals, effective weights)."""
    lr_, gamma_ = exact(lr), exact(gamma)
    T, R = sp.MatrixSymbol("T", d, d), sp.MatrixSymbol("R", 1, n)

    def state(v):
        return [_ctx(x=v["T"] * X, y=v["R"]), _qry(x=v["T"] * XQ, y=-v["W"] * XQ)]

    def step(v, layer):
        Xt = v["T"] * X
        S = Xt * Xt.T / n
        g = Xt * v["R"].T / n  # [d, 1]
        return dict(T=(I - gamma_ * S) * v["T"], R=v["R"] - lr_ * g.T * Xt, W=v["W"] + lr_ * g.T * v["T"])

    return Induction(lambda dd: constructions.gd_plus_plus(dd, 2, lr=lr, gamma=gamma), dict(T=T, R=R, W=W), state,
                     step, dict(T=I, R=Y, W=sp.ZeroMatrix(1, d)), lambda v: v["W"] * XQ)


PS = [sp.MatrixSymbol("P_0", d, d), sp.MatrixSymbol("P_1", d, d)]


def _preconds(dd: int) -> np.ndarray:
    """Two non-symmetric preconditioners with dyadic entries."""
    return np.random.default_rng(dd).integers(-8, 9, size=(2, dd, dd)) / 32.0


def pgd_induction(transpose: bool = False) -> Induction:
    """Ahn et al.: ``w <- w - P_t grad``, P_t symbolic and non-symmetric.  ``transpose=True``
    builds the construction with ``P_t^T`` (the transpose trap; the proof must fail)."""
    def step(v, layer):
        return dict(W=v["W"] - (v["W"] * X - Y) * X.T * PS[layer].T / n)

    def build(dd):
        Ps = _preconds(dd)
        return constructions.preconditioned_gd(dd, 2, Ps.transpose(0, 2, 1) if transpose else Ps)

    return Induction(build, dict(W=W),
                     lambda v: [_ctx(x=X, y=Y - v["W"] * X), _qry(x=XQ, y=-v["W"] * XQ)], step,
                     dict(W=sp.ZeroMatrix(1, d)), lambda v: v["W"] * XQ,
                     named=lambda dd: dict(zip(PS, _preconds(dd))))


def unmasked_control() -> Outcome:
    """Negative control (claims.md sec. 11.2): without the query mask, layer 1 from the
    embedding is still the GD step, but two layers are not two GD steps: the symbolic
    difference is nonzero at a concrete rational point (a counterexample)."""
    spec = gd_induction(mask=False)
    c = spec.build(3)
    sizes = _sizes(c)
    groups = _groups(c, spec.state(spec.start))
    w1 = spec.step(spec.start, 0)
    after1, _ = _advance(c, sizes, lift_layer(spec.build, 0), groups)
    one = is_zero(complete(c.layout, after1[1], sizes)["y"] + w1["W"] * XQ)
    after2, _ = _advance(c, sizes, lift_layer(spec.build, 1), after1)
    diff = complete(c.layout, after2[1], sizes)["y"] + spec.step(w1, 1)["W"] * XQ
    rng = np.random.default_rng(0)
    sizes_at = {d: 2, n: 3}
    point = {s.subs(sizes_at): sp.ImmutableMatrix(rng.integers(-4, 5, size=s.subs(sizes_at).shape).tolist())
             for s in (X, Y, XQ)}
    value = sp.Matrix(diff.subs(sizes_at).xreplace(point).doit().as_explicit())
    miss = value[0, 0].is_Rational and value[0, 0] != 0
    return Outcome(one and miss, f"layer 1 = GD step (proved); after 2 layers the query differs from GD by "
                                 f"{value[0, 0]} at a rational point with d=2, n=3" if one and miss
                   else f"control failed (layer 1 identity: {one}, two-layer miss: {miss})")


# -- Bai et al.: ReLU attention ----------------------------------------------------------------
def relu_gd_induction(lam: float = 0.0, lr: float = LR) -> Induction:
    """Bai et al.: the iterate w replicated in every token's ``w`` slot."""
    lr_, lm = exact(lr), exact(lam)

    def state(v):
        w = v["w"]
        return [_ctx(x=X, y=Y, w=w * sp.OneMatrix(1, n)), _qry(x=XQ, y=Z11, w=w)]

    def step(v, layer):
        return dict(w=v["w"] - lr_ * (X * (X.T * v["w"] - Y.T) / n + lm * v["w"]))

    return Induction(lambda dd: constructions.relu_gd(dd, 2, lr=lr, lam=lam, mask_const=MASK), dict(w=WC), state,
                     step, dict(w=sp.ZeroMatrix(d, 1)), lambda v: v["w"].T * XQ)


# -- Fu et al.: Newton-Schulz --------------------------------------------------------------------
NEWTON_LAM, NEWTON_XB = 1 / 4, 1.0  # n lam = 1 at n = 4: the ridge tokens sqrt(n lam) e_k are exact there


def newton_induction() -> Induction:
    """Fu et al.: the scaled iterate Mt = M_k/alpha held by every token's ``u = Mt x`` and by
    the ridge tokens ``u = sqrt(n lam) Mt e_k``."""
    lam = exact(NEWTON_LAM)
    alpha = exact(1.0 / (NEWTON_XB**2 + NEWTON_LAM))  # the construction's M_0 = alpha I, as stored
    s = sp.sqrt(n * lam)
    Mt = sp.MatrixSymbol("M", d, d)  # the scaled iterate M_k / alpha
    A = X * X.T / n + lam * I

    def state(v):
        M = v["M"]
        ridge = Group("ridge", d, "extra", dict(x=s * I, u=s * M, y=sp.ZeroMatrix(1, d), one=sp.OneMatrix(1, d),
                                                rgate=sp.ZeroMatrix(1, d)))
        return [_ctx(x=X, u=M * X, y=Y), ridge, _qry(x=XQ, u=M * XQ, y=Z11)]

    def step(v, layer):
        return dict(M=2 * v["M"] - alpha * v["M"] * A * v["M"])

    return Induction(lambda dd: constructions.ridge_newton(dd, NEWTON_LAM, iters=2, x_bound=NEWTON_XB,
                                                           mask_const=MASK),
                     dict(M=Mt), state, step, dict(M=I), lambda v: alpha * XQ.T * v["M"] * X * Y.T / n)


# -- exact-rational checks -------------------------------------------------------------------------
def _prompts(seeds=(0, 1, 2), **spec):
    for seed in seeds:
        yield ex.rational_prompt(PromptSpec(seed=seed, **spec))


def _exact_equal(c, ref, X, y, Xq) -> bool:
    return bool((ex.trace(c, X, y, Xq) == ref.fit(ex.to_exact(X), ex.to_exact(y)).trace(ex.to_exact(Xq))).all())


def lasso_exact(c=None) -> Outcome:
    c = c or constructions.lasso_ista(3, 4, lr=LR, lam=LAM, mask_const=MASK)
    p = ex.exact_params(lr=LR, lam=LAM)
    ok = all(_exact_equal(c, ISTA(4, p["lr"], p["lam"]), *pr) for pr in _prompts(B=2, n=6, d=3, m=2))
    return Outcome(ok, "lasso_ista(d=3, 4 steps) = ISTA exactly on 3x2 rational prompts (n=6)")


def selection_exact(c=None) -> Outcome:
    lams, n_tr, n_val = [1 / 16, 1 / 2], 4, 4
    gamma = 1 / 4
    c = c or constructions.ridge_select(2, lams, 2, lr=LR, n_train=n_tr, n_val=n_val, gamma=gamma, mask_const=MASK)
    ref = RidgeSelect([Fraction(v) for v in lams], 2, Fraction(LR), n_tr, Fraction(gamma))
    ok = all(_exact_equal(c, ref, *pr) for pr in _prompts(B=2, n=n_tr + n_val, d=2, m=2))
    return Outcome(ok, "ridge_select(d=2, 2 lams, 2 steps) = GD + validation + selection exactly on 3x2 "
                       "rational prompts (4 train + 4 validation)")


def _unit_ball(X, y, Xq):
    s = 1.01 * np.linalg.norm(X, axis=-1).max()
    return (np.vectorize(lambda v: float(Fraction(v).limit_denominator(16)))(X / s), y, Xq)


def sm_exact(c=None) -> Outcome:
    lam, nn = 4.0, 2
    c = c or constructions.ridge_sherman_morrison(2, lam=lam, n=nn, x_bound=1.0)
    C = 1.0 + 1.0 / (nn * lam)
    ref = RecursiveLeastSquares(Fraction(lam), reciprocal=(Fraction(1.0 / C), reciprocal_iters(C)))
    ok = all(_exact_equal(c, ref, *_unit_ball(*pr)) for pr in _prompts(B=2, n=nn, d=2, m=1))
    return Outcome(ok, f"ridge_sherman_morrison(d=2, n=2) = RLS with J={reciprocal_iters(C)} Newton reciprocal "
                       "steps exactly, every step, on 3x2 rational prompts")


def fu_printed_exact() -> Outcome:
    """Negative control: with Fu et al.'s printed V_1 = V_2 the first layer misses the
    Newton-Schulz iterate exactly (a rational counterexample)."""
    c = constructions.ridge_newton(2, NEWTON_LAM, iters=1, x_bound=NEWTON_XB, mask_const=MASK,
                                   _fu_printed_values=True)
    alpha = Fraction(1.0 / (NEWTON_XB**2 + NEWTON_LAM))
    X_, y_, Xq_ = _unit_ball(*ex.rational_prompt(PromptSpec(seed=0, B=1, n=4, d=2, m=1)))
    got = ex.trace(c, X_, y_, Xq_)
    want = NewtonSchulz(1, Fraction(NEWTON_LAM), alpha).fit(ex.to_exact(X_), ex.to_exact(y_)).trace(ex.to_exact(Xq_))
    fixed = constructions.ridge_newton(2, NEWTON_LAM, iters=1, x_bound=NEWTON_XB, mask_const=MASK)
    ok_fixed = bool((ex.trace(fixed, X_, y_, Xq_) == want).all())
    miss = bool((got != want).any())
    return Outcome(ok_fixed and miss, f"layer 1 misses Newton by {float((got - want).flat[0]):.3g} exactly "
                                      f"(the fixed layer: equal exactly: {ok_fixed})")


def tensor_trick_exact() -> Outcome:
    """``vec(A1 X A2^T) = (A1 (x) A2) vec_row(X) = (A2 (x) A1) vec_col(X)`` in exact rational
    arithmetic on random rational matrices (n = 4, d = 3), and the swapped order fails."""
    rng = np.random.default_rng(0)
    R = lambda *s: np.array([[Fraction(int(v), 7) for v in row] for row in rng.integers(-9, 10, s)], dtype=object)  # noqa: E731
    A1, A2, Xm = R(4, 3), R(4, 3), R(3, 3)
    S = A1 @ Xm @ A2.T
    row = (S.reshape(-1) == np.kron(A1, A2) @ Xm.reshape(-1)).all()
    col = (S.T.reshape(-1) == np.kron(A2, A1) @ Xm.T.reshape(-1)).all()
    swapped = (S.reshape(-1) == np.kron(A2, A1) @ Xm.reshape(-1)).all()
    ok = bool(row and col and not swapped)
    return Outcome(ok, "row-major: A1 (x) A2, column-major: A2 (x) A1, exactly; the swapped order is wrong"
                   if ok else "a Kronecker identity failed")


def binary_exact(c=None) -> Outcome:
    """The binary test in exact arithmetic (eps = 1/8, threshold = 1/2) on binary, nearly binary
    and real-valued labels."""
    from .reference import BinaryTest

    c = c or constructions.binary_test(3, eps=0.125, threshold=0.5)
    ok = True
    for i, (Xc, y, Xq) in enumerate(_prompts(seeds=(0, 1, 2), B=2, n=6, d=3, m=1)):
        y = (y > 0).astype(float) + (np.array([0.0625, 0.0])[:, None] * (np.arange(6) == 0) if i == 1 else 0)
        y = y if i < 2 else np.round(y * 16) / 16
        ref = BinaryTest(Fraction(1, 8), Fraction(1, 2))
        ok &= _exact_equal(c, ref, Xc, y, Xq)
    return Outcome(ok, "binary_test(d=3) = psi-and-threshold exactly on binary, nearly binary and real labels")


# -- registry ----------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Proof:
    kind: str  # "general" | "exact-rational" | "none"
    parts: tuple = field(default_factory=tuple)  # (name, fn -> Outcome)
    note: str = ""


def _ind(spec_fn):
    return lambda: prove_induction(spec_fn())


PROOFS: dict[str, Proof] = {
    "vonoswald23-prop1": Proof("general", (("induction gd", _ind(gd_induction)),)),
    "vonoswald23-prop1-ridge": Proof("general", (("induction gd(lam>0)", _ind(lambda: gd_induction(LAM))),)),
    "vonoswald23-gdpp": Proof("general", (("induction gd_plus_plus", _ind(gdpp_induction)),)),
    "ahn23-pgd": Proof("general", (("induction preconditioned_gd (non-symmetric P_t)", _ind(pgd_induction)),)),
    "bai23-icgd": Proof("general", (("lemma sign split", lemma_sign_split),
                                    ("induction relu_gd", _ind(relu_gd_induction)))),
    "bai23-ridge-relu": Proof("general", (("lemma sign split", lemma_sign_split),
                                          ("induction relu_gd(lam>0)", _ind(lambda: relu_gd_induction(LAM))))),
    "bai23-lasso": Proof("exact-rational", (
        ("lemma soft-threshold MLP", lambda: lemma_soft_threshold(_soft_mlp)),
        ("exact lasso_ista", lasso_exact))),
    "bai23-glm": Proof("none", note="approximate (sum-of-ReLU sigmoid); its error rate is checked numerically"),
    "bai23-selection": Proof("exact-rational", (("exact ridge_select", selection_exact),)),
    "fu23-newton": Proof("general", (("lemma Newton-Schulz error squaring", lemma_newton_schulz),
                                     ("lemma sign split", lemma_sign_split),
                                     ("induction ridge_newton", _ind(newton_induction))),
                         note="the layer identity; the convergence rate follows from the error-squaring lemma"),
    "bai23-ridge": Proof("general", (("induction gd(lam>0)", _ind(lambda: gd_induction(LAM))),),
                         note="the layer identity; the contraction rate is checked numerically"),
    "akyurek22-thm2": Proof("exact-rational", (
        ("lemma Sherman-Morrison", lemma_sherman_morrison),
        ("lemma Newton reciprocal", lemma_newton_reciprocal),
        ("exact ridge_sherman_morrison", sm_exact))),
    "fu23-printed-values": Proof("exact-rational", (("counterexample", fu_printed_exact),)),
    "vonoswald23-mask": Proof("general", (("two-layer counterexample", unmasked_control),)),
    "li23-closeness": Proof("exact-rational", (("gradient formulas (symbolic, n = 3)", lemma_softmax_gradients),
                                               ("softmax Jacobian norm <= 1/2", lemma_softmax_jacobian_norm)),
                            note="the label-shift identity is a definition; the bound follows from the lemma"),
    "gao23-tensor-trick": Proof("exact-rational", (("Kronecker vec identities, exact", tensor_trick_exact),)),
    "bai23-binary-test": Proof("exact-rational", (("exact binary_test", binary_exact),)),
    "akyurek22-primitives": Proof("none", note="approximate (softmax, GeLU, LayerNorm); the errors are checked "
                                              "against their predicted terms numerically"),
    "akyurek22-thm1": Proof("none", note="approximate; the O(s^2) error term is checked numerically"),
    "gao23-lipschitz": Proof("general", (("softmax Jacobian norm <= 1/2", lemma_softmax_jacobian_norm),),
                             note="the Hessian bound's triangle inequalities are checked numerically"),
}


def _soft_mlp():
    """The soft-threshold MLP of lasso_ista at d = 1, as the factory builds it."""
    c = constructions.lasso_ista(1, 1, lr=LR, lam=LAM, mask_const=MASK)
    m = next(b.mlp for b in c.blocks if b.mlp is not None)
    w = c.layout["w"].start
    return m.W_in[w], m.b_in, m.W_out[:, w], m.b_out[w], np.float64(LR * LAM)


@dataclass
class ProofResult:
    claim: str
    kind: str
    holds: bool | None  # None: nothing to prove
    seconds: float
    parts: list  # (name, Outcome)
    note: str = ""


def prove(claim_id: str) -> ProofResult:
    proof = PROOFS[claim_id]
    t0 = time.perf_counter()
    parts = []
    for name, fn in proof.parts:
        try:
            out = fn()
        except NotLiftable as e:  # a weight outside the recognised forms: the proof fails
            out = Outcome(False, f"not liftable: {e}")
        parts.append((name, out))
    holds = None if not parts else all(o.holds for _, o in parts)
    return ProofResult(claim_id, proof.kind, holds, time.perf_counter() - t0, parts, proof.note)
