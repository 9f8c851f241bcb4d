"""Prompt converters: exact round trips, and each format's readout sign on real constructions."""
import numpy as np
import pytest
from hypothesis import given

import constructions
from constructions import formats as F
from constructions.errors import ConstructionError
from verify.strategies import prompts

PAIRS = {
    "garg": (F.to_garg, F.from_garg),
    "von_oswald": (F.to_von_oswald, F.from_von_oswald),
    "ahn": (F.to_ahn, F.from_ahn),
    "akyurek": (F.to_akyurek, F.from_akyurek),
    "bai": (lambda X, y, Xq: F.to_bai(X, y, Xq, X.shape[-1] + 5), lambda H, n: F.from_bai(H, H.shape[-1] - 5)),
}


@pytest.mark.parametrize("fmt", list(PAIRS))
@given(p=prompts())
def test_round_trip_is_exact(fmt, p):
    to, back = PAIRS[fmt]
    X, y, Xq = back(to(p.X, p.y, p.Xq), p.X.shape[1])
    assert np.array_equal(X, p.X) and np.array_equal(y, p.y) and np.array_equal(Xq, p.Xq)


def test_von_oswald_and_ahn_read_minus_y_from_the_gd_stream():
    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(2, 6, 3)), rng.normal(size=(2, 6)), rng.normal(size=(2, 2, 3))
    c = constructions.gd(3, 3, lr=0.1)
    out = c.residuals(X, y, Xq)[-1]  # the gd layout is von Oswald's token (x, y)
    assert np.array_equal(c.residuals(X, y, Xq)[0], F.to_von_oswald(X, y, Xq))
    assert np.array_equal(F.read_von_oswald(out, 6), c.predict(X, y, Xq))  # the same stream, read twice
    assert np.array_equal(F.read_ahn(out.transpose(0, 2, 1), 6), c.predict(X, y, Xq))
    assert not np.allclose(out[:, 6:, -1], c.predict(X, y, Xq))  # the plus sign would be wrong


def test_bai_reads_plus_y_from_the_relu_gd_stream():
    rng = np.random.default_rng(1)
    X, y, Xq = rng.normal(size=(2, 6, 3)) * 0.5, rng.normal(size=(2, 6)), rng.normal(size=(2, 1, 3))
    c = constructions.relu_gd(3, 2, lr=0.1)
    out = c.residuals(X, y, Xq)[-1]
    assert np.array_equal(F.read_bai(out, 6, 3), c.predict(X, y, Xq))
    H = F.to_bai(X, y, Xq, c.layout.width)
    assert np.array_equal(H[..., :4], c.residuals(X, y, Xq)[0][..., :4])  # x and y' agree with relu_gd's slots


def test_garg_and_akyurek_place_y_as_documented():
    X, y, Xq = np.ones((1, 2, 2)), np.array([[3.0, 4.0]]), np.full((1, 1, 2), 5.0)
    z = F.to_garg(X, y, Xq)
    assert z.shape == (1, 6, 2) and z[0, 1, 0] == 3.0 and z[0, 1, 1] == 0.0 and z[0, 5, 0] == 0.0
    H = F.to_akyurek(X, y, Xq)
    assert H.shape == (1, 5, 3) and H[0, 1, 0] == 3.0 and (H[0, 0, 1:] == 1).all() and H[0, 4, 0] == 0.0


def test_bad_shapes_raise():
    with pytest.raises(ConstructionError):
        F.to_von_oswald(np.ones((2, 3)), np.ones(2), np.ones((1, 3)))
    with pytest.raises(ConstructionError, match="D >="):
        F.to_bai(np.ones((1, 2, 3)), np.ones((1, 2)), np.ones((1, 1, 3)), 4)
