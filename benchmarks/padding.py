"""The measurement behind ``constructions.transformer.PADDING``: how much faster (or slower)
the forward pass runs when the residual stream is zero-padded from width D to the rule's
multiple, per dtype, for ``gd`` at n = 40, B = 1024 (D = d + 1, 10 layers).

    python benchmarks/padding.py [--dims 4 8 13 ...] [--rounds 2]

Each case is timed with padding off and with padding forced to the multiple (best of
``--rounds`` interleaved rounds of ``verify.bench._timeit``); the table prints the FLOP
growth (Dp/D)^2, the speedup (time unpadded / time padded) and whether the default rule pads.
Timings on a shared 2-core VM vary by 10-20 %; the rule only pads where the gain is larger.
"""
import argparse
import math

import torch

from constructions.transformer import PADDING
from verify.bench import _case, _timeit

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


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--dims", type=int, nargs="+", default=DIMS, help="residual widths D = d + 1")
    ap.add_argument("--rounds", type=int, default=2)
    a = ap.parse_args(argv)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads; gd, n = 40, B = 1024, 10 layers\n")
    print("| dtype | D | padded width | FLOP growth | speedup from padding | default rule pads |")
    print("|---|---|---|---|---|---|")
    for dtype in (torch.float64, torch.float32):
        for r in speedups(dtype, a.dims, a.rounds):
            if r["Dp"] != r["D"]:
                print(f"| {str(dtype)[6:]} | {r['D']} | {r['Dp']} | {r['growth']:.2f} | {r['speedup']:.2f} | "
                      f"{'yes' if r['default'] else 'no'} |")


if __name__ == "__main__":
    main()
