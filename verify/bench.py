"""``icl-verify bench``: throughput of the constructions against the machine's limits.

Notation: B batch, n context examples, m = 1 query, d input dim, D width, L layers.
For each construction (d = 20, n = 40 by default) the forward pass on a prepared
residual stream ``[B, T, D]`` is timed (embedding and validation excluded, as a
training or evaluation loop would batch them once); the figures are

* prompts.layers/s: ``B L / t``;
* achieved FLOP rate: the forward pass's FLOPs (:func:`flops`, counted from the
  weight shapes and the evaluation order the transformer uses) over t, next to the
  measured matmul peak of the same dtype (a square GEMM), and their ratio;
* the algorithm run directly on the same prompts, batched in torch (the baseline each
  construction declares in its :class:`constructions.Bench`, from :mod:`verify.baselines`:
  a GD loop for GD-like constructions, ``torch.linalg.solve`` for the ridge ones, the
  label test, the one step) and the ratio of times; a torch baseline on the same device,
  which the numpy references of :mod:`verify.reference` are not;
* memory: CUDA's allocator peak, or on CPU the bytes the forward pass
  allocates (its output, chunk buffers and one block's temporaries:
  ``Transformer.fast_pass_bytes``; the process RSS is printed too).
"""
from __future__ import annotations

import resource
import time

import numpy as np
import torch

from constructions import fastpath, registry
from constructions.errors import ConstructionError

from .prompts import PromptSpec, make_prompt


def _timeit(fn, min_time: float = 0.1, repeats: int = 5, sync=None, slow: float = 1.0) -> float:
    """Best of ``repeats`` timings, each averaging calls over at least ``min_time`` seconds
    (the best is the least disturbed by other load on a shared machine).  A call slower than
    ``slow`` seconds is timed twice, once per repeat."""
    t0 = time.perf_counter()
    fn()
    if sync:
        sync()
    if time.perf_counter() - t0 > slow:
        repeats, min_time = 2, 0.0
    best = float("inf")
    for _ in range(repeats):
        reps, t0 = 0, time.perf_counter()
        while True:
            fn()
            reps += 1
            if sync:
                sync()
            t = time.perf_counter() - t0
            if t >= min_time and (reps >= 2 or min_time == 0.0):
                break
        best = min(best, t / reps)
    return best


def matmul_peak(dtype, device, size: int = 1024) -> float:
    """FLOP/s of a square ``size x size`` GEMM (the compute-bound limit of this machine)."""
    a = torch.randn(size, size, dtype=dtype, device=device)
    b = torch.randn(size, size, dtype=dtype, device=device)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    return 2 * size**3 / _timeit(lambda: a @ b, sync=sync)


def flops(c, n_keys: int, T: int) -> int:
    """FLOPs of one prompt through every block, in the evaluation order the transformer uses
    (:func:`constructions.fastpath.model_flops`)."""
    return fastpath.model_flops(c.model, n_keys, T)


def _case(name: str, d: int, n: int, B: int, dtype, device):
    """(construction, prepared prompt, embedded stream) for one benchmark row: random prompts with
    |x| <= 1, the labels and parameters the construction's :class:`constructions.Bench` declares."""
    bench = registry.entry(name).bench
    if bench is None:
        raise ConstructionError(f"{name} declares no benchmark row (register(..., bench=Bench(...)))")
    n = bench.n or n
    p = make_prompt(PromptSpec(B=B, n=n, m=1, d=d, seed=0))
    X = torch.from_numpy(p.X / np.linalg.norm(p.X, axis=-1).max())  # |x| <= 1
    y, Xq = torch.from_numpy(p.y), torch.from_numpy(p.Xq / np.linalg.norm(p.Xq, axis=-1).max())
    if bench.labels == "binary":
        y = (y > 0).to(y.dtype)  # 0/1 labels
    c = registry.build(name, d=d, **bench.params(d, n)).to(dtype, device)
    prep = c.prepare(X, y, Xq, check=False)
    return c, prep, c.embed(prep)


def example(name: str, d: int = 3, n: int = 6, B: int = 2):
    """A small instance of a registered construction with a prompt it accepts (numpy X, y, Xq),
    from the construction's :class:`constructions.Bench` declaration."""
    c, prep, _ = _case(name, d, n, B, torch.float64, torch.device("cpu"))
    return c, prep.X.numpy(), prep.y.numpy(), prep.Xq.numpy()


def bench_one(name: str, d: int = 20, n: int = 40, B: int = 1024, dtype=torch.float64, device="cpu") -> dict:
    device = torch.device(device)
    c, prep, h = _case(name, d, n, B, dtype, device)
    n = prep.X.shape[1]  # raw_gd takes one exemplar
    nk = c.n_keys(n)
    sync = torch.cuda.synchronize if device.type == "cuda" else None
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats()
    with torch.no_grad():
        t = _timeit(lambda: c.model(h, nk, norm=n), sync=sync)
        baseline = registry.entry(name).bench.baseline
        t_ref = _timeit(baseline(prep, c), sync=sync) if baseline is not None else float("nan")
    L, T = c.model.n_layers, h.shape[1]
    f = flops(c, nk, T) * B
    if device.type == "cuda":
        mem = torch.cuda.max_memory_allocated()
    else:  # what the forward pass allocates (constructions.transformer.Transformer.fast_pass_bytes)
        mem = c.model.fast_pass_bytes(h, nk)
    return dict(name=name, d=d, n=n, B=B, dtype=str(dtype).replace("torch.", ""), device=device.type, layers=L,
                seconds=t, prompt_layers_per_s=B * L / t, flop_rate=f / t, ref_seconds=t_ref, mem_bytes=mem)


def run(device: str = "cpu", quick: bool = False) -> list[dict]:
    rows = []
    bench_one("gd", device=device)  # warm-up: thread pool, allocator, first-call dispatch
    batches = (64, 1024) if quick else (1, 64, 1024, 4096)
    for dtype in (torch.float64, torch.float32):
        for e in registry.entries():
            if e.bench is not None:
                rows.append(bench_one(e.name, B=e.bench.batch, dtype=dtype, device=device))
        for B in batches:
            rows.append(bench_one("gd", B=B, dtype=dtype, device=device))
        if not quick:
            for n_, d_ in ((10, 20), (160, 20), (40, 5), (40, 50)):
                rows.append(bench_one("gd", d=d_, n=n_, dtype=dtype, device=device))
    return rows


def report(rows: list[dict], device: str = "cpu") -> str:
    dev = torch.device(device)
    peaks = {dt: matmul_peak(getattr(torch, dt), dev) for dt in ("float64", "float32")}
    lines = [f"device {device} ({torch.get_num_threads()} threads), torch {torch.__version__}; matmul peak (1024^3 GEMM): "
             + ", ".join(f"{k} {v / 1e9:.1f} GFLOP/s" for k, v in peaks.items()),
             "",
             "| construction | d | n | B | dtype | layers | prompts.layers/s | GFLOP/s | % of matmul peak | "
             "reference time / model time | memory (MiB) |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        pct = 100 * r["flop_rate"] / peaks[r["dtype"]]
        lines.append(f"| {r['name']} | {r['d']} | {r['n']} | {r['B']} | {r['dtype']} | {r['layers']} | "
                     f"{r['prompt_layers_per_s']:.3g} | {r['flop_rate'] / 1e9:.2f} | {pct:.1f} | "
                     f"{r['ref_seconds'] / r['seconds']:.3g} | {r['mem_bytes'] / 2**20:.1f} |")
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    lines.append(f"\nprocess peak RSS: {rss:.0f} MiB")
    return "\n".join(lines)
