"""Layers, width and parameters each construction needs to reach ridge to relative error 1e-10.

d = 20, n = 40, kappa(A) in {10, 1e2, 1e3, 1e4} for A = X^T X/n + lam I (lam chosen to set
kappa), 16 queries; relative error = max_q |y_q - y_ridge,q| / max_q |y_ridge,q| against
``np.linalg.solve``.  Writes the table into docs/ridge.md (between the markers) and prints it.

    python benchmarks/ridge_resources.py [--check-gd-up-to 100]

GD's layer counts beyond ``--check-gd-up-to`` come from the numpy reference iterates (the
construction equals them layer by layer: claim vonoswald23-prop1-ridge); below it the
construction itself is run with that many layers.
"""
import argparse
import math
import re
from pathlib import Path

import numpy as np

import constructions
from constructions.ridge import newton_mask_bound
from verify.prompts import PromptSpec, make_prompt
from verify.reference import Ridge

D, N, TARGET = 20, 40, 1e-10
DOC = Path(__file__).resolve().parent.parent / "docs" / "ridge.md"


def case(kappa: float, seed: int = 0):
    p = make_prompt(PromptSpec(B=1, n=N, m=16, d=D, log10_kappa=6.0, noise=0.1, seed=seed))
    ev = np.linalg.eigvalsh(p.X[0].T @ p.X[0] / N)
    lam = (ev[-1] - kappa * ev[0]) / (kappa - 1)
    A = p.X[0].T @ p.X[0] / N + lam * np.eye(D)
    assert abs(np.linalg.cond(A) / kappa - 1) < 1e-6
    return p, lam, Ridge(lam).fit(p.X, p.y).predict(p.Xq)


def rel_err(trace, target):
    return np.abs(trace - target[None]).max(axis=(1, 2)) / np.abs(target).max()


def first_below(errs) -> int:
    hit = np.nonzero(errs <= TARGET)[0]
    return int(hit[0]) + 1 if len(hit) else -1


def gd_steps(p, lam, target, max_steps=2_000_000) -> int:
    A = p.X[0].T @ p.X[0] / N + lam * np.eye(D)
    lr = 1.0 / np.linalg.eigvalsh(A)[-1]
    b = p.X[0].T @ p.y[0] / N
    w = np.zeros(D)
    for t in range(1, max_steps + 1):
        w = w - lr * (A @ w - b)
        if np.abs(p.Xq[0] @ w - target[0]).max() <= TARGET * np.abs(target).max():
            return t
    return -1


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--check-gd-up-to", type=float, default=100.0)
    args = ap.parse_args()
    rows = ["| kappa(A) | construction | layers to 1e-10 | target | width | parameters | how measured |",
            "|---|---|---|---|---|---|---|"]
    for kappa in (10.0, 1e2, 1e3, 1e4):
        p, lam, target = case(kappa)
        xb = float(np.linalg.norm(p.X, axis=-1).max())
        c = constructions.ridge_newton(D, lam, x_bound=xb, mask_const=10 * newton_mask_bound(N, lam, xb))
        k = first_below(rel_err(c.trace(*p.arrays), target))
        r = constructions.ridge_newton(D, lam, iters=k, x_bound=xb).resources  # the model that stops there
        rows.append(f"| {kappa:.0e} | ridge_newton | {r['layers']} | <= log2(d kappa) + 8 = {math.log2(D * kappa) + 8:.1f} "
                    f"| {r['width']} (+{D} ridge tokens) | {r['params']} ({r['nonzero_params']} nonzero) | construction "
                    f"run: {k} Newton layers + readout (default iters = {c.params['iters']}) |")
        sm = constructions.ridge_sherman_morrison(D, lam, N, x_bound=xb)
        err = rel_err(sm.trace(*p.arrays), target)
        r = sm.resources
        rows.append(f"| {kappa:.0e} | ridge_sherman_morrison | {r['layers']} (reaches {err[-1]:.1e} at the last of "
                    f"{N} steps) | n (2J + 4) + 1, J = {(sm.step_blocks - 4) // 2} | {r['width']} | {r['params']} "
                    f"({r['nonzero_params']} nonzero) | construction run |")
        t = gd_steps(p, lam, target)
        lr = 1.0 / np.linalg.eigvalsh(p.X[0].T @ p.X[0] / N + lam * np.eye(D))[-1]
        how = "numpy reference iterates"
        if kappa <= args.check_gd_up_to:
            g = constructions.gd(D, t, lr, lam=lam)
            assert first_below(rel_err(g.trace(*p.arrays), target)) == t
            how = "construction run"
        one = constructions.gd(D, 1, lr, lam=lam).resources  # every layer is the same
        rows.append(f"| {kappa:.0e} | gd (lam > 0), lr = 1/lambda_max | {t} | ~ kappa ln(1e10) = {kappa * math.log(1e10):.0f} "
                    f"| {one['width']} | {one['params'] * t} ({one['nonzero_params'] * t} nonzero) | {how} |")
    table = "\n".join(rows)
    print(table)
    text = DOC.read_text()
    new = re.sub(r"(<!-- BEGIN ridge-resources -->\n).*?(\n<!-- END ridge-resources -->)",
                 lambda m: m.group(1) + table + m.group(2), text, flags=re.S)
    DOC.write_text(new)
    print(f"wrote {DOC}")


if __name__ == "__main__":
    main()
