"""Hand-set transformer weights that carry out in-context learning algorithms.

Every construction is a factory ``constructions.<name>(**params)`` returning a
:class:`~constructions.construction.Construction`, declared once, with its claims, by its
module (:func:`register`); ``names()`` lists them and ``build(name, **params)`` builds one
by name.  The building blocks are :mod:`constructions.parts`; docs/extending.md shows how
to declare a construction of your own.

>>> import numpy as np, constructions
>>> c = constructions.gd(d=2, steps=3, lr=0.5)
>>> X = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]); y = X @ np.array([2.0, -1.0])
>>> c.trace(X, y, np.array([[1.0, 1.0]])).shape
(3, 1)
"""
from . import parts, registry
from .construction import Construction
from .errors import ConstructionError
from .io import load
from .layout import Readout, ResidualLayout
from .registry import Bench, add_claim, build, claims, entries, entry, names, register, remove_claim, unregister
from .spec import AttentionSpec, BlockSpec, MLPSpec
from .transformer import Transformer

__version__ = "0.2.0"

# the toolkit's construction families: importing a module registers its constructions and claims
from . import linear_gd, momentum, features, softmax_heads, copying, bai, ridge, sherman_morrison, raw, softmax_regression, kernel_smoother, functional, fast_weights, optimum, giannou, two_layer  # noqa: E402,F401,E501
from .raw import RawConfig  # noqa: E402


def __getattr__(name: str):
    """``constructions.<name>``: the factory of a registered construction (a user's or an
    installed plugin's too)."""
    registry.load_plugins()
    try:
        return registry._ENTRIES[name].factory
    except KeyError:
        raise AttributeError(f"module 'constructions' has no attribute {name!r}") from None


def __dir__():
    return sorted(set(globals()) | set(registry.names()))


__all__ = [
    "Construction", "ConstructionError", "ResidualLayout", "Readout", "Transformer", "AttentionSpec", "BlockSpec",
    "MLPSpec", "RawConfig", "Bench", "parts", "registry", "register", "add_claim", "remove_claim", "unregister", "names",
    "build",
    "entry", "entries", "claims", "load",
]
