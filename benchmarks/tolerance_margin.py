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

from constructions import registry


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--prompts", type=int, default=2000)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("claims", nargs="*")
    args = ap.parse_args()
    print(f"{'claim':<26}{'dtype':<9}{'median':>10}{'p99':>10}{'max':>10}   (ratio error/tolerance, {args.prompts} prompts, seed {args.seed})")
    for claim in registry.claims(args.claims):
        cid = claim.id
        if claim.kind != "exact":
            continue
        for dtype in (torch.float64, torch.float32):
            rng = np.random.default_rng(args.seed)
            ratios = []
            for _ in range(args.prompts):
                p, k = claim.sample(rng)
                ratios.append(claim.evaluate(p, k, dtype)[1])
            r = np.array(ratios)
            print(f"{cid:<26}{str(dtype)[6:]:<9}{np.median(r):>10.2e}{np.quantile(r, 0.99):>10.2e}{r.max():>10.2e}")


if __name__ == "__main__":
    main()
