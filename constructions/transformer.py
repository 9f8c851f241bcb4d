"""The toolkit's one transformer: attention blocks + optional MLP, residual stream (torch modules).

Shapes (fixed for the whole package):

* B batch, n context examples, m queries, T = n + m tokens, D residual width,
  H heads, E head width (``d_head``), F MLP width, L layers, S key tokens.
* The residual stream is ``[B, T, D]``; the first n tokens are the context,
  the last m are the queries.

Parameters are plain data first (:mod:`constructions.spec`) and are then copied into a
:class:`Transformer` (a ``torch.nn.Module``).  There is no training code here.

One block computes, for every token i (residual h_i)::

    h_i <- h_i + sum_h W_O[h]^T z_{h,i},       z_{h,i} = sum_j pattern_h[i, j] v_{h,j}
    h_i <- h_i + W_out^T act(W_in^T h_i + b_in) + b_out         (if the block has an MLP)

with q = h W_Q, k = h W_K, v = h W_V, scores ``q_i . k_j`` and the pattern of the attention
kind (:func:`constructions.spec.attention_pattern`: linear ``s/n``, ReLU ``relu(s)/n``,
softmax).  Options: a mask ``causal`` (keys j <= i, Akyurek et al.'s decoder in
:mod:`constructions.raw`; ``"strict"``, keys j < i; ``"self"``, the token itself only, which sees
its own token even when queries are masked out of the keys: :func:`constructions.spec.hidden_keys`)
and ``divisor="keys"`` (each row divided by the number of keys it sees, Bai et al.'s decoder);
``null_score`` adds one softmax logit with value 0 ("attend to nothing"); an MLP with
``layernorm`` reads ``LayerNorm(h)`` (no affine).

The keys j run over the n context tokens only (``mask_query=True``, the default): query
tokens never act as keys or values.  With ``mask_query=False`` every token is a key (the
negative control ``vonoswald23-mask``, docs/pitfalls.md #2); the divisor of linear/ReLU
attention stays n, the number of context examples.  A construction may add fixed *extra key
tokens* after the context (e.g. ridge's ``sqrt(n lam) e_k`` tokens): then ``n_context``
counts them as keys and ``norm`` (the divisor) stays the number of examples.

How it is evaluated fast (folded order, padded width, the no-hook pass in chunks):
:mod:`constructions.fastpath`.  The plain numpy pass of the same equations:
:mod:`constructions.numpy_pass`.

Hook points (the public way to read and change intermediate values), for block l:
``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_attn_out``, ``blocks.{l}.hook_resid_mid``,
``blocks.{l}.hook_mlp_out``, ``blocks.{l}.hook_resid_post`` (``[B, T, D]``), and per head,
as TransformerLens names them, ``blocks.{l}.attn.hook_attn_scores`` and
``blocks.{l}.attn.hook_pattern`` (``[B, H, T, S]``; the pattern as applied: ``s/n`` for
linear, ``relu(s)/n`` for ReLU attention) and ``blocks.{l}.attn.hook_z`` (``[B, T, H, E]``).
The per-head points exist when ``heads=True`` or when a hook names one of them; the block is
then evaluated head by head, scores first.
"""
from __future__ import annotations

import numpy as np
import torch
from torch import nn

from . import fastpath
from .errors import ConstructionError
from .fastpath import CHUNK_BYTES, PADDING
from .spec import AttentionSpec, BlockSpec, MLPSpec, attention_pattern, hidden_keys, key_count

#: per-head hook points of an attention block (``blocks.{l}.attn.<name>``)
HEAD_POINTS = ("hook_attn_scores", "hook_pattern", "hook_z")


def _param(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float64)), requires_grad=False)


#: how many (padding, divisor, order) variants of a block's maps :func:`_memo` keeps
MEMO_SIZE = 4


def _memo(module: nn.Module, params: tuple, key: tuple, compute) -> dict:
    """``compute(*key)``, the padded maps of a block, memoised on ``module`` for repeated calls.
    A memo entry keeps a copy of the parameters it was computed from and is used only while
    every parameter is still *equal* to its copy (``torch.equal``: same dtype, device, shape and
    values), so a weight changed in place, through ``.data``, by ``load_state_dict`` or by
    ``.to()`` is never read stale; the check costs one comparison per parameter instead of the
    products and paddings.  Nothing is memoised while autograd tracks a parameter."""
    if torch.is_grad_enabled() and any(p.requires_grad for p in params):
        return compute(*key)
    memo = module.__dict__.setdefault("_maps_memo", {})
    hit = memo.get(key)
    if hit is not None and all(a.dtype == b.dtype and a.device == b.device and torch.equal(a, b)
                               for a, b in zip(hit[0], params)):
        return hit[1]
    maps = compute(*key)
    if len(memo) >= MEMO_SIZE:
        memo.pop(next(iter(memo)))
    memo[key] = (tuple(p.detach().clone() for p in params), maps)
    return maps


class Attention(nn.Module):
    def __init__(self, spec: AttentionSpec):
        super().__init__()
        self.kind, self.causal, self.null_score, self.divisor = spec.kind, spec.causal, spec.null_score, spec.divisor
        self.W_Q, self.W_K, self.W_V, self.W_O = (_param(getattr(spec, k)) for k in ("W_Q", "W_K", "W_V", "W_O"))

    def folded(self, T: int, S: int) -> bool:
        """Whether :meth:`forward` folds by default (:func:`constructions.fastpath.use_folded`)."""
        return fastpath.use_folded(self, T, S)

    def cost(self, T: int, S: int) -> int:
        return fastpath.per_head_cost(self, T, S)

    def folded_cost(self, T: int, S: int) -> int:
        return fastpath.folded_cost(self, T, S)

    def flops(self, T: int, S: int) -> int:
        return fastpath.attention_flops(self, T, S)

    def weights(self, pad: int, norm: int, folded: bool) -> dict:
        """The maps :meth:`forward` multiplies by, with ``pad`` zero rows/columns for a padded
        stream: folded, ``QK [H, Dp, Dp]`` (with the 1/norm) and ``OV [H, Dp, Dp]``; per head,
        all heads side by side, ``W_Q, W_K, W_V [Dp, H E]`` and ``W_O [H E, Dp]``
        (memoised: :func:`_memo`)."""
        return _memo(self, (self.W_Q, self.W_K, self.W_V, self.W_O), (pad, norm, folded), self._weights)

    def _weights(self, pad: int, norm: int, folded: bool) -> dict:
        H, D, E = self.W_Q.shape
        p = fastpath.pad
        if folded:
            return dict(QK=p(self.W_Q @ self.W_K.transpose(1, 2) / norm, pad, pad), OV=p(self.W_V @ self.W_O, pad, pad))
        cat = lambda W: p(W.permute(1, 0, 2).reshape(D, H * E), pad, 0)  # noqa: E731
        return dict(W_Q=cat(self.W_Q), W_K=cat(self.W_K), W_V=cat(self.W_V), W_O=p(self.W_O.reshape(H * E, D), 0, pad))

    def forward(self, h: torch.Tensor, n_context: int, mask_query: bool = True, norm: int | None = None,
                weights: dict | None = None, scratch: dict | None = None, point=None,
                order: str | None = None) -> torch.Tensor:
        """Attention output ``[B, T, Dp]`` for a stream ``h [B, T, Dp]`` whose last ``Dp - D``
        columns are zero padding (:data:`constructions.fastpath.PADDING`); the output's padding
        columns are zero.  ``weights``: :meth:`weights` computed once for many calls (else
        computed here; the folded maps for the folded order, the per-head maps otherwise).
        ``scratch``: preallocated outputs ``G, A, P, M [B, Dp, Dp]``, ``Z [B, T, Dp]`` for the
        folded order (no autograd): the same kernels, so the same bits, without allocations.
        ``point(name, tensor) -> tensor``: evaluate head by head, scores first, and pass the
        per-head values through it (:data:`HEAD_POINTS`).  ``order``: the evaluation order
        (:data:`constructions.fastpath.ORDERS`; default: :func:`constructions.fastpath.order_of`)."""
        keys = h[:, :key_count(self.causal, n_context, h.shape[1], mask_query)]
        norm = n_context if norm is None else norm
        H, D, E = self.W_Q.shape
        B, T, S = h.shape[0], h.shape[1], keys.shape[1]
        order = "scores" if point is not None else (order or fastpath.order_of(self, T, S))
        folded = order == "folded"
        w = self.weights(h.shape[-1] - D, norm, folded) if weights is None else weights
        if folded:
            # folded circuits: h (sum_h (QK_h / n) (keys^T keys) OV_h), the same sums reassociated;
            # D x D GEMMs run faster than the per-head skinny ones (docs/performance.md)
            mm = (lambda a, b, name: a @ b) if scratch is None else (lambda a, b, name: torch.matmul(a, b, out=scratch[name]))
            G = mm(keys.transpose(1, 2), keys, "G")
            M = mm(mm(w["QK"][0], G, "A"), w["OV"][0], "M")
            for i in range(1, H):  # a loop over heads: broadcasting all heads at once copies G
                P = mm(mm(w["QK"][i], G, "A"), w["OV"][i], "P")
                M = M + P if scratch is None else M.add_(P)
            return mm(h, M, "Z")
        # all heads in one GEMM each: [Dp, H E] maps (the same sums as the per-head einsums)
        q = (h @ w["W_Q"]).view(B, T, H, E)
        k = (keys @ w["W_K"]).view(B, S, H, E)
        v = (keys @ w["W_V"]).view(B, S, H, E)
        # batched matmuls over [B, H] on transposed views: the GEMMs torch.einsum calls, without its
        # per-call parsing, which dominates at small sizes (docs/performance.md, "Small calls")
        if order == "kv":
            # (K^T V) first: O(n E^2) instead of O(n T E); the same sum in exact arithmetic.
            kv = (k.permute(0, 2, 3, 1) @ v.transpose(1, 2)) / norm  # [B, H, E, E]
            z = (q.transpose(1, 2) @ kv).transpose(1, 2)  # [B, T, H, E]
        else:
            point = point or (lambda name, x: x)
            scores = point("hook_attn_scores", q.transpose(1, 2) @ k.permute(0, 2, 3, 1))  # [B, H, T, S]
            future = hidden_keys(self.causal, T, S, h.device)
            pattern = point("hook_pattern", attention_pattern(self.kind, scores, norm, self.null_score, future,
                                                              self.divisor))
            z = point("hook_z", (pattern @ v.transpose(1, 2)).transpose(1, 2))  # [B, T, H, E]
        return z.reshape(B, T, H * E) @ w["W_O"]


class MLP(nn.Module):
    def __init__(self, spec: MLPSpec):
        super().__init__()
        self.act, self.layernorm, self.ln_eps = spec.act, spec.layernorm, spec.ln_eps
        self.W_in, self.b_in, self.W_out, self.b_out = (_param(getattr(spec, k)) for k in ("W_in", "b_in", "W_out", "b_out"))

    def weights(self, pad: int) -> dict:
        """``W_in [Dp, F]`` (unpadded under LayerNorm, which reads the D real columns), ``b_in``,
        ``W_out [F, Dp]``, ``b_out [Dp]`` for a stream with ``pad`` zero columns (memoised:
        :func:`_memo`)."""
        return _memo(self, (self.W_in, self.b_in, self.W_out, self.b_out), (pad,), self._weights)

    def _weights(self, pad: int) -> dict:
        p = fastpath.pad
        return dict(W_in=self.W_in if self.layernorm else p(self.W_in, pad, 0), b_in=self.b_in,
                    W_out=p(self.W_out, 0, pad), b_out=p(self.b_out, 0, pad))

    def forward(self, h: torch.Tensor, weights: dict | None = None) -> torch.Tensor:
        """MLP output ``[B, T, Dp]`` for a zero-padded stream ``h [B, T, Dp]`` (as in :class:`Attention`)."""
        D = self.W_in.shape[0]
        w = self.weights(h.shape[-1] - D) if weights is None else weights
        if self.layernorm:  # normalise over the D real columns only
            h = torch.nn.functional.layer_norm(h[..., :D], (D,), eps=self.ln_eps)
        post = h @ w["W_in"] + w["b_in"]
        post = torch.relu(post) if self.act == "relu" else torch.nn.functional.gelu(post)
        return post @ w["W_out"] + w["b_out"]


class Block(nn.Module):
    def __init__(self, spec: BlockSpec):
        super().__init__()
        self.attn = Attention(spec.attn) if spec.attn is not None else None
        self.mlp = MLP(spec.mlp) if spec.mlp is not None else None


class Transformer(nn.Module):
    """L blocks of (attention, optional MLP) with residual connections."""

    def __init__(self, blocks: list[BlockSpec], mask_query: bool = True):
        super().__init__()
        if not blocks:
            raise ConstructionError("a transformer needs at least one block")
        widths = {b.attn.W_Q.shape[1] for b in blocks if b.attn is not None}
        widths |= {b.mlp.W_in.shape[0] for b in blocks if b.mlp is not None}
        if len(widths) != 1:
            raise ConstructionError(f"all blocks must share one residual width, got {sorted(widths)}")
        self.width = widths.pop()
        self.blocks = nn.ModuleList(Block(b) for b in blocks)
        self.mask_query = mask_query
        #: on CPU the batch runs in chunks whose padded stream takes about this many bytes
        #: (cache-sized; measured by ``icl-verify bench``, docs/performance.md)
        self.chunk_bytes = CHUNK_BYTES
        self.padding = {k: dict(v) for k, v in PADDING.items()}
        #: force one evaluation order of the attention blocks that admit it (None: the fastest;
        #: :func:`constructions.fastpath.order_of`); the claims force each order on a share of prompts
        self.order: str | None = None

    @property
    def first_parameter(self) -> nn.Parameter:
        """``next(self.parameters())`` without the walk over the modules (the model's dtype and
        device, asked for on every call)."""
        for b in self.blocks:  # the first block that has one (a block may have neither attention nor MLP)
            if b.attn is not None:
                return b.attn.W_Q
            if b.mlp is not None:
                return b.mlp.W_in
        raise ConstructionError("the model has no parameters: every block lacks both attention and MLP")

    def converted(self, dtype: torch.dtype | None = None, device=None) -> "Transformer":
        """A copy of this model whose parameters are converted to ``dtype`` / moved to ``device``
        (``copy.deepcopy(model).to(dtype, device)`` without deepcopy's walk over every module's
        attributes: each module is copied with its own dicts, each parameter converted once;
        parameters shared between modules stay shared, and no memoised map (:func:`_memo`) is
        carried over).  4-5x faster on a deep model (docs/performance.md, "Copying a model")."""
        params: dict = {}

        def conv(p):
            if id(p) not in params:
                t = p.detach().to(device=device, dtype=dtype if p.is_floating_point() else None, copy=True)
                params[id(p)] = nn.Parameter(t, requires_grad=p.requires_grad) if isinstance(p, nn.Parameter) else t
            return params[id(p)]

        def copy_module(m: nn.Module) -> nn.Module:
            new = m.__class__.__new__(m.__class__)  # copy.copy without its __reduce_ex__ round trip
            d = new.__dict__
            d.update(m.__dict__)  # the same values: the containers among them are copied below
            d.pop("_maps_memo", None)
            for k, v in d.items():
                if isinstance(v, (dict, set, list)):
                    d[k] = v.copy()  # hook tables, the non-persistent buffer set: the copy's own (an OrderedDict stays one)
            d["_parameters"] = {k: None if q is None else conv(q) for k, q in m._parameters.items()}
            d["_buffers"] = {k: None if b is None else conv(b) for k, b in m._buffers.items()}
            d["_modules"] = {k: None if c is None else copy_module(c) for k, c in m._modules.items()}
            return new

        new = copy_module(self)
        new.padding = {k: dict(v) for k, v in self.padding.items()}
        return new

    def compute_width(self, h: torch.Tensor) -> int:
        """The width Dp >= D the forward pass computes in for ``h`` (:data:`PADDING`)."""
        return fastpath.compute_width(self.width, h, self.padding)

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def forward(self, h: torch.Tensor, n_context: int, cache: dict | None = None, hooks: dict | None = None,
                start: int = 0, stop: int | None = None, norm: int | None = None, heads: bool = False):
        """Run blocks ``start..stop-1`` (default: all) on the residual stream ``h [B, T, D]``;
        ``n_context`` tokens are keys (with the query mask), ``norm`` is the attention's divisor
        (default ``n_context``).

        ``cache``: a dict that receives every hook point's tensor.
        ``hooks``: ``{name: fn(tensor) -> tensor or None}``; a returned tensor
        replaces the value at that point (interventions).
        ``heads``: compute the per-head hook points of every attention block (module docstring).
        """
        if h.ndim != 3 or h.shape[-1] != self.width:
            raise ConstructionError(f"residual stream must be [B, T, {self.width}], got {tuple(h.shape)}")
        if not 1 <= n_context <= h.shape[1]:
            raise ConstructionError(f"n_context must be in [1, T={h.shape[1]}], got {n_context}")
        w = self.first_parameter
        if h.dtype != w.dtype or h.device != w.device:
            raise ConstructionError(f"residual stream is {h.dtype} on {h.device} but the model is {w.dtype} on "
                                    f"{w.device}: convert the stream, or the model with .to(dtype, device)")
        with fastpath.threads_for(self, h, n_context):  # small passes on one thread (fastpath.THREAD_MIN_FLOPS)
            return self._run(h, n_context, cache, hooks, start, stop, norm, heads)

    def _run(self, h, n_context, cache, hooks, start, stop, norm, heads):
        D, Dp = self.width, self.compute_width(h)
        T = h.shape[1]
        S = n_context if self.mask_query else T
        norm = n_context if norm is None else norm
        stop = self.n_layers if stop is None else stop
        layers = range(start, stop)
        blocks = [self.blocks[l] for l in layers]
        hooks = hooks or {}
        per_head = [b.attn is not None and (heads or bool(hooks) and any(f"blocks.{l}.attn.{p}" in hooks
                                                                          for p in HEAD_POINTS))
                    for l, b in zip(layers, blocks)]
        orders = [None if b.attn is None else "scores" if ph else fastpath.order_of(b.attn, T, S, self.order)
                  for b, ph in zip(blocks, per_head)]
        # the padded maps, once per call (not per chunk)
        weights = [(b.attn.weights(Dp - D, norm, o == "folded") if b.attn is not None else None,
                    b.mlp.weights(Dp - D) if b.mlp is not None else None) for b, o in zip(blocks, orders)]

        if cache is None and not hooks and not any(per_head) and not (torch.is_grad_enabled() and (
                h.requires_grad or any(q.requires_grad for q in self.parameters()))):
            return fastpath.fast_forward(h, n_context, norm, blocks, weights, orders, Dp, self.mask_query,
                                         self.chunk_bytes)

        def point(name, x, real=D):  # hooks and the cache see the D real columns
            if name in hooks:
                out = hooks[name](x[..., :real])
                x = x if out is None else fastpath.pad(out, 0, x.shape[-1] - real)
            if cache is not None:
                cache[name] = x[..., :real]
            return x

        h = fastpath.pad(h, 0, Dp - D)
        for l, block, (wa, wm), ph, order in zip(layers, blocks, weights, per_head, orders):
            p = f"blocks.{l}."
            h = point(p + "hook_resid_pre", h)
            if block.attn is not None:
                head_point = (lambda name, x, p=p: point(p + "attn." + name, x, x.shape[-1])) if ph else None
                h = h + point(p + "hook_attn_out", block.attn(h, n_context, self.mask_query, norm, wa, point=head_point,
                                                              order=order))
            h = point(p + "hook_resid_mid", h)
            if block.mlp is not None:
                h = h + point(p + "hook_mlp_out", block.mlp(h, wm))
            h = point(p + "hook_resid_post", h)
        return h[..., :D]

    def fast_pass_bytes(self, h: torch.Tensor, n_context: int) -> int:
        """Bytes the no-hook forward pass allocates (:func:`constructions.fastpath.fast_pass_bytes`)."""
        return fastpath.fast_pass_bytes(self, h, n_context)

    def residuals(self, h: torch.Tensor, n_context: int, stop: int | None = None, norm: int | None = None) -> torch.Tensor:
        """Residual streams ``[stop+1, B, T, D]``: the input, then after each of the first
        ``stop`` blocks (default: all)."""
        stop = self.n_layers if stop is None else stop
        cache: dict = {}
        self.forward(h, n_context, cache=cache, stop=stop, norm=norm)
        return torch.stack([h] + [cache[f"blocks.{l}.hook_resid_post"] for l in range(stop)])

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())
