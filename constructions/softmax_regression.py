"""Softmax regression (Li et al. 2023; Gao, Song, Xie 2023): losses, gradients, Hessian,
the tensor trick, Lipschitz bounds, and the softmax self-attention layer they describe.

Notation (Li et al. 2023; Gao, Song, Xie 2023): ``A [n, d]``, ``b [n]``, ``x [d]``; ``u(x) = exp(Ax)``,
``alpha(x) = <u, 1>``, ``f(x) = u/alpha`` (a softmax over the n rows), ``c(x) = f - b``.
Multiple (attention) regression: ``A1, A2 [n, d]``, ``B [n, n]``, ``X [d, d]``,
``S = A1 X A2^T``, ``D(X) = diag(exp(S) 1)``, ``F = D^{-1} exp(S)`` (row softmax).

Losses (with the toolkit's factor 1/2; the papers' losses are twice these, so their
gradients are twice ours):

* normalised  ``L_exp(x)  = 1/2 |f(x) - b|^2``
* rescaled    ``L_resc(x) = 1/2 |u(x) - alpha(x) b|^2``
* attention   ``L_att(X)  = 1/2 |D^{-1} exp(S) - B|_F^2``,
  rescaled    ``L_att_resc(X) = 1/2 |exp(S) - D B|_F^2``.

Everything here is float64 torch (so that autograd checks the closed forms); the
closed forms are written from the derivation in each docstring, not from autograd.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from verify.claims import Claim, Part, Proof, lemma
from verify.tolerance import C, Comparison, eps

from .layout import Readout, ResidualLayout
from .registry import Paper, Result, add_claim, register_paper
from .spec import AttentionSpec, BlockSpec
from .transformer import Transformer

T = torch.Tensor


def _mv(A: T, v: T) -> T:
    """``A v`` for ``A [..., p, q]``, ``v [..., q]`` (batched or not)."""
    return (A @ v[..., None])[..., 0]


def _mtv(A: T, v: T) -> T:
    return _mv(A.transpose(-1, -2), v)


# -- single softmax regression ------------------------------------------------------------
def softmax_parts(A: T, b: T, x: T):
    """``(f, c, s)`` with ``s = <f, c>``."""
    f = torch.softmax(_mv(A, x), dim=-1)
    c = f - b
    return f, c, (f * c).sum(-1, keepdim=True)


def loss(A: T, b: T, x: T) -> T:
    f, c, _ = softmax_parts(A, b, x)
    return 0.5 * (c**2).sum(-1)


def loss_rescaled(A: T, b: T, x: T) -> T:
    u = torch.exp(_mv(A, x))
    return 0.5 * ((u - u.sum(-1, keepdim=True) * b) ** 2).sum(-1)


def grad(A: T, b: T, x: T) -> T:
    """``grad L_exp = A^T (f o c - <f, c> f)``: ``df/dz = J = diag(f) - f f^T`` (z = Ax), and
    ``J c = f o c - <f, c> f``."""
    f, c, s = softmax_parts(A, b, x)
    return _mtv(A, f * c - s * f)


def grad_rescaled(A: T, b: T, x: T) -> T:
    """``grad L_resc = A^T (u o c' - <b, c'> u)`` with ``c' = u - alpha b``: ``du/dz = diag(u)``,
    ``dalpha/dz = u^T``, so ``dc'/dz = diag(u) - b u^T``."""
    u = torch.exp(_mv(A, x))
    cp = u - u.sum(-1, keepdim=True) * b
    return _mtv(A, u * cp - (b * cp).sum(-1, keepdim=True) * u)


def hessian(A: T, b: T, x: T) -> T:
    """``Hess L_exp = A^T G A`` with ``G = diag(c - s + f) J - f (J (c + f))^T``: differentiate
    ``g_i = f_i (c_i - s)`` using ``df/dz = dc/dz = J`` and ``ds/dz = (J (c + f))^T``."""
    f, c, s = softmax_parts(A, b, x)
    J = torch.diag_embed(f) - f[..., :, None] * f[..., None, :]
    Jcf = _mv(J, c + f)
    G = torch.diag_embed(c - s + f) @ J - f[..., :, None] * Jcf[..., None, :]
    return A.transpose(-1, -2) @ G @ A


def hessian_bound(A: T, b: T) -> T:
    """``|Hess L_exp|_2 <= |A|_2^2 (5/2 + 3|b|/2)`` (ours): ``|J|_2 <= 1/2``, ``|f|_2 <= 1``,
    ``|c| <= 1 + |b|``, ``|s| <= |f||c|``, so ``|diag(c - s + f) J| <= (3 + 2|b|)/2`` and
    ``|f (J (c + f))^T| <= |c + f|/2 <= (2 + |b|)/2``."""
    return torch.linalg.matrix_norm(A, 2) ** 2 * (2.5 + 1.5 * torch.linalg.vector_norm(b, dim=-1))


def hessian_rescaled(A: T, b: T, x: T) -> T:
    """``Hess L_resc = A^T (J'^T J' + diag(u o (c' - <b, c'>))) A`` with ``c' = u - alpha b`` and
    ``J' = dc'/dz = diag(u) - b u^T``: ``L = |c'|^2/2`` has Hessian ``J'^T J' + sum_k c'_k Hess c'_k``
    in z, and ``Hess c'_k = u_k e_k e_k^T - b_k diag(u)`` (``Hess alpha = diag(u)``), so the sum is
    ``diag(u o c') - <b, c'> diag(u)``."""
    u = torch.exp(_mv(A, x))
    cp = u - u.sum(-1, keepdim=True) * b
    Jp = torch.diag_embed(u) - b[..., :, None] * u[..., None, :]
    G = Jp.transpose(-1, -2) @ Jp + torch.diag_embed(u * (cp - (b * cp).sum(-1, keepdim=True)))
    return A.transpose(-1, -2) @ G @ A


def rescaled_bounds(R, n: int, b: T) -> tuple[T, T]:
    """``(|grad L_resc|, |Hess L_resc|)`` bounds (ours) on ``|A|_2 <= R``, ``|x| <= R``:
    ``|z|_inf <= |Ax| <= R^2``, so with ``E = exp(R^2)``: ``|u|_inf <= E``, ``|u| <= sqrt(n) E``,
    ``alpha <= n E``, ``|c'| <= E (sqrt n + n|b|)``, ``|c'|_inf <= E (1 + n|b|)``,
    ``|J'| <= E (1 + sqrt(n)|b|)``; the gradient ``A^T J'^T c'`` and the Hessian's two terms
    follow by the triangle inequality (the Hessian bound is the gradient's Lipschitz constant on
    the ball)."""
    E = float(np.exp(R**2))
    nb = torch.linalg.vector_norm(b, dim=-1)
    rn = math.sqrt(n)
    Jp = E * (1 + rn * nb)
    cp, cinf = E * (rn + n * nb), E * (1 + n * nb)
    return R * Jp * cp, R**2 * (Jp**2 + E * (cinf + nb * cp))


def data_grad(A: T, b: T, x: T) -> T:
    """``dL_exp/dA = (f o c - <f, c> f) x^T`` (``z = A x``: ``dz_i/dA_ij = x_j``)."""
    f, c, s = softmax_parts(A, b, x)
    return (f * c - s * f)[..., :, None] * x[..., None, :]


# -- multiple softmax regression (attention) ----------------------------------------------------
def attention_loss(A1: T, A2: T, B: T, X: T) -> T:
    F = torch.softmax(A1 @ X @ A2.transpose(-1, -2), dim=-1)
    return 0.5 * ((F - B) ** 2).sum((-1, -2))


def attention_loss_rescaled(A1: T, A2: T, B: T, X: T) -> T:
    E = torch.exp(A1 @ X @ A2.transpose(-1, -2))
    return 0.5 * ((E - E.sum(-1, keepdim=True) * B) ** 2).sum((-1, -2))


def attention_grad(A1: T, A2: T, B: T, X: T, rescaled: bool = False) -> T:
    """``dL/dX = A1^T G A2`` where row j of G is the single-regression ``dL/dz`` of row j
    (``S = A1 X A2^T``, so ``dL/dX = A1^T (dL/dS) A2``)."""
    S = A1 @ X @ A2.transpose(-1, -2)
    if rescaled:
        u = torch.exp(S)
        cp = u - u.sum(-1, keepdim=True) * B
        G = u * cp - (B * cp).sum(-1, keepdim=True) * u
    else:
        F = torch.softmax(S, dim=-1)
        C = F - B
        G = F * C - (F * C).sum(-1, keepdim=True) * F
    return A1.transpose(-1, -2) @ G @ A2


def attention_hessian(A1: T, A2: T, B: T, X: T) -> T:
    """The Hessian of ``L_att`` in ``x = vec_row(X)`` (``[d^2, d^2]``) through the tensor trick:
    ``L_att`` is the sum over rows j of single regressions with ``cal A_j = (A1)_j (x) A2`` and
    labels ``B_j`` (:func:`attention_as_single`), so ``Hess = sum_j cal A_j^T G_j cal A_j``
    (:func:`hessian`)."""
    x = vec(X)
    return sum(hessian(kron(A1[..., j : j + 1, :], A2), B[..., j, :], x) for j in range(A1.shape[-2]))


def attention_hessian_bound(A1: T, A2: T, B: T) -> T:
    """``|Hess L_att|_2 <= |A1|_2^2 |A2|_2^2 max_j (5/2 + 3|B_j|/2)`` (ours): for a unit v,
    ``|v^T Hess v| <= sum_j |G_j| |cal A_j v|^2`` with :func:`hessian_bound`'s ``|G_j| <= 5/2 +
    3|B_j|/2``, and ``sum_j cal A_j^T cal A_j = (A1^T A1) (x) (A2^T A2)``, whose norm is
    ``|A1|^2 |A2|^2`` (Kronecker norms multiply)."""
    g = (2.5 + 1.5 * torch.linalg.vector_norm(B, dim=-1)).amax(-1)
    return (torch.linalg.matrix_norm(A1, 2) * torch.linalg.matrix_norm(A2, 2)) ** 2 * g


def vec(X: T, order: str = "row") -> T:
    """Row-major (C order) or column-major (Fortran order) vectorisation of ``[..., p, q]``."""
    return X.flatten(-2) if order == "row" else X.transpose(-1, -2).flatten(-2)


def kron(P: T, Q: T) -> T:
    return torch.kron(P, Q) if P.ndim == 2 else torch.stack([torch.kron(p, q) for p, q in zip(P, Q)])


def tensor_trick(A1: T, A2: T, order: str = "row") -> T:
    """``cal A`` with ``vec(A1 X A2^T) = cal A vec(X)``: ``A1 (x) A2`` for row-major vec,
    ``A2 (x) A1`` for column-major (docs/pitfalls.md #11)."""
    return kron(A1, A2) if order == "row" else kron(A2, A1)


def attention_as_single(A1: T, A2: T, B: T, X: T) -> T:
    """The attention loss as n decoupled single softmax regressions sharing ``x = vec_row(X)``:
    row j uses ``cal A_j = (A1)_j (x) A2`` (``[n, d^2]``) and labels ``B_j``."""
    x = vec(X)
    n = A1.shape[-2]
    rows = [loss(kron(A1[..., j : j + 1, :], A2), B[..., j, :], x) for j in range(n)]
    return torch.stack(rows).sum(0)


# -- Lipschitz bounds --------------------------------------------------------------------------
def li_constant(n: int, R: float) -> float:
    """Li et al.'s Lipschitz constant in the form ``M = n^1.5 exp(10 R^2)`` for ``|A|, |x| <= R``
    (its form poly(n) exp(O(R^2)) is the paper's; the exponents follow a restatement of the main
    theorem and were not read in the full text: docs/softmax_regression.md)."""
    return n**1.5 * float(np.exp(10 * R**2))


def softmax_lipschitz(A: T) -> T:
    """Our constant: ``|f(x) - f(y)| <= |A|_2 |x - y| / 2`` (the softmax Jacobian
    ``diag(f) - f f^T`` has spectral norm at most 1/2)."""
    return 0.5 * torch.linalg.matrix_norm(A, 2)


# -- the softmax self-attention layer whose output is f ---------------------------------------------
def attention_layer(d: int, n: int):
    """One softmax self-attention layer (the toolkit's transformer) whose query output is the
    softmax-regression prediction: keys are the n rows ``a_i`` of A, the query token holds x,
    the score is ``x . a_i`` and the value of key i is ``e_i``, so the query's ``f`` slot
    becomes ``f(x) = softmax(A x)``.  Returns ``(model, layout, embed)``; ``embed(A, x)``
    builds the stream ``[B, n + 1, D]`` (n must be the built n)."""
    lay = ResidualLayout.of([("a", d, "x"), ("x", d, "x"), ("pos", n, "zero"), ("f", n, "zero"),
                             ("out", 1, "zero")], Readout("out"))
    head = dict(W_Q=lay.read({"x": np.eye(d)}, d), W_K=lay.read({"a": np.eye(d)}, d),
                W_V=lay.read({"pos": np.eye(n)}, n), W_O=lay.write({"f": np.eye(n)}, n))
    model = Transformer([BlockSpec(AttentionSpec.from_heads("softmax", [head]))])

    def embed(A: T, x: T) -> T:
        Bsz = A.shape[0]
        h = torch.zeros(Bsz, n + 1, lay.width, dtype=torch.float64)
        h[:, :n, lay["a"].index] = A
        h[:, :n, lay["pos"].index] = torch.eye(n, dtype=torch.float64)
        h[:, n, lay["x"].index] = x
        return h

    def run(A: T, x: T) -> T:
        """The layer's output at the query: ``f(x)`` ``[B, n]``."""
        with torch.no_grad():
            return model(embed(A, x), n)[:, n, lay["f"].index]

    return model, lay, run


def matrix_attention_layer(d: int, n: int):
    """One softmax self-attention layer whose attention weight is X: n key tokens hold the rows of
    A2 (and a one-hot position code), n query tokens the rows of A1; ``W_Q = X`` on the a1 slot,
    ``W_K`` the identity on a2, so query j's scores are ``(A1 X A2^T)_j`` and its ``f`` slot becomes
    row j of ``F(X) = D^{-1} exp(A1 X A2^T)``.  Returns ``run(A1, A2, X) -> F [B, n, n]`` (one
    layer built per prompt: its weight is that prompt's X)."""
    lay = ResidualLayout.of([("a1", d, "x"), ("a2", d, "x"), ("pos", n, "zero"), ("f", n, "zero"),
                             ("out", 1, "zero")], Readout("out"))

    def run(A1: T, A2: T, X: T) -> T:
        out = []
        for a1, a2, x in zip(A1, A2, X):
            head = dict(W_Q=lay.read({"a1": x.numpy()}, d), W_K=lay.read({"a2": np.eye(d)}, d),
                        W_V=lay.read({"pos": np.eye(n)}, n), W_O=lay.write({"f": np.eye(n)}, n))
            model = Transformer([BlockSpec(AttentionSpec.from_heads("softmax", [head]))])
            h = torch.zeros(1, 2 * n, lay.width, dtype=torch.float64)
            h[0, :n, lay["a2"].index] = a2
            h[0, :n, lay["pos"].index] = torch.eye(n, dtype=torch.float64)
            h[0, n:, lay["a1"].index] = a1
            with torch.no_grad():
                out.append(model(h, n)[0, n:, lay["f"].index])
        return torch.stack(out)

    return run


# -- claim checks: each returns a verify.tolerance.Comparison (measured vs 0, tol = bound) -------
def _instance(prompt, knobs):
    """A softmax-regression instance from a prompt: ``A = X`` scaled to spectral norm R,
    ``x`` = the first query scaled to norm R, ``b = softmax(y)`` (a distribution)."""
    A = torch.from_numpy(prompt.X).to(torch.float64)
    A = A * (knobs.R / torch.linalg.matrix_norm(A, 2)[:, None, None])
    x = torch.from_numpy(prompt.Xq[:, 0]).to(torch.float64)
    x = x * (knobs.R / torch.linalg.vector_norm(x, dim=-1, keepdim=True))
    b = torch.softmax(torch.from_numpy(prompt.y).to(torch.float64), dim=-1)
    return A, b, x


def _cmp(measured, bound, roundoff):
    m = torch.stack(measured, -1).numpy()[None]  # [1, B, k]
    t = (torch.stack(bound, -1) + torch.stack(roundoff, -1)).numpy()[None]
    return Comparison(m, np.zeros_like(m), t, t)


def check_closeness(prompt, knobs):
    """Li et al.: one GD step ``x' = x - eta grad L_exp(x)`` moves the softmax attention
    layer's output by a label shift: the layer's residual at x', ``c_layer(x'; b) = layer(x') - b``,
    equals the closed-form residual at x with shifted labels, ``c(x; b~) = softmax(Ax) - b~``,
    ``b~ = b - (softmax(Ax') - softmax(Ax))`` (closed form, not the layer); and
    ``|b~ - b| <= |A| |x' - x| / 2`` (ours; Li's ``M = n^1.5 exp(10 R^2)`` is far looser).
    Measured: the layer vs the closed form at x and x', the label-shift identity (the layer at x'
    against the closed form at x), and the shift vs our bound."""
    A, b, x = _instance(prompt, knobs)
    eta = 10.0**knobs.log10_eta
    x1 = x - eta * grad(A, b, x)
    n = A.shape[-2]
    _, _, run = attention_layer(A.shape[-1], n)
    f0, f1 = run(A, x), run(A, x1)
    u = C * eps(torch.float64) * (n + A.shape[-1]) * torch.ones_like(eta * f0[..., 0])  # f is a distribution
    s0, s1 = torch.softmax(_mv(A, x), -1), torch.softmax(_mv(A, x1), -1)
    b_t = b - (s1 - s0)
    shift = torch.linalg.vector_norm(b_t - b, dim=-1)
    layer_err = torch.maximum((f0 - s0).abs().amax(-1), (f1 - s1).abs().amax(-1))
    ident = ((f1 - b) - (s0 - b_t)).abs().amax(-1)
    ours = softmax_lipschitz(A) * torch.linalg.vector_norm(x1 - x, dim=-1)
    return _cmp([layer_err, ident, shift], [0 * u, 0 * u, ours], [u, u, u])


def check_tensor_trick(prompt, knobs):
    """Gao et al.'s tensor trick: ``vec(A1 X A2^T) = (A1 (x) A2) vec_row(X)`` and
    ``(A2 (x) A1) vec_col(X)``; the attention loss equals n single regressions sharing
    ``vec(X)``; its closed-form gradient equals autograd.  Tolerance: the model's
    ``C eps (d^2 + n) scale``."""
    A1, b, x = _instance(prompt, knobs)
    g = torch.Generator().manual_seed(knobs.seed)
    A2 = torch.randn(A1.shape, generator=g, dtype=torch.float64)
    A2 = A2 * (knobs.R / torch.linalg.matrix_norm(A2, 2)[:, None, None])
    d, n = A1.shape[-1], A1.shape[-2]
    X = torch.randn((A1.shape[0], d, d), generator=g, dtype=torch.float64) * knobs.R / d
    B = torch.softmax(torch.randn((A1.shape[0], n, n), generator=g, dtype=torch.float64), -1)
    S = A1 @ X @ A2.transpose(-1, -2)
    row = (vec(S) - _mv(tensor_trick(A1, A2), vec(X))).abs().amax(-1)
    col = (vec(S, "col") - _mv(tensor_trick(A1, A2, "col"), vec(X, "col"))).abs().amax(-1)
    split = (attention_loss(A1, A2, B, X) - attention_as_single(A1, A2, B, X)).abs()
    Xg = X.clone().requires_grad_(True)
    auto, = torch.autograd.grad(attention_loss(A1, A2, B, Xg).sum(), Xg)
    gerr = (auto - attention_grad(A1, A2, B, X)).abs().amax((-1, -2))
    u = C * eps(torch.float64) * (d * d + n)
    scale = torch.linalg.matrix_norm(A1, 2) * torch.linalg.matrix_norm(A2, 2) * torch.linalg.matrix_norm(X)
    zero = 0 * scale
    return _cmp([row, col, split, gerr], [zero] * 4, [u * scale, u * scale, u * n * (1 + scale), u * (1 + scale)])


def check_lipschitz(prompt, knobs):
    """Lipschitz and Hessian bounds on ``|A| <= R``, ``|x| <= R`` (ours, tight up to the
    constants; the papers' are ``poly(n) exp(O(R^2))``): the row softmax
    ``|F(X) - F(Y)|_F <= |A1| |A2| |X - Y|_F / 2`` and ``|Hess L_exp| <= |A|^2 (5/2 + 3|b|/2)``."""
    A1, b, x = _instance(prompt, knobs)
    g = torch.Generator().manual_seed(knobs.seed)
    A2 = torch.randn(A1.shape, generator=g, dtype=torch.float64)
    A2 = A2 * (knobs.R / torch.linalg.matrix_norm(A2, 2)[:, None, None])
    d = A1.shape[-1]
    X = torch.randn((A1.shape[0], d, d), generator=g, dtype=torch.float64) * knobs.R / d
    Y = X + torch.randn(X.shape, generator=g, dtype=torch.float64) * 10.0**knobs.log10_eta
    F = lambda Z: torch.softmax(A1 @ Z @ A2.transpose(-1, -2), -1)  # noqa: E731
    moved = torch.linalg.matrix_norm(F(X) - F(Y))
    bound = 0.5 * torch.linalg.matrix_norm(A1, 2) * torch.linalg.matrix_norm(A2, 2) * torch.linalg.matrix_norm(X - Y)
    H = torch.stack([torch.autograd.functional.hessian(lambda z: loss(a, bb, z), z0) for a, bb, z0 in zip(A1, b, x)])
    hn = torch.linalg.matrix_norm(H, 2)
    u = C * eps(torch.float64) * (d + A1.shape[-2])
    return _cmp([moved, hn], [bound, hessian_bound(A1, b)], [u * torch.ones_like(moved), u * hessian_bound(A1, b)])


def _matrix_instance(prompt, knobs, R=None):
    """A matrix instance: ``A1 = `` the prompt's X and ``A2`` random, each of spectral norm R;
    ``X = (I + G/(2|G|))/R`` (singular values in ``[1/(2R), 3/(2R)]``, so scores ``<= 1.5 R`` and
    ``cond(X) <= 3``); ``B`` row distributions."""
    A1, b, x = _instance(prompt, knobs)
    R = knobs.R if R is None else R
    g = torch.Generator().manual_seed(knobs.seed)
    A2 = torch.randn(A1.shape, generator=g, dtype=torch.float64)
    A2 = A2 * (R / torch.linalg.matrix_norm(A2, 2)[:, None, None])
    Bsz, n, d = A1.shape
    G = torch.randn((Bsz, d, d), generator=g, dtype=torch.float64)
    X = (torch.eye(d, dtype=torch.float64) + G / (2 * torch.linalg.matrix_norm(G, 2)[:, None, None])) / R
    B = torch.softmax(torch.randn((Bsz, n, n), generator=g, dtype=torch.float64), -1)
    return A1, A2, X, B


def _on_sphere(x: T, R, knobs) -> T:
    """A second point of norm R near x (the segment between them stays in the ball of radius R)."""
    g = torch.Generator().manual_seed(knobs.seed + 1)
    y = x + torch.randn(x.shape, generator=g, dtype=torch.float64) * 10.0**knobs.log10_eta * R
    return y * (R / torch.linalg.vector_norm(y, dim=-1, keepdim=True))


def check_rescaled(prompt, knobs):
    """``gao23-rescaled``: the rescaled loss's closed-form gradient and Hessian
    (:func:`grad_rescaled`, :func:`hessian_rescaled`) against autograd, those of the matrix rescaled
    loss (:func:`attention_grad`) too, and on ``|A|_2 = R``, ``|x| = R``: ``|grad| <= gb``,
    ``|Hess| <= hb`` and the gradient ``hb``-Lipschitz between two points of the sphere
    (:func:`rescaled_bounds`).  Tolerance: ``C eps (n + d)`` times the bound's scale."""
    A, b, x = _instance(prompt, knobs)
    n, d = A.shape[-2], A.shape[-1]
    gb, hb = rescaled_bounds(knobs.R, n, b)
    u = C * eps(torch.float64) * (n + d)
    xg = x.clone().requires_grad_(True)
    auto, = torch.autograd.grad(loss_rescaled(A, b, xg).sum(), xg)
    closed = grad_rescaled(A, b, x)
    H = torch.stack([torch.autograd.functional.hessian(lambda z: loss_rescaled(a, bb, z), z0) for a, bb, z0 in zip(A, b, x)])
    Hc = hessian_rescaled(A, b, x)
    y = _on_sphere(x, knobs.R, knobs)
    lip = torch.linalg.vector_norm(grad_rescaled(A, b, y) - closed, dim=-1)
    A1, A2, X, B = _matrix_instance(prompt, knobs)
    Xg = X.clone().requires_grad_(True)
    mauto, = torch.autograd.grad(attention_loss_rescaled(A1, A2, B, Xg).sum(), Xg)
    mclosed = attention_grad(A1, A2, B, X, rescaled=True)
    mscale = mauto.abs().amax((-1, -2)) + 1
    measured = [(auto - closed).abs().amax(-1), (H - Hc).abs().amax((-1, -2)), torch.linalg.vector_norm(closed, dim=-1),
                torch.linalg.matrix_norm(Hc, 2), lip, (mauto - mclosed).abs().amax((-1, -2))]
    bound = [0 * gb, 0 * hb, gb, hb, hb * torch.linalg.vector_norm(y - x, dim=-1), 0 * gb]
    return _cmp(measured, bound, [u * gb, u * hb, u * gb, u * hb, u * gb, u * d * mscale])


def check_matrix_hessian(prompt, knobs):
    """``gao23-matrix-hessian``: the normalised matrix loss's Hessian in ``vec_row(X)``
    (``[d^2, d^2]``, :func:`attention_hessian`, the tensor trick) against autograd, and its norm
    within :func:`attention_hessian_bound`.  Tolerance: ``C eps (d^2 + n)`` times the bound."""
    A1, A2, X, B = _matrix_instance(prompt, knobs)
    d, n = X.shape[-1], A1.shape[-2]
    H = torch.stack([torch.autograd.functional.hessian(lambda z: attention_loss(a1, a2, bb, z.reshape(d, d)), x0.reshape(-1))
                     for a1, a2, bb, x0 in zip(A1, A2, B, X)])
    Hc = attention_hessian(A1, A2, B, X)
    hb = attention_hessian_bound(A1, A2, B)
    u = C * eps(torch.float64) * (d * d + n)
    return _cmp([(H - Hc).abs().amax((-1, -2)), torch.linalg.matrix_norm(Hc, 2)], [0 * hb, hb], [u * hb, u * hb])


def matrix_shift(A1: T, A2: T, B: T, X: T, eta, rescaled: bool = False):
    """One GD step on the attention weight X of the normalised (or rescaled) matrix loss,
    ``X' = X - eta grad`` (eta a float or per prompt ``[B, 1, 1]``), and the two shifts that reproduce it with X fixed: the label shift
    ``B~ = B - (F(X') - F(X))`` and the data shift ``A2' = A2 X'^T X^{-T}`` (``A1 X A2'^T =
    A1 X' A2^T``).  Returns ``(X', B~, A2')``."""
    X1 = X - eta * attention_grad(A1, A2, B, X, rescaled)
    F = lambda Z: torch.softmax(A1 @ Z @ A2.transpose(-1, -2), -1)  # noqa: E731
    Bt = B - (F(X1) - F(X))
    A2s = A2 @ torch.linalg.solve(X, X1).transpose(-1, -2)  # A2 (X^{-1} X')^T
    return X1, Bt, A2s


def check_matrix_closeness(prompt, knobs):
    """``gao23-closeness``: for the normalised and the rescaled matrix loss, one GD step on the
    layer's weight X (:func:`matrix_shift`; the rescaled step's rate is ``eta/(1 + gb)``, its
    gradient bound) moves the attention layer's output (:func:`matrix_attention_layer`) exactly as
    a label shift ``B~`` and as a data shift ``A2'`` with X fixed: the layer at X' minus B equals
    the closed form at X minus B~, and the layer at ``(X, A2')`` equals the layer at ``(X', A2)``;
    ``|B~ - B|_F <= |A1||A2||X' - X|_F/2`` and ``|A2' - A2|_F <= |A2||X^{-1}||X' - X|_F`` (ours)."""
    A1, A2, X, B = _matrix_instance(prompt, knobs)
    n, d = A1.shape[-2], A1.shape[-1]
    run = matrix_attention_layer(d, n)
    F = lambda Z, A2_=A2: torch.softmax(A1 @ Z @ A2_.transpose(-1, -2), -1)  # noqa: E731
    nA1, nA2 = torch.linalg.matrix_norm(A1, 2), torch.linalg.matrix_norm(A2, 2)
    nXi = 1 / torch.linalg.matrix_norm(X, -2)  # |X^{-1}|_2
    u = C * eps(torch.float64) * (n + d) * torch.ones_like(nA1)
    eta = 10.0**knobs.log10_eta
    measured, bound, roundoff = [], [], []
    for rescaled in (False, True):
        # the rescaled gradient grows like exp(R^2): its step is eta / (1 + |grad|_F), per prompt
        scale = 1 + torch.linalg.matrix_norm(attention_grad(A1, A2, B, X, True)) if rescaled else torch.ones(len(X))
        X1, Bt, A2s = matrix_shift(A1, A2, B, X, eta / scale[:, None, None], rescaled)
        L1, Ls = run(A1, A2, X1), run(A1, A2s, X)
        dX = torch.linalg.matrix_norm(X1 - X)
        cond = nXi * torch.linalg.matrix_norm(X1, 2)
        measured += [(L1 - F(X1)).abs().amax((-1, -2)), ((L1 - B) - (F(X) - Bt)).abs().amax((-1, -2)),
                     (Ls - L1).abs().amax((-1, -2)), torch.linalg.matrix_norm(Bt - B), torch.linalg.matrix_norm(A2s - A2)]
        bound += [0 * u, 0 * u, 0 * u, nA1 * nA2 * dX / 2, nA2 * nXi * dX]
        # the data shift's identity: A2' carries X^{-1} X' (error ~ eps cond), the scores move by |A1||X| times that
        roundoff += [u, u, u * (1 + nA1 * nA2 * torch.linalg.matrix_norm(X, 2) * cond * d), u, u * nA2 * (1 + cond)]
    return _cmp(measured, bound, roundoff)


def check_data_shift(prompt, knobs):
    """``li23-data-shift``: one GD step on the data, ``A' = A - eta dL_exp/dA`` (:func:`data_grad`),
    moves the softmax attention layer's output as a label shift: the layer with keys A' minus b
    equals the closed form with keys A minus ``b~ = b - (f_{A'}(x) - f_A(x))``, and
    ``|b~ - b| <= |x| |A' - A|_2 / 2`` (ours: the softmax Jacobian's norm is at most 1/2)."""
    A, b, x = _instance(prompt, knobs)
    n, d = A.shape[-2], A.shape[-1]
    A1 = A - 10.0**knobs.log10_eta * data_grad(A, b, x)
    _, _, run = attention_layer(d, n)
    f0, f1 = torch.softmax(_mv(A, x), -1), torch.softmax(_mv(A1, x), -1)
    L1 = run(A1, x)
    bt = b - (f1 - f0)
    u = C * eps(torch.float64) * (n + d) * torch.ones_like(bt[..., 0])
    ours = torch.linalg.vector_norm(x, dim=-1) * torch.linalg.matrix_norm(A1 - A, 2) / 2
    return _cmp([(L1 - f1).abs().amax(-1), ((L1 - b) - (f0 - bt)).abs().amax(-1), torch.linalg.vector_norm(bt - b, dim=-1)],
                [0 * u, 0 * u, ours], [u, u, u])


def layer_is_softmax_regression():
    """The attention layer computes ``f(x) = softmax(A x)`` for every d, n <= 8: its folded maps are
    exactly the designed ones (``QK`` the bilinear form ``x . a``, nothing else; ``OV`` copies the
    position code ``e_i`` into ``f``, nothing else) and one softmax head with no null logit turns
    them into ``softmax_i(x . a_i) e_i``; the torch layer is anchored to the closed form at a
    random point (within ``C eps (n + d)``)."""
    from verify.claims import Outcome

    bad = []
    for d in range(1, 9):
        for n in range(2, 9):
            model, lay, run = attention_layer(d, n)
            a = model.blocks[0].attn
            want_qk = np.zeros((lay.width, lay.width))
            want_qk[lay["x"].index, lay["a"].index] = np.eye(d)
            want_ov = np.zeros((lay.width, lay.width))
            want_ov[lay["pos"].index, lay["f"].index] = np.eye(n)
            qk = (a.W_Q[0] @ a.W_K[0].T).numpy()
            ov = (a.W_V[0] @ a.W_O[0]).numpy()
            if a.W_Q.shape[0] != 1 or a.kind != "softmax" or a.null_score is not None or a.causal \
                    or not (np.array_equal(qk, want_qk) and np.array_equal(ov, want_ov)):
                bad.append((d, n))
    g = torch.Generator().manual_seed(0)
    A = torch.randn((2, 5, 3), generator=g, dtype=torch.float64)
    x = torch.randn((2, 3), generator=g, dtype=torch.float64)
    err = float((attention_layer(3, 5)[2](A, x) - torch.softmax(_mv(A, x), -1)).abs().max())
    anchored = err <= C * eps(torch.float64) * (5 + 3)
    ok = not bad and anchored
    return Outcome(ok, "one softmax head with QK = x.a and OV = e_i -> f, exactly, at every d, n <= 8; the torch "
                       f"layer is softmax(Ax) at an anchor (error {err:.2g})" if ok else
                   f"the layer's maps differ from the design at (d, n) = {bad[:5]}; anchor error {err:.3g}")


# -- registration: claims about mathematics (no registered construction) ------------------------------------
def tensor_trick_exact():
    """``vec(A1 X A2^T) = (A1 (x) A2) vec_row(X) = (A2 (x) A1) vec_col(X)`` in exact rational
    arithmetic on random rational matrices (n = 4, d = 3), and the swapped order fails."""
    from fractions import Fraction

    from verify.claims import Outcome

    rng = np.random.default_rng(0)
    R = lambda *s: np.array([[Fraction(int(v), 7) for v in row] for row in rng.integers(-9, 10, s)], dtype=object)  # noqa: E731
    A1, A2, Xm = R(4, 3), R(4, 3), R(3, 3)
    S = A1 @ Xm @ A2.T
    row = (S.reshape(-1) == np.kron(A1, A2) @ Xm.reshape(-1)).all()
    col = (S.T.reshape(-1) == np.kron(A2, A1) @ Xm.T.reshape(-1)).all()
    swapped = (S.reshape(-1) == np.kron(A2, A1) @ Xm.reshape(-1)).all()
    # the torch code (tensor_trick, and through kron the matrix Hessian's cal A_j) on integer matrices,
    # where float64 products and sums are exact
    Ai, Bi, Xi = (torch.tensor(rng.integers(-9, 10, sh), dtype=torch.float64) for sh in ((4, 3), (4, 3), (3, 3)))
    Si = Ai @ Xi @ Bi.T
    torch_row = bool((vec(Si) == _mv(tensor_trick(Ai, Bi), vec(Xi))).all())
    torch_col = bool((vec(Si, "col") == _mv(tensor_trick(Ai, Bi, "col"), vec(Xi, "col"))).all())
    ok = bool(row and col and not swapped and torch_row and torch_col)
    return Outcome(ok, "row-major: A1 (x) A2, column-major: A2 (x) A1, exactly (and the torch tensor_trick on integer "
                       "matrices); the swapped order is wrong" if ok else "a Kronecker identity failed")


for _claim in (
    Claim("li23-closeness", "Li et al. 2023", "main theorem (softmax regression vs one attention layer)",
          "one GD step x' = x - eta grad L_exp on single softmax regression moves a softmax attention layer's "
          "output by a label shift: the layer's c(x'; b) = the closed form's c(x; b~), |b~ - b| <= |A||x' - x|/2 = O(eta) "
          "(ours; Li's M = n^1.5 exp(10R^2) is looser)",
          "closed-form softmax regression (torch)", check_closeness, kind="bound",
          subject="softmax attention layer (constructions.softmax_regression)", prompt=dict(n=(2, 40), d=(1, 12)),
          proof=Proof("exact-rational", (Part("the layer is softmax(Ax)", layer_is_softmax_regression),
                                         lemma("gradient formulas (symbolic, n = 3)", "lemma_softmax_gradients"),
                                         lemma("softmax Jacobian norm <= 1/2", "lemma_softmax_jacobian_norm")),
                      note="the label shift b~ is a definition; the bound follows from the Jacobian lemma")),
    Claim("gao23-tensor-trick", "Gao, Song, Xie 2023", "tensor trick; docs/pitfalls.md #11",
          "vec(A1 X A2^T) = (A1 (x) A2) vec_row(X) = (A2 (x) A1) vec_col(X); the attention loss is n single "
          "regressions sharing vec(X); its closed-form gradient A1^T G A2 equals autograd",
          "torch.kron, autograd", check_tensor_trick, kind="bound", subject="(identities)",
          prompt=dict(n=(2, 16), d=(1, 6)),
          proof=Proof("exact-rational", (Part("Kronecker vec identities, exact", tensor_trick_exact),))),
    Claim("gao23-lipschitz", "Gao, Song, Xie 2023; Li et al. 2023", "Lipschitz lemmas",
          "on |A| <= R: the row softmax is |A1||A2|/2-Lipschitz in X (Frobenius) and |Hess L_exp| <= "
          "|A|^2 (5/2 + 3|b|/2) (our constants; the papers state poly(n) exp(O(R^2)))",
          "autograd Hessian", check_lipschitz, kind="bound", subject="(bounds)", prompt=dict(n=(2, 16), d=(1, 6)),
          proof=Proof("general", (lemma("softmax Jacobian norm <= 1/2", "lemma_softmax_jacobian_norm"),),
                      note="the Hessian bound's triangle inequalities are checked numerically")),
    Claim("gao23-rescaled", "Gao, Song, Xie 2023", "rescaled loss (single and matrix forms)",
          "the rescaled loss 1/2|exp(Ax) - <exp(Ax),1> b|^2: closed-form gradient A^T(u o c' - <b,c'> u) and Hessian "
          "A^T(J'^T J' + diag(u o (c' - <b,c'>)))A equal autograd, the matrix rescaled gradient too; on |A|, |x| <= R "
          "the gradient and Hessian norms and the gradient's Lipschitz constant are within our bounds "
          "(E = exp(R^2): |Hess| <= R^2 (E^2 (1 + sqrt(n)|b|)^2 + E^2 (1 + n|b| + |b|(sqrt n + n|b|))))",
          "autograd gradient and Hessian", check_rescaled, kind="bound", subject="(rescaled loss)",
          prompt=dict(n=(2, 16), d=(1, 6)),
          proof=Proof("exact-rational", (lemma("gradient formulas (symbolic, n = 3)", "lemma_softmax_gradients"),
                                         lemma("rescaled Hessian (symbolic, n = 3)", "lemma_rescaled_hessian")),
                      note="the norm bounds' triangle inequalities are checked numerically")),
    Claim("gao23-matrix-hessian", "Gao, Song, Xie 2023", "tensor trick, matrix loss in vec form",
          "the normalised matrix loss's Hessian in vec_row(X) (d^2 unknowns) is sum_j cal A_j^T G_j cal A_j with "
          "cal A_j = (A1)_j (x) A2; it equals autograd, and |Hess| <= |A1|^2 |A2|^2 max_j (5/2 + 3|B_j|/2) (ours)",
          "autograd Hessian in vec(X)", check_matrix_hessian, kind="bound", subject="(matrix loss)",
          prompt=dict(n=(2, 12), d=(1, 5)),
          proof=Proof("exact-rational", (Part("Kronecker vec identities, exact", tensor_trick_exact),
                                         lemma("gradient formulas and G (symbolic, n = 3)", "lemma_softmax_gradients")),
                      note="the Hessian is the single regressions' sum; its bound uses |G_j| from gao23-lipschitz")),
    Claim("gao23-closeness", "Gao, Song, Xie 2023", "in-context learning statement, matrix case",
          "one GD step X' = X - eta grad on the normalised (and on the rescaled) matrix loss moves the softmax "
          "attention layer with weight X exactly as the label shift B~ = B - (F(X') - F(X)) and as the data shift "
          "A2' = A2 (X^{-1} X')^T with X fixed; |B~ - B|_F <= |A1||A2||X' - X|_F/2 and |A2' - A2|_F <= "
          "|A2||X^{-1}||X' - X|_F (ours)",
          "closed-form matrix softmax regression (torch)", check_matrix_closeness, kind="bound",
          subject="softmax attention layer with weight X (constructions.softmax_regression)",
          prompt=dict(n=(2, 16), d=(1, 6)),
          proof=Proof("general", (lemma("softmax Jacobian norm <= 1/2", "lemma_softmax_jacobian_norm"),),
                      note="the shifts are definitions; the label-shift bound follows from the Jacobian lemma row by "
                           "row, the data-shift bound from |A2 (X^{-1} (X' - X))^T|_F <= |A2||X^{-1}||X' - X|_F")),
    Claim("li23-data-shift", "Li et al. 2023", "data shift (updating A)",
          "one GD step on the data A' = A - eta dL_exp/dA moves the softmax attention layer's output as the label "
          "shift b~ = b - (f_A'(x) - f_A(x)), |b~ - b| <= |x||A' - A|/2 (ours; Li's M = n^1.5 exp(10R^2) is looser)",
          "closed-form softmax regression (torch)", check_data_shift, kind="bound",
          subject="softmax attention layer (constructions.softmax_regression)", prompt=dict(n=(2, 40), d=(1, 12)),
          proof=Proof("exact-rational", (Part("the layer is softmax(Ax)", layer_is_softmax_regression),
                                         lemma("softmax Jacobian norm <= 1/2", "lemma_softmax_jacobian_norm")),
                      note="the label shift is a definition; the bound follows from the Jacobian lemma")),
):
    add_claim(_claim)

register_paper(Paper(
    "Li et al. 2023", "The closeness of in-context learning and weight shifting for softmax regression "
                      "(arXiv 2304.13276)", (
        Result("main theorem", "a GD step on softmax regression moves one attention layer's output like a label "
                               "shift", ("li23-closeness",)),
        Result("Lipschitz lemmas", "the softmax and the loss's Hessian are Lipschitz on bounded inputs",
               ("gao23-lipschitz",)),
        Result("data shift", "updating the data A moves the output like a weight step", ("li23-data-shift",)),
    )))

register_paper(Paper(
    "Gao, Song, Xie 2023", "In-context learning for attention scheme: from single softmax regression to multiple "
                           "softmax regression via a tensor trick (arXiv 2307.02419)", (
        Result("tensor trick", "vec(A1 X A2^T) = (A1 (x) A2) vec(X): the matrix loss is n single regressions",
               ("gao23-tensor-trick",)),
        Result("Lipschitz lemmas", "Lipschitz and Hessian bounds on bounded inputs", ("gao23-lipschitz",)),
        Result("rescaled loss", "the rescaled loss's gradient, Hessian and bounds", ("gao23-rescaled",)),
        Result("matrix Hessian", "the normalised matrix loss's Hessian in vec form", ("gao23-matrix-hessian",)),
        Result("ICL statement, matrix case", "one GD step on X moves the attention output like a data shift",
               ("gao23-closeness",)),
    )))
