"""Save and load constructions with safetensors (no pickle anywhere).

A file holds the model's parameters (``blocks.{l}.attn.W_Q`` ... in TransformerLens
naming, in the model's dtype) and string metadata: ``format``, the toolkit
``version``, the construction ``name``, the ``module`` that registers it, its factory
``params`` (JSON), its ``layout`` (JSON) and ``dtype``.  Any registered construction can
be saved; loading one of a user's needs its module imported first (a file never imports
code: the module is only named in the error).  :func:`load` rebuilds the construction from the
metadata with its factory and accepts the file only if every stored tensor is
bit-identical to the rebuilt one, so a loaded model gives bit-identical predictions
and a tampered, truncated or mismatched file is rejected with a
:class:`~constructions.errors.ConstructionError`.
"""
from __future__ import annotations

import json
from pathlib import Path

import torch

from .errors import ConstructionError

FORMAT = "icl-constructions/1"


def _state(c) -> dict:
    return {k: v.detach().cpu().contiguous() for k, v in c.model.state_dict().items()}


def _rebuild(name: str, params: dict, dtype: str):
    from . import registry

    c = registry.build(name, **params)
    return c.to(dtype.replace("torch.", "")) if dtype != "torch.float64" else c


def save(c, path) -> Path:
    """Write construction ``c`` to ``path`` (safetensors).  Refuses a construction whose
    weights were changed after its factory built it (it could not be rebuilt on load)."""
    from safetensors.torch import save_file

    from . import __version__, registry

    try:
        params = json.dumps(c.params)
    except TypeError as e:
        raise ConstructionError(f"the parameters of {c.name} are not JSON-serialisable: {e}") from None
    again = _rebuild(c.name, c.params, str(c.dtype))
    mine, rebuilt = _state(c), _state(again)
    if mine.keys() != rebuilt.keys() or any(not torch.equal(mine[k], rebuilt[k]) for k in mine) \
            or c.mask_query != again.mask_query or c.model.mask_query != again.model.mask_query:
        raise ConstructionError(f"this {c.name} construction differs from what its factory builds from its params "
                                "(weights or masking changed after building), so it cannot be saved reproducibly")
    meta = dict(format=FORMAT, version=__version__, name=c.name, module=registry.entry(c.name).module, params=params,
                dtype=str(c.dtype), layout=json.dumps(c.layout.describe()))
    path = Path(path)
    save_file(mine, str(path), metadata=meta)
    return path


def load(path):
    """Read a file written by :func:`save`: rebuild the construction from its metadata and
    check that every stored tensor equals the rebuilt one bit for bit."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from . import __version__

    path = Path(path)
    if not path.is_file():
        raise ConstructionError(f"no such file: {path}")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            stored = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ConstructionError(f"{path} is not a readable safetensors file ({e}); it may be truncated or "
                                "tampered with") from None
    if meta.get("format") != FORMAT:
        raise ConstructionError(f"{path} is not an icl-constructions file (format {meta.get('format')!r}, "
                                f"expected {FORMAT!r})")
    try:
        name, params, dtype = meta["name"], json.loads(meta["params"]), meta["dtype"]
    except (KeyError, json.JSONDecodeError) as e:
        raise ConstructionError(f"{path} has broken metadata ({e})") from None
    from . import registry

    if name not in registry.names():
        raise ConstructionError(f"{path} holds a {name!r} construction, which is not registered here; import the "
                                f"module that registers it first ({meta.get('module', 'unknown')!r}, e.g. "
                                "icl-verify --import MODULE)")
    c = _rebuild(name, params, dtype)
    rebuilt = _state(c)
    if stored.keys() != rebuilt.keys():
        raise ConstructionError(f"{path}: stored tensors {sorted(set(stored) ^ set(rebuilt))[:4]} do not match "
                                f"the {name} construction's parameters")
    bad = [k for k in rebuilt if stored[k].dtype != rebuilt[k].dtype or not torch.equal(stored[k], rebuilt[k])]
    if bad:
        raise ConstructionError(
            f"{path}: {len(bad)} stored tensor(s) (first: {bad[0]}) differ from what {name}({params}) builds "
            f"with icl-constructions {__version__} (file written by {meta.get('version')}); the file was "
            "tampered with or comes from a version whose weights differ")
    if json.dumps(c.layout.describe()) != meta.get("layout"):
        raise ConstructionError(f"{path}: the stored layout differs from the rebuilt {name} layout")
    return c
