"""Property tests: every layer of every linear-self-attention construction against its numpy
reference, over the extremes of the prompt space (tests/test_claims.py checks every claim on the
default ranges, in both dtypes).

Prompts and knobs are drawn by hypothesis (verify.strategies); the arrays are built from a
drawn seed.  Tolerances come from verify.tolerance only.
"""
import numpy as np
import pytest
import torch
from hypothesis import given, note
from hypothesis import strategies as st

import constructions
from constructions import registry
from queries import claim_ids
from verify.knobs import random_precond, stable_lr
from verify.reference import GD, GDPlusPlus
from verify.strategies import knobs, prompts
from verify.tolerance import assert_trace_matches, compare_trace, tolerance

#: the exact claims on constructions of linear attention only (ReLU ones: tests/test_bai.py)
EXACT = claim_ids(kind="exact", attention_only="linear")
DTYPES = [torch.float64, torch.float32]


def _check(claim_id, p, k, dtype=torch.float64):
    k = registry.claim(claim_id).adapt(p.spec, k)[1]  # the claim's fixed knobs (e.g. one step)
    c, ref, *adapted = registry.claim(claim_id).build(p, k)
    p = adapted[0] if adapted else p  # a case may adapt the prompt (e.g. to 0/1 labels)
    note(f"{p.describe()} | {k}")
    cmp = assert_trace_matches(c.to(dtype), ref, *p.arrays)
    assert cmp.model.shape == (k.steps, p.spec.B, p.spec.m)  # every layer compared
    return cmp


@pytest.mark.parametrize("claim_id", EXACT)
@given(p=prompts(n=(1, 8), d=(9, 16)), k=knobs())
def test_underdetermined_n_less_than_d(claim_id, p, k):
    _check(claim_id, p, k)


@pytest.mark.parametrize("claim_id", EXACT)
@given(p=prompts(n=(30, 80), d=(1, 6)), k=knobs())
def test_overdetermined_n_greater_than_d(claim_id, p, k):
    _check(claim_id, p, k)


@pytest.mark.parametrize("dtype", DTYPES, ids=["float64", "float32"])
@pytest.mark.parametrize("claim_id", EXACT)
@given(p=prompts(log10_kappa=(4.0, 6.0), n=(10, 40)), k=knobs())
def test_ill_conditioned_kappa_up_to_1e6(claim_id, dtype, p, k):
    _check(claim_id, p, k, dtype)


@pytest.mark.parametrize("claim_id", EXACT)
@given(p=prompts(log10_scale=st.sampled_from([-3.0, -2.5, 2.5, 3.0]), log10_wscale=st.sampled_from([-2.0, 2.0])), k=knobs())
def test_large_and_tiny_scales(claim_id, p, k):
    _check(claim_id, p, k)


@given(p=prompts(B=1), k=knobs())
def test_unbatched_equals_batched(p, k):
    c, _ = registry.claim("vonoswald23-prop1").build(p, k)
    X, y, Xq = p.X[0], p.y[0], p.Xq[0]
    t = c.trace(X, y, Xq)
    assert t.shape == (k.steps, p.spec.m)
    np.testing.assert_array_equal(t, c.trace(X[None], y[None], Xq[None])[:, 0])
    np.testing.assert_array_equal(c.predict(X, y, Xq), t[-1])


@given(p=prompts(), k=knobs())
def test_torch_in_torch_out_numpy_in_numpy_out(p, k):
    c, _ = registry.claim("vonoswald23-prop1").build(p, k)
    out_np = c.predict(*p.arrays)
    out_t = c.predict(*(torch.from_numpy(a) for a in p.arrays))
    assert isinstance(out_np, np.ndarray) and isinstance(out_t, torch.Tensor)
    np.testing.assert_array_equal(out_t.numpy(), out_np)


@given(p=prompts(), k=knobs())
def test_residual_tokens_hold_the_gd_residuals(p, k):
    """The induction invariant itself: after layer t the context y-slots hold y_i - w_t.x_i.

    The error model applies with x_i in place of x_q (``ref.scale(X)``), plus |y_i|: the
    slot holds y_i - w_t.x_i, so y_i is one of the terms it sums."""
    c, ref = registry.claim("vonoswald23-prop1").build(p, k)
    hs = c.residuals(*p.arrays)
    ref.fit(p.X, p.y)
    n = p.spec.n
    want = p.y[None] - np.einsum("bnd,sbd->sbn", p.X, ref.iterates_[1:])
    got = hs[1:, :, :n, c.layout["y"].start]
    tol = tolerance(torch.float64, n, p.spec.d, ref.scale(p.X) + np.abs(p.y)[None])
    assert (np.abs(got - want) <= tol).all()


@given(p=prompts(), k=knobs())
def test_gdpp_with_gamma_zero_is_gd(p, k):
    lr = stable_lr(p.X, k.lr_factor)
    assert_trace_matches(constructions.gd_plus_plus(p.spec.d, k.steps, lr, 0.0), GD(k.steps, lr=lr), *p.arrays)


@given(p=prompts(d=(2, 8), n=(4, 30)), k=knobs(skew=(0.5, 2.0)))
def test_preconditioner_is_not_transposed(p, k):
    """The transpose trap (docs/pitfalls.md #5): the model applies P, not P^T."""
    P = random_precond(p.X, k.lr_factor, k.seed, k.skew)
    c = constructions.preconditioned_gd(p.spec.d, k.steps, P)
    assert compare_trace(c, GD(k.steps, precond=P), *p.arrays).ok
    wrong = compare_trace(c, GD(k.steps, precond=P.T), *p.arrays, check=False)
    assert not wrong.ok, "a non-symmetric P must be distinguishable from P^T at layer 1"


@given(p=prompts(), k=knobs())
def test_per_layer_preconditioners(p, k):
    Ps = np.stack([random_precond(p.X, k.lr_factor, k.seed + t, k.skew) for t in range(k.steps)])
    c = constructions.preconditioned_gd(p.spec.d, k.steps, Ps)
    assert_trace_matches(c, GD(k.steps, precond=Ps), *p.arrays)


def test_gdpp_transforms_the_query_inputs():
    """GD++ maps the query's x too (docs/pitfalls.md #14): x_q <- (I - gamma S) x_q."""
    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(1, 6, 3)), rng.normal(size=(1, 6)), rng.normal(size=(1, 2, 3))
    gamma = 0.1
    c = constructions.gd_plus_plus(3, 1, 0.1, gamma)
    h1 = c.residuals(X, y, Xq)[1]
    S = X[0].T @ X[0] / 6
    scale = np.abs(np.concatenate([X[0], Xq[0]])).max() * (1 + gamma * np.linalg.norm(S, 2))
    tol = tolerance(torch.float64, 6, 3, np.array([scale]))[0]
    assert np.abs(h1[0, 6:, c.layout["x"].index] - Xq[0] @ (np.eye(3) - gamma * S)).max() <= tol
    assert np.abs(h1[0, :6, c.layout["x"].index] - X[0] @ (np.eye(3) - gamma * S)).max() <= tol


@given(p=prompts(n=(5, 40)), k=knobs(steps=(1, 3)))
def test_gdpp_reference_effective_weights_match_its_own_recursion(p, k):
    """The GD++ reference's effective weights reproduce the literal token recursion."""
    lr, gamma = stable_lr(p.X, k.lr_factor), stable_lr(p.X, k.gamma_factor)
    ref = GDPlusPlus(k.steps, lr, gamma).fit(p.X, p.y)
    X, r, Xq, s = p.X.copy(), p.y.copy(), p.Xq.copy(), np.zeros(p.Xq.shape[:2])
    n = p.spec.n
    for t in range(k.steps):
        g = np.einsum("bnd,bn->bd", X, r) / n
        S = np.einsum("bni,bnj->bij", X, X) / n
        r, s = r - lr * np.einsum("bnd,bd->bn", X, g), s - lr * np.einsum("bmd,bd->bm", Xq, g)
        M = np.eye(p.spec.d) - gamma * S
        X, Xq = np.einsum("bnd,bde->bne", X, M), np.einsum("bmd,bde->bme", Xq, M)
        tol = tolerance(torch.float64, n, p.spec.d, ref.scale(p.Xq))[t]
        assert (np.abs(-s - ref.trace(p.Xq)[t]) <= tol).all()
