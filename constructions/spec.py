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
* ``exp``:     pattern ``exp(s) / norm`` (unnormalised exponential attention: the kernel
  ``exp(q.k)``, Cheng et al. 2023's exp-kernel attention; floats only)
* ``softmax``: pattern ``softmax(s)`` over the keys (no 1/sqrt(E): put any scale in W_Q),
  with an optional extra logit ``null_score`` of value 0 ("attend to nothing")

where ``s [.., T, S]`` are the scores ``q_i . k_j`` and ``norm`` the number of examples.

Masks (``AttentionSpec.causal``, one definition: :func:`hidden_keys`): ``True`` hides keys
j > i (a GPT decoder), ``"strict"`` hides j >= i (token i sees the examples before it only),
``"self"`` hides every j != i (a sliding window of one token: each token, query or context,
attends to itself, so the head computes a bilinear form of the token's own slots).  A hidden
key gets score 0 for linear/ReLU (a zero weight), ``-inf`` for softmax.  The divisor
(``AttentionSpec.divisor``): ``"n"`` divides linear and ReLU patterns by ``norm``; ``"keys"``
divides row i by the number of keys it sees, at least 1 (Bai et al. 2023's decoder
normalisation ``1/((i - 1) v 1)`` under the strict mask).
"""
from __future__ import annotations

from dataclasses import dataclass
from fractions import Fraction

import numpy as np

from .errors import ConstructionError

ATTENTION_KINDS = ("linear", "relu", "exp", "softmax")
ACTIVATIONS = ("relu", "gelu")
#: the masks of AttentionSpec.causal (module docstring) and its divisors
MASKS = (False, True, "strict", "self")
DIVISORS = ("n", "keys")


def key_count(causal, n_context: int, T: int, mask_query: bool) -> int:
    """How many leading tokens of a stream of T tokens act as keys: the n context tokens
    (``mask_query``), else all T; a ``"self"`` head sees its own token, so all T."""
    return T if causal == "self" or not mask_query else n_context


def hidden_keys(causal, T: int, S: int, device=None, numpy: bool = False):
    """The boolean ``[T, S]`` mask of the keys each row must not see (True = hidden), or None
    for no mask; a torch tensor on ``device``, or a numpy array with ``numpy=True``."""
    if causal is False:
        return None
    i, j = np.arange(T)[:, None], np.arange(S)[None, :]
    m = j > i if causal is True else j >= i if causal == "strict" else j != i
    if numpy:
        return m
    import torch

    return torch.from_numpy(m).to(device)


def attention_pattern(kind: str, scores, norm: int, null_score: float | None = None, future=None,
                      divisor: str = "n"):
    """The attention weights ``[.., T, S]`` of one head from its scores, for a torch tensor or
    a numpy array (float, or object arrays of ``fractions.Fraction`` for linear and ReLU).
    ``future``: a boolean ``[T, S]`` mask of the keys a causal head must not see
    (:func:`hidden_keys`).  ``divisor="keys"``: row i divided by the number of keys it sees
    (at least 1) instead of ``norm``."""
    import torch

    if divisor == "keys":
        if future is None:  # no mask: every row sees all S keys
            seen = np.full(scores.shape[-2], scores.shape[-1])
        else:
            seen = np.maximum((~np.asarray(future.cpu() if isinstance(future, torch.Tensor) else future)).sum(-1), 1)
        if isinstance(scores, torch.Tensor):
            norm = torch.as_tensor(seen, dtype=scores.dtype, device=scores.device)[:, None]
        else:
            norm = seen[:, None]
    if isinstance(scores, torch.Tensor):
        if future is not None:
            scores = scores.masked_fill(future, -torch.inf if kind in ("softmax", "exp") else 0.0)
        if kind == "linear":
            return scores / norm
        if kind == "relu":
            return torch.relu(scores) / norm
        if kind == "exp":
            return torch.exp(scores) / norm
        if null_score is None:
            return torch.softmax(scores, dim=-1)
        null = torch.full_like(scores[..., :1], null_score)
        return torch.softmax(torch.cat([scores, null], -1), dim=-1)[..., :-1]
    if kind == "exp" and scores.dtype == object:
        raise ConstructionError("exp attention needs floats (exp of a rational is not rational): evaluate it in "
                                "float64, not in exact arithmetic")
    if future is not None:
        scores = np.where(future, -np.inf if kind in ("softmax", "exp") else 0, scores)
    if kind == "exp":
        return np.exp(scores) / norm
    if kind in ("linear", "relu"):
        # an object array (Fractions) is divided exactly: relu's int 0 / n would be the float 0.0
        if isinstance(norm, np.ndarray):  # per-row divisors [T, 1] (divisor="keys")
            inv = np.vectorize(lambda c: Fraction(1, int(c)), otypes=[object])(norm) if scores.dtype == object \
                else 1.0 / norm
        else:
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
    causal: bool | str = False  # a mask of MASKS: True, keys j <= i; "strict", j < i; "self", j = i
    null_score: float | None = None  # softmax only: an extra logit with value 0 ("attend to nothing")
    divisor: str = "n"  # "n": linear/ReLU patterns divided by norm; "keys": by each row's key count

    def __post_init__(self):
        if self.kind not in ATTENTION_KINDS:
            raise ConstructionError(f"attention kind must be one of {ATTENTION_KINDS}, got {self.kind!r}")
        if not any(self.causal is m or (isinstance(m, str) and self.causal == m) for m in MASKS):
            raise ConstructionError(f"causal must be one of {MASKS}, got {self.causal!r}")
        if self.divisor not in DIVISORS:
            raise ConstructionError(f"divisor must be one of {DIVISORS}, got {self.divisor!r}")
        if self.kind == "softmax" and self.causal == "strict" and self.null_score is None:
            raise ConstructionError("a strictly causal softmax head's first token sees no key (its softmax would be "
                                    "0/0); give it a null_score (attend to nothing) or use causal=True")
        if self.divisor == "keys" and (self.kind == "softmax" or self.causal is False):
            raise ConstructionError("divisor='keys' needs a causal mask and linear or ReLU attention (softmax "
                                    "normalises each row itself)")
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
