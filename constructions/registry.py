"""The one registry: every construction, declared once by its module, with its claims.

A construction module defines a factory (a function returning a
:class:`~constructions.construction.Construction` whose ``name`` is the factory's name,
its theorem in the docstring) and declares it with :func:`register`, together with its
claims (:class:`verify.claims.Claim`) and its benchmark row (:class:`Bench`).  Everything
else reads this registry: ``constructions.names()`` and ``constructions.<name>``,
``build``, ``save``/``load``, ``icl-verify list/check/prove/bench/docs``, the generated
``docs/claims.md``, and the test suite.

A user's module registers its constructions the same way; ``icl-verify --import
my_module`` (a module name or a ``.py`` path) imports it first, and an installed package
can declare it under the entry-point group :data:`ENTRY_POINTS` (loaded on first use of the
registry).  ``docs/extending.md`` walks through one.
"""
from __future__ import annotations

import dataclasses
import importlib
import importlib.util
import re
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

from .errors import ConstructionError

#: the entry-point group of installed packages that register constructions (each entry point
#: names a module; importing it registers)
ENTRY_POINTS = "icl_constructions"


@dataclass(frozen=True)
class Bench:
    """A construction's row of ``icl-verify bench`` (d = 20, n = 40 by default).

    ``params(d, n)``: the factory's keyword arguments besides d; ``labels``: ``"real"``,
    ``"binary"`` (0/1 labels) or ``"unit"`` (real, scaled to ``|y| <= 1``); ``n``: a fixed number
    of examples (else the bench's n);
    ``batch``: the batch of the row; ``baseline(prepared, construction)``: a zero-argument
    callable running the algorithm itself in torch on the same prompts (timed beside the
    model); ``centred``: the context inputs are centred (a domain that needs mean-zero inputs)."""

    params: Callable[[int, int], dict]
    labels: str = "real"
    n: int | None = None
    batch: int = 1024
    baseline: Callable | None = None
    centred: bool = False


@dataclass
class Entry:
    """One registered construction."""

    name: str
    factory: Callable
    module: str
    summary: str  # what each layer is, in a line
    source: str  # paper and section
    exactness: str  # "exact", or "approximate: <the bound>"
    bench: Bench | None = None
    claims: list = field(default_factory=list)
    paper_resources: str = ""  # the resources the paper states for its construction, in its words


@dataclass(frozen=True)
class Result:
    """One constructive result of a paper: its ``section``, ``what`` it states in a line, and the
    ids of the registered ``claims`` that check it (empty: not registered yet; ``note`` says
    what stands in the way or where it is planned)."""

    section: str
    what: str
    claims: tuple = ()
    note: str = ""


@dataclass(frozen=True)
class Paper:
    """A paper whose constructive results the toolkit covers (or not yet): ``key`` as the claims
    name it (``Claim.paper``), a ``title`` with its arXiv id, and its :class:`Result` list.  Declared
    by the module that holds the paper's constructions (:func:`register_paper`); ``docs/claims.md``
    shows each paper's coverage."""

    key: str
    title: str
    results: tuple = ()


_ENTRIES: dict[str, Entry] = {}
_CLAIMS: dict = {}  # id -> Claim, in registration order
_PAPERS: dict = {}  # key -> Paper, in registration order
_plugins_loaded = False


def _namespace() -> dict:
    """The package's names, its submodules included (a module still being imported is not bound
    in the package yet, so a factory named like it would be shadowed once it is)."""
    package = __name__.rpartition(".")[0]
    pkg = sys.modules.get(package)
    names = dict(vars(pkg)) if pkg is not None else {}
    if pkg is not None and getattr(pkg, "__path__", None):
        import pkgutil

        names.update({m.name: None for m in pkgutil.iter_modules(pkg.__path__)})
    return names


def register_paper(paper: Paper) -> Paper:
    """Declare a paper's constructive results (:class:`Paper`); its key must be new."""
    if not isinstance(paper, Paper):
        raise ConstructionError(f"register_paper needs a constructions.registry.Paper, got {paper!r}")
    if paper.key in _PAPERS:
        raise ConstructionError(f"the paper {paper.key!r} is declared already (by its constructions' module)")
    for r in paper.results:
        if not isinstance(r, Result):
            raise ConstructionError(f"{paper.key}: results must be constructions.registry.Result, got {r!r}")
    _PAPERS[paper.key] = paper
    return paper


def papers() -> list[Paper]:
    """Every declared paper, in declaration order."""
    load_plugins()
    return list(_PAPERS.values())


def register(factory: Callable, *, summary: str, source: str, exactness: str, claims=(), bench: Bench | None = None,
             paper_resources: str = ""):
    """Register ``factory`` (its ``__name__`` is the construction's name) with its claims; returns
    the factory.  Refuses a name that is taken or that would shadow a name of the package."""
    name = getattr(factory, "__name__", None)
    if not callable(factory) or not isinstance(name, str) or not re.fullmatch(r"[A-Za-z_][A-Za-z0-9_]*", name):
        raise ConstructionError(f"register needs a factory function with a name, got {factory!r}")
    if name in _ENTRIES:
        raise ConstructionError(f"a construction named {name!r} is registered already (by {_ENTRIES[name].module}); "
                                "pick another name, or unregister it first")
    if name in _namespace() or name.startswith("_"):
        raise ConstructionError(f"{name!r} is a name of the constructions package itself; pick another name")
    if bench is not None and not isinstance(bench, Bench):
        raise ConstructionError(f"bench must be a constructions.Bench, got {bench!r}")
    entry = Entry(name, factory, getattr(factory, "__module__", "?"), summary, source, exactness, bench,
                  paper_resources=paper_resources)
    _ENTRIES[name] = entry
    try:
        for c in claims:
            add_claim(c, factory)
    except ConstructionError:
        unregister(name)
        raise
    return factory


def add_claim(claim, construction: Callable | None = None):
    """Register ``claim`` (a :class:`verify.claims.Claim`) about ``construction`` (a registered
    factory; default ``claim.construction``; None for a claim about mathematics alone).
    Claims are frozen: the registry keeps a copy whose ``construction`` is set, and returns it
    (``constructions.registry.claim(id)`` gives it back later)."""
    if not hasattr(claim, "id") or not hasattr(claim, "evaluate"):
        raise ConstructionError(f"a claim must be a verify.claims.Claim, got {claim!r}")
    if not isinstance(claim.id, str) or not re.fullmatch(r"[a-z0-9][a-z0-9.\-]*", claim.id):
        raise ConstructionError(f"claim id {claim.id!r}: use lower-case letters, digits, '-' and '.' "
                                "(e.g. 'polyak64-heavy-ball')")
    if claim.id in _CLAIMS:
        raise ConstructionError(f"a claim with id {claim.id!r} is registered already")
    construction = claim.construction if construction is None else construction
    if construction is not None:
        name = getattr(construction, "__name__", None)
        if name not in _ENTRIES or _ENTRIES[name].factory is not construction:
            raise ConstructionError(f"claim {claim.id!r} is about {construction!r}, which is not a registered "
                                    "construction: register its factory first (constructions.register)")
        claim = dataclasses.replace(claim, construction=construction)
        _ENTRIES[name].claims.append(claim)
    _CLAIMS[claim.id] = claim
    return claim


def unregister(name: str) -> None:
    """Remove a construction and its claims (e.g. after a test that registered one)."""
    e = _ENTRIES.pop(name, None)
    if e is None:
        raise ConstructionError(f"no construction named {name!r} is registered")
    for c in e.claims:
        _CLAIMS.pop(c.id, None)


def remove_claim(claim_id: str) -> None:
    """Remove one claim."""
    c = _CLAIMS.pop(claim_id, None)
    if c is None:
        raise ConstructionError(f"no claim with id {claim_id!r} is registered")
    for e in _ENTRIES.values():
        e.claims[:] = [x for x in e.claims if x.id != claim_id]


# -- reading the registry ---------------------------------------------------------------------------
def load_plugins() -> None:
    """Import the modules that installed packages declare under :data:`ENTRY_POINTS` (once)."""
    global _plugins_loaded
    if _plugins_loaded:
        return
    _plugins_loaded = True
    from importlib.metadata import entry_points

    for ep in entry_points(group=ENTRY_POINTS):
        try:
            ep.load()
        except Exception as e:  # a broken plugin names itself instead of breaking silently
            raise ConstructionError(f"the installed plugin {ep.name!r} ({ep.value}) failed to register its "
                                    f"constructions: {type(e).__name__}: {e}; fix or uninstall that package") from e


def import_module(spec: str):
    """Import a user's module that registers constructions: a module name (``my_pkg.mod``) or
    the path of a ``.py`` file.  Returns the module."""
    path = Path(spec)
    try:
        if spec.endswith(".py") or path.is_file():
            if not path.is_file():
                raise ConstructionError(f"--import {spec}: no such file")
            name = path.stem
            known = sys.modules.get(name)
            if known is not None:
                if Path(getattr(known, "__file__", "") or "").resolve() == path.resolve():
                    return known
                raise ConstructionError(f"--import {spec}: a module named {name!r} is imported already (from "
                                        f"{getattr(known, '__file__', 'built in')}); rename the file")
            module_spec = importlib.util.spec_from_file_location(name, path)
            module = importlib.util.module_from_spec(module_spec)
            sys.modules[name] = module
            module_spec.loader.exec_module(module)
            return module
        if "" not in sys.path and str(Path.cwd()) not in sys.path:
            sys.path.insert(0, str(Path.cwd()))
        return importlib.import_module(spec)
    except ConstructionError:
        raise
    except ImportError as e:
        raise ConstructionError(f"--import {spec}: {e}; give a module importable from here or the path of "
                                "a .py file") from None


def entries() -> list[Entry]:
    """Every registered construction, in registration order."""
    load_plugins()
    return list(_ENTRIES.values())


def names() -> list[str]:
    """Names of all registered constructions (sorted)."""
    return sorted(e.name for e in entries())


def entry(name: str) -> Entry:
    """The registered construction ``name`` (factory, module, summary, source, exactness,
    bench row, claims)."""
    load_plugins()
    try:
        return _ENTRIES[name]
    except KeyError:
        raise ConstructionError(f"unknown construction {name!r}; known: {names()} (a construction of your "
                                "own is known once its module is imported: icl-verify --import MODULE)") from None


def build(name: str, **params):
    """Build the construction ``name`` with its factory's keyword arguments."""
    e = entry(name)
    try:
        c = e.factory(**params)
    except TypeError as err:  # a missing or unknown keyword
        raise ConstructionError(f"{name}: {err}") from None
    except ArithmeticError as err:  # a user's factory overflowing on extreme parameters
        raise ConstructionError(f"{name}({params}): the parameters overflow while the weights are computed ({err}); "
                                "use parameters of moderate magnitude") from None
    if getattr(c, "name", None) != name:
        raise ConstructionError(f"the factory registered as {name!r} returned a construction named "
                                f"{getattr(c, 'name', None)!r}: name the Construction after its factory")
    return c


def claims(ids=None) -> list:
    """Claims by id (all, in registration order, when ``ids`` is empty)."""
    load_plugins()
    if not ids:
        return list(_CLAIMS.values())
    unknown = [i for i in ids if i not in _CLAIMS]
    if unknown:
        raise ConstructionError(f"unknown claim id(s) {unknown}; known: {sorted(_CLAIMS)} (a claim of your own is "
                                "known once its module is imported: icl-verify --import MODULE)")
    return [_CLAIMS[i] for i in ids]


def claim(claim_id: str):
    """The registered claim with this id."""
    return claims([claim_id])[0]
