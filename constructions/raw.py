"""Akyurek et al. 2022's RAW primitives on a softmax / GeLU / LayerNorm transformer.

Notation: a prompt is a sequence of T tokens (Akyurek's columns); D residual width;
slots name the hidden rows.  Every primitive is one block of the toolkit's
transformer (:mod:`constructions.transformer`) and *approximate*; its knob lives
in :class:`RawConfig` (claims.md sec. 2.2, App. C):

================  ==========================================  ================================  ===========
primitive         mechanism                                   error (predicted)                 knob
================  ==========================================  ================================  ===========
``mov``           causal softmax attention, position codes;   ``<= 2 T e^{-N/2} |v|``           ``attn_gap`` N
                  a null logit N/2 ("attend to nothing")
``aff``           GeLU pass-through ``GeLU(P + v) - P``       ``<= (P + |v|) Phi(-(P - |v|))``  ``passthrough`` P
``mul``           ``sqrt(pi/2)/s^2 [GeLU(s(x+y)) - GeLU(sx)   ``s^2 |(x+y)^4 - x^4 - y^4|/12``  ``mul_scale`` s
                  - GeLU(sy)]`` (Lemma 4)                     + O(s^4) per product
``div``           LayerNorm with padding ``+-M c`` and a      relative                          ``ln_pad`` M
                  balance row (mean 0): ``LN(h)_y ~ y/(M|c|)   ``1 - (1 + Q/(2 M^2 c^2))^{-1/2}``
                  sqrt(D/2)`` (Lemma 8; divides by ``|c|``)   (Q: the other rows' square sum)
================  ==========================================  ================================  ===========

Conventions: ``mov``, ``mul`` and ``div`` *add* into their destination slots, which
must be zero scratch (``div`` reads LayerNorm(h), so it cannot clear them);
``aff`` *overwrites* its destination.  ``div`` leaves its padding rows set.  A
block's attention or MLP that a primitive does not use is absent.  Numeric limits
(measured in ``docs/akyurek.md``): in float32 ``mul`` stops improving near
``s ~ eps^{1/3}`` (round-off ``eps/s`` meets ``s^2``), ``aff``'s pass-through loses
``eps P``, and ``div`` loses ``eps M |c|/|y|`` to the LayerNorm mean.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .linear_gd import _positive_int, _real
from .transformer import AttentionSpec, BlockSpec, MLPSpec


@dataclass(frozen=True)
class RawConfig:
    """The approximation knobs of every primitive, in one place."""

    attn_gap: float = 80.0  # N: mov's logit gap (e^{-N/2} leaks)
    passthrough: float = 10.0  # P: aff's GeLU pass-through offset
    mul_scale: float = 1e-3  # s: mul's GeLU input scale
    ln_pad: float = 1e4  # M: div's LayerNorm padding


def _gelu_mlp(lay: ResidualLayout, units: list[tuple[dict, float, dict]], bias_out: dict | None = None,
              layernorm: bool = False) -> MLPSpec:
    """A GeLU MLP from units ``(reads {slot: vector}, bias, writes {slot: vector})``."""
    F = len(units)
    W_in, W_out = np.zeros((lay.width, F)), np.zeros((F, lay.width))
    b_in = np.zeros(F)
    for f, (reads, b, writes) in enumerate(units):
        for s, v in reads.items():
            W_in[lay[s].index, f] += v
        for s, v in writes.items():
            W_out[f, lay[s].index] += v
        b_in[f] = b
    b_out = np.zeros(lay.width)
    for s, v in (bias_out or {}).items():
        b_out[lay[s].index] += v
    return MLPSpec("gelu", W_in, b_in, W_out, b_out, layernorm=layernorm)


def _e(size: int, i: int) -> np.ndarray:
    return np.eye(size)[i]


def mov(lay: ResidualLayout, src: str, dst: str, s: int, t: int, cfg: RawConfig) -> BlockSpec:
    """Copy slot ``src`` of token s into slot ``dst`` of token t (t >= s): one causal softmax
    head; token t's query is ``N e_s`` on the position code, every other token attends to
    nothing (null logit N/2)."""
    T = lay["pos"].size
    if not 0 <= s <= t < T:
        raise ConstructionError(f"mov needs 0 <= s <= t < T={T}, got s={s}, t={t}")
    Q = np.zeros((T, T))
    Q[t, s] = cfg.attn_gap
    size = lay[src].size
    head = dict(W_Q=lay.read({"pos": Q}, T), W_K=lay.read({"pos": np.eye(T)}, T),
                W_V=lay.read({src: np.eye(size)}, size), W_O=lay.write({dst: np.eye(size)}, size))
    return BlockSpec(AttentionSpec.from_heads("softmax", [head], causal=True, null_score=cfg.attn_gap / 2))


def aff(lay: ResidualLayout, reads: dict, bias, dst: str, cfg: RawConfig) -> BlockSpec:
    """Every token: ``dst <- sum_s reads[s]^T h[s] + bias`` (``reads[s]`` is ``[size_s, size_dst]``),
    overwriting dst, through GeLU pass-through units ``GeLU(P + v) - P``."""
    k = lay[dst].size
    bias = np.broadcast_to(np.asarray(bias, dtype=np.float64), (k,))
    units = []
    for j in range(k):
        r = {s: np.asarray(M, dtype=np.float64)[:, j] for s, M in reads.items()}
        r[dst] = r.get(dst, 0) - _e(k, j)  # overwrite: subtract the old value
        units.append((r, cfg.passthrough + bias[j], {dst: _e(k, j)}))
    return BlockSpec(None, _gelu_mlp(lay, units, {dst: -cfg.passthrough * np.ones(k)}))


def mul(lay: ResidualLayout, A: str, B: str, dst: str, a: int, b: int, c: int, cfg: RawConfig) -> BlockSpec:
    """Every token: ``dst += A B`` with slot A an ``a x b`` and slot B a ``b x c`` matrix (row-major),
    each product ``x y ~ sqrt(pi/2)/s^2 [GeLU(s(x+y)) - GeLU(sx) - GeLU(sy)]`` (Lemma 4)."""
    if lay[A].size != a * b or lay[B].size != b * c or lay[dst].size != a * c:
        raise ConstructionError(f"mul: slot sizes must be a*b={a * b}, b*c={b * c}, a*c={a * c}")
    s, kappa = cfg.mul_scale, math.sqrt(math.pi / 2) / cfg.mul_scale**2
    units = []
    for i in range(a):
        for k in range(c):
            out = {dst: _e(a * c, i * c + k)}
            for j in range(b):
                xa, yb = s * _e(a * b, i * b + j), s * _e(b * c, j * c + k)
                reads = {A: xa, B: yb} if A != B else {A: xa + yb}
                units += [(reads, 0.0, {dst: kappa * out[dst]}), ({A: xa}, 0.0, {dst: -kappa * out[dst]}),
                          ({B: yb}, 0.0, {dst: -kappa * out[dst]})]
    return BlockSpec(None, _gelu_mlp(lay, units))


def div(lay: ResidualLayout, num: str, den: tuple[str, int], dst: str, cfg: RawConfig) -> BlockSpec:
    """Every token: ``dst += h[num] / |h[den]|`` (Lemma 8: note the absolute value).  The attention
    (each token attends to itself) writes ``+-M c`` into the slots ``pad`` (size 2) and, into
    ``bal``, minus the sum of every other row, so that the token's mean is 0 and its standard
    deviation ``~ M|c| sqrt(2/D)``; the LayerNorm MLP scales ``LN(h)[num]`` back by
    ``M sqrt(2/D)`` through pass-through units."""
    T, D, k = lay["pos"].size, lay.width, lay[num].size
    dslot, di = den
    V = np.zeros((D, 3))
    V[lay[dslot].start + di, 0], V[lay[dslot].start + di, 1] = cfg.ln_pad, -cfg.ln_pad
    others = [s for s in lay.slots if s.name not in ("pad", "bal")]
    for s in others:
        V[s.index, 2] = -1.0
    head = dict(W_Q=lay.read({"pos": cfg.attn_gap * np.eye(T)}, T), W_K=lay.read({"pos": np.eye(T)}, T),
                W_V=V, W_O=lay.write({"pad": np.eye(3, 2), "bal": np.eye(3)[:, 2:]}, 3))
    attn = AttentionSpec.from_heads("softmax", [head], causal=True, null_score=cfg.attn_gap / 2)
    g = cfg.ln_pad * math.sqrt(2.0 / D)
    units = [({num: _e(k, j)}, cfg.passthrough, {dst: g * _e(k, j)}) for j in range(k)]
    mlp = _gelu_mlp(lay, units, {dst: -g * cfg.passthrough * np.ones(k)}, layernorm=True)
    return BlockSpec(attn, mlp)


# -- Theorem 1: one GD step on one exemplar ------------------------------------------------
class InterleavedConstruction(Construction):
    """A construction on Akyurek's interleaved causal prompt ``[x_1, y_1, ..., x_n, y_n, x_q]``:
    one token per x and per y, a one-hot position code in slot ``pos``; the prediction is
    read from the last token."""

    def embed(self, p):
        import torch

        B, n, d = p.X.shape
        T = 2 * n + p.Xq.shape[1]
        if T != self.layout["pos"].size:
            raise ConstructionError(f"{self.name} was built for {self.layout['pos'].size} tokens "
                                    f"(n={self.params.get('n', 1)} examples, 1 query), got {T}")
        h = torch.zeros(B, T, self.layout.width, dtype=self.dtype, device=self.device)
        x, y, pos = self.layout["x"], self.layout["y"], self.layout["pos"]
        h[:, 0 : 2 * n : 2, x.index] = p.X
        h[:, 1 : 2 * n : 2, y.start] = p.y
        h[:, 2 * n :, x.index] = p.Xq
        h[:, :, pos.index] = torch.eye(T, dtype=self.dtype, device=self.device)
        return h

    def n_keys(self, n: int) -> int:
        return 2 * n  # the query token is the last one


def raw_gd(d: int, w0, lr: float, lam: float = 0.0, config: RawConfig | dict = RawConfig()) -> Construction:
    """One gradient step on one exemplar from Akyurek et al.'s primitives (Thm 1).

    **Theorem** (Akyurek et al. 2022, Thm 1 / App. A, claims.md sec. 2.3).  On the causal
    prompt ``[x_1, y_1, x_2]`` the last token's ``out`` slot approximates ``w'^T x_2`` with
    ``w' = w - 2 lr (x_1 (w^T x_1 - y_1) + lam w)``, the step on ``(w^T x - y)^2 + lam |w|^2``
    from the fixed ``w = w0`` (written by a bias).  This is Akyurek's convention (loss
    without 1/2, hence the 2; claims.md sec. 11.4 notes the appendix's lam vs 2 lam; we use
    the gradient of the stated loss).

    **Chain** (9 primitives, one block each): mov x_1 -> token 1; aff ``p = w^T x_1``; aff
    ``e = p - y``; mul ``g = x_1 e``; aff ``w`` (bias); aff ``r = g + lam w``; aff
    ``w' = w - 2 lr r``; mov w' -> token 2; mul ``out = w'^T x_2``.

    **Resources.**  9 blocks (2 attention-only, 7 MLP-only), 1 head, width ``7d + 7``;
    softmax attention (causal, null logit), GeLU MLPs; Akyurek: constant depth, O(d) width.

    **Exactness.**  Approximate: the error is the two mul layers' ``s^2`` term,
    ``s^2 [2 lr sum_i q4(x_1i, e) x_2i - sum_i q4(w'_i, x_2i)]/12 + O(s^4)`` with
    ``q4(x, y) = (x+y)^4 - x^4 - y^4`` (checked on this constant and rate by
    ``akyurek22-thm1``); mov and aff add ``e^{-N/2}`` and ``Phi(-P)`` terms.

    **Domain.**  One exemplar (n = 1) and one query; every value an aff passes through
    must satisfy ``|v| < P`` (``config.passthrough``); in float32 use ``s ~ 1e-3``: the
    round-off ``eps/s`` dominates below (``docs/akyurek.md``).
    """
    d = _positive_int(d, "d")
    lr, lam = _real(lr, "lr"), _real(lam, "lam", strict=False)
    w0 = np.asarray(w0, dtype=np.float64)
    if w0.shape != (d,) or not np.isfinite(w0).all():
        raise ConstructionError(f"w0 must be a finite vector of shape ({d},), got {w0.shape}")
    cfg = RawConfig(**config) if isinstance(config, dict) else config  # a dict: from saved params
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("pos", 3, "zero"), ("x1", d, "zero"), ("p", 1, "zero"),
                             ("e", 1, "zero"), ("g", d, "zero"), ("w", d, "zero"), ("r", d, "zero"),
                             ("wn", d, "zero"), ("wq", d, "zero"), ("out", 1, "zero")], Readout("out"))
    I = np.eye(d)
    blocks = [
        mov(lay, "x", "x1", 0, 1, cfg),
        aff(lay, {"x1": w0[:, None]}, 0.0, "p", cfg),
        aff(lay, {"p": [[1.0]], "y": [[-1.0]]}, 0.0, "e", cfg),
        mul(lay, "x1", "e", "g", d, 1, 1, cfg),
        aff(lay, {}, w0, "w", cfg),
        aff(lay, {"g": I, "w": lam * I}, 0.0, "r", cfg),
        aff(lay, {"w": I, "r": -2 * lr * I}, 0.0, "wn", cfg),
        mov(lay, "wn", "wq", 1, 2, cfg),
        mul(lay, "wq", "x", "out", 1, d, 1, cfg),
    ]

    def split(n: int) -> int:
        if n != 1:
            raise ConstructionError(f"raw_gd takes one exemplar (n=1), got n={n}")
        return n

    return InterleavedConstruction("raw_gd", dict(d=d, w0=w0.tolist(), lr=lr, lam=lam, config=dict(cfg.__dict__)),
                                   blocks, lay, d, mask_query=False, split=split, step_blocks=9)
