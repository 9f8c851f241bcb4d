"""delta_rule (Schlag et al. 2021): one exact LMS update per layer; Akyurek's one-pass SGD, exactly."""
import numpy as np
import pytest

import constructions
from constructions import ConstructionError
from constructions import raw
from verify.reference import LMS
from verify.tolerance import assert_trace_matches, tolerance


def _prompt(B=2, n=6, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, n, d)) * 0.4, rng.normal(size=(B, n)), rng.normal(size=(B, 2, d)) * 0.4


def test_every_layer_is_one_lms_update_and_the_slot_holds_the_iterate():
    X, y, Xq = _prompt()
    c = constructions.delta_rule(3, 6, 0.3)
    assert_trace_matches(c, LMS(0.3), X, y, Xq)
    ref = LMS(0.3).fit(X, y)
    w = c.read_slot(X, y, Xq, "w")  # [S+1, B, T, d]: the iterate in every token
    tol = tolerance(c.dtype, 6, 3, ref.magnitude_.max() * np.ones(1))  # the error model at the iterate's size
    assert np.abs(w - ref.iterates_[:, :, None, :]).max() <= tol.max()
    # the order matters: the examples reversed give other iterates
    assert np.abs(LMS(0.3).fit(X[:, ::-1], y[:, ::-1]).trace(Xq) - ref.trace(Xq)).max() > 1e-3


def test_it_is_akyureks_one_pass_sgd_exactly():
    """raw_sgd (lam = 0, step lr on (w.x - y)^2) is the same pass from the GeLU primitives, off by
    its O(s^2) term; delta_rule with beta = 2 lr has no such term."""
    X, y, Xq = _prompt(B=1, n=5, d=2, seed=1)
    lr = 0.1
    c = constructions.delta_rule(2, 5, 2 * lr)
    exact = c.trace(X, y, Xq)[:, 0, 0]
    tol = assert_trace_matches(c, LMS(2 * lr), X, y, Xq).tol[:, 0, 0]
    err, s2K, rem = raw.sgd_pass_errors(X, y, Xq[:, 0], np.zeros(2), lr, 0.0, scales=(1e-3,))[0]
    approx = constructions.raw_sgd(2, 5, lr).trace(X, y, Xq[:, :1])[:, 0, 0]
    assert (np.abs((approx - exact) - s2K[0]) <= rem[0] + tol).all()  # the difference is raw_sgd's s^2 K term
    assert np.abs(s2K[0, -1]) > 10 * (rem[0, -1] + tol[-1])  # and that term is resolved at the last step


def test_bad_input_is_refused():
    X, y, Xq = _prompt(n=4, d=2)
    c = constructions.delta_rule(2, 4, 0.3)
    with pytest.raises(ConstructionError, match="n=4"):
        c.predict(X[:, :3], y[:, :3], Xq)
    with pytest.raises(ConstructionError, match="diverges"):
        c.predict(X * 10, y, Xq)
    with pytest.raises(ConstructionError, match="mask_const"):
        constructions.delta_rule(2, 4, 0.3, mask_const=1e-3).predict(X, y, Xq)
    for bad in (dict(beta=0.0), dict(n=0), dict(mask_const=float("nan"))):
        with pytest.raises(ConstructionError):
            constructions.delta_rule(**{**dict(d=2, n=4, beta=0.3), **bad})
