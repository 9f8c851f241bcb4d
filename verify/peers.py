"""The peers ``icl-verify bench`` times beside the toolkit's transformer, on the same prompts.

* :func:`naive_forward`: the construction's weights run the way a user would write the
  transformer by hand in torch: every head separately, the full ``[T, S]`` score matrix, then
  the pattern times the values (no folded or ``(K^T V)``-first order, no padding, no chunks,
  no preallocated buffers).  It is independent of :mod:`constructions.transformer`
  except for the attention pattern (:func:`constructions.spec.attention_pattern`), and
  ``tests/test_bench.py`` checks that it computes the same streams.
* :func:`transformer_lens_predict`: the TransformerLens model of the export
  (:func:`constructions.export.to_transformer_lens`), or None where the export does not apply
  or TransformerLens is not installed.

Shapes: a stream ``h [B, T, D]`` whose first ``n_keys`` tokens are the keys.
"""
from __future__ import annotations

import torch

from constructions.errors import ConstructionError
from constructions.spec import attention_pattern, hidden_keys, key_count


def naive_forward(c, h: torch.Tensor, n_keys: int, norm: int) -> torch.Tensor:
    """The final residual stream ``[B, T, D]`` of construction ``c`` on ``h``, head by head."""
    T = h.shape[1]
    for block in c.model.blocks:
        a, m = block.attn, block.mlp
        if a is not None:
            keys = h[:, :key_count(a.causal, n_keys, T, c.mask_query)]
            future = hidden_keys(a.causal, T, keys.shape[1], h.device)
            out = torch.zeros_like(h)
            for WQ, WK, WV, WO in zip(a.W_Q, a.W_K, a.W_V, a.W_O):
                scores = (h @ WQ) @ (keys @ WK).transpose(1, 2)  # [B, T, S]
                out = out + attention_pattern(a.kind, scores, norm, a.null_score, future, a.divisor) @ (keys @ WV) @ WO
            h = h + out
        if m is not None:
            x = torch.nn.functional.layer_norm(h, h.shape[-1:], eps=m.ln_eps) if m.layernorm else h
            pre = x @ m.W_in + m.b_in
            post = torch.relu(pre) if m.act == "relu" else torch.nn.functional.gelu(pre)
            h = h + post @ m.W_out + m.b_out
    return h


#: the largest construction the bench exports to TransformerLens (parameters): its model holds a
#: second copy of every weight plus per-layer buffers, so the 481-layer ridge_sherman_morrison
#: row at d = 20 (1.2e8 parameters) is left out
TL_MAX_PARAMS = 10**7


def transformer_lens_predict(c, n_ctx: int = 1024):
    """A callable ``f(X, y, Xq)`` running ``c`` through its TransformerLens export
    (:func:`constructions.export.predict`; ``n_ctx``: the longest prompt in tokens), or the reason
    as a string where there is none: TransformerLens not installed, a block the export refuses,
    or more parameters than :data:`TL_MAX_PARAMS`."""
    from constructions import export

    if c.model.param_count() > TL_MAX_PARAMS:
        return f"{c.model.param_count():.2g} parameters, above the bench's export limit {TL_MAX_PARAMS:.0e}"
    try:
        model = export.to_transformer_lens(c, n_ctx=n_ctx)
    except ConstructionError as e:
        return "transformer-lens not installed" if "needs transformer-lens" in str(e) else str(e).split(";")[0]
    return lambda X, y, Xq: export.predict(model, c, X, y, Xq)
