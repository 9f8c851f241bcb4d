"""The plain-data reference forward pass in numpy: the specification the torch model is tested against.

Shapes: a stream ``h [B, T, D]`` whose first ``n_context`` tokens are the keys (with the
query mask); the result is the list of residual streams ``[h_0, ..., h_L]``.  The same
equations as :class:`constructions.transformer.Transformer` (attention patterns from
:func:`constructions.spec.attention_pattern`), evaluated head by head in the scores-first
order, on numpy arrays of any dtype: float64, or object arrays of ``fractions.Fraction``
for exact rational arithmetic (:mod:`verify.exact`), in which linear and ReLU attention and
ReLU MLPs are exact.  Softmax, GeLU and LayerNorm need floats.
"""
from __future__ import annotations

import math

import numpy as np

from .spec import BlockSpec, attention_pattern, hidden_keys, key_count


def numpy_forward(blocks: list[BlockSpec], h: np.ndarray, n_context: int, mask_query: bool = True,
                  norm: int | None = None, convert=lambda a: a, record=None) -> list[np.ndarray]:
    """Residual streams ``[h_0, ..., h_L]`` of ``blocks`` on ``h``; ``convert`` maps each float64
    weight array to h's element type (e.g. :func:`verify.exact.to_exact`).  ``record(block, part,
    index, values)``, if given, sees every ReLU's input: each ReLU head's scores
    (``part="head"``, ``[B, T, S]``) and each ReLU MLP's pre-activations (``part="mlp"``,
    ``[B, T, F]``)."""
    norm = n_context if norm is None else norm
    hs = [h]
    for l, spec in enumerate(blocks):
        if spec.attn is not None:
            a = spec.attn
            keys = h[:, :key_count(a.causal, n_context, h.shape[1], mask_query)]
            future = hidden_keys(a.causal, h.shape[1], keys.shape[1], numpy=True)
            out = 0
            for i, (WQ, WK, WV, WO) in enumerate(zip(*(convert(getattr(a, k)) for k in ("W_Q", "W_K", "W_V", "W_O")))):
                q, k, v = h @ WQ, keys @ WK, keys @ WV
                scores = q @ k.transpose(0, 2, 1)
                if record is not None and a.kind == "relu":
                    record(l, "head", i, scores)
                pattern = attention_pattern(a.kind, scores, norm, a.null_score, future, a.divisor)
                out = out + pattern @ v @ WO
            h = h + out
        if spec.mlp is not None:
            m = spec.mlp
            x = h
            if m.layernorm:
                c = h - h.mean(-1, keepdims=True)
                x = c / np.sqrt((c**2).mean(-1, keepdims=True) + m.ln_eps)
            pre = x @ convert(m.W_in) + convert(m.b_in)
            if record is not None and m.act == "relu":
                record(l, "mlp", None, pre)
            if m.act == "relu":
                post = np.maximum(pre, 0)
            else:
                post = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2.0)))
            h = h + post @ convert(m.W_out) + convert(m.b_out)
        hs.append(h)
    return hs
