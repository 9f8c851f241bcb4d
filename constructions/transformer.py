"""The toolkit's one transformer: attention blocks + optional MLP, residual stream.

Shapes (fixed for the whole package):

* B batch, n context examples, m queries, T = n + m tokens, D residual width,
  H heads, E head width (``d_head``), F MLP width, L layers.
* The residual stream is ``[B, T, D]``; the first n tokens are the context,
  the last m are the queries.

Parameters are plain data first (:class:`AttentionSpec`, :class:`MLPSpec`,
:class:`BlockSpec`, float64 numpy arrays in TransformerLens naming
``W_Q [H, D, E]``, ``W_K [H, D, E]``, ``W_V [H, D, E]``, ``W_O [H, E, D]``,
``W_in [D, F]``, ``b_in [F]``, ``W_out [F, D]``, ``b_out [D]``) and are then
copied into a :class:`Transformer` (a ``torch.nn.Module``).  There is no
training code and no LayerNorm here.

One block computes, for every token i (residual h_i)::

    h_i <- h_i + sum_h W_O[h]^T z_{h,i},       z_{h,i} = A(q_{h,i}, {k_{h,j}, v_{h,j}})
    h_i <- h_i + W_out^T act(W_in^T h_i + b_in) + b_out         (if the block has an MLP)

with q = h W_Q, k = h W_K, v = h W_V and the attention kind A:

* ``linear``:  z_i = (1/n) sum_j (q_i . k_j) v_j
* ``relu``:    z_i = (1/n) sum_j relu(q_i . k_j) v_j
* ``softmax``: z_i = sum_j softmax_j(q_i . k_j) v_j   (no 1/sqrt(E): put any scale in W_Q)

Options (Akyurek et al.'s decoder, :mod:`constructions.raw`): ``causal`` attention
(keys j <= i); ``null_score`` adds one softmax logit with value 0 ("attend to
nothing"); an MLP with ``layernorm`` reads ``LayerNorm(h)`` (no affine).

The keys j run over the n context tokens only (``mask_query=True``, the
default): query tokens never act as keys or values.  With ``mask_query=False``
every token is a key (kept for the negative control of claims.md sec. 11.2);
the divisor of linear/relu attention stays n, the number of context examples.
A construction may add fixed *extra key tokens* after the context (e.g. ridge's
``sqrt(n lam) e_k`` tokens): then ``n_context`` counts them as keys and
``norm`` (the divisor) stays the number of examples.

How it is evaluated (docs/performance.md).  The weights are folded and zero-padded once
per call (:meth:`Attention.weights`).  On CPU the stream is computed at a padded width Dp >= D
where MKL's small GEMMs run faster (:data:`PADDING`); the padding columns hold exact zeros,
so hooks, the cache and the output see the same D columns.  Without hooks, cache or autograd
the pass runs on preallocated buffers in cache-sized chunks of the batch (:data:`CHUNK_BYTES`).
That pass and the hooked pass give the same bits on the same batch.  A prompt's result may
change in its last bits with the batch (or chunk) it runs in, since MKL picks kernels by
matrix size; the tolerance model covers that (tests/test_fast_path.py).

Hook points (the public way to read intermediate values), for block l:
``blocks.{l}.hook_resid_pre``, ``blocks.{l}.hook_attn_out``,
``blocks.{l}.hook_resid_mid``, ``blocks.{l}.hook_mlp_out``,
``blocks.{l}.hook_resid_post``.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from .errors import ConstructionError

ATTENTION_KINDS = ("linear", "relu", "softmax")
#: the no-hook pass runs the batch in chunks of about this many bytes of padded stream
#: (cache-sized: ``python benchmarks/tuning.py --only chunks``, docs/performance.md)
CHUNK_BYTES = 2**21
#: on CPU the stream is zero-padded inside the forward pass, per dtype, to ``multiple`` when
#: that grows the D x D GEMMs' FLOPs, (Dp/D)^2, by at most ``max_growth``: MKL's batched
#: GEMMs run up to 2x faster at these widths (``python benchmarks/tuning.py``,
#: docs/performance.md).  Padding adds exact zeros only; hooks, the cache and the output
#: see the D real columns.
PADDING = {torch.float64: dict(multiple=24, max_growth=1.35), torch.float32: dict(multiple=8, max_growth=1.25)}
ACTIVATIONS = ("relu", "gelu")


@dataclass
class AttentionSpec:
    kind: str
    W_Q: np.ndarray  # [H, D, E]
    W_K: np.ndarray  # [H, D, E]
    W_V: np.ndarray  # [H, D, E]
    W_O: np.ndarray  # [H, E, D]
    causal: bool = False  # token i attends to keys j <= i only
    null_score: float | None = None  # softmax only: an extra logit with value 0 ("attend to nothing")

    def __post_init__(self):
        if self.kind not in ATTENTION_KINDS:
            raise ConstructionError(f"attention kind must be one of {ATTENTION_KINDS}, got {self.kind!r}")
        if self.null_score is not None and self.kind != "softmax":
            raise ConstructionError("null_score (attend to nothing) needs softmax attention")
        for k in ("W_Q", "W_K", "W_V", "W_O"):
            setattr(self, k, np.asarray(getattr(self, k), dtype=np.float64))
        H, D, E = self.W_Q.shape
        want = {"W_K": (H, D, E), "W_V": (H, D, E), "W_O": (H, E, D)}
        for k, shape in want.items():
            if getattr(self, k).shape != shape:
                raise ConstructionError(f"{k} has shape {getattr(self, k).shape}, expected {shape}")

    @property
    def heads(self) -> int:
        return self.W_Q.shape[0]

    @classmethod
    def from_heads(cls, kind: str, heads: list[dict], **options) -> "AttentionSpec":
        """Stack heads given as dicts of ``W_Q [D,e], W_K [D,e], W_V [D,e'], W_O [e',D]``,
        zero-padding every head to the common width E = max(e, e')."""
        E = max(max(h["W_Q"].shape[1], h["W_V"].shape[1]) for h in heads)
        D = heads[0]["W_Q"].shape[0]

        def pad_cols(a):
            return np.pad(a, ((0, 0), (0, E - a.shape[1])))

        return cls(
            kind,
            np.stack([pad_cols(h["W_Q"]) for h in heads]),
            np.stack([pad_cols(h["W_K"]) for h in heads]),
            np.stack([pad_cols(h["W_V"]) for h in heads]),
            np.stack([np.pad(h["W_O"], ((0, E - h["W_O"].shape[0]), (0, 0))) for h in heads]).reshape(
                len(heads), E, D
            ),
            **options,
        )


@dataclass
class MLPSpec:
    act: str
    W_in: np.ndarray  # [D, F]
    b_in: np.ndarray  # [F]
    W_out: np.ndarray  # [F, D]
    b_out: np.ndarray  # [D]
    layernorm: bool = False  # the MLP reads LayerNorm(h) (no affine; variance eps below) instead of h
    ln_eps: float = 0.0

    def __post_init__(self):
        if self.act not in ACTIVATIONS:
            raise ConstructionError(f"MLP activation must be one of {ACTIVATIONS}, got {self.act!r}")
        for k in ("W_in", "b_in", "W_out", "b_out"):
            setattr(self, k, np.asarray(getattr(self, k), dtype=np.float64))
        D, F = self.W_in.shape
        if self.b_in.shape != (F,) or self.W_out.shape != (F, D) or self.b_out.shape != (D,):
            raise ConstructionError("MLP shapes must be W_in [D,F], b_in [F], W_out [F,D], b_out [D]")


@dataclass
class BlockSpec:
    attn: AttentionSpec | None
    mlp: MLPSpec | None = None


def _param(a: np.ndarray) -> nn.Parameter:
    return nn.Parameter(torch.from_numpy(np.array(a, dtype=np.float64)), requires_grad=False)


class Attention(nn.Module):
    def __init__(self, spec: AttentionSpec):
        super().__init__()
        self.kind, self.causal, self.null_score = spec.kind, spec.causal, spec.null_score
        self.W_Q, self.W_K, self.W_V, self.W_O = (_param(getattr(spec, k)) for k in ("W_Q", "W_K", "W_V", "W_O"))

    def folded(self, T: int, S: int) -> bool:
        """Whether :meth:`forward` uses the folded order (linear attention, cheaper in FLOPs)."""
        return self.kind == "linear" and not self.causal and self.folded_cost(T, S) <= FOLD_GAIN * self.cost(T, S)

    def weights(self, pad: int, norm: int, folded: bool) -> dict:
        """The maps :meth:`forward` multiplies by, with ``pad`` zero rows/columns for a padded
        stream: folded, ``QK [H, Dp, Dp]`` (with the 1/norm) and ``OV [H, Dp, Dp]``; per head,
        all heads side by side, ``W_Q, W_K, W_V [Dp, H E]`` and ``W_O [H E, Dp]``."""
        H, D, E = self.W_Q.shape
        if folded:
            return dict(QK=_pad(self.W_Q @ self.W_K.transpose(1, 2) / norm, pad, pad),
                        OV=_pad(self.W_V @ self.W_O, pad, pad))
        cat = lambda W: _pad(W.permute(1, 0, 2).reshape(D, H * E), pad, 0)  # noqa: E731
        return dict(W_Q=cat(self.W_Q), W_K=cat(self.W_K), W_V=cat(self.W_V), W_O=_pad(self.W_O.reshape(H * E, D), 0, pad))

    def forward(self, h: torch.Tensor, n_context: int, mask_query: bool = True, norm: int | None = None,
                weights: dict | None = None, scratch: dict | None = None) -> torch.Tensor:
        """Attention output ``[B, T, Dp]`` for a stream ``h [B, T, Dp]`` whose last ``Dp - D``
        columns are zero padding (:data:`PADDING`); the output's padding columns are zero.
        ``weights``: :meth:`weights` computed once for many calls (else computed here).
        ``scratch``: preallocated outputs ``G, A, P, M [B, Dp, Dp]``, ``Z [B, T, Dp]`` for the
        folded order (no autograd): the same kernels, so the same bits, without allocations."""
        keys = h[:, :n_context] if mask_query else h
        norm = n_context if norm is None else norm
        H, D, E = self.W_Q.shape
        B, T, S = h.shape[0], h.shape[1], keys.shape[1]
        folded = self.folded(T, S)
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
        if self.kind == "linear" and not self.causal:
            # (K^T V) first: O(n E^2) instead of O(n T E); the same sum in exact arithmetic.
            kv = torch.einsum("bshe,bshf->bhef", k, v) / norm
            z = torch.einsum("bthe,bhef->bthf", q, kv)
        else:
            scores = torch.einsum("bthe,bshe->bhts", q, k)
            if self.causal:
                future = torch.ones(T, S, dtype=torch.bool, device=scores.device).triu(1)
                scores = scores.masked_fill(future, -torch.inf if self.kind == "softmax" else 0.0)
            if self.kind == "relu":
                pattern = torch.relu(scores) / norm
            elif self.kind == "linear":
                pattern = scores / norm
            elif self.null_score is None:
                pattern = torch.softmax(scores, dim=-1)
            else:  # an extra key with logit null_score and value 0
                null = torch.full_like(scores[..., :1], self.null_score)
                pattern = torch.softmax(torch.cat([scores, null], -1), dim=-1)[..., :-1]
            z = torch.einsum("bhts,bshe->bthe", pattern, v)
        return z.reshape(B, T, H * E) @ w["W_O"]

    def cost(self, T: int, S: int) -> int:
        """FLOPs per prompt of the per-head evaluation order."""
        H, D, E = self.W_Q.shape
        if self.kind == "linear" and not self.causal:
            mix = 2 * H * E * E * (S + T)  # K^T V, then Q (K^T V)
        else:
            mix = 4 * H * T * S * E  # scores, then pattern @ V
        return 2 * H * E * D * (T + 2 * S) + mix + 2 * H * T * E * D

    def folded_cost(self, T: int, S: int) -> int:
        """FLOPs per prompt of the folded order (linear attention): keys^T keys, the per-head
        D x D products, and h @ M."""
        H, D, _ = self.W_Q.shape
        return 2 * S * D * D + 4 * H * D**3 + 2 * T * D * D

    def flops(self, T: int, S: int) -> int:
        """FLOPs per prompt in the order :meth:`forward` uses (of the D-wide maps: the
        padding's multiplications by zero are not counted)."""
        return self.folded_cost(T, S) if self.folded(T, S) else self.cost(T, S)


#: the folded order is used when its FLOPs are at most this factor above the per-head
#: order's: its D x D GEMMs can run faster (``python benchmarks/tuning.py --only fold``: the
#: crossover lies between FLOP ratios 1.07 and 1.69, by dtype; docs/performance.md)
FOLD_GAIN = 1.6


def _pad(W: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``W [..., r, c]`` (or ``[c]``) with ``rows`` zero rows and ``cols`` zero columns appended."""
    if not (rows or cols):
        return W
    return torch.nn.functional.pad(W, (0, cols) if W.ndim == 1 else (0, cols, 0, rows))


class MLP(nn.Module):
    def __init__(self, spec: MLPSpec):
        super().__init__()
        self.act, self.layernorm, self.ln_eps = spec.act, spec.layernorm, spec.ln_eps
        self.W_in, self.b_in, self.W_out, self.b_out = (_param(getattr(spec, k)) for k in ("W_in", "b_in", "W_out", "b_out"))

    def weights(self, pad: int) -> dict:
        """``W_in [Dp, F]`` (unpadded under LayerNorm, which reads the D real columns), ``b_in``,
        ``W_out [F, Dp]``, ``b_out [Dp]`` for a stream with ``pad`` zero columns."""
        return dict(W_in=self.W_in if self.layernorm else _pad(self.W_in, pad, 0), b_in=self.b_in,
                    W_out=_pad(self.W_out, 0, pad), b_out=_pad(self.b_out, 0, pad))

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

    def compute_width(self, h: torch.Tensor) -> int:
        """The width Dp >= D the forward pass computes in for ``h`` (:data:`PADDING`)."""
        D, rule = self.width, self.padding.get(h.dtype)
        if h.device.type != "cpu" or rule is None:
            return D
        Dp = -(-D // rule["multiple"]) * rule["multiple"]
        return Dp if (Dp / D) ** 2 <= rule["max_growth"] else D

    @property
    def n_layers(self) -> int:
        return len(self.blocks)

    def forward(self, h: torch.Tensor, n_context: int, cache: dict | None = None, hooks: dict | None = None,
                start: int = 0, stop: int | None = None, norm: int | None = None):
        """Run blocks ``start..stop-1`` (default: all) on the residual stream ``h [B, T, D]``.

        ``cache``: a dict that receives every hook point's tensor.
        ``hooks``: ``{name: fn(tensor) -> tensor or None}``; a returned tensor
        replaces the value at that point (interventions).
        """
        if h.ndim != 3 or h.shape[-1] != self.width:
            raise ConstructionError(f"residual stream must be [B, T, {self.width}], got {tuple(h.shape)}")
        if not 1 <= n_context <= h.shape[1]:
            raise ConstructionError(f"n_context must be in [1, T={h.shape[1]}], got {n_context}")
        w = next(self.parameters())
        if h.dtype != w.dtype or h.device != w.device:
            raise ConstructionError(f"residual stream is {h.dtype} on {h.device} but the model is {w.dtype} on "
                                    f"{w.device}: convert the stream, or the model with .to(dtype, device)")
        D, Dp = self.width, self.compute_width(h)
        B, T = h.shape[:2]
        S = n_context if self.mask_query else T
        norm = n_context if norm is None else norm
        stop = self.n_layers if stop is None else stop
        blocks = [self.blocks[l] for l in range(start, stop)]
        # the padded maps, once per call (not per chunk)
        weights = [(b.attn.weights(Dp - D, norm, b.attn.folded(T, S)) if b.attn is not None else None,
                    b.mlp.weights(Dp - D) if b.mlp is not None else None) for b in blocks]

        def point(name, x):  # hooks and the cache see the D real columns
            if hooks and name in hooks:
                out = hooks[name](x[..., :D])
                x = x if out is None else _pad(out, 0, Dp - D)
            if cache is not None:
                cache[name] = x[..., :D]
            return x

        if cache is None and not hooks and not (torch.is_grad_enabled() and (
                h.requires_grad or any(q.requires_grad for q in self.parameters()))):
            return self._fast(h, n_context, norm, blocks, weights, Dp)

        h = _pad(h, 0, Dp - D)
        for l, block, (wa, wm) in zip(range(start, stop), blocks, weights):
            p = f"blocks.{l}."
            h = point(p + "hook_resid_pre", h)
            if block.attn is not None:
                h = h + point(p + "hook_attn_out", block.attn(h, n_context, self.mask_query, norm, wa))
            h = point(p + "hook_resid_mid", h)
            if block.mlp is not None:
                h = h + point(p + "hook_mlp_out", block.mlp(h, wm))
            h = point(p + "hook_resid_post", h)
        return h[..., :D]

    def _fast(self, h, n_context, norm, blocks, weights, Dp):
        """The forward pass without hooks or autograd: the same operations on preallocated
        buffers (a padded stream pair and the folded order's scratch), reused across layers
        and, on CPU, across cache-sized chunks of the batch (prompts are independent)."""
        (B, T, D), S = h.shape, (n_context if self.mask_query else h.shape[1])
        chunk = self._chunk(B, T, Dp, h)
        new = lambda *shape: h.new_empty(chunk, *shape)  # noqa: E731
        x_buf, y_buf, out = new(T, Dp), new(T, Dp), h.new_empty(B, T, D)
        scratch = None
        if any(b.attn is not None and b.attn.folded(T, S) for b in blocks):
            scratch = dict(G=new(Dp, Dp), A=new(Dp, Dp), P=new(Dp, Dp), M=new(Dp, Dp), Z=new(T, Dp))
        for i in range(0, B, chunk):
            b = min(chunk, B - i)
            x, y = x_buf[:b], y_buf[:b]
            x[..., :D] = h[i : i + b]
            x[..., D:] = 0
            s = None if scratch is None else {k: v[:b] for k, v in scratch.items()}
            for block, (wa, wm) in zip(blocks, weights):
                if block.attn is not None:
                    a = block.attn(x, n_context, self.mask_query, norm, wa, s if block.attn.folded(T, S) else None)
                    x, y = torch.add(x, a, out=y), x
                if block.mlp is not None:
                    x, y = torch.add(x, block.mlp(x, wm), out=y), x
            out[i : i + b] = x[..., :D]
        return out

    def _chunk(self, B: int, T: int, Dp: int, h: torch.Tensor) -> int:
        """Prompts per chunk of the no-hook pass: :attr:`chunk_bytes` of padded stream on CPU."""
        chunk = self.chunk_bytes // (T * Dp * h.element_size()) if h.device.type == "cpu" else B
        return max(1, min(B, chunk))

    def fast_pass_bytes(self, h: torch.Tensor, n_context: int) -> int:
        """Bytes the no-hook forward pass allocates for ``h [B, T, D]``: the output, its
        buffers, and the largest temporaries of one block on one chunk (the input not counted)."""
        (B, T, D), S = h.shape, (n_context if self.mask_query else h.shape[1])
        Dp = self.compute_width(h)
        c = self._chunk(B, T, Dp, h)
        temps = [0]
        for b in self.blocks:
            if b.attn is not None and b.attn.folded(T, S):
                temps.append(4 * Dp * Dp + T * Dp)  # the scratch G, A, P, M, Z
            elif b.attn is not None:
                H, _, E = b.attn.W_Q.shape
                mix = 2 * H * E * E if b.attn.kind == "linear" and not b.attn.causal else 2 * H * T * S
                temps.append((T + 2 * S) * H * E + mix + T * H * E + T * Dp)  # q, k, v; kv or scores; z; out
            if b.mlp is not None:
                temps.append(2 * T * b.mlp.W_in.shape[1] + T * Dp)  # pre, post, out
        return h.element_size() * (B * T * D + 2 * c * T * Dp + c * max(temps))

    def residuals(self, h: torch.Tensor, n_context: int, stop: int | None = None, norm: int | None = None) -> torch.Tensor:
        """Residual streams ``[stop+1, B, T, D]``: the input, then after each of the first
        ``stop`` blocks (default: all)."""
        stop = self.n_layers if stop is None else stop
        cache: dict = {}
        self.forward(h, n_context, cache=cache, stop=stop, norm=norm)
        return torch.stack([h] + [cache[f"blocks.{l}.hook_resid_post"] for l in range(stop)])

    def param_count(self) -> int:
        return sum(p.numel() for p in self.parameters())


def numpy_forward(blocks: list[BlockSpec], h: np.ndarray, n_context: int, mask_query: bool = True,
                  norm: int | None = None, convert=lambda a: a) -> list[np.ndarray]:
    """The plain-data reference forward pass in numpy: the residual streams ``[h_0, ..., h_L]``.

    The same equations as :class:`Transformer` (module docstring), on numpy arrays of
    any dtype: float64, or object arrays of ``fractions.Fraction`` for exact rational
    arithmetic (:mod:`verify.exact`), in which linear and ReLU attention and ReLU MLPs
    are exact.  ``convert`` maps each float64 weight array to h's element type.
    Softmax and GeLU need floats.  Used to check constructions exactly, and as the
    specification the torch module is tested against.
    """
    norm = n_context if norm is None else norm
    hs = [h]
    for spec in blocks:
        if spec.attn is not None:
            a = spec.attn
            keys = h[:, :n_context] if mask_query else h
            out = 0
            for WQ, WK, WV, WO in zip(*(convert(getattr(a, k)) for k in ("W_Q", "W_K", "W_V", "W_O"))):
                q, k, v = h @ WQ, keys @ WK, keys @ WV
                s = q @ k.transpose(0, 2, 1)
                if a.causal:
                    future = np.triu(np.ones(s.shape[-2:], dtype=bool), 1)
                    s = np.where(future, -np.inf if a.kind == "softmax" else 0, s)
                if a.kind == "linear":
                    z = s @ v / norm
                elif a.kind == "relu":
                    z = np.maximum(s, 0) @ v / norm  # int 0: exact inputs stay exact
                else:
                    if a.null_score is not None:
                        s = np.concatenate([s, np.full(s.shape[:-1] + (1,), a.null_score)], -1)
                    e = np.exp(s - s.max(-1, keepdims=True))
                    z = (e / e.sum(-1, keepdims=True))[..., : k.shape[1]] @ v
                out = out + z @ WO
            h = h + out
        if spec.mlp is not None:
            m = spec.mlp
            x = h
            if m.layernorm:
                c = h - h.mean(-1, keepdims=True)
                x = c / np.sqrt((c**2).mean(-1, keepdims=True) + m.ln_eps)
            pre = x @ convert(m.W_in) + convert(m.b_in)
            if m.act == "relu":
                post = np.maximum(pre, 0)
            else:
                post = 0.5 * pre * (1 + np.vectorize(math.erf)(pre / math.sqrt(2.0)))
            h = h + post @ convert(m.W_out) + convert(m.b_out)
        hs.append(h)
    return hs
