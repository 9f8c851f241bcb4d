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
import os
import stat
import tempfile
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


def _path(path, what: str) -> Path:
    if not isinstance(path, (str, os.PathLike)) or isinstance(path, bytes):
        raise ConstructionError(f"{what} needs a file path (a str or os.PathLike), got {type(path).__name__}")
    p = Path(path)
    if not str(p).strip() or p.name in ("", ".", ".."):
        raise ConstructionError(f"{what}: {str(path)!r} is not a file name")
    return p


def _bytes_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Same dtype, shape and bytes (``torch.equal`` would accept -0.0 for 0.0)."""
    return a.dtype == b.dtype and a.shape == b.shape and a.contiguous().view(torch.uint8).numpy().tobytes() == \
        b.contiguous().view(torch.uint8).numpy().tobytes()


def save(c, path, overwrite: bool = False) -> Path:
    """Write construction ``c`` to ``path`` (safetensors) and return the path.

    The file is written to a temporary file in the same folder and renamed into place, so a
    failed save leaves no partial file and an existing file is replaced whole or not at all.
    An existing file is refused unless ``overwrite=True``; a target that is not a regular file
    (a folder, a FIFO, a device, a symbolic link) is always refused.  Refuses a construction
    whose weights were changed after its factory built it (it could not be rebuilt on load)."""
    from . import __version__, registry

    path = _writable(path, overwrite, "save")
    try:
        params = json.dumps(c.params, allow_nan=False)
    except (TypeError, ValueError) as e:
        raise ConstructionError(f"the parameters of {c.name} are not JSON-serialisable: {e}") from None
    again = _rebuild(c.name, c.params, str(c.dtype))
    mine, rebuilt = _state(c), _state(again)
    if mine.keys() != rebuilt.keys() or any(not _bytes_equal(mine[k], rebuilt[k]) for k in mine) \
            or c.mask_query != again.mask_query or c.model.mask_query != again.model.mask_query:
        raise ConstructionError(f"this {c.name} construction differs from what its factory builds from its params "
                                "(weights or masking changed after building), so it cannot be saved reproducibly")
    meta = dict(format=FORMAT, version=__version__, name=c.name, module=registry.entry(c.name).module, params=params,
                dtype=str(c.dtype), layout=json.dumps(c.layout.describe()))
    return write_safetensors(mine, path, meta, overwrite)


def _writable(path, overwrite, what: str) -> Path:
    """``path`` checked for writing: a regular file's path in an existing folder; an existing file
    only with ``overwrite=True``, and never a folder, a FIFO, a device or a symbolic link."""
    path = _path(path, what)
    if not isinstance(overwrite, bool):
        raise ConstructionError(f"overwrite must be True or False, got {overwrite!r}")
    if os.path.lexists(path):
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            kind = "a symbolic link" if stat.S_ISLNK(st.st_mode) else "a folder" if stat.S_ISDIR(st.st_mode) \
                else "not a regular file"
            raise ConstructionError(f"{what}: {path} exists and is {kind}; save to a new regular file's path")
        if not overwrite:
            raise ConstructionError(f"{what}: {path} exists; pass overwrite=True to replace it, or choose another path")
    folder = path.parent if str(path.parent) else Path(".")
    if not folder.is_dir():
        raise ConstructionError(f"{what}: the folder {folder} does not exist; create it first")
    return path


def write_safetensors(state: dict, path, metadata: dict, overwrite: bool = False) -> Path:
    """Write ``state`` (name -> tensor) and string ``metadata`` to ``path`` as safetensors: to a
    temporary file in the same folder, renamed into place, so a failed write leaves no partial file
    and an existing file is replaced whole or not at all (and only with ``overwrite=True``)."""
    from safetensors.torch import save_file

    path = _writable(path, overwrite, "save")
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent if str(path.parent) else ".")
    os.close(fd)
    try:
        save_file(state, tmp, metadata=metadata)
        os.replace(tmp, path)
    except OSError as e:
        raise ConstructionError(f"save: could not write {path}: {e.strerror or e}") from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return path


def load(path, max_params: int | None = None):
    """Read a file written by :func:`save`: rebuild the construction from its metadata and
    check that every stored tensor equals the rebuilt one bit for bit (bytes, so ``-0.0`` is
    not ``0.0``).  The metadata is checked, and the sizes it asks for are held to the size
    limits (:func:`constructions.parts.size_limit`; ``max_params`` raises the parameter limit
    for this file), before any tensor is read or any weight is built."""
    from safetensors import SafetensorError
    from safetensors.torch import safe_open

    from . import __version__, parts

    path = _path(path, "load")
    if not path.exists():
        raise ConstructionError(f"no such file: {path}")
    if not path.is_file():
        raise ConstructionError(f"{path} is not a regular file")
    try:
        with safe_open(str(path), framework="pt") as f:
            meta = f.metadata() or {}
            if meta.get("format") != FORMAT:
                hint = ("; it is a trained checkpoint: load it with verify.train.load_trained(path)"
                        if meta.get("format", "").startswith("icl-constructions-trained/") else "")
                raise ConstructionError(f"{path} is not an icl-constructions file (format {meta.get('format')!r}, "
                                        f"expected {FORMAT!r}){hint}")
            try:
                name, params, dtype = meta["name"], json.loads(meta["params"]), meta["dtype"]
            except (KeyError, ValueError, RecursionError) as e:
                raise ConstructionError(f"{path} has broken metadata ({type(e).__name__}: {e})") from None
            if not isinstance(params, dict) or dtype not in ("torch.float64", "torch.float32"):
                raise ConstructionError(f"{path} has broken metadata: params must be a JSON object and dtype "
                                        f"torch.float64 or torch.float32, got {type(params).__name__} and {dtype!r}")
            from . import registry

            if name not in registry.names():
                raise ConstructionError(f"{path} holds a {name!r} construction, which is not registered here; import "
                                        f"the module that registers it first ({meta.get('module', 'unknown')!r}, "
                                        "e.g. icl-verify --import MODULE)")
            with parts.size_limit(max_params=max_params):
                c = _rebuild(name, params, dtype)
            rebuilt = _state(c)
            if set(f.keys()) != rebuilt.keys():
                raise ConstructionError(f"{path}: stored tensors {sorted(set(f.keys()) ^ set(rebuilt))[:4]} do not "
                                        f"match the {name} construction's parameters")
            bad = [k for k in sorted(rebuilt) if not _bytes_equal(f.get_tensor(k), rebuilt[k])]
    except ConstructionError:
        raise
    except (SafetensorError, OSError, ValueError) as e:
        raise ConstructionError(f"{path} is not a readable safetensors file ({e}); it may be truncated or "
                                "tampered with") from None
    if bad:
        raise ConstructionError(
            f"{path}: {len(bad)} stored tensor(s) (first: {bad[0]}) differ from what {name}({params}) builds "
            f"with icl-constructions {__version__} (file written by {meta.get('version')}); the file was "
            "tampered with or comes from a version whose weights differ")
    if json.dumps(c.layout.describe()) != meta.get("layout"):
        raise ConstructionError(f"{path}: the stored layout differs from the rebuilt {name} layout")
    return c
