"""The ``Construction`` object returned by every factory.

Shapes: X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]`` -> predictions ``[B, m]``;
unbatched ``[n, d]``, ``[n]``, ``[m, d]`` -> ``[m]``.  ``trace`` returns
``[S, B, m]`` (``[S, m]`` unbatched), S = number of algorithm steps: the
prediction read through the layout's readout after each step's layer.

A prompt becomes the residual stream ``[B, n + m, D]`` by the layout's slot
fills (see :mod:`constructions.layout`): the n context tokens first, then the
m query tokens.
"""
from __future__ import annotations

import copy
from dataclasses import dataclass, field
from typing import Callable

import numpy as np
import torch

from . import parts
from .errors import ConstructionError
from .layout import ROLE_FILLS, ResidualLayout
from .transformer import BlockSpec, Transformer


@dataclass
class Prepared:
    """Validated prompt tensors, batched, in the model's dtype/device."""

    X: torch.Tensor
    y: torch.Tensor
    Xq: torch.Tensor
    batched: bool
    as_numpy: bool


def _to_tensor(a, name: str) -> tuple[torch.Tensor, bool]:
    """A prompt array as a dense torch tensor of real numbers (a copy for numpy input, so no
    stride or memory order of the caller's array matters), and whether it came as numpy."""
    if isinstance(a, torch.Tensor):
        if a.layout != torch.strided or a.device.type == "meta" or a.is_quantized:
            raise ConstructionError(f"{name} must be a dense tensor holding data, got layout {a.layout} on "
                                    f"{a.device}{' (quantized)' if a.is_quantized else ''}; pass t.to_dense() or "
                                    "a numpy array")
        t, is_np = a.detach().resolve_conj().resolve_neg(), False
    else:
        if isinstance(a, np.ma.MaskedArray):
            raise ConstructionError(f"{name} is a masked array, whose mask would be ignored; drop the masked "
                                    "examples or fill them (a.filled(value)) first")
        try:
            arr = np.array(a, copy=True, order="C")
        except Exception as e:  # ragged lists etc.
            raise ConstructionError(f"{name} could not be read as an array: {e}") from None
        if arr.dtype.kind not in "iuf":
            raise ConstructionError(f"{name} must hold real numbers (integer or float dtype), got dtype {arr.dtype}"
                                    + (" (ragged input?)" if arr.dtype == object else ""))
        t, is_np = torch.from_numpy(arr.astype(np.float64, copy=False)), True
    if t.dtype == torch.bool or t.is_complex() or not (t.is_floating_point() or t.dtype in _INT_DTYPES):
        raise ConstructionError(f"{name} must hold real numbers, got dtype {t.dtype}")
    return t, is_np


_INT_DTYPES = tuple(getattr(torch, t) for t in ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")
                    if hasattr(torch, t))  # torch >= 2.3 has the wider unsigned types


def _check_blocks(name: str, blocks) -> None:
    """Every weight finite, and the parameter count within :func:`constructions.parts.limits`."""
    count = 0
    for l, b in enumerate(blocks):
        for part in (b.attn, b.mlp):
            if part is None:
                continue
            for field_name, v in vars(part).items():
                if isinstance(v, np.ndarray) and v.dtype.kind in "iuf":
                    count += v.size
                    if not np.isfinite(v).all():
                        raise ConstructionError(
                            f"{name}: the weights {field_name} of block {l} are not finite (a parameter so large or "
                            "small that computing the weights overflowed, or divided by zero); use parameters of "
                            "moderate magnitude")
    if count > parts.limits()[0]:
        raise ConstructionError(f"{name}: {count:.3g} parameters exceed the size limit {parts.limits()[0]:.3g} "
                                "(docs/reliability.md); use smaller sizes, or raise the limit with "
                                "constructions.parts.size_limit(max_params=N)")


def _overflow(name: str, dtype, p: "Prepared") -> ConstructionError:
    scale = max(float(t.abs().max()) for t in (p.X, p.y, p.Xq))
    return ConstructionError(
        f"the forward pass of {name} overflowed {str(dtype).replace('torch.', '')} (the residual stream holds inf "
        f"or NaN; the prompt's largest |value| is {scale:.3g}): rescale the prompt towards unit scale, use "
        "float64, or build with parameters of moderate magnitude")


@dataclass
class Construction:
    """A hand-set transformer together with its layout, resources and readout.

    Attributes: ``name``, ``params`` (the factory's arguments), ``model``
    (:class:`~constructions.transformer.Transformer`), ``layout``
    (:class:`~constructions.layout.ResidualLayout`), ``d`` (input dimension),
    ``blocks`` (the plain-data weights the model was built from).

    Layers: the first ``n_prefix`` blocks (default 0) prepare the stream once (a feature MLP, a
    copying layer: von Oswald et al.'s Props. 2 and 3); the next ``L - n_prefix - n_readout``
    blocks carry out the algorithm, one step per ``step_blocks`` blocks (1 for almost every
    construction); the last ``n_readout`` blocks form the *readout* (e.g. Bai et
    al.'s final layer writing ``<w, x_q>``).  ``trace()[t]`` applies the readout
    blocks to the stream after step block t (a "logit lens" that is exact by
    construction), so ``trace()[-1] == predict()``.

    ``mask_query``: whether query tokens are masked out of keys/values; a
    construction that gates them itself (Bai's ``-B(1 - t_j)``) sets False.
    ``split(n) -> n_train``: how many context tokens are train tokens (the rest
    are validation tokens, see :mod:`constructions.layout`); None = all.
    ``extra_tokens(n) -> [k, D]``: fixed tokens inserted after the context; they act
    as keys/values, and the attention divisor stays n (the number of examples).
    ``constants``: ``{slot: vector}`` added to that slot of every token at embedding
    (a constant embedding, e.g. an initial state replicated in every token).
    ``step_blocks``: blocks per algorithm step (default 1: one layer = one step).
    ``interleaved``: the prompt is embedded in Garg et al.'s format, one x-token and one y-token per
    example (:mod:`constructions.layout`), so ``2n`` context tokens; the divisor stays n.
    ``domain(X, y, Xq)``: the construction's stated domain, run by :meth:`prepare` unless
    ``check=False``: it receives the validated prompt as float64 torch tensors ``X [B, n, d]``,
    ``y [B, n]``, ``Xq [B, m, d]`` (finite, shapes and d checked, on the model's device),
    returns nothing, and raises :class:`ConstructionError` naming the violated condition, the
    prompt of the batch and the fix (the checks of :mod:`constructions.parts` do this).  A domain
    taking a ``dtype`` keyword also gets the run dtype (range checks: underflow, overflow).

    Guarantees (docs/reliability.md): the public methods return finite numbers or raise
    :class:`ConstructionError`.  With ``check=True`` (the default) a forward pass whose residual
    stream overflowed to inf or NaN raises instead of returning; ``check=False`` skips the domain
    and this overflow check (a divergence experiment sees the inf).  Prompts whose largest tensor
    would exceed the element limit, and factories beyond the parameter limit, are refused before
    allocating (:func:`constructions.parts.size_limit`).

    The path of a prompt: :meth:`prepare` (validate, batch, cast) -> :meth:`embed` (the
    residual stream ``[B, T, D]`` filled slot by slot, ``T = n_keys(n) + m``) ->
    ``model(h, n_keys(n), norm=n)`` (the transformer; ``hooks=``, ``cache=``, ``heads=`` as in
    :mod:`constructions.transformer`) -> :meth:`read` (the readout slot of the query tokens,
    with its sign).  :meth:`run_with_hooks` does all of it with hooks.
    """

    name: str
    params: dict
    blocks: list[BlockSpec]
    layout: ResidualLayout
    d: int
    n_readout: int = 0
    mask_query: bool = True
    split: Callable | None = field(default=None, repr=False)
    extra_tokens: Callable | None = field(default=None, repr=False)
    constants: dict | None = field(default=None, repr=False)
    step_blocks: int = 1
    domain: Callable | None = field(default=None, repr=False)
    n_prefix: int = 0
    interleaved: bool = False
    model: Transformer = field(init=False, repr=False)

    def __post_init__(self):
        _check_blocks(self.name, self.blocks)
        self.model = Transformer(self.blocks, mask_query=self.mask_query)
        if self.model.width != self.layout.width:
            raise ConstructionError(f"layout width {self.layout.width} != model width {self.model.width}")
        if not (0 <= self.n_readout and 0 <= self.n_prefix and self.n_prefix + self.n_readout < self.model.n_layers):
            raise ConstructionError("a construction needs at least one step block besides its prefix and readout blocks")
        if (self.model.n_layers - self.n_readout - self.n_prefix) % self.step_blocks:
            raise ConstructionError("the step blocks must divide into steps of step_blocks blocks")

    @property
    def steps(self) -> int:
        """Number of algorithm steps."""
        return (self.model.n_layers - self.n_readout - self.n_prefix) // self.step_blocks

    @property
    def n_step_blocks(self) -> int:
        """The index of the first readout block: the prefix and the step blocks come before it."""
        return self.n_prefix + self.steps * self.step_blocks

    # -- dtype / device ----------------------------------------------------
    @property
    def dtype(self) -> torch.dtype:
        return self.model.first_parameter.dtype

    @property
    def device(self) -> torch.device:
        return self.model.first_parameter.device

    def to(self, dtype: torch.dtype | str | None = None, device=None) -> "Construction":
        """A copy of this construction with its model in ``dtype`` / on ``device`` (a device that
        this machine has: ``"cpu"``, ``"cuda"``, ``"cuda:1"``, a ``torch.device``)."""
        if device is not None:
            device = parts.device(device)
        if isinstance(dtype, str):
            dtype = {"float64": torch.float64, "float32": torch.float32}.get(dtype)
            if dtype is None:
                raise ConstructionError("dtype must be 'float64' or 'float32'")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype in (torch.float64, torch.float32)):
            raise ConstructionError(f"dtype must be torch.float64 or torch.float32 (or 'float64', 'float32'), got "
                                    f"{dtype!r}")
        new = copy.copy(self)
        new.model = self.model.converted(dtype, device)
        return new

    def save(self, path, overwrite: bool = False):
        """Write this construction to a safetensors file (:func:`constructions.io.save`: atomic;
        an existing file only with ``overwrite=True``)."""
        from .io import save

        return save(self, path, overwrite=overwrite)

    # -- resources ---------------------------------------------------------
    @property
    def resources(self) -> dict:
        heads = [b.attn.heads for b in self.blocks if b.attn is not None]
        mlp = [b.mlp.W_in.shape[1] for b in self.blocks if b.mlp is not None]
        return dict(
            layers=self.model.n_layers,
            heads=max(heads, default=0),
            width=self.layout.width,
            d_head=max((b.attn.W_Q.shape[2] for b in self.blocks if b.attn is not None), default=0),
            mlp_width=max(mlp, default=0),
            params=self.model.param_count(),
            nonzero_params=int(sum(int((p != 0).sum()) for p in self.model.parameters())),
            attention=sorted({b.attn.kind for b in self.blocks if b.attn is not None}),
            max_weight=float(max(float(p.abs().max()) for p in self.model.parameters())),
        )

    def circuits(self, layer: int) -> list[dict]:
        """Per head of ``layer``: the folded ``[D, D]`` maps ``QK = W_Q W_K^T`` (score
        ``h_i QK h_j^T``) and ``OV = W_V W_O`` (a key's contribution ``h_j OV``), as slot
        blocks (:meth:`ResidualLayout.view`).  Only these products matter
        (von Oswald's rescaling symmetry)."""
        L = len(self.blocks)
        if isinstance(layer, bool) or not isinstance(layer, (int, np.integer)) or not -L <= layer < L:
            raise ConstructionError(f"layer must be an integer in [0, {L}) ({self.name} has {L} blocks), got {layer!r}")
        attn = self.blocks[layer].attn
        if attn is None:
            return []
        return [
            dict(QK=self.layout.view(q @ k.T), OV=self.layout.view(v @ o))
            for q, k, v, o in zip(attn.W_Q, attn.W_K, attn.W_V, attn.W_O)
        ]

    # -- input handling ----------------------------------------------------
    def prepare(self, X, y, Xq, check: bool = True) -> Prepared:
        """Validate shapes, values and the construction's domain; batch and cast."""
        (X, np_x), (y, _), (Xq, _) = _to_tensor(X, "X"), _to_tensor(y, "y"), _to_tensor(Xq, "Xq")
        if X.ndim == 2 and y.ndim == 1 and Xq.ndim == 2:
            batched = False
            X, y, Xq = X[None], y[None], Xq[None]
        elif X.ndim == 3 and y.ndim == 2 and Xq.ndim == 3:
            batched = True
        else:
            raise ConstructionError(
                "expected X [B,n,d], y [B,n], Xq [B,m,d] (or unbatched [n,d], [n], [m,d]); "
                f"got X {tuple(X.shape)}, y {tuple(y.shape)}, Xq {tuple(Xq.shape)}"
            )
        B, n, d = X.shape
        if y.shape != (B, n):
            raise ConstructionError(f"y has shape {tuple(y.shape)}, expected {(B, n)} to match X {tuple(X.shape)}")
        if Xq.shape[0] != B or Xq.shape[2] != d:
            raise ConstructionError(f"Xq has shape {tuple(Xq.shape)}, expected ({B}, m, {d}) to match X")
        if d != self.d:
            raise ConstructionError(f"this {self.name} construction was built for d={self.d}, but X has d={d}")
        if n < 1 or Xq.shape[1] < 1 or B < 1:
            raise ConstructionError(f"need at least one batch item, context example and query (B={B}, n={n}, m={Xq.shape[1]})")
        if self.split is not None:
            self.split(n)  # raises ConstructionError if n does not fit the construction's split
        self._check_work(B, n, Xq.shape[1])
        dev = self.device
        X, y, Xq = (t.to(device=dev, dtype=self.dtype) for t in (X, y, Xq))
        for name, t in (("X", X), ("y", y), ("Xq", Xq)):
            if not parts.all_finite(t):
                raise ConstructionError(f"{name} contains NaN or inf (or overflows {self.dtype}); clean the prompt first")
        if check:
            args = (X.to(torch.float64), y.to(torch.float64), Xq.to(torch.float64))
            parts.scale_check(*args, dtype=self.dtype)
            if self.domain is not None:
                self.domain(*args, dtype=self.dtype) if parts.takes_dtype(self.domain) else self.domain(*args)
        return Prepared(X, y, Xq, batched, np_x)

    def _check_work(self, B: int, n: int, m: int, streams: int = 1) -> None:
        """Refuse, before anything is allocated, a prompt whose largest tensor (``streams`` residual
        streams of the batch, or a scores-first block's ``[heads, T, S]`` scores per prompt)
        exceeds the element limit (:func:`constructions.parts.size_limit`)."""
        S = self.n_keys(n)
        T = S + m
        heads = max((b.attn.heads for b in self.blocks if b.attn is not None), default=0)
        biggest = max(streams * B * T * self.layout.width, B * heads * T * S)
        limit = parts.limits()[1]
        if biggest > limit:
            raise ConstructionError(
                f"a batch of {B} prompt(s) with {n} examples and {m} queries needs a tensor of {biggest:.3g} elements "
                f"in {self.name} (width {self.layout.width}, {heads} head(s)), beyond the limit {limit:.3g} "
                "(docs/reliability.md); split the batch, or raise the limit with "
                "constructions.parts.size_limit(max_elements=N)")

    def _finite(self, h: torch.Tensor, p: Prepared, check: bool) -> torch.Tensor:
        """``h`` if every entry is finite (or ``check=False``), else the overflow error."""
        if check and not parts.all_finite(h):
            raise _overflow(self.name, self.dtype, p)
        return h

    def embed(self, p: Prepared) -> torch.Tensor:
        """The residual stream ``[B, n+m, D]`` of a prepared prompt, filled slot by slot."""
        B, n, _ = p.X.shape
        N = self.n_context_tokens(n)
        h = torch.zeros(B, N + p.Xq.shape[1], self.layout.width, dtype=self.dtype, device=self.device)
        self.fill(h, p.X, p.y, p.Xq, lambda a: torch.as_tensor(np.asarray(a, dtype=np.float64), dtype=self.dtype,
                                                                 device=self.device))
        if self.extra_tokens is not None:
            extra = torch.as_tensor(np.asarray(self.extra_tokens(n)), dtype=self.dtype, device=self.device)
            h = torch.cat([h[:, :N], extra.expand(B, -1, -1), h[:, N:]], 1)
        return h

    def n_context_tokens(self, n: int) -> int:
        """Context tokens of a prompt with n examples (2n when interleaved), extra tokens not counted."""
        return 2 * n if self.interleaved else n

    def fill(self, h, X, y, Xq, const: Callable) -> None:
        """Fill the zero stream ``h [B, N+m, D]`` (``N = n_context_tokens(n)``; a torch tensor, or a
        numpy array of any dtype, e.g. exact ``Fraction`` objects) slot by slot; ``const(array)``
        converts the layout's constants to h's element type.  Extra tokens are not inserted here."""
        n = X.shape[1]
        n_train = n if self.split is None else self.split(n)
        N, step = self.n_context_tokens(n), 2 if self.interleaved else 1
        for s in self.layout.slots:
            if s.fill == "x":
                h[:, 0:N:step, s.index] = X
                h[:, N:, s.index] = Xq
            elif s.fill == "y":
                h[:, step - 1:N:step, s.start] = y
            elif s.fill == "sqnorm":
                h[:, 0:N:step, s.start] = (X * X).sum(-1)
                h[:, N:, s.start] = (Xq * Xq).sum(-1)
            elif s.fill == "position":
                if s.size != N:
                    raise ConstructionError(f"this {self.name} construction was built for {s.size} context tokens "
                                            f"({s.size // step} examples), got {n} examples")
                h[:, :N, s.index] = const(np.eye(N))
            elif s.fill == "posgate":
                if self.interleaved:
                    raise ConstructionError("the posgate fill needs one token per example (interleaved=False)")
                if s.size != n:
                    raise ConstructionError(f"this {self.name} construction was built for n={s.size} examples, got {n}")
                gate = np.full((n + Xq.shape[1], n), -1.0)
                gate[np.arange(n), np.arange(n)] = 0.0
                h[:, :, s.index] = const(gate)
            else:
                train, val, query = (const(np.asarray(v)) for v in ROLE_FILLS[s.fill])
                h[:, :n_train * step, s.start] = train
                h[:, n_train * step:N, s.start] = val
                h[:, N:, s.start] = query
        for slot, value in (self.constants or {}).items():
            h[..., self.layout[slot].index] += const(np.asarray(value, dtype=np.float64))

    def n_keys(self, n: int) -> int:
        """Key tokens for a prompt with n examples: the context plus any extra tokens."""
        return self.n_context_tokens(n) + (0 if self.extra_tokens is None else len(self.extra_tokens(n)))

    def read(self, h: torch.Tensor, n: int) -> torch.Tensor:
        """Apply the readout to the query tokens (those after the first n key tokens) of
        residual streams ``[..., T, D]`` -> ``[..., m]``."""
        r = self.layout.readout
        return r.sign * h[..., n:, self.layout[r.slot].start]

    def _out(self, t: torch.Tensor, p: Prepared):
        if not p.batched:
            t = t.select(-2, 0)
        return t.detach().cpu().numpy() if p.as_numpy else t.detach()

    # -- public evaluation -------------------------------------------------
    def run_with_hooks(self, X, y, Xq, hooks: dict | None = None, cache: dict | None = None, heads: bool = False,
                       check: bool = True):
        """Predictions ``[B, m]`` (or ``[m]``) of the forward pass with hook functions
        ``{name: fn(tensor) -> tensor or None}`` (a returned tensor replaces the value) and an
        optional ``cache`` dict that receives every hook point (names in
        :mod:`constructions.transformer`; ``heads=True`` adds the per-head points)."""
        p = self.prepare(X, y, Xq, check)
        n = p.X.shape[1]
        with torch.no_grad():
            h = self._finite(self.model(self.embed(p), self.n_keys(n), norm=n, hooks=hooks, cache=cache, heads=heads), p,
                           check)
        return self._out(self.read(h, self.n_keys(n)), p)

    def residuals(self, X, y, Xq, check: bool = True):
        """All residual streams ``[L+1, B, T, D]`` (input first; T includes any extra tokens)."""
        p = self.prepare(X, y, Xq, check)
        n = p.X.shape[1]
        self._check_work(p.X.shape[0], n, p.Xq.shape[1], streams=self.model.n_layers + 1)
        with torch.no_grad():
            hs = self._finite(self.model.residuals(self.embed(p), self.n_keys(n), norm=n), p, check)
        if not p.batched:
            hs = hs[:, 0]
        return hs.cpu().numpy() if p.as_numpy else hs

    def read_slot(self, X, y, Xq, slot: str, check: bool = True):
        """The named slot of every token after every step: ``[S+1, B, T, size]`` (``[S+1, T, size]``
        unbatched; index 0 is the embedding (after the prefix blocks, if any), index t the stream
        after step t's blocks; T counts the extra tokens).  E.g. Bai et al.'s replicated iterate ``w``."""
        hs = self.residuals(X, y, Xq, check)
        return hs[self.n_prefix : self.n_step_blocks + 1 : self.step_blocks, ..., self.layout[slot].index]

    def predict(self, X, y, Xq, check: bool = True):
        """Predictions ``[B, m]`` (or ``[m]``) read after the last layer."""
        p = self.prepare(X, y, Xq, check)
        n = p.X.shape[1]
        with torch.no_grad():
            h = self._finite(self.model(self.embed(p), self.n_keys(n), norm=n), p, check)
        return self._out(self.read(h, self.n_keys(n)), p)

    def trace(self, X, y, Xq, check: bool = True):
        """Predictions after every algorithm step: ``[S, B, m]`` (or ``[S, m]``)."""
        p = self.prepare(X, y, Xq, check)
        n = p.X.shape[1]
        nk = self.n_keys(n)
        self._check_work(p.X.shape[0], n, p.Xq.shape[1], streams=2)
        out = []
        with torch.no_grad():  # step by step: one stream (and its readout) in memory, not one per block
            h = self.embed(p)
            if self.n_prefix:
                h = self.model(h, nk, stop=self.n_prefix, norm=n)
            for t in range(self.steps):
                start = self.n_prefix + t * self.step_blocks
                h = self.model(h, nk, start=start, stop=start + self.step_blocks, norm=n)
                q = self.model(h, nk, start=self.n_step_blocks, norm=n) if self.n_readout else h
                out.append(self.read(self._finite(q, p, check), nk))
        return self._out(torch.stack(out), p)

    __call__ = predict
