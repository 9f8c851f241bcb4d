"""Measure how much of the tolerance budget (and of the stated bounds) each claim uses.

For every exact claim and both dtypes, draw N random prompts and knobs from the
same ranges as ``icl-verify`` and report the distribution of
max_layers |model - ref| / tolerance (1.0 = the whole budget).  For claims with a
stated bound (bai23-lasso, bai23-glm, bai23-selection) the figure is the larger
of that and measured / (bound + round-off).

    python benchmarks/tolerance_margin.py [--prompts 2000] [--seed 0] [claim ...]
"""
import argparse

import numpy as np
import torch

from verify.claims import CLAIMS, Knobs
from verify.prompts import PromptSpec, make_prompt


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("claims", nargs="*")
    args = ap.parse_args()
    print(f"{'claim':<26}{'dtype':<9}{'median':>10}{'p99':>10}{'max':>10}   (ratio error/tolerance, {args.prompts} prompts, seed {args.seed})")
    for cid, claim in CLAIMS.items():
        if claim.kind != "exact" or (args.claims and cid not in args.claims):
            continue
        for dtype in (torch.float64, torch.float32):
            rng = np.random.default_rng(args.seed)
            ratios = []
            for _ in range(args.prompts):
                p = make_prompt(PromptSpec.sample(rng, **claim.fixed_prompt))
                k = Knobs.sample(rng, **claim.fixed_knobs)
                ratios.append(claim.evaluate(p, k, dtype)[1])
            r = np.array(ratios)
            print(f"{cid:<26}{str(dtype)[6:]:<9}{np.median(r):>10.2e}{np.quantile(r, 0.99):>10.2e}{r.max():>10.2e}")


if __name__ == "__main__":
    main()
