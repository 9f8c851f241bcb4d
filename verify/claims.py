"""The claims registry: every literature claim the toolkit checks, and how.

A :class:`Claim` names its paper and section, the construction it uses, the
reference it is checked against, and builds one checkable *case* (a
construction plus an unfitted reference) from a random prompt and random
*knobs* (step count, step-size factor, ...).  :func:`check_claim` draws
prompts and knobs, compares every layer with :func:`verify.tolerance.compare_trace`
and aggregates the worst ratio error/tolerance.  ``icl-verify`` and the test
suite both go through this module.
"""
from __future__ import annotations

import copy
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

import constructions
from constructions import bai, sherman_morrison
from constructions.ridge import newton_mask_bound
from constructions.errors import ConstructionError

from . import akyurek as aky
from . import softmax_regression as sr
from .prompts import Prompt, PromptSpec, make_prompt, sample_fields
from .reference import (
    GD, ISTA, BinaryTest, GDPlusPlus, LogisticGD, NewtonSchulz, RecursiveLeastSquares, Ridge, RidgeSelect,
    lasso_objective, lasso_solution,
)
from .tolerance import Comparison, compare_trace, solve_tolerance, tolerance

#: Ranges (inclusive) of the knobs; ``log10_lam`` is relative to lambda_max(X^T X/n).
KNOB_RANGES = dict(
    steps=(1, 8),
    lr_factor=(0.05, 1.95),
    log10_lam=(-3.0, 0.5),
    gamma_factor=(0.0, 1.9),
    skew=(0.0, 2.0),
    log10_mask=(0.3, 6.0),  # B >= 2x the bound: a float32-rounded prompt moves the bound
    log10_gamma=(-3.0, 0.0),
    heads=(3, 40),
    log10_eta=(-4.0, 0.0),
    R=(0.5, 4.0),
)


@dataclass(frozen=True)
class Knobs:
    """Algorithm parameters, as factors of the prompt's stability limits."""

    steps: int = 3
    lr_factor: float = 1.0  # lr = lr_factor / max_b lambda_max(X^T X/n + lam I)
    log10_lam: float = -1.0  # lam = 10**log10_lam * mean_b lambda_max(X^T X/n)
    gamma_factor: float = 0.5  # gamma = gamma_factor / max_b lambda_max(X^T X/n)
    skew: float = 0.5  # size of the skew-symmetric part of a random preconditioner
    log10_mask: float = 1.0  # Bai's masking constant B = 10**log10_mask * (the domain's score bound)
    log10_gamma: float = -1.0  # selection slack gamma = 10**log10_gamma * mean(y^2)
    heads: int = 8  # ReLUs in a sum-of-ReLU approximation
    log10_eta: float = -2.0  # step size / move size of the softmax-regression claims
    R: float = 1.0  # norm bound of the softmax-regression claims (|A|, |x| <= R)
    seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, **fixed) -> "Knobs":
        return cls(**sample_fields(rng, KNOB_RANGES, fixed))


# -- knobs -> algorithm parameters ---------------------------------------------------
def lambda_max(X: np.ndarray) -> np.ndarray:
    """``lambda_max(X_b^T X_b / n)`` per batch item."""
    X = np.asarray(X, dtype=np.float64)
    X = X[None] if X.ndim == 2 else X
    return np.linalg.eigvalsh(np.einsum("bni,bnj->bij", X, X) / X.shape[1])[:, -1]


def stable_lr(X, factor: float, lam: float = 0.0) -> float:
    """``factor / max_b lambda_max(X^T X/n + lam I)``: stable for factor <= 2."""
    return float(factor / (lambda_max(X).max() + lam))


def ridge_lam(X, log10_lam: float) -> float:
    return float(10.0**log10_lam * lambda_max(X).mean())


def random_precond(X, factor: float, seed: int, skew: float = 0.5) -> np.ndarray:
    """A random non-symmetric ``[d, d]`` preconditioner, stable on every prompt of X.

    ``R = M + K`` (M symmetric positive definite, K skew-symmetric of size
    ``skew``); R A has eigenvalues with positive real part for SPD A, and
    ``|1 - a mu| <= 1`` iff ``a <= 2 Re(mu) / |mu|^2``; we use ``P = (factor/2) a_max R``.
    """
    X = np.asarray(X, dtype=np.float64)
    X = X[None] if X.ndim == 2 else X
    d = X.shape[-1]
    rng = np.random.default_rng(seed)
    G = rng.standard_normal((d, d))
    M = G @ G.T / d + 0.1 * np.eye(d)
    H = rng.standard_normal((d, d))
    R = M + skew * (H - H.T) / 2
    a_max = np.inf
    for A in np.einsum("bni,bnj->bij", X, X) / X.shape[1]:
        mu = np.linalg.eigvals(R @ A)
        mu = mu[np.abs(mu) > 1e-9 * np.abs(mu).max()]
        a_max = min(a_max, float(np.min(2 * mu.real / np.abs(mu) ** 2)))
    return factor / 2 * a_max * R


# -- claims -----------------------------------------------------------------------
Make = Callable[[Prompt, Knobs], tuple]


@dataclass(frozen=True)
class Claim:
    id: str
    paper: str
    section: str
    statement: str
    construction: str
    reference: str
    make: Make = field(repr=False)
    #: "exact": every layer within tolerance; "negative": layer 1 matches, a later one must not;
    #: "bound": ``make(prompt, knobs)`` returns a Comparison of measured quantities against
    #: stated bounds (float64: a statement about the mathematics, not a construction)
    kind: str = "exact"
    fixed_prompt: dict = field(default_factory=dict)
    fixed_knobs: dict = field(default_factory=dict)
    #: negative claims: the first layer that must miss (earlier layers must match)
    negative_from: int = 2
    #: extra bounds checked besides the exact trace: ``(prompt, knobs, construction) -> Comparison``
    #: whose "model" is a measured deviation, "ref" 0 and "tol" the stated bound (plus round-off)
    bounds: Callable | None = field(default=None, repr=False)

    def adapt(self, spec: PromptSpec, knobs: Knobs) -> tuple[PromptSpec, Knobs]:
        """Apply the claim's fixed values (and clamp into its fixed ranges) to drawn parameters."""
        def fix(obj, fixed):
            vals = {f: (min(max(getattr(obj, f), v[0]), v[1]) if isinstance(v, tuple) else v) for f, v in fixed.items()}
            return replace(obj, **vals)

        return fix(spec, self.fixed_prompt), fix(knobs, self.fixed_knobs)

    def case(self, prompt: Prompt, knobs: Knobs) -> tuple:
        """(construction, unfitted reference[, adapted prompt]) for one prompt."""
        return self.make(prompt, knobs)

    def evaluate(self, prompt: Prompt, knobs: Knobs, dtype=torch.float64, device=None) -> tuple[bool, float, Comparison]:
        """(holds, figure, comparison).  Exact claims: figure = worst ratio error/tolerance
        over all layers, holds iff <= 1.  Negative claims: figure = largest ratio at layers
        >= ``negative_from``, holds iff the earlier layers are within tolerance and figure > 1."""
        if self.kind == "bound":
            cmp = self.make(prompt, knobs)
            return cmp.ok, cmp.worst, cmp
        c, ref, *rest = self.case(prompt, knobs)
        prompt = rest[0] if rest else prompt  # a case may adapt the prompt (e.g. 0/1 labels)
        if self.kind == "negative":
            # A mismatch of relative size ~|x_q|^2/n can hide under float32 round-off; a
            # negative control is a statement about the algebra, so it runs in float64.
            dtype = torch.float64
        c = c.to(dtype, device)
        cmp = compare_trace(c, ref, *prompt.arrays)
        if self.bounds is not None:
            cmp = cmp.join(self.bounds(prompt.rounded(dtype), knobs, c))
        if self.kind == "exact":
            return cmp.ok, cmp.worst, cmp
        f = self.negative_from - 1
        first_ok = bool((cmp.ratio[:f] <= 1).all())
        figure = float(cmp.ratio[f:].max()) if cmp.ratio.shape[0] > f else 0.0  # largest miss from that layer on
        return first_ok and figure > 1.0, figure, cmp


def _gd(p: Prompt, k: Knobs):
    lr = stable_lr(p.X, k.lr_factor)
    return constructions.gd(p.spec.d, k.steps, lr), GD(k.steps, lr=lr)


def _gd_ridge(p: Prompt, k: Knobs):
    lam = ridge_lam(p.X, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor, lam)
    return constructions.gd(p.spec.d, k.steps, lr, lam=lam), GD(k.steps, lr=lr, lam=lam)


def _gdpp(p: Prompt, k: Knobs):
    lr = stable_lr(p.X, k.lr_factor)
    gamma = stable_lr(p.X, k.gamma_factor)
    return constructions.gd_plus_plus(p.spec.d, k.steps, lr, gamma), GDPlusPlus(k.steps, lr, gamma)


def _pgd(p: Prompt, k: Knobs):
    P = random_precond(p.X, k.lr_factor, k.seed, k.skew)
    return constructions.preconditioned_gd(p.spec.d, k.steps, P), GD(k.steps, precond=P)


def _gd_unmasked(p: Prompt, k: Knobs):
    c, ref = _gd(p, k)
    c = copy.copy(c)
    c.model = copy.deepcopy(c.model)
    c.model.mask_query = False
    return c, ref


# -- Bai et al. 2023 ----------------------------------------------------------------
def _torch(p: Prompt):
    return tuple(torch.from_numpy(a) for a in p.arrays)


def _mask(k: Knobs, bound) -> float:
    return float(10.0**k.log10_mask * float(bound.max()))


def _iterate_bound(p: Prompt, c, ref) -> Comparison:
    """The replicated ``w`` slot of every token after step t equals ``w_t`` (tolerance model,
    scale = the reference's running magnitude)."""
    W = np.asarray(c.read_slot(*p.arrays, "w"), dtype=np.float64)[1:]  # [S, B, T, d]
    dev = np.abs(W - ref.iterates_[1:, :, None, :]).max(axis=(2, 3))[..., None]  # [S, B, 1]
    scale = np.maximum.accumulate(ref.magnitude_, axis=0)[1:][..., None]
    return Comparison(dev, np.zeros_like(dev), tolerance(c.dtype, p.spec.n, p.spec.d, scale), scale)


def _relu_gd(p: Prompt, k: Knobs):
    lr = stable_lr(p.X, k.lr_factor)
    mask = _mask(k, bai.score_bound(*_torch(p), 0.0))
    return constructions.relu_gd(p.spec.d, k.steps, lr, mask_const=mask), GD(k.steps, lr=lr)


def _relu_ridge(p: Prompt, k: Knobs):
    lam = ridge_lam(p.X, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor, lam)
    mask = _mask(k, bai.score_bound(*_torch(p), lam))
    return constructions.relu_gd(p.spec.d, k.steps, lr, lam=lam, mask_const=mask), GD(k.steps, lr=lr, lam=lam)


#: duality-gap target of the LASSO reference solution (relative to max(1, F(0)))
LASSO_GAP = 1e-12


def lasso_lam(X, y, log10_lam: float) -> float:
    """``10**log10_lam * max_b |X^T y/n|_inf`` (at the maximum the LASSO solution is 0)."""
    return float(10.0**log10_lam * np.abs(np.einsum("bnd,bn->bd", X, y) / X.shape[1]).max())


def _lasso(p: Prompt, k: Knobs):
    lam = lasso_lam(p.X, p.y, k.log10_lam)
    lr = stable_lr(p.X, k.lr_factor / 2)  # <= 1/L: the O(1/L) objective bound's step limit
    mask = _mask(k, bai.lasso_score_bound(*_torch(p), lam))
    return constructions.lasso_ista(p.spec.d, k.steps, lr, lam, mask_const=mask), ISTA(k.steps, lr, lam)


def _lasso_bounds(p: Prompt, k: Knobs, c) -> Comparison:
    """ISTA's rate: ``F(w_t) - F* <= |w*|^2 / (2 lr t)``, F* certified by a duality gap."""
    lr, lam = c.params["lr"], c.params["lam"]
    ref = ISTA(k.steps, lr, lam).fit(p.X, p.y)
    w_star, lower = lasso_solution(p.X, p.y, lam, gap=LASSO_GAP)
    F = np.stack([lasso_objective(p.X, p.y, w, lam) for w in ref.iterates_[1:]])  # [S, B]
    t = np.arange(1, k.steps + 1)[:, None]
    F0 = np.maximum(1.0, (p.y**2).sum(-1) / (2 * p.spec.n))  # F(0): the scale of every objective value
    roundoff = LASSO_GAP * F0 + tolerance(torch.float64, p.spec.n, p.spec.d, F0[None])[0]  # certificate + evaluation
    allowed = (w_star**2).sum(-1)[None] / (2 * lr * t) + roundoff[None]
    dev = np.maximum(F - lower[None], 0.0)[..., None]
    return Comparison(dev, np.zeros_like(dev), allowed[..., None], allowed[..., None])


def _glm(p: Prompt, k: Knobs):
    y01 = (p.y > 0).astype(np.float64)
    p01 = Prompt(p.X, y01, p.Xq, p.w_star, p.spec)
    x_bound = float(np.linalg.norm(np.concatenate([p.X, p.Xq], 1), axis=-1).max())
    lr = k.lr_factor * 4.0 / x_bound**2
    radius = k.steps * lr * x_bound**2
    c = constructions.logistic_gd(p.spec.d, k.steps, lr, k.heads, x_bound,
                                  mask_const=10.0**k.log10_mask * max(1.0, 2 * radius))
    knots = np.linspace(-radius, radius, k.heads)
    return c, LogisticGD(k.steps, lr, knots), p01


def _binary(p: Prompt, k: Knobs):
    """Labels by the knobs' seed: exactly binary (y > 0), binary with one label moved by up to
    2 eps, or the prompt's real-valued labels; threshold 1 - 1/(2n) flags one non-binary label."""
    eps = 0.1
    kind = k.seed % 3
    y = p.y.copy()
    if kind < 2:
        y = (p.y > 0).astype(np.float64)
        if kind == 1:
            y[:, 0] += np.random.default_rng(k.seed).uniform(-2 * eps, 2 * eps, size=y.shape[0])
    threshold = 1.0 - 0.5 / p.spec.n
    return (constructions.binary_test(p.spec.d, eps, threshold), BinaryTest(eps, threshold),
            Prompt(p.X, y, p.Xq, p.w_star, p.spec))


def glm_fit_error(heads: int, radius: float) -> float:
    """``sup_{[-R, R]} |sigma - sigma_hat| <= h^2 max|sigma''| / 8``, ``h = 2R/(heads-1)``,
    ``max|sigma''| = 1/(6 sqrt 3)`` (linear-interpolation error bound)."""
    h = 2 * radius / (heads - 1)
    return h**2 / (8 * 6 * np.sqrt(3))


def _glm_bounds(p: Prompt, k: Knobs, c) -> Comparison:
    """Bai Thm 13: ``|w_hat_t - w_t| <= eps t lr x_bound`` against exact logistic GD."""
    lr, x_bound, heads = c.params["lr"], c.params["x_bound"], c.params["heads"]
    eps_fit = glm_fit_error(heads, k.steps * lr * x_bound**2)
    exact = LogisticGD(k.steps, lr).fit(p.X, p.y)
    W = np.asarray(c.read_slot(*p.arrays, "w"), dtype=np.float64)[1:, :, -1]  # query token's w: [S, B, d]
    dev = np.linalg.norm(W - exact.iterates_[1:], axis=-1)[..., None]
    t = np.arange(1, k.steps + 1)[:, None, None]
    scale = np.maximum.accumulate(exact.magnitude_, axis=0)[1:][..., None]
    allowed = eps_fit * t * lr * x_bound + tolerance(c.dtype, p.spec.n, p.spec.d, scale)
    return Comparison(dev, np.zeros_like(dev), allowed, scale)


def _select_split(n: int) -> int:
    return max(1, min(n - 1, int(np.ceil(0.6 * n))))


def _select(p: Prompt, k: Knobs):
    n_train = _select_split(p.spec.n)
    Xtr = p.X[:, :n_train]
    base = ridge_lam(Xtr, k.log10_lam - 1.0)
    lams = [base * 10.0**j for j in range(3)]
    lr = stable_lr(Xtr, k.lr_factor, lams[-1])
    gamma = float(10.0**k.log10_gamma * np.mean(p.y**2))
    Xt, yt, Xqt = _torch(p)
    bound = max(float((bai.score_bound(Xt[:, :n_train], yt[:, :n_train], torch.cat([Xt[:, n_train:], Xqt], 1), lam)
                       + yt.abs().amax(-1)).max()) for lam in lams)
    c = constructions.ridge_select(p.spec.d, lams, k.steps, lr, n_train, p.spec.n - n_train, gamma,
                                   mask_const=10.0**k.log10_mask * bound)
    return c, RidgeSelect(lams, k.steps, lr, n_train, gamma)


def _select_bounds(p: Prompt, k: Knobs, c) -> Comparison:
    """Validation loss of the selected predictor <= min_k L_k + gamma, after every step."""
    n_train, gamma = c.params["n_train"], c.params["gamma"]
    Xv, yv = p.X[:, n_train:], p.y[:, n_train:]
    ref = RidgeSelect(c.params["lams"], k.steps, c.params["lr"], n_train, gamma).fit(p.X, p.y)
    cmp = compare_trace(c, RidgeSelect(c.params["lams"], k.steps, c.params["lr"], n_train, gamma), p.X, p.y, Xv)
    loss = ((cmp.model - yv[None]) ** 2).mean(-1)  # [S, B]
    slack = 2 * np.sqrt(loss) * cmp.tol.max(-1)  # round-off of the predictions, propagated to the loss
    dev = np.maximum(loss - ref.losses_[1:].min(-1), 0.0)[..., None]
    allowed = (gamma + slack)[..., None]
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)


# -- ridge ---------------------------------------------------------------------------
def _ridge_quantities(p: Prompt, lam: float):
    """(w* [B, d], kappa(A) [B], eigenvalues of A [B, d])."""
    A = np.einsum("bni,bnj->bij", p.X, p.X) / p.spec.n + lam * np.eye(p.spec.d)
    ev = np.linalg.eigvalsh(A)
    return Ridge(lam).fit(p.X, p.y).iterates_[-1], ev[:, -1] / ev[:, 0], ev


def _ridge_rate(p: Prompt, c, ref, lam: float, factor) -> Comparison:
    """``|y_t - y_ridge| <= factor_t |x_q| |w*|`` + round-off (the trace's and the solve's)."""
    w_star, kappa, _ = _ridge_quantities(p, lam)
    model = np.asarray(c.trace(*p.arrays), dtype=np.float64)  # [S, B, m]
    target = np.einsum("bmd,bd->bm", p.Xq, w_star)[None]
    qn = np.linalg.norm(p.Xq, axis=-1)[None] * np.linalg.norm(w_star, axis=-1)[None, :, None]  # [1, B, m]
    ref.fit(p.X, p.y)
    roundoff = tolerance(c.dtype, p.spec.n, p.spec.d, ref.scale(p.Xq)) + solve_tolerance(
        torch.float64, p.spec.d, kappa[None, :, None], qn)
    allowed = factor[:, :, None] * qn + roundoff
    dev = np.abs(model - target)
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)


def _gd_ridge_rate(p: Prompt, k: Knobs, c) -> Comparison:
    """Bai Thm 4's rate for GD on ridge: contraction ``rho = max_i |1 - lr a_i|`` per layer."""
    lam, lr = c.params["lam"], c.params["lr"]
    ev = _ridge_quantities(p, lam)[2]
    rho = np.abs(1 - lr * ev).max(-1)  # [B]
    factor = rho[None] ** np.arange(1, k.steps + 1)[:, None]  # [S, B]
    return _ridge_rate(p, c, GD(k.steps, lr=lr, lam=lam), lam, factor)


def _newton(p: Prompt, k: Knobs):
    lam = ridge_lam(p.X, k.log10_lam)
    x_bound = float(np.linalg.norm(p.X, axis=-1).max())
    mask = 10.0**k.log10_mask * newton_mask_bound(p.spec.n, lam, x_bound)
    c = constructions.ridge_newton(p.spec.d, lam, x_bound=x_bound, mask_const=mask)
    return c, NewtonSchulz(c.params["iters"], lam, 1.0 / (x_bound**2 + lam))


def _newton_rate(p: Prompt, k: Knobs, c) -> Comparison:
    """``|w_k - w*| <= q^(2^k) |w*|``, ``q = x_bound^2/(x_bound^2 + lam)``."""
    lam, x_bound, iters = c.params["lam"], c.params["x_bound"], c.params["iters"]
    q = x_bound**2 / (x_bound**2 + lam)
    factor = np.broadcast_to((q ** (2.0 ** np.arange(1, iters + 1)))[:, None], (iters, p.spec.B))
    return _ridge_rate(p, c, NewtonSchulz(iters, lam, 1.0 / (x_bound**2 + lam)), lam, factor)


def _newton_fu_printed(p: Prompt, k: Knobs):
    c, ref = _newton(p, k)
    return constructions.ridge_newton(p.spec.d, c.params["lam"], x_bound=c.params["x_bound"],
                                      mask_const=c.params["mask_const"], _fu_printed_values=True), ref


def _sm(p: Prompt, k: Knobs):
    lam = ridge_lam(p.X, k.log10_lam)
    x_bound = float(np.linalg.norm(p.X, axis=-1).max())
    mask = 10.0**k.log10_mask * float(sherman_morrison.sm_mask_bound(*_torch(p)[:2], lam, x_bound).max())
    c = constructions.ridge_sherman_morrison(p.spec.d, lam, p.spec.n, x_bound=x_bound, mask_const=mask)
    return c, RecursiveLeastSquares(lam)


def _sm_final(p: Prompt, k: Knobs, c) -> Comparison:
    """The last step equals the toolkit's closed-form ridge (np.linalg.solve) within the
    solve's round-off plus the trace's tolerance."""
    lam = c.params["lam"]
    w_star, kappa, _ = _ridge_quantities(p, lam)
    model = np.asarray(c.predict(*p.arrays), dtype=np.float64)[None]  # [1, B, m]
    target = np.einsum("bmd,bd->bm", p.Xq, w_star)[None]
    qn = np.linalg.norm(p.Xq, axis=-1)[None] * np.linalg.norm(w_star, axis=-1)[None, :, None]
    ref = RecursiveLeastSquares(lam).fit(p.X, p.y)
    tol = tolerance(c.dtype, p.spec.n, p.spec.d, ref.scale(p.Xq), c.step_blocks)[-1:]
    allowed = tol + solve_tolerance(torch.float64, p.spec.d, kappa[None, :, None], qn)
    # only the last step is compared with the closed form: earlier rows are 0 within 1 (ratio 0)
    dev = np.concatenate([np.zeros((p.spec.n - 1,) + target.shape[1:]), np.abs(model - target)])
    allowed = np.concatenate([np.ones((p.spec.n - 1,) + target.shape[1:]), allowed])
    return Comparison(dev, np.zeros_like(dev), allowed, allowed)


CLAIMS: dict[str, Claim] = {
    c.id: c
    for c in [
        Claim(
            "vonoswald23-prop1", "von Oswald et al. 2023", "Prop. 1 (sec. 3.2)",
            "one linear self-attention layer = one GD step on 1/(2n)|Xw-y|^2; L stacked layers = L steps "
            "(query masked out of keys/values)",
            "gd", "GD iterates x_q.w_t, t = 1..L (numpy)", _gd,
        ),
        Claim(
            "vonoswald23-prop1-ridge", "von Oswald et al. 2023 + Bai et al. 2023",
            "Prop. 1 + Cor. C.1 (l2 head)",
            "adding a constant-score head for the -lr*lam*w term makes each layer one GD step on the ridge "
            "objective",
            "gd(lam>0)", "GD iterates on 1/(2n)|Xw-y|^2 + lam/2 |w|^2 (numpy)", _gd_ridge,
        ),
        Claim(
            "vonoswald23-gdpp", "von Oswald et al. 2023", "App. A.10 (GD++)",
            "one LSA layer transforms every input by (I - gamma X^T X/n) and takes a GD step on the "
            "current inputs",
            "gd_plus_plus", "GD++ recursion, effective weights (numpy)", _gdpp,
        ),
        Claim(
            "ahn23-pgd", "Ahn et al. 2023", "LSA layer with P, Q (claims.md sec. 6)",
            "one LSA layer = one step w <- w - P grad L(w) for any d x d P, non-symmetric included "
            "(transpose trap, claims.md sec. 11.5)",
            "preconditioned_gd", "preconditioned GD iterates (numpy)", _pgd,
        ),
        Claim(
            "bai23-icgd", "Bai et al. 2023", "Prop. C.2 / Thm 13 (square loss)",
            "ReLU attention, 2 sign-split heads per layer: every token's w slot after layer t is the GD iterate "
            "w_t; a 2-head readout layer writes <w_t, x_q> (query gated by -B(1-t_j), B varied)",
            "relu_gd", "GD iterates (numpy)", _relu_gd,
            bounds=lambda p, k, c: _iterate_bound(p, c, _relu_gd(p, k)[1].fit(p.X, p.y)),
        ),
        Claim(
            "bai23-ridge-relu", "Bai et al. 2023", "Cor. C.1 / Thm 4 (l2 head)",
            "a third ReLU head with constant score adds -lr*lam*w: each layer is one GD step on the ridge objective",
            "relu_gd(lam>0)", "GD iterates on the ridge objective (numpy)", _relu_ridge,
            bounds=lambda p, k, c: _iterate_bound(p, c, _relu_ridge(p, k)[1].fit(p.X, p.y)),
        ),
        Claim(
            "bai23-lasso", "Bai et al. 2023", "Thm 10, Prop. C.1 (ISTA, soft-threshold MLP)",
            "attention GD step + 4d-ReLU soft-threshold MLP per layer = one ISTA step; objective gap "
            "F(w_t) - F* <= |w*|^2/(2 lr t)",
            "lasso_ista", "ISTA iterates; FISTA solution with a duality-gap certificate (numpy)", _lasso,
            fixed_prompt=dict(log10_kappa=(0.0, 1.5)), bounds=_lasso_bounds,
        ),
        Claim(
            "bai23-glm", "Bai et al. 2023", "Thm 13 (GLM / logistic ICGD)",
            "GD on the logistic loss with sigma replaced by `heads` ReLUs is exact GD with the interpolant, and "
            "|w_hat_t - w_t| <= eps*t*lr*B_x against exact logistic GD (eps = fit error ~ heads^-2)",
            "logistic_gd", "logistic GD with the interpolated / the exact sigmoid (numpy)", _glm, bounds=_glm_bounds,
        ),
        Claim(
            "bai23-selection", "Bai et al. 2023", "Prop. 15, Thm 16 (post-ICL validation)",
            "GD for 3 ridge lambdas in parallel heads, exact validation losses, ReLU-MLP selection and aggregation "
            "= the numpy selection rule; the selected predictor's validation loss <= min_k L_k + gamma",
            "ridge_select", "train/validation split + selection rule (numpy)", _select,
            fixed_prompt=dict(n=(4, 40)), bounds=_select_bounds,
        ),
        Claim(
            "fu23-newton", "Fu et al. 2023", "Thm 5.1, App. B.2 (with the V_2 = -V_1 fix)",
            "one attention+MLP layer per Newton-Schulz iteration M <- 2M - MAM for A = X^T X/n + lam I (d ridge "
            "tokens make the keys' moment A); prediction -> ridge with |w_k - w*| <= q^(2^k)|w*|",
            "ridge_newton", "Newton-Schulz iterates M_k X^T y/n; np.linalg.solve ridge (numpy)", _newton,
            bounds=_newton_rate,
        ),
        Claim(
            "bai23-ridge", "Bai et al. 2023", "Thm 4 (ridge by GD, L = O(kappa log 1/eps))",
            "L layers of GD on the ridge objective reach ridge at the contraction rate: "
            "|y_L - y_ridge| <= rho^L |x_q||w*|, rho = max|1 - lr a_i| <= 1 - lr mu",
            "gd(lam>0)", "GD iterates; np.linalg.solve ridge (numpy)", _gd_ridge,
            fixed_knobs=dict(steps=(1, 60)), bounds=_gd_ridge_rate,
        ),
        Claim(
            "akyurek22-thm2", "Akyurek et al. 2022", "Thm 2, App. B (Sherman-Morrison / RLS)",
            "one step (a fixed group of 2J+4 blocks) per example applies the Sherman-Morrison update: after step t "
            "the prediction is ridge on the first t+1 examples (mu = n lam), the last step the toolkit's ridge",
            "ridge_sherman_morrison", "RLS recursion with exact division; np.linalg.solve ridge (numpy)", _sm,
            fixed_prompt=dict(n=(1, 16), d=(1, 8)), fixed_knobs=dict(log10_lam=(-2.0, 0.5)), bounds=_sm_final,
        ),
        Claim(
            "fu23-printed-values", "Fu et al. 2023", "App. B (V_1 = V_2 as printed); claims.md sec. 11.17",
            "negative control: the printed value matrices compute relu(z)v + relu(-z)v = |z|v and miss the "
            "Newton iterate (from the first layer with a negative score; d >= 2 here)",
            "ridge_newton(printed values)", "Newton-Schulz iterates (numpy)", _newton_fu_printed,
            kind="negative", negative_from=1, fixed_prompt=dict(d=(2, 12)),
        ),
        Claim(
            "vonoswald23-mask", "von Oswald et al. 2023", "sec. 3.2 remark; claims.md sec. 11.2",
            "negative control: without the query mask, layer 1 still equals GD but layers >= 2 miss it",
            "gd (mask_query=False)", "GD iterates (numpy)", _gd_unmasked,
            kind="negative", fixed_prompt=dict(m=3), fixed_knobs=dict(steps=3, lr_factor=1.0),
        ),
        Claim(
            "li23-closeness", "Li et al. 2023", "sec. 4-5 (softmax regression vs one attention layer); claims.md sec. 5.1",
            "one GD step x' = x - eta grad L_exp on single softmax regression moves a softmax attention layer's "
            "output by a label shift: c(x'; b) = c(x; b~) exactly, |b~ - b| <= |A||x' - x|/2 = O(eta) "
            "(ours; Li's M = n^1.5 exp(10R^2) is looser)",
            "softmax attention layer (verify.softmax_regression)", "closed-form softmax regression (torch)",
            sr.check_closeness, kind="bound", fixed_prompt=dict(n=(2, 40), d=(1, 12)),
        ),
        Claim(
            "gao23-tensor-trick", "Gao, Song, Xie 2023", "tensor trick; claims.md sec. 5.2, 11.11",
            "vec(A1 X A2^T) = (A1 (x) A2) vec_row(X) = (A2 (x) A1) vec_col(X); the attention loss is n single "
            "regressions sharing vec(X); its closed-form gradient A1^T G A2 equals autograd",
            "(identities)", "torch.kron, autograd", sr.check_tensor_trick, kind="bound",
            fixed_prompt=dict(n=(2, 16), d=(1, 6)),
        ),
        Claim(
            "bai23-binary-test", "Bai et al. 2023", "Lemma 18, Cor. H.1 (pre-ICL testing); claims.md sec. 4.5",
            "one ReLU layer with 6 heads writes Psi = (1/n) sum_i psi(y_i) (psi: two triangular bumps of width eps at "
            "0 and 1, exactly 6 ReLUs), a 2-head layer thresholds it: 1 iff all labels are binary",
            "binary_test", "the same psi and threshold (numpy)", _binary, fixed_prompt=dict(n=(2, 40)),
        ),
        Claim(
            "akyurek22-primitives", "Akyurek et al. 2022", "Lemma 1, App. C (Lemmas 4, 5, 8); claims.md sec. 2.2",
            "mov (softmax attention, position codes, null logit), aff (GeLU pass-through), mul (GeLU: "
            "error s^2|(x+y)^4 - x^4 - y^4|/12 + O(s^4)) and div (LayerNorm padding: relative error "
            "1 - (1 + Q/(2M^2c^2))^(-1/2), divides by |c|) are each one layer within their predicted error",
            "raw primitives (constructions.raw)", "exact mov/aff/mul/div (numpy)", aky.check_primitives,
            kind="bound", fixed_prompt=dict(d=(1, 6), n=(3, 40)),
        ),
        Claim(
            "akyurek22-thm1", "Akyurek et al. 2022", "Thm 1, App. A; claims.md sec. 2.3",
            "9 primitive layers on the causal prompt [x1, y1, x2] compute w'^T x2, w' = w - 2 lr (x1 (w^T x1 - y1) "
            "+ lam w), with error O(s^2) in the mul scale: each decade of s cuts it by >= 10^1.9",
            "raw_gd", "exact one-exemplar GD step (numpy)", aky.check_thm1, kind="bound",
            fixed_prompt=dict(B=(1, 3), d=(1, 6)),
        ),
        Claim(
            "gao23-lipschitz", "Gao, Song, Xie 2023; Li et al. 2023", "Lipschitz lemmas; claims.md sec. 5",
            "on |A| <= R: the row softmax is |A1||A2|/2-Lipschitz in X (Frobenius) and |Hess L_exp| <= "
            "|A|^2 (5/2 + 3|b|/2) (our constants; the papers state poly(n) exp(O(R^2)))",
            "(bounds)", "autograd Hessian", sr.check_lipschitz, kind="bound", fixed_prompt=dict(n=(2, 16), d=(1, 6)),
        ),
    ]
}


def get(ids=None) -> list[Claim]:
    """Claims by id (all when ``ids`` is empty)."""
    if not ids:
        return list(CLAIMS.values())
    unknown = [i for i in ids if i not in CLAIMS]
    if unknown:
        raise ConstructionError(f"unknown claim id(s) {unknown}; known: {sorted(CLAIMS)}")
    return [CLAIMS[i] for i in ids]


@dataclass
class ClaimResult:
    claim: Claim
    prompts: int
    dtype: str
    holds: bool
    figure: float  # exact: worst ratio over prompts; negative: smallest per-prompt miss ratio
    err: float  # |model - ref| at that figure
    tol: float  # tolerance there
    failures: list = field(default_factory=list)  # (PromptSpec, Knobs, report) of failing cases


def check_claim(claim: Claim, prompts: int = 100, dtype=torch.float64, rng=None, seed: int = 0,
                device=None) -> ClaimResult:
    """Draw ``prompts`` random prompts and knobs, evaluate, aggregate."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    holds, figure, at = True, (0.0 if claim.kind != "negative" else np.inf), (0.0, 0.0)
    failures = []
    for _ in range(prompts):
        spec = PromptSpec.sample(rng, **claim.fixed_prompt)
        knobs = Knobs.sample(rng, **claim.fixed_knobs)
        ok, fig, cmp = claim.evaluate(make_prompt(spec), knobs, dtype, device)
        if not ok:
            holds = False
            failures.append((asdict(spec), asdict(knobs), cmp.report()))
        if (fig > figure) if claim.kind != "negative" else (fig < figure):
            figure, at = fig, cmp.at_worst()
    name = "float32" if dtype == torch.float32 and claim.kind == "exact" else "float64"
    return ClaimResult(claim, prompts, name, holds, float(figure), at[0], at[1], failures)
