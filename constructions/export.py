"""Export to TransformerLens (optional extra ``[tl]``: ``transformer-lens>=2,<5``).

``to_transformer_lens(c)`` returns, in ``c``'s dtype and on its device, a model whose blocks hold
the construction's weights, loaded with a strict ``load_state_dict``:

* **TransformerLens 2.x and 3.x**: a ``HookedTransformer`` (bidirectional attention, no attention
  scale). The toolkit already uses its names and shapes (``W_Q [H, D, E]``, ``W_O [H, E, D]``,
  ``W_in [D, F]``, ...).
* **TransformerLens 4.x**, which removed ``HookedTransformer``: a ``TransformerBridge`` around
  TransformerLens's own native model (``TransformerBridge.boot_native``, no HuggingFace model),
  with the same hook names. Its weights are ``nn.Linear`` matrices, so ``blocks.{l}.attn.q.weight``
  is ``W_Q`` with heads concatenated, transposed to ``[H·E, D]`` (likewise ``k``, ``v``;
  ``o.weight`` is ``W_O`` as ``[D, H·E]``; ``mlp.in.weight`` is ``W_inᵀ``).

In both, heads, head width and MLP width are zero-padded to the largest block, biases other than
the MLP's are 0, and the token and position embeddings and the unembedding are unused zeros.

**The attention is built in.**  TransformerLens attention is softmax over all tokens; the
toolkit's attention (its divisor n or each row's key count, its query mask, linear, ReLU and exp
kinds, causal, strictly causal and self-only masks, and the null logit) is applied by *permanent* hooks on every ``blocks.{l}.attn.hook_pattern``, from the
raw scores ``q·k`` (read at ``hook_attn_scores`` in 3.x; computed from ``hook_q`` and ``hook_k``
in 4.x, whose native attention fires its score hook only after the pattern).  An MLP that reads
``LayerNorm(h)`` gets it from the model's parameter-free ``LNPre`` (3.x; the other blocks'
normalisations are bypassed by permanent hooks) or from a permanent hook on ``ln2.hook_out``
computing it in ``c``'s dtype (4.x, whose native ``LNPre`` rounds through float32).  The
attention needs to know how many tokens are keys and the divisor, which a bare call cannot
tell, so the model **refuses a bare call** (``model(h, start_at_layer=0)`` raises
:class:`ConstructionError`) and computes the construction's function inside
``with prompt(model, n_keys, norm):``.  :func:`predict` does all of it: ``c.prepare`` and
``c.embed`` the prompt, run the model's blocks from ``start_at_layer=0`` inside :func:`prompt`,
read the residual stream after the last block (:func:`residual`), then the readout slot of the
query tokens with its sign, and so reproduce ``c.predict``.  Other hooks (``run_with_hooks``,
``run_with_cache``) work as usual inside :func:`prompt`.

Refused: blocks with different MLP activations, and LayerNorm MLPs with different epsilons
(one TransformerLens config holds one of each).
"""
from __future__ import annotations

import contextlib

import torch

from . import parts
from .errors import ConstructionError
from .spec import attention_pattern, hidden_keys, key_count


def _major() -> int:
    """The installed TransformerLens major version."""
    from importlib import metadata

    try:
        import transformer_lens  # noqa: F401

        return int(metadata.version("transformer-lens").split(".")[0])
    except (ImportError, ValueError) as e:  # metadata.PackageNotFoundError is an ImportError
        raise ConstructionError("to_transformer_lens needs transformer-lens 2, 3 or 4 "
                                "(pip install 'icl-constructions[tl]')") from e


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
    """A ``HookedTransformer`` (TransformerLens < 4) or a native ``TransformerBridge``
    (TransformerLens 4) carrying construction ``c``'s weights and attention (module
    docstring), in ``c``'s dtype and on its device."""
    act, ln_eps = _check(c)
    n_ctx = parts.positive_int(n_ctx, "n_ctx")
    major = _major()
    attn = [b.attn for b in c.blocks if b.attn is not None]
    sizes = dict(n_layers=len(c.blocks), d_model=c.layout.width, d_head=max((a.W_Q.shape[2] for a in attn), default=1),
                 n_heads=max((a.heads for a in attn), default=1), d_vocab=1, n_ctx=n_ctx, act_fn=act,
                 d_mlp=max((b.mlp.W_in.shape[1] for b in c.blocks if b.mlp is not None), default=1),
                 attention_dir="bidirectional", positional_embedding_type="standard", dtype=c.dtype)
    model, state = (_hooked if major < 4 else _bridge)(c, sizes, ln_eps)
    model.load_state_dict(state, strict=True)
    model.eval()
    model.icl_prompt = None  # (n_keys, norm) inside prompt(); None refuses a call
    model.icl_construction, model.icl_params, model.icl_major = c.name, c.params, major
    for name, fn in _builtin_hooks(model, c, ln_eps, major):
        model.add_hook(name, fn, is_permanent=True)
    return model


def _zeros(model) -> dict:
    """The model's state dict with its parameters zeroed (TransformerLens's own buffers kept)."""
    return {k: v if k.endswith(("attn.mask", "attn.IGNORE")) else torch.zeros_like(v)
            for k, v in model.state_dict().items()}


def _hooked(c, sizes: dict, ln_eps):
    """TransformerLens 2.x/3.x: a ``HookedTransformer`` and its state dict of ``c``'s weights."""
    from transformer_lens import HookedTransformer, HookedTransformerConfig

    cfg = HookedTransformerConfig(**sizes, normalization_type=None if ln_eps is None else "LNPre",
                                  eps=1e-5 if ln_eps is None else ln_eps, use_attn_scale=False,
                                  default_prepend_bos=False, device=str(c.device))
    model = HookedTransformer(cfg)
    state = _zeros(model)
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
    return model, state


def _bridge(c, sizes: dict, ln_eps):
    """TransformerLens 4.x: a ``TransformerBridge`` around the native model, and its state dict of
    ``c``'s weights (``nn.Linear`` layout: ``weight[out, in]``, heads concatenated)."""
    from transformer_lens import TransformerBridge
    from transformer_lens.config import TransformerBridgeConfig
    import transformer_lens.model_bridge.sources.native  # noqa: F401  (registers boot_native)

    H, E, D = sizes["n_heads"], sizes["d_head"], sizes["d_model"]
    cfg = TransformerBridgeConfig(**sizes, normalization_type=None, seed=0)
    model = TransformerBridge.boot_native(cfg, device=str(c.device), dtype=c.dtype)
    state = _zeros(model)
    as_t = lambda a: torch.as_tensor(a, dtype=c.dtype, device=c.device)  # noqa: E731
    for layer, b in enumerate(c.blocks):
        p = f"blocks.{layer}."
        if b.attn is not None:
            h, e = b.attn.heads, b.attn.W_Q.shape[2]
            for name, key in (("W_Q", "q"), ("W_K", "k"), ("W_V", "v")):  # [h, D, e] -> rows h·E + e
                state[p + f"attn.{key}.weight"].view(H, E, D)[:h, :e, :] = as_t(getattr(b.attn, name)).transpose(1, 2)
            state[p + "attn.o.weight"].view(D, H, E)[:, :h, :e] = as_t(b.attn.W_O).permute(2, 0, 1)
        if b.mlp is not None:
            f = b.mlp.W_in.shape[1]
            state[p + "mlp.in.weight"][:f, :] = as_t(b.mlp.W_in).T
            state[p + "mlp.in.bias"][:f] = as_t(b.mlp.b_in)
            state[p + "mlp.out.weight"][:, :f] = as_t(b.mlp.W_out).T
            state[p + "mlp.out.bias"][:] = as_t(b.mlp.b_out)
    return model, state


@contextlib.contextmanager
def prompt(model, n_keys: int, norm: int):
    """Run the exported ``model`` on streams whose first ``n_keys`` tokens are the keys (context
    and any extra tokens; ``c.n_keys(n)``) with attention divisor ``norm`` (the number of
    examples n)::

        with export.prompt(model, c.n_keys(n), n):
            out = export.residual(model, c.embed(c.prepare(X, y, Xq)), len(c.blocks))
    """
    if getattr(model, "icl_construction", None) is None:
        raise ConstructionError("prompt() needs a model from constructions.export.to_transformer_lens")
    n_keys, norm = parts.positive_int(n_keys, "n_keys"), parts.positive_int(norm, "norm")
    old, model.icl_prompt = model.icl_prompt, (n_keys, norm)
    try:
        yield model
    finally:
        model.icl_prompt = old


def _builtin_hooks(model, c, ln_eps, major: int) -> list:
    """The permanent hooks that make the TransformerLens model compute ``c``'s blocks: each
    attention block's pattern from its raw scores (the toolkit's kind, query mask, divisor,
    causal mask and null logit), and the LayerNorm of the MLPs that read one (3.x: the raw
    stream for every other normalisation; 4.x: ``LayerNorm(h)`` in ``c``'s dtype)."""
    saved: dict = {}
    hooks = []

    def context():
        if model.icl_prompt is None:
            raise ConstructionError(
                f"this TransformerLens model of {model.icl_construction} needs the prompt's key count and divisor, "
                "which a bare call cannot tell: use constructions.export.predict(model, c, X, y, Xq), or call it "
                "inside `with constructions.export.prompt(model, c.n_keys(n), n):`")
        return model.icl_prompt

    def keep(x, hook, key):
        context()
        saved[key] = x
        return x

    for layer, b in enumerate(c.blocks):
        p = f"blocks.{layer}."

        def pattern(pat, hook, layer=layer, a=b.attn):
            if major < 4:
                s = saved.pop((layer, "scores"))
            else:  # [B, pos, H, E] each; the native attention's score hook fires after the pattern
                s = torch.einsum("bqhe,bkhe->bhqk", saved.pop((layer, "q")), saved.pop((layer, "k")))
            n_keys, norm = context()
            if a is None:  # a block without attention: its zero weights give zero output
                return pat
            if n_keys > s.shape[-1]:
                raise ConstructionError(f"prompt(model, n_keys={n_keys}, ...) names more key tokens than the stream "
                                        f"has ({s.shape[-1]}); pass c.n_keys(n) for a prompt of n examples")
            keys = key_count(a.causal, n_keys, s.shape[-1], c.mask_query)
            s = s[..., :keys]
            new = attention_pattern(a.kind, s, norm, a.null_score, hidden_keys(a.causal, s.shape[-2], keys, s.device),
                                    a.divisor)
            return torch.nn.functional.pad(new, (0, pat.shape[-1] - keys))

        if major < 4:
            hooks += [(p + "attn.hook_attn_scores", lambda x, hook, k=(layer, "scores"): keep(x, hook, k))]
        else:
            hooks += [(p + "attn.hook_q", lambda x, hook, k=(layer, "q"): keep(x, hook, k)),
                      (p + "attn.hook_k", lambda x, hook, k=(layer, "k"): keep(x, hook, k))]
        hooks += [(p + "attn.hook_pattern", pattern)]
        reads_ln = b.mlp is not None and b.mlp.layernorm
        if ln_eps is not None and major < 4:
            hooks += [(p + "hook_resid_pre", lambda x, hook, k=(layer, 1): keep(x, hook, k)),
                      (p + "ln1.hook_normalized", lambda x, hook, k=(layer, 1): saved[k])]
            if not reads_ln:
                hooks += [(p + "hook_resid_mid", lambda x, hook, k=(layer, 2): keep(x, hook, k)),
                          (p + "ln2.hook_normalized", lambda x, hook, k=(layer, 2): saved[k])]
        elif reads_ln:  # 4.x: ln2 is the identity; the MLP's input becomes LayerNorm(h) here
            hooks += [(p + "ln2.hook_out",
                       lambda x, hook: torch.nn.functional.layer_norm(x, x.shape[-1:], eps=ln_eps))]
    return hooks


def residual(model, h, stop: int):
    """The residual stream after block ``stop - 1`` of the exported ``model`` run on stream ``h``
    from block 0 (call it inside :func:`prompt`); the same call for every TransformerLens
    version (4.x's bridge returns logits at ``stop_at_layer = n_layers``)."""
    stop = parts.positive_int(stop, "stop")
    layers = getattr(getattr(model, "cfg", None), "n_layers", None)
    if getattr(model, "icl_construction", None) is None or stop > layers:
        raise ConstructionError(f"residual(model, h, stop={stop}) needs a model from constructions.export."
                                f"to_transformer_lens and 1 <= stop <= its number of blocks ({layers})")
    out = {}

    def save(x, hook):
        out["h"] = x
        return x

    model.run_with_hooks(h, start_at_layer=0, stop_at_layer=stop,
                         fwd_hooks=[(f"blocks.{stop - 1}.hook_resid_post", save)])
    return out["h"]


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
        out = residual(model, c.embed(p), len(c.blocks))
    got = c.read(out, c.n_keys(n))
    if check and not parts.all_finite(got):
        raise ConstructionError(f"the exported {c.name} model's forward pass overflowed; rescale the prompt")
    return c._out(got, p)
