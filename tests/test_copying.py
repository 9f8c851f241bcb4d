"""copy_gd (von Oswald et al. 2023, Prop. 3) and softmax_gd (App. A.9): the interleaved embedding,
the copying layer, the refusals, and the centring domain."""
import numpy as np
import pytest
import torch

from constructions import ConstructionError, formats
from constructions.copying import copy_bound, copy_gd
from constructions.softmax_heads import error_budget, softmax_gd
from verify.reference import GD


def _prompt(n=5, d=3, m=2, B=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, n, d)) * 0.5, rng.normal(size=(B, n)), rng.normal(size=(B, m, d))


def test_the_embedding_is_the_interleaved_format_with_positions():
    X, y, Xq = _prompt()
    c = copy_gd(3, 5, 2, 0.1)
    h = c.embed(c.prepare(X, y, Xq)).numpy()
    H = formats.to_akyurek(X, y, Xq)  # Garg's interleaved tokens: [y | x] per token
    lay = c.layout
    assert np.array_equal(h[..., lay["x"].index], H[..., 1:]) and np.array_equal(h[..., lay["y"].start], H[..., 0])
    assert np.array_equal(h[:, :10, lay["pos"].index], np.broadcast_to(np.eye(10), (2, 10, 10)))
    assert not h[:, 10:, lay["pos"].index].any() and c.n_keys(5) == 10


def test_the_copying_layer_moves_each_label_into_its_x_token():
    X, y, Xq = _prompt()
    c = copy_gd(3, 5, 1, 0.1)
    after = c.read_slot(X, y, Xq, "y")[0][..., 0]  # index 0: the stream after the copying prefix
    assert np.allclose(after[:, 0:10:2], y, rtol=0, atol=1e-15)  # x-tokens now hold y_i
    assert np.allclose(after[:, 1:10:2], y, rtol=0, atol=1e-15)  # y-tokens keep theirs
    assert not after[:, 10:].any()  # queries unchanged
    assert np.abs(c.trace(X, y, Xq) - GD(1, 0.1).fit(X, y).trace(Xq)).max() <= 1e-14


def test_the_softmax_copy_approaches_gd_within_its_bound():
    X, y, Xq = _prompt()
    want = GD(2, 0.1).fit(X, y).predict(Xq)
    errs = []
    for beta in (10.0, 20.0, 30.0):
        err = np.abs(copy_gd(3, 5, 2, 0.1, "softmax", beta).predict(X, y, Xq) - want)
        assert (err <= copy_bound(X, y, Xq, 2, 0.1, beta)).all()
        errs.append(err.max())
    assert errs[0] > errs[1] > errs[2]
    with pytest.raises(ConstructionError, match="too small"):  # outside the bound's range
        copy_gd(3, 5, 2, 0.1, "softmax", 2.0)


@pytest.mark.parametrize("kwargs, match", [(dict(attention="relu"), "attention must be one of"),
                                           (dict(beta=-1.0), "beta"), (dict(n=0), "n")])
def test_bad_copy_parameters_are_refused(kwargs, match):
    args = dict(d=3, n=5, steps=2, lr=0.1) | kwargs
    with pytest.raises(ConstructionError, match=match):
        copy_gd(**args)


def test_a_prompt_of_another_length_is_refused():
    X, y, Xq = _prompt(n=4)
    with pytest.raises(ConstructionError, match="built for n=5"):
        copy_gd(3, 5, 2, 0.1).predict(X, y, Xq)


def test_softmax_gd_needs_centred_inputs_and_stays_within_its_budget_in_either_dtype():
    from verify.tolerance import eps

    X, y, Xq = _prompt(n=12)
    c = softmax_gd(3, 2, 0.1, 0.05)
    with pytest.raises(ConstructionError, match="centred"):
        c.predict(X, y, Xq)
    Xc = X - X.mean(1, keepdims=True)
    want = GD(2, 0.1).fit(Xc, y).trace(Xq)
    for dtype, args in (("float64", (Xc, y, Xq)), ("float32", tuple(a.astype(np.float32) for a in (Xc, y, Xq)))):
        got = c.to(dtype).trace(*args)
        for b in range(2):
            _, roundoff, bound = error_budget(Xc[b], y[b], Xq[b], 0.1, 0.05, 2)
            extra = roundoff * eps(getattr(torch, dtype)) / eps(torch.float64)  # the budget's round-off, in dtype
            assert (np.abs(got[:, b] - want[:, b]).max(-1) <= bound + 4 * extra).all(), dtype
    with pytest.raises(ConstructionError, match="saturates"):
        softmax_gd(3, 2, 0.1, 1e3).predict(Xc, y, Xq)
