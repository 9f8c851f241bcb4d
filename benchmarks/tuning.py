"""The measurements behind the forward pass's two constants, for ``gd`` at n = 40, B = 1024
(D = d + 1, 10 layers), CPU:

* ``constructions.fastpath.PADDING``: how much faster (or slower) the pass runs when the
  stream is zero-padded from width D to the rule's multiple, per dtype.  Each case is timed
  with padding off and forced (best of ``--rounds`` interleaved rounds); the table prints the
  FLOP growth (Dp/D)^2, the speedup (time unpadded / time padded) and whether the default
  rule pads.
* ``constructions.fastpath.CHUNK_BYTES``: prompts.layers/s against the chunk size.
* ``constructions.fastpath.FOLD_GAIN``: for linear attention, the time of the per-head order
  over the folded one, against their FLOP ratio (``gd`` at n = 10, d from 20 to 80).

    python benchmarks/tuning.py [--dims 4 8 13 ...] [--rounds 2] [--only padding|chunks|fold]

Timings on a shared 2-core VM vary from run to run: compare neighbouring rows, not single digits.
"""
import argparse
import math

import torch

from constructions import fastpath
from constructions.fastpath import CHUNK_BYTES, PADDING
from verify.bench import _case, _timeit, flops, matmul_peak

DIMS = (4, 8, 13, 16, 19, 20, 21, 22, 23, 24, 28, 29, 31, 37, 40, 41, 43, 45, 51, 53, 54)


def speedups(dtype, dims, rounds: int = 2, n: int = 40, B: int = 1024):
    rule = PADDING[dtype]
    rows = []
    for D in dims:
        c, _, h = _case("gd", D - 1, n, B, dtype, torch.device("cpu"))
        nk, model = c.n_keys(n), c.model
        Dp = -(-D // rule["multiple"]) * rule["multiple"]
        times = {}
        for _ in range(rounds):
            for padded in (False, True):
                model.padding = {dtype: dict(multiple=rule["multiple"], max_growth=math.inf)} if padded else {}
                with torch.no_grad():
                    t = _timeit(lambda: model(h, nk, norm=n), min_time=0.05, repeats=3)
                times[padded] = min(times.get(padded, math.inf), t)
        model.padding = {dtype: rule}
        rows.append(dict(D=D, Dp=Dp, growth=(Dp / D) ** 2, speedup=times[False] / times[True],
                         default=model.compute_width(h) != D))
    return rows


def chunk_sweep(dtype, d: int = 20, rounds: int = 2, n: int = 40, B: int = 1024):
    """prompts.layers/s and % of the matmul peak for chunk sizes 2^19 .. 2^23 bytes."""
    c, _, h = _case("gd", d, n, B, dtype, torch.device("cpu"))
    nk, model = c.n_keys(n), c.model
    peak, f = matmul_peak(dtype, torch.device("cpu")), flops(c, nk, h.shape[1]) * B
    times = {}
    for _ in range(rounds):
        for size in (2**19, 2**20, 2**21, 2**22, 2**23):
            model.chunk_bytes = size
            with torch.no_grad():
                t = _timeit(lambda: model(h, nk, norm=n), min_time=0.05, repeats=3)
            times[size] = min(times.get(size, math.inf), t)
    return [dict(bytes=k, rate=B * model.n_layers / t, pct=100 * f / t / peak) for k, t in times.items()]


def fold_sweep(dtype, dims=(20, 30, 40, 50, 60, 80), rounds: int = 2, n: int = 10, B: int = 1024):
    """Per d: folded/per-head FLOPs of the layer and the speedup of folding (time per-head / time folded)."""
    rows, default = [], fastpath.FOLD_GAIN
    for d in dims:
        c, _, h = _case("gd", d, n, B, dtype, torch.device("cpu"))
        nk, model, a = c.n_keys(n), c.model, c.model.blocks[0].attn
        times = {}
        try:
            for _ in range(rounds):
                for gain in (0.0, math.inf):  # never fold / always fold
                    fastpath.FOLD_GAIN = gain
                    with torch.no_grad():
                        t = _timeit(lambda: model(h, nk, norm=n), min_time=0.05, repeats=3)
                    times[gain] = min(times.get(gain, math.inf), t)
        finally:
            fastpath.FOLD_GAIN = default
        rows.append(dict(d=d, ratio=a.folded_cost(h.shape[1], nk) / a.cost(h.shape[1], nk),
                         speedup=times[0.0] / times[math.inf]))
    return rows


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=DIMS, help="residual widths D = d + 1")
    ap.add_argument("--rounds", type=int, default=2)
    ap.add_argument("--only", choices=("padding", "chunks", "fold"))
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; gd, B = 1024, 10 layers; "
          "n = 40 (padding, chunks), n = 10 (fold)\n")
    if a.only in (None, "padding"):
        print("| dtype | D | padded width | FLOP growth | speedup from padding | default rule pads |")
        print("|---|---|---|---|---|---|")
        for dtype in (torch.float64, torch.float32):
            for r in speedups(dtype, a.dims, a.rounds):
                if r["Dp"] != r["D"]:
                    print(f"| {str(dtype)[6:]} | {r['D']} | {r['Dp']} | {r['growth']:.2f} | {r['speedup']:.2f} | "
                          f"{'yes' if r['default'] else 'no'} |")
        print()
    if a.only in (None, "chunks"):
        print(f"| dtype | d | chunk (bytes of padded stream) | prompts.layers/s | % of matmul peak |  (default {CHUNK_BYTES})")
        print("|---|---|---|---|---|")
        for dtype in (torch.float64, torch.float32):
            for d in (20, 50):
                for r in chunk_sweep(dtype, d, a.rounds):
                    print(f"| {str(dtype)[6:]} | {d} | 2^{r['bytes'].bit_length() - 1} | {r['rate']:.3g} | {r['pct']:.1f} |")
    if a.only in (None, "fold"):
        print(f"\n| dtype | d | folded / per-head FLOPs | speedup of folding | folded by default (FOLD_GAIN {fastpath.FOLD_GAIN}) |")
        print("|---|---|---|---|---|")
        for dtype in (torch.float64, torch.float32):
            for r in fold_sweep(dtype, rounds=a.rounds):
                print(f"| {str(dtype)[6:]} | {r['d']} | {r['ratio']:.2f} | {r['speedup']:.2f} | "
                      f"{'yes' if r['ratio'] <= fastpath.FOLD_GAIN else 'no'} |")


if __name__ == "__main__":
    main()
