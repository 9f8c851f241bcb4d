"""Cost of the forward pass against n, D and depth for each attention kind, with fitted exponents.

    python benchmarks/scaling.py [--batch 64] [--plot docs/scaling.png] [--write docs/performance.md]

Each row times the toolkit's transformer (``constructions.Transformer``, float64, CPU, the
best of 5 repeats of :func:`verify.bench._timeit`) on random weights of one attention kind: one
head of width D per block, the query masked, m = 1 query.  Cost does not depend on the values,
so random weights stand for every construction of the kind.  The fitted exponent is the slope of
log(time) against log(size) by least squares, over the whole sweep and over its three largest
sizes (where fixed per-call costs no longer hide the growth); the theoretical one is the order
of the evaluation the transformer uses: linear attention folded, ``O(n D^2)`` per layer
(``keys^T keys``, then ``h M``); ReLU and softmax scores first, ``O(n^2 D)`` for the scores and
the pattern times the values plus ``O(n D^2)`` for the projections; every kind linear in depth.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from constructions import parts  # noqa: E402
from constructions.transformer import Transformer  # noqa: E402
from verify.bench import _timeit  # noqa: E402
from verify.docs import write_table  # noqa: E402

KINDS = ("linear", "relu", "softmax")
BEGIN, END = "<!-- scaling-table:begin -->", "<!-- scaling-table:end -->"
BASE = dict(n=80, D=21, L=4)
SWEEPS = dict(n=(20, 40, 80, 160, 320, 640), D=(6, 11, 21, 41, 81), L=(1, 2, 4, 8, 16))
#: theoretical exponents (n, D, L) per kind; "1-2" where the projections' n D^2 and the scores' n^2 D compete
THEORY = {"linear": ("1", "2", "1"), "relu": ("2 (n >> D)", "1-2", "1"), "softmax": ("2 (n >> D)", "1-2", "1")}


def model(kind: str, D: int, L: int, seed: int = 0) -> Transformer:
    rng = np.random.default_rng(seed)
    head = lambda: {k: rng.normal(size=(D, D)) / D for k in ("W_Q", "W_K", "W_V", "W_O")}  # noqa: E731
    return Transformer([parts.block(kind, [head()]) for _ in range(L)])


def seconds(kind: str, n: int, D: int, L: int, B: int) -> float:
    m = model(kind, D, L)
    h = torch.from_numpy(np.random.default_rng(1).normal(size=(B, n + 1, D)) / D)
    with torch.no_grad():
        return _timeit(lambda: m(h, n))


def sweep(B: int) -> dict:
    out = {}
    for kind in KINDS:
        for var, values in SWEEPS.items():
            out[kind, var] = [(v, seconds(kind, **{**BASE, var: v}, B=B)) for v in values]
            print(kind, var, ["%.3g" % t for _, t in out[kind, var]], file=sys.stderr)
    return out


def slope(points) -> float:
    x, t = np.log([p[0] for p in points]), np.log([p[1] for p in points])
    return float(np.polyfit(x, t, 1)[0])


def table(res: dict, B: int) -> str:
    lines = [f"B = {B}, float64, {torch.get_num_threads()} threads, torch {torch.__version__}; base point n = "
             f"{BASE['n']}, D = {BASE['D']}, {BASE['L']} layers; one sweep varies one of them.", "",
             "| attention | variable | sizes | time (ms) | fitted exponent, all sizes | three largest sizes | "
             "theoretical |", "|---|---|---|---|---|---|---|"]
    for kind in KINDS:
        for i, var in enumerate(SWEEPS):
            pts = res[kind, var]
            lines.append(f"| {kind} | {var} | {', '.join(str(v) for v, _ in pts)} | "
                         f"{', '.join('%.3g' % (t * 1e3) for _, t in pts)} | {slope(pts):.2f} | "
                         f"{slope(pts[-3:]):.2f} | {THEORY[kind][i]} |")
    return "\n".join(lines)


def plot(res: dict, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    from matplotlib.ticker import NullFormatter

    #: the asymptotic exponents drawn as dashed references through each kind's largest size
    asymptotic = {"linear": dict(n=1, D=2, L=1), "relu": dict(n=2, D=1, L=1), "softmax": dict(n=2, D=1, L=1)}
    fig, axes = plt.subplots(1, 3, figsize=(13, 4))
    for ax, var in zip(axes, SWEEPS):
        for kind in KINDS:
            pts = res[kind, var]
            xs, ts = [v for v, _ in pts], [t * 1e3 for _, t in pts]
            line, = ax.loglog(xs, ts, "o-", label=f"{kind} (slope {slope(pts[-3:]):.2f} over the largest three)")
            k = asymptotic[kind][var]
            ax.loglog(xs, [ts[-1] * (x / xs[-1]) ** k for x in xs], "--", color=line.get_color(), alpha=0.5,
                      label=f"{kind}: theoretical slope {k}")
        ax.xaxis.set_minor_formatter(NullFormatter())
        ax.set_xlabel({"n": "context examples n", "D": "width D", "L": "layers"}[var])
        ax.set_ylabel("forward pass (ms)")
        ax.set_title(f"cost vs {var}")
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=64)
    ap.add_argument("--plot", default=None, help="write the log-log plot here (PNG)")
    ap.add_argument("--write", default=None, help="replace the generated table in this markdown file")
    args = ap.parse_args(argv)
    res = sweep(args.batch)
    text = table(res, args.batch)
    print(text)
    if args.plot:
        plot(res, args.plot)
    return write_table(args.write, BEGIN, END, text) if args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
