"""Hand-set transformer weights that carry out in-context learning algorithms.

Every construction is a factory ``constructions.<name>(**params)`` returning a
:class:`~constructions.construction.Construction`; ``names()`` lists them and
``build(name, **params)`` builds one by name.

>>> import numpy as np, constructions
>>> c = constructions.gd(d=2, steps=3, lr=0.5)
>>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = X @ np.array([2.0, -1.0])
>>> c.trace(X, y, np.array([[1.0, 1.0]])).shape
(3, 1)
"""
from .construction import Construction
from .errors import ConstructionError
from .io import load
from .layout import Readout, ResidualLayout
from .bai import binary_test, lasso_ista, logistic_gd, relu_gd, ridge_select
from .linear_gd import gd, gd_plus_plus, preconditioned_gd
from .raw import RawConfig, raw_gd
from .ridge import ridge_newton
from .sherman_morrison import ridge_sherman_morrison
from .transformer import AttentionSpec, BlockSpec, MLPSpec, Transformer

__version__ = "0.1.0"

_FACTORIES = {
    f.__name__: f
    for f in (gd, gd_plus_plus, preconditioned_gd, relu_gd, lasso_ista, logistic_gd, ridge_select, ridge_newton,
              ridge_sherman_morrison, raw_gd, binary_test)
}


def names() -> list[str]:
    """Names of all registered constructions."""
    return sorted(_FACTORIES)


def build(name: str, **params) -> Construction:
    """Build the construction ``name`` with its factory's keyword arguments."""
    try:
        factory = _FACTORIES[name]
    except KeyError:
        raise ConstructionError(f"unknown construction {name!r}; known: {names()}") from None
    try:
        return factory(**params)
    except TypeError as e:
        raise ConstructionError(f"{name}: {e}") from None


__all__ = [
    "Construction", "ConstructionError", "ResidualLayout", "Readout", "Transformer",
    "AttentionSpec", "BlockSpec", "MLPSpec", "RawConfig", "names", "build", "load", *_FACTORIES,
]
