"""Save / load with safetensors: bit-identical round trips, and clear rejection of bad files."""
import copy
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from safetensors import safe_open

import constructions
from constructions.errors import ConstructionError
from verify.bench import example


@pytest.mark.parametrize("name", constructions.names())
@pytest.mark.parametrize("dtype", ["float64", "float32"])
def test_round_trip_is_bit_identical(name, dtype, tmp_path):
    c, X, y, Xq = example(name)  # a small instance from the construction's declaration
    c = c.to(dtype) if dtype == "float32" else c
    path = c.save(tmp_path / f"{name}.safetensors")
    c2 = constructions.load(path)
    assert c2.name == c.name and c2.params == c.params and c2.dtype == c.dtype
    assert np.array_equal(c.predict(X, y, Xq, check=False), c2.predict(X, y, Xq, check=False))
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    assert meta["name"] == name and meta["version"] == constructions.__version__ and "layout" in meta
    assert meta["module"] == constructions.registry.entry(name).module


def _saved(tmp_path):
    c = constructions.gd(3, 2, lr=0.1)
    return c, c.save(tmp_path / "gd.safetensors")


def test_a_changed_weight_in_the_file_is_rejected(tmp_path):
    _, path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    tensors = load_file(str(path))
    tensors["blocks.0.attn.W_Q"][0, 0, 0] += 1e-12
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ConstructionError, match="tampered"):
        constructions.load(path)


def test_changed_params_in_the_metadata_are_rejected(tmp_path):
    _, path = _saved(tmp_path)
    with safe_open(str(path), framework="pt") as f:
        meta = f.metadata()
    meta["params"] = meta["params"].replace("0.1", "0.2")
    save_file(load_file(str(path)), str(path), metadata=meta)
    with pytest.raises(ConstructionError, match="differ"):
        constructions.load(path)


@pytest.mark.parametrize("damage", ["truncate", "garbage", "not_ours", "missing"])
def test_broken_files_are_rejected_with_a_clear_error(tmp_path, damage):
    _, path = _saved(tmp_path)
    data = Path(path).read_bytes()
    if damage == "truncate":
        Path(path).write_bytes(data[: len(data) // 2])
    elif damage == "garbage":
        Path(path).write_bytes(b"\x00" * 64)
    elif damage == "not_ours":
        save_file({"w": torch.zeros(2)}, str(path), metadata={"format": "something-else"})
    else:
        path = tmp_path / "nope.safetensors"
    with pytest.raises(ConstructionError):
        constructions.load(path)


def test_a_modified_construction_is_not_saved(tmp_path):
    c = constructions.gd(3, 2, lr=0.1)
    bad = copy.copy(c)
    bad.model = copy.deepcopy(c.model)
    with torch.no_grad():
        bad.model.blocks[0].attn.W_O.mul_(2)
    with pytest.raises(ConstructionError, match="cannot be saved"):
        bad.save(tmp_path / "x.safetensors")
    bad.model.mask_query = False
    unmasked = constructions.Construction(c.name, c.params, c.blocks, c.layout, c.d, mask_query=False)
    with pytest.raises(ConstructionError, match="cannot be saved"):
        unmasked.save(tmp_path / "y.safetensors")


def test_no_pickle_anywhere_in_the_package():
    root = Path(constructions.__file__).parent.parent
    for pkg in ("constructions", "verify"):
        for src in (root / pkg).rglob("*.py"):
            text = src.read_text()
            assert "import pickle" not in text and "torch.load(" not in text and "pickle.load" not in text, src
