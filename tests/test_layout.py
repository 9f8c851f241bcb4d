import numpy as np
import pytest

import constructions
from constructions import ConstructionError, Readout, ResidualLayout


def test_slots_are_consecutive_and_named():
    lay = ResidualLayout.of([("x", 3, "x"), ("y", 1, "y"), ("one", 1, "one")], Readout("y", -1.0))
    assert lay.width == 5
    assert [(s.name, s.start, s.size) for s in lay.slots] == [("x", 0, 3), ("y", 3, 1), ("one", 4, 1)]
    assert "y" in lay and "w" not in lay
    assert lay.x_dim() == 3


def test_read_and_write_place_blocks_in_their_slots():
    lay = ResidualLayout.of([("x", 2, "x"), ("y", 1, "y")], Readout("y"))
    M = np.array([[1.0, 2.0], [3.0, 4.0]])
    R = lay.read({"x": M, "y": [[5.0, 6.0]]}, 2)
    np.testing.assert_array_equal(R, [[1, 2], [3, 4], [5, 6]])
    W = lay.write({"y": [[7.0], [8.0]]}, 2)
    np.testing.assert_array_equal(W, [[0, 0, 7], [0, 0, 8]])


@pytest.mark.parametrize(
    "spec, readout, match",
    [
        ([("x", 2, "x"), ("x", 1, "y")], Readout("x"), "duplicate"),
        ([("x", 2, "x")], Readout("y"), "readout slot"),
        ([("x", 2, "x"), ("y", 1, "y")], Readout("x"), "readout slot"),
        ([("x", 2, "bogus")], Readout("x"), "fill"),
        ([("x", 0, "x")], Readout("x"), "size"),
    ],
)
def test_bad_layouts_raise(spec, readout, match):
    with pytest.raises(ConstructionError, match=match):
        ResidualLayout.of(spec, readout)


def test_unknown_slot_and_bad_block_shape_raise():
    lay = ResidualLayout.of([("x", 2, "x"), ("y", 1, "y")], Readout("y"))
    with pytest.raises(ConstructionError, match="no slot 'w'"):
        lay["w"]
    with pytest.raises(ConstructionError, match="shape"):
        lay.read({"x": np.eye(3)}, 3)


def test_embedding_fills_every_slot_bit_exactly():
    c = constructions.gd(d=3, steps=1, lr=0.1, lam=0.5)
    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(2, 4, 3)), rng.normal(size=(2, 4)), rng.normal(size=(2, 2, 3))
    h = c.residuals(X, y, Xq)[0]  # the input stream [B, T, D]
    L = c.layout
    np.testing.assert_array_equal(h[:, :4, L["x"].index], X)
    np.testing.assert_array_equal(h[:, 4:, L["x"].index], Xq)
    np.testing.assert_array_equal(h[:, :4, L["y"].start], y)
    np.testing.assert_array_equal(h[:, 4:, L["y"].start], 0.0)
    np.testing.assert_array_equal(h[:, :4, L["y0"].start], y)
    np.testing.assert_array_equal(h[:, :, L["one"].start], 1.0)
    assert h.shape == (2, 6, L.width)


def test_readout_is_part_of_the_layout():
    c = constructions.gd(d=2, steps=1, lr=0.1)
    assert c.layout.readout == Readout("y", -1.0)
    desc = c.layout.describe()
    assert desc[-1] == {"readout": "y", "sign": -1.0}
