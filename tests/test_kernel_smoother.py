"""Softmax attention as the Nadaraya-Watson kernel smoother (constructions.kernel_smoother)."""
import numpy as np
import pytest

import constructions
from constructions import ConstructionError
from verify.tolerance import assert_trace_matches


def test_nw_smoother_is_the_kernel_smoother_and_the_norm_slot_makes_it_gaussian():
    from verify.reference import NadarayaWatson

    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(2, 9, 3)), rng.normal(size=(2, 9)), rng.normal(size=(2, 4, 3))
    for kernel in ("exp", "gaussian"):
        assert_trace_matches(constructions.nw_kernel_smoother(3, 2.0, kernel), NadarayaWatson(2.0, kernel), X, y, Xq)
    # without the key's -beta |x_i|^2/2 term the Gaussian smoother is the exp one, which differs
    gauss, expo = (NadarayaWatson(2.0, k).fit(X, y).predict(Xq) for k in ("gaussian", "exp"))
    assert np.abs(gauss - expo).max() > 0.1
    # far beyond the underflow of every weight but the nearest key's: the nearest neighbour's label
    c = constructions.nw_kernel_smoother(3, 1e4, "gaussian")
    nearest = np.take_along_axis(y[:, None, :], ((Xq[:, :, None] - X[:, None]) ** 2).sum(-1).argmin(-1)[..., None], -1)
    assert np.array_equal(c.predict(X, y, Xq), nearest[..., 0])


def test_nw_smoother_refuses_bad_input():
    for bad in (dict(beta=0.0), dict(beta=float("inf")), dict(kernel="cosine"), dict(d=0)):
        with pytest.raises(ConstructionError):
            constructions.nw_kernel_smoother(**{**dict(d=2, beta=1.0), **bad})
