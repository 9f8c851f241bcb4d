"""Bai et al. 2023 ReLU-attention constructions: every layer, every token, bounds and rates."""
import numpy as np
import pytest
import torch
from hypothesis import given

import constructions
from constructions import ConstructionError, registry
from constructions.bai import logistic_radius, score_bound, sigmoid_fit_error, sigmoid_knots
from verify.bounds import slot_matches_iterates
from verify.knobs import lasso_lam, stable_lr
from verify.prompts import PromptSpec, make_prompt
from verify.reference import GD, ISTA, LinkSelect, LogisticGD, PreICLSelect, RidgeSelect, soft_threshold
from verify.strategies import knobs, prompts
from verify.tolerance import assert_trace_matches, compare_trace, tolerance

DTYPES = pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
# Every claim of this module (the exact trace at every layer and its bound: iterates in every token,
# ISTA's O(1/t) gap, Thm 13's eps*t*lr*B_x, the selection's gamma guarantee) in both dtypes:
# tests/test_claims.py.


@given(p=prompts(), k=knobs(log10_mask=(0.0, 12.0)))
def test_relu_gd_exact_for_any_masking_constant(p, k):
    """The gate is exact whatever B above the bound (B up to 1e12 times it)."""
    c, ref = registry.claim("bai23-icgd").build(p, k)
    assert_trace_matches(c, ref, *p.arrays)


def test_mask_constant_below_the_bound_raises_and_would_leak_the_query():
    p = make_prompt(PromptSpec(B=1, n=10, m=1, d=3, seed=2))
    Xq = p.Xq * 100.0  # a query far outside the context: large |<w_t, x_q>|
    lr = stable_lr(p.X, 1.0)
    bound = float(score_bound(*(torch.from_numpy(a) for a in (p.X, p.y, Xq)), 0.0).max())
    c = constructions.relu_gd(3, 4, lr, mask_const=bound / 10)
    with pytest.raises(ConstructionError, match="mask_const"):
        c.predict(p.X, p.y, Xq)
    # with the check off, the query key is no longer gated out and the result is wrong
    assert not compare_trace(c, GD(4, lr=lr), p.X, p.y, Xq, check=False).ok


@given(p=prompts(), k=knobs())
def test_w_slot_of_every_token_is_the_iterate(p, k):
    c, ref = registry.claim("bai23-icgd").build(p, k)
    W = c.read_slot(*p.arrays, "w")  # [S+1, B, T, d]
    ref.fit(p.X, p.y)
    assert W.shape == (k.steps + 1, p.spec.B, p.spec.n + p.spec.m, p.spec.d)
    np.testing.assert_array_equal(W[0], 0.0)
    assert slot_matches_iterates(p, c, ref).ok  # every token, every layer, within the tolerance model


def test_soft_threshold_mlp_is_exact():
    c = constructions.lasso_ista(d=1, steps=1, lr=1.0, lam=0.5)
    mlp = c.model.blocks[0].mlp
    w = c.layout["w"].start
    v = torch.tensor([-2.0, -0.5, -0.25, 0.0, 0.25, 0.5, 0.7, 3.0], dtype=torch.float64)
    h = torch.zeros(len(v), 1, c.layout.width, dtype=torch.float64)
    h[:, 0, w] = v
    out = (h + mlp(h))[:, 0, w].numpy()
    np.testing.assert_array_equal(out, soft_threshold(v.numpy(), 0.5))


@given(p=prompts(log10_kappa=(0.0, 1.5)), k=knobs())
def test_lasso_layers_are_ista_steps(p, k):
    lam = lasso_lam(p.X, p.y, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor)
    assert_trace_matches(constructions.lasso_ista(p.spec.d, k.steps, lr, lam), ISTA(k.steps, lr, lam), *p.arrays)


def _glm_errors(seed, heads_list, steps=6):
    p = make_prompt(PromptSpec(B=2, n=30, m=2, d=4, seed=seed))
    y = (p.y > 0).astype(float)
    xb = float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max())
    lr = 2.0 / xb**2
    exact = LogisticGD(steps, lr).fit(p.X, y).iterates_[-1]
    errs = []
    for h in heads_list:
        c = constructions.logistic_gd(4, steps, lr, h, xb)
        w = c.read_slot(p.X, y, p.Xq, "w")[-1][:, -1]
        errs.append(np.linalg.norm(w - exact, axis=-1).max())
        assert errs[-1] <= sigmoid_fit_error(h, logistic_radius(steps, lr, xb)) * steps * lr * xb  # Thm 13's bound
    return np.array(errs)


@pytest.mark.parametrize("seed", range(3))
def test_glm_error_falls_as_heads_squared(seed):
    """Piecewise-linear interpolation: eps ~ h^2 ~ heads^-2, and the iterate error with it."""
    heads = np.array([17, 33, 65, 129])
    errs = _glm_errors(seed, heads)
    slope = np.polyfit(np.log(heads - 1), np.log(errs), 1)[0]
    assert -2.5 <= slope <= -1.5, f"error slope {slope:.2f} (errors {errs})"


def test_glm_knots_are_the_interpolant():
    knots, a, base = sigmoid_knots(9, 4.0)
    s = np.linspace(-6, 6, 1001)
    relu_sum = base + (a[:, None] * np.maximum(s[None] - knots[:, None], 0)).sum(0)
    terms = np.abs(base) + (np.abs(a)[:, None] * np.maximum(s[None] - knots[:, None], 0)).sum(0)
    tol = tolerance(torch.float64, len(knots), 1, terms[None])[0]  # one layer's sum of 9 terms
    assert (np.abs(relu_sum - np.interp(s, knots, 1 / (1 + np.exp(-knots)))) <= tol).all()


def test_glm_domain_errors():
    X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    c = constructions.logistic_gd(2, 3, 0.5, 8, x_bound=1.5)
    with pytest.raises(ConstructionError, match="labels"):
        c.predict(X, np.array([0.0, 1.0, 0.5]), X[:1])
    with pytest.raises(ConstructionError, match="x_bound"):
        c.predict(X * 2, np.array([0.0, 1.0, 1.0]), X[:1])
    with pytest.raises(ConstructionError, match=r"2/\(x_bound\^2/4 \+ lam\)"):
        constructions.logistic_gd(2, 3, 10.0, 8, x_bound=1.5)
    with pytest.raises(ConstructionError, match=r"2/\(x_bound\^2/4 \+ lam\)"):  # inside 8/x_bound^2, beyond it with lam
        constructions.logistic_gd(2, 3, 3.0, 8, x_bound=1.5, lam=0.2)
    constructions.logistic_gd(2, 3, 3.0, 8, x_bound=1.5)  # 3 <= 8/1.5^2 = 3.56: accepted without lam
    with pytest.raises(ConstructionError, match="heads"):
        constructions.logistic_gd(2, 3, 0.5, 1, x_bound=1.5)


@DTYPES
@given(p=prompts(n=(4, 40)), k=knobs())
def test_selection_weights_are_a_convex_combination(dtype, p, k):
    c, ref = registry.claim("bai23-selection").build(p, k)
    c = c.to(dtype)
    K = len(c.params["lams"])
    A = np.stack([c.residuals(*p.arrays)[-1][..., c.layout[f"a{j}"].start] for j in range(K)], -1)  # [B, T, K]
    ref.fit(*p.rounded(dtype).arrays[:2])
    # the weights are O(1); round-off in the losses is amplified by the selection maps' 1/gamma near ties
    scale = np.broadcast_to(ref.conditioning()[-1], (c.model.n_layers, p.spec.B))
    tol = tolerance(dtype, p.spec.n, p.spec.d, scale)[-1][:, None]  # [B, 1]
    assert (A >= 0).all() and (np.abs(A.sum(-1) - 1) <= tol).all()
    assert (np.abs(A[:, 0] - ref.weights_[-1]) <= tol).all()


def _selector(gamma=0.1):
    return RidgeSelect([0.1, 1.0, 10.0], 1, 0.1, 2, gamma)


def test_selection_is_flat_away_from_ties():
    """With the runner-up more than gamma + margin behind, the weights are one-hot and loss
    perturbations below the margin do not move them: the conditioning is 1."""
    sel, rng = _selector(), np.random.default_rng(0)
    L = np.array([[[2.0, 1.0, 1.0 + 0.1 + 2e-3 * 2.0]]])  # [S=1, B=1, K]: gaps 1 and gamma + 2 margin
    sel.losses_ = np.concatenate([L, L])
    assert sel.conditioning().tolist() == [[1.0]]
    for _ in range(20):
        delta = rng.uniform(-1, 1, L.shape) * 1e-3 * 2.0 / 2
        assert (sel.select(L + delta) == sel.select(L)).all() and sel.select(L)[0, 0].tolist() == [0, 1, 0]


def test_selection_slope_near_a_tie_is_one_over_gamma():
    """With the runner-up within gamma, moving its loss by delta moves the weights by delta/gamma:
    the amplification the conditioning 1 + K max L / gamma accounts for is real."""
    sel, delta = _selector(), 1e-6
    L = np.array([[[2.0, 1.05, 1.0]]])  # the near candidate before the best: weights 0, 1/2, 1/2
    sel.losses_ = np.concatenate([L, L])
    cond = sel.conditioning()[0, 0]
    moved = np.abs(sel.select(L + np.array([0, delta, 0])) - sel.select(L)).max()
    assert moved == pytest.approx(delta / sel.gamma, rel=1e-6)
    assert cond == 1 + 3 * 2.0 / sel.gamma and moved <= cond * delta


def test_selection_picks_the_right_lambda_on_noise_levels():
    """Noiseless data favours the smallest lambda, very noisy data a larger one (validation-driven)."""
    rng = np.random.default_rng(0)
    d, ntr, nva = 5, 30, 30
    X = rng.normal(size=(2, ntr + nva, d))
    w = rng.normal(size=(2, d))
    y = np.einsum("bnd,bd->bn", X, w)
    y[1] += 3.0 * rng.normal(size=ntr + nva)  # prompt 1: noise sigma = 3
    lams, steps = [1e-3, 1.0, 30.0], 400
    lr = 1.0 / (np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X[:, :ntr], X[:, :ntr]) / ntr)[:, -1].max() + lams[-1])
    c = constructions.ridge_select(d, lams, steps, lr, ntr, nva, gamma=1e-3)
    ref = RidgeSelect(lams, steps, lr, ntr, 1e-3).fit(X, y)
    assert_trace_matches(c, RidgeSelect(lams, steps, lr, ntr, 1e-3), X, y, X[:, :1])
    best = ref.losses_[-1].argmin(-1)
    assert best[0] == 0 and best[1] > 0
    assert ref.weights_[-1][0, 0] == 1.0


def test_selection_rejects_a_prompt_of_another_size():
    c = constructions.ridge_select(2, [0.1, 1.0], 2, 0.1, n_train=4, n_val=2, gamma=0.1)
    X = np.ones((5, 2)) * 0.1
    with pytest.raises(ConstructionError, match="n_train"):
        c.predict(X, np.zeros(5), X[:1])


def test_bai_resources():
    r = constructions.relu_gd(4, 5, 0.1).resources
    assert (r["layers"], r["heads"], r["width"], r["attention"]) == (6, 2, 11, ["relu"])
    assert constructions.relu_gd(4, 5, 0.1, lam=0.1).resources["heads"] == 3
    r = constructions.lasso_ista(4, 5, 0.1, 0.1).resources
    assert (r["layers"], r["heads"], r["mlp_width"]) == (6, 2, 16)
    assert constructions.logistic_gd(4, 2, 0.1, 10, 2.0).resources["heads"] == 12
    r = constructions.ridge_select(4, [0.1, 1, 10], 3, 0.1, 6, 3, 0.1).resources
    assert (r["layers"], r["heads"], r["width"], r["mlp_width"]) == (8, 9, (3 + 1) * 4 + 5 * 3 + 4, 6)


def test_binary_test_flags_one_non_binary_label_and_validates():
    import numpy as np

    from constructions.errors import ConstructionError

    n = 8
    c = constructions.binary_test(2, eps=0.1, threshold=1 - 0.5 / n)
    X, Xq = np.ones((n, 2)), np.ones((1, 2))
    y = np.r_[np.zeros(4), np.ones(4)]
    assert c.predict(X, y, Xq)[0] == 1.0
    y[0] = 0.5  # one label far from {0, 1}
    assert c.predict(X, y, Xq)[0] == 0.0
    for bad in (dict(eps=0.6), dict(eps=0.0), dict(threshold=1.0)):
        with pytest.raises(ConstructionError):
            constructions.binary_test(2, **bad)


# -- proximal GD beyond l1 (bai23-prox) ----------------------------------------------------------------
def test_proximal_gd_projects_onto_the_box_and_the_l2_prox_reaches_ridge():
    from constructions.bai import prox_shrink
    from verify.reference import ProxGD

    rng = np.random.default_rng(3)
    X, y, Xq = rng.normal(size=(2, 10, 3)), rng.normal(size=(2, 10)) * 3, rng.normal(size=(2, 2, 3))
    c = constructions.proximal_gd(3, 30, 0.2, "box", 0.1)
    w = c.read_slot(X, y, Xq, "w")[-1][:, 0]  # the iterate after the last step
    assert np.abs(w).max() <= 0.1 + 1e-15 and (np.abs(w) == 0.1).any()  # the box binds
    assert_trace_matches(c, ProxGD(30, 0.2, "box", 0.1), X, y, Xq)
    lam, lr = 0.5, 0.2
    l2 = constructions.proximal_gd(3, 400, lr, "l2", lam)
    S = np.einsum("bnd,bne->bde", X, X) / 10
    w_ridge = np.linalg.solve(S + lam * np.eye(3), np.einsum("bnd,bn->bd", X, y)[..., None] / 10)[..., 0]
    # prox-gradient contracts by rho = max|1 - lr kappa|/(1 + lr lam) toward ridge: |w_T - w*| <= rho^T |w*|
    rho = np.abs(1 - lr * np.linalg.eigvalsh(S)).max(-1) / (1 + lr * lam)
    tol = assert_trace_matches(l2, ProxGD(400, lr, "l2", prox_shrink(lr, lam)), X, y, Xq).tol[-1]
    bound = np.linalg.norm(Xq, axis=-1) * (rho**400 * np.linalg.norm(w_ridge, axis=-1))[:, None]
    assert (rho < 1).all() and (np.abs(l2.predict(X, y, Xq) - np.einsum("bqd,bd->bq", Xq, w_ridge)) <= bound + tol).all()
    assert 0 < prox_shrink(0.2, lam) < 1


def test_proximal_gd_refuses_bad_input():
    X = np.ones((1, 4, 2)) * 0.1
    for bad in (dict(prox="l1"), dict(prox=None), dict(param=0.0), dict(steps=0)):
        with pytest.raises(ConstructionError):
            constructions.proximal_gd(**{**dict(d=2, steps=2, lr=0.1, prox="box", param=1.0), **bad})
    with pytest.raises(ConstructionError, match="mask_const"):
        constructions.proximal_gd(2, 2, 0.1, "box", 10.0, mask_const=1.0).predict(X, np.ones((1, 4)), X[:, :1] * 100)


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_pre_icl_select_outputs_the_branch_the_test_selects(seed):
    """Bai et al.'s Prop. 19 end to end: on binary labels the output is, at every step, the logit of
    the separate logistic_gd construction; on real-valued labels the prediction of the separate
    relu_gd construction (the same prompt, steps and step sizes); the domain refuses a selection
    constant below |f_ridge - f_logistic|."""
    rng = np.random.default_rng(seed)
    d, n, steps = 3, 12, 5
    X, Xq = rng.normal(size=(4, n, d)) / 2, rng.normal(size=(4, 2, d)) / 2
    y_real = rng.normal(size=(4, n))
    y_bin = (y_real > 0).astype(np.float64)
    x_bound = float(np.linalg.norm(np.concatenate([X, Xq], 1), axis=-1).max())
    lr, lr_class = stable_lr(X, 1.0), 2.0 / x_bound**2
    c = constructions.pre_icl_select(d, steps, lr, lr_class, 8, x_bound, threshold=1 - 0.5 / n, select_const=1e3,
                                     mask_const=1e6)
    logistic = constructions.logistic_gd(d, steps, lr_class, 8, x_bound, mask_const=1e6)
    ridge = constructions.relu_gd(d, steps, lr, mask_const=1e6)
    knots = sigmoid_knots(8, logistic_radius(steps, lr_class, x_bound))[0]
    for y, branch in ((y_bin, logistic), (y_real, ridge)):
        got, want = c.trace(X, y, Xq), branch.trace(X, y, Xq)
        ref = PreICLSelect(steps, lr, lr_class, knots, 0.1, 1 - 0.5 / n, 1e3).fit(X, y)  # the error model's scale
        assert np.all(np.abs(got - want) <= tolerance(c.dtype, n, d, ref.scale(Xq)))
        other = (ridge if branch is logistic else logistic)
        if other is logistic and not np.all(np.isin(y, (0.0, 1.0))):
            continue  # logistic_gd refuses real labels
        assert np.abs(got - other.trace(X, y, Xq)).max() > 1e-3  # the branches differ: the selection matters
    with pytest.raises(ConstructionError, match="select_const"):
        constructions.pre_icl_select(d, steps, lr, lr_class, 8, x_bound, select_const=1e-6).predict(X, y_real, Xq)


def test_link_select_picks_the_link_of_the_data():
    """Bai et al.'s Thm I.2: on noisy linear labels the square loss's predictor validates better
    and is selected (weights (1, 0)); on 0/1 labels of a steep logistic model the sigmoid's is
    (weights (0, 1)); every layer of the construction equals the numpy pipeline."""
    rng = np.random.default_rng(3)
    d, n, n_train, steps = 3, 30, 18, 8
    X, Xq = rng.normal(size=(4, n, d)) / 2, rng.normal(size=(4, 2, d)) / 2
    w = rng.normal(size=(4, d)) * 2
    s = np.einsum("bnd,bd->bn", X, w)
    y = s + 0.05 * rng.normal(size=(4, n))
    y[2:] = (s[2:] > 0).astype(np.float64)
    x_bound = float(np.linalg.norm(np.concatenate([X, Xq], 1), axis=-1).max())
    lr, lr_class, gamma = stable_lr(X[:, :n_train], 1.0), 4.0 / x_bound**2, 1e-3
    c = constructions.link_select(d, steps, lr, lr_class, 8, x_bound, n_train, n - n_train, gamma, mask_const=1e6)
    knots = sigmoid_knots(8, logistic_radius(steps, lr_class, x_bound))[0]
    ref = LinkSelect(steps, lr, lr_class, knots, n_train, gamma).fit(X, y)
    assert ref.weights_[-1].tolist() == [[1.0, 0.0], [1.0, 0.0], [0.0, 1.0], [0.0, 1.0]]
    assert_trace_matches(c, LinkSelect(steps, lr, lr_class, knots, n_train, gamma), X, y, Xq)
    with pytest.raises(ConstructionError, match="n_train"):
        c.predict(X[:, :-1], y[:, :-1], Xq)


# -- the decoder (Bai et al. 2023, App. B, Prop. B.1) -----------------------------------------------------
@given(p=prompts(), k=knobs())
def test_decoder_predicts_every_position_from_gd_on_its_prefix(p, k):
    """Position i's prediction is <w_t, x_i> for GD on the i - 1 examples before it (so 0 at the first),
    and the queries get the encoder's answer: relu_gd's prediction on the same prompt and step."""
    from constructions.bai import prefix_gd, prefix_predictions

    c, ref = registry.claim("bai23-decoder").build(p, k)
    lr = c.params["lr"]
    P = prefix_predictions(c, *p.arrays)  # [B, n + m]
    ws, mags = prefix_gd(p.X, p.y, k.steps, lr)
    np.testing.assert_array_equal(P[:, 0], 0.0)
    scale = np.maximum.accumulate(mags, 0)[-1] * np.linalg.norm(p.X, axis=-1)
    assert (np.abs(P[:, : p.spec.n] - np.einsum("bnd,bnd->bn", ws[-1], p.X))
            <= tolerance(c.dtype, p.spec.n, p.spec.d, scale)).all()
    enc = constructions.relu_gd(p.spec.d, k.steps, lr, mask_const=float(score_bound(
        *(torch.from_numpy(a) for a in p.arrays), 0.0).max()))
    assert compare_trace(c, ref, *p.arrays).ok
    np.testing.assert_allclose(P[:, p.spec.n:], enc.predict(*p.arrays), rtol=1e-9, atol=1e-12)


def test_decoder_refuses_a_step_that_diverges_on_a_short_prefix():
    """A step stable for the whole prompt can diverge on its first examples: refused unless check=False."""
    from constructions.parts import lambda_max

    rng = np.random.default_rng(0)
    X = rng.normal(size=(1, 30, 3)) * 0.3
    X[0, 0] *= 20.0  # one long first example: the prefix of length 1 has curvature |x_1|^2
    y, Xq = rng.normal(size=(1, 30)), rng.normal(size=(1, 1, 3))
    lr = 1.9 / float(lambda_max(torch.from_numpy(X)))  # stable on all 30 examples
    c = constructions.decoder_gd(3, 5, lr)
    with pytest.raises(ConstructionError, match="prefix"):
        c.predict(X, y, Xq)
    assert np.isfinite(c.predict(X, y, Xq, check=False)).all()  # the divergence experiment still runs
    with pytest.raises(ConstructionError, match="attention must be one of"):
        constructions.decoder_gd(3, 5, lr, attention="softmax")


def test_decoder_prefix_risk_is_the_transformers_own_output():
    """The prefix-risk curve icl-verify prints is measured on the construction: at position 1 it
    predicts 0 (risk E y^2), and at every position its risk is that of GD on the prefix (numpy)."""
    from constructions.bai import decoder_risk, prefix_gd

    r = decoder_risk(seed=1, prompts=200, n=8, steps=3)
    S = r["setting"]
    rng = np.random.default_rng(1)  # the same draws as decoder_risk
    X = rng.normal(size=(200, 8, S["d"]))
    X /= np.linalg.norm(X, axis=-1, keepdims=True)
    y = np.einsum("bnd,bd->bn", X, rng.normal(size=(200, S["d"]))) + S["noise"] * rng.normal(size=(200, 8))
    ws, _ = prefix_gd(X, y, 3, S["lr"])
    np.testing.assert_allclose(r["transformer"], ((np.einsum("bnd,bnd->bn", ws[-1], X) - y) ** 2).mean(0), rtol=1e-10)
    assert r["transformer"][0] == pytest.approx((y[:, 0] ** 2).mean())
    assert r["least_squares"][-1] < r["least_squares"][1]  # more examples, lower risk


def test_link_selection_scale_covers_the_sigmoid_interpolants_terms():
    """Found by a random example: a short query (|x_q| = 0.29) gave the logistic candidate's prediction
    sigma_hat(s) ~ 1/2 a tolerance from GD's scale |x_q| |w| alone, below one ulp of 1/2 (ratio 4.3).
    The error model now adds the interpolant's terms (LogisticGD.link_terms)."""
    from verify.knobs import Knobs

    claim = registry.claim("bai23-link-selection")
    spec, k = claim.adapt(PromptSpec(B=1, n=1, m=1, d=1, seed=2759427774),
                          Knobs(steps=1, lr_factor=0.0625, log10_mask=1.0, heads=4, seed=1))
    ok, _, _ = claim.evaluate(make_prompt(spec), k)
    assert ok
