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
from dataclasses import asdict, dataclass, field
from typing import Callable

import numpy as np
import torch

import constructions
from constructions.errors import ConstructionError

from .prompts import Prompt, PromptSpec, make_prompt
from .reference import GD, GDPlusPlus, Reference
from .tolerance import Comparison, compare_trace

#: Ranges (inclusive) of the knobs; ``log10_lam`` is relative to lambda_max(X^T X/n).
KNOB_RANGES = dict(
    steps=(1, 8),
    lr_factor=(0.05, 1.95),
    log10_lam=(-3.0, 0.5),
    gamma_factor=(0.0, 1.9),
    skew=(0.0, 2.0),
)


@dataclass(frozen=True)
class Knobs:
    """Algorithm parameters, as factors of the prompt's stability limits."""

    steps: int = 3
    lr_factor: float = 1.0  # lr = lr_factor / max_b lambda_max(X^T X/n + lam I)
    log10_lam: float = -1.0  # lam = 10**log10_lam * mean_b lambda_max(X^T X/n)
    gamma_factor: float = 0.5  # gamma = gamma_factor / max_b lambda_max(X^T X/n)
    skew: float = 0.5  # size of the skew-symmetric part of a random preconditioner
    seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, **fixed) -> "Knobs":
        vals = {}
        for k, (lo, hi) in KNOB_RANGES.items():
            vals[k] = int(rng.integers(lo, hi + 1)) if isinstance(lo, int) else float(rng.uniform(lo, hi))
        vals["seed"] = int(rng.integers(2**32))
        vals.update(fixed)
        return cls(**vals)


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
    kind: str = "exact"  # "exact": every layer within tolerance; "negative": layer 1 matches, a later one must not
    fixed_prompt: dict = field(default_factory=dict)
    fixed_knobs: dict = field(default_factory=dict)

    def case(self, prompt: Prompt, knobs: Knobs) -> tuple:
        """(construction, unfitted reference) for one prompt."""
        return self.make(prompt, knobs)

    def evaluate(self, prompt: Prompt, knobs: Knobs, dtype=torch.float64) -> tuple[bool, float, Comparison]:
        """(holds, figure, comparison).  Exact claims: figure = worst ratio error/tolerance
        over all layers, holds iff <= 1.  Negative claims: figure = largest ratio at layers
        >= 2, holds iff layer 1 is within tolerance and figure > 1."""
        c, ref = self.case(prompt, knobs)
        if self.kind == "negative":
            # A mismatch of relative size ~|x_q|^2/n can hide under float32 round-off; a
            # negative control is a statement about the algebra, so it runs in float64.
            dtype = torch.float64
        cmp = compare_trace(c.to(dtype), ref, *prompt.arrays)
        if self.kind == "exact":
            return cmp.ok, cmp.worst, cmp
        first_ok = bool((cmp.ratio[0] <= 1).all())
        figure = float(cmp.ratio[1:].max()) if cmp.ratio.shape[0] > 1 else 0.0  # largest miss at layers >= 2
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
            "vonoswald23-mask", "von Oswald et al. 2023", "sec. 3.2 remark; claims.md sec. 11.2",
            "negative control: without the query mask, layer 1 still equals GD but layers >= 2 miss it",
            "gd (mask_query=False)", "GD iterates (numpy)", _gd_unmasked,
            kind="negative", fixed_prompt=dict(m=3), fixed_knobs=dict(steps=3, lr_factor=1.0),
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


def check_claim(claim: Claim, prompts: int = 100, dtype=torch.float64, rng=None, seed: int = 0) -> ClaimResult:
    """Draw ``prompts`` random prompts and knobs, evaluate, aggregate."""
    rng = rng if rng is not None else np.random.default_rng(seed)
    holds, figure, at = True, (0.0 if claim.kind == "exact" else np.inf), (0.0, 0.0)
    failures = []
    for _ in range(prompts):
        spec = PromptSpec.sample(rng, **claim.fixed_prompt)
        knobs = Knobs.sample(rng, **claim.fixed_knobs)
        ok, fig, cmp = claim.evaluate(make_prompt(spec), knobs, dtype)
        if not ok:
            holds = False
            failures.append((asdict(spec), asdict(knobs), cmp.report()))
        if (fig > figure) if claim.kind == "exact" else (fig < figure):
            figure, at = fig, cmp.at_worst()
    name = "float32" if dtype == torch.float32 and claim.kind == "exact" else "float64"
    return ClaimResult(claim, prompts, name, holds, float(figure), at[0], at[1], failures)
