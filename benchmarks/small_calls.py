"""Small calls: ``trace`` and unvalidated ``predict`` at the sizes the property tests run at.

At d = 5, n = 10 and one or 16 prompts a block's time is torch's per-operation overhead, not its
FLOPs; this times, best of 5 (``verify.bench._timeit``), the constructions whose attention runs
scores first (ReLU heads) or per head, from their bench rows' parameters.  Run it at two commits
to compare them, in each checkout as ``PYTHONPATH=. python benchmarks/small_calls.py`` (else the
installed package is timed; docs/performance.md, "Small calls").

    python benchmarks/small_calls.py [--d 5] [--n 10]
"""
import argparse

import torch

from verify.bench import _case, _timeit

NAMES = ("relu_gd", "lasso_ista", "logistic_gd", "binary_test")


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--d", type=int, default=5)
    ap.add_argument("--n", type=int, default=10)
    a = ap.parse_args()
    print(f"d = {a.d}, n = {a.n}, float64, {torch.get_num_threads()} threads; best of 5, ms")
    print(f"{'construction':14s} {'B':>3s} {'layers':>6s} {'trace':>8s} {'predict':>8s}")
    for name in NAMES:
        for B in (1, 16):
            c, prep, _ = _case(name, a.d, a.n, B, torch.float64, torch.device("cpu"))
            X, y, Xq = (t.numpy() for t in (prep.X, prep.y, prep.Xq))
            tr = _timeit(lambda: c.trace(X, y, Xq, check=False))
            pr = _timeit(lambda: c.predict(X, y, Xq, check=False))
            print(f"{name:14s} {B:3d} {c.model.n_layers:6d} {tr * 1e3:8.3f} {pr * 1e3:8.3f}")


if __name__ == "__main__":
    main()
