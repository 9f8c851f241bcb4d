"""Checks of Akyurek et al.'s RAW primitives and Thm 1 (:mod:`constructions.raw`).

Each check returns a :class:`verify.tolerance.Comparison`: measured error vs the
predicted bound of the primitive (module table of :mod:`constructions.raw`) plus
float64 round-off.  Shapes: one prompt per batch item; T tokens, D width.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from constructions.layout import Readout, ResidualLayout
from constructions.raw import RawConfig, aff, div, mov, mul, raw_gd
from constructions.transformer import Transformer

from .tolerance import C, Comparison, eps

U = C * eps(torch.float64)


def _layout(k: int) -> ResidualLayout:
    return ResidualLayout.of([("a", k, "zero"), ("b", k, "zero"), ("c", 1, "zero"), ("dst", k, "zero"),
                              ("pos", 3, "zero"), ("pad", 2, "zero"), ("bal", 1, "zero")], Readout("c"))


def primitive_errors(h: np.ndarray, cfg: RawConfig, k: int, dtype=torch.float64) -> dict:
    """``{name: (error [B], bound [B])}`` for mov, aff, mul and div on streams ``h [B, 3, D]``
    whose slots a, b (size k) and c (size 1) hold the operands (dst, pad, bal zero).  With
    ``dtype=torch.float32`` the blocks run in float32 on the float32-rounded stream (the
    errors are against exact results on that stream; the bounds stay the float64 ones)."""
    h = h.astype(np.float32).astype(np.float64) if dtype == torch.float32 else h

    def _run(block, h):
        with torch.no_grad():
            return Transformer([block]).to(dtype)(torch.from_numpy(h).to(dtype), h.shape[1]).double().numpy()

    lay = _layout(k)
    a, b, c, dst = (lay[s].index for s in ("a", "b", "c", "dst"))
    out = {}
    # mov: token 0's a -> token 2's dst; tokens 0, 1 must stay 0
    r = _run(mov(lay, "a", "dst", 0, 2, cfg), h)
    want = np.zeros_like(r[:, :, dst])
    want[:, 2] = h[:, 0, a]
    vmax = np.abs(h[:, :, a]).max((1, 2))
    out["mov"] = (np.abs(r[:, :, dst] - want).max((1, 2)), 2 * 3 * math.exp(-cfg.attn_gap / 2) * vmax + U * vmax)
    # aff: dst <- 2 a - b + 0.5 (every token)
    r = _run(aff(lay, {"a": 2 * np.eye(k), "b": -np.eye(k)}, 0.5, "dst", cfg), h)
    v = 2 * h[:, :, a] - h[:, :, b] + 0.5
    P, vm = cfg.passthrough, np.abs(v).max((1, 2))
    phi = np.array([0.5 * math.erfc((P - x) / math.sqrt(2)) for x in vm])
    out["aff"] = (np.abs(r[:, :, dst] - v).max((1, 2)), (P + vm) * phi + U * (P + vm))
    # mul: dst += a (k x 1) * c (1 x 1)
    r = _run(mul(lay, "a", "c", "dst", k, 1, 1, cfg), h)
    x, y = h[:, :, a], h[:, :, c]
    s = cfg.mul_scale
    q4, q6 = (x + y) ** 4 - x**4 - y**4, (x + y) ** 6 - x**6 - y**6
    bound = s**2 * np.abs(q4) / 12 + s**4 * (np.abs(q6) / 80 + 1) + U * (1 + (np.abs(x) + np.abs(y)) ** 2) / s
    out["mul"] = (np.abs(r[:, :, dst] - x * y).max((1, 2)), (bound - 0).max((1, 2)))
    # div: dst += a / |c|
    r = _run(div(lay, "a", ("c", 0), "dst", cfg), h)
    cc = np.abs(h[:, :, c])
    Q = (h**2).sum(-1) + h.sum(-1) ** 2  # the other rows' squares plus the balance row's
    pred = 1 - 1 / np.sqrt(1 + Q / (2 * cfg.ln_pad**2 * cc[..., 0] ** 2))
    ratio = np.abs(h[:, :, a]) / cc
    g = cfg.ln_pad * math.sqrt(2.0 / lay.width)  # the MLP's output scale: pass-through errors grow by g
    ln_max = ratio.max(-1) / g * 1.01  # |LN(h)[a]| <= |a| / (|c| g), up to the padding error
    passthru = g * (P + ln_max) * 0.5 * np.vectorize(math.erfc)((P - ln_max) / math.sqrt(2))
    # the self-attention's softmax leak e^{-N/2}: on the pads (relative) and on the balance row,
    # which then leaves a mean of ~ e^{-N/2} sum(h)/D that LayerNorm subtracts (output / |c|)
    leak = (2 * 3 * math.exp(-cfg.attn_gap / 2) * (ratio.max(-1) + np.abs(h.sum(-1)) / cc[..., 0])).max(-1)
    out["div"] = (np.abs(r[:, :, dst] - h[:, :, a] / cc).max((1, 2)),
                  (ratio.max(-1) * pred * 1.01 + passthru
                   + U * (1 + ratio.max(-1)) * cfg.ln_pad * cfg.passthrough).max(-1) + leak)
    return out


def check_primitives(prompt, knobs) -> Comparison:
    """``akyurek22-primitives``: every primitive within its predicted error on operands drawn
    from the prompt (|operands| <= 1, |c| >= 0.1), at knobs ``N = 20 + 40 u``,
    ``P = 4 + 6 u``, ``s = 10^(-1 - 2u)``, ``M = 10^(2 + 2u)`` (u from the knobs' seed)."""
    rng = np.random.default_rng(knobs.seed)
    u = rng.uniform()
    cfg = RawConfig(attn_gap=20 + 40 * u, passthrough=4 + 6 * u, mul_scale=10 ** (-1 - 2 * u), ln_pad=10 ** (2 + 2 * u))
    k = prompt.X.shape[-1]
    B = prompt.X.shape[0]
    lay = _layout(k)
    h = np.zeros((B, 3, lay.width))
    h[:, :, lay["a"].index] = np.tanh(prompt.X[:, :3] if prompt.X.shape[1] >= 3 else rng.normal(size=(B, 3, k)))
    h[:, :, lay["b"].index] = np.tanh(rng.normal(size=(B, 3, k)))
    h[:, :, lay["c"].start] = rng.choice([-1, 1], size=(B, 3)) * rng.uniform(0.1, 1.0, size=(B, 3))
    h[:, :, lay["pos"].index] = np.eye(3)
    errs = primitive_errors(h, cfg, k)
    m = np.stack([e for e, _ in errs.values()], -1)[None]
    t = np.stack([b for _, b in errs.values()], -1)[None]
    return Comparison(m, np.zeros_like(m), t, t)


def _q(x, y, k):
    return (x + y) ** k - x**k - y**k


def thm1_errors(x1, y1, x2, w0, lr, lam, scales):
    """Signed errors ``raw_gd(...) - w'^T x_2`` for each mul scale s (``[len(scales), B]``), and the
    predicted leading term ``s^2 K`` of each: mul computes ``x y - s^2 q4(x, y)/12 + O(s^4)``
    (``q4 = (x+y)^4 - x^4 - y^4``), so ``g = x_1 e`` is off by ``-s^2 q4(x_1, e)/12``, which the
    step ``w' = w - 2 lr (g + lam w)`` turns into ``+2 lr s^2 q4/12``, and the last mul adds
    ``-s^2 sum_i q4(w'_i, x_2i)/12``."""
    e = (w0 * x1).sum(-1, keepdims=True) - y1[:, None]
    wn = w0 - 2 * lr * (x1 * e + lam * w0)
    ref = (wn * x2).sum(-1)
    K = (2 * lr * (_q(x1, e, 4) * x2).sum(-1) - _q(wn, x2, 4).sum(-1)) / 12
    errs, preds = [], []
    for s in scales:
        errs.append(np.array([raw_gd(x1.shape[-1], w, lr, lam, RawConfig(mul_scale=s)).predict(
            a[None], b[None], q[None])[0] - r for a, b, q, w, r in zip(x1, y1, x2, w0, ref)]))
        preds.append(s**2 * K)
    return np.stack(errs), np.stack(preds)


def check_thm1(prompt, knobs) -> Comparison:
    """``akyurek22-thm1``: the chain's error is its predicted ``O(s^2)`` term: for the mul scale
    ``s = 0.1, 0.01, 0.001``, ``|error - s^2 K| <= s^4 K6 + round-off`` with K from
    :func:`thm1_errors` and ``K6 = (1 + |x_1| + |w| + |e| + |x_2|)^6`` (the next order)."""
    rng = np.random.default_rng(knobs.seed)
    x1 = np.tanh(prompt.X[:, 0, :]) * 0.5
    x2 = np.tanh(prompt.Xq[:, 0]) * 0.5
    y1 = np.tanh(prompt.y[:, 0])
    w0 = rng.normal(size=x1.shape) / math.sqrt(x1.shape[-1])
    lr, lam = 0.05 + 0.2 * rng.uniform(), 0.1 * rng.uniform()
    scales = np.array([1e-1, 1e-2, 1e-3])
    err, pred = thm1_errors(x1, y1, x2, w0, lr, lam, scales)
    m = np.abs(err - pred)[None]
    t = thm1_remainder(x1, y1, x2, w0, scales)[None]
    return Comparison(m, np.zeros_like(m), t, t)


def thm1_remainder(x1, y1, x2, w0, scales) -> np.ndarray:
    """``[len(scales), B]`` bound on ``|error - s^2 K|``: the next order ``s^4 K6`` with
    ``K6 = (1 + |x_1| + |w| + |e| + |x_2|)^6``, plus the mul layers' round-off ``~ eps/s``."""
    scales = np.asarray(scales, dtype=np.float64)
    nrm = lambda a: np.linalg.norm(a, axis=-1)  # noqa: E731
    K6 = (1 + nrm(x1) + nrm(w0) + np.abs((w0 * x1).sum(-1) - y1) + nrm(x2)) ** 6
    return scales[:, None] ** 4 * K6 + U * 100 / scales[:, None]
