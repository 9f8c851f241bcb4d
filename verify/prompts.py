"""The toolkit's one prompt generator (numpy, seeded).

A :class:`PromptSpec` holds the *parameters* of a random regression prompt
(sizes, scale, conditioning, noise, seed); :func:`make_prompt` turns it into
arrays X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]``.  The hypothesis
strategies (:mod:`verify.strategies`) and ``icl-verify`` both draw specs from
the ranges in :data:`RANGES`, so they explore the same prompt space.

Each batch item b: ``X_b = scale * sqrt(n) * U diag(s) V^T`` with U, V random
orthonormal and s geometric from 1 to 1/kappa over the min(n, d) directions,
so ``X_b^T X_b / n`` has eigenvalues ``scale^2 s_k^2`` (cond. number kappa^2 for
n >= d); ``w*_b ~ wscale * N(0, I_d)``; ``y = X w* + noise * |X w*|_rms * N(0, 1)``;
``Xq_b ~ scale * N(0, I_d)``.
"""
from __future__ import annotations

from dataclasses import asdict, dataclass, replace

import numpy as np

#: Ranges (inclusive) explored by ``icl-verify`` and the default hypothesis strategies.
RANGES = dict(
    B=(1, 3),
    n=(1, 40),
    m=(1, 3),
    d=(1, 12),
    log10_scale=(-3.0, 3.0),
    log10_kappa=(0.0, 6.0),
    log10_wscale=(-2.0, 2.0),
    noise=(0.0, 1.0),
)


def sample_fields(rng: np.random.Generator, ranges: dict, fixed: dict) -> dict:
    """Draw every field of ``ranges`` (ints: uniform integers, floats: uniform), then a seed;
    a ``fixed`` entry is either a value or a ``(lo, hi)`` range replacing the default."""
    vals = {}
    for k, (lo, hi) in ranges.items():
        if k in fixed and not isinstance(fixed[k], tuple):
            vals[k] = fixed[k]
            continue
        lo, hi = fixed.get(k, (lo, hi))
        vals[k] = int(rng.integers(lo, hi + 1)) if isinstance(lo, int) else float(rng.uniform(lo, hi))
    vals["seed"] = fixed.get("seed", int(rng.integers(2**32)))
    return vals


@dataclass(frozen=True)
class PromptSpec:
    B: int = 1
    n: int = 10
    m: int = 1
    d: int = 3
    log10_scale: float = 0.0
    log10_kappa: float = 0.0
    log10_wscale: float = 0.0
    noise: float = 0.1
    seed: int = 0

    @classmethod
    def sample(cls, rng: np.random.Generator, **fixed) -> "PromptSpec":
        """A spec drawn uniformly from :data:`RANGES`; ``fixed`` overrides a field with a
        value or with a ``(lo, hi)`` range of its own."""
        return cls(**sample_fields(rng, RANGES, fixed))

    def with_(self, **kw) -> "PromptSpec":
        return replace(self, **kw)


@dataclass
class Prompt:
    X: np.ndarray  # [B, n, d]
    y: np.ndarray  # [B, n]
    Xq: np.ndarray  # [B, m, d]
    w_star: np.ndarray  # [B, d]
    spec: PromptSpec

    def rounded(self, dtype) -> "Prompt":
        """The prompt rounded to ``dtype`` (a torch or numpy float dtype) and back to float64:
        what a model in that dtype sees."""
        np_dtype = np.float32 if "32" in str(dtype) else np.float64
        r = lambda a: np.asarray(a).astype(np_dtype).astype(np.float64)  # noqa: E731
        return Prompt(r(self.X), r(self.y), r(self.Xq), self.w_star, self.spec)

    @property
    def arrays(self):
        return self.X, self.y, self.Xq

    def describe(self) -> str:
        return ", ".join(f"{k}={v:.3g}" if isinstance(v, float) else f"{k}={v}" for k, v in asdict(self.spec).items())


def _orthonormal(rng, rows: int, cols: int) -> np.ndarray:
    q, r = np.linalg.qr(rng.standard_normal((rows, cols)))
    return q * np.sign(np.diag(r))


def make_prompt(spec: PromptSpec) -> Prompt:
    """Arrays for ``spec`` (deterministic in ``spec.seed``)."""
    rng = np.random.default_rng(spec.seed)
    B, n, m, d = spec.B, spec.n, spec.m, spec.d
    scale, kappa, wscale = 10.0**spec.log10_scale, 10.0**spec.log10_kappa, 10.0**spec.log10_wscale
    r = min(n, d)
    s = np.geomspace(1.0, 1.0 / kappa, r) if r > 1 else np.ones(1)
    X = np.empty((B, n, d))
    for b in range(B):
        X[b] = scale * np.sqrt(n) * (_orthonormal(rng, n, r) * s) @ _orthonormal(rng, d, r).T
    w = wscale * rng.standard_normal((B, d))
    clean = np.einsum("bnd,bd->bn", X, w)
    rms = np.sqrt(np.mean(clean**2, axis=1, keepdims=True))
    y = clean + spec.noise * rms * rng.standard_normal((B, n))
    Xq = scale * rng.standard_normal((B, m, d))
    return Prompt(X, y, Xq, w, spec)
