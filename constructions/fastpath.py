"""How the transformer is evaluated fast on CPU: cost models, the padded width, and the no-hook pass.

Notation: B batch, T tokens, S key tokens, D residual width, Dp >= D the padded width the
pass computes in, H heads, E head width, F MLP width.  Measured in ``docs/performance.md``.

* **Evaluation order.**  Linear, non-causal attention can be *folded*:
  ``h (sum_h (QK_h / n) (keys^T keys) OV_h)``, the same sums reassociated into D x D GEMMs.
  :func:`use_folded` picks it when its FLOPs (:func:`folded_cost`) are at most
  :data:`FOLD_GAIN` times those of the per-head order (:func:`per_head_cost`).
* **Padding.**  On CPU the stream is zero-padded to a width where MKL's small batched GEMMs
  run faster (:data:`PADDING`, :func:`compute_width`).  The padding holds exact zeros, so
  hooks, the cache and the output see the same D columns.
* **No-hook pass.**  Without hooks, cache or autograd the batch runs on preallocated buffers
  in cache-sized chunks (:data:`CHUNK_BYTES`, :func:`fast_forward`).  On the same batch it
  gives the bits of the hooked pass; a prompt's result may change in its last bits with the
  batch (or chunk) it runs in, since MKL picks kernels by matrix size (the tolerance model
  covers that: ``tests/test_fast_path.py``).

The functions take the torch modules of :mod:`constructions.transformer` (duck-typed: an
attention module has ``W_Q [H, D, E]``, ``kind``, ``causal``; an MLP ``W_in [D, F]``).
"""
from __future__ import annotations

import contextlib
import contextvars

import torch

#: the no-hook pass runs the batch in chunks of about this many bytes of padded stream
#: (cache-sized: ``python benchmarks/tuning.py --only chunks``, docs/performance.md)
CHUNK_BYTES = 2**21
#: on CPU the stream is zero-padded inside the forward pass, per dtype, to ``multiple`` when
#: that grows the D x D GEMMs' FLOPs, (Dp/D)^2, by at most ``max_growth``: MKL's batched
#: GEMMs run up to 2x faster at these widths (``python benchmarks/tuning.py``,
#: docs/performance.md).  Padding adds exact zeros only; hooks, the cache and the output
#: see the D real columns.
PADDING = {torch.float64: dict(multiple=24, max_growth=1.35), torch.float32: dict(multiple=8, max_growth=1.25)}
#: the folded order is used when its FLOPs are at most this factor above the per-head
#: order's: its D x D GEMMs can run faster (``python benchmarks/tuning.py --only fold``: the
#: crossover lies between FLOP ratios 1.07 and 1.69, by dtype; docs/performance.md)
FOLD_GAIN = 1.6
#: the evaluation orders of an attention block: folded D x D maps, per head with ``K^T V`` first,
#: per head with the scores first (the only order of ReLU, softmax and causal attention)
ORDERS = ("folded", "kv", "scores")
#: a forced order (``Transformer.order``) folds only where that costs at most this factor of the
#: per-head FLOPs (wide, thin-headed blocks would take orders of magnitude longer)
FORCE_LIMIT = 8.0


def pad(W: torch.Tensor, rows: int, cols: int) -> torch.Tensor:
    """``W [..., r, c]`` (or ``[c]``) with ``rows`` zero rows and ``cols`` zero columns appended."""
    if not (rows or cols):
        return W
    return torch.nn.functional.pad(W, (0, cols) if W.ndim == 1 else (0, cols, 0, rows))


def compute_width(D: int, h: torch.Tensor, padding: dict) -> int:
    """The width Dp >= D the forward pass computes in for ``h`` under a padding rule table."""
    rule = padding.get(h.dtype)
    if h.device.type != "cpu" or rule is None:
        return D
    Dp = -(-D // rule["multiple"]) * rule["multiple"]
    return Dp if (Dp / D) ** 2 <= rule["max_growth"] else D


# -- cost models (FLOPs per prompt, of the D-wide maps) ------------------------------------
def per_head_cost(attn, T: int, S: int) -> int:
    """FLOPs per prompt of the per-head evaluation order."""
    H, D, E = attn.W_Q.shape
    if attn.kind == "linear" and not attn.causal:
        mix = 2 * H * E * E * (S + T)  # K^T V, then Q (K^T V)
    else:
        mix = 4 * H * T * S * E  # scores, then pattern @ V
    return 2 * H * E * D * (T + 2 * S) + mix + 2 * H * T * E * D


def folded_cost(attn, T: int, S: int) -> int:
    """FLOPs per prompt of the folded order (linear attention): keys^T keys, the per-head
    D x D products, and h @ M."""
    H, D, _ = attn.W_Q.shape
    return 2 * S * D * D + 4 * H * D**3 + 2 * T * D * D


def _linear(attn) -> bool:
    return attn.kind == "linear" and not attn.causal


def use_folded(attn, T: int, S: int) -> bool:
    """Whether the attention's forward pass folds by default (cheaper in FLOPs)."""
    return _linear(attn) and folded_cost(attn, T, S) <= FOLD_GAIN * per_head_cost(attn, T, S)


def order_of(attn, T: int, S: int, forced: str | None = None) -> str:
    """The evaluation order of an attention block (:data:`ORDERS`): ``forced`` where the block
    admits it (folding a linear block costs at most :data:`FORCE_LIMIT` times its per-head
    FLOPs), else the default: folded when :func:`use_folded`, else ``kv`` for linear
    non-causal attention, else ``scores``.  All orders compute the same sums."""
    if forced not in (None, *ORDERS):
        raise ValueError(f"evaluation order must be one of {ORDERS} or None, got {forced!r}")
    key = (attn.kind, attn.causal, attn.W_Q.shape, T, S, forced, FOLD_GAIN, FORCE_LIMIT)  # all it depends on
    if key not in _ORDERS:
        _ORDERS[key] = _order(attn, T, S, forced)
    return _ORDERS[key]


#: memo of :func:`order_of` (the choice is a function of the block's kind and shapes), so a
#: forward pass of many small blocks does not redo the cost models for every block
_ORDERS: dict = {}


def _order(attn, T: int, S: int, forced: str | None) -> str:
    if forced == "scores" or (forced == "kv" and _linear(attn)):
        return forced
    if forced == "folded" and _linear(attn) and folded_cost(attn, T, S) <= FORCE_LIMIT * per_head_cost(attn, T, S):
        return forced
    return "folded" if use_folded(attn, T, S) else ("kv" if _linear(attn) else "scores")


def attention_flops(attn, T: int, S: int) -> int:
    """FLOPs per prompt in the order the forward pass uses by default (the padding's
    multiplications by zero are not counted)."""
    return folded_cost(attn, T, S) if use_folded(attn, T, S) else per_head_cost(attn, T, S)


def mlp_flops(mlp, T: int) -> int:
    D, F = mlp.W_in.shape
    return 4 * T * D * F


def model_flops(model, n_keys: int, T: int) -> int:
    """FLOPs of one prompt of T tokens (``n_keys`` of them keys) through every block of ``model``,
    in the evaluation order the forward pass uses by default."""
    S = n_keys if model.mask_query else T
    return sum((attention_flops(b.attn, T, S) if b.attn is not None else 0)
               + (mlp_flops(b.mlp, T) if b.mlp is not None else 0) for b in model.blocks)


# -- intra-op threads ---------------------------------------------------------------------------
#: a CPU forward pass whose average block call (the whole batch through one block) costs fewer
#: FLOPs than this runs on one intra-op thread: below it a second thread costs more in
#: synchronisation than it gains, and far more when another process holds a core
#: (``python benchmarks/threads.py [--load]``, docs/performance.md)
THREAD_MIN_FLOPS = 1e7
#: the thread policy in force: "auto" (the rule above), or None (torch's own setting, untouched)
_THREADS = contextvars.ContextVar("icl_threads", default="auto")


@contextlib.contextmanager
def threads(policy):
    """Set the thread policy inside a ``with`` block: ``"auto"`` (the default: small forward
    passes on one thread, :data:`THREAD_MIN_FLOPS`) or ``None`` (leave ``torch.get_num_threads()``
    alone, e.g. after ``torch.set_num_threads(n)`` or ``icl-verify --threads n``)."""
    if policy not in ("auto", None):
        raise ValueError(f"thread policy must be 'auto' or None, got {policy!r}")
    token = _THREADS.set(policy)
    try:
        yield
    finally:
        _THREADS.reset(token)


def set_policy(policy) -> None:
    """Set the thread policy for the rest of the process (see :func:`threads`)."""
    if policy not in ("auto", None):
        raise ValueError(f"thread policy must be 'auto' or None, got {policy!r}")
    _THREADS.set(policy)


@contextlib.contextmanager
def threads_for(model, h: torch.Tensor, n_context: int):
    """Run a forward pass of ``model`` on ``h [B, T, D]`` with the threads the policy picks."""
    if _THREADS.get() != "auto" or h.device.type != "cpu" or torch.get_num_threads() == 1 or not model.n_layers:
        yield
        return
    cache = model.__dict__.setdefault("_flops_per_prompt", {})  # the cost model, once per prompt shape
    key = (n_context, h.shape[1])
    if key not in cache:
        cache[key] = model_flops(model, n_context, h.shape[1]) / model.n_layers
    per_block = h.shape[0] * cache[key]
    if per_block >= THREAD_MIN_FLOPS:
        yield
        return
    old = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(old)


# -- the no-hook pass ---------------------------------------------------------------------------
def chunk_size(B: int, T: int, Dp: int, h: torch.Tensor, chunk_bytes: int) -> int:
    """Prompts per chunk of the no-hook pass: ``chunk_bytes`` of padded stream on CPU."""
    chunk = chunk_bytes // (T * Dp * h.element_size()) if h.device.type == "cpu" else B
    return max(1, min(B, chunk))


def fast_forward(h, n_context, norm, blocks, weights, orders, Dp, mask_query, chunk_bytes):
    """The forward pass without hooks or autograd: the same operations as the hooked pass on
    preallocated buffers (a padded stream pair and the folded order's scratch), reused across
    layers and, on CPU, across cache-sized chunks of the batch (prompts are independent).
    ``blocks``: the torch blocks to run; ``weights``: their padded maps (one pair per block);
    ``orders``: each block's attention order."""
    B, T, D = h.shape
    chunk = chunk_size(B, T, Dp, h, chunk_bytes)
    new = lambda *shape: h.new_empty(chunk, *shape)  # noqa: E731
    x_buf, y_buf, out = new(T, Dp), new(T, Dp), h.new_empty(B, T, D)
    scratch = None
    if "folded" in orders:
        scratch = dict(G=new(Dp, Dp), A=new(Dp, Dp), P=new(Dp, Dp), M=new(Dp, Dp), Z=new(T, Dp))
    for i in range(0, B, chunk):
        b = min(chunk, B - i)
        x, y = x_buf[:b], y_buf[:b]
        x[..., :D] = h[i : i + b]
        x[..., D:] = 0
        s = None if scratch is None else {k: v[:b] for k, v in scratch.items()}
        for block, (wa, wm), order in zip(blocks, weights, orders):
            if block.attn is not None:
                a = block.attn(x, n_context, mask_query, norm, wa, s if order == "folded" else None, order=order)
                x, y = torch.add(x, a, out=y), x
            if block.mlp is not None:
                x, y = torch.add(x, block.mlp(x, wm), out=y), x
        out[i : i + b] = x[..., :D]
    return out


def fast_pass_bytes(model, h: torch.Tensor, n_context: int) -> int:
    """Bytes the no-hook forward pass allocates for ``h [B, T, D]``: the output, its buffers,
    and the largest temporaries of one block on one chunk (the input not counted)."""
    (B, T, D), S = h.shape, (n_context if model.mask_query else h.shape[1])
    Dp = model.compute_width(h)
    c = chunk_size(B, T, Dp, h, model.chunk_bytes)
    temps = [0]
    for b in model.blocks:
        if b.attn is not None and use_folded(b.attn, T, S):
            temps.append(4 * Dp * Dp + T * Dp)  # the scratch G, A, P, M, Z
        elif b.attn is not None:
            H, _, E = b.attn.W_Q.shape
            mix = 2 * H * E * E if b.attn.kind == "linear" and not b.attn.causal else 2 * H * T * S
            temps.append((T + 2 * S) * H * E + mix + T * H * E + T * Dp)  # q, k, v; kv or scores; z; out
        if b.mlp is not None:
            temps.append(2 * T * b.mlp.W_in.shape[1] + T * Dp)  # pre, post, out
    return h.element_size() * (B * T * D + 2 * c * T * Dp + c * max(temps))
