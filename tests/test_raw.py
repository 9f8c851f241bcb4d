"""Akyurek et al.'s primitives (constructions.raw) and the transformer options they use."""
import numpy as np
import pytest
import torch

import constructions
from constructions.errors import ConstructionError
from constructions import raw as akyurek
from constructions.numpy_pass import numpy_forward
from constructions.raw import RawConfig, aff, div, mov, mul, raw_gd
from constructions.transformer import Transformer
from verify.tolerance import C, eps, solve_tolerance


def _stream(k=2, seed=0):
    rng = np.random.default_rng(seed)
    lay = akyurek.primitive_layout(k)
    h = np.zeros((2, 3, lay.width))
    h[:, :, lay["a"].index] = np.tanh(rng.normal(size=(2, 3, k)))
    h[:, :, lay["b"].index] = np.tanh(rng.normal(size=(2, 3, k)))
    h[:, :, lay["c"].start] = rng.choice([-1, 1], size=(2, 3)) * rng.uniform(0.2, 1, size=(2, 3))
    h[:, :, lay["pos"].index] = np.eye(3)
    return lay, h


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("name", ["mov", "aff", "mul", "div"])
def test_torch_and_numpy_forward_agree_on_causal_null_and_layernorm_blocks(name, padded):
    lay, h = _stream()
    cfg = RawConfig(attn_gap=20.0, ln_pad=100.0, mul_scale=1e-2)
    block = dict(mov=lambda: mov(lay, "a", "dst", 0, 2, cfg), aff=lambda: aff(lay, {"a": np.eye(2)}, 0.5, "dst", cfg),
                 mul=lambda: mul(lay, "a", "c", "dst", 2, 1, 1, cfg), div=lambda: div(lay, "a", ("c", 0), "dst", cfg))[name]()
    model = Transformer([block])
    if padded:  # zero columns appended to the stream: LayerNorm must still see the D real ones
        model.padding = {torch.float64: dict(multiple=8, max_growth=float("inf"))}
        assert model.compute_width(torch.from_numpy(h)) > lay.width
    with torch.no_grad():
        t = model(torch.from_numpy(h), 3).numpy()
    n = numpy_forward([block], h, 3, mask_query=True)[-1]
    scale = 1 + np.abs(t).max() * cfg.ln_pad
    assert np.abs(t - n).max() <= C * eps(torch.float64) * lay.width * scale


def test_causal_attention_never_reads_the_future():
    lay, h = _stream()
    block = mov(lay, "a", "dst", 0, 2, RawConfig())
    h2 = h.copy()
    h2[:, 2, lay["a"].index] += 5.0  # change the last token only
    with torch.no_grad():
        a = Transformer([block])(torch.from_numpy(h), 3).numpy()
        b = Transformer([block])(torch.from_numpy(h2), 3).numpy()
    assert np.array_equal(a[:, :2], b[:, :2])


@pytest.mark.parametrize("seed", range(3))
def test_primitives_within_their_predicted_errors(seed):
    lay, h = _stream(k=3 - seed % 2, seed=seed)
    for name, (err, bound) in akyurek.primitive_errors(h, RawConfig(attn_gap=30, passthrough=6, mul_scale=3e-2,
                                                                    ln_pad=300), 3 - seed % 2).items():
        assert (err <= bound).all(), name


def test_mul_error_is_the_predicted_taylor_term():
    """Every product's signed error is ``-s^2 q4/12`` up to the next Taylor order and round-off
    (Lemma 4's expansion), over three decades of s: the O(s^2) rate with its constant."""
    lay, h = _stream(k=2, seed=4)
    x, y = h[:, :, lay["a"].index], h[:, :, lay["c"].start][..., None]
    q4, q6 = (x + y) ** 4 - x**4 - y**4, (x + y) ** 6 - x**6 - y**6
    for s in (1e-1, 1e-2, 1e-3):
        with torch.no_grad():
            r = Transformer([mul(lay, "a", "c", "dst", 2, 1, 1, RawConfig(mul_scale=s))])(torch.from_numpy(h), 3).numpy()
        err = r[:, :, lay["dst"].index] - x * y
        remainder = s**4 * (np.abs(q6) / 80 + 1) + C * eps(torch.float64) * (1 + (np.abs(x) + np.abs(y)) ** 2) / s
        assert (np.abs(err + s**2 * q4 / 12) <= remainder).all()
        assert (s**2 * np.abs(q4) / 12 > remainder).any()  # the s^2 term is resolved, not noise


def test_raw_gd_error_is_its_predicted_s2_term():
    rng = np.random.default_rng(1)
    x1, x2, w0 = (np.tanh(rng.normal(size=(2, 3))) * 0.5 for _ in range(3))
    y1 = np.tanh(rng.normal(size=2))
    scales = (1e-1, 1e-2, 1e-3)
    err, pred = akyurek.thm1_errors(x1, y1, x2, w0, 0.1, 0.05, scales)
    rem = akyurek.thm1_remainder(x1, y1, x2, w0, scales)
    assert (np.abs(err - pred) <= rem).all()
    assert (np.abs(pred[-1]) > rem[-1]).all()  # at s = 1e-3 the s^2 term is resolved above the remainder


def test_a_wrong_gelu_constant_is_caught():
    lay, h = _stream()
    cfg = RawConfig(mul_scale=1e-2)
    bad = mul(lay, "a", "c", "dst", 2, 1, 1, cfg)
    bad.mlp.W_out *= 1.01
    with torch.no_grad():
        r = Transformer([bad])(torch.from_numpy(h), 3).numpy()
    x, y = h[:, :, lay["a"].index], h[:, :, lay["c"].start][..., None]
    assert np.abs(r[:, :, lay["dst"].index] - x * y).max() > akyurek.primitive_errors(h, cfg, 2)["mul"][1].max()


def test_raw_gd_validates_its_input():
    c = raw_gd(2, [0.1, 0.2], 0.1)
    with pytest.raises(ConstructionError, match="one exemplar"):
        c.predict(np.ones((2, 2)), np.ones(2), np.ones((1, 2)))
    with pytest.raises(ConstructionError, match="tokens"):
        c.predict(np.ones((1, 2)), np.ones(1), np.ones((2, 2)))
    with pytest.raises(ConstructionError, match="w0"):
        raw_gd(2, [0.1], 0.1)
    lay, _ = _stream()
    with pytest.raises(ConstructionError, match="mov"):
        mov(lay, "a", "dst", 2, 0, RawConfig())
    with pytest.raises(ConstructionError, match="null_score"):
        constructions.AttentionSpec("linear", *np.zeros((3, 1, 2, 1)), np.zeros((1, 1, 2)), null_score=1.0)
    assert constructions.build("raw_gd", d=2, w0=[0.0, 0.0], lr=0.1).resources["layers"] == 9


# -- raw_sgd: Thm 1 chained over the exemplars (akyurek22-sgd-pass) --------------------------------
def _sgd_prompt(B=2, n=12, d=3, seed=2):
    rng = np.random.default_rng(seed)
    X = np.tanh(rng.normal(size=(B, n, d))) * 0.5
    return X, np.tanh(rng.normal(size=(B, n))), np.tanh(rng.normal(size=(B, d))) * 0.5, rng.normal(size=d) * 0.3


def test_raw_sgd_error_is_the_accumulated_s2_term_at_every_step():
    X, y, xq, w0 = _sgd_prompt()
    res = akyurek.sgd_pass_errors(X, y, xq, w0, 0.2, 0.05)
    for s, (err, pred, rem) in zip(akyurek.SGD_SCALES, res):
        assert err.shape == (2, 12)
        assert (np.abs(err - pred) <= rem).all(), s
    err, pred, rem = res[-1]
    assert (np.abs(pred) > 10 * rem).all()  # at s = 1e-3 the s^2 term is resolved at every step
    gain = np.abs(res[1][0][:, -1] / res[2][0][:, -1])
    assert (gain >= akyurek.THM1_DECADE).all() and (gain <= 10.0**2.1).all()


def test_the_carried_error_is_needed_local_terms_alone_miss():
    """K_i carries every earlier step's mul error forward; the local terms of step i alone (the
    error of one Thm 1 step from the exact iterate) miss the measured error beyond the bound."""
    X, y, xq, w0 = _sgd_prompt(seed=3)
    lr, lam = 0.2, 0.05
    err, pred, rem = akyurek.sgd_pass_errors(X, y, xq, w0, lr, lam, scales=(1e-3,))[0]
    ws, es = akyurek.sgd_pass(X, y, w0, lr, lam)
    local = []
    for i in range(X.shape[1]):
        x = X[:, i]
        ep = -akyurek._q(ws[:, i], x, 4).sum(-1) / 12
        eg = -akyurek._q(x, es[:, i : i + 1], 4) / 12
        local.append(1e-6 * ((xq * -2 * lr * (x * ep[:, None] + eg)).sum(-1) - akyurek._q(ws[:, i + 1], xq, 4).sum(-1) / 12))
    assert (np.abs(err - np.stack(local, 1)) > rem).any()


def test_raw_sgd_trace_is_the_sgd_prediction_per_exemplar():
    X, y, xq, w0 = _sgd_prompt(B=1, n=5, d=2, seed=4)
    c = constructions.raw_sgd(2, 5, 0.1, 0.0, w0)
    ws, _ = akyurek.sgd_pass(X, y, w0, 0.1, 0.0)
    tr = c.trace(X, y, xq[:, None])[..., 0, 0]
    assert tr.shape == (5,)
    err, s2K, rem = akyurek.sgd_pass_errors(X, y, xq, w0, 0.1, 0.0, scales=(1e-3,))[0]
    assert (np.abs(tr - ws[0, 1:] @ xq[0]) <= np.abs(s2K[0]) + rem[0]).all()  # off by its s^2 K term, at most
    assert c.predict(X, y, xq[:, None])[0, 0] == tr[-1]
    assert (c.resources["layers"], c.resources["width"]) == (8 * 5 + 3, 7 * 2 + 2 * 5 + 5)


def test_raw_sgd_refuses_bad_input():
    X, y, xq, w0 = _sgd_prompt(B=1, n=4, d=2)
    c = constructions.raw_sgd(2, 4, 0.1, 0.0, w0)
    with pytest.raises(ConstructionError, match="n=4"):
        c.predict(X[:, :3], y[:, :3], xq[:, None])
    with pytest.raises(ConstructionError, match="passthrough"):
        c.predict(X, y * 20, xq[:, None])  # |y| > P/2 = 5: the GeLU pass-through fails
    for bad in (dict(n=0), dict(lr=float("nan")), dict(w0=[1.0]), dict(config=dict(mul_scale=-1.0))):
        with pytest.raises(ConstructionError):
            constructions.raw_sgd(**{**dict(d=2, n=4, lr=0.1), **bad})


# -- raw_ridge: Thm 2's single Sherman-Morrison update from the primitives (akyurek22-thm2-raw) ----------
def _ridge_prompt(B=3, d=3, seed=7):
    rng = np.random.default_rng(seed)
    return (np.tanh(rng.normal(size=(B, d))) * 0.5, np.tanh(rng.normal(size=B)), np.tanh(rng.normal(size=(B, d))) * 0.5)


def test_raw_ridge_is_the_sherman_morrison_ridge_step():
    x1, y1, x2 = _ridge_prompt()
    lam = 0.5
    w = np.stack([np.linalg.solve(lam * np.eye(3) + np.outer(a, a), a * b) for a, b in zip(x1, y1)])
    kappa = (lam + (x1**2).sum(-1)) / lam  # cond(lam I + x1 x1^T)
    scale = np.abs(w).sum(-1) * np.abs(x2).max(-1)
    tol = solve_tolerance(torch.float64, 3, kappa, scale)
    assert (np.abs(akyurek.ridge_raw_emulate(x1, y1, x2, lam) - (w * x2).sum(-1)) <= tol).all()
    err, pred = akyurek.ridge_raw_errors(x1, y1, x2, lam, ((1e-3, 1e4),))
    c = constructions.raw_ridge(3, lam)  # the default knobs: off by its predicted error, at most 10% more
    assert (np.abs(c.predict(x1[:, None], y1[:, None], x2[:, None])[:, 0] - (w * x2).sum(-1))
            <= (1 + akyurek.THM1_DOMINANCE) * np.abs(pred[0]) + tol).all()
    assert (c.resources["layers"], c.resources["width"]) == (13, 4 * 9 + 7 * 3 + 10)


def test_raw_ridge_error_is_its_predicted_term_and_each_part_is_needed():
    """The prediction carries the mul terms and div's LayerNorm term; each alone misses where the
    other dominates, and each knob's decade cuts its part ~100-fold."""
    x1, y1, x2 = _ridge_prompt(seed=8)
    lam = 0.6
    exact = akyurek.ridge_raw_emulate(x1, y1, x2, lam)
    for (s, M) in akyurek.RIDGE_RAW_POINTS + ((1e-2, 1e6), (1e-4, 1e2)):
        err, pred = akyurek.ridge_raw_errors(x1, y1, x2, lam, ((s, M),))
        assert (np.abs(err - pred) <= akyurek.THM1_DOMINANCE * np.abs(pred)).all(), (s, M)
    err, _ = akyurek.ridge_raw_errors(x1, y1, x2, lam, ((1e-4, 1e2),))
    mul_only = akyurek.ridge_raw_emulate(x1, y1, x2, lam, s=1e-4) - exact
    assert (np.abs(err - mul_only) > 0.5 * np.abs(err)).all()  # div's term is the error at small M
    err, _ = akyurek.ridge_raw_errors(x1, y1, x2, lam, ((1e-2, 1e6),))
    div_only = akyurek.ridge_raw_emulate(x1, y1, x2, lam, M=1e6) - exact
    assert (np.abs(err - div_only) > 0.5 * np.abs(err)).all()  # the mul terms are the error at large s
    for pair in akyurek.RIDGE_RAW_RATES:
        e, _ = akyurek.ridge_raw_errors(x1, y1, x2, lam, pair)
        assert ((np.abs(e[0] / e[1]) >= akyurek.THM1_DECADE) & (np.abs(e[0] / e[1]) <= 10.0**2.1)).all()


def test_raw_ridge_refuses_bad_input():
    with pytest.raises(ConstructionError, match="lam"):
        constructions.raw_ridge(2, 0.1)  # 1/lam = 10 > P/2: the pass-through of I/lam fails
    for bad in (dict(lam=0.0), dict(d=0), dict(config=dict(ln_pad=float("inf")))):
        with pytest.raises(ConstructionError):
            constructions.raw_ridge(**{**dict(d=2, lam=0.5), **bad})
    c = constructions.raw_ridge(2, 0.5)
    with pytest.raises(ConstructionError, match="passthrough"):
        c.predict(np.array([[[3.0, 0.0]]]), np.array([[1.0]]), np.array([[[0.1, 0.1]]]))  # c = 1 + 9/0.5 = 19
    with pytest.raises(ConstructionError, match="one exemplar"):
        c.predict(np.ones((1, 2, 2)) * 0.1, np.ones((1, 2)), np.ones((1, 1, 2)))
    # a long x_1 (found by the fuzzer at |x| ~ 1e9): lam is lost beside x1 x1^T, which once made the domain
    # check's matrix inversion fail with a raw LinAlgError; the closed form refuses it by name
    for scale in (1e9, 1e90):
        with pytest.raises(ConstructionError, match="passthrough"):
            c.predict(np.array([[[scale, 0.0]]]), np.array([[1.0]]), np.array([[[0.1, 0.1]]]))
