"""Knobs: the algorithm parameters a claim draws, as factors of each prompt's own limits.

A claim's case builder turns a random prompt and random :class:`Knobs` into a construction
and its reference: the step size as a fraction of the stability limit (:func:`stable_lr`),
lambda relative to the spectrum (:func:`ridge_lam`, :func:`lasso_lam`), a stable random
preconditioner (:func:`random_precond`), a masking constant as a multiple of a score bound.
``icl-verify`` draws knobs from :data:`KNOB_RANGES` (``Knobs.sample``), the hypothesis
strategy :func:`verify.strategies.knobs` from the same ranges.

A claim may narrow a knob's range or add knobs of its own (``Claim(knobs={...})``): an
added knob is drawn from its range with the knobs' seed and read as an attribute
(``k.momentum``), like the built-in ones.
"""
from __future__ import annotations

from dataclasses import dataclass, field, fields

import numpy as np

from .prompts import sample_fields

#: Ranges (inclusive) of the knobs; ``log10_lam`` is relative to lambda_max(X^T X/n).
KNOB_RANGES = dict(
    steps=(1, 8),
    lr_factor=(0.05, 1.95),
    log10_lam=(-3.0, 0.5),
    gamma_factor=(0.0, 1.9),
    skew=(0.0, 2.0),
    log10_mask=(0.3, 6.0),  # B >= 2x the bound: a float32-rounded prompt moves the bound
    log10_gamma=(-9.0, 0.0),  # ridge_select takes any gamma > 0; its 1/gamma conditioning counts only at near ties
    heads=(3, 40),
    log10_eta=(-4.0, 0.0),
    R=(0.5, 4.0),
)


@dataclass(frozen=True)
class Knobs:
    """Algorithm parameters, as factors of the prompt's stability limits; ``extra`` holds the
    knobs a claim adds (read as attributes)."""

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
    extra: dict = field(default_factory=dict)

    def __getattr__(self, name):  # only reached when no field has this name
        extra = self.__dict__.get("extra", {})
        if name in extra:
            return extra[name]
        raise AttributeError(f"Knobs has no knob {name!r} (built-in: {sorted(KNOB_RANGES)}; added: {sorted(extra)})")

    @classmethod
    def sample(cls, rng: np.random.Generator, **fixed) -> "Knobs":
        """Built-in knobs drawn uniformly from :data:`KNOB_RANGES`; ``fixed`` overrides a knob with
        a value or a ``(lo, hi)`` range of its own."""
        return cls(**sample_fields(rng, KNOB_RANGES, {k: v for k, v in fixed.items() if k in KNOB_RANGES}))

    def completed(self, ranges: dict) -> "Knobs":
        """These knobs with every added knob of ``ranges`` (names not in :data:`KNOB_RANGES`)
        that ``extra`` lacks drawn from its range, deterministically from the seed."""
        missing = {k: v for k, v in ranges.items() if k not in KNOB_RANGES and k not in self.extra}
        if not missing:
            return self
        rng = np.random.default_rng([self.seed, 0x6B6E6F62])  # "knob": a stream apart from the prompt's
        drawn = sample_fields(rng, {k: v for k, v in missing.items() if isinstance(v, tuple)},
                              {k: v for k, v in missing.items() if not isinstance(v, tuple)})
        drawn.pop("seed")
        drawn.update({k: v for k, v in missing.items() if not isinstance(v, tuple)})
        return Knobs(**{f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"},
                     extra={**self.extra, **drawn})


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
    """``10**log10_lam * mean_b lambda_max(X^T X/n)``."""
    return float(10.0**log10_lam * lambda_max(X).mean())


def lasso_lam(X, y, log10_lam: float) -> float:
    """``10**log10_lam * max_b |X^T y/n|_inf`` (at the maximum the LASSO solution is 0)."""
    return float(10.0**log10_lam * np.abs(np.einsum("bnd,bn->bd", X, y) / X.shape[1]).max())


def masking_constant(log10_mask: float, bound) -> float:
    """Bai's masking constant: ``10**log10_mask`` times the largest per-prompt score bound."""
    return float(10.0**log10_mask * float(np.max(np.asarray(bound, dtype=np.float64))))


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
