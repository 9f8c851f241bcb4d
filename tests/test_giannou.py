"""newton_logistic (Giannou et al. 2024): Newton's method on the l2-regularised logistic loss, every layer."""
import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import constructions
from constructions import ConstructionError
from constructions.giannou import (hessian_lipschitz, link_fit_error, newton_logistic_alpha, newton_logistic_links,
                                   newton_logistic_rate, optimum_error_bound)
from constructions import giannou
from verify import baselines
from verify.prompts import Prompt, PromptSpec
from verify.reference import LogisticGD, NewtonLogistic, sigmoid
from verify.tolerance import assert_trace_matches, compare_trace, tolerance


def _prompt(B=2, n=20, d=3, seed=0, scale=0.5):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, n, d)) * scale
    w0 = rng.normal(size=d) * 2
    y = (rng.random((B, n)) < 1 / (1 + np.exp(-X @ w0))).astype(np.float64)
    return X, y, rng.normal(size=(B, 2, d)) * scale


def _ref(c):
    P = c.params
    return NewtonLogistic(P["steps"], P["lam"], newton_logistic_links(P["heads"], P["radius"]), P["iters"],
                          newton_logistic_alpha(P["lam"], P["x_bound"]))


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 24), d=st.integers(1, 5), steps=st.integers(1, 3),
       heads=st.integers(2, 20), log_lam=st.floats(-2.0, 0.5))
def test_every_step_is_one_smoothed_newton_step(seed, n, d, steps, heads, log_lam):
    X, y, Xq = _prompt(B=2, n=n, d=d, seed=seed)
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    c = constructions.newton_logistic(d, steps, 10.0**log_lam * x_bound**2, heads, x_bound)
    assert_trace_matches(c, _ref(c), X, y, Xq)


def test_every_layer_holds_its_newton_schulz_iterate_and_its_slots():
    """Inside a step, after layer 2 + k the ridge tokens' u is sqrt(n lam) S_k e_k (S_k = M_k/alpha, the
    reference's k-th Newton-Schulz iterate), every context token's hx is h_hat(s) x and g the gradient."""
    X, y, Xq = _prompt(B=2, n=12, d=3, seed=1)
    n, d = 12, 3
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    c = constructions.newton_logistic(d, 2, 0.3 * x_bound**2, 7, x_bound)
    ref = _ref(c).fit(X, y)
    P, lay, K = c.params, c.layout, c.params["iters"]
    alpha = newton_logistic_alpha(P["lam"], x_bound)
    hs = np.asarray(c.residuals(X, y, Xq), dtype=np.float64)  # [L + 1, B, T, D]
    ridge = slice(n, n + d)
    scale = np.abs(ref.inner_).max() / alpha * np.sqrt(n * P["lam"])
    tol = tolerance(c.dtype, n, d, np.array([scale]), c.step_blocks)[0]
    for t in range(2):
        for k in range(K):
            u = hs[t * (K + 3) + 3 + k][:, ridge, lay["u"].index]  # after layer 3 + k of step t: K_k iterations
            want = np.sqrt(n * P["lam"]) * np.swapaxes(ref.inner_[t, k], 1, 2) / alpha
            assert np.abs(u - want).max() <= tol, (t, k)
        after2 = hs[t * (K + 3) + 2]
        s = np.einsum("bnd,bd->bn", X, ref.iterates_[t])
        h = NewtonLogistic(1, P["lam"], newton_logistic_links(P["heads"], P["radius"])).links(s)[1]
        assert np.abs(after2[:, :n, lay["hx"].index] - h[..., None] * X).max() <= tol
        assert np.abs(after2[:, :n, lay["s"].index]).max() == 0.0  # cleared by the MLP
    # the negative: a Newton-Schulz layer fewer changes the step (the layers are not idle)
    short = constructions.newton_logistic(d, 2, 0.3 * x_bound**2, 7, x_bound, iters=K - 3)
    assert np.abs(short.trace(X, y, Xq) - c.trace(X, y, Xq)).max() > 1e3 * tol


def test_convergence_is_quadratic_and_beats_gd_at_equal_depth():
    """Every step within the quadratic bound of giannou24-newton-quadratic (its bounds function: the
    error model's round-off included); GD on the same loss with its best fixed step, given as many
    steps as the Newton model has layers, is still outside the bound Newton's last step meets, and so
    is the logistic_gd construction with an l2 head."""
    X, y, Xq = _prompt(B=3, n=30, d=4, seed=2)
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    lam = 0.01 * x_bound**2  # ill-conditioned (GD's rate (kappa - 1)/(kappa + 1) = 0.93), as in the docs' table
    c = constructions.newton_logistic(4, 6, lam, 33, x_bound)
    p = Prompt(X, y, Xq, None, PromptSpec(B=3, n=30, m=2, d=4))
    cmp = giannou._rate_bounds(p, None, c)
    assert cmp.ok, cmp.report()
    links = newton_logistic_links(33, c.params["radius"])
    w_opt = NewtonLogistic(60, lam, links).fit(X, y).iterates_[-1]
    L, mu = x_bound**2 / 4 + lam, lam
    w = np.zeros((3, 4))
    ref = NewtonLogistic(1, lam, links)
    for _ in range(c.resources["layers"]):
        sv = ref.links(np.einsum("bnd,bd->bn", X, w))[0]
        w = w - 2 / (L + mu) * (np.einsum("bnd,bn->bd", X, sv - y) / 30 + lam * w)
    assert (np.linalg.norm(w - w_opt, axis=-1) > cmp.tol[-1, :, 0]).all()  # GD misses Newton's last bound
    # Bai et al.'s logistic_gd with the l2 head, as many layers, its best fixed step: it misses it too (against its
    # own optimum, the limit of the same GD on its own smoothed loss)
    xb = float(np.linalg.norm(np.concatenate([X, Xq], 1), axis=-1).max())
    layers, lr = c.resources["layers"], 2 / (xb**2 / 4 + 2 * lam)
    bai = constructions.logistic_gd(4, layers, lr, 33, xb, lam=lam)
    knots = constructions.parts.relu_interpolant(sigmoid, 33, constructions.parts.logistic_radius(layers, lr, xb))[0]
    ref_bai = LogisticGD(giannou.BAI_OPTIMUM_STEPS, lr, knots, lam).fit(X, y)
    w_bai = ref_bai.iterates_[-1]
    # w_bai is its loss's optimum: the gradient there vanishes to round-off (error model, the unsigned terms' scale)
    s = np.einsum("bnd,bd->bn", X, w_bai)
    grad = np.einsum("bnd,bn->bd", X, np.interp(s, knots, sigmoid(knots)) - y) / 30 + lam * w_bai
    scale = np.maximum.accumulate(ref_bai.magnitude_, axis=0)[-1:] / lr
    assert (np.linalg.norm(grad, axis=-1) <= tolerance(torch.float64, 30, 4, scale, giannou.BAI_OPTIMUM_STEPS)[0]).all()
    W = np.asarray(bai.read_slot(X, y, Xq, "w"), dtype=np.float64)[-1, :, -1]
    dist = np.linalg.norm(W - w_bai, axis=-1)
    assert (dist > cmp.tol[-1, :, 0]).all()
    # and it is GD's linear rate: within ((kappa - 1)/(kappa + 1))^layers |w_bai| of it (mu = lam, L = xb^2/4 + lam)
    kappa = (xb**2 / 4 + lam) / lam
    assert (dist <= ((kappa - 1) / (kappa + 1)) ** layers * np.linalg.norm(w_bai, axis=-1) + cmp.tol[-1, :, 0]).all()


def test_the_smoothing_error_falls_as_heads_squared_within_its_bound():
    X, y, _ = _prompt(B=2, n=25, d=3, seed=3)
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    lam = 0.3 * x_bound**2
    R = 6.0
    w_true = NewtonLogistic(60, lam).fit(X, y).iterates_[-1]
    assert np.abs(np.einsum("bnd,bd->bn", X, w_true)).max() < R  # the bound's premise
    heads = np.array([9, 17, 33, 65, 129])
    err = np.array([np.linalg.norm(NewtonLogistic(60, lam, newton_logistic_links(J, R)).fit(X, y).iterates_[-1] - w_true,
                                   axis=-1).max() for J in heads])
    assert (err <= [optimum_error_bound(J, R, lam, x_bound) for J in heads]).all()
    slope = np.polyfit(np.log(heads - 1), np.log(err), 1)[0]
    assert -2.3 < slope < -1.7, slope
    assert link_fit_error(9, R) == pytest.approx(2 * R * (2 * R / 8) ** 2 / 64)


def _newton_bound(e0: float, c: float, delta: float, steps: int) -> float:
    """The quadratic recursion ``e <- (1 + delta) c e^2 + delta e`` from ``e0``, ``steps`` times."""
    e = e0
    for _ in range(steps):
        e = (1 + delta) * c * e * e + delta * e
    return e


def test_it_agrees_with_the_torch_baseline_newton_within_the_proved_bounds():
    """The construction against torch's Newton on the true loss: within |x_q| (E_c + |w~* - w*| + E_b)
    plus round-off, E the quadratic recursion's bound from |w_0 - w_opt| <= (1/2 + eps) x_bound / lam
    (|g(0)| <= max|sigma(0) - y| x_bound, lam-strong monotonicity)."""
    X, y, Xq = _prompt(B=2, n=16, d=2, seed=4)
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    lam, R, J, steps = 0.5 * x_bound**2, 8.0, 129, 4
    c = constructions.newton_logistic(2, steps, lam, J, x_bound, radius=R)
    w = baselines.newton_logistic(torch.as_tensor(X), torch.as_tensor(y), steps, lam).numpy()
    coef = hessian_lipschitz(x_bound) / (2 * lam)
    delta = newton_logistic_rate(lam, x_bound) ** (2.0 ** c.params["iters"])
    eps = link_fit_error(J, R)
    e_c = _newton_bound((0.5 + eps) * x_bound / lam, coef, delta, steps)
    e_b = _newton_bound(0.5 * x_bound / lam, coef, 0.0, steps)
    tol = assert_trace_matches(c, _ref(c), X, y, Xq).tol[-1]  # the error model at the last step: [B, m]
    allowed = np.linalg.norm(Xq, axis=-1) * (e_c + optimum_error_bound(J, R, lam, x_bound) + e_b) + 2 * tol
    assert (np.abs(c.predict(X, y, Xq) - np.einsum("bmd,bd->bm", Xq, w)) <= allowed).all()
    assert (e_c + e_b) < optimum_error_bound(J, R, lam, x_bound)  # converged: the smoothing dominates


def test_bad_input_is_refused_with_the_fix():
    X, y, Xq = _prompt()
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    c = constructions.newton_logistic(3, 2, 0.1, 8, x_bound)
    with pytest.raises(ConstructionError, match="0, 1"):
        c.predict(X, y + 0.5, Xq)
    with pytest.raises(ConstructionError, match="x_bound"):
        c.predict(2 * X, y, Xq)
    for bad in (dict(heads=1), dict(lam=0.0), dict(lam=-1.0), dict(radius=float("inf")), dict(x_bound=float("nan"))):
        kw = dict(d=3, steps=2, lam=0.1, heads=8, x_bound=x_bound) | bad
        with pytest.raises(ConstructionError):
            constructions.newton_logistic(**kw)
    with pytest.raises(ConstructionError, match="knots"):
        constructions.newton_logistic(3, 2, 0.1, 8, x_bound, radius=1e308)
    assert newton_logistic_rate(0.1, 1.0) == pytest.approx(0.25 / 0.35)


def test_a_perturbed_weight_is_caught_at_its_step_unless_newton_schulz_corrects_it():
    """The largest entry of head 0's W_O in each of the K + 3 layers of a step scaled by (1 + 1e-7).
    The score, smoothing, gradient, last Newton-Schulz and update layers: that step misses the
    reference first (step 1; for the score layer, whose w.x is 0 at w_0 = 0, step 2).  Newton-Schulz
    iterations 2 .. K - 1: the later iterations square the error away (self-correction), and every
    step stays within tolerance."""
    X, y, Xq = _prompt(B=2, n=14, d=3, seed=5)
    x_bound = float(np.linalg.norm(X, axis=-1).max())
    c = constructions.newton_logistic(3, 2, 0.2 * x_bound**2, 6, x_bound)
    K = c.params["iters"]
    assert K >= 4 and assert_trace_matches(c, _ref(c), X, y, Xq).ok
    for layer in range(c.step_blocks):
        step = 2 if layer == 0 else 1
        bad = constructions.newton_logistic(3, 2, 0.2 * x_bound**2, 6, x_bound)
        W = bad.model.blocks[(step - 1) * c.step_blocks + layer].attn.W_O.data[0]
        W.view(-1)[int(torch.argmax(W.abs()))] *= 1 + 1e-7
        cmp = compare_trace(bad, _ref(bad), X, y, Xq)
        if 3 <= layer <= K:  # Newton-Schulz iterations 2 .. K - 1 (layer 2 + j holds iteration j + 1)
            assert cmp.ok, layer
        else:
            assert not cmp.ok and cmp.layers_failing()[0] == step, layer
