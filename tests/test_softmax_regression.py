"""Softmax regression (Li et al. / Gao et al. 2023): closed forms against autograd, the
tensor trick, the attention layer, and the O(eta) label shift."""
import numpy as np
import pytest
import torch
from hypothesis import given

from constructions import softmax_regression as sr
from verify.knobs import Knobs
from verify.strategies import knobs, prompts
from verify.tolerance import C, eps

U = C * eps(torch.float64)


def _inst(p, k):
    return sr._instance(p, k)


@given(p=prompts(n=(2, 12), d=(1, 6)), k=knobs())
def test_single_regression_gradients_and_hessian_match_autograd(p, k):
    A, b, x = _inst(p, k)
    n, d = A.shape[-2:]
    alpha = torch.exp(A @ x[..., None]).sum((-1, -2))
    # the size of the gradient's terms: |A| |f||c| (normalised), |A| alpha^2 (rescaled: |u|, |c'| <= alpha)
    for L, G, mag in ((sr.loss, sr.grad, 1.0), (sr.loss_rescaled, sr.grad_rescaled, alpha**2)):
        xg = x.clone().requires_grad_(True)
        auto, = torch.autograd.grad(L(A, b, xg).sum(), xg)
        scale = torch.linalg.matrix_norm(A, 2) * mag * 2
        assert ((auto - G(A, b, x)).abs().amax(-1) <= U * (n + d) * scale).all()
    H = torch.stack([torch.autograd.functional.hessian(lambda z: sr.loss(a, bb, z), z0) for a, bb, z0 in zip(A, b, x)])
    assert ((H - sr.hessian(A, b, x)).abs().amax((-1, -2)) <= U * (n + d) * sr.hessian_bound(A, b)).all()


@given(p=prompts(n=(2, 8), d=(1, 4)), k=knobs())
def test_attention_gradients_match_autograd(p, k):
    A1, _, _ = _inst(p, k)
    g = torch.Generator().manual_seed(k.seed)
    A2 = torch.randn(A1.shape, generator=g, dtype=torch.float64)
    n, d = A1.shape[-2:]
    X = torch.randn((A1.shape[0], d, d), generator=g, dtype=torch.float64) / d
    B = torch.softmax(torch.randn((A1.shape[0], n, n), generator=g, dtype=torch.float64), -1)
    for L, rescaled in ((sr.attention_loss, False), (sr.attention_loss_rescaled, True)):
        Xg = X.clone().requires_grad_(True)
        auto, = torch.autograd.grad(L(A1, A2, B, Xg).sum(), Xg)
        S = A1 @ X @ A2.transpose(-1, -2)
        mag = (torch.exp(S).sum(-1) ** 2).sum(-1) if rescaled else n  # sum over rows of each row's term size
        scale = torch.linalg.matrix_norm(A1, 2) * torch.linalg.matrix_norm(A2, 2) * mag * 2
        err = (auto - sr.attention_grad(A1, A2, B, X, rescaled)).abs().amax((-1, -2))
        assert (err <= U * (n * n + d * d) * scale).all()


def test_vectorisation_order_matters():
    g = torch.Generator().manual_seed(0)
    A1, A2, X = (torch.randn(s, generator=g, dtype=torch.float64) for s in ((4, 3), (4, 3), (3, 3)))
    S = A1 @ X @ A2.T
    tol = U * (3 * 3 + 4) * torch.linalg.matrix_norm(A1, 2) * torch.linalg.matrix_norm(A2, 2) * torch.linalg.matrix_norm(X)
    assert (sr.vec(S) - sr.tensor_trick(A1, A2) @ sr.vec(X)).abs().max() <= tol
    assert (sr.vec(S, "col") - sr.tensor_trick(A1, A2, "col") @ sr.vec(X, "col")).abs().max() <= tol
    assert (sr.vec(S) - sr.tensor_trick(A1, A2, "col") @ sr.vec(X)).abs().max() > tol  # docs/pitfalls.md #11


def test_attention_layer_outputs_the_softmax_prediction():
    g = torch.Generator().manual_seed(1)
    A, x = torch.randn((3, 6, 4), generator=g, dtype=torch.float64), torch.randn((3, 4), generator=g, dtype=torch.float64)
    _, _, run = sr.attention_layer(4, 6)
    assert ((run(A, x) - torch.softmax((A @ x[..., None])[..., 0], -1)).abs() <= U * (6 + 4)).all()


def test_label_shift_is_first_order_in_eta():
    """|b~ - b| / eta converges to |J A grad| as eta -> 0: the shift is O(eta) with that constant."""
    from verify.prompts import PromptSpec, make_prompt

    p = make_prompt(PromptSpec(B=4, n=8, d=3, seed=3))
    A, b, x = _inst(p, Knobs(R=2.0))
    f0 = torch.softmax((A @ x[..., None])[..., 0], -1)
    gr = sr.grad(A, b, x)
    J = torch.diag_embed(f0) - f0[..., :, None] * f0[..., None, :]
    limit = torch.linalg.vector_norm((J @ (A @ gr[..., None]))[..., 0], dim=-1)
    rel = []
    for eta in (1e-2, 1e-3, 1e-4):
        f1 = torch.softmax((A @ (x - eta * gr)[..., None])[..., 0], -1)
        rel.append(((torch.linalg.vector_norm(f1 - f0, dim=-1) / eta - limit) / limit).abs().max().item())
    assert rel[0] > rel[1] > rel[2] and rel[2] < 1e-3  # the deviation shrinks ~10x per decade: O(eta^2) shift term
    assert 5 < rel[0] / rel[1] < 20 and 5 < rel[1] / rel[2] < 20


@pytest.mark.parametrize("bad", ["hessian", "grad"])
def test_a_wrong_closed_form_is_caught(bad):
    from verify.prompts import PromptSpec, make_prompt

    A, b, x = _inst(make_prompt(PromptSpec(B=2, n=5, d=3, seed=0)), Knobs(R=1.5))
    xg = x.clone().requires_grad_(True)
    if bad == "grad":
        auto, = torch.autograd.grad(sr.loss(A, b, xg).sum(), xg)
        wrong = sr.grad(A, b, x) * 2  # the papers' losses lack the 1/2: their gradients are twice ours
        assert ((auto - wrong).abs().amax(-1) > U * 8).any()
    else:
        H = torch.stack([torch.autograd.functional.hessian(lambda z: sr.loss(a, bb, z), z0) for a, bb, z0 in zip(A, b, x)])
        f, c, s = sr.softmax_parts(A, b, x)
        J = torch.diag_embed(f) - f[..., :, None] * f[..., None, :]
        wrong = A.transpose(-1, -2) @ J @ J @ A  # the Gauss-Newton part only
        assert ((H - wrong).abs().amax((-1, -2)) > U * 8).any()
        assert np.isfinite(H.numpy()).all()


# -- rescaled loss, matrix Hessian, the matrix in-context statement, the data shift ------------------
def test_rescaled_hessian_and_bounds_a_dropped_term_is_caught():
    g = torch.Generator().manual_seed(3)
    A = torch.randn((4, 5, 3), generator=g, dtype=torch.float64)
    A = A / torch.linalg.matrix_norm(A, 2)[:, None, None]  # R = 1
    x = torch.randn((4, 3), generator=g, dtype=torch.float64)
    x = x / torch.linalg.vector_norm(x, dim=-1, keepdim=True)
    b = torch.softmax(torch.randn((4, 5), generator=g, dtype=torch.float64), -1)
    H = torch.stack([torch.autograd.functional.hessian(lambda z: sr.loss_rescaled(a, bb, z), z0) for a, bb, z0 in zip(A, b, x)])
    gb, hb = sr.rescaled_bounds(1.0, 5, b)
    assert ((H - sr.hessian_rescaled(A, b, x)).abs().amax((-1, -2)) <= U * 8 * hb).all()
    assert (torch.linalg.matrix_norm(H, 2) <= hb).all()
    assert (torch.linalg.vector_norm(sr.grad_rescaled(A, b, x), dim=-1) <= gb).all()
    # without the second-order term diag(u o (c' - <b, c'>)) the Hessian is J'^T J' only: far off
    u = torch.exp(sr._mv(A, x))
    Jp = torch.diag_embed(u) - b[..., :, None] * u[..., None, :]
    gauss_newton = A.transpose(-1, -2) @ Jp.transpose(-1, -2) @ Jp @ A
    assert ((H - gauss_newton).abs().amax((-1, -2)) > 1e3 * U * 8 * hb).all()


@given(p=prompts(n=(2, 8), d=(1, 4)), k=knobs())
def test_matrix_hessian_is_the_sum_of_single_hessians(p, k):
    A1, A2, X, B = sr._matrix_instance(p, k)
    d, n = X.shape[-1], A1.shape[-2]
    H = torch.stack([torch.autograd.functional.hessian(lambda z: sr.attention_loss(a1, a2, bb, z.reshape(d, d)),
                                                       x0.reshape(-1)) for a1, a2, bb, x0 in zip(A1, A2, B, X)])
    hb = sr.attention_hessian_bound(A1, A2, B)
    assert ((H - sr.attention_hessian(A1, A2, B, X)).abs().amax((-1, -2)) <= U * (d * d + n) * hb).all()
    assert (torch.linalg.matrix_norm(H, 2) <= hb).all()


def test_matrix_gd_step_is_a_label_and_a_data_shift():
    g = torch.Generator().manual_seed(5)
    n, d = 6, 3
    A1, A2 = (torch.randn((2, n, d), generator=g, dtype=torch.float64) for _ in range(2))
    X = torch.eye(d, dtype=torch.float64) + 0.3 * torch.randn((2, d, d), generator=g, dtype=torch.float64)
    B = torch.softmax(torch.randn((2, n, n), generator=g, dtype=torch.float64), -1)
    run = sr.matrix_attention_layer(d, n)
    F = lambda Z, A2_=A2: torch.softmax(A1 @ Z @ A2_.transpose(-1, -2), -1)  # noqa: E731
    for rescaled in (False, True):
        X1, Bt, A2s = sr.matrix_shift(A1, A2, B, X, 1e-3, rescaled)
        assert (X1 - X).abs().max() > 1e-6  # a real step
        tol = U * 100 * (1 + (X1 - X).abs().max() / 1e-3)
        assert ((run(A1, A2, X1) - F(X1)).abs().max()) <= U * (n + d)
        assert ((run(A1, A2s, X) - run(A1, A2, X1)).abs().max()) <= tol
        assert ((F(X) - Bt) - (F(X1) - B)).abs().max() <= U * (n + d)
        # the data shift with the factors in the other order (X' X^{-1}) is not the step's
        wrong = A2 @ (X1 @ torch.linalg.inv(X)).transpose(-1, -2)
        assert (run(A1, wrong, X) - run(A1, A2, X1)).abs().max() > 1e3 * tol


def test_data_shift_is_first_order_in_eta():
    """The label shift of a data step is O(eta): ``|b~ - b|/eta`` converges to ``|J dA x|``."""
    g = torch.Generator().manual_seed(6)
    A = torch.randn((3, 7, 4), generator=g, dtype=torch.float64)
    x = torch.randn((3, 4), generator=g, dtype=torch.float64)
    b = torch.softmax(torch.randn((3, 7), generator=g, dtype=torch.float64), -1)
    f = torch.softmax(sr._mv(A, x), -1)
    J = torch.diag_embed(f) - f[..., :, None] * f[..., None, :]
    limit = torch.linalg.vector_norm(sr._mv(J, sr._mv(sr.data_grad(A, b, x), x)), dim=-1)
    devs = []
    for eta in (1e-2, 1e-3, 1e-4):
        f1 = torch.softmax(sr._mv(A - eta * sr.data_grad(A, b, x), x), -1)
        devs.append((torch.linalg.vector_norm(f1 - f, dim=-1) / eta - limit).abs())
    assert (devs[1] < devs[0] / 5).all() and (devs[2] < devs[1] / 5).all()
