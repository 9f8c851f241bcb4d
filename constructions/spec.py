"""Plain-data weights of the toolkit's transformer, and the attention kinds' one definition.

Shapes: H heads, D residual width, E head width (``d_head``), F MLP width.  Weights are
float64 numpy arrays in TransformerLens naming: ``W_Q [H, D, E]``, ``W_K [H, D, E]``,
``W_V [H, D, E]``, ``W_O [H, E, D]``, ``W_in [D, F]``, ``b_in [F]``, ``W_out [F, D]``,
``b_out [D]``.  A :class:`BlockSpec` is one attention (or none) followed by one MLP (or
none); :class:`constructions.transformer.Transformer` copies a list of them into torch,
:func:`constructions.numpy_pass.numpy_forward` runs them in numpy (floats or exact
Fractions).

The attention *kinds* are defined once, by :func:`attention_pattern`, which every
evaluation of attention calls: the torch model (hooked and fast passes), the numpy pass,
and the TransformerLens export's hooks.

* ``linear``:  pattern ``s / norm``
* ``relu``:    pattern ``relu(s) / norm``
* ``softmax``: pattern ``softmax(s)`` over the keys (no 1/sqrt(E): put any scale in W_Q),
  with an optional extra logit ``null_score`` of value 0 ("attend to nothing")

where ``s [.., T, S]`` are the scores ``q_i . k_j`` and ``norm`` the number of examples.
A causal mask hides keys j > i: score 0 for linear/ReLU (a zero weight), ``-inf`` for softmax.
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import ConstructionError

ATTENTION_KINDS = ("linear", "relu", "softmax")
ACTIVATIONS = ("relu", "gelu")


def attention_pattern(kind: str, scores, norm: int, null_score: float | None = None, future=None):
    """The attention weights ``[.., T, S]`` of one head from its scores, for a torch tensor or
    a numpy array (float, or object arrays of ``fractions.Fraction`` for linear and ReLU).
    ``future``: a boolean ``[T, S]`` mask of the keys a causal head must not see."""
    import torch

    if isinstance(scores, torch.Tensor):
        if future is not None:
            scores = scores.masked_fill(future, -torch.inf if kind == "softmax" else 0.0)
        if kind == "linear":
            return scores / norm
        if kind == "relu":
            return torch.relu(scores) / norm
        if null_score is None:
            return torch.softmax(scores, dim=-1)
        null = torch.full_like(scores[..., :1], null_score)
        return torch.softmax(torch.cat([scores, null], -1), dim=-1)[..., :-1]
    if future is not None:
        scores = np.where(future, -np.inf if kind == "softmax" else 0, scores)
    if kind in ("linear", "relu"):
        # an object array (Fractions) is divided exactly: relu's int 0 / n would be the float 0.0
        inv = Fraction(1, norm) if scores.dtype == object else 1.0 / norm
        return (scores if kind == "linear" else np.maximum(scores, 0)) * inv
    if null_score is not None:
        scores = np.concatenate([scores, np.full(scores.shape[:-1] + (1,), null_score)], -1)
    e = np.exp(scores - scores.max(-1, keepdims=True))
    p = e / e.sum(-1, keepdims=True)
    return p[..., :-1] if null_score is not None else p


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

        def stack(mats, rows: bool = False):  # zero-padded to E columns (rows, for W_O) and stacked
            mats = [np.asarray(a) for a in mats]
            for a in mats:
                if a.ndim != 2 or a.shape[1 if rows else 0] != D or a.shape[0 if rows else 1] > E:
                    raise ConstructionError(f"a head's matrix has shape {a.shape}; expected "
                                            f"{'[e, D]' if rows else '[D, e]'} with D = {D}, e <= {E}")
            out = np.zeros((len(mats), E, D) if rows else (len(mats), D, E), np.result_type(*mats))
            for o, a in zip(out, mats):
                o[: a.shape[0], : a.shape[1]] = a
            return out

        return cls(kind, *(stack(h[k] for h in heads) for k in ("W_Q", "W_K", "W_V")),
                   stack((h["W_O"] for h in heads), rows=True), **options)


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
