"""Round-off of the Sherman-Morrison / RLS recursion against the closed-form ridge, by the
conditioning ``C = 1 + x_bound^2/(n lam)`` (the reciprocal's start, ``|P_0| max|x|^2 = C - 1``).

For each C, 16 prompts (n = 8, d = 4 and n = 16, d = 8, 2 queries each): the largest
``|y - y_ridge| / (|x_q| |w*|)`` in units of float64 eps, for the numpy recursion with exact
division (``verify.reference.RecursiveLeastSquares``) and for ``ridge_sherman_morrison``, which
refuses ``C > SM_C_MAX``.  Backs ``constructions.sherman_morrison.SM_C_MAX`` (docs/tolerance.md).

    python benchmarks/sm_conditioning.py
"""
import numpy as np
import torch

import constructions
from constructions.errors import ConstructionError
from constructions.sherman_morrison import SM_C_MAX, reciprocal_start, sm_lam, sm_mask_bound
from verify.bounds import ridge_quantities
from verify.prompts import PromptSpec, make_prompt
from verify.reference import RecursiveLeastSquares

EPS = np.finfo(np.float64).eps


def errors(n, d, C, seed=0):
    p = make_prompt(PromptSpec(seed=seed, B=16, n=n, d=d, m=2))
    xb = float(np.linalg.norm(p.X, axis=-1).max())
    lam = sm_lam(n, xb, np.log10(C - 1))
    w, _, _ = ridge_quantities(p, lam)
    target = np.einsum("bmd,bd->bm", p.Xq, w)
    qn = np.linalg.norm(p.Xq, axis=-1) * np.linalg.norm(w, axis=-1)[:, None]
    rel = lambda y: float((np.abs(y - target) / qn).max() / EPS)  # noqa: E731
    rls = rel(RecursiveLeastSquares(lam).fit(p.X, p.y).trace(p.Xq)[-1])
    try:
        bound = float(sm_mask_bound(*(torch.from_numpy(a) for a in p.arrays[:2]), lam, xb).max())
        c = constructions.ridge_sherman_morrison(d, lam, n, x_bound=xb, mask_const=1e3 * bound)
    except ConstructionError:
        return reciprocal_start(lam, n, xb), rls, None
    return reciprocal_start(lam, n, xb), rls, rel(np.asarray(c.predict(*p.arrays)))


def main():
    print(f"SM_C_MAX = {SM_C_MAX:.0e}\n")
    print("| C | n, d | numpy RLS (eps) | ridge_sherman_morrison (eps) |")
    print("|---|---|---|---|")
    for C in (1.3, 11.0, 1e2, SM_C_MAX - 1, 1e4, 1e6, 1e9, 1e12):
        for n, d in ((8, 4), (16, 8)):
            c, rls, model = errors(n, d, C)
            shown = "refused (C > SM_C_MAX)" if model is None else f"{model:.3g}"
            print(f"| {c:.3g} | {n}, {d} | {rls:.3g} | {shown} |")


if __name__ == "__main__":
    main()
