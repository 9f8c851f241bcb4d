"""Export to TransformerLens (optional extra ``[tl]``: ``transformer-lens>=2,<4``, the versions
that have ``HookedTransformer``).

``to_transformer_lens(c)`` returns a ``HookedTransformer`` (bidirectional attention, no attention
scale, in ``c``'s dtype and on its device) whose blocks hold the construction's weights, loaded with
a strict ``load_state_dict`` (the toolkit already uses TransformerLens's names and shapes:
``W_Q [H, D, E]``, ``W_O [H, E, D]``, ``W_in [D, F]``, ...; heads, head width and MLP width are
zero-padded to the largest block; biases other than the MLP's are 0; the token and position
embeddings and the unembedding are unused zeros).

**The attention is built in.**  TransformerLens attention is softmax over all tokens; the
toolkit's attention (its divisor n, its query mask, linear and ReLU kinds, causal heads and the
null logit) is applied by *permanent* hooks on every ``blocks.{l}.attn.hook_pattern``, which
read the raw scores at ``hook_attn_scores``.  An MLP that reads ``LayerNorm(h)`` uses the
model's parameter-free ``LNPre`` before it; the other blocks' normalisations are bypassed by
permanent hooks.  The attention needs to know how many tokens are keys and the divisor, which a
bare call cannot tell, so the model **refuses a bare call** (``model(h, start_at_layer=0)``
raises :class:`ConstructionError`) and computes the construction's function inside
``with prompt(model, n_keys, norm):``.  :func:`predict` does all of it: ``c.prepare`` and
``c.embed`` the prompt, run the model from ``start_at_layer=0`` to ``stop_at_layer=L`` inside
:func:`prompt`, read the readout slot of the query tokens with its sign, and so reproduce
``c.predict``.  Other hooks (``run_with_hooks``, ``run_with_cache``) work as usual inside
:func:`prompt`.

Refused: blocks with different MLP activations, and LayerNorm MLPs with different epsilons
(one TransformerLens config holds one of each).
"""
from __future__ import annotations

import contextlib

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


def _check(c) -> tuple[str, float | None]:
    """The one MLP activation and the one LayerNorm epsilon (None: no LayerNorm MLP) of ``c``."""
    from .construction import Construction

    if not isinstance(c, Construction):
        raise ConstructionError(f"expected a Construction (e.g. constructions.gd(...)), got {type(c).__name__}")
    acts = {b.mlp.act for b in c.blocks if b.mlp is not None}
    if len(acts) > 1:
        raise ConstructionError(f"{c.name}: TransformerLens needs one MLP activation, the blocks use {sorted(acts)}")
    eps = {b.mlp.ln_eps for b in c.blocks if b.mlp is not None and b.mlp.layernorm}
    if len(eps) > 1:
        raise ConstructionError(f"{c.name}: TransformerLens needs one LayerNorm epsilon, the blocks use {sorted(eps)}")
    return (acts.pop() if acts else "relu"), (eps.pop() if eps else None)


def to_transformer_lens(c, n_ctx: int = 1024):
    """A ``HookedTransformer`` carrying construction ``c``'s weights and attention (module
    docstring), in ``c``'s dtype and on its device."""
    act, ln_eps = _check(c)
    n_ctx = parts.positive_int(n_ctx, "n_ctx")
    _, HookedTransformer, HookedTransformerConfig = _tl()
    attn = [b.attn for b in c.blocks if b.attn is not None]
    H = max((a.heads for a in attn), default=1)
    E = max((a.W_Q.shape[2] for a in attn), default=1)
    F = max((b.mlp.W_in.shape[1] for b in c.blocks if b.mlp is not None), default=1)
    D = c.layout.width
    cfg = HookedTransformerConfig(
        n_layers=len(c.blocks), d_model=D, d_head=E, n_heads=H, d_mlp=F, d_vocab=1, n_ctx=n_ctx, act_fn=act,
        normalization_type=None if ln_eps is None else "LNPre", eps=1e-5 if ln_eps is None else ln_eps,
        attention_dir="bidirectional", use_attn_scale=False, positional_embedding_type="standard", dtype=c.dtype,
        default_prepend_bos=False, device=str(c.device),
    )
    model = HookedTransformer(cfg)
    state = {k: torch.zeros_like(v) for k, v in model.state_dict().items()}
    for k, v in model.state_dict().items():
        if k.endswith(("attn.mask", "attn.IGNORE")):
            state[k] = v  # TransformerLens's own buffers
    as_t = lambda a: torch.as_tensor(a, dtype=c.dtype, device=c.device)  # noqa: E731
    for layer, b in enumerate(c.blocks):
        p = f"blocks.{layer}."
        if b.attn is not None:
            h, e = b.attn.heads, b.attn.W_Q.shape[2]
            for name in ("W_Q", "W_K", "W_V"):
                state[p + "attn." + name][:h, :, :e] = as_t(getattr(b.attn, name))
            state[p + "attn.W_O"][:h, :e, :] = as_t(b.attn.W_O)
        if b.mlp is not None:
            f = b.mlp.W_in.shape[1]
            state[p + "mlp.W_in"][:, :f] = as_t(b.mlp.W_in)
            state[p + "mlp.b_in"][:f] = as_t(b.mlp.b_in)
            state[p + "mlp.W_out"][:f, :] = as_t(b.mlp.W_out)
            state[p + "mlp.b_out"][:] = as_t(b.mlp.b_out)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.icl_prompt = None  # (n_keys, norm) inside prompt(); None refuses a call
    model.icl_construction, model.icl_params = c.name, c.params
    for name, fn in _builtin_hooks(model, c, ln_eps is not None):
        model.add_hook(name, fn, is_permanent=True)
    return model


@contextlib.contextmanager
def prompt(model, n_keys: int, norm: int):
    """Run the exported ``model`` on streams whose first ``n_keys`` tokens are the keys (context
    and any extra tokens; ``c.n_keys(n)``) with attention divisor ``norm`` (the number of
    examples n)::

        with export.prompt(model, c.n_keys(n), n):
            out = model(c.embed(c.prepare(X, y, Xq)), start_at_layer=0, stop_at_layer=len(c.blocks))
    """
    if getattr(model, "icl_construction", None) is None:
        raise ConstructionError("prompt() needs a model from constructions.export.to_transformer_lens")
    n_keys, norm = parts.positive_int(n_keys, "n_keys"), parts.positive_int(norm, "norm")
    old, model.icl_prompt = model.icl_prompt, (n_keys, norm)
    try:
        yield model
    finally:
        model.icl_prompt = old


def _builtin_hooks(model, c, layernorm: bool) -> list:
    """The permanent hooks that make the TransformerLens model compute ``c``'s blocks: each
    attention block's pattern from its raw scores (the toolkit's kind, query mask, divisor,
    causal mask and null logit), and, when the config has LayerNorm, the raw stream for every
    attention input and for the MLPs that do not read ``LayerNorm(h)``."""
    scores: dict = {}
    streams: dict = {}
    hooks = []

    def context():
        if model.icl_prompt is None:
            raise ConstructionError(
                f"this TransformerLens model of {model.icl_construction} needs the prompt's key count and divisor, "
                "which a bare call cannot tell: use constructions.export.predict(model, c, X, y, Xq), or call it "
                "inside `with constructions.export.prompt(model, c.n_keys(n), n):`")
        return model.icl_prompt

    for layer, b in enumerate(c.blocks):
        p = f"blocks.{layer}."

        def keep(s, hook, layer=layer):
            context()
            scores[layer] = s
            return s

        def pattern(pat, hook, layer=layer, a=b.attn):
            s = scores.pop(layer)
            n_keys, norm = context()
            if a is None:  # a block without attention: its zero weights give zero output
                return pat
            if n_keys > s.shape[-1]:
                raise ConstructionError(f"prompt(model, n_keys={n_keys}, ...) names more key tokens than the stream "
                                        f"has ({s.shape[-1]}); pass c.n_keys(n) for a prompt of n examples")
            keys = n_keys if c.mask_query else s.shape[-1]
            s = s[..., :keys]
            future = torch.ones(s.shape[-2], keys, dtype=torch.bool, device=s.device).triu(1) if a.causal else None
            new = attention_pattern(a.kind, s, norm, a.null_score, future)
            return torch.nn.functional.pad(new, (0, pat.shape[-1] - keys))

        hooks += [(p + "attn.hook_attn_scores", keep), (p + "attn.hook_pattern", pattern)]
        if layernorm:
            def save(x, hook, key):
                streams[key] = x
                return x

            hooks += [(p + "hook_resid_pre", lambda x, hook, k=(layer, 1): save(x, hook, k)),
                      (p + "ln1.hook_normalized", lambda x, hook, k=(layer, 1): streams[k])]
            if not (b.mlp is not None and b.mlp.layernorm):
                hooks += [(p + "hook_resid_mid", lambda x, hook, k=(layer, 2): save(x, hook, k)),
                          (p + "ln2.hook_normalized", lambda x, hook, k=(layer, 2): streams[k])]
    return hooks


def predict(model, c, X, y, Xq, check: bool = True):
    """``c.predict(X, y, Xq)`` computed by the exported ``model``: the same shapes and array type
    (numpy in, numpy out; unbatched in, unbatched out)."""
    if (getattr(model, "icl_construction", None), getattr(model, "icl_params", None)) != (
            getattr(c, "name", None), getattr(c, "params", None)):
        raise ConstructionError(f"model is not an export of this construction (exported: "
                                f"{getattr(model, 'icl_construction', None)!r}, construction: {getattr(c, 'name', c)!r}); "
                                "export it with constructions.export.to_transformer_lens(c)")
    p = c.prepare(X, y, Xq, check)
    n = p.X.shape[1]
    with torch.no_grad(), prompt(model, c.n_keys(n), n):
        out = model(c.embed(p), start_at_layer=0, stop_at_layer=len(c.blocks))
    got = c.read(out, c.n_keys(n))
    if check and not parts.all_finite(got):
        raise ConstructionError(f"the exported {c.name} model's forward pass overflowed; rescale the prompt")
    return c._out(got, p)
