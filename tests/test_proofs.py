"""The proofs the claims declare: each passes, and each fails on a perturbed construction."""
import copy
import dataclasses
import functools

import numpy as np
import pytest
import sympy as sp
import torch

import constructions
from constructions import bai, linear_gd, registry, ridge, sherman_morrison
from queries import inductions, small_case
from constructions.transformer import Transformer
from verify import exact, proofs, symbolic
from verify.claims import LR
from verify.cli import main
from verify.prompts import PromptSpec
from verify.reference import NewtonSchulz, RecursiveLeastSquares
from verify.tolerance import tolerance

INDUCTIONS = inductions()


def _holds(spec, blocks=None) -> bool:
    """The induction's verdict (``blocks``: the parts that read those blocks only, for a construction
    changed there alone; :func:`verify.symbolic.prove_induction`)."""
    try:
        return symbolic.prove_induction(spec, stop_at_failure=True, blocks=blocks).holds
    except symbolic.NotLiftable:  # prove() reports this as a failed proof
        return False


@functools.lru_cache(maxsize=None)
def _holds_as_built(name: str) -> bool:
    return _holds(INDUCTIONS[name]())


def _changed(c, change, model_only=False):
    """A copy of c whose blocks ``change(blocks)`` edits in place; its torch model (which the anchors
    run) is rebuilt from the changed blocks.  ``model_only``: the torch model alone is changed."""
    c = copy.copy(c)
    blocks = copy.deepcopy(c.blocks)
    change(blocks)
    if not model_only:
        c.blocks = blocks
    c.model = Transformer(blocks, mask_query=c.mask_query)
    return c


def _tampered(c, block, key, factor=1 + 2.0**-20, entry=None):
    """A copy of c with one weight changed: every head's ``key`` scaled by ``factor``, or
    ``2^-20`` added to one entry of head 0."""
    def change(blocks):
        part = blocks[block].attn if key.startswith("W_") and key[2] in "QKVO" else blocks[block].mlp
        a = getattr(part, key)
        if entry is None:
            a *= factor
        else:
            a[(0, *entry)] += 2.0**-20

    return _changed(c, change)


@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims()])
def test_every_claim_is_proved_or_marked_approximate(claim_id):
    r = proofs.prove(claim_id)
    if r.kind == "none":
        assert r.holds is None and ("approximate" in r.note or "no proof" in r.note)
    else:
        assert r.holds, [(name, o.detail) for name, o in r.parts]


def test_a_claim_without_a_proof_is_shown_as_none(capsys):
    claim = dataclasses.replace(registry.claim("vonoswald23-prop1"), id="user-unproved", proof=None)
    registry.add_claim(claim)
    try:
        r = proofs.prove("user-unproved")
        assert (r.kind, r.holds) == ("none", None)
        assert main(["prove", "user-unproved"]) == 0
        assert "n/a" in capsys.readouterr().out
        from verify.docs import claims_markdown

        assert "| `user-unproved` |" in claims_markdown() and claims_markdown().count("| none |") >= 1
    finally:
        registry.remove_claim("user-unproved")


@pytest.mark.parametrize("name", list(INDUCTIONS))
@pytest.mark.parametrize("block", ["first", "last"])  # a step layer; the readout (or last step)
@pytest.mark.parametrize("key", ["W_Q", "W_K", "W_V", "W_O"])
def test_a_scaled_weight_breaks_the_induction(name, block, key):
    spec = INDUCTIONS[name]()
    b = 0 if block == "first" else len(spec.builder()(3).blocks) - 1
    assert _holds_as_built(name)
    assert not _holds(dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), b, key)), blocks={b})


@pytest.mark.parametrize("name", list(INDUCTIONS))
def test_an_off_pattern_entry_breaks_the_lift(name):
    spec = INDUCTIONS[name]()
    assert _holds_as_built(name)
    bad = dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), 0, "W_V", entry=(0, 0)))
    assert not _holds(bad, blocks={0})


def test_a_proof_restricted_to_some_blocks_proves_the_parts_reading_them():
    """blocks={b} runs the parts that read block b only: the verdict of the whole proof for a
    construction changed in block b alone (the others are the proved construction's)."""
    spec = linear_gd.gd_induction()
    last = dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), -1, "W_V"))
    full, part = symbolic.prove_induction(last), symbolic.prove_induction(last, blocks={-1})
    assert not full.holds and not part.holds and part.detail == f"only the parts reading blocks [1]: {full.detail}"
    assert symbolic.prove_induction(last, blocks={0}).holds  # block 0 is the proved construction's
    assert symbolic.prove_induction(spec, blocks={0, 1}).detail.startswith("only the parts reading blocks [0, 1]: ")


def test_transposed_preconditioner_is_not_preconditioned_gd():
    assert _holds(linear_gd.pgd_induction())
    assert not _holds(linear_gd.pgd_induction(transpose=True))  # docs/pitfalls.md #5


def test_unmasked_layer_is_not_a_gd_step_from_an_arbitrary_state():
    assert not _holds(linear_gd.gd_induction(mask=False))
    assert linear_gd.unmasked_control().holds  # ... yet its first layer from the embedding is


def test_a_changed_step_size_is_caught():
    spec = dataclasses.replace(linear_gd.gd_induction(), build=lambda dd: constructions.gd(dd, 2, lr=LR * 2))
    assert not _holds(spec)
    every, first = symbolic.prove_induction(spec), symbolic.prove_induction(spec, stop_at_failure=True)
    assert not every.holds and not first.holds and every.detail.startswith(first.detail)
    assert every.detail.count(";") > first.detail.count(";")  # both step layers fail; the first stops at layer 0


def test_exact_rational_checks_catch_a_perturbed_weight():
    link = bai._link_proof_build()
    assert bai.link_exact(link).holds and not bai.link_exact(_tampered(link, 1, "W_O")).holds
    sm = constructions.ridge_sherman_morrison(2, lam=sherman_morrison.PROOF_LAM, n=sherman_morrison.PROOF_N, x_bound=1.0)
    assert not sherman_morrison.exact_rls(_tampered(sm, 3, "W_O")).holds


def test_a_split_construction_is_lifted_in_its_scales_and_checked_at_other_splits():
    """ridge_select's values carry n/n_train and n/n_val: a build that ignores the split it is asked
    for fails the step identity, a value scale of another form (n/n_val squared) fails the lift's
    check at the other splits, and the selection MLP's output bias (a_0's 1) is read and checked."""
    spec = bai.select_induction()
    assert _holds_as_built("induction ridge_select")
    assert not _holds(dataclasses.replace(spec, build=lambda dd, ntr, nv: spec.build(dd, 4, 4)), blocks={0})
    loss = bai.SELECTION_PROOF["steps"] + 1  # the validation-loss block

    def squared(dd, ntr, nv):
        def change(blocks):
            blocks[loss].attn.W_O *= (ntr + nv) / nv  # s_val -> s_val^2
        return _changed(spec.build(dd, ntr, nv), change)

    with pytest.raises(symbolic.NotLiftable, match="is not the lifted form"):
        symbolic.lift_layer(squared, loss, split=True)
    bias = dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), loss + 2, "b_out"))
    assert symbolic.lift_mlp(spec.builder(), loss + 2) != symbolic.lift_mlp(bias.builder(), loss + 2)
    assert not _holds(bias, blocks={loss + 2})


def test_sigmoid_proofs_catch_a_perturbed_weight():
    """The proofs of the sum-of-ReLU sigmoid constructions fail on a weight changed by 2^-20."""
    link = bai._link_proof_build()
    assert not bai.link_sigma_lemma(_tampered(link, link.n_step_blocks, "b_in", factor=1 + 2.0**-20)).holds
    assert not bai.link_exact(_tampered(link, 0, "W_V")).holds
    spec = bai.pre_select_induction()  # the selection MLP of the readout block
    assert not _holds(dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), -1, "W_out")), blocks={-1})

    def negative_labels(dd):  # the label head relu(-y_j): dead on 0/1 labels, live on real ones
        def change(blocks):
            for b in blocks[1:-1]:
                b.attn.W_O[-1] *= 1 + 2.0**-20

        return _changed(spec.build(dd), change)

    assert not _holds(dataclasses.replace(spec, build=negative_labels))


def test_exact_checks_refuse_prompts_that_are_not_generic(monkeypatch):
    """A proof on prompts that leave a gate unswitched, or rows orthogonal, says so and fails."""
    prompts = bai._logistic_prompts
    monkeypatch.setattr(bai, "_logistic_prompts", lambda *a, **k: prompts(*a, **k)[:2])  # one prompt after [1:]
    out = bai.link_exact()
    assert not out.holds and "not generic" in out.detail


def test_sherman_morrison_proof_needs_non_orthogonal_rows(monkeypatch):
    """With kappa = 1 and n = d = 2 the rows are orthogonal (X^T X = n I): the check refuses them."""
    from verify import prompts as vp

    real = vp.PromptSpec
    monkeypatch.setattr(vp, "PromptSpec", lambda **kw: real(**{**kw, "log10_kappa": 0.0}))
    out = sherman_morrison.exact_rls()
    assert not out.holds and "orthogonal" in out.detail


MLP_INDUCTIONS = [k for k, spec in INDUCTIONS.items() if spec().builder()(3).blocks[0].mlp is not None]
#: those whose first MLP is coordinatewise (families of d units on a d-sized slot)
COORDINATEWISE = [k for k in MLP_INDUCTIONS if any(
    symbolic.slot_sizes(INDUCTIONS[k]().builder()(3))[s] == symbolic.d for s, _ in symbolic.lift_mlp(INDUCTIONS[k]().builder(), 0)[0][0])]


def test_some_induction_lifts_an_mlp_and_a_block_without_attention_lifts():
    """The MLP tests below have cases (the registry declares inductions over MLP blocks); a block
    with an MLP and no attention lifts as its MLP alone."""
    assert COORDINATEWISE and set(MLP_INDUCTIONS) - set(COORDINATEWISE)  # units on 1-sized slots too
    spec = INDUCTIONS[COORDINATEWISE[0]]()

    def mlp_only(dd):
        c = _mlp_entry(spec.build(dd), delta=0.0)
        c.blocks[0].attn = None
        return c

    lifted = symbolic.lift_layer(mlp_only, 0)
    assert lifted.heads == [] and lifted.mlp == symbolic.lift_mlp(spec.build, 0) and lifted.mlp


@pytest.mark.parametrize("name", MLP_INDUCTIONS)
@pytest.mark.parametrize("key", ["W_in", "W_out"])
def test_a_scaled_mlp_weight_breaks_the_induction(name, key):
    """The MLP's function changes (soft threshold, clip or shrink off by 2^-20): the proof fails."""
    spec = INDUCTIONS[name]()
    assert _holds_as_built(name)
    assert not _holds(dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), 0, key)), blocks={0})


def _mlp_entry(c, unit=0, delta=2.0**-20, key="W_in"):
    c = copy.copy(c)
    c.blocks = copy.deepcopy(c.blocks)
    w = c.layout["w"].start
    a = getattr(c.blocks[0].mlp, key)
    if key == "W_in":
        a[w, unit] += delta
    else:
        a[unit, w] += delta
    return c


@pytest.mark.parametrize("name", COORDINATEWISE)
def test_an_mlp_unit_off_its_family_breaks_the_lift(name):
    """One unit (coordinate 0) reads or writes differently from the other d - 1 of its family."""
    spec = INDUCTIONS[name]()
    for key in ("W_in", "W_out"):
        with pytest.raises(symbolic.NotLiftable, match="cover coordinates"):
            symbolic.prove_induction(dataclasses.replace(spec, build=lambda dd: _mlp_entry(spec.build(dd), key=key)))


def test_a_soft_threshold_bias_is_checked_and_the_lift_refuses_other_mlps():
    spec = bai.lasso_induction()
    assert not _holds(dataclasses.replace(spec, build=lambda *a: _tampered(spec.build(*a), 0, "b_in")), blocks={0})

    def edited(dd, key, index, value):
        c = _mlp_entry(spec.build(dd), delta=0.0)
        getattr(c.blocks[0].mlp, key)[index(c.layout["w"].start)] = value
        return c

    with pytest.raises(symbolic.NotLiftable, match="touches coordinates"):  # unit 0 also reads w[1]
        symbolic.lift_mlp(lambda dd: edited(dd, "W_in", lambda w: (w + 1, 0), 0.5), 0)
    with pytest.raises(symbolic.NotLiftable, match="output bias"):
        symbolic.lift_mlp(lambda dd: edited(dd, "b_out", lambda w: w, 1.0), 0)
    with pytest.raises(symbolic.NotLiftable, match="touches coordinates"):  # random ReLU features of x
        symbolic.lift_mlp(lambda dd: constructions.feature_gd(dd, 1, lr=LR, k=dd), 0)
    pre = bai.pre_select_induction().build  # the binary test's unit on psi, also reading w[0]
    with pytest.raises(symbolic.NotLiftable, match="both a d-sized and a 1-sized slot"):
        symbolic.lift_mlp(lambda dd: _mlp_entry(pre(dd), delta=0.5), 0)


def test_pointwise_equality_is_decided_on_all_of_r_and_refuses_curved_pieces():
    z = symbolic.Z
    soft = lambda c: sp.Lambda(z, sp.sign(z) * sp.Max(sp.Abs(z) - c, 0))  # noqa: E731
    four_relus = sp.Lambda(z, z + sp.Max(z - sp.Rational(1, 8), 0) - sp.Max(-z - sp.Rational(1, 8), 0)
                           - sp.Max(z, 0) + sp.Max(-z, 0))
    assert symbolic.pointwise_equal(four_relus, soft(sp.Rational(1, 8)))
    assert not symbolic.pointwise_equal(four_relus, soft(sp.Rational(1, 8) + sp.Rational(1, 2**20)))
    with pytest.raises(symbolic.NotLiftable, match="not piecewise affine"):
        symbolic.pointwise_equal(sp.Lambda(z, sp.Max(z, 0) ** 2), sp.Lambda(z, z))


def test_entrywise_maps_of_one_score_matrix_are_summed_and_must_be_affine():
    """ReLU heads as entrywise maps of their scores (``is_zero``): maps of the same score matrix are
    summed (up to broadcast ones and a scale of the score), the sum must be affine on all of R, or on
    the interval a domain gives; anything else is not zero."""
    z, E, one = symbolic.Z, symbolic.Entrywise, sp.OneMatrix(1, symbolic.n)
    X, Y, w = symbolic.X, symbolic.Y, sp.MatrixSymbol("w", symbolic.d, 1)
    relu = lambda b=0: sp.Lambda(z, sp.Max(z + b, 0))  # noqa: E731
    s = X.T * w * one  # n scores, broadcast over n tokens
    assert symbolic.is_zero(X * E(relu(), s) - X * E(relu(), -s) - X * X.T * w * one)  # the sign split
    assert symbolic.is_zero(E(relu(), 2 * s) - 2 * E(relu(), s))  # relu(2z) = 2 relu(z)
    assert not symbolic.is_zero(X * E(relu(), s) - X * X.T * w * one)  # relu(z) = z only for z >= 0
    assert not symbolic.is_zero(X * E(relu(sp.Rational(1, 2)), s) - X * E(relu(), s))  # not affine
    labels = E(relu(1), Y) - E(relu(), Y) - one  # relu(y + 1) - relu(y) = 1 for y >= 0
    assert symbolic.is_zero(labels, {Y: (0, 1)}) and not symbolic.is_zero(labels)
    assert not symbolic.is_zero(labels, {sp.MatrixSymbol("Y", 2, 2): (0, 1)})  # another symbol of that name
    inner = E(relu(), s) - E(relu(), -s)  # maps of maps: the inner sum is normalised first (here to s)
    assert symbolic.is_zero(E(relu(1), 2 * inner) - E(relu(1), 2 * s)) and not symbolic.is_zero(E(relu(1), inner) - E(relu(1), 2 * s))
    psi = sp.MatrixSymbol("Psi", 1, 1)  # a 1x1 argument stays unevaluated
    assert symbolic.is_zero(E(relu(), psi) - E(relu(), psi.T)) and not symbolic.is_zero(E(relu(), psi) - psi)


def test_the_sum_of_relu_proofs_check_the_function_and_the_label_domain():
    """logistic_gd's induction fails when its sigmoid is off by 2^-20 relu(z) (a change the anchors'
    small scores may not see) or when the labels are not restricted to [0, 1] (relu(y) = y only
    there); binary_test's fails when psi's bumps are narrower by 2^-20."""
    spec = bai.glm_induction()
    assert _holds_as_built("induction logistic_gd")
    assert "the entries of Y lie in [0, 1] (the construction's domain)" in symbolic.prove_induction(spec).premises
    assert not _holds(dataclasses.replace(spec, domains={}))
    off = sp.Rational(1, 2**20)

    def step(v, layer, base=spec.step):
        return dict(w=base(v, layer)["w"] + off * symbolic.X * symbolic.coordinatewise(
            lambda z: sp.Max(z - 2, 0), symbolic.X.T * v["w"]) / symbolic.n)

    assert not _holds(dataclasses.replace(spec, step=step))
    spec = bai.binary_induction()
    assert _holds_as_built("induction binary_test")
    eps = sp.Rational(1, 8) - off

    def narrow(v, layer, base=spec.step):
        if layer:
            return base(v, layer)
        return dict(v, psi=v["psi"] + sp.OneMatrix(1, symbolic.n) * symbolic.coordinatewise(bai._psi_map(eps), symbolic.Y.T)
                    / symbolic.n)

    assert not _holds(dataclasses.replace(spec, step=narrow))


def test_piecewise_linear_equality_is_decided_on_all_of_r():
    assert symbolic.piecewise_linear_equal(lambda v: sp.Max(v, 0) - sp.Max(-v, 0), lambda v: v, [0])
    assert not symbolic.piecewise_linear_equal(lambda v: sp.Max(v, 0), lambda v: v, [0])  # differs only for v < 0
    assert not symbolic.piecewise_linear_equal(lambda v: sp.Max(v - 1, 0), lambda v: sp.Max(v - 2, 0), [1, 2])


def test_is_zero_groups_terms_but_never_equates_different_matrices():
    X, W, q = symbolic.X, sp.MatrixSymbol("W", 1, symbolic.d), symbolic.XQ
    M = sp.MatrixSymbol("M", symbolic.d, symbolic.d)
    a = sp.Symbol("a", positive=True)
    assert symbolic.is_zero(a / (a + 1) * W * X - a / (a + 1) * W * X)
    assert symbolic.is_zero(q.T * M * q - q.T * M.T * q)  # a 1x1 matrix is its transpose
    assert not symbolic.is_zero(W * X)
    assert not symbolic.is_zero(M * X - M.T * X)  # not 1x1: M is not symmetric
    assert not symbolic.is_zero(W * X * X.T - W * X * X.T / 2)


def _newton_case(seed):  # dyadic parameters: the deep Fractions of a float lr would be huge
    X, y, Xq = exact.unit_ball(*exact.rational_prompt(PromptSpec(B=2, n=4, m=2, d=2, seed=seed)))
    c = constructions.ridge_newton(2, ridge.PROOF_LAM, iters=2, x_bound=ridge.PROOF_XB)
    return c, NewtonSchulz(2, ridge.PROOF_LAM, ridge.newton_alpha(ridge.PROOF_LAM, ridge.PROOF_XB)), X, y, Xq


def _sm_case(seed):
    lam, n = sherman_morrison.PROOF_LAM, sherman_morrison.PROOF_N
    X, y, Xq = exact.unit_ball(*exact.rational_prompt(PromptSpec(B=2, n=n, m=2, d=2, seed=seed)))
    return constructions.ridge_sherman_morrison(2, lam=lam, n=n, x_bound=1.0), RecursiveLeastSquares(lam), X, y, Xq


#: the proofs' own dyadic parameters for the deep constructions (Fractions of float parameters grow large)
CASES = {"ridge_newton": _newton_case, "ridge_sherman_morrison": _sm_case}


@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims() if c.kind == "exact"])
def test_numpy_pass_is_the_map_of_the_torch_model(claim_id):
    """The plain numpy pass (the one the exact-rational proofs run in Fractions) and the torch model
    agree within the tolerance model on every claim's construction: the same map."""
    c, ref, *rest = small_case(registry.claim(claim_id))
    X, y, Xq = rest[0].arrays if rest else _small_prompt(registry.claim(claim_id))
    got = exact.trace(c, X, y, Xq, rational=False)
    tol = tolerance(torch.float64, X.shape[1], X.shape[2], ref.fit(X, y).scale(Xq), c.step_blocks)
    assert (np.abs(c.trace(X, y, Xq, check=False) - got) <= tol).all()


def _small_prompt(claim):
    from verify.knobs import Knobs
    from verify.prompts import make_prompt

    spec, _ = claim.adapt(PromptSpec(B=2, n=6, m=2, d=2, seed=0), Knobs(steps=2))
    return make_prompt(spec).arrays


@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("seed", range(2))
def test_exact_forward_pass_matches_the_torch_model_on_deep_constructions(case, seed):
    """The numpy reference forward pass (exact Fractions) and the torch model (float64) agree
    within the tolerance model: the exact-rational proofs are about the model users run."""
    c, ref, X, y, Xq = CASES[case](seed)
    got = exact.trace(c, X, y, Xq).astype(np.float64)
    tol = tolerance(torch.float64, X.shape[1], X.shape[2], ref.fit(X, y).scale(Xq), c.step_blocks)
    assert (np.abs(c.trace(X, y, Xq) - got) <= tol).all()


def test_exact_inputs_stay_exact():
    X, y, Xq = exact.rational_prompt(PromptSpec(B=1, n=3, d=2, m=1, seed=0))
    t = exact.trace(constructions.gd(2, 2, lr=0.25), X, y, Xq)
    assert all(type(v).__name__ == "Fraction" for v in t.ravel())


def test_cli_prove(capsys):
    assert main(["prove", "vonoswald23-prop1", "akyurek22-thm1", "-v"]) == 0
    out = capsys.readouterr().out
    assert "PROVED" in out and "n/a" in out and "general" in out


def _scalar_heads(rest, out=(1, -1), gate=3):
    """A sign-split pair on the scores ``+-y_j`` of a small layout, with offset ``rest`` (from ``one``),
    a key gate ``gate * g_j`` (g = 0 on the context, -1 on the query) and outputs ``out`` into ``s``."""
    from constructions.layout import Readout, ResidualLayout

    lay = ResidualLayout.of([("y", 1, "y"), ("one", 1, "one"), ("g", 1, "train_gate"), ("s", 1, "zero")],
                            Readout("s", 1.0))
    I1 = sp.Identity(1)
    heads = [dict(kind="relu", QK={("one", "y"): sign * I1, ("one", "one"): rest * I1, ("one", "g"): gate * I1},
                  OV={("one", "s"): o * I1}) for sign, o in zip((1, -1), out)]
    groups = [symbolic.context(y=symbolic.Y), symbolic.query(y=symbolic.Z11)]
    return heads, lay, groups, dict(y=1, one=1, g=1, s=1)


def test_gated_relu_heads_state_the_premise_they_need_and_pair_only_with_a_negated_output():
    """A gated-out pair with offset beta needs |score| <= -gate - beta (both heads closed), and is not
    liftable when beta > -gate; heads whose outputs are not negated are not a sign split."""
    res = symbolic.apply_layer(*_scalar_heads(rest=1))
    assert "|score| <= 2 for query tokens on query keys" in res.premises
    with pytest.raises(symbolic.NotLiftable, match="open at every score"):
        symbolic.apply_layer(*_scalar_heads(rest=4))
    linear = symbolic.apply_layer(*_scalar_heads(rest=0))
    one = sp.OneMatrix(1, symbolic.n)
    assert symbolic.is_zero(linear.delta["context"]["s"] - one * symbolic.Y.T * one / symbolic.n)
    mixed = symbolic.apply_layer(*_scalar_heads(rest=0, out=(2, 3)))  # 2 relu(y) + 3 relu(-y): not 2 y
    assert not symbolic.is_zero(mixed.delta["context"]["s"] - 2 * one * symbolic.Y.T * one / symbolic.n)
    relu = sp.Lambda(symbolic.Z, 2 * sp.Max(symbolic.Z, 0) + 3 * sp.Max(-symbolic.Z, 0))
    assert symbolic.is_zero(mixed.delta["context"]["s"] - one * symbolic.Entrywise(relu, symbolic.Y.T) * one / symbolic.n)


def test_entrywise_sums_with_a_jump_or_a_set_condition_are_not_affine():
    z, X = symbolic.Z, symbolic.X
    jump = sp.Piecewise((z - sp.Rational(1, 2), (z > 0) & (z < 1)), (0, True))  # 0 at every midpoint, not 0
    assert symbolic._affine(jump) is None and not symbolic.is_zero(symbolic.coordinatewise(lambda v: jump.subs(z, v), X))
    shifted = sp.Piecewise((z - 5, sp.Contains(z, sp.Interval(10, 11))), (z, True))
    assert not symbolic.is_zero(symbolic.coordinatewise(lambda v: shifted.subs(z, v), X) - X)
    assert not symbolic.piecewise_linear_equal(lambda v: jump.subs(z, v), lambda v: 0, [0, 1])


def test_an_mlp_unit_on_1_sized_slots_is_a_map_of_their_combination():
    """A unit reading y and s writes c relu(a y + b s + beta) into s; one with no reads writes c relu(beta)."""
    _, lay, groups, sizes = _scalar_heads(rest=0)
    half, z = sp.Rational(1, 2), symbolic.Z
    units = [((("s", half), ("y", sp.Integer(2))), sp.Integer(-1), (("s", sp.Integer(3)),)),
             ((), sp.Integer(2), (("s", sp.Integer(-1)),))]
    ctx = symbolic.complete(lay, symbolic.apply_mlp(units, lay, groups, sizes)[0], sizes)["s"]
    relu = symbolic.Entrywise(sp.Lambda(z, sp.Max(z - 1, 0)), 2 * symbolic.Y)  # s = 0 on the context
    assert symbolic.is_zero(ctx - 3 * relu + 2 * sp.OneMatrix(1, symbolic.n))
    assert not symbolic.is_zero(ctx - 3 * relu)


def _masked_as(c, block, model_only=False, **attn):
    """A copy of c whose block ``block`` has other attention options (``causal``, ``divisor``)."""
    return _changed(c, lambda blocks: [setattr(blocks[block].attn, k, v) for k, v in attn.items()], model_only)


@pytest.mark.parametrize("attention", bai.DECODER_ATTENTION)
@pytest.mark.parametrize("block, attn", [(0, dict(causal=True)), (0, dict(divisor="n")), (0, dict(causal=False)),
                                         (-1, dict(causal="strict")), (-1, dict(divisor="n", causal=True))])
def test_the_decoder_proof_reads_each_blocks_mask_and_divisor(attention, block, attn):
    """A step that sees its own token, divides by n or sees every key, or a readout that does not
    attend to its own token alone, is not GD on each prefix (the proof lifts the mask and divisor)."""
    spec = bai.decoder_induction(attention)
    assert _holds_as_built(f"induction decoder_gd({attention})")
    assert not _holds(dataclasses.replace(spec, build=lambda dd: _masked_as(spec.build(dd), block, **attn)), blocks={block})


def test_causal_masks_and_divisors_are_the_toolkits_own():
    """The proof's mask and divisor symbols (stated in verify.symbolic) evaluate to the masks the
    models use (constructions.spec.hidden_keys) and to one over each token's key count, at every n
    up to 6: entry (j, i) of M_strict is 1 for j < i, D_strict is diag(1/((i-1) v 1))."""
    from constructions.spec import hidden_keys

    for causal, (M, D) in symbolic.CAUSAL.items():
        for nn in range(1, 7):
            seen = ~hidden_keys(causal, nn, nn, numpy=True)  # [tokens, keys]
            m, dv = (symbolic.evaluate(s, {symbolic.n: nn}, {}) for s in (M, D))
            assert (m == seen.T).all()
            assert (dv == np.diag([sp.Rational(1, max(int(k), 1)) for k in seen.sum(1)])).all()
    assert list(np.diag(symbolic.evaluate(symbolic.CAUSAL["strict"][1], {symbolic.n: 4}, {}))) == \
        [1, 1, sp.Rational(1, 2), sp.Rational(1, 3)]


def test_hadamard_products_with_a_mask_are_linear_in_the_scores_only():
    X, Y, n = symbolic.X, symbolic.Y, symbolic.n
    W = sp.MatrixSymbol("W", symbolic.d, n)
    (Ms, Ds), (Mc, _) = symbolic.CAUSAL["strict"], symbolic.CAUSAL[True]
    A, B = X.T * W, Y.T * sp.OneMatrix(1, n)
    had = sp.HadamardProduct
    assert symbolic.is_zero(X * had(2 * A - B, Ms) * Ds - 2 * X * had(A, Ms) * Ds + X * had(B, Ms) * Ds)
    assert symbolic.is_zero(symbolic.diagonal(X.T * W) - symbolic.diagonal(W.T * X))  # I is symmetric
    assert not symbolic.is_zero(X * had(A, Ms) - X * had(A, Mc))  # other masks
    assert not symbolic.is_zero(X * had(A, Ms) - X * had(W.T * X, Ms))  # M_strict is not symmetric
    assert not symbolic.is_zero(X * had(A, Ms) * Ds - X * had(A, Ms) / n)  # other divisors
    assert symbolic.is_zero(had(sp.OneMatrix(n, n), Ms) - Ms)


def test_the_decoder_anchor_runs_the_torch_model_with_its_mask():
    """A torch model whose first step sees its own token, under weights and masks that are proved:
    only the anchor's torch half can catch it, and does."""
    spec = bai.decoder_induction("linear")
    build = lambda dd: _masked_as(spec.build(dd), 0, model_only=True, causal=True)  # noqa: E731
    out = symbolic.prove_induction(dataclasses.replace(spec, build=build))
    assert not out.holds and "the torch model" in out.detail and "numpy pass" not in out.detail


@pytest.mark.parametrize("blocks", [{5}, {-3}, {"0"}, "0", 1, {True}, {0.5}])
def test_a_restriction_to_blocks_that_are_not_there_is_refused(blocks):
    with pytest.raises(constructions.ConstructionError, match="blocks must be block indices"):
        symbolic.prove_induction(linear_gd.gd_induction(), blocks=blocks)
