"""Akyurek et al. 2022's RAW primitives on a softmax / GeLU / LayerNorm transformer.

Notation: a prompt is a sequence of T tokens (Akyurek's columns); D residual width;
slots name the hidden rows.  Every primitive is one block of the toolkit's
transformer (:mod:`constructions.transformer`) and *approximate*; its knob lives
in :class:`RawConfig` (Akyurek et al. 2022, Lemma 1 and App. C):

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
import torch

from verify import baselines
from verify.claims import Claim, Proof
from verify.reference import LMS
from verify.tolerance import C, Comparison, eps

from . import parts
from .construction import Construction
from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .registry import Bench, Paper, Result, register, register_paper
from .spec import AttentionSpec, BlockSpec
from .transformer import Transformer


@dataclass(frozen=True)
class RawConfig:
    """The approximation knobs of every primitive, in one place."""

    attn_gap: float = 80.0  # N: mov's logit gap (e^{-N/2} leaks)
    passthrough: float = 10.0  # P: aff's GeLU pass-through offset
    mul_scale: float = 1e-3  # s: mul's GeLU input scale
    ln_pad: float = 1e4  # M: div's LayerNorm padding

    @classmethod
    def of(cls, config) -> "RawConfig":
        """A validated config from a ``RawConfig`` or a dict of its fields (e.g. saved params):
        every knob a finite positive real number."""
        if isinstance(config, cls):
            config = dict(config.__dict__)
        if not isinstance(config, dict):
            raise ConstructionError(f"config must be a RawConfig or a dict of its fields, got {type(config).__name__}")
        unknown = set(config) - set(cls.__dataclass_fields__)
        if unknown:
            raise ConstructionError(f"config has unknown field(s) {sorted(map(str, unknown))}; "
                                    f"known: {sorted(cls.__dataclass_fields__)}")
        return cls(**{k: parts.real(v, f"config.{k}") for k, v in config.items()})


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


def mov_pattern(N: float, s: int, t: int, T: int) -> np.ndarray:
    """``[T, T]``: the attention weights :func:`mov` is built to have (without the null column):
    causal softmax of score N on key s for query t and 0 elsewhere, with the null logit N/2."""
    P = np.zeros((T, T))
    for q in range(T):
        z = np.array([N if (q == t and j == s) else 0.0 for j in range(q + 1)] + [N / 2])
        e = np.exp(z - z.max())
        P[q, : q + 1] = (e / e.sum())[:-1]
    return P


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
    return BlockSpec(None, parts.units_mlp(lay, "gelu", units, {dst: -cfg.passthrough * np.ones(k)}))


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
    return BlockSpec(None, parts.units_mlp(lay, "gelu", units))


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
    mlp = parts.units_mlp(lay, "gelu", units, {dst: -g * cfg.passthrough * np.ones(k)}, layernorm=True)
    return BlockSpec(attn, mlp)


# -- Theorem 1: one GD step on one exemplar ------------------------------------------------
class InterleavedConstruction(Construction):
    """A construction on Akyurek's interleaved causal prompt ``[x_1, y_1, ..., x_n, y_n, x_q]``:
    one token per x and per y, a one-hot position code in slot ``pos``; the prediction is
    read from the last token."""

    def embed(self, p):
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

    **Theorem** (Akyurek et al. 2022, Thm 1 / App. A).  On the causal
    prompt ``[x_1, y_1, x_2]`` the last token's ``out`` slot approximates ``w'^T x_2`` with
    ``w' = w - 2 lr (x_1 (w^T x_1 - y_1) + lam w)``, the step on ``(w^T x - y)^2 + lam |w|^2``
    from the fixed ``w = w0`` (written by a bias).  This is Akyurek's convention (loss
    without 1/2, hence the 2; the appendix writes lam in one place and 2 lam in another,
    docs/pitfalls.md #4; we use the gradient of the stated loss).

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
    (:func:`thm1_values`) must satisfy ``|v| <= P/2`` (``config.passthrough``; checked at
    prediction time by :func:`passthrough_check`: there the pass-through error is at most
    ``1.5 P Phi(-P/2)``); the knobs of ``config`` are finite positive reals; in float32 use
    ``s ~ 1e-3``: the round-off ``eps/s`` dominates below (``docs/akyurek.md``).
    """
    d = parts.positive_int(d, "d")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    parts.budget("raw_gd", layers=9, width=7 * d + 7, mlp=6 * d + 6)
    w0 = parts.real_array(w0, "w0", (d,))
    cfg = RawConfig.of(config)
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("pos", 3, "zero"), ("x1", d, "zero"), ("p", 1, "zero"),
                             ("e", 1, "zero"), ("g", d, "zero"), ("w", d, "zero"), ("r", d, "zero"),
                             ("wn", d, "zero"), ("wq", d, "zero"), ("out", 1, "zero")], Readout("out"))
    I = np.eye(d)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow here is refused as non-finite weights
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

    split = parts.fixed_examples(1, "raw_gd", "it takes one exemplar (Akyurek's Thm 1)")
    return InterleavedConstruction("raw_gd", dict(d=d, w0=w0.tolist(), lr=lr, lam=lam, config=dict(cfg.__dict__)),
                                   blocks, lay, d, mask_query=False, split=split, step_blocks=9,
                                   domain=passthrough_check(w0, lr, lam, cfg.passthrough))


def thm1_values(X, y, w0, lr: float, lam: float) -> dict:
    """The values raw_gd's aff layers pass through, per prompt (float64 torch): the inputs
    ``x_1, y_1``, ``p = w0.x_1``, ``e = p - y_1``, ``g = e x_1``, ``w0``, ``r = g + lam w0`` and
    ``w' = w0 - 2 lr r``; each entry ``{name: [B]}`` is the largest magnitude."""
    x1, y1 = X[:, 0], y[:, 0]
    w = torch.as_tensor(w0, dtype=X.dtype, device=X.device)
    p = x1 @ w
    e = p - y1
    g = e[:, None] * x1
    r = g + lam * w
    wn = w - 2 * lr * r
    big = lambda t: t.abs().reshape(t.shape[0], -1).amax(-1)  # noqa: E731
    return dict(x1=big(x1), y1=y1.abs(), p=p.abs(), e=e.abs(), g=big(g), w0=big(w.expand_as(x1)), r=big(r), wn=big(wn))


def passthrough_check(w0, lr: float, lam: float, P: float):
    """raw_gd's domain: every value an aff layer passes through has ``|v| <= P/2``, where the
    pass-through error ``(P + |v|) Phi(-(P - |v|))`` is at most ``1.5 P Phi(-P/2)`` (4e-6 at
    the default P = 10); beyond ``P`` the GeLU no longer passes the value at all."""
    def check(X, y, Xq):
        for name, v in thm1_values(X, y, w0, lr, lam).items():
            b = int(v.argmax())
            if float(v[b]) > P / 2:
                raise ConstructionError(
                    f"prompt {b}: the value {name} = {float(v[b]):.3g} passed through an aff layer exceeds "
                    f"passthrough/2 = {P / 2:.3g}, where the GeLU pass-through stops being accurate; rescale the "
                    f"prompt (or w0, lr), or rebuild with config passthrough >= {2 * float(v[b]):.3g}")

    return check


# -- claims: each primitive within its predicted error, and Thm 1's O(s^2) term ---------------------------
U = C * eps(torch.float64)


def roundoff_gain(config) -> float:
    """How much the primitives amplify a relative round-off in their inputs, the factor of the
    round-off terms below: ``1/s`` (mul divides GeLU differences of size s by s^2) plus ``M`` (div's
    LayerNorm pad).  ``config``: a :class:`RawConfig` or its dict (a construction's ``params["config"]``).
    Two evaluations of the same raw construction in different summation orders (e.g. the
    TransformerLens export) differ by up to about ``C eps (L + 1)(n + d)`` times this."""
    cfg = config if isinstance(config, RawConfig) else RawConfig(**config)
    return 1 / cfg.mul_scale + cfg.ln_pad


def primitive_layout(k: int) -> ResidualLayout:
    """The stream of the primitive checks: operand slots a, b (size k) and c, scratch dst, pads."""
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

    lay = primitive_layout(k)
    a, b, c, dst = (lay[s].index for s in ("a", "b", "c", "dst"))
    out = {}
    # mov: token 0's a -> token 2's dst; tokens 0, 1 must stay 0
    r = _run(mov(lay, "a", "dst", 0, 2, cfg), h)
    want = np.zeros_like(r[:, :, dst])
    want[:, 2] = h[:, 0, a]
    vmax = np.abs(h[:, :, a]).max((1, 2))
    out["mov"] = (np.abs(r[:, :, dst] - want).max((1, 2)), 2 * 3 * math.exp(-cfg.attn_gap / 2) * vmax + U * vmax)
    # and exactly the designed softmax: query t = 2 scores N on key s = 0 and 0 on keys 1, 2; the
    # other queries 0 on their keys j <= q; the null logit N/2 (so the gap term is the one predicted)
    out["mov-pattern"] = (np.abs(r[:, :, dst] - mov_pattern(cfg.attn_gap, 0, 2, 3) @ h[:, :, a]).max((1, 2)), 4 * U * vmax)
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
    lay = primitive_layout(k)
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


def _scales(scales, B) -> np.ndarray:
    """Mul scales as ``[k, B]``: one row per scale, shared (``[k]``) or per prompt (``[k, B]``)."""
    scales = np.asarray(scales, dtype=np.float64)
    return np.broadcast_to(scales[:, None] if scales.ndim == 1 else scales, (scales.shape[0], B))


def thm1_leading(x1, y1, x2, w0, lr, lam):
    """``(w'^T x_2, K, K4)`` ``[B]`` each: the exact step's prediction and the constants of the
    error's ``s^2`` and ``s^4`` terms.  mul computes ``x y - s^2 q4(x, y)/12 + s^4 q6(x, y)/80 +
    O(s^6)`` (``qk = (x+y)^k - x^k - y^k``; GeLU's Taylor series ``z/2 + (z^2 - z^4/6 + z^6/40 -
    ...)/sqrt(2 pi)``), so ``g = x_1 e`` is off by ``g_err = -s^2 q4(x_1, e)/12 + s^4 q6(x_1, e)/80``,
    which the step ``w' = w - 2 lr (g + lam w)`` turns into ``delta = -2 lr g_err``; the last mul
    of ``(w' + delta, x_2)`` adds ``-s^2 sum_i q4(w'_i + delta_i, x_2i)/12 + s^4 sum_i
    q6(w'_i, x_2i)/80``, and ``q4(w' + delta, x) = q4(w', x) + delta (4(w' + x)^3 - 4w'^3) + O(delta^2)``."""
    e = (w0 * x1).sum(-1, keepdims=True) - y1[:, None]
    wn = w0 - 2 * lr * (x1 * e + lam * w0)
    K = (2 * lr * (_q(x1, e, 4) * x2).sum(-1) - _q(wn, x2, 4).sum(-1)) / 12
    dq4 = 4 * (wn + x2) ** 3 - 4 * wn**3
    K4 = (-2 * lr * (_q(x1, e, 6) * x2).sum(-1) + _q(wn, x2, 6).sum(-1)) / 80 \
        - (dq4 * 2 * lr * _q(x1, e, 4)).sum(-1) / 144
    return (wn * x2).sum(-1), K, K4


def thm1_errors(x1, y1, x2, w0, lr, lam, scales):
    """Signed errors ``raw_gd(...) - w'^T x_2`` for each mul scale s (``[k, B]``; ``scales`` ``[k]``
    or per prompt ``[k, B]``), and the predicted leading term ``s^2 K`` of each
    (:func:`thm1_leading`)."""
    ref, K, K4 = thm1_leading(x1, y1, x2, w0, lr, lam)
    S = _scales(scales, len(ref))
    errs = np.array([[raw_gd(x1.shape[-1], w, lr, lam, RawConfig(mul_scale=float(s))).predict(
        a[None], b[None], q[None])[0] - r for a, b, q, w, r, s in zip(x1, y1, x2, w0, ref, row)] for row in S])
    return errs, S**2 * K + S**4 * K4


#: the rate ``akyurek22-thm1`` states: each decade of the mul scale cuts the error by this factor
THM1_DECADE = 10.0**1.9
#: the window where the rate is measurable: the remainder at most this share of the s^2 term
THM1_DOMINANCE = 0.1


def thm1_window(x1, y1, x2, w0, lr, lam) -> np.ndarray:
    """Per prompt, the largest mul scale s on the grid ``10^(-1 - k/4)`` at which both s and s/10
    keep everything but the s^2 term, ``|s^4 K4| + remainder`` (:func:`thm1_remainder`), below
    ``THM1_DOMINANCE * s^2 |K|``: there the error is its s^2 term within 10%, and one decade must
    cut it by ``>= 100 * 0.9/1.1 = 10^1.91 > THM1_DECADE``; NaN where no grid point does."""
    _, K, K4 = thm1_leading(x1, y1, x2, w0, lr, lam)
    out = np.full(len(K), np.nan)
    for s in 10.0 ** (-1 - np.arange(17) / 4):
        S = np.array([s, s / 10])[:, None]
        rest = S**4 * np.abs(K4) + thm1_remainder(x1, y1, x2, w0, [s, s / 10])
        ok = (rest <= THM1_DOMINANCE * S**2 * np.abs(K)).all(0)
        out = np.where(np.isnan(out) & ok, s, out)
    return out


def check_thm1(prompt, knobs) -> Comparison:
    """``akyurek22-thm1``: the chain's error is its predicted ``O(s^2)`` term, and one decade of s
    cuts it by ``>= 10^1.9``, measured where the s^2 term dominates: per prompt at the window
    scale s of :func:`thm1_window` and at s/10, ``|error - s^2 K - s^4 K4| <= s^6 K8 + round-off``
    (:func:`thm1_remainder`), and ``|error(s)| / |error(s/10)| >= 10^1.9``.  The step's ``w``
    is redrawn (at most 20 times) until the prompt has a window; a prompt without one fails."""
    rng = np.random.default_rng(knobs.seed)
    unit = lambda a: a / np.sqrt((a**2).mean(axis=tuple(range(1, a.ndim)), keepdims=True))  # noqa: E731
    x1 = np.tanh(unit(prompt.X)[:, 0, :]) * 0.5  # unit-size inputs: the s^2 term must clear round-off
    x2 = np.tanh(unit(prompt.Xq)[:, 0]) * 0.5
    y1 = np.tanh(unit(prompt.y)[:, 0])
    lr, lam = 0.05 + 0.2 * rng.uniform(), 0.1 * rng.uniform()
    w0 = rng.normal(size=x1.shape) / math.sqrt(x1.shape[-1])
    s = thm1_window(x1, y1, x2, w0, lr, lam)
    for _ in range(20):
        if not np.isnan(s).any():
            break
        redraw = np.isnan(s)
        w0[redraw] = rng.normal(size=(int(redraw.sum()), x1.shape[-1])) / math.sqrt(x1.shape[-1])
        s = thm1_window(x1, y1, x2, w0, lr, lam)
    scales = np.stack([np.nan_to_num(s, nan=0.1), np.nan_to_num(s, nan=0.1) / 10])
    err, pred = thm1_errors(x1, y1, x2, w0, lr, lam, scales)
    rem = thm1_remainder(x1, y1, x2, w0, scales)
    gain = np.abs(err[0]) / np.maximum(np.abs(err[1]), np.finfo(np.float64).tiny)
    rate = np.where(np.isnan(s), np.inf, THM1_DECADE / gain)  # <= 1 iff the decade cuts by >= 10^1.9
    m = np.concatenate([np.abs(err - pred), rate[None]]).T[None]  # [1, B, 3]
    t = np.concatenate([rem, np.ones((1, len(s)))]).T[None]
    return Comparison(m, np.zeros_like(m), t, t)


def thm1_remainder(x1, y1, x2, w0, scales) -> np.ndarray:
    """``[k, B]`` bound on ``|error - s^2 K - s^4 K4|`` (``scales`` ``[k]`` or ``[k, B]``): the next
    order ``s^6 K8`` with ``K8 = (1 + |x_1| + |w| + |e| + |x_2|)^8`` (every s^6 term is a degree-8
    form in these with coefficients below 1), plus the mul layers' round-off ``~ eps/s``."""
    S = _scales(scales, len(x1))
    nrm = lambda a: np.linalg.norm(a, axis=-1)  # noqa: E731
    K8 = (1 + nrm(x1) + nrm(w0) + np.abs((w0 * x1).sum(-1) - y1) + nrm(x2)) ** 8
    return S**6 * K8 + U * 100 / S


# -- Thm 1 chained: one pass of SGD over the n exemplars ---------------------------------------------
def raw_sgd(d: int, n: int, lr: float, lam: float = 0.0, w0=None, config: RawConfig | dict = RawConfig()) -> Construction:
    """One pass of SGD over the n exemplars of a causal prompt, from Akyurek et al.'s primitives.

    **Theorem** (Akyurek et al. 2022, Thm 1 / App. A, applied once per exemplar: the paper's
    remark that the construction repeats to give SGD).  On the causal prompt
    ``[x_1, y_1, ..., x_n, y_n, x_q]``, after step i the query's readout approximates
    ``w_i^T x_q`` with ``w_i = w_{i-1} - 2 lr (x_i (w_{i-1}^T x_i - y_i) + lam w_{i-1})``, the
    SGD iterates of ``(w^T x - y)^2 + lam |w|^2`` from ``w_0 = w0`` (default 0), one exemplar per
    step in prompt order (Akyurek's convention: no 1/2, hence the 2; docs/pitfalls.md #4).

    **Chain.**  Two prefix blocks write ``w0`` into slot ``w`` of token 1 and slot ``wq`` of the
    query (aff on the position code).  Step i (8 primitives, one block each) works at exemplar
    i's y-token ``t = 2i - 1`` (0-based), where every scratch slot is still zero: mov ``x_i`` into
    ``x1``; mul ``p = w^T x1``; aff ``e = p - y``; mul ``g = x1 e``; aff ``dl = -2 lr (g + lam w)``;
    aff ``wn = w + dl``; mov ``wn`` into ``w`` of the next y-token (of the query after the last
    exemplar); mov ``dl`` into the query's ``wq``, so ``wq`` holds the running iterate.  Readout:
    mul ``out = wq^T x_q``, so ``trace()[i-1]`` is the prediction after exemplar i.  The layers
    that act on every token leave garbage at the tokens already processed; nothing reads it
    but mov's ``e^{-N/2}`` leak, which the claim bounds by the stream's largest value.

    **Resources.**  ``8n + 3`` blocks (3n attention-only mov blocks, the rest GeLU MLPs),
    1 head, width ``7d + 2n + 5``; softmax attention (causal, null logit), GeLU MLPs.  Akyurek: a
    constant number of layers per step, O(d) width (ours adds the 2n + 1 position code).

    **Exactness.**  Approximate.  Each step adds the two mul layers' ``s^2`` error, which the
    following steps carry forward linearly: the prediction after step i is off by ``s^2 K_i +
    O(s^4)`` with ``K_i`` the accumulated first-order term (:func:`sgd_pass_leading`);
    ``akyurek22-sgd-pass`` checks it per step against ``s^2 K_i`` within the remainder bound
    (:func:`sgd_pass_remainder`) at s = 0.1, 0.01, 0.001 and the decade rate.

    **Domain.**  Exactly n exemplars and one query; every value an aff layer passes through
    (:func:`sgd_pass_values`) has ``|v| <= P/2`` (``config.passthrough``; checked at prediction
    time); ``w0`` finite of shape ``[d]``; the knobs of ``config`` finite positive reals.
    """
    d, n = parts.positive_int(d, "d"), parts.positive_int(n, "n")
    lr, lam = parts.real(lr, "lr"), parts.real(lam, "lam", strict=False)
    T = 2 * n + 1
    parts.budget("raw_sgd", layers=8 * n + 3, width=7 * d + T + 4, mlp=3 * d)
    w0 = np.zeros(d) if w0 is None else parts.real_array(w0, "w0", (d,))
    cfg = RawConfig.of(config)
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("pos", T, "zero"), ("x1", d, "zero"), ("p", 1, "zero"),
                             ("e", 1, "zero"), ("g", d, "zero"), ("w", d, "zero"), ("dl", d, "zero"),
                             ("wn", d, "zero"), ("wq", d, "zero"), ("out", 1, "zero")], Readout("out"))
    I = np.eye(d)
    at = lambda t: np.outer(_e(T, t), w0)  # noqa: E731  (w0 on token t's position code, 0 elsewhere)
    with np.errstate(over="ignore", invalid="ignore"):  # an overflow here is refused as non-finite weights
        blocks = [aff(lay, {"pos": at(1)}, 0.0, "w", cfg), aff(lay, {"pos": at(T - 1)}, 0.0, "wq", cfg)]
        for i in range(n):
            t = 2 * i + 1
            blocks += [
                mov(lay, "x", "x1", t - 1, t, cfg),
                mul(lay, "w", "x1", "p", 1, d, 1, cfg),
                aff(lay, {"p": [[1.0]], "y": [[-1.0]]}, 0.0, "e", cfg),
                mul(lay, "x1", "e", "g", d, 1, 1, cfg),
                aff(lay, {"g": -2 * lr * I, "w": -2 * lr * lam * I}, 0.0, "dl", cfg),
                aff(lay, {"w": I, "dl": I}, 0.0, "wn", cfg),
                mov(lay, "wn", "w", t, min(t + 2, T - 1), cfg),
                mov(lay, "dl", "wq", t, T - 1, cfg),
            ]
        blocks.append(mul(lay, "wq", "x", "out", 1, d, 1, cfg))

    split = parts.fixed_examples(n, "raw_sgd", f"build raw_sgd with n={n} for a prompt of n exemplars")
    return InterleavedConstruction(
        "raw_sgd", dict(d=d, n=n, lr=lr, lam=lam, w0=w0.tolist(), config=dict(cfg.__dict__)), blocks, lay, d,
        mask_query=False, split=split, step_blocks=8, n_prefix=2, n_readout=1,
        domain=sgd_pass_check(w0, lr, lam, cfg.passthrough))


def sgd_pass(X, y, w0, lr: float, lam: float):
    """The exact SGD pass (Akyurek's step, :class:`verify.reference.LMS` with ``beta = 2 lr``):
    iterates ``[B, n + 1, d]`` (``w_0`` first) and the residuals ``e_i = w_{i-1}^T x_i - y_i`` ``[B, n]``."""
    ref = LMS(2 * lr, lam, w0).fit(X, y)
    return ref.iterates_.transpose(1, 0, 2), ref.residuals_


def sgd_pass_values(X, y, w0, lr: float, lam: float) -> dict:
    """The values raw_sgd's aff layers pass through at the token they serve, per prompt
    (largest magnitude ``[B]``): ``w0``; ``y_i`` (step 0 writes ``e = -y_i`` ahead at every later
    y-token); ``p_i = w_{i-1}^T x_i`` (``e_1`` at the first); the increments ``dl_i``; the
    iterates ``w_i``."""
    ws, es = sgd_pass(X, y, w0, lr, lam)
    big = lambda a: np.abs(a).reshape(a.shape[0], -1).max(-1)  # noqa: E731
    p = es + y
    return dict(w0=big(ws[:, :1]), y=big(y), e1=big(es[:, :1]), p=big(p[:, 1:]) if p.shape[1] > 1 else big(0 * es),
                dl=big(np.diff(ws, axis=1)), w=big(ws[:, 1:]))


def sgd_pass_check(w0, lr: float, lam: float, P: float):
    """raw_sgd's domain: :func:`sgd_pass_values` within ``P/2`` (as :func:`passthrough_check`)."""
    def check(X, y, Xq):
        vals = sgd_pass_values(X.cpu().numpy(), y.cpu().numpy(), w0, lr, lam)
        for name, v in vals.items():
            b = int(v.argmax())
            if float(v[b]) > P / 2:
                raise ConstructionError(
                    f"prompt {b}: the value {name} = {float(v[b]):.3g} passed through an aff layer of raw_sgd "
                    f"exceeds passthrough/2 = {P / 2:.3g}, where the GeLU pass-through stops being accurate; "
                    f"rescale the prompt (or w0, lr), or rebuild with config passthrough >= {2 * float(v[b]):.3g}")

    return check


def sgd_pass_leading(X, y, xq, w0, lr: float, lam: float):
    """``(pred, K)`` ``[B, n]`` each: the exact prediction ``w_i^T x_q`` after step i and the
    constant of its ``s^2`` error.  mul computes ``a b - s^2 q4(a, b)/12 + O(s^4)``, so step i's
    p is off by ``s^2 ep_i``, ``ep_i = -sum_j q4(w_j, x_ij)/12``, its g by ``s^2 eg_i``,
    ``eg_i = -q4(x_i, e_i)/12``; the step is linear in the carried iterate, so the accumulated
    iterate error ``s^2 D_i`` obeys ``D_i = (1 - 2 lr lam) D_{i-1} - 2 lr x_i (x_i^T D_{i-1}) -
    2 lr (x_i ep_i + eg_i)``, and the readout mul adds ``-sum_j q4(w_ij, x_qj)/12``."""
    B, n, d = X.shape
    ws, es = sgd_pass(X, y, w0, lr, lam)
    D = np.zeros((B, d))
    K = []
    for i in range(n):
        x, w = X[:, i], ws[:, i]
        ep = -_q(w, x, 4).sum(-1) / 12
        eg = -_q(x, es[:, i : i + 1], 4) / 12
        D = (1 - 2 * lr * lam) * D - 2 * lr * x * (x * D).sum(-1, keepdims=True) - 2 * lr * (x * ep[:, None] + eg)
        K.append((xq * D).sum(-1) - _q(ws[:, i + 1], xq, 4).sum(-1) / 12)
    return (ws[:, 1:] * xq[:, None]).sum(-1), np.stack(K, 1)


def _mul_terms(a, b):
    """For operand magnitudes ``a, b >= 0`` of one GeLU product: ``(|q4|/12, the s^4 remainder
    coefficient, the Lipschitz constant of q4/12 in a, in b)``.  q4's monomials
    (``4a^3 b + 6a^2 b^2 + 4ab^3``) and dq4/da's are sums of positive ones, so their magnitudes are
    at most their values at ``|a|, |b|``; beyond the ``s^2`` term the product's error is at most
    ``s^4 ((a+b)^6 + a^6 + b^6)/80`` (GeLU's series alternates with falling terms for ``s|z| < sqrt 6``)."""
    t = a + b
    return (t**4 - a**4 - b**4) / 12, (t**6 + a**6 + b**6) / 80, (t**3 - a**3) / 3, (t**3 - b**3) / 3


def sgd_pass_remainder(X, y, xq, w0, lr: float, lam: float, s: float, N: float, V, P: float = 10.0) -> np.ndarray:
    """``[B, n]`` bound on ``|prediction_i - w_i^T x_q - s^2 K_i|`` at mul scale s (:func:`sgd_pass_leading`).

    Tracked in 2-norms along the exact chain: ``A_i`` bounds the computed iterate's error and
    ``r_i`` its deviation from the linear model ``s^2 D_i``.  Both grow by the step's norm
    ``max(|1 - 2 lr lam|, |1 - 2 lr lam - 2 lr |x_i|^2|)`` and take in each product's terms
    (:func:`_mul_terms`, at the exact operands widened by the errors so far): the whole error for
    ``A``; for ``r`` the ``s^4`` remainder plus the ``s^2`` term's change over the operand error.
    Round-off adds ``U (1 + (a+b)^2)/s`` per product and ``U P`` per aff value; the 3n mov
    blocks leak at most ``2 T e^{-N/2} V`` each (V: the stream's largest value).  Infinite
    where a product leaves the series' region (``s (a + b) > 1``)."""
    B, n, d = X.shape
    ws, es = sgd_pass(X, y, w0, lr, lam)
    nrm = lambda v: np.sqrt((v**2).sum(-1))  # noqa: E731
    T = 2 * n + 1
    A, r = np.zeros(B), np.zeros(B)
    inside = np.ones(B, dtype=bool)
    out = []
    for i in range(n + 1):
        aw = np.abs(ws[:, i]) + A[:, None]  # the carried iterate, widened by its error
        if i > 0:  # the readout of the iterate after step i: xq . r, and the readout mul's own terms
            _, r4q, lq, _ = _mul_terms(aw, np.abs(xq))
            inside &= (s * (aw + np.abs(xq))).max(-1) <= 1
            out.append(nrm(xq) * r + (s**4 * r4q + U * (1 + (aw + np.abs(xq)) ** 2) / s).sum(-1) + s**2 * nrm(lq) * A)
        if i == n:
            break
        x = X[:, i]
        xx = np.abs(x)
        q, r4, lw, _ = _mul_terms(aw, xx)
        ro = U * (1 + (aw + xx) ** 2) / s
        inside &= (s * (aw + xx)).max(-1) <= 1
        Ep = (s**2 * q + s**4 * r4 + ro).sum(-1)  # p's whole error
        dp = (s**4 * r4 + ro).sum(-1) + s**2 * nrm(lw) * A  # p's error beyond its s^2 term at the exact values
        de = nrm(x) * A + Ep  # |computed e - e|
        ae = np.abs(es[:, i])[:, None] + de[:, None]
        qg, r4g, _, le = _mul_terms(xx, ae)
        rog = U * (1 + (xx + ae) ** 2) / s
        inside &= (s * (xx + ae)).max(-1) <= 1
        Eg = nrm(s**2 * qg + s**4 * r4g + rog)
        dg = nrm(s**4 * r4g + rog + s**2 * le * de[:, None])
        amp = np.maximum(np.abs(1 - 2 * lr * lam), np.abs(1 - 2 * lr * lam - 2 * lr * nrm(x) ** 2))
        A = amp * A + 2 * lr * (nrm(x) * Ep + Eg) + 3 * U * P * np.sqrt(d)
        r = amp * r + 2 * lr * (nrm(x) * dp + dg) + 3 * U * P * np.sqrt(d)
    bound = np.stack(out, 1) + 3 * n * 2 * T * math.exp(-N / 2) * np.asarray(V)[:, None]
    return np.where(inside[:, None], bound, np.inf)


#: the scales ``akyurek22-sgd-pass`` checks, and the window of its rate check (as akyurek22-thm1's)
SGD_SCALES = (1e-1, 1e-2, 1e-3)


def sgd_pass_errors(X, y, xq, w0, lr: float, lam: float, scales=SGD_SCALES):
    """Per scale s: ``(err [B, n], s^2 K [B, n], remainder [B, n])``, err the per-step readout
    (``trace``) minus the exact ``w_i^T x_q``; the remainder bound uses the stream's largest value."""
    pred, K = sgd_pass_leading(X, y, xq, w0, lr, lam)
    B, n, d = X.shape
    out = []
    for s in scales:
        c = raw_sgd(d, n, lr, lam, w0, RawConfig(mul_scale=float(s)))
        tr = c.trace(X, y, xq[:, None])[..., 0].T  # [B, n]
        V = np.abs(c.residuals(X, y, xq[:, None])).max((0, 2, 3))
        cfg = c.params["config"]
        out.append((tr - pred, s**2 * K, sgd_pass_remainder(X, y, xq, w0, lr, lam, s, cfg["attn_gap"], V,
                                                             cfg["passthrough"])))
    return out


def check_sgd_pass(prompt, knobs) -> Comparison:
    """``akyurek22-sgd-pass``: at every step i and each of s = 0.1, 0.01, 0.001 the readout's
    error is ``s^2 K_i`` within :func:`sgd_pass_remainder`; and at the last step, on prompts where
    the remainder is below ``THM1_DOMINANCE`` of the ``s^2`` term at both s = 0.01 and 0.001, that
    decade cuts the error by ``>= THM1_DECADE`` (the O(s^2) rate, accumulated).  Inputs of unit
    size (``x`` in (-1/2, 1/2), ``y`` in (-1, 1)), ``lr`` in (0.05, 0.25), ``lam`` in (0, 0.1)."""
    rng = np.random.default_rng(knobs.seed)
    unit = lambda a: a / np.sqrt((a**2).mean(axis=tuple(range(1, a.ndim)), keepdims=True))  # noqa: E731
    X = np.tanh(unit(prompt.X)) * 0.5
    xq = np.tanh(unit(prompt.Xq)[:, 0]) * 0.5
    y = np.tanh(unit(prompt.y))
    lr, lam = 0.05 + 0.2 * rng.uniform(), 0.1 * rng.uniform()
    w0 = rng.normal(size=X.shape[-1]) * 0.3
    res = sgd_pass_errors(X, y, xq, w0, lr, lam)
    dev = np.stack([np.abs(e - p) for e, p, _ in res], -1)  # [B, n, k]
    rem = np.stack([r for _, _, r in res], -1)
    (e2, p2, r2), (e3, p3, r3) = res[1], res[2]
    window = (r2[:, -1] <= THM1_DOMINANCE * np.abs(p2[:, -1])) & (r3[:, -1] <= THM1_DOMINANCE * np.abs(p3[:, -1]))
    gain = np.abs(e2[:, -1]) / np.maximum(np.abs(e3[:, -1]), np.finfo(np.float64).tiny)
    rate = np.where(window, THM1_DECADE / gain, 0.0)  # <= 1 iff the decade cuts by >= 10^1.9
    B = X.shape[0]
    m = np.concatenate([dev.reshape(B, -1), rate[:, None]], -1)[None]
    t = np.concatenate([rem.reshape(B, -1), np.ones((B, 1))], -1)[None]
    return Comparison(m, np.zeros_like(m), t, t)


# -- Thm 2: one Sherman-Morrison update from the primitives ----------------------------------------
def raw_ridge(d: int, lam: float, config: RawConfig | dict = RawConfig()) -> Construction:
    """Ridge regression on one exemplar by one Sherman-Morrison update, from Akyurek et al.'s
    primitives (Thm 2), as the paper states it.

    **Theorem** (Akyurek et al. 2022, Thm 2 / App. B).  On the causal prompt ``[x_1, y_1, x_2]``
    the last token's ``out`` slot approximates ``w'^T x_2`` with ``w' = A_1^{-1} x_1 y_1`` and
    ``A_1^{-1} = A_0^{-1} - A_0^{-1} x_1 x_1^T A_0^{-1} / (1 + x_1^T A_0^{-1} x_1)``,
    ``A_0^{-1} = I/lam`` (Sherman-Morrison), i.e. ``w' = (lam I + x_1 x_1^T)^{-1} x_1 y_1``, the
    toolkit's ridge on one example (n = 1: ``(X^T X/n + lam I)^{-1} X^T y/n``).

    **Chain** (13 primitives, one block each; App. B's order, without its unused ``x_1 y`` product):
    mov x_1 -> token 1; aff ``A0 = I/lam`` (bias); mul ``u = A0 x_1``; mul ``vA = x_1^T A0``;
    mul ``O = u vA`` (the outer product, d^2 rows); mul ``q = x_1^T u``; aff ``c = 1 + q``; div
    ``Od = O/|c|`` (LayerNorm); aff ``A1 = A0 - Od``; mul ``z = A1 x_1``; mul ``w' = z y_1``;
    mov w' -> token 2; mul ``out = w'^T x_2``.

    **Resources.**  13 blocks (2 attention-only mov, 1 attention + LayerNorm MLP div, 10 GeLU MLPs),
    1 head, width ``4d^2 + 7d + 10``; the paper: constant depth, O(d^2) hidden size.

    **Exactness.**  Approximate: the seven mul layers' ``s^2`` terms and div's LayerNorm term
    ``1 - (1 + Q/(2 M^2 c^2))^{-1/2}`` (Q: the square sum of token 1's other rows plus its balance
    row), carried through the chain (:func:`ridge_raw_emulate`); ``akyurek22-thm2-raw`` checks the
    error against that prediction and the decade rates in s and in M.

    **Domain.**  One exemplar and one query; the values the aff layers pass through,
    ``1/lam``, ``c = 1 + x_1^T x_1/lam`` and the entries of ``A_1^{-1}``, within ``P/2``
    (``config.passthrough``; checked at prediction time); ``lam > 0``; the knobs of ``config``
    finite positive reals.
    """
    d = parts.positive_int(d, "d")
    lam = parts.real(lam, "lam")
    D = 4 * d * d + 7 * d + 10
    parts.budget("raw_ridge", layers=13, width=D, mlp=3 * d * d)
    cfg = RawConfig.of(config)
    if 1 / lam > cfg.passthrough / 2:
        raise ConstructionError(f"raw_ridge: 1/lam = {1 / lam:.3g} exceeds passthrough/2 = {cfg.passthrough / 2:.3g}, "
                                f"where the GeLU pass-through of A0 = I/lam fails; use lam >= {2 / cfg.passthrough:.3g} "
                                "or a larger config passthrough")
    lay = ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), ("pos", 3, "zero"), ("x1", d, "zero"), ("A0", d * d, "zero"),
                             ("u", d, "zero"), ("vA", d, "zero"), ("O", d * d, "zero"), ("q", 1, "zero"),
                             ("c", 1, "zero"), ("Od", d * d, "zero"), ("A1", d * d, "zero"), ("z", d, "zero"),
                             ("wn", d, "zero"), ("wq", d, "zero"), ("out", 1, "zero"), ("pad", 2, "zero"),
                             ("bal", 1, "zero")], Readout("out"))
    I = np.eye(d * d)
    with np.errstate(over="ignore", invalid="ignore"):
        blocks = [
            mov(lay, "x", "x1", 0, 1, cfg),
            aff(lay, {}, np.eye(d).reshape(-1) / lam, "A0", cfg),
            mul(lay, "A0", "x1", "u", d, d, 1, cfg),
            mul(lay, "x1", "A0", "vA", 1, d, d, cfg),
            mul(lay, "u", "vA", "O", d, 1, d, cfg),
            mul(lay, "x1", "u", "q", 1, d, 1, cfg),
            aff(lay, {"q": [[1.0]]}, 1.0, "c", cfg),
            div(lay, "O", ("c", 0), "Od", cfg),
            aff(lay, {"A0": I, "Od": -I}, 0.0, "A1", cfg),
            mul(lay, "A1", "x1", "z", d, d, 1, cfg),
            mul(lay, "z", "y", "wn", d, 1, 1, cfg),
            mov(lay, "wn", "wq", 1, 2, cfg),
            mul(lay, "wq", "x", "out", 1, d, 1, cfg),
        ]
    split = parts.fixed_examples(1, "raw_ridge", "it takes one exemplar (Akyurek's Thm 2)")

    def domain(X, y, Xq):
        x1 = X[:, 0]
        sq = (x1**2).sum(-1)
        # A1 = (lam I + x1 x1^T)^{-1} = (I - x1 x1^T/(lam + |x1|^2))/lam (Sherman-Morrison): no inversion,
        # so a long x1 (lam lost beside |x1|^2 in float) cannot make a solver fail
        with np.errstate(all="ignore"):
            A1 = (torch.eye(d, dtype=X.dtype) - x1[:, :, None] * x1[:, None, :] / (lam + sq)[:, None, None]) / lam
        vals = dict(c=1 + sq / lam, A1=A1.abs().amax((-1, -2)))
        for name, v in vals.items():
            b = int(v.argmax())
            if float(v[b]) > cfg.passthrough / 2:
                raise ConstructionError(
                    f"prompt {b}: the value {name} = {float(v[b]):.3g} passed through an aff layer of raw_ridge exceeds "
                    f"passthrough/2 = {cfg.passthrough / 2:.3g}; rescale x_1 or raise lam, or rebuild with config "
                    f"passthrough >= {2 * float(v[b]):.3g}")

    return InterleavedConstruction("raw_ridge", dict(d=d, lam=lam, config=dict(cfg.__dict__)), blocks, lay, d,
                                   mask_query=False, split=split, step_blocks=13, domain=domain)


def ridge_raw_emulate(x1, y1, x2, lam: float, s: float = 0.0, M: float = math.inf) -> np.ndarray:
    """raw_ridge's chain in numpy with each primitive's leading error put in (``[B]``): every
    product ``a b`` of a mul layer becomes ``a b - s^2 q4(a, b)/12`` (Lemma 4's term), div's
    quotient is scaled by ``(1 + Q/(2 M^2 c^2))^{-1/2}`` with Q the square sum of token 1's other
    rows plus its balance row (their sum, squared) at div's input (Lemma 8's term).  s = 0 and
    M = inf give the exact Sherman-Morrison prediction ``w'^T x_2``; mov and aff errors
    (``e^{-N/2}``, ``Phi(-P/2)``) are left out: below 1e-16 in the domain."""
    B, d = x1.shape
    q4 = lambda a, b: s**2 * _q(a, b, 4) / 12  # noqa: E731

    def mm(P, Qm):  # P [B, a, b] @ Qm [B, b, c], every product with its mul error
        prod = P[..., :, :, None] * Qm[..., None, :, :]
        return (prod - q4(P[..., :, :, None], Qm[..., None, :, :])).sum(-2)

    A0 = np.broadcast_to(np.eye(d) / lam, (B, d, d))
    xc, xr = x1[:, :, None], x1[:, None, :]
    u = mm(A0, xc)  # [B, d, 1]
    vA = mm(xr, A0)  # [B, 1, d]
    O = mm(u, vA)  # [B, d, d]
    q = mm(xr, u)[:, 0, 0]
    c = 1 + q
    rows = [y1[:, None], np.ones((B, 1)), x1, A0.reshape(B, -1), u[..., 0], vA[:, 0], O.reshape(B, -1), q[:, None],
            c[:, None]]
    other = np.concatenate(rows, -1)
    Q = (other**2).sum(-1) + other.sum(-1) ** 2
    Od = O / np.abs(c)[:, None, None] * (1 + Q / (2 * M**2 * c**2))[:, None, None] ** -0.5
    A1 = A0 - Od
    z = mm(A1, xc)
    wn = mm(z, y1[:, None, None])
    return mm(wn.transpose(0, 2, 1), x2[:, :, None])[:, 0, 0]


#: the knobs of akyurek22-thm2-raw: (s, M) where the error is checked against its prediction, and the
#: pairs of its decade rates (in s with div's term negligible; in M with the mul terms negligible)
RIDGE_RAW_POINTS = ((1e-3, 1e4), (1e-3, 1e5))
RIDGE_RAW_RATES = (((1e-2, 1e6), (1e-3, 1e6)), ((1e-4, 1e2), (1e-4, 1e3)))


def ridge_raw_errors(x1, y1, x2, lam: float, points):
    """``(err [k, B], pred [k, B])``: raw_ridge's error against the exact update at each ``(s, M)``
    of ``points``, and the error :func:`ridge_raw_emulate` predicts there."""
    exact = ridge_raw_emulate(x1, y1, x2, lam)
    err, pred = [], []
    for s, M in points:
        c = raw_ridge(x1.shape[-1], lam, RawConfig(mul_scale=s, ln_pad=M))
        err.append(c.predict(x1[:, None], y1[:, None], x2[:, None])[:, 0] - exact)
        pred.append(ridge_raw_emulate(x1, y1, x2, lam, s, M) - exact)
    return np.array(err), np.array(pred)


def check_ridge_raw(prompt, knobs) -> Comparison:
    """``akyurek22-thm2-raw``: at (s, M) = (1e-3, 1e4) and (1e-3, 1e5) the error is its predicted
    leading term within ``THM1_DOMINANCE`` (10%) of it plus round-off (``U (1/s + M)`` times the
    chain's size); each rate pair (:data:`RIDGE_RAW_RATES`) cuts the error by ``>= THM1_DECADE``
    per decade, on prompts where that knob's predicted part is at least 10 times the other's.
    Inputs of unit size (``|x| <= 1/2``, ``|y| <= 1``), ``lam`` in (0.3, 1)."""
    rng = np.random.default_rng(knobs.seed)
    unit = lambda a: a / np.sqrt((a**2).mean(axis=tuple(range(1, a.ndim)), keepdims=True))  # noqa: E731
    x1 = np.tanh(unit(prompt.X)[:, 0]) * 0.5
    x2 = np.tanh(unit(prompt.Xq)[:, 0]) * 0.5
    y1 = np.tanh(unit(prompt.y)[:, 0])
    lam = 0.3 + 0.7 * rng.uniform()
    d = x1.shape[-1]
    err, pred = ridge_raw_errors(x1, y1, x2, lam, RIDGE_RAW_POINTS)
    size = (d * d + d) * (1 + 1 / lam) ** 3
    ro = np.array([U * (1 / s + M) * size for s, M in RIDGE_RAW_POINTS])[:, None]
    m = [np.abs(err - pred)]
    t = [THM1_DOMINANCE * np.abs(pred) + ro]
    for (p_hi, p_lo), which in zip(RIDGE_RAW_RATES, ("s", "M")):
        e, _ = ridge_raw_errors(x1, y1, x2, lam, (p_hi, p_lo))
        parts_ = []
        for s, M in (p_hi, p_lo):  # the knob's own predicted part and the other's
            exact = ridge_raw_emulate(x1, y1, x2, lam)
            only_s = ridge_raw_emulate(x1, y1, x2, lam, s=s) - exact
            only_M = ridge_raw_emulate(x1, y1, x2, lam, M=M) - exact
            own, other = (only_s, only_M) if which == "s" else (only_M, only_s)
            parts_.append(np.abs(own) >= 10 * (np.abs(other) + U * (1 / s + M) * size))
        window = parts_[0] & parts_[1]
        gain = np.abs(e[0]) / np.maximum(np.abs(e[1]), np.finfo(np.float64).tiny)
        m.append(np.where(window, THM1_DECADE / gain, 0.0)[None])
        t.append(np.ones((1, len(x1))))
    m, t = np.concatenate(m).T[None], np.concatenate(t).T[None]
    return Comparison(m, np.zeros_like(m), t, t)


def _ridge_raw_baseline(prep, c):
    lam = c.params["lam"]
    x1, y1 = prep.X[:, 0], prep.y[:, 0]
    eye = torch.eye(x1.shape[-1], dtype=x1.dtype, device=x1.device)
    return lambda: torch.linalg.solve(lam * eye + x1[:, :, None] * x1[:, None, :], x1 * y1[:, None])


def _sgd_bench_params(d, n):
    return dict(n=n, lr=0.05 / d)


def _sgd_baseline(prep, c):
    p = c.params
    return lambda: baselines.sgd_pass(prep.X, prep.y, 2 * p["lr"], p["lam"], p["w0"])


def _bench_params(d, n):
    return dict(w0=np.zeros(d), lr=0.1)


def _baseline(prep, c):
    w0 = torch.tensor(c.params["w0"], dtype=prep.X.dtype, device=prep.X.device)
    X, y, lr = prep.X, prep.y, c.params["lr"]
    return lambda: w0 - 2 * lr * X[:, 0] * (X[:, 0] @ w0 - y[:, 0])[:, None]


register(
    raw_gd, summary="one GD step on one exemplar from softmax/GeLU/LayerNorm primitives (mov, aff, mul, div) on a "
                    "causal prompt", source="Akyürek et al. 2022, Thm 1", exactness="approximate: error `O(s²)` in the GeLU scale",
    paper_resources='Thm 1: constant depth, O(d) width',
    bench=Bench(_bench_params, n=1, baseline=_baseline),
    claims=[
        Claim("akyurek22-primitives", "Akyurek et al. 2022", "Lemma 1, App. C (Lemmas 4, 5, 8)",
              "mov (softmax attention, position codes, null logit), aff (GeLU pass-through), mul (GeLU: "
              "error s^2|(x+y)^4 - x^4 - y^4|/12 + O(s^4)) and div (LayerNorm padding: relative error "
              "1 - (1 + Q/(2M^2c^2))^(-1/2), divides by |c|) are each one layer within their predicted error",
              "exact mov/aff/mul/div (numpy)", check_primitives, kind="bound", variant="primitives",
              prompt=dict(d=(1, 6), n=(3, 40)),
              proof=Proof("none", note="approximate (softmax, GeLU, LayerNorm); the errors are checked against their "
                                       "predicted terms numerically")),
        Claim("akyurek22-thm1", "Akyurek et al. 2022", "Thm 1, App. A",
              "9 primitive layers on the causal prompt [x1, y1, x2] compute w'^T x2, w' = w - 2 lr (x1 (w^T x1 - y1) "
              "+ lam w), with error O(s^2) in the mul scale: where the s^2 term dominates, the error is s^2 K "
              "within the remainder and each decade of s cuts it by >= 10^1.9",
              "exact one-exemplar GD step (numpy)", check_thm1, kind="bound", prompt=dict(B=(1, 3), d=(1, 6)),
              proof=Proof("none", note="approximate; the O(s^2) error term is checked numerically")),
    ],
)

register(
    raw_sgd, summary="one pass of SGD over the n exemplars of a causal prompt, 8 primitive blocks (mov, aff, mul) per "
                     "exemplar", source="Akyürek et al. 2022, Thm 1 chained",
    exactness="approximate: error `O(s²)` per step in the GeLU scale, accumulated linearly",
    paper_resources="Thm 1 repeated: a constant number of layers per exemplar, O(d) width",
    bench=Bench(_sgd_bench_params, labels="unit", baseline=_sgd_baseline, n=8),
    claims=[
        Claim("akyurek22-sgd-pass", "Akyurek et al. 2022", "Thm 1, App. A (chained over the exemplars)",
              "8n + 3 primitive layers on the causal prompt [x1, y1, ..., xn, yn, xq] carry out one SGD pass "
              "w_i = w_{i-1} - 2 lr (x_i (w_{i-1}^T x_i - y_i) + lam w_{i-1}); after every step i the readout is "
              "w_i^T xq + s^2 K_i within the O(s^4) remainder bound at s = 0.1, 0.01, 0.001 (K_i: the mul errors "
              "carried forward linearly), and a decade of s cuts the final error by >= 10^1.9",
              "exact SGD pass (numpy)", check_sgd_pass, kind="bound", prompt=dict(B=(1, 3), d=(1, 5), n=(1, 20)),
              proof=Proof("none", note="approximate; the accumulated O(s^2) term is checked numerically per step")),
    ],
)

register(
    raw_ridge, summary="one Sherman-Morrison update (ridge on one exemplar) from the primitives mov, aff, mul, div on a "
                       "causal prompt", source="Akyürek et al. 2022, Thm 2, App. B",
    exactness="approximate: error `O(s²)` in the GeLU scale and `O(1/M²)` in div's LayerNorm padding",
    paper_resources="Thm 2: constant depth, O(d²) hidden size",
    bench=Bench(lambda d, n: dict(lam=1.0), labels="unit", n=1, baseline=_ridge_raw_baseline),
    claims=[
        Claim("akyurek22-thm2-raw", "Akyurek et al. 2022", "Thm 2, App. B (with the paper's primitives)",
              "13 primitive layers (mov, aff, mul, div) on the causal prompt [x1, y1, x2] compute w'^T x2, "
              "w' = (lam I + x1 x1^T)^{-1} x1 y1 by one Sherman-Morrison update of A0^{-1} = I/lam; the error is its "
              "predicted first-order term (the mul layers' s^2 q4/12 terms and div's 1 - (1 + Q/(2M^2c^2))^(-1/2), "
              "carried through the chain) within 10% plus round-off, and a decade of s (M) cuts it by >= 10^1.9 "
              "where that knob's part dominates",
              "exact Sherman-Morrison update (numpy)", check_ridge_raw, kind="bound", prompt=dict(B=(1, 3), d=(1, 4)),
              proof=Proof("none", note="approximate (GeLU, LayerNorm); the predicted error terms are checked "
                                       "numerically")),
    ],
)

register_paper(Paper(
    "Akyurek et al. 2022", "What learning algorithm is in-context learning? Investigations with linear models "
                           "(ICLR 2023, arXiv 2211.15661)", (
        Result("Lemma 1, App. C", "the RAW primitives mov, aff, mul, div as single layers", ("akyurek22-primitives",)),
        Result("Thm 1", "one GD step on one exemplar from the primitives, error O(s^2)", ("akyurek22-thm1",)),
        Result("Thm 1, chained", "one pass of SGD over the n exemplars of a causal prompt", ("akyurek22-sgd-pass",)),
        Result("Thm 2", "ridge regression by one Sherman-Morrison update per example",
               ("akyurek22-thm2", "akyurek22-thm2-raw"),
               "akyurek22-thm2: every example, from ReLU heads and a Newton reciprocal (exact to round-off); "
               "akyurek22-thm2-raw: the paper's single update from its own primitives"),
        Result("Figs. 3-5, App. E, H", "trained transformers' phase diagram and probes", (),
               "trained-model evidence, not a claim (icl-verify reproduce akyurek22, docs/training.md): the closest "
               "predictor moves from GD to ridge with depth and width; probes for w_OLS and X^T y per layer, against "
               "the paper's control task and a hand-set construction's slot"),
    )))
