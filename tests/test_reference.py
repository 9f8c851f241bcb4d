"""The references themselves: independent checks of the numpy algorithms."""
import numpy as np
import torch
from hypothesis import given

from verify.knobs import random_precond, stable_lr
from verify.prompts import PromptSpec, make_prompt
from verify.reference import GD, Ridge
from verify.strategies import knobs, prompts
from verify.tolerance import solve_tolerance, tolerance


def test_gd_converges_to_ridge_and_least_squares():
    p = make_prompt(PromptSpec(B=2, n=30, d=4, log10_kappa=0.5, seed=1))
    for lam in (0.0, 0.3):
        lr = stable_lr(p.X, 1.0, lam)
        w = GD(2000, lr=lr, lam=lam).fit(p.X, p.y).iterates_[-1]
        w_star = Ridge(lam).fit(p.X, p.y).iterates_[-1]
        assert np.abs(w - w_star).max() <= 1e-12 * np.abs(w_star).max()


@given(p=prompts(), k=knobs())
def test_precond_lr_identity_is_gd_and_per_step_matches(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    a = GD(k.steps, lr=lr).fit(p.X, p.y).iterates_
    b = GD(k.steps, precond=lr * np.eye(p.spec.d)).fit(p.X, p.y).iterates_
    np.testing.assert_array_equal(a, b)


@given(p=prompts(), k=knobs())
def test_gd_iterates_satisfy_the_step_equation(p, k):
    P = random_precond(p.X, k.lr_factor, k.seed, k.skew)
    ref = GD(k.steps, precond=P).fit(p.X, p.y)
    W = ref.iterates_
    for t in range(k.steps):
        grad = np.einsum("bnd,bn->bd", p.X, np.einsum("bnd,bd->bn", p.X, W[t]) - p.y) / p.spec.n
        step = W[t] - np.einsum("ij,bj->bi", P, grad)
        tol = tolerance(torch.float64, p.spec.n, p.spec.d, ref.scale(np.eye(p.spec.d)[None].repeat(p.spec.B, 0)))[t]
        assert (np.abs(W[t + 1] - step) <= tol).all()


def test_unbatched_reference_input():
    p = make_prompt(PromptSpec(B=1, n=6, d=2, seed=3))
    a = GD(3, lr=0.1).fit(p.X[0], p.y[0]).trace(p.Xq[0])
    b = GD(3, lr=0.1).fit(p.X, p.y).trace(p.Xq)
    np.testing.assert_array_equal(a, b)


def test_prompt_generator_is_deterministic_and_conditioned():
    spec = PromptSpec(B=2, n=30, m=2, d=5, log10_kappa=3.0, log10_scale=1.0, seed=7)
    a, b = make_prompt(spec), make_prompt(spec)
    np.testing.assert_array_equal(a.X, b.X)
    np.testing.assert_array_equal(a.y, b.y)
    s = np.linalg.svd(a.X[0], compute_uv=False)
    # SVD / eigvalsh of the generated matrix: round-off relative to the condition number
    assert abs(s[0] / s[-1] - 1e3) <= solve_tolerance(torch.float64, 5, 1e3, 1e3)
    assert abs(np.linalg.eigvalsh(a.X[0].T @ a.X[0] / 30)[-1] - 100.0) <= solve_tolerance(torch.float64, 5, 1.0, 100.0)
    assert a.X.shape == (2, 30, 5) and a.y.shape == (2, 30) and a.Xq.shape == (2, 2, 5)
    assert not np.array_equal(make_prompt(spec.with_(seed=8)).X, a.X)
