"""The reproducers of the hardening review, one per class of fault (docs/reliability.md): each
input must now give a correct finite answer or a ConstructionError that names the fix."""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open
from safetensors.torch import save_file

import constructions
from constructions import ConstructionError, formats, parts
from verify.bench import example
from verify.cli import main

ROOT = Path(__file__).resolve().parent.parent
ONES = (np.ones((4, 3)) / 3, np.ones(4), np.ones((1, 3)) / 3)


def test_overflowed_covariance_never_reaches_the_eigenvalue_solver():
    """It crashed the process inside MKL: run it in a subprocess, so a crash fails this test."""
    code = ("import numpy as np, constructions\n"
            "c = constructions.preconditioned_gd(d=3, steps=1, precond=np.eye(3) * 0.1)\n"
            "for s in (1e154, 1e155, 1e300):\n"
            "    try:\n"
            "        c.predict(np.full((4, 3), s), np.ones(4), np.ones((1, 3)))\n"
            "    except constructions.ConstructionError as e:\n"
            "        print('refused', e)\n")
    r = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert r.stdout.count("refused") == 3 and "rescale" in r.stdout


@pytest.mark.parametrize("name", ["gd", "gd_plus_plus", "preconditioned_gd"])
@pytest.mark.parametrize("dtype, scale", [("float64", 1e154), ("float32", 1e19)])
def test_overflow_in_the_forward_pass_is_refused(name, dtype, scale):
    c, X, y, Xq = example(name)
    with pytest.raises(ConstructionError, match="rescale"):
        c.to(dtype).predict(X, np.full_like(y, scale), Xq)


def test_a_forward_pass_that_overflows_raises_and_check_false_shows_it():
    c = constructions.ridge_newton(d=3, lam=1.27e283, mask_const=1.27e283)  # the prompt is benign, the weights huge
    with pytest.raises(ConstructionError, match="overflowed float64"):
        c.predict(*ONES)
    assert not np.isfinite(c.predict(*ONES, check=False)).all()  # the explicit opt-out sees it


@pytest.mark.parametrize("scale", [1e-120, 1e120])
def test_prompts_outside_the_scale_range_are_refused(scale):
    c, X, y, Xq = example("gd")
    with pytest.raises(ConstructionError, match="outside"):
        c.predict(X * scale, y, Xq * scale)
    lo, hi = parts.scale_range(torch.float32)
    assert 4e-11 < lo < 5e-11 and 3e10 < hi < 4e10  # the range docs/reliability.md states
    with pytest.raises(ConstructionError, match="float32"):
        c.to("float32").predict(X, y * 1e-12, Xq)


def test_raw_gd_checks_its_pass_through_domain():
    c = constructions.raw_gd(3, [0.1, 0.2, -0.1], 0.1)
    with pytest.raises(ConstructionError, match="passthrough"):
        c.predict(np.array([[37.0, 0.0, 0.0]]), np.ones(1), np.ones((1, 3)))
    got = c.predict(np.array([[1.0, 0.5, 0.0]]), np.array([0.3]), np.array([[0.2, 0.1, 0.4]]))
    assert np.isfinite(got).all()
    for bad in (dict(lr=1e308), dict(config=dict(attn_gap=float("nan"))), dict(config=dict(mul_scale=-1e-3)),
                dict(config=dict(nonsense=1.0)), dict(config="big")):
        with pytest.raises(ConstructionError):
            constructions.raw_gd(**{**dict(d=3, w0=[0.1, 0.2, -0.1], lr=0.1), **bad})


@pytest.mark.parametrize("build", [
    lambda: constructions.binary_test(d=3, eps=1e-320),
    lambda: constructions.ridge_newton(d=3, lam=1.27e283, mask_const=1.27e283).predict(*ONES),
    lambda: constructions.preconditioned_gd(d=3, steps=1, precond=np.eye(3) * 1j),
    lambda: constructions.ridge_newton(d=2, lam=1e-17),
    lambda: constructions.logistic_gd(d=2, steps=2, lr=0.1, heads=4, x_bound=1e-200),
    lambda: constructions.logistic_gd(d=2, steps=2, lr=0.1, heads=4, x_bound=1e200),
])
def test_extreme_parameters_are_refused(build):
    with pytest.raises(ConstructionError):
        build()


@pytest.fixture
def no_blocks(monkeypatch):
    """Fail if any block is built: a refusal must come before the factory allocates."""
    def built(*a, **k):
        raise AssertionError("a block was built before the size was refused")

    monkeypatch.setattr(parts, "block", built)


@pytest.mark.parametrize("kwargs", [dict(steps=2**63), dict(steps=10**7), dict(d=20000)])
def test_huge_sizes_are_refused_before_allocating(kwargs, no_blocks):
    with pytest.raises(ConstructionError, match="size limit"):
        constructions.gd(**{**dict(d=3, steps=2, lr=0.1), **kwargs})


def test_the_size_limits_can_be_raised_and_lowered():
    with parts.size_limit(max_params=1000):
        with pytest.raises(ConstructionError, match="size_limit"):
            constructions.gd(d=3, steps=100, lr=0.1)
    assert parts.limits() == (parts.MAX_PARAMS, parts.MAX_ELEMENTS)
    with parts.size_limit(max_params=10**6):
        assert constructions.gd(d=3, steps=100, lr=0.1).steps == 100
    c, X, y, Xq = example("relu_gd")
    with parts.size_limit(max_elements=100):
        with pytest.raises(ConstructionError, match="split the batch"):
            c.predict(X, y, Xq)
    with pytest.raises(ConstructionError, match="max_params"):
        with parts.size_limit(max_params=0):
            pass


def test_a_long_prompt_is_refused_before_its_scores_are_allocated():
    c = constructions.relu_gd(d=2, steps=1, lr=0.01)
    n = 20000  # ReLU attention forms [heads, T, T] scores per prompt: 1.2e9 numbers
    X = np.random.default_rng(0).normal(size=(n, 2)) / 10
    with pytest.raises(ConstructionError, match="elements"):
        c.predict(X, X[:, 0], X[:1])


def _tamper(path, **meta_changes):
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    meta.update(meta_changes)
    path.unlink()
    save_file(tensors, str(path), metadata=meta)
    return path


@pytest.mark.parametrize("change", [dict(steps=10**7), dict(d=20000), dict(steps=2**63)])
def test_load_refuses_huge_sizes_from_a_small_file(tmp_path, change, monkeypatch):
    c = constructions.gd(3, 2, lr=0.1)
    params = {**c.params, **change}
    path = _tamper(c.save(tmp_path / "x.safetensors"), params=json.dumps(params))
    assert path.stat().st_size < 4000
    monkeypatch.setattr(parts, "block", lambda *a, **k: pytest.fail("a block was built before the size was refused"))
    with pytest.raises(ConstructionError, match="size limit"):
        constructions.load(path)


def test_load_max_params_raises_the_limit_for_one_file(tmp_path):
    with parts.size_limit(max_params=10**6):
        path = constructions.gd(3, 200, lr=0.1).save(tmp_path / "big.safetensors")
    with parts.size_limit(max_params=1000):
        with pytest.raises(ConstructionError, match="size limit"):
            constructions.load(path)
        assert constructions.load(path, max_params=10**6).steps == 200


def test_load_refuses_metadata_that_is_not_a_params_object(tmp_path):
    c = constructions.gd(3, 2, lr=0.1)
    for params in ("[1, 2]", '"gd"', json.dumps({**c.params, "lr": "0.1"}), json.dumps({**c.params, "steps": "2"})):
        path = _tamper(c.save(tmp_path / "x.safetensors", overwrite=True), params=params)
        with pytest.raises(ConstructionError):
            constructions.load(path)


def test_negative_zero_is_not_bit_for_bit(tmp_path):
    c = constructions.gd(3, 2, lr=0.1)
    path = c.save(tmp_path / "x.safetensors")
    with safe_open(str(path), framework="pt") as f:
        meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
    k = next(k for k, t in tensors.items() if (t == 0).any() and not torch.signbit(t[t == 0]).any())
    idx = tuple((tensors[k] == 0).nonzero()[0])
    tensors[k][idx] = -0.0
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(ConstructionError, match="differ"):
        constructions.load(path)


def test_save_never_clobbers(tmp_path):
    c = constructions.gd(3, 2, lr=0.1)
    existing = tmp_path / "notes.txt"
    existing.write_text("my notes")
    with pytest.raises(ConstructionError, match="overwrite=True"):
        c.save(existing)
    assert existing.read_text() == "my notes"
    c.save(existing, overwrite=True)
    assert constructions.load(existing).params == c.params
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)
    link = tmp_path / "link"
    link.symlink_to(existing)
    for target in (fifo, link, tmp_path, Path("/dev/null"), tmp_path / "missing" / "x.safetensors"):
        with pytest.raises(ConstructionError):
            c.save(target, overwrite=True)
    assert Path("/dev/null").is_char_device() and fifo.is_fifo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["fifo", "link", "notes.txt"]  # no temporary file left


def test_save_is_atomic(tmp_path, monkeypatch):
    """A save that fails half-way leaves the old file whole and no temporary file."""
    import safetensors.torch

    c = constructions.gd(3, 2, lr=0.1)
    path = c.save(tmp_path / "c.safetensors")
    before = path.read_bytes()

    def broken(tensors, filename, metadata=None):
        Path(filename).write_bytes(b"half")
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", broken)
    with pytest.raises(ConstructionError, match="No space"):
        constructions.gd(3, 3, lr=0.1).save(path, overwrite=True)
    assert path.read_bytes() == before and [p.name for p in tmp_path.iterdir()] == ["c.safetensors"]


@pytest.mark.parametrize("call", [
    lambda c, X, y, Xq: c.predict(np.array([["a"] * 3] * 5), y, Xq),
    lambda c, X, y, Xq: c.predict(X.astype("datetime64[s]"), y, Xq),
    lambda c, X, y, Xq: c.predict(np.zeros(X.shape, dtype="V8"), y, Xq),
    lambda c, X, y, Xq: c.predict(torch.ones(5, 3, device="meta"), torch.ones(5), torch.ones(1, 3)),
    lambda c, X, y, Xq: c.predict(torch.from_numpy(X).to_sparse(), torch.from_numpy(y), torch.from_numpy(Xq)),
    lambda c, X, y, Xq: c.predict(np.full_like(X, 1e154), y, Xq),
    lambda c, X, y, Xq: c.predict(X, 1.0, Xq),
    lambda c, X, y, Xq: c.predict(np.ma.masked_array(X), y, Xq),
    lambda c, X, y, Xq: c.circuits(99),
    lambda c, X, y, Xq: c.circuits("0"),
    lambda c, X, y, Xq: c.to(device="cuda:7"),
    lambda c, X, y, Xq: c.to(device="bogus"),
    lambda c, X, y, Xq: c.to(device=3.5),
    lambda c, X, y, Xq: c.read_slot(X, y, Xq, ["x"]),
    lambda c, X, y, Xq: constructions.load(None),
    lambda c, X, y, Xq: constructions.gd(3, 2, lr="0.1"),
    lambda c, X, y, Xq: constructions.gd(3, 2, lr=True),
    lambda c, X, y, Xq: constructions.gd(3, 2, lr=0.1, lam=b"1"),
    lambda c, X, y, Xq: constructions.gd(3, 2.0, lr=0.1),
    lambda c, X, y, Xq: formats.to_garg(X.astype(complex), y, Xq),
    lambda c, X, y, Xq: formats.to_von_oswald(np.ma.masked_array(X), y, Xq),
])
def test_wrong_types_raise_construction_error(call):
    c = constructions.gd(d=3, steps=2, lr=0.1)
    X, y, Xq = ONES[0].repeat(2, 0)[:5], np.ones(5), np.ones((1, 3)) / 3
    with pytest.raises(ConstructionError):
        call(c, X, y, Xq)


def test_real_scalars_of_every_kind_are_accepted():
    for lr in (0.1, np.float64(0.1), np.float32(0.25), np.array(0.1), torch.tensor(0.1), 1):
        assert constructions.gd(3, np.int64(2), lr=lr).params["lr"] == float(lr)
    assert constructions.gd(torch.tensor(3), 2, lr=0.1).d == 3


def test_negative_strides_and_torch_input_give_the_plain_answer():
    c, X, y, Xq = example("gd")
    want = c.predict(X, y, Xq)
    Xq1 = Xq[:, :1]
    assert np.array_equal(c.predict(X, y, Xq1[::-1][::-1]), c.predict(X, y, Xq1))
    flipped = X[:, ::-1].copy()[:, ::-1]
    assert np.array_equal(c.predict(flipped, y, Xq), want)
    assert np.array_equal(formats.to_ahn(*(torch.from_numpy(a) for a in (X, y, Xq))).numpy(), formats.to_ahn(X, y, Xq))


@pytest.mark.parametrize("argv, env", [
    (["check", "--device", "bogus"], {}), (["check", "--seed", "-1"], {}), (["check"], {"ICL_VERIFY_SEED": "abc"}),
    (["docs", "--out", "/missing/dir/x.md"], {}), (["bench", "--device", "bogus"], {}),
    (["reproduce", "vonoswald23", "--out", "setup.cfg"], {}), (["reproduce", "ahn23", "--out", "setup.cfg"], {}),
    (["check", "--prompts", "1000000000000"], {}),
    (["check", "--prompts", "0"], {}), (["bogus"], {}),
])
def test_cli_usage_errors_exit_2_with_one_line(argv, env, capsys, monkeypatch):
    for k, v in env.items():
        monkeypatch.setenv(k, v)
    monkeypatch.chdir(ROOT)
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("icl-verify: error: ")


def test_a_tiny_prompt_keeps_a_nonzero_error_model_scale():
    """Fuzz escape (prompt-values, schlag21-delta-rule, X and y scaled by 1e-79): the reference's
    magnitudes came from sqrt(sum a^2), which underflows to 0 for entries near 1e-158, so the
    tolerance was 0 where the model's answer had round-off.  The norms are now scaled by their
    largest entry."""
    from constructions import registry
    from verify.claims import EVALUATION_ORDERS
    from verify.reference import _norm
    from verify.tolerance import compare_trace

    assert _norm(np.full(3, 1e-160), axis=-1) > 0 and _norm(np.full((2, 2), 1e200), 2) < np.inf
    claim = registry.claim("schlag21-delta-rule")
    prompt, knobs = claim.sample(np.random.default_rng(0))
    c, ref = claim.build(prompt, knobs)[:2]
    c.model.order = EVALUATION_ORDERS[knobs.seed % len(EVALUATION_ORDERS)]
    X, y, Xq = (a * 1e-79 for a in prompt.arrays)
    assert compare_trace(c, ref, X, y, Xq).ok


def test_optimal_lsa_refuses_a_noise_level_that_overflows_its_preconditioner():
    import constructions
    from constructions import ConstructionError

    with pytest.raises(ConstructionError, match="not finite"):
        constructions.optimal_lsa(2, 10, np.eye(2), noise=1e200)
    with pytest.raises(ConstructionError, match="symmetric"):
        constructions.optimal_lsa(2, 10, [[1.0, 0.5], [0.0, 1.0]])
    with pytest.raises(ConstructionError, match="positive definite"):
        constructions.optimal_lsa(2, 10, [[1.0, 0.0], [0.0, -1.0]])
