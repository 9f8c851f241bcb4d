"""Softmax attention in place of linear attention, measured: von Oswald et al.'s App. A.9 head pair
(`softmax_gd`) and the softmax copying layer of Prop. 3 (`copy_gd(attention="softmax")`).

    python benchmarks/softmax_lsa.py [--write docs/vonoswald.md]

Table 1: the readout error of ``softmax_gd`` (3 layers) against GD, relative to the GD readout,
as the score scale ``beta S`` (S the largest score) goes from 1e-7 to 1, in float64 and float32,
on 64 centred random prompts (d = 5, n = 20; the median over prompts).  The error is
``O((beta S)^2)`` until the two heads' cancellation, ``~ eps / (beta S)``, takes over; the scale
where float32 breaks down is where its error stops falling.

Table 2: the readout error of the softmax copying layer (then 3 GD layers) against GD, and its
bound :func:`constructions.copying.copy_bound`, as beta grows (d = 5, n = 10, 64 prompts; the
median error and the largest error/bound ratio).
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np
import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from constructions.copying import copy_bound, copy_gd  # noqa: E402
from constructions.softmax_heads import softmax_gd  # noqa: E402
from verify.docs import write_table  # noqa: E402
from verify.knobs import stable_lr  # noqa: E402
from verify.prompts import PromptSpec, make_prompt  # noqa: E402
from verify.reference import GD  # noqa: E402

BEGIN, END = "<!-- softmax-lsa:begin -->", "<!-- softmax-lsa:end -->"
STEPS = 3


def _prompt(n, d=5, B=64, centred=True):
    p = make_prompt(PromptSpec(B=B, n=n, m=1, d=d, seed=0))
    X = p.X - p.X.mean(1, keepdims=True) if centred else p.X
    return X, p.y, p.Xq


def pair_table() -> str:
    X, y, Xq = _prompt(20)
    lr = stable_lr(X, 0.5)
    want = GD(STEPS, lr).fit(X, y).trace(Xq)[-1]
    S = lr * np.abs(np.einsum("bmd,bnd->bmn", np.concatenate([X, Xq], 1), X)).max()
    lines = ["| beta S | relative error, float64 | relative error, float32 |", "|---|---|---|"]
    best = {}
    for bs in 10.0 ** np.arange(-7, 0.5, 0.5):
        row = []
        for dt in ("float64", "float32"):
            c = softmax_gd(X.shape[2], STEPS, lr, bs / S).to(dt)
            got = c.predict(X.astype(dt), y.astype(dt), Xq.astype(dt)).astype(np.float64)
            e = float(np.median(np.abs(got - want).max(-1) / np.abs(want).max(-1)))
            row.append(e)
            if e < best.get(dt, (np.inf, 0))[0]:
                best[dt] = (e, bs)
        lines.append(f"| {bs:.2g} | {row[0]:.2e} | {row[1]:.2e} |")
    lines += ["", "Smallest error: " + ", ".join(f"{dt} {e:.1e} at beta S = {bs:.2g}" for dt, (e, bs) in best.items())
              + f" (eps^(1/3): float64 {np.finfo(np.float64).eps ** (1 / 3):.1e}, float32 "
                f"{np.finfo(np.float32).eps ** (1 / 3):.1e})."]
    return "\n".join(lines)


def copy_table() -> str:
    X, y, Xq = _prompt(10, centred=False)
    lr = stable_lr(X, 0.5)
    want = GD(STEPS, lr).fit(X, y).trace(Xq)[-1]
    lines = ["| beta | median readout error | largest error / bound | error(beta) / error(beta + 2) (median) |",
             "|---|---|---|---|"]
    for beta in (8.0, 12.0, 16.0, 20.0, 24.0, 28.0):  # copy_gd refuses beta < 2 ln(3n) = 6.8
        errs = [np.abs(copy_gd(X.shape[2], X.shape[1], STEPS, lr, "softmax", b).predict(X, y, Xq) - want)
                for b in (beta, beta + 2)]
        ratio = (errs[0] / copy_bound(X, y, Xq, STEPS, lr, beta)).max()
        rate = np.median(errs[0].max(-1) / errs[1].max(-1))
        lines.append(f"| {beta:g} | {np.median(errs[0]):.2e} | {ratio:.3f} | {rate:.3f} |")
    lines.append(f"\nThe bound holds for 3 n e^(-beta/2) <= 1, here beta >= {2 * np.log(30):.1f} (smaller beta is refused); "
                 f"e = {np.e:.3f}.")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--write", default=None, help="replace the generated tables in this markdown file")
    args = ap.parse_args(argv)
    torch.set_num_threads(1)
    text = (f"**Two softmax heads for one linear head** (`softmax_gd`, {STEPS} layers, d = 5, n = 20, 64 centred "
            "prompts):\n\n" + pair_table() + f"\n\n**The softmax copying layer** (`copy_gd`, then {STEPS} GD layers, "
            "d = 5, n = 10, 64 prompts):\n\n" + copy_table())
    print(text)
    return write_table(args.write, BEGIN, END, text) if args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
