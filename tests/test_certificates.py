"""The cheap certificates of the domain checks decide exactly as the exact computations they
stand in for (constructions.parts: trace and Gershgorin bounds before eigvalsh, a PSD
preconditioner reduced to a symmetric eigenvalue bound, Cholesky before the pseudo-inverse, a
sum before the elementwise finiteness scan)."""
import numpy as np
import pytest
import torch
from hypothesis import given, strategies as st

from constructions import parts
from constructions.errors import ConstructionError
from verify.tolerance import C, eps


def _prompts(seed, B=64, n=12, d=5, scale=1.0):
    rng = np.random.default_rng(seed)
    X = rng.normal(size=(B, n, d)) * rng.uniform(0.1, 2.0, size=(B, 1, 1)) * scale
    X[:, :, 0] *= rng.uniform(0.0, 3.0, size=(B, 1))  # anisotropic, some near-degenerate
    return torch.from_numpy(X)


def _exact_first(values, limit):
    bad = np.nonzero(values > limit)[0]
    return None if bad.size == 0 else int(bad[0])


@given(seed=st.integers(0, 2**31 - 1), q=st.floats(0.05, 0.999), lam=st.sampled_from([0.0, 0.01, 1.0]))
def test_lambda_max_above_matches_eigvalsh(seed, q, lam):
    X = _prompts(seed)
    exact = torch.linalg.eigvalsh(parts.covariance(X)).numpy()[:, -1] + lam
    limit = float(np.quantile(exact, q))  # a threshold inside the batch's spread: both outcomes occur
    hit = parts.lambda_max_above(X, limit, lam)
    first = _exact_first(exact, limit)
    assert (hit is None) == (first is None)
    if hit is not None:
        assert hit[0] == first and hit[1] == pytest.approx(exact[first], rel=1e-12)


def test_lambda_max_above_uses_the_exact_solver_only_when_the_bounds_do_not_decide(monkeypatch):
    calls = []
    real = torch.linalg.eigvalsh
    monkeypatch.setattr(torch.linalg, "eigvalsh", lambda A: calls.append(A.shape[0]) or real(A))
    X = _prompts(0)
    trace = float(((X * X).sum((1, 2)) / X.shape[1]).max())
    assert parts.lambda_max_above(X, trace * 1.01) is None and calls == []  # decided by the trace
    exact = real(parts.covariance(X))[:, -1]
    parts.lambda_max_above(X, float(exact.median()))
    assert calls and calls[0] < X.shape[0]  # the exact solve ran on the undecided prompts only


@given(seed=st.integers(0, 2**31 - 1), scale=st.floats(0.01, 3.0), psd=st.booleans())
def test_precond_check_psd_path_matches_the_general_eigenvalues(seed, scale, psd):
    rng = np.random.default_rng(seed)
    d = 4
    G = rng.normal(size=(d, d))
    P = scale * (G @ G.T / d if psd else G)
    X = _prompts(seed, d=d)
    A = parts.covariance(X)
    rho = torch.linalg.eigvals(torch.eye(d, dtype=A.dtype) - torch.from_numpy(P) @ A).abs().max(-1).values.numpy()
    first = _exact_first(rho, 1 + parts.STABILITY_SLACK)
    check = parts.precond_check(P[None])
    if first is None:
        check(X, None, None)
    else:
        with pytest.raises(ConstructionError, match=f"for prompt {first} of the batch"):
            check(X, None, None)


@given(seed=st.integers(0, 2**31 - 1), n=st.integers(1, 8), lam=st.sampled_from([0.0, 1e-3]))
def test_spd_solve_matches_the_pseudo_inverse(seed, n, lam):
    X = _prompts(seed, B=16, n=n, d=4)  # n < d: singular covariances take the fallback
    A = parts.covariance(X) + lam * torch.eye(4, dtype=X.dtype)
    b = torch.from_numpy(np.random.default_rng(seed).normal(size=(16, 4)))
    b = (A @ b[..., None])[..., 0]  # b in the range of A: A^+ b is the minimum-norm solution
    want = (torch.linalg.pinv(A, hermitian=True) @ b[..., None])[..., 0]
    got = parts.spd_solve(A, b)
    # both solves are backward stable: each is within C eps d cond(A) |A^+ b| of the exact solution
    cond = torch.linalg.cond(A).clamp(max=1 / eps(torch.float64))
    assert torch.all((got - want).norm(dim=-1) <= 2 * C * eps(torch.float64) * 4 * cond * want.norm(dim=-1))


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_all_finite_matches_the_elementwise_scan(dtype):
    big = torch.finfo(dtype).max
    cases = [[0.0, 0.0], [big / 2] * 4, [1.0, float("nan")], [float("inf"), -float("inf")], [big, big, -1.0]]
    for values in cases:  # the last two sums are not finite: one of non-finite, one of finite terms
        t = torch.tensor(values, dtype=dtype)
        assert parts.all_finite(t) == bool(torch.isfinite(t).all())


def test_spd_solve_does_not_trust_a_factorisation_of_a_singular_matrix():
    """Found by hypothesis (seed 2, n = 2 < d = 4): a rank-2 covariance whose Cholesky factorisation
    succeeded in floats with a round-off pivot gave a solution 30x too long; such pivots now take the
    pseudo-inverse."""
    X = _prompts(2, B=16, n=2, d=4)
    A = parts.covariance(X)
    b = (A @ torch.from_numpy(np.random.default_rng(2).normal(size=(16, 4)))[..., None])[..., 0]
    want = (torch.linalg.pinv(A, hermitian=True) @ b[..., None])[..., 0]
    assert torch.allclose(parts.spd_solve(A, b), want, rtol=1e-8, atol=1e-8)


def test_prefix_lambda_max_in_blocks_matches_every_prefix_and_refuses_overflow():
    """The curvature of every prefix, in blocks that hold the element limit whatever n and d (a
    limit of 40 elements forces blocks of prompts and of prefixes), against a loop over prefixes."""
    X = torch.from_numpy(np.random.default_rng(0).normal(size=(7, 13, 3)))
    want = torch.stack([max(torch.linalg.eigvalsh(X[b, :k].T @ X[b, :k] / k)[-1] for k in range(1, 14))
                        for b in range(7)])
    assert torch.allclose(parts.prefix_lambda_max(X), want, rtol=1e-13, atol=0)
    with parts.size_limit(max_elements=40):
        assert torch.allclose(parts.prefix_lambda_max(X), want, rtol=1e-13, atol=0)
    X[5, 0] = 1e200
    with pytest.raises(ConstructionError, match="prompt 5"):
        parts.prefix_lambda_max(X)
