"""Bad input raises ConstructionError with a message naming the problem."""
import numpy as np
import pytest
import torch

import constructions
from constructions import ConstructionError


@pytest.fixture
def c():
    return constructions.gd(d=3, steps=2, lr=0.1)


def _ok(B=2, n=5, m=2, d=3):
    rng = np.random.default_rng(0)
    return rng.normal(size=(B, n, d)) * 0.5, rng.normal(size=(B, n)), rng.normal(size=(B, m, d))


@pytest.mark.parametrize("method", ["predict", "trace", "residuals"])
def test_valid_input_passes(c, method):
    getattr(c, method)(*_ok())


@pytest.mark.parametrize(
    "mutate, match",
    [
        (lambda X, y, Xq: (X[0, 0], y, Xq), "expected X"),
        (lambda X, y, Xq: (X, y[:, :-1], Xq), "y has shape"),
        (lambda X, y, Xq: (X, y, Xq[..., :2]), "Xq has shape"),
        (lambda X, y, Xq: (X[..., :2], y, Xq[..., :2]), "built for d=3"),
        (lambda X, y, Xq: (X[:, :0], y[:, :0], Xq), "at least one"),
        (lambda X, y, Xq: (X, y, Xq[:, :0]), "at least one"),
        (lambda X, y, Xq: (np.where(X > 1, np.nan, X), y, Xq), "X contains NaN"),
        (lambda X, y, Xq: (X, np.full_like(y, np.inf), Xq), "y contains NaN or inf"),
        (lambda X, y, Xq: (X, y, Xq * np.nan), "Xq contains NaN"),
        (lambda X, y, Xq: (X.astype(complex), y, Xq), "real numbers"),
        (lambda X, y, Xq: (X > 0, y, Xq), "real numbers"),
        (lambda X, y, Xq: ([[1.0, 2.0], [3.0]], y, Xq), "could not be read|numeric"),
        (lambda X, y, Xq: (X, y[None], Xq), "expected X"),
    ],
)
def test_bad_prompts_raise(c, mutate, match):
    X, y, Xq = _ok()
    X[0, 0, 0] = 2.0  # so the NaN mask above hits something
    with pytest.raises(ConstructionError, match=match):
        c.predict(*mutate(X, y, Xq))


def test_float32_overflow_is_reported():
    c = constructions.gd(d=3, steps=1, lr=1e-80).to("float32")
    X, y, Xq = _ok()
    with pytest.raises(ConstructionError, match="NaN or inf"):
        c.predict(X * 1e50, y, Xq)


def test_torch_inputs_are_validated_too(c):
    X, y, Xq = (torch.from_numpy(a) for a in _ok())
    with pytest.raises(ConstructionError, match="built for d=3"):
        c.predict(X[..., :2], y, Xq[..., :2])


def test_unstable_step_size_raises_naming_the_limit():
    X, y, Xq = _ok()
    lmax = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / 5)[:, -1].max()
    c = constructions.gd(3, 2, lr=2.5 / lmax)
    with pytest.raises(ConstructionError, match="stability limit"):
        c.predict(X, y, Xq)
    c.predict(X, y, Xq, check=False)  # the explicit opt-out runs it
    constructions.gd(3, 2, lr=1.99 / lmax).predict(X, y, Xq)
    with pytest.raises(ConstructionError, match="lam"):
        constructions.gd(3, 2, lr=1.9 / lmax, lam=lmax).predict(X, y, Xq)


def test_unstable_gdpp_and_preconditioner_raise():
    X, y, Xq = _ok()
    lmax = np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / 5)[:, -1].max()
    with pytest.raises(ConstructionError, match="gamma"):
        constructions.gd_plus_plus(3, 2, 1.0 / lmax, 2.5 / lmax).predict(X, y, Xq)
    with pytest.raises(ConstructionError, match="spectral radius"):
        constructions.preconditioned_gd(3, 2, -0.1 * np.eye(3)).predict(X, y, Xq)


@pytest.mark.parametrize(
    "factory, kwargs, match",
    [
        (constructions.gd, dict(d=0, steps=1, lr=0.1), "d must be a positive integer"),
        (constructions.gd, dict(d=2.5, steps=1, lr=0.1), "d must be a positive integer"),
        (constructions.gd, dict(d=2, steps=0, lr=0.1), "steps"),
        (constructions.gd, dict(d=2, steps=1, lr=-0.1), "lr must be finite and > 0"),
        (constructions.gd, dict(d=2, steps=1, lr=float("nan")), "lr"),
        (constructions.gd, dict(d=2, steps=1, lr=0.1, lam=-1), "lam"),
        (constructions.gd, dict(d=2, steps=1, lr="fast"), "lr must be a real number"),
        (constructions.gd_plus_plus, dict(d=2, steps=1, lr=0.1, gamma=-1), "gamma"),
        (constructions.preconditioned_gd, dict(d=2, steps=2, precond=np.eye(3)), "precond must have shape"),
        (constructions.preconditioned_gd, dict(d=2, steps=1, precond=np.full((2, 2), np.nan)), "NaN"),
    ],
)
def test_bad_parameters_raise(factory, kwargs, match):
    with pytest.raises(ConstructionError, match=match):
        factory(**kwargs)


def test_bad_dtype_and_unknown_construction():
    with pytest.raises(ConstructionError, match="dtype"):
        constructions.gd(2, 1, 0.1).to("float16")
    with pytest.raises(ConstructionError, match="unknown construction"):
        constructions.build("nope")
    with pytest.raises(ConstructionError, match="gd"):
        constructions.build("gd", d=2)  # missing arguments
