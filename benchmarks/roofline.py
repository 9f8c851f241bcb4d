"""The rate the forward pass's own operation shapes reach in isolation (the measured roofline).

    python benchmarks/roofline.py [--d 20] [--n 40] [--batch 1024] [--write docs/performance.md]

``icl-verify bench`` compares every construction with a square 1024^3 GEMM.  The constructions
do not multiply square matrices: for each attention kind the transformer runs a fixed set of
small batched products (:mod:`constructions.fastpath`), and those shapes have their own best
rate on this machine.  This script times each shape alone, at the batch chunk the pass runs in
(:func:`constructions.fastpath.chunk_size`), scaled to the batch (float64, ``torch.matmul`` on
``[B, r, k] @ [k, c]`` or ``[B, r, k] @ [B, k, c]``, the best of 5 repeats of
:func:`verify.bench._timeit`) and the elementwise passes that the scores-first order adds (the
ReLU over the ``[B, H, T, S]`` scores, which moves memory and does no multiply-adds).  For
each construction of the bench it then combines the shapes of its blocks into the rate its
whole pass could reach if every product ran at its isolated rate: its FLOPs over the sum of
the isolated times.  That rate, as a share of the square-GEMM peak, is the construction's
roofline; the bench's measured share divided by it is how close the pass comes.
"""
from __future__ import annotations

import argparse
import os
import sys

import torch

sys.path.insert(0, os.path.join(os.path.dirname(__file__), ".."))

from constructions import fastpath, registry  # noqa: E402
from verify.bench import _case, _timeit, bench_one, matmul_peak  # noqa: E402
from verify.docs import write_table  # noqa: E402

BEGIN, END = "<!-- roofline-table:begin -->", "<!-- roofline-table:end -->"


def _mm_seconds(B: int, r: int, k: int, c: int, batched_right: bool) -> float:
    a = torch.randn(B, r, k, dtype=torch.float64)
    b = torch.randn(B, k, c, dtype=torch.float64) if batched_right else torch.randn(k, c, dtype=torch.float64)
    out = torch.empty(B, r, c, dtype=torch.float64)
    return _timeit(lambda: torch.matmul(a, b, out=out))


def _ew_seconds(numel: int) -> float:
    x = torch.randn(numel, dtype=torch.float64)
    out = torch.empty_like(x)
    return _timeit(lambda: torch.clamp(x, min=0, out=out))


def isolated_seconds(c, B: int, n_keys: int, T: int) -> float:
    """The pass's time if every product and elementwise pass of every block ran at its isolated
    rate (padded width as the transformer computes it; the residual adds counted as elementwise)."""
    h = torch.zeros(1, T, c.model.width, dtype=torch.float64)
    Dp = c.model.compute_width(h)
    S = n_keys if c.model.mask_query else T
    # the pass runs the batch in cache-sized chunks: time the shapes at one chunk, scaled to the batch
    chunk = fastpath.chunk_size(B, T, Dp, h, c.model.chunk_bytes)
    scale, B = B / chunk, chunk
    memo: dict = {}

    def mm(*shape):
        if shape not in memo:
            memo[shape] = _mm_seconds(*shape)
        return memo[shape]

    def ew(numel):
        if ("ew", numel) not in memo:
            memo["ew", numel] = _ew_seconds(numel)
        return memo["ew", numel]

    total = 0.0
    for blk in c.model.blocks:
        a, m = blk.attn, blk.mlp
        if a is not None:
            H, _, E = a.W_Q.shape
            order = fastpath.order_of(a, T, S)
            if order == "folded":
                # G = keys^T keys, per head QK G and (QK G) OV, then h M
                total += mm(B, Dp, S, Dp, True) + H * 2 * mm(B, Dp, Dp, Dp, True) + mm(B, T, Dp, Dp, True)
            else:
                total += mm(B, T, Dp, H * E, False) + 2 * mm(B, S, Dp, H * E, False)  # q, k, v
                if order == "kv":
                    total += H * (mm(B, E, S, E, True) + mm(B, T, E, E, True))
                else:
                    total += H * (mm(B, T, E, S, True) + mm(B, T, S, E, True)) + ew(B * H * T * S)
                total += mm(B, T, H * E, Dp, False)  # W_O
            total += ew(B * T * Dp)  # the residual add
        if m is not None:
            F = m.W_in.shape[1]
            total += mm(B, T, Dp, F, False) + mm(B, T, F, Dp, False) + ew(B * T * F) + ew(B * T * Dp)
    return total * scale


def rows(d: int, n: int, B: int) -> list[dict]:
    out = []
    for e in registry.entries():
        if e.bench is None:
            continue
        Bc = e.bench.batch if e.bench.batch != 1024 else B
        c, prep, hh = _case(e.name, d, n, Bc, torch.float64, torch.device("cpu"))
        nk, T = c.n_keys(prep.X.shape[1]), hh.shape[1]
        iso = isolated_seconds(c, Bc, nk, T)
        flops = fastpath.model_flops(c.model, nk, T) * Bc
        r = bench_one(e.name, d=d, n=n, B=Bc)
        out.append(dict(name=e.name, B=Bc, roof=flops / iso, achieved=r["flop_rate"]))
        print(e.name, file=sys.stderr)
    return out


def table(rs: list[dict], d: int, n: int) -> str:
    peak = matmul_peak(torch.float64, torch.device("cpu"))
    lines = [f"float64, d = {d}, n = {n}, {torch.get_num_threads()} threads, torch {torch.__version__}; square-GEMM peak "
             f"{peak / 1e9:.1f} GFLOP/s (measured in the same run)", "",
             "| construction | B | achieved GFLOP/s | % of peak | roofline GFLOP/s (its shapes in isolation) | "
             "roofline % of peak | achieved / roofline |", "|---|---|---|---|---|---|---|"]
    for r in rs:
        lines.append(f"| {r['name']} | {r['B']} | {r['achieved'] / 1e9:.1f} | {100 * r['achieved'] / peak:.1f} | "
                     f"{r['roof'] / 1e9:.1f} | {100 * r['roof'] / peak:.1f} | {r['achieved'] / r['roof']:.2f} |")
    return "\n".join(lines)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--d", type=int, default=20)
    ap.add_argument("--n", type=int, default=40)
    ap.add_argument("--batch", type=int, default=1024)
    ap.add_argument("--write", default=None, help="replace the generated table in this markdown file")
    args = ap.parse_args(argv)
    text = table(rows(args.d, args.n, args.batch), args.d, args.n)
    print(text)
    return write_table(args.write, BEGIN, END, text) if args.write else 0


if __name__ == "__main__":
    raise SystemExit(main())
