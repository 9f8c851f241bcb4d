"""Ridge in context: Newton-Schulz layers (Fu et al.) and GD's rate to ridge (Bai et al.)."""
import math

import numpy as np
import pytest
import torch
from hypothesis import given

import constructions
from constructions import ConstructionError, registry
from constructions.ridge import newton_alpha, newton_iters, newton_mask_bound, newton_rate
from constructions.sherman_morrison import SM_C_MAX, reciprocal_iters
from verify.knobs import ridge_lam
from verify.prompts import PromptSpec, make_prompt
from verify.reference import NewtonSchulz, RecursiveLeastSquares, Ridge
from verify.strategies import knobs, prompts
from verify.tolerance import compare_trace, solve_tolerance, tolerance

# Every layer and the rate to ridge of each claim, in both dtypes: tests/test_claims.py.


@given(p=prompts(log10_kappa=(4.0, 6.0)), k=knobs())
def test_fu_printed_value_matrices_fail(p, k):
    """Regression test for docs/pitfalls.md #17: V_1 = V_2 computes |z| v, not z v."""
    claim = registry.claim("fu23-printed-values")
    spec, k = claim.adapt(p.spec, k)  # d >= 2, so that some score is negative
    holds, figure, cmp = claim.evaluate(make_prompt(spec), k)
    assert holds and cmp.layers_failing()  # the miss starts at the first layer with a negative score


def _newton_case(seed=0, iters=None, d=5, n=12, lam_rel=-2.0):
    p = make_prompt(PromptSpec(B=2, n=n, m=3, d=d, log10_kappa=3.0, seed=seed))
    lam = ridge_lam(p.X, lam_rel)
    xb = float(np.linalg.norm(p.X, axis=-1).max())
    c = constructions.ridge_newton(d, lam, iters=iters, x_bound=xb, mask_const=10 * newton_mask_bound(n, lam, xb))
    return p, lam, xb, c


@pytest.mark.parametrize("seed", range(3))
def test_deep_newton_stays_at_round_off(seed):
    """60 layers (3-4x the default): round-off does not grow with depth (no 2^L doubling of a
    token's own copy; module docstring of constructions.ridge)."""
    p, lam, xb, c = _newton_case(seed, iters=60)
    cmp = compare_trace(c, NewtonSchulz(60, lam, newton_alpha(lam, xb)), *p.arrays)
    assert cmp.ok, cmp.report()
    A = np.einsum("bni,bnj->bij", p.X, p.X) / p.spec.n + lam * np.eye(p.spec.d)
    kappa = np.linalg.cond(A)
    w = Ridge(lam).fit(p.X, p.y).iterates_[-1]
    scale = np.linalg.norm(p.Xq, axis=-1) * np.linalg.norm(w, axis=-1)[:, None]
    assert (np.abs(c.predict(*p.arrays) - Ridge(lam).fit(p.X, p.y).predict(p.Xq))
            <= solve_tolerance(torch.float64, p.spec.d, kappa[:, None], scale) + cmp.tol[-1]).all()


def test_default_iterations_follow_log_kappa():
    for lam, xb in [(1.0, 1.0), (1e-2, 1.0), (1e-4, 3.0), (1e-8, 1.0)]:
        k = newton_iters(lam, xb)
        q = newton_rate(lam, xb)
        assert q ** (2**k) <= 2.0**-53 < q ** (2 ** (k - 1))
        assert k <= math.log2((xb**2 + lam) / lam) + 6


def test_u_slot_holds_the_scaled_iterate():
    p, lam, xb, c = _newton_case(1, iters=4)
    U = c.read_slot(*p.arrays, "u")  # [S+1, B, T, d]
    A = np.einsum("bni,bnj->bij", p.X, p.X) / p.spec.n + lam * np.eye(p.spec.d)
    alpha = newton_alpha(lam, xb)
    M = np.broadcast_to(np.eye(p.spec.d), A.shape).copy()  # Mt_0 = I
    xmax = np.linalg.norm(p.X, axis=-1).max()
    mags = []
    for k in range(1, 5):
        M = 2 * M - alpha * M @ A @ M
        want = np.einsum("bij,bnj->bni", M, p.X)
        # the layer sums terms of size |x| (|Mt| + tr(Mt alpha A Mt)) (verify.reference.NewtonSchulz)
        mags.append(xmax * (np.linalg.norm(M, 2, axis=(1, 2)) + np.trace(alpha * M @ A @ M, axis1=1, axis2=2)).max())
        tol = tolerance(torch.float64, p.spec.n, p.spec.d, np.maximum.accumulate(mags))[-1]
        assert np.abs(U[k][:, : p.spec.n] - want).max() <= tol


def test_newton_domain_errors():
    p, lam, xb, c = _newton_case(2)
    with pytest.raises(ConstructionError, match="x_bound"):
        c.predict(p.X * 1.01, p.y, p.Xq)
    small = constructions.ridge_newton(p.spec.d, lam, x_bound=xb, mask_const=1.0)
    with pytest.raises(ConstructionError, match="mask_const"):
        small.predict(*p.arrays)
    with pytest.raises(ConstructionError, match="lam"):
        constructions.ridge_newton(3, 0.0)


def test_newton_resources():
    c = constructions.ridge_newton(20, 0.01, iters=10)
    r = c.resources
    assert (r["layers"], r["heads"], r["width"], r["mlp_width"]) == (11, 6, 43, 0)


# -- Sherman-Morrison ------------------------------------------------------------------------
def _sm_case(seed=0, n=6, d=3, lam=0.2):
    p = make_prompt(PromptSpec(B=2, n=n, m=2, d=d, log10_kappa=2.0, seed=seed))
    xb = float(np.linalg.norm(p.X, axis=-1).max())
    return p, xb, constructions.ridge_sherman_morrison(d, lam, n, x_bound=xb)


@given(p=prompts(n=(1, 12), d=(1, 6)), k=knobs(log10_lam=(-2.0, 0.5)))
def test_rls_reference_is_prefix_ridge(p, k):
    """The reference itself: step t equals np.linalg.solve on the first t+1 examples."""
    lam = ridge_lam(p.X, k.log10_lam)
    ref = RecursiveLeastSquares(lam).fit(p.X, p.y)
    n, d = p.spec.n, p.spec.d
    for t in range(n):
        Xt, yt = p.X[:, : t + 1], p.y[:, : t + 1]
        A = np.einsum("bni,bnj->bij", Xt, Xt) + n * lam * np.eye(d)
        w = np.linalg.solve(A, np.einsum("bnd,bn->bd", Xt, yt)[..., None])[..., 0]
        # the recursion's round-off: one closed-form solve's worth per step absorbed (depth t + 1),
        # relative to the size of the terms the updates sum (the reference's running magnitude)
        scale = np.maximum.accumulate(ref.magnitude_, axis=0)[t + 1]
        tol = (t + 1) * solve_tolerance(torch.float64, d, np.linalg.cond(A), scale)
        assert (np.linalg.norm(ref.iterates_[t + 1] - w, axis=-1) <= tol).all()


def test_sm_state_is_the_prefix_inverse():
    p, xb, c = _sm_case(1)
    P = c.read_slot(*p.arrays, "P")  # [S+1, B, T, d*d]
    n, d, lam = 6, 3, 0.2
    # P's entries are at most 1/mu; the error model with that scale, depth = blocks run
    tol = tolerance(torch.float64, n, d, np.full(n + 1, 1 / (n * lam)), c.step_blocks)
    np.testing.assert_array_equal(P[0], np.broadcast_to(np.eye(d).ravel() / (n * lam), P[0].shape))
    for t in range(1, n + 1):
        A = np.einsum("bni,bnj->bij", p.X[:, :t], p.X[:, :t]) + n * lam * np.eye(d)
        want = np.linalg.inv(A).reshape(2, 1, d * d)
        assert np.abs(P[t] - want).max() <= tol[t - 1]


def test_sm_domain_and_shape_errors():
    p, xb, c = _sm_case(3)
    with pytest.raises(ConstructionError, match="n=6"):
        c.predict(p.X[:, :5], p.y[:, :5], p.Xq)
    with pytest.raises(ConstructionError, match="x_bound"):
        c.predict(p.X * 2, p.y, p.Xq)
    small = constructions.ridge_sherman_morrison(3, 0.2, 6, x_bound=xb, mask_const=1.0)
    with pytest.raises(ConstructionError, match="mask_const"):
        small.predict(*p.arrays)


def test_sm_perturbed_weight_is_caught_at_its_step():
    p, xb, c = _sm_case(4)
    assert compare_trace(c, RecursiveLeastSquares(0.2), *p.arrays).ok
    step = 2
    block = c.model.blocks[step * c.step_blocks]  # the block selecting example `step`
    W = block.attn.W_O.data
    W[W != 0] *= 1 + 1e-7
    cmp = compare_trace(c, RecursiveLeastSquares(0.2), *p.arrays)
    assert not cmp.ok and cmp.layers_failing()[0] == step + 1


def test_reciprocal_iterations():
    for C in (1.5, 10.0, 1e4):
        J = reciprocal_iters(C)
        assert (1 - 1 / C) ** (2**J) <= 2.0**-53 < (1 - 1 / C) ** (2 ** (J - 1))


def test_sm_resources():
    c = constructions.ridge_sherman_morrison(4, 0.1, 10, x_bound=1.0)
    J = reciprocal_iters(1 + 1.0 / (10 * 0.1))
    r = c.resources
    assert c.step_blocks == 2 * J + 4 and r["layers"] == 10 * (2 * J + 4) + 1
    assert r["width"] == 4 * 4 + 4 * 4 + 10 + 6


def test_sm_with_too_small_mask_leaks_other_examples():
    p, xb, c = _sm_case(5)
    from constructions.sherman_morrison import sm_mask_bound

    bound = float(sm_mask_bound(torch.from_numpy(p.X), torch.from_numpy(p.y), 0.2, xb).max())
    small = constructions.ridge_sherman_morrison(3, 0.2, 6, x_bound=xb, mask_const=bound / 100)
    assert not compare_trace(small, RecursiveLeastSquares(0.2), *p.arrays, check=False).ok


@pytest.mark.parametrize("dtype, scale, side", [(torch.float32, 1e-16, "underflow"), (torch.float32, 1e15, "overflow"),
                                                (torch.float64, 1e-110, "underflow"), (torch.float64, 1e100, "overflow")])
def test_newton_refuses_prompts_whose_products_leave_the_dtype(dtype, scale, side):
    """Measured without the check: 78% error at |x| ~ 1e-16 in float32 (1e-110 in float64), NaN above."""
    p = make_prompt(PromptSpec(seed=1, B=2, n=8, d=3, m=2))
    X, y, Xq = p.X * scale, p.y * scale, p.Xq * scale
    xb = float(np.linalg.norm(X, axis=-1).max())
    lam = 0.1 * xb**2
    c = constructions.ridge_newton(3, lam, x_bound=xb, mask_const=10 * newton_mask_bound(8, lam, xb)).to(dtype)
    with pytest.raises(ConstructionError, match=side):
        c.predict(X, y, Xq)
    ok = 1e-9 if dtype == torch.float32 else 1e-90  # inside the range the same prompt is ridge
    X, y, Xq = p.X * ok, p.y * ok, p.Xq * ok
    xb, lam = xb / scale * ok, lam / scale**2 * ok**2
    c = constructions.ridge_newton(3, lam, x_bound=xb, mask_const=10 * newton_mask_bound(8, lam, xb)).to(dtype)
    rel = np.abs(np.asarray(c.predict(X, y, Xq), np.float64) - Ridge(lam).fit(X, y).predict(Xq)).max()
    assert rel <= 1e3 * torch.finfo(dtype).eps * np.abs(Ridge(lam).fit(X, y).predict(Xq)).max()


def test_sherman_morrison_refuses_small_lam():
    """C = 1 + x_bound^2/(n lam) above SM_C_MAX is refused with the smallest lam that is accepted."""
    n, xb = 4, 1.0
    lam_min = xb**2 / (n * (SM_C_MAX - 1))
    constructions.ridge_sherman_morrison(2, lam_min * 1.001, n, x_bound=xb)
    with pytest.raises(ConstructionError, match="lam >= "):
        constructions.ridge_sherman_morrison(2, lam_min / 2, n, x_bound=xb)
