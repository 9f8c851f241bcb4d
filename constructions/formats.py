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

from . import parts
from .errors import ConstructionError

SIGNS = {"garg": 1.0, "von_oswald": -1.0, "ahn": -1.0, "bai": 1.0, "akyurek": 1.0}


def _arr(a, name: str, ndim: int, keep_torch: bool = False):
    """``a`` as a finite real float64 numpy array with ``ndim`` axes (a torch tensor stays one with
    ``keep_torch``); complex, masked, bool, string or non-finite input is refused."""
    if isinstance(a, torch.Tensor) and keep_torch:
        if a.layout != torch.strided or a.device.type == "meta" or a.is_complex() or a.dtype == torch.bool \
                or not a.is_floating_point():
            raise ConstructionError(f"{name} must be a dense floating-point tensor, got {a.dtype} ({a.layout}, {a.device})")
        if not bool(torch.isfinite(a.detach()).all()):
            raise ConstructionError(f"{name} contains NaN or inf")
    else:
        a = parts.real_array(a, name)
    if a.ndim != ndim:
        raise ConstructionError(f"{name} must have {ndim} axes, got shape {tuple(a.shape)}")
    return a


def _count(v, name: str, high: int) -> int:
    v = int(parts._number(v, name, "iu"))
    if not 0 <= v <= high:
        raise ConstructionError(f"{name} must be an integer in [0, {high}], got {v}")
    return v


def _check(X, y, Xq, keep_torch: bool = False):
    torch_in = keep_torch and isinstance(X, torch.Tensor)
    X, y, Xq = (_arr(a, name, k, torch_in) for a, name, k in ((X, "X", 3), (y, "y", 2), (Xq, "Xq", 3)))
    if torch_in:  # torch out: tensors of one dtype (float64 unless all three share one) on X's device
        same = all(isinstance(a, torch.Tensor) and a.dtype == X.dtype for a in (y, Xq))
        X, y, Xq = (a if same else torch.as_tensor(a, device=X.device).to(torch.float64) for a in (X, y, Xq))
    if tuple(y.shape) != tuple(X.shape[:2]) or tuple(Xq.shape[::2]) != tuple(X.shape[::2]):
        raise ConstructionError(f"expected X [B,n,d], y [B,n], Xq [B,m,d]; got {tuple(X.shape)}, {tuple(y.shape)}, "
                                f"{tuple(Xq.shape)}")
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
    z = _arr(z, "z", 3)
    n = _count(n, "n", z.shape[1] // 2)
    return z[:, 0 : 2 * n : 2], z[:, 1 : 2 * n : 2, 0], z[:, 2 * n :: 2]


def to_von_oswald(X, y, Xq):
    """numpy in, numpy out; torch tensors in, torch out (differentiable: ``verify.train``)."""
    torch_in = isinstance(X, torch.Tensor)
    X, y, Xq = _check(X, y, Xq, keep_torch=torch_in)
    cat, zeros = (torch.cat, torch.zeros_like) if torch_in else (np.concatenate, np.zeros_like)
    return cat([cat([X, y[..., None]], -1), cat([Xq, zeros(Xq[..., :1])], -1)], 1)


def from_von_oswald(E, n: int):
    E = _arr(E, "E", 3)
    n = _count(n, "n", E.shape[1])
    return E[:, :n, :-1], E[:, :n, -1], E[:, n:, :-1]


def read_von_oswald(E, n: int):
    """Prediction from tokens after the layers (numpy or torch): minus the query's y entry."""
    E = _arr(E, "E", 3, keep_torch=True)
    return SIGNS["von_oswald"] * E[..., _count(n, "n", E.shape[1]):, -1]


def to_ahn(X, y, Xq):
    """numpy in, numpy out; torch tensors in, torch out."""
    return to_von_oswald(X, y, Xq).transpose(-1, -2) if isinstance(X, torch.Tensor) else \
        to_von_oswald(X, y, Xq).transpose(0, 2, 1)


def from_ahn(Z, n: int):
    return from_von_oswald(_arr(Z, "Z", 3).transpose(0, 2, 1), n)


def read_ahn(Z, n: int) -> np.ndarray:
    Z = _arr(Z, "Z", 3)
    return SIGNS["ahn"] * Z[..., -1, _count(n, "n", Z.shape[2]):]


def to_bai(X, y, Xq, D: int) -> np.ndarray:
    X, y, Xq = _check(X, y, Xq)
    B, n, d = X.shape
    m = Xq.shape[1]
    D = int(parts._number(D, "D", "iu"))
    if D < d + 3:
        raise ConstructionError(f"Bai's tokens need D >= d + 3 = {d + 3}, got D={D}")
    if B * (n + m) * D > parts.limits()[1]:
        raise ConstructionError(f"Bai's tokens of width D={D} for {B} prompt(s) of {n + m} tokens exceed the element "
                                f"limit {parts.limits()[1]:.3g} (docs/reliability.md); use a smaller D or batch")
    H = np.zeros((B, n + m, D))
    H[:, :n, :d], H[:, n:, :d] = X, Xq
    H[:, :n, d] = y
    H[:, :, D - 2] = 1.0
    H[:, :n, D - 1] = 1.0  # t_i = 1 on context tokens, 0 on queries
    return H


def from_bai(H, d: int):
    H = _arr(H, "H", 3)
    d = _count(d, "d", H.shape[2] - 3)
    ctx = H[0, :, -1] == 1.0
    n = int(ctx.sum())
    if not ctx[:n].all():
        raise ConstructionError("Bai tokens: context tokens (t = 1) must come before the queries (t = 0)")
    return H[:, :n, :d], H[:, :n, d], H[:, n:, :d]


def read_bai(H, n: int, d: int) -> np.ndarray:
    H = _arr(H, "H", 3)
    return SIGNS["bai"] * H[..., _count(n, "n", H.shape[1]):, _count(d, "d", H.shape[2] - 1)]


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
    H = _arr(H, "H", 3)
    n = _count(n, "n", H.shape[1] // 2)
    return H[:, 0 : 2 * n : 2, 1:], H[:, 1 : 2 * n : 2, 0], H[:, 2 * n :, 1:]
