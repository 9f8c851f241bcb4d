"""The toolkit's one tolerance model, used by the tests and by ``icl-verify``.

For the prediction read after layer t (t = 1..S) of a prompt with n context
examples in dimension d, computed in a dtype with unit round-off ``eps``::

    |y_model - y_ref|  <=  C * eps * (t + 1) * (n + d) * scale_t
    scale_t = |x_q| * max_{k <= t} ( |w_k| + |P_k| (1/n) sum_i |y_i - w_k.x_i| |x_i| )

Why this form.  Each layer forms sums of n products of d-vectors (the key/value
contraction and the score), so one layer adds at most ~(n + d) eps relative
error *to the terms it sums*; errors from earlier layers are carried forward
by a non-expansive map (the GD iteration with a step inside its stability
limit), so they add up linearly in depth.  The terms summed are bounded by
``|x_q| |w_k|`` (the running prediction) and by ``|x_q| |P_k|`` times the
*unsigned* gradient ``(1/n) sum_i |r_i| |x_i|`` -- not by the gradient itself,
which may be tiny through cancellation (at convergence it is 0 while its terms
are not).  ``scale`` is computed by the reference (``Reference.scale``).

``C = 4`` was fixed before any test ran (a constant of order one per summed term,
chosen in advance); the measured worst ratio error/tolerance is reported by
``python benchmarks/tolerance_margin.py`` and in docs/tolerance.md.  The
tolerance is never tuned to a failing run: a failure means a bug or a prompt
outside the construction's domain.

float32: the model runs in float32; the reference runs in float64 on the
float32-rounded prompt, so the comparison measures the model's arithmetic only.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch

C = 4.0


def eps(dtype) -> float:
    """Machine epsilon of a torch or numpy float dtype."""
    if isinstance(dtype, torch.dtype):
        return float(torch.finfo(dtype).eps)
    return float(np.finfo(dtype).eps)


def tolerance(dtype, n: int, d: int, scale: np.ndarray, step_blocks: int = 1) -> np.ndarray:
    """Per-step tolerance ``[S, ...]`` for a scale array whose first axis is the step t = 1..S.
    The depth is the number of blocks run: ``t * step_blocks``."""
    scale = np.asarray(scale, dtype=np.float64)
    depth = step_blocks * np.arange(1, scale.shape[0] + 1, dtype=np.float64).reshape((-1,) + (1,) * (scale.ndim - 1))
    return C * eps(dtype) * (depth + 1) * (n + d) * scale


def solve_tolerance(dtype, d: int, kappa, scale) -> np.ndarray:
    """Round-off of a closed-form solve (``np.linalg.solve`` of a d x d system with condition
    number kappa) used as a reference: ``C * eps * d * kappa * scale`` (the classical backward-error
    bound of a solve, of order ``d kappa eps``; docs/tolerance.md)."""
    return C * eps(dtype) * d * np.asarray(kappa, dtype=np.float64) * np.asarray(scale, dtype=np.float64)


@dataclass
class Comparison:
    """Model trace vs reference trace, every layer.  Arrays are ``[S, B, m]``."""

    model: np.ndarray
    ref: np.ndarray
    tol: np.ndarray
    scale: np.ndarray

    def join(self, other: "Comparison") -> "Comparison":
        """Both comparisons side by side (along the last axis); both must hold."""
        cat = lambda a, b: np.concatenate([a, b], axis=-1)  # noqa: E731
        return Comparison(cat(self.model, other.model), cat(self.ref, other.ref), cat(self.tol, other.tol),
                          cat(self.scale, other.scale))

    @property
    def err(self) -> np.ndarray:
        return np.abs(self.model - self.ref)

    @property
    def ratio(self) -> np.ndarray:
        with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
            r = self.err / self.tol
        # tol == 0 only when the scale is 0 (x_q = 0 or w = 0): then any error is a failure
        r = np.where(self.tol > 0, r, np.where(self.err > 0, np.inf, 0.0))
        return np.where(np.isnan(self.err), np.inf, r)  # a NaN result is a miss, never a pass

    @property
    def worst(self) -> float:
        return float(np.nanmax(self.ratio)) if np.isfinite(self.model).all() else float("inf")

    @property
    def ok(self) -> bool:
        return self.worst <= 1.0

    def layers_failing(self) -> list[int]:
        """1-based layers where some query misses the reference beyond tolerance."""
        bad = ~(self.ratio <= 1.0)
        return [int(t) + 1 for t in np.nonzero(bad.reshape(bad.shape[0], -1).any(1))[0]]

    def at_worst(self) -> tuple[float, float]:
        """(error, tolerance) at the worst ratio."""
        i = np.unravel_index(np.nanargmax(np.where(np.isfinite(self.ratio), self.ratio, np.inf)), self.ratio.shape)
        return float(self.err[i]), float(self.tol[i])

    def report(self) -> str:
        e, t = self.at_worst()
        bad = self.layers_failing()
        return (
            f"worst |model - ref| = {e:.3e} vs tolerance {t:.3e} (ratio {self.worst:.3g}); "
            f"max scale {self.scale.max():.3e}; layers failing: {bad or 'none'}"
            + (f" (first deviation at layer {bad[0]} of {self.ref.shape[0]})" if bad else "")
        )


def compare_trace(construction, reference, X, y, Xq, check: bool = True) -> Comparison:
    """Run ``construction.trace`` and ``reference`` on the same prompt, every layer.

    The prompt is first rounded to the construction's dtype; the reference fits
    the rounded values in float64.  ``reference`` is an unfitted
    :class:`verify.reference.Reference`.
    """
    np_dtype = np.float32 if construction.dtype == torch.float32 else np.float64
    X, y, Xq = (np.asarray(a).astype(np_dtype).astype(np.float64) for a in (X, y, Xq))
    if X.ndim == 2:
        X, y, Xq = X[None], y[None], Xq[None]
    model = np.asarray(construction.trace(X, y, Xq, check=check), dtype=np.float64)
    reference.fit(X, y)
    ref, scale = reference.trace(Xq), reference.scale(Xq)
    if model.shape != ref.shape:
        raise AssertionError(f"trace shape {model.shape} != reference trace shape {ref.shape}")
    # a reference whose layers sum more terms than n and d says so (``sum_length``, e.g. TwoLayerGD's K and J)
    d = reference.sum_length(X.shape[2]) if hasattr(reference, "sum_length") else X.shape[2]
    tol = tolerance(construction.dtype, X.shape[1], d, scale, getattr(construction, "step_blocks", 1))
    return Comparison(model, ref, tol, scale)


def assert_trace_matches(construction, reference, X, y, Xq) -> Comparison:
    """``compare_trace`` and raise ``AssertionError`` with a full report if any layer misses."""
    cmp = compare_trace(construction, reference, X, y, Xq)
    if not cmp.ok:
        raise AssertionError(f"{construction.name} {construction.params}: {cmp.report()}")
    return cmp
