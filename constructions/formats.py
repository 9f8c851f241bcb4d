"""Prompt converters between the toolkit layout and the papers' token formats.

Toolkit prompt: X ``[B, n, d]``, y ``[B, n]``, Xq ``[B, m, d]`` (numpy).  Every
``to_*`` has a ``from_*`` inverse (exact: values are only moved), and every format
states where its prediction is read and with which sign (docs/pitfalls.md #1):

============  ==========================================  ====================  ======
format        tokens                                      prediction            sign
============  ==========================================  ====================  ======
Garg          interleaved ``x_1, (y_1, 0..0), ..., x_q``  at each x token       +
              ``[B, 2(n+m), d]``; query y's are 0
von Oswald    ``e_j = (x_j, y_j)``, query ``(x_q, 0)``,   y entry of a query    **-**
              ``[B, n+m, d+1]``
Ahn           von Oswald's transposed: ``Z [B, d+1, n+m]``  ``Z[d, query]``       **-**
Bai           ``h = [x; y'; 0_{D-d-3}; 1; t]``, y' = 0      ``h_query[d]``        +
              and t = 0 on queries, ``[B, n+m, D]``
Akyurek       ``[0; x_i]``, ``[y_i; 0_d]`` interleaved,     a unit of the last    +
              then ``[0; x_q]``; ``[B, 2n+m, d+1]``         (query) column
============  ==========================================  ====================  ======
"""
from __future__ import annotations

import numpy as np
import torch

from .errors import ConstructionError

SIGNS = {"garg": 1.0, "von_oswald": -1.0, "ahn": -1.0, "bai": 1.0, "akyurek": 1.0}


def _check(X, y, Xq):
    X, y, Xq = (np.asarray(a, dtype=np.float64) for a in (X, y, Xq))
    if X.ndim != 3 or y.shape != X.shape[:2] or Xq.ndim != 3 or Xq.shape[::2] != X.shape[::2]:
        raise ConstructionError(f"expected X [B,n,d], y [B,n], Xq [B,m,d]; got {X.shape}, {y.shape}, {Xq.shape}")
    return X, y, Xq


def to_garg(X, y, Xq) -> np.ndarray:
    X, y, Xq = _check(X, y, Xq)
    B, n, d = X.shape
    xs = np.concatenate([X, Xq], 1)
    ys = np.concatenate([y, np.zeros((B, Xq.shape[1]))], 1)
    z = np.zeros((B, 2 * xs.shape[1], d))
    z[:, 0::2] = xs
    z[:, 1::2, 0] = ys
    return z


def from_garg(z, n: int):
    z = np.asarray(z, dtype=np.float64)
    return z[:, 0 : 2 * n : 2], z[:, 1 : 2 * n : 2, 0], z[:, 2 * n :: 2]


def to_von_oswald(X, y, Xq):
    """numpy in, numpy out; torch tensors in, torch out (differentiable: ``verify.train``)."""
    if isinstance(X, torch.Tensor):
        cat, zeros = torch.cat, torch.zeros_like
    else:
        X, y, Xq = _check(X, y, Xq)
        cat, zeros = np.concatenate, np.zeros_like
    return cat([cat([X, y[..., None]], -1), cat([Xq, zeros(Xq[..., :1])], -1)], 1)


def from_von_oswald(E, n: int):
    E = np.asarray(E, dtype=np.float64)
    return E[:, :n, :-1], E[:, :n, -1], E[:, n:, :-1]


def read_von_oswald(E, n: int):
    """Prediction from tokens after the layers (numpy or torch): minus the query's y entry."""
    return SIGNS["von_oswald"] * E[..., n:, -1]


def to_ahn(X, y, Xq) -> np.ndarray:
    return to_von_oswald(X, y, Xq).transpose(0, 2, 1)


def from_ahn(Z, n: int):
    return from_von_oswald(np.asarray(Z).transpose(0, 2, 1), n)


def read_ahn(Z, n: int) -> np.ndarray:
    return SIGNS["ahn"] * np.asarray(Z)[..., -1, n:]


def to_bai(X, y, Xq, D: int) -> np.ndarray:
    X, y, Xq = _check(X, y, Xq)
    B, n, d = X.shape
    m = Xq.shape[1]
    if D < d + 3:
        raise ConstructionError(f"Bai's tokens need D >= d + 3 = {d + 3}, got D={D}")
    H = np.zeros((B, n + m, D))
    H[:, :n, :d], H[:, n:, :d] = X, Xq
    H[:, :n, d] = y
    H[:, :, D - 2] = 1.0
    H[:, :n, D - 1] = 1.0  # t_i = 1 on context tokens, 0 on queries
    return H


def from_bai(H, d: int):
    H = np.asarray(H, dtype=np.float64)
    ctx = H[0, :, -1] == 1.0
    n = int(ctx.sum())
    if not ctx[:n].all():
        raise ConstructionError("Bai tokens: context tokens (t = 1) must come before the queries (t = 0)")
    return H[:, :n, :d], H[:, :n, d], H[:, n:, :d]


def read_bai(H, n: int, d: int) -> np.ndarray:
    return SIGNS["bai"] * np.asarray(H)[..., n:, d]


def to_akyurek(X, y, Xq) -> np.ndarray:
    X, y, Xq = _check(X, y, Xq)
    B, n, d = X.shape
    m = Xq.shape[1]
    H = np.zeros((B, 2 * n + m, d + 1))
    H[:, 0 : 2 * n : 2, 1:] = X
    H[:, 1 : 2 * n : 2, 0] = y
    H[:, 2 * n :, 1:] = Xq
    return H


def from_akyurek(H, n: int):
    H = np.asarray(H, dtype=np.float64)
    return H[:, 0 : 2 * n : 2, 1:], H[:, 1 : 2 * n : 2, 0], H[:, 2 * n :, 1:]
