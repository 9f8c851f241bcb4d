"""Export to TransformerLens (optional extra ``[tl]``: ``transformer-lens>=2,<4``, the versions
that have ``HookedTransformer``).

``to_transformer_lens(c)`` returns a ``HookedTransformer`` (no LayerNorm, bidirectional
attention, no attention scale, float64) whose blocks hold the construction's weights,
loaded with a strict ``load_state_dict`` (the toolkit already uses TransformerLens's
names and shapes: ``W_Q [H, D, E]``, ``W_O [H, E, D]``, ``W_in [D, F]``, ...; heads,
head width and MLP width are zero-padded to the largest block; biases other than the
MLP's are 0; the token and position embeddings and the unembedding are unused zeros).

TransformerLens attention is softmax; the toolkit's divisor n, its query mask, and its
linear and ReLU attention are applied by a hook on ``blocks.{l}.attn.hook_pattern``
(:func:`pattern_hooks`), which reads the raw scores at ``hook_attn_scores``.

Readout: feed the construction's embedding ``c.embed(...)`` as the residual stream with
``start_at_layer=0`` and ``stop_at_layer=L`` (so the unembedding is skipped), then read
the layout's readout slot of the query tokens with its sign -- :func:`predict` does
exactly this and reproduces ``c.predict``.
"""
from __future__ import annotations

import numpy as np
import torch

from . import parts
from .errors import ConstructionError
from .spec import attention_pattern


def _tl():
    try:
        import transformer_lens
        from transformer_lens import HookedTransformer, HookedTransformerConfig
    except ImportError as e:
        raise ConstructionError("to_transformer_lens needs transformer-lens<4 (pip install "
                                "'icl-constructions[tl]'); HookedTransformer was removed in 4.0") from e
    return transformer_lens, HookedTransformer, HookedTransformerConfig


def _check(c) -> str:
    from .construction import Construction

    if not isinstance(c, Construction):
        raise ConstructionError(f"expected a Construction (e.g. constructions.gd(...)), got {type(c).__name__}")
    acts = {b.mlp.act for b in c.blocks if b.mlp is not None}
    if len(acts) > 1:
        raise ConstructionError(f"{c.name}: TransformerLens needs one MLP activation, the blocks use {sorted(acts)}")
    for b in c.blocks:
        if b.attn is not None and (b.attn.causal or b.attn.null_score is not None):
            raise ConstructionError(f"{c.name}: causal or null-logit attention has no TransformerLens export here")
        if b.mlp is not None and b.mlp.layernorm:
            raise ConstructionError(f"{c.name}: an MLP reading LayerNorm(h) has no TransformerLens export here")
    return acts.pop() if acts else "relu"


def to_transformer_lens(c, n_ctx: int = 1024):
    """A float64 ``HookedTransformer`` carrying construction ``c``'s weights (module docstring)."""
    act = _check(c)
    n_ctx = parts.positive_int(n_ctx, "n_ctx")
    _, HookedTransformer, HookedTransformerConfig = _tl()
    attn = [b.attn for b in c.blocks if b.attn is not None]
    H = max((a.heads for a in attn), default=1)
    E = max((a.W_Q.shape[2] for a in attn), default=1)
    F = max((b.mlp.W_in.shape[1] for b in c.blocks if b.mlp is not None), default=1)
    D = c.layout.width
    cfg = HookedTransformerConfig(
        n_layers=len(c.blocks), d_model=D, d_head=E, n_heads=H, d_mlp=F, d_vocab=1, n_ctx=n_ctx, act_fn=act,
        normalization_type=None, attention_dir="bidirectional", use_attn_scale=False,
        positional_embedding_type="standard", dtype=torch.float64, default_prepend_bos=False,
    )
    model = HookedTransformer(cfg)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k in ("blocks.%d.attn.mask", "blocks.%d.attn.IGNORE"):
        for layer in range(len(c.blocks)):
            if k % layer in state:
                state[k % layer] = model.state_dict()[k % layer]  # TransformerLens's own buffers
    for layer, b in enumerate(c.blocks):
        p = f"blocks.{layer}."
        if b.attn is not None:
            h, e = b.attn.heads, b.attn.W_Q.shape[2]
            for name in ("W_Q", "W_K", "W_V"):
                state[p + "attn." + name][:h, :, :e] = torch.from_numpy(getattr(b.attn, name))
            state[p + "attn.W_O"][:h, :e, :] = torch.from_numpy(b.attn.W_O)
        if b.mlp is not None:
            f = b.mlp.W_in.shape[1]
            state[p + "mlp.W_in"][:, :f] = torch.from_numpy(b.mlp.W_in)
            state[p + "mlp.b_in"][:f] = torch.from_numpy(b.mlp.b_in)
            state[p + "mlp.W_out"][:f, :] = torch.from_numpy(b.mlp.W_out)
            state[p + "mlp.b_out"][:] = torch.from_numpy(b.mlp.b_out)
    model.load_state_dict(state, strict=True)
    model.eval()
    return model


def pattern_hooks(c, n_keys: int, norm: int) -> list:
    """``(hook name, fn)`` pairs that turn TransformerLens's softmax pattern into the toolkit's
    attention for every block: keys restricted to the first ``n_keys`` tokens (query mask),
    and ``scores/norm`` (linear), ``relu(scores)/norm`` (ReLU) or a softmax over the keys."""
    scores: dict = {}
    hooks = []
    for layer, b in enumerate(c.blocks):
        if b.attn is None:
            continue
        kind = b.attn.kind

        def keep(s, hook, layer=layer):
            scores[layer] = s
            return s

        def pattern(p, hook, layer=layer, kind=kind):
            s = scores.pop(layer)
            keys = n_keys if c.mask_query else s.shape[-1]
            new = attention_pattern(kind, s[..., :keys], norm)
            return torch.nn.functional.pad(new, (0, p.shape[-1] - keys))

        hooks += [(f"blocks.{layer}.attn.hook_attn_scores", keep), (f"blocks.{layer}.attn.hook_pattern", pattern)]
    return hooks


def predict(model, c, X, y, Xq, check: bool = True) -> np.ndarray:
    """``c.predict(X, y, Xq)`` computed by the exported ``model`` (batched numpy in and out)."""
    p = c.prepare(X, y, Xq, check)
    n = p.X.shape[1]
    h = c.embed(p)
    with torch.no_grad():
        out = model.run_with_hooks(h, start_at_layer=0, stop_at_layer=len(c.blocks),
                                   fwd_hooks=pattern_hooks(c, c.n_keys(n), n))
    got = c.read(out, c.n_keys(n)).numpy()
    if check and not np.isfinite(got).all():
        raise ConstructionError(f"the exported {c.name} model's forward pass overflowed; rescale the prompt")
    return got
