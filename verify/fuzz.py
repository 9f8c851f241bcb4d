"""The fuzz campaign: hostile inputs for every public entry point, held to one promise.

**The promise** (docs/reliability.md).  Every public entry point -- the factories, ``predict``,
``trace``, ``residuals``, ``read_slot``, ``circuits``, ``to``, ``save``/``load``, the converters of
:mod:`constructions.formats` and the ``icl-verify`` command line -- either returns a *correct,
finite* result or raises :class:`~constructions.errors.ConstructionError` with a message; the
CLI exits 2 with one line on a usage error.  Never another exception, never NaN or inf, never
a silently wrong number, never unbounded work, never a clobbered file.

**The classes** (:data:`CLASSES`): each is a function ``case(data) -> "refused" | "answered"``
that draws one hostile input with hypothesis's ``data`` object, runs it, and checks the answer
when there is one (:class:`Escape` when the promise is broken).  "Correct" is checked against an
independent value wherever one exists: the claim's float64 reference algorithm within the
tolerance model, the same prompt as a plain float64 array bit for bit, the original
construction's bytes, the converter's inverse.

:func:`run` runs a class for a number of examples under the loaded hypothesis profile (the ``ci``
profile is deterministic) and counts the outcomes; ``python -m verify.fuzz CLASS --examples N``
does it in a fresh process (a crash there cannot take the caller down) and prints the counts as
JSON; ``python benchmarks/fuzz.py`` runs every class so and writes the table of
docs/reliability.md.
"""
from __future__ import annotations

import argparse
import contextlib
import inspect
import io
import json
import os
import sys
import tempfile
import warnings
from collections import Counter
from decimal import Decimal
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import constructions
from constructions import formats, parts, registry
from constructions.errors import ConstructionError

#: the size limits the campaign runs under: anything larger must be refused, quickly and
#: before allocating (the limits themselves are tested in tests/test_fuzz.py)
FUZZ_LIMITS = dict(max_params=10**5, max_elements=10**6)


class Escape(AssertionError):
    """An input that broke the promise."""


def attempt(fn, check=None) -> str:
    """Run ``fn()``: "refused" on :class:`ConstructionError` (whose message must be one
    non-empty line of text), else ``check(result)`` and "answered".  Any other exception
    propagates: that is an escape."""
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            out = fn()
    except ConstructionError as e:
        if not str(e).strip():
            raise Escape("a ConstructionError without a message") from e
        return "refused"
    if check is not None:
        check(out)
    return "answered"


def _finite(a) -> None:
    a = a.detach().cpu().numpy() if isinstance(a, torch.Tensor) else np.asarray(a)
    if not np.isfinite(a).all():
        raise Escape(f"a non-finite answer: {a.ravel()[:6]}")


# -- hostile values --------------------------------------------------------------------------------
EXTREMES = [0.0, -0.0, 5e-324, 1e-320, 1e-300, 1e-154, 1e-17, 1e-9, 0.5, 1.0, 2.0, 1e9, 1e154, 1e200, 1e283, 1e300,
            1e308, -1.0, -1e-9, -1e308, float("nan"), float("inf"), -float("inf")]
SIZES = [0, -1, 1, 2, 3, 10**4, 10**7, 2**31, 2**63, 10**30]


def _cast(v, t):
    with np.errstate(all="ignore"), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return np.array(v).astype(t)[()]


def scalars() -> st.SearchStrategy:
    """Every kind of value a user (or a tampered file) might pass as a number."""
    numpy_scalar = st.builds(_cast, st.sampled_from(EXTREMES[:17]),
                             st.sampled_from(["f2", "f4", "f8", "i4", "i8", "u1", "?", "c16"]))
    tensor0 = st.builds(lambda v, t: torch.tensor(v).to(t), st.sampled_from(EXTREMES[:17]),
                        st.sampled_from([torch.float64, torch.float32, torch.int64, torch.bool, torch.complex64]))
    return st.one_of(
        st.sampled_from(EXTREMES), st.floats(), st.sampled_from(SIZES), st.integers(-2**70, 2**70),
        st.text(max_size=4), st.sampled_from(["0.1", "1e3", "nan", ""]), st.binary(max_size=3), st.booleans(),
        st.none(), st.complex_numbers(max_magnitude=10), numpy_scalar, tensor0,
        st.lists(st.floats(-2, 2), max_size=3), st.just(Fraction(1, 10)), st.just(Decimal("0.1")),
        st.just(np.datetime64("2020-01-01")), st.just(np.ma.masked_array([0.1], mask=[True])), st.just({}),
        st.just(np.eye(2) * 1j), st.just(np.full((2, 2), np.nan)))


def _example(name: str, d: int = 2, n: int = 4):
    """(construction, X, y, Xq) of a registered construction at a small size, from its bench row."""
    from .bench import example

    return example(name, d=d, n=n, B=2)


# -- the classes -----------------------------------------------------------------------------------
def case_params(data) -> str:
    """A factory called with its benchmark parameters, one of them (or d) replaced by a hostile
    value.  An answer must be reproducible from its recorded ``params`` (bit-identical weights)
    and give finite predictions (or refuse) on a prompt the unmodified construction accepts."""
    name = data.draw(st.sampled_from(registry.names()), "construction")
    e = registry.entry(name)
    n = e.bench.n or 4
    kwargs = dict(d=2, **e.bench.params(2, n))
    accepted = set(inspect.signature(e.factory).parameters)
    key = data.draw(st.sampled_from(sorted(accepted - {"_fu_printed_values"})), "parameter")
    kwargs[key] = data.draw(scalars(), "value")
    _, X, y, Xq = _example(name, 2, n)

    def check(c):
        again = registry.build(name, **c.params)
        for (k, a), b in zip(c.model.state_dict().items(), again.model.state_dict().values()):
            if a.shape != b.shape or not torch.equal(a, b):
                raise Escape(f"{name}({kwargs}): its params {c.params} rebuild other weights ({k})")
        if c.d == 2:
            attempt(lambda: c.predict(X, y, Xq), _finite)

    with parts.size_limit(**FUZZ_LIMITS):
        return attempt(lambda: e.factory(**kwargs), check)


def _scaled(data, X, y, Xq):
    """The prompt with X and/or y scaled by a power of ten, or one entry set to an extreme."""
    X, y, Xq = X.copy(), y.copy(), Xq.copy()
    how = data.draw(st.sampled_from(["scale-x", "scale-y", "scale-both", "entry"]), "how")
    if how == "entry":
        target = data.draw(st.sampled_from([X, y, Xq]), "array")
        flat = target.reshape(-1)
        flat[data.draw(st.integers(0, flat.size - 1), "index")] = data.draw(st.sampled_from(EXTREMES), "value")
    else:
        k = data.draw(st.integers(-320, 310), "log10 scale")
        with np.errstate(all="ignore"):
            s = np.float64(10.0) ** k  # inf from 10^309 on
            if how != "scale-y":
                X, Xq = X * s, Xq * s
            if how != "scale-x":
                y = y * s
    return X, y, Xq


def case_prompt_values(data) -> str:
    """A prompt scaled by 10^-320 .. 10^310 or with one NaN, inf or extreme entry, in float64 or
    float32.  Exact claims: an answer must match the claim's float64 reference algorithm within
    the tolerance model on every layer.  Every other construction: an answer must be finite."""
    from .claims import EVALUATION_ORDERS, compare_trace

    dtype = data.draw(st.sampled_from([torch.float64, torch.float32]), "dtype")
    exact = [c for c in registry.claims() if c.kind == "exact"]
    if data.draw(st.booleans(), "against a reference"):
        claim = data.draw(st.sampled_from(exact), "claim")
        prompt, knobs = claim.sample(np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed")))
        built = claim.build(prompt, knobs)
        c, ref = built[0], built[1]
        prompt = built[2] if len(built) > 2 else prompt
        c = c.to(dtype)
        c.model.order = EVALUATION_ORDERS[knobs.seed % len(EVALUATION_ORDERS)]
        X, y, Xq = _scaled(data, *prompt.arrays)

        def check(cmp):
            if not cmp.ok:
                raise Escape(f"{claim.id} answered a wrong number: {cmp.report()}")

        return attempt(lambda: compare_trace(c, ref, X, y, Xq), check)
    name = data.draw(st.sampled_from(registry.names()), "construction")
    c, X, y, Xq = _example(name)
    c = c.to(dtype)
    X, y, Xq = _scaled(data, X, y, Xq)
    method = data.draw(st.sampled_from(["predict", "trace", "residuals"]), "method")
    return attempt(lambda: getattr(c, method)(X, y, Xq), _finite)


NUMPY_DTYPES = ["f2", "f4", "f8", "i1", "i4", "i8", "u1", "u8", "?", "c8", "c16", "U3", "S3", "M8[s]", "m8[s]", "O",
                "V8"]
TORCH_DTYPES = [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.int32, torch.int64, torch.uint8,
                torch.bool, torch.complex64]


def _form(data, a: np.ndarray):
    """``a`` in a drawn form: (the form, its logical float64 values or None if not numeric)."""
    kind = data.draw(st.sampled_from(["numpy-dtype", "torch-dtype", "fortran", "negative-stride", "strided-view",
                                      "list", "masked", "meta", "sparse", "requires-grad", "torch-noncontiguous", "scalar", "reshaped",
                                      "empty", "object"]), "form")
    if kind == "numpy-dtype":
        t = data.draw(st.sampled_from(NUMPY_DTYPES), "numpy dtype")
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                try:
                    v = a.astype(t)
                except (TypeError, ValueError):
                    v = a.astype("U8").astype(t) if t[0] in "US" else a.astype("f8").astype("i8").astype(t)
        return v, (v.astype(np.float64) if v.dtype.kind in "iuf" else None)
    if kind == "torch-dtype":
        t = data.draw(st.sampled_from(TORCH_DTYPES), "torch dtype")
        v = torch.from_numpy(a).to(t)
        return v, (v.to(torch.float64).numpy() if not (v.is_complex() or v.dtype == torch.bool) else None)
    if kind == "fortran":
        return np.asfortranarray(a), a
    if kind == "negative-stride":
        b = a[::-1].copy()[::-1]  # same values, negative strides
        return b, a
    if kind == "strided-view":
        big = np.repeat(a, 2, axis=-1)
        return big[..., ::2], a
    if kind == "list":
        return a.tolist(), a
    if kind == "masked":
        return np.ma.masked_array(a, mask=np.zeros_like(a, dtype=bool)), None
    if kind == "meta":
        return torch.from_numpy(a).to("meta"), None
    if kind == "sparse":
        return torch.from_numpy(a).to_sparse(), None
    if kind == "torch-noncontiguous":
        t = torch.from_numpy(np.ascontiguousarray(np.swapaxes(a, 0, -1))).transpose(0, -1)
        return t, a
    if kind == "requires-grad":
        return torch.from_numpy(a).requires_grad_(), a
    if kind == "scalar":
        return float(a.ravel()[0]), None
    if kind == "reshaped":
        return a.reshape(-1), None
    if kind == "empty":
        return a[..., :0], None
    return np.array([object()] * a.size, dtype=object).reshape(a.shape), None


def case_prompt_forms(data) -> str:
    """X, y or Xq in another dtype, memory layout, container or shape.  An answer must equal, bit
    for bit, the answer on the same values as a plain float64 array."""
    name = data.draw(st.sampled_from(registry.names()), "construction")
    c, X, y, Xq = _example(name)
    arrays = [X, y, Xq]
    i = data.draw(st.integers(0, 2), "which array")
    form, values = _form(data, arrays[i])
    hostile = list(arrays)
    hostile[i] = form
    method = data.draw(st.sampled_from(["predict", "trace"]), "method")

    def check(out):
        _finite(out)
        if values is None:
            raise Escape(f"{name}.{method} accepted a non-numeric or ambiguous form ({type(form).__name__})")
        plain = list(arrays)
        plain[i] = np.array(values, dtype=np.float64)
        want = getattr(c, method)(*plain)
        got = out.detach().numpy() if isinstance(out, torch.Tensor) else out
        if got.shape != want.shape or not np.array_equal(got, want):
            raise Escape(f"{name}.{method} gives another answer for the same values in another form")

    return attempt(lambda: getattr(c, method)(*hostile), check)


def case_methods(data) -> str:
    """``circuits``, ``read_slot``, ``to`` and ``run_with_hooks`` with hostile arguments."""
    name = data.draw(st.sampled_from(registry.names()), "construction")
    c, X, y, Xq = _example(name)
    which = data.draw(st.sampled_from(["circuits", "read_slot", "to", "run_with_hooks"]), "method")
    if which == "circuits":
        layer = data.draw(st.one_of(st.integers(-200, 200), scalars()), "layer")
        return attempt(lambda: c.circuits(layer), lambda out: [_finite(v) for h in out for m in h.values()
                                                                for v in m.values()])
    if which == "read_slot":
        slot = data.draw(st.one_of(st.sampled_from([s.name for s in c.layout.slots]), scalars()), "slot")
        return attempt(lambda: c.read_slot(X, y, Xq, slot), _finite)
    if which == "to":
        dtype = data.draw(st.one_of(st.sampled_from([None, "float64", "float32", "float16", torch.float16, torch.int64,
                                                     torch.float32, "cuda"]), scalars()), "dtype")
        device = data.draw(st.one_of(st.sampled_from([None, "cpu", "cuda", "cuda:7", "meta", "bogus", "cpu:0", 3,
                                                      torch.device("cpu")]), scalars()), "device")

        def check(c2):
            if c2.dtype not in (torch.float64, torch.float32):
                raise Escape(f"to() made a {c2.dtype} model")
            _finite(c2.predict(X, y, Xq))

        return attempt(lambda: c.to(dtype, device), check)
    hooks = data.draw(st.sampled_from([None, {}, {"blocks.0.hook_resid_post": lambda t: None}]), "hooks")
    return attempt(lambda: c.run_with_hooks(X, y, Xq, hooks=hooks), _finite)


def _state_bytes(c) -> dict:
    return {k: (v.dtype, tuple(v.shape), v.detach().contiguous().view(torch.uint8).numpy().tobytes())
            for k, v in c.model.state_dict().items()}


def case_files(data) -> str:
    """``save`` to hostile targets and ``load`` of tampered files: bytes flipped, truncated or
    appended; metadata rewritten (params not an object, strings for numbers, huge sizes, unknown
    names, another dtype or layout); a weight 0.0 written as -0.0.  A loaded construction must
    be the saved one, byte for byte; a refused save must leave the target as it was."""
    from safetensors.torch import save_file
    from safetensors import safe_open

    name = data.draw(st.sampled_from(registry.names()), "construction")
    c, *_ = _example(name)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "c.safetensors"
        c.save(path)
        original = path.read_bytes()
        flipped_zero = False
        how = data.draw(st.sampled_from(["flip", "truncate", "append", "metadata", "negative-zero", "save-target",
                                         "load-target", "intact"]), "tampering")
        if how == "save-target":
            target = data.draw(st.sampled_from(["existing", "existing-overwrite", "folder", "fifo", "symlink",
                                                "missing-folder", "none", "bytes", "dot"]), "target")
            dest = Path(tmp) / "target"
            if target.startswith("existing"):
                dest.write_text("keep me")
            elif target == "folder":
                dest.mkdir()
            elif target == "fifo":
                os.mkfifo(dest)
            elif target == "symlink":
                (Path(tmp) / "real").write_text("keep me")
                dest.symlink_to(Path(tmp) / "real")
            arg = {"missing-folder": Path(tmp) / "no" / "x.safetensors", "none": None, "bytes": b"x.safetensors",
                   "dot": "."}.get(target, dest)
            before = sorted(p.name for p in Path(tmp).iterdir())

            def check_saved(p):
                if target != "existing-overwrite" and target != "missing-folder" and target != "none":
                    raise Escape(f"save to a {target} target was accepted")
                if _state_bytes(constructions.load(p)) != _state_bytes(c):
                    raise Escape("save + load changed the construction")

            out = attempt(lambda: c.save(arg, overwrite=target == "existing-overwrite"), check_saved)
            if out == "refused":
                if sorted(p.name for p in Path(tmp).iterdir()) != before:
                    raise Escape(f"a refused save to a {target} target left files behind")
                if target == "existing" and dest.read_text() != "keep me":
                    raise Escape("a refused save clobbered the existing file")
                if target == "symlink" and (Path(tmp) / "real").read_text() != "keep me":
                    raise Escape("a save through a symbolic link clobbered its target")
            return out
        if how == "load-target":
            arg = data.draw(st.sampled_from([None, 3, b"x", Path(tmp), Path(tmp) / "missing", "", "/dev/null"]), "path")
            return attempt(lambda: constructions.load(arg), lambda c2: (_ for _ in ()).throw(
                Escape(f"load({arg!r}) returned a construction")))
        if how in ("flip", "truncate", "append"):
            b = bytearray(original)
            if how == "flip":
                for _ in range(data.draw(st.integers(1, 4), "flips")):
                    i = data.draw(st.integers(0, len(b) - 1), "offset")
                    b[i] ^= 1 << data.draw(st.integers(0, 7), "bit")
            elif how == "truncate":
                b = b[: data.draw(st.integers(0, len(b) - 1), "length")]
            else:
                b += data.draw(st.binary(min_size=1, max_size=64), "garbage")
            path.write_bytes(bytes(b))
        elif how in ("metadata", "negative-zero"):
            with safe_open(str(path), framework="pt") as f:
                meta, tensors = dict(f.metadata()), {k: f.get_tensor(k) for k in f.keys()}
            if how == "negative-zero":
                k = data.draw(st.sampled_from(sorted(tensors)), "tensor")
                t = tensors[k].clone()
                zero = (t == 0).nonzero()
                if len(zero):
                    t[tuple(zero[0])] = -t[tuple(zero[0])]  # 0.0 <-> -0.0
                    flipped_zero = True
                tensors[k] = t
            else:
                field = data.draw(st.sampled_from(["params", "name", "dtype", "layout", "format", "version"]), "field")
                params = json.loads(meta["params"])
                choice = data.draw(st.sampled_from(["json-value", "number-as-string", "huge", "drop", "garbage"]),
                                   "edit")
                if field != "params" or choice == "garbage":
                    meta[field] = data.draw(st.sampled_from(["", "gd", "torch.float16", "{}", "[1]", "\x00", "x" * 300,
                                                             "icl-constructions/2", meta[field]]), "value")
                elif choice == "json-value":
                    meta["params"] = json.dumps(data.draw(st.sampled_from([[], "gd", 3, None, [1, 2]]), "params"))
                elif choice == "number-as-string" and params:
                    k = data.draw(st.sampled_from(sorted(params)), "key")
                    params[k] = str(params[k])
                    meta["params"] = json.dumps(params)
                elif choice == "huge":
                    k = data.draw(st.sampled_from(["d", "steps", "heads", "n", "iters"]), "key")
                    params[k] = data.draw(st.sampled_from([10**7, 20000, 2**63, 10**6]), "size")
                    meta["params"] = json.dumps(params)
                elif params:
                    params.pop(data.draw(st.sampled_from(sorted(params)), "key"))
                    meta["params"] = json.dumps(params)
            path.unlink()
            save_file(tensors, str(path), metadata=meta)
        def check_loaded(c2):
            if _state_bytes(c2) != _state_bytes(c) or c2.name != c.name:
                raise Escape(f"a tampered file ({how}) loaded as a different construction")
            if flipped_zero:
                raise Escape("a weight changed from 0.0 to -0.0 was accepted")

        with parts.size_limit(**FUZZ_LIMITS):
            return attempt(lambda: constructions.load(path), check_loaded)


def case_converters(data) -> str:
    """The prompt converters of :mod:`constructions.formats` on hostile arrays and arguments; an
    answer of a ``to_*`` must be finite and invert exactly through its ``from_*``."""
    rng = np.random.default_rng(data.draw(st.integers(0, 2**32 - 1), "seed"))
    B, n, m, d = (data.draw(st.integers(1, 3), k) for k in "Bnmd")
    arrays = [rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, m, d))]
    fmt = data.draw(st.sampled_from(["garg", "von_oswald", "ahn", "bai", "akyurek"]), "format")
    i = data.draw(st.integers(-1, 2), "which array")  # -1: all plain
    hostile = list(arrays)
    values = arrays[i] if i >= 0 else None
    if i >= 0:
        hostile[i], values = _form(data, arrays[i])
    if data.draw(st.booleans(), "torch"):
        hostile = [torch.from_numpy(a.copy()) if type(a) is np.ndarray and a.dtype.kind in "fiu" else a for a in hostile]
    extra = ()
    if fmt == "bai":
        extra = (data.draw(st.one_of(st.integers(-3, 3 * d + 8), scalars()), "D"),)
    inv_arg = data.draw(st.one_of(st.just(n if fmt != "bai" else d), scalars()), "n or d")

    def check(out):
        _finite(out)
        if i >= 0 and values is None:
            raise Escape(f"to_{fmt} accepted a non-numeric or ambiguous form")
        plain = [np.array(v, dtype=np.float64) for v in (arrays if i < 0 else
                                                         [values if j == i else arrays[j] for j in range(3)])]
        back = getattr(formats, f"from_{fmt}")(out.detach() if isinstance(out, torch.Tensor) else out,
                                               n if fmt != "bai" else d)
        if not all(np.array_equal(a, b) for a, b in zip(back, plain)):
            raise Escape(f"from_{fmt}(to_{fmt}(prompt)) is not the prompt")
        attempt(lambda: getattr(formats, f"from_{fmt}")(out.detach() if isinstance(out, torch.Tensor) else out, inv_arg),
                lambda r: [_finite(a) for a in r])

    return attempt(lambda: getattr(formats, f"to_{fmt}")(*hostile, *extra), check)


def _cli_argv(data) -> tuple[list[str], dict]:
    cmd = data.draw(st.sampled_from(["check", "list", "docs", "bench", "reproduce", "prove", "bogus", ""]), "command")
    # values that are wrong for both --seed and --prompts (a valid one would start a full check run)
    bad = st.sampled_from(["-1", "abc", "1e3", "", "99999999999999", "nan", "--", "\x00", "4294967296"])
    argv = [cmd] if cmd else []
    env = {}
    opt = data.draw(st.sampled_from(["seed", "prompts", "device", "dtype", "out", "import", "env-seed", "id", "none"]),
                    "option")
    if opt == "seed" and cmd in ("check", "reproduce"):
        argv += ["--seed", data.draw(bad, "seed")]
    elif opt == "prompts" and cmd == "check":
        argv += ["--prompts", data.draw(st.one_of(bad, st.just("0")), "prompts")]
    elif opt == "device" and cmd in ("check", "bench"):
        argv += ["--device", data.draw(st.sampled_from(["bogus", "cuda:99", "meta", "", "cpu:x", "gpu"]), "device")]
    elif opt == "dtype" and cmd == "check":
        argv += ["--dtype", data.draw(st.sampled_from(["float16", "int", ""]), "dtype")]
    elif opt == "out" and cmd in ("docs", "reproduce"):
        argv += (["vonoswald23"] if cmd == "reproduce" else []) + \
            ["--out", data.draw(st.sampled_from(["notes.md", "/dev/null/x"] if cmd == "reproduce" else  # else it trains
                                                ["/missing/dir/x.md", "notes.md", "folder", "/dev/null/x"]), "out")]
    elif opt == "import":
        argv += ["--import", data.draw(st.sampled_from(["no_such_module_x", "missing.py", "os.path.nothing"]), "module")]
    elif opt == "env-seed" and cmd in ("check", ""):
        env["ICL_VERIFY_SEED"] = data.draw(bad.filter(lambda v: v and "\x00" not in v), "env seed")  # "" means unset
    elif opt == "id" and cmd in ("check", "prove"):
        argv += [data.draw(st.sampled_from(["no-such-claim", "VONOSWALD23-PROP1", "..", "x" * 200]), "id")]
    else:  # a cheap valid run
        argv = data.draw(st.sampled_from([["list"], ["check", "vonoswald23-prop1", "--prompts", "1", "--seed", "3"],
                                          ["docs", "--out", "-"]]), "valid")
    return argv, env


def case_cli(data) -> str:
    """``icl-verify`` with a bad value for one option (or a cheap valid command line), run in an
    empty folder holding a file ``notes.md`` and a folder ``folder``: exit 2 with one line on
    standard error naming the problem for bad input, 0 for the valid commands; ``notes.md`` is
    never touched."""
    from .cli import main

    argv, env = _cli_argv(data)
    err, out = io.StringIO(), io.StringIO()
    old = {k: os.environ.get(k) for k in env}
    os.environ.update(env)
    here = os.getcwd()
    tmp = tempfile.TemporaryDirectory()
    os.chdir(tmp.name)
    Path("notes.md").write_text("my notes")
    Path("folder").mkdir()
    try:
        with contextlib.redirect_stderr(err), contextlib.redirect_stdout(out):
            try:
                rc = main(argv)
            except SystemExit as e:  # --help only
                rc = e.code
        if Path("notes.md").read_text() != "my notes":
            raise Escape(f"icl-verify {argv} clobbered an existing file")
    finally:
        os.chdir(here)
        tmp.cleanup()
        for k, v in old.items():
            os.environ.pop(k) if v is None else os.environ.__setitem__(k, v)
    lines = [line for line in err.getvalue().splitlines() if line.strip()]
    if rc == 2:
        if len(lines) != 1 or not lines[0].startswith("icl-verify: error: "):
            raise Escape(f"icl-verify {argv}: exit 2 with {len(lines)} stderr lines: {lines[:3]}")
        return "refused"
    if rc != 0:
        raise Escape(f"icl-verify {argv} {env}: exit {rc} for a usage error or a valid command: {lines[-3:]}")
    return "answered"


#: every class of the campaign: name -> case function (its docstring says what it draws and checks)
CLASSES = {
    "params": case_params,
    "prompt-values": case_prompt_values,
    "prompt-forms": case_prompt_forms,
    "methods": case_methods,
    "files": case_files,
    "converters": case_converters,
    "cli": case_cli,
}


def run(name: str, examples: int | None = None) -> Counter:
    """Run class ``name`` for ``examples`` hypothesis examples (default: the loaded profile's
    ``max_examples``) and count the outcomes; an :class:`Escape` (or any exception but
    ``ConstructionError``) is re-raised after hypothesis shrinks it."""
    if name not in CLASSES:
        raise ConstructionError(f"unknown fuzz class {name!r}; known: {sorted(CLASSES)}")
    counts: Counter = Counter()
    case = CLASSES[name]
    extra = {} if examples is None else dict(max_examples=examples)

    @settings(deadline=None, suppress_health_check=list(HealthCheck), **extra)
    @given(st.data())
    def go(data):
        counts[case(data)] += 1

    go()
    return counts


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m verify.fuzz", description="run one fuzz class; print its counts")
    ap.add_argument("name", choices=sorted(CLASSES))
    ap.add_argument("--examples", type=int, default=None)
    args = ap.parse_args(argv)
    from . import strategies  # noqa: F401  (loads the hypothesis profile)

    counts = run(args.name, args.examples)
    print(json.dumps(dict(name=args.name, tried=sum(counts.values()), **counts)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
