"""Exact rational arithmetic: a construction's forward pass in ``fractions.Fraction``.

Shapes as everywhere: X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]``; traces
``[S, B, m]``.  Every float64 weight and input is a dyadic rational, so
converting it to a Fraction is exact; linear and ReLU attention and ReLU MLPs
then compute exactly (:func:`constructions.numpy_pass.numpy_forward`), and so
do the numpy references of :mod:`verify.reference` when their inputs and
parameters are Fractions.  The comparison has zero tolerance.

Both sides are piecewise polynomial in the prompt; a wrong identity survives
one random rational point with small probability (Schwartz-Zippel), so a few
random prompts make a strong check at a concrete size.  This is the fallback
of :mod:`verify.symbolic` for constructions outside its symbolic fragment.
"""
from __future__ import annotations

from fractions import Fraction

import numpy as np

from constructions.numpy_pass import numpy_forward

from .prompts import PromptSpec, make_prompt


def to_exact(a) -> np.ndarray:
    """An object array of Fractions with exactly the values of a float array."""
    a = np.asarray(a, dtype=np.float64)
    return np.array([Fraction(v) for v in a.ravel().tolist()] or [], dtype=object).reshape(a.shape)


def exact_links(links) -> tuple:
    """``(knots, b, h0, c0)`` of a sum of ReLUs (:func:`constructions.parts.relu_antiderivative`)
    as Fractions with exactly the floats the weights store."""
    knots, b, h0, c0 = links
    return tuple(to_exact(knots)), tuple(to_exact(b)), Fraction(float(h0)), Fraction(float(c0))


def rational_prompt(spec: PromptSpec, denominator: int = 16):
    """A random prompt (``make_prompt(spec)``) rounded to rationals with small denominators
    (``limit_denominator``), as float64 arrays that hold these rationals exactly.  Small
    denominators keep the Fractions of deep constructions small."""
    p = make_prompt(spec)

    def rnd(a):
        return np.vectorize(lambda v: float(Fraction(v).limit_denominator(denominator)))(a)

    return rnd(p.X), rnd(p.y), rnd(p.Xq)


def _float(a):
    return np.asarray(a, dtype=np.float64)


def stream(c, X, y, Xq, rational: bool = True) -> np.ndarray:
    """The construction's input residual stream ``[B, T, D]`` (embedding and extra tokens), exact
    (``rational=False``: float64), after the same validation and domain check as the float path."""
    X, y, Xq = (np.asarray(a, dtype=np.float64) for a in (X, y, Xq))
    c.prepare(X, y, Xq, check=rational)
    conv = to_exact if rational else _float
    B, n, _ = X.shape
    N = c.n_context_tokens(n)
    h = np.zeros((B, N + Xq.shape[1], c.layout.width), dtype=object if rational else np.float64)
    if rational:
        h[...] = Fraction(0)
    c.fill(h, conv(X), conv(y), conv(Xq), conv)
    if c.extra_tokens is not None:
        extra = conv(c.extra_tokens(n))
        h = np.concatenate([h[:, :N], np.broadcast_to(extra, (B, *extra.shape)), h[:, N:]], axis=1)
    return h


def forward(c, h: np.ndarray, n: int, blocks=None, record=None) -> list[np.ndarray]:
    """The streams of ``c.blocks`` (or the given ones) on a stream ``h`` of a prompt with ``n``
    examples, in h's arithmetic (Fractions or float64)."""
    conv = to_exact if h.dtype == object else _float
    return numpy_forward(c.blocks if blocks is None else blocks, h, c.n_keys(n), c.model.mask_query, norm=n,
                         convert=conv, record=record)


def with_slot(c, h: np.ndarray, slot: str, value) -> np.ndarray:
    """A copy of the stream ``h`` with every token's ``slot`` set to ``value`` (``[B, size]``, one
    value per prompt): the state of an iteration from an arbitrary iterate, for a proof of one step."""
    h, sl = h.copy(), c.layout[slot]
    h[:, :, sl.start:sl.start + sl.size] = np.asarray(value, dtype=h.dtype)[:, None, :]
    return h


def residuals(c, X, y, Xq, rational: bool = True, record=None) -> list[np.ndarray]:
    """The construction's residual streams ``[B, T, D]`` (input first) by the numpy pass, in exact
    arithmetic (``rational=False``: in float64, the same code on floats)."""
    return forward(c, stream(c, X, y, Xq, rational), np.asarray(X).shape[1], record=record)


def trace(c, X, y, Xq, rational: bool = True, record=None) -> np.ndarray:
    """``[S, B, m]`` predictions after every step (the readout blocks applied to the stream after
    each step, as :meth:`Construction.trace`), exact (or float64 with ``rational=False``);
    ``record`` sees every ReLU input of the full pass (:func:`constructions.numpy_pass.numpy_forward`)."""
    hs = residuals(c, X, y, Xq, rational, record)
    n = np.asarray(X).shape[1]
    nk = c.n_keys(n)
    out = []
    for h in hs[c.n_prefix + c.step_blocks : c.n_step_blocks + 1 : c.step_blocks]:
        if c.n_readout:
            h = forward(c, h, n, blocks=c.blocks[c.n_step_blocks:])[-1]
        r = c.layout.readout
        out.append((Fraction(r.sign) if rational else r.sign) * h[:, nk:, c.layout[r.slot].start])
    return np.stack(out)


class ReluGates:
    """A ``record`` for the exact pass: for every ReLU of the given blocks (default all) -- each ReLU
    head (``("head", block, head)``, over all its query-key scores) and each ReLU MLP unit
    (``("mlp", block, unit)``) -- ``seen[gate] = (opened, closed)`` over every pass it watched,
    opened = some input > 0, closed = some input <= 0.  A proof whose prompts leave a gate always
    open or always closed has not exercised both branches of that ReLU."""

    def __init__(self, blocks=None):
        self.blocks, self.seen = blocks, {}

    def _see(self, gate, values):
        values = values.ravel()
        o, z = self.seen.get(gate, (False, False))
        self.seen[gate] = (o or any(v > 0 for v in values), z or any(v <= 0 for v in values))

    def __call__(self, block, part, index, values):
        if self.blocks is not None and block not in self.blocks:
            return
        if part == "head":
            self._see(("head", block, index), values)
        else:
            for unit in range(values.shape[-1]):
                self._see(("mlp", block, unit), values[..., unit])

    def stuck(self, ignore=()) -> list:
        """The gates never both open and closed (but ``ignore``)."""
        return sorted(g for g, (o, z) in self.seen.items() if not (o and z) and g not in set(ignore))


def trace_equals(c, ref, X, y, Xq, record=None) -> bool:
    """The construction's exact trace equals the reference run in Fractions (zero tolerance);
    ``ref`` is an unfitted reference whose parameters are Fractions."""
    return bool((trace(c, X, y, Xq, record=record) == ref.fit(to_exact(X), to_exact(y)).trace(to_exact(Xq))).all())


def unit_ball(X, y, Xq, denominator: int = 16):
    """The prompt with X scaled into the unit ball and rounded toward zero to multiples of
    ``1/denominator`` (so that no norm grows: ``|x_i| <= 1`` still holds), for constructions whose
    domain assumes it."""
    s = 1.01 * np.linalg.norm(X, axis=-1).max()
    return np.trunc(X / s * denominator) / denominator, y, Xq
