"""The cost of ``Construction.to`` (a converted copy of the model) on a deep model.

Times, for ``ridge_sherman_morrison(d, lam=0.5, n)`` (``(2J + 4) n + 1`` blocks), three ways to
get a float32 copy of its float64 model: ``copy.deepcopy(model).to(float32)`` (what ``to`` did
before), ``model.converted(float32)`` (what it does now) and building the construction again from
its factory; best of 5 timings (``verify.bench._timeit``), and the ratios, all in one run
(docs/performance.md, "Copying a model").

    python benchmarks/model_copy.py [--d 4] [--n 16]
"""
import argparse
import copy

import torch

from constructions.sherman_morrison import ridge_sherman_morrison
from verify.bench import _timeit


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=4)
    ap.add_argument("--n", type=int, default=16)
    a = ap.parse_args()
    build = lambda: ridge_sherman_morrison(a.d, lam=0.5, n=a.n, x_bound=1.0)  # noqa: E731
    model = build().model
    rows = [("deepcopy(model).to(float32)", _timeit(lambda: copy.deepcopy(model).to(torch.float32))),
            ("model.converted(float32)", _timeit(lambda: model.converted(torch.float32))),
            ("the factory again (float64)", _timeit(build))]
    print(f"ridge_sherman_morrison(d={a.d}, n={a.n}): {len(model.blocks)} blocks, "
          f"{sum(p.numel() for p in model.parameters())} parameters")
    base = rows[0][1]
    for name, t in rows:
        print(f"{name:30s} {t * 1e3:8.2f} ms   {base / t:5.2f}x the deepcopy's speed")


if __name__ == "__main__":
    main()
