"""Nonlinear in-context regression: the kernel smoother, functional GD, kernel ridge and plain
linear GD on the same tasks, test loss against depth; writes the table of docs/nonlinear.md and
docs/nonlinear.png.

    python benchmarks/nonlinear.py            # ~20 s on 2 cores

Tasks (B = 64 prompts, n = 40 examples, 20 queries each):

* ``sine``: x ~ U(-pi, pi), y = sin(x); every method sees the input ``(2x/pi, 1/2)`` (d = 2: the
  constant coordinate moves the ReLU kernel's kinks away from the origin, and is small enough
  that ``relu(x . x')`` is not linear on the data);
* ``relu-net``: a random two-layer ReLU network with 8 hidden units on x ~ N(0, I_4/4), inputs
  ``(x, 1)`` (d = 5), y normalised to unit variance over the draw.

Methods, all run as the toolkit's transformers except kernel ridge (a numpy solve):

* ``gd``: linear GD (von Oswald's Prop. 1), lr = 1/lambda_max per prompt batch;
* ``functional_gd``: ReLU-kernel functional GD (Cheng et al. 2023), lr = 1/(kappa_max/n), lam = 0;
* ``functional_gd (ridge)``: the same with its proximal ridge step, ``lam = 1e-2 + max(0, -kappa_min/n)``
  over the batch (the ReLU kernel need not be positive semi-definite; above that the iteration
  contracts to its fixed point) and ``lr = 1/(kappa_max/n + lam)``;
* ``kernel ridge``: that fixed point, ``k^T (K + n lam I)^{-1} y`` with the same kernel and lam;
* ``nw_kernel_smoother``: one softmax layer (Gaussian kernel), beta from a grid, the best on a
  separate draw.

The loss is the mean squared error on the queries, over the batch.
"""
from __future__ import annotations

import math
import os
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

import constructions  # noqa: E402
from verify.docs import write_table  # noqa: E402

DOCS = Path(__file__).resolve().parent.parent / "docs"
BEGIN, END = "<!-- nonlinear:begin -->", "<!-- nonlinear:end -->"
DEPTHS = (1, 2, 5, 10, 20, 50, 100)
B, N, M = 64, 40, 20


def task(name: str, seed: int):
    rng = np.random.default_rng([seed, len(name)])
    if name == "sine":
        x = rng.uniform(-math.pi, math.pi, size=(B, N + M, 1))
        y = np.sin(x[..., 0])
        X = np.concatenate([2 * x / math.pi, np.full_like(x, 0.5)], -1)
    else:
        x = rng.normal(size=(B, N + M, 4)) / 2
        W, b, a = rng.normal(size=(B, 4, 8)), rng.normal(size=(B, 1, 8)) / 2, rng.normal(size=(B, 8, 1))
        y = (np.maximum(np.einsum("bnd,bdh->bnh", x, W) + b, 0) @ a)[..., 0]
        y = (y - y.mean()) / y.std()
        X = np.concatenate([x, np.ones_like(x[..., :1])], -1)
    return X[:, :N], y[:, :N], X[:, N:], y[:, N:]


def mse(pred, yq) -> float:
    return float(((pred - yq) ** 2).mean())


def curves(name: str) -> dict:
    X, y, Xq, yq = task(name, 0)
    d = X.shape[-1]
    out = {}
    lam_max = float(np.linalg.eigvalsh(np.einsum("bnd,bne->bde", X, X) / N).max())
    gd = constructions.gd(d, max(DEPTHS), 1.0 / lam_max).trace(X, y, Xq)
    out["gd"] = [mse(gd[t - 1], yq) for t in DEPTHS]
    K = np.maximum(np.einsum("bjd,bid->bji", X, X), 0)
    ev = np.linalg.eigvalsh(K) / N
    lam = 1e-2 + max(0.0, float(-ev.min()))
    for label, l2 in (("functional_gd", 0.0), ("functional_gd (ridge)", lam)):
        tr = constructions.functional_gd(d, max(DEPTHS), 1.0 / (float(ev.max()) + l2), l2).trace(X, y, Xq)
        out[label] = [mse(tr[t - 1], yq) for t in DEPTHS]
    Kq = np.maximum(np.einsum("bqd,bid->bqi", Xq, X), 0)
    alpha = np.linalg.solve(K + N * lam * np.eye(N), y[..., None])[..., 0]
    out[f"kernel ridge (lam = {lam:.3g})"] = [mse(np.einsum("bqi,bi->bq", Kq, alpha), yq)] * len(DEPTHS)
    Xv, yv, Xqv, yqv = task(name, 1)  # beta chosen on another draw
    grid = [0.5, 1, 2, 5, 10, 20, 50, 100, 200, 500, 1000]
    best = min(grid, key=lambda b: mse(constructions.nw_kernel_smoother(d, b, "gaussian").predict(Xv, yv, Xqv), yqv))
    nw = mse(constructions.nw_kernel_smoother(d, best, "gaussian").predict(X, y, Xq), yq)
    out[f"nw_kernel_smoother (beta = {best:g})"] = [nw] * len(DEPTHS)
    out["predict 0"] = [mse(0 * yq, yq)] * len(DEPTHS)
    return out


def table(results: dict) -> str:
    lines = [f"Test MSE over {B} prompts of n = {N} examples and {M} queries (`python benchmarks/nonlinear.py`).", ""]
    for name, res in results.items():
        lines += [f"**{name}**", "", "| method | " + " | ".join(f"depth {t}" for t in DEPTHS) + " |",
                  "|---|" + "---|" * len(DEPTHS)]
        for label, vals in res.items():
            lines.append(f"| {label} | " + " | ".join(f"{v:.3g}" for v in vals) + " |")
        lines.append("")
    return "\n".join(lines).rstrip()


def plot(results: dict, path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(1, len(results), figsize=(11, 4))
    for ax, (name, res) in zip(axes, results.items()):
        for label, vals in res.items():
            flat = len(set(vals)) == 1
            ax.plot(DEPTHS, vals, ls="--" if flat else "-", marker=None if flat else "o", label=label)
        ax.set_xscale("log")
        ax.set_yscale("log")
        ax.set_xlabel("depth (layers)")
        ax.set_ylabel("test MSE")
        ax.set_title(name)
        ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"wrote {path}")


def main() -> int:
    results = {name: curves(name) for name in ("sine", "relu-net")}
    text = table(results)
    print(text)
    plot(results, DOCS / "nonlinear.png")
    return write_table(DOCS / "nonlinear.md", BEGIN, END, text)


if __name__ == "__main__":
    raise SystemExit(main())
