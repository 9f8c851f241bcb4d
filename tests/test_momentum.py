"""Heavy-ball momentum (constructions.momentum): the previous iterate's slot, the stability
domain, and the reduction to GD at beta = 0.  Every layer against the reference on random
prompts: tests/test_claims.py (claim polyak64-heavy-ball)."""
import numpy as np
import pytest
import torch
from hypothesis import given

import constructions
from constructions import ConstructionError
from verify.knobs import stable_lr
from verify.prompts import PromptSpec, make_prompt
from verify.reference import GD, HeavyBall
from verify.strategies import knobs, prompts
from verify.tolerance import assert_trace_matches, tolerance


@given(p=prompts(), k=knobs())
def test_slot_p_holds_the_previous_residual(p, k):
    """After step t the context ``p`` slots hold ``y_i - w_{t-1}.x_i``, the ``y`` slots ``y_i - w_t.x_i``."""
    lr, beta = stable_lr(p.X, k.lr_factor), 0.5
    c = constructions.heavy_ball(p.spec.d, k.steps, lr, beta)
    ref = HeavyBall(k.steps, lr, beta).fit(p.X, p.y)
    P = c.read_slot(*p.arrays, "p")[1:, :, : p.spec.n, 0]  # [S, B, n]
    Y = c.read_slot(*p.arrays, "y")[1:, :, : p.spec.n, 0]
    scale = ref.scale(p.X) + np.abs(p.y)[None]  # the error model with x_i in place of x_q, plus |y_i|
    tol = tolerance(torch.float64, p.spec.n, p.spec.d, scale)
    prev = p.y[None] - np.einsum("bnd,sbd->sbn", p.X, ref.iterates_[:-1])
    now = p.y[None] - np.einsum("bnd,sbd->sbn", p.X, ref.iterates_[1:])
    assert (np.abs(P - prev) <= tol).all() and (np.abs(Y - now) <= tol).all()


@given(p=prompts(), k=knobs())
def test_beta_zero_is_gd(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    assert_trace_matches(constructions.heavy_ball(p.spec.d, k.steps, lr, 0.0), GD(k.steps, lr=lr), *p.arrays)


def test_domain_and_parameters():
    p = make_prompt(PromptSpec(B=2, n=8, m=1, d=3, seed=1))
    lmax = float(np.linalg.eigvalsh(np.einsum("bni,bnj->bij", p.X, p.X) / 8)[:, -1].max())
    beta = 0.5
    constructions.heavy_ball(3, 4, 1.99 * (1 + beta) / lmax, beta).predict(*p.arrays)  # inside the limit
    with pytest.raises(ConstructionError, match="stability limit"):
        constructions.heavy_ball(3, 4, 2.01 * (1 + beta) / lmax, beta).predict(*p.arrays)
    for bad in (dict(beta=1.0), dict(beta=-0.1), dict(lr=0.0)):
        with pytest.raises(ConstructionError, match="beta|lr"):
            constructions.heavy_ball(**{**dict(d=3, steps=2, lr=0.1, beta=0.5), **bad})
