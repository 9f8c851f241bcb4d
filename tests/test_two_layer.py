"""two_layer_gd (Bai et al. 2023, Thm G.1): GD on a two-layer network in context, every step and every layer."""
from fractions import Fraction

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import constructions
from constructions import ConstructionError
from constructions import two_layer
from constructions.two_layer import random_start, two_layer_links
from verify import baselines
from verify.bounds import sigmoid_fit_errors
from verify.prompts import Prompt, PromptSpec
from verify.reference import TwoLayerGD, sigmoid
from verify.tolerance import assert_trace_matches, compare_trace, tolerance


def _prompt(B=2, n=12, d=3, seed=0, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, n, d)) * scale
    y = np.sin(X.sum(-1)) + 0.1 * rng.normal(size=(B, n))
    return X, y, rng.normal(size=(B, 2, d)) * scale


def _ref(c, links=True):
    P = c.params
    return TwoLayerGD(P["steps"], P["lr"], np.asarray(P["start"]["V"]), np.asarray(P["start"]["u"]),
                      two_layer_links(P["knots"], P["radius"]) if links else None)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), n=st.integers(1, 20), d=st.integers(1, 4), width=st.integers(1, 4),
       steps=st.integers(1, 3), knots=st.integers(2, 16), lr=st.floats(0.01, 1.0), log_scale=st.floats(-1.0, 1.0))
def test_every_step_is_one_gd_step_of_the_smoothed_network(seed, n, d, width, steps, knots, lr, log_scale):
    X, y, Xq = _prompt(B=2, n=n, d=d, seed=seed, scale=10.0**log_scale)
    c = constructions.two_layer_gd(d, width, steps, lr, knots, seed=seed)
    assert_trace_matches(c, _ref(c), X, y, Xq)


def test_every_layer_holds_its_part_of_the_forward_pass_and_the_parameters():
    """After blocks 1, 2, 3 of each step the context tokens hold h_hat(s), sigma~(s) and u h x, and the
    residual f - y; after block 4 every token (queries too) holds the reference's (V_t, u_t)."""
    X, y, Xq = _prompt(B=2, n=10, d=3, seed=1)
    n, K, d = 10, 3, 3
    c = constructions.two_layer_gd(d, K, 2, 0.4, 9)
    ref = _ref(c).fit(X, y)
    lay = c.layout
    hs = np.asarray(c.residuals(X, y, Xq), dtype=np.float64)  # [L + 1, B, T, D]
    tol = tolerance(c.dtype, n, ref.sum_length(d), ref.magnitude_[1:], c.step_blocks)  # [S, B]
    for t in range(2):
        S = np.einsum("bnd,bkd->bnk", X, ref.V_[t])
        p, h = ref.act(S)[:2]
        base = 1 + 4 * t  # the prefix block, then 4 per step
        tl = tol[t][:, None, None]
        assert (np.abs(hs[base + 1][:, :n, lay["h"].index] - h) <= tl).all()
        assert np.abs(hs[base + 1][:, :, lay["s"].index]).max() == 0.0  # cleared by the MLP
        assert (np.abs(hs[base + 2][:, :n, lay["p"].index] - p) <= tl).all()
        hx = np.einsum("bk,bnk,bnd->bnkd", ref.u_[t], h, X).reshape(2, n, K * d)
        assert (np.abs(hs[base + 2][:, :n, lay["hx"].index] - hx) <= tl).all()
        e = np.einsum("bnk,bk->bn", p, ref.u_[t]) - y
        assert (np.abs(hs[base + 3][:, :n, lay["e"].index][..., 0] - e) <= tol[t][:, None]).all()
        after = hs[base + 4]
        assert (np.abs(after[:, :, lay["u"].index] - ref.u_[t + 1][:, None]) <= tl).all()
        assert (np.abs(after[:, :, lay["v"].index] - ref.V_[t + 1].reshape(2, 1, K * d)) <= tl).all()


def test_exact_in_rational_arithmetic_and_the_check_can_fail():
    assert two_layer.two_layer_exact().holds
    from verify import exact as ex

    c = constructions.two_layer_gd(2, 2, 2, 0.5, 3, 4.0, seed=1)
    V0, u0 = ex.to_exact(c.params["start"]["V"]), ex.to_exact(c.params["start"]["u"])
    X, y, Xq = ex.rational_prompt(PromptSpec(B=1, n=4, m=2, d=2, seed=0))
    off = Fraction(1, 2) * (1 + Fraction(1, 10**12))  # the step size off by one part in 10^12
    assert not ex.trace_equals(c, TwoLayerGD(2, off, V0, u0, ex.exact_links(two_layer_links(3, 4.0))), X, y, Xq)


def test_the_local_error_is_within_its_bound_and_falls_as_knots_squared():
    """From one set of parameters, the construction's step against the sigmoid network's: within
    lr sqrt(A^2 + B^2) (the claim's bounds function, round-off included) for every knot count, and
    the measured gap falls with slope -2 in log(J - 1) while every score stays inside [-R, R]."""
    X, y, Xq = _prompt(B=2, n=20, d=3, seed=2, scale=0.5)
    p = Prompt(X, y, Xq, None, PromptSpec(B=2, n=20, m=2, d=3))
    knots, gaps = np.array([17, 33, 65, 129]), []
    for J in knots:
        c = constructions.two_layer_gd(3, 3, 3, 0.5, J)
        cmp = two_layer._local_bounds(p, None, c)
        assert cmp.ok, cmp.report()
        gaps.append(cmp.model.max())
        V = np.asarray(c.read_slot(X, y, Xq, "v"))[:, :, -1].reshape(-1, 2, 3, 3)  # [S+1, B, K, d]
        assert np.abs(np.einsum("bnd,sbkd->sbnk", X, V)).max() < two_layer.RADIUS  # the J^-2 premise, for this J
    slope = np.polyfit(np.log(knots - 1), np.log(gaps), 1)[0]
    assert -2.3 < slope < -1.7, slope


def test_the_fit_errors_are_the_interpolation_bounds():
    """eps1 = h^2/64 bounds |h_hat - sigma'| and eps0 = R h^2/32 bounds |sigma~ - sigma| on a fine
    grid of [-R, R]; beyond R the linear growth term covers them."""
    R, J = 3.0, 7
    s = np.linspace(-R, R, 4001)
    links = two_layer_links(J, R)
    p, h = TwoLayerGD(1, 1.0, np.zeros((1, 1)), np.zeros(1), links).act(s)[:2]
    eps0, eps1 = sigmoid_fit_errors(J, R)
    sp = sigmoid(s) * (1 - sigmoid(s))
    assert np.abs(h - sp).max() <= eps1 and np.abs(p - sigmoid(s)).max() <= eps0
    assert np.abs(h - sp).max() > eps1 / 4  # the bound is of the right order
    far = np.linspace(-3 * R, 3 * R, 4001)
    p, h = TwoLayerGD(1, 1.0, np.zeros((1, 1)), np.zeros(1), links).act(far)[:2]
    eps0, eps1 = sigmoid_fit_errors(J, R, 3 * R)
    assert np.abs(p - sigmoid(far)).max() <= eps0 and np.abs(h - sigmoid(far) * (1 - sigmoid(far))).max() <= eps1


def test_the_torch_baseline_is_gd_on_the_sigmoid_network():
    """The bench's baseline (hand-written torch gradients) against the numpy reference with the true
    sigmoid, within the error model's tolerance, and the construction against the smoothed reference."""
    X, y, Xq = _prompt(B=2, n=16, d=2, seed=4, scale=0.5)
    c = constructions.two_layer_gd(2, 3, 3, 0.2, 65)
    V, u = baselines.two_layer_gd(torch.as_tensor(X), torch.as_tensor(y), 3, 0.2, c.params["start"])
    ref = _ref(c, links=False).fit(X, y)
    tol = tolerance(torch.float64, 16, ref.sum_length(2), ref.magnitude_[1:], 1)[-1]  # [B]
    got = np.concatenate([u.numpy(), V.numpy().reshape(2, -1)], -1)
    assert (np.linalg.norm(got - ref.iterates_[-1], axis=-1) <= tol).all()
    assert_trace_matches(c, _ref(c), X, y, Xq)


def test_bad_input_is_refused_with_the_fix():
    X, y, Xq = _prompt()
    for bad in (dict(knots=1), dict(lr=0.0), dict(lr=float("nan")), dict(radius=float("inf")), dict(width=0),
                dict(start={"V": [[1.0]]}), dict(start={"V": np.zeros((2, 3)).tolist(), "u": [1.0, float("nan")]}),
                dict(start={"V": np.zeros((3, 3)).tolist(), "u": [1.0, 2.0]}), dict(seed=-1), dict(seed=2.5),
                dict(seed="a"), dict(seed=None)):
        kw = dict(d=3, width=2, steps=2, lr=0.1, knots=8) | bad
        with pytest.raises(ConstructionError):
            constructions.two_layer_gd(**kw)
    with pytest.raises(ConstructionError, match="knots"):
        constructions.two_layer_gd(3, 2, 2, 0.1, 8, radius=1e308)
    c = constructions.two_layer_gd(3, 2, 2, 0.1, 8)
    with pytest.raises(ConstructionError, match="rescale"):
        c.predict(X * 1e40, y, Xq)
    with pytest.raises(ConstructionError):  # GD that overflows is refused, never returned as inf or NaN
        constructions.two_layer_gd(3, 2, 8, 1e30, 8).predict(X, y, Xq)
    assert c.params == constructions.two_layer_gd(3, 2, 2, 0.1, 8, start=random_start(3, 2, 0)).params


def test_a_perturbed_weight_is_caught_at_its_step():
    """The largest entry of head 0's W_O in each of the 4 blocks of step 1 scaled by (1 + 1e-7): step 1 misses."""
    X, y, Xq = _prompt(B=2, n=14, d=3, seed=5)
    for layer in range(4):
        bad = constructions.two_layer_gd(3, 2, 2, 0.5, 6)
        W = bad.model.blocks[1 + layer].attn.W_O.data[0]
        W.view(-1)[int(torch.argmax(W.abs()))] *= 1 + 1e-7
        cmp = compare_trace(bad, _ref(bad), X, y, Xq)
        assert not cmp.ok and cmp.layers_failing()[0] == 1, layer
