"""The parts kit: the shared building blocks every construction is made of (public API).

A construction module (the toolkit's own, or a user's) builds its weights from these parts,
writing them through the named slots of a :class:`~constructions.layout.ResidualLayout`,
never at hand-computed indices.  No construction module imports another: what two of them
share lives here.

Shapes: D residual width, d input dimension, ``e`` a head's width.  A *head* is a dict of
``W_Q [D, e], W_K [D, e], W_V [D, e'], W_O [e', D]`` (rows and columns as TransformerLens:
token row-vectors times weights); :func:`block` stacks heads into a
:class:`~constructions.spec.BlockSpec`.  Slot reads and writes are ``{slot: [size, e]}`` and
``{slot: [e, size]}`` blocks (:meth:`ResidualLayout.read` / :meth:`~ResidualLayout.write`).

* **Parameter validators**: :func:`positive_int`, :func:`seed`, :func:`real`, :func:`real_array`, :func:`device`.
* **Size limits**: :func:`budget` (called by a factory before it allocates), :func:`size_limit`,
  :func:`limits`.
* **Layouts**: :func:`lsa_layout` (von Oswald's token ``(x, y)``, readout ``-y``).
* **Linear-attention heads**: :func:`gd_head` (a (preconditioned) GD step on the residuals
  in ``y``), :func:`product_head` (a token's own linear form times the mean of a value over
  the context keys: the ridge decay term, momentum, products of replicated scalars),
  :func:`newton_schulz_heads` (one Newton-Schulz iteration on an inverse held by ridge tokens).
* **ReLU-attention heads** (Bai et al.'s gated heads): :func:`gated_relu_head`,
  :func:`sign_split` (two gated heads whose sum is a linear head), :func:`relu_gd_heads`,
  :func:`relu_decay_head`, :func:`relu_readout_heads`.
* **MLPs**: :func:`units_mlp` (any ReLU/GeLU MLP from units; :func:`linear_units` and
  :func:`clear_units` make units), :func:`feature_mlp` (a ReLU
  feature map into feature slots), :func:`soft_threshold_mlp`,
  :func:`zero_mlp`, :func:`bias_mlp`.
* **Domain checks** (``check(X, y, Xq)`` functions for ``Construction(domain=...)``):
  :func:`step_check`, :func:`precond_check`, :func:`norm_check`, :func:`mask_check`,
  :func:`label_check`, :func:`all_checks`.
* **Sums of ReLUs for a scalar function**: :func:`relu_interpolant` (the knots and coefficients of
  a piecewise-linear interpolant, Bai et al.'s sigmoid; its value is
  :func:`verify.reference.relu_sum`), :func:`relu_antiderivative` (a function whose derivative is
  that interpolant: squared ReLUs; its value is :func:`verify.reference.smoothed`).
* **Iteration counts and splits**: :func:`squaring_iters`, :func:`fixed_examples`.

Domain-check contract: ``check(X, y, Xq)`` receives the validated prompt as float64 torch
tensors ``X [B, n, d]``, ``y [B, n]``, ``Xq [B, m, d]`` (finite, shapes checked, on the
model's device); it returns nothing and raises :class:`ConstructionError` naming the
violated condition, the prompt of the batch and the fix.
"""
from __future__ import annotations

import contextlib
import contextvars
import inspect
import math
import numbers

import numpy as np
import torch

from .errors import ConstructionError
from .layout import Readout, ResidualLayout
from .spec import AttentionSpec, BlockSpec, MLPSpec

#: relative slack on the stability limits (round-off of the eigenvalue solver)
STABILITY_SLACK = 1e-9
#: relative slack on a norm bound: float32 rounding moves a norm by <= 6e-8 relative
NORM_SLACK = 1e-6


# -- parameter validators ------------------------------------------------------------------------
def _number(v, name: str, kinds: str, what: str | None = None):
    """``v`` as a Python number if it is a real scalar of numpy kind in ``kinds`` (``"iu"`` integers,
    ``"iuf"`` reals): a Python int/float, a numpy scalar or 0-d array, or a 0-d torch tensor.
    Bools, strings, bytes, complex numbers, arrays of more than one entry and the rest are
    refused (a string is never read as a number)."""
    what = what or ("an integer" if kinds == "iu" else "a real number")
    if isinstance(v, torch.Tensor):
        if v.ndim != 0 or v.layout != torch.strided or v.device.type == "meta" or v.is_complex() \
                or v.dtype == torch.bool or (kinds == "iu" and v.is_floating_point()):
            raise ConstructionError(f"{name} must be {what}, got a tensor of shape {tuple(v.shape)} and dtype {v.dtype}")
        v = v.item()
    elif isinstance(v, (np.ndarray, np.generic)):
        if np.ndim(v) != 0 or np.asarray(v).dtype.kind not in kinds:
            raise ConstructionError(f"{name} must be {what}, got a numpy value of shape {np.shape(v)} and dtype "
                                    f"{np.asarray(v).dtype}")
        v = np.asarray(v).item()
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or (kinds == "iu" and not isinstance(v, numbers.Integral)):
        raise ConstructionError(f"{name} must be {what}, got {v!r} ({type(v).__name__})")
    return v


def positive_int(v, name: str) -> int:
    """``v`` as an int >= 1 (a Python, numpy or 0-d torch integer; bools, floats and strings
    refused), else :class:`ConstructionError`.  Sizes are bounded by :func:`budget`."""
    i = int(_number(v, name, "iu", "a positive integer"))
    if i < 1:
        raise ConstructionError(f"{name} must be a positive integer, got {v!r}")
    return i


def seed(v, name: str = "seed") -> int:
    """``v`` as a non-negative int for ``np.random.default_rng`` (bools, floats, strings and None
    refused), else :class:`ConstructionError`."""
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < 0:
        raise ConstructionError(f"{name} must be a non-negative integer, got {v!r}")
    return int(v)


def real(v, name: str, low: float = 0.0, strict: bool = True) -> float:
    """``v`` as a finite float ``> low`` (``>= low`` with ``strict=False``): a Python, numpy or
    0-d torch real number (bools, strings, bytes and complex numbers refused)."""
    try:
        f = float(_number(v, name, "iuf"))
    except OverflowError:  # an int beyond float range
        f = math.inf
    if not math.isfinite(f) or (f <= low if strict else f < low):
        raise ConstructionError(f"{name} must be finite and {'>' if strict else '>='} {low}, got {v!r}")
    return f


def real_array(v, name: str, shape: tuple | None = None) -> np.ndarray:
    """``v`` as a finite float64 numpy array (of ``shape`` if given): numpy arrays, nested lists
    and torch tensors of real numbers.  Complex, bool, string, object and masked arrays are
    refused (a mask would be ignored), as are NaN and inf."""
    if isinstance(v, np.ma.MaskedArray):
        raise ConstructionError(f"{name} is a masked array; fill the masked entries first (a.filled(value))")
    if isinstance(v, torch.Tensor):
        if v.layout != torch.strided or v.device.type == "meta":
            raise ConstructionError(f"{name} must be a dense tensor with data, got layout {v.layout} on {v.device}")
        v = v.detach().cpu().resolve_conj().resolve_neg()
        v = (v.to(torch.float64) if v.is_floating_point() else v).numpy()  # numpy has no bfloat16
    try:
        a = np.array(v, copy=True)
    except (TypeError, ValueError) as e:
        raise ConstructionError(f"{name} could not be read as an array of real numbers: {e}") from None
    if a.dtype.kind not in "iuf":
        raise ConstructionError(f"{name} must hold real numbers, got dtype {a.dtype}")
    a = a.astype(np.float64)
    if shape is not None and a.shape != tuple(shape):
        raise ConstructionError(f"{name} must have shape {tuple(shape)}, got {a.shape}")
    if not np.isfinite(a).all():
        raise ConstructionError(f"{name} must be finite (it holds NaN or inf)")
    return a


def device(device) -> torch.device:
    """``device`` as a torch device that exists here, else :class:`ConstructionError`."""
    if not isinstance(device, (str, torch.device)):
        raise ConstructionError(f"device must be a string such as 'cpu' or 'cuda', or a torch.device; got {device!r}")
    try:
        dev = torch.device(device)
        torch.empty(0, device=dev)
    except (RuntimeError, AssertionError, ValueError, TypeError) as e:
        first = (str(e).strip().splitlines() or [type(e).__name__])[0][:80]
        raise ConstructionError(f"device {str(device)!r} is not usable here ({first}); use 'cpu', or 'cuda' on a "
                                "machine with a GPU") from None
    if dev.type == "meta":
        raise ConstructionError("device 'meta' holds no data; use 'cpu' or 'cuda'")
    return dev


# -- size limits ------------------------------------------------------------------------------------
#: the default limits: parameters of one construction (:func:`budget`, checked by the factories
#: before they allocate, and by ``Construction`` on what was built) and elements of the largest
#: tensor one forward pass forms (``Construction.prepare``: the stream of the whole batch, or one
#: prompt's scores of a scores-first attention block).  2**26 float64 numbers are 512 MiB.
MAX_PARAMS = 2**26
MAX_ELEMENTS = 2**28
_LIMITS = contextvars.ContextVar("icl_size_limits", default=(MAX_PARAMS, MAX_ELEMENTS))


def limits() -> tuple[int, int]:
    """The size limits in force: ``(max_params, max_elements)``."""
    return _LIMITS.get()


@contextlib.contextmanager
def size_limit(max_params: int | None = None, max_elements: int | None = None):
    """Raise (or lower) the size limits inside a ``with`` block::

        with constructions.parts.size_limit(max_params=10**9):
            c = constructions.gd(d=2000, steps=100, lr=0.1)
    """
    old = _LIMITS.get()
    new = (old[0] if max_params is None else positive_int(max_params, "max_params"),
           old[1] if max_elements is None else positive_int(max_elements, "max_elements"))
    token = _LIMITS.set(new)
    try:
        yield new
    finally:
        _LIMITS.reset(token)


def budget(name: str, *, layers: int, width: int, heads: int = 1, d_head: int | None = None, mlp: int = 0,
           extra: int = 0) -> None:
    """Refuse, before anything is allocated, a construction whose parameter count (``layers``
    blocks of ``heads`` heads of width ``d_head`` (default: ``width``) and MLPs of ``mlp`` units
    on a stream of ``width``, plus ``extra``) exceeds the limit in force (:func:`size_limit`)."""
    e = width if d_head is None else d_head
    count = layers * (heads * 4 * width * e + 2 * width * mlp + mlp + width) + extra
    limit = limits()[0]
    if count > limit:
        raise ConstructionError(
            f"{name}: about {count:.3g} parameters ({layers} layers, width {width}, {heads} head(s), {mlp} MLP "
            f"units) exceed the size limit {limit:.3g} (docs/reliability.md); use smaller sizes, or raise the limit "
            "with constructions.parts.size_limit(max_params=N)")


# -- layouts ---------------------------------------------------------------------------------------
def lsa_layout(d: int, *extra) -> ResidualLayout:
    """von Oswald et al.'s token ``(x, y)`` (x_i and y_i on context tokens, x_q and 0 on queries),
    then the ``extra`` slots ``(name, size, fill)``; readout ``-y`` (docs/pitfalls.md #1)."""
    return ResidualLayout.of([("x", d, "x"), ("y", 1, "y"), *extra], Readout("y", -1.0))


# -- linear-attention heads ------------------------------------------------------------------------
def gd_head(lay: ResidualLayout, P: np.ndarray, x: str = "x", y: str = "y") -> dict:
    """One linear head: ``y_j <- y_j - (1/n) sum_i (x_j^T P x_i) y_i`` for every token j.

    With the residuals ``y_i - w.x_i`` in the context's ``y`` slots this is
    ``w <- w - P grad L(w)``.  The score is ``q_j.k_i`` with ``q_j = P^T x_j`` (``W_Q``'s x
    block is P because tokens are row vectors) and ``k_i = x_i``: the transpose trap of
    docs/pitfalls.md #5.
    """
    d = lay[x].size
    return dict(W_Q=lay.read({x: P}, d), W_K=lay.read({x: np.eye(d)}, d),
                W_V=lay.read({y: np.eye(1)}, 1), W_O=lay.write({y: -np.eye(1)}, 1))


def softmax_pair_heads(lay: ResidualLayout, P: np.ndarray, beta: float, x: str = "x", y: str = "y") -> list[dict]:
    """Two softmax heads that together approximate :func:`gd_head` (von Oswald et al. 2023, App. A.9):
    scores ``+-beta x_j^T P x_i``, value ``y_i``, outputs ``-/+ 1/(2 beta)`` into ``y``.  Their sum is
    ``-(1/n) sum_i (s_ji - sbar_j) y_i + O(beta^2)`` (exact to that order on centred inputs, where
    ``sbar_j = 0``: :mod:`constructions.softmax_heads`)."""
    d = lay[x].size
    return [dict(W_Q=lay.read({x: sign * beta * np.asarray(P, dtype=np.float64)}, d), W_K=lay.read({x: np.eye(d)}, d),
                 W_V=lay.read({y: np.eye(1)}, 1), W_O=lay.write({y: -sign / (2 * beta) * np.eye(1)}, 1))
            for sign in (1.0, -1.0)]


def product_head(lay: ResidualLayout, q: dict, v: dict, o: dict, e: int = 1) -> dict:
    """Linear head ``out_j = o^T (q^T h_j) mean_i v^T h_i``, the key being the constant slot
    ``one``: a token's own linear form ``q`` (``{slot: [size, e]}``) times the mean over the n
    context keys of the value ``v``.  With ``v = {"one": 1}`` it is a token-local linear map
    (the ridge decay term, momentum); with v a quantity replicated in every context token it
    is a product of the token's scalar with that quantity."""
    ev = np.shape(next(iter(v.values())))[1]
    return dict(W_Q=lay.read(q, e), W_K=lay.read({"one": np.ones((1, e))}, e), W_V=lay.read(v, ev),
                W_O=lay.write(o, ev))


def bilinear_heads(lay: ResidualLayout, q: dict, k: dict, v: dict, o: dict, e: int, kind: str = "linear") -> list[dict]:
    """The linear head ``out_i = o^T sum_j pattern(q_i.k_j) v_j`` (slot reads ``q``, ``k``, ``v``
    ``{slot: [size, e]}``, write ``o`` ``{slot: [e', size]}``): one linear head, or for ``kind="relu"``
    its sign split, ``relu(z) v - relu(-z) v = z v``, with no gate (every key the block's mask admits
    counts; docs/pitfalls.md #17)."""
    ev = np.shape(next(iter(v.values())))[1]
    signed = lambda m, sign: {s: sign * np.asarray(b, dtype=np.float64) for s, b in m.items()}  # noqa: E731
    return [dict(W_Q=lay.read(signed(q, sign), e), W_K=lay.read(k, e), W_V=lay.read(v, ev),
                 W_O=lay.write(signed(o, sign), ev)) for sign in ((1.0,) if kind == "linear" else (1.0, -1.0))]


def newton_schulz_heads(lay: ResidualLayout, alpha: float, lam: float, key: tuple = ("x",), query: tuple = ("x",),
                        u: str = "u", ridge: str = "rx") -> list[dict]:
    """Three linear heads whose sum maps every token's ``u_t = S x_t`` to ``S' x_t``,
    ``S' = 2 S - alpha S A S`` (one Newton-Schulz iteration for ``A^{-1}`` on the scaled iterate
    ``S = M / alpha``).  Every key j holds ``u_j = S x_j`` (x_j: its input, or its ridge vector) and
    ``k_j`` (the sum of its ``key`` slots), and ``A = (1/n) sum_j x_j k_j^T``; the d *ridge tokens*
    hold ``ridge = sqrt(n lam) e_k`` (0 on every other token), which adds ``lam I`` to A:

    * Newton term: score ``u_t . k_j`` (k_j the sum of the ``key`` slots), value ``u_j``, output
      ``-alpha``: ``-alpha S A S x_t``;
    * fresh ``2 S x_t``: score ``q_t . ridge_k`` (q_t the sum of the ``query`` slots: the token's own
      x, or its ridge vector), value ``u_k``, output ``2/lam``;
    * the old copy removed: score ``u_t . ridge_k``, value ``ridge_k``, output ``-1/lam``: ``-u_t``.

    Recomputing ``2 S x_t`` from the ridge tokens instead of doubling ``u_t`` keeps the iteration
    self-correcting (the state is the matrix the ridge tokens hold; :func:`constructions.ridge_newton`'s
    module docstring)."""
    d = lay[u].size
    I = np.eye(d)
    newton = bilinear_heads(lay, {u: I}, {k: I for k in key}, {u: I}, {u: -alpha * I}, d)
    fresh = bilinear_heads(lay, {q: I for q in query}, {ridge: I}, {u: I}, {u: 2.0 / lam * I}, d)
    remove = bilinear_heads(lay, {u: I}, {ridge: I}, {ridge: I}, {u: -1.0 / lam * I}, d)
    return newton + fresh + remove


# -- ReLU-attention heads (Bai et al. 2023, Defs. 1-3: attention relu(q.k)/n) -----------------------------
def gated_relu_head(lay: ResidualLayout, q: dict, k: dict, v: dict, o: dict, e: int, mask_const: float,
                    gate="gate", sign: float = 1.0) -> dict:
    """One ReLU head with score ``sign * (q_i.k_j) + B * gate_j`` (B = ``mask_const``).

    ``q``/``k`` are slot reads ``[size, e]`` forming the linear score; ``v``/``o`` the value
    read ``[size, e']`` and output write ``[e', size]``.  The gate is one extra head
    dimension: the query reads ``one`` (times B), the key reads ``gate`` (a slot of size 1,
    or ``(slot, i)`` for entry i of a wider slot).  A gate slot holds 0 on the keys a head
    admits and -1 on the others, so their score drops by B (docs/pitfalls.md #15).
    ``sign = -1`` negates the score and the output (the second head of a sign split).
    """
    qe = {s: np.hstack([sign * np.asarray(b, float), np.zeros((np.shape(b)[0], 1))]) for s, b in q.items()}
    qe["one"] = qe.get("one", np.zeros((1, e + 1))) + np.eye(e + 1)[e:] * mask_const
    ke = {s: np.hstack([np.asarray(b, float), np.zeros((np.shape(b)[0], 1))]) for s, b in k.items()}
    gslot, gi = (gate, 0) if isinstance(gate, str) else gate
    gread = np.zeros((lay[gslot].size, e + 1))
    gread[gi, e] = 1.0
    ke[gslot] = ke.get(gslot, np.zeros_like(gread)) + gread
    ev = np.shape(next(iter(v.values())))[1]
    return dict(W_Q=lay.read(qe, e + 1), W_K=lay.read(ke, e + 1), W_V=lay.read(v, ev),
                W_O=lay.write({s: sign * np.asarray(b, float) for s, b in o.items()}, ev))


def sign_split(lay, q, k, v, o, e, mask_const, gate="gate") -> list[dict]:
    """Two gated ReLU heads whose sum is the linear head ``(q_i.k_j) v_j o`` over admitted keys:
    ``relu(z) v - relu(-z) v = z v`` (the second head carries the *negated* value,
    docs/pitfalls.md #17)."""
    return [gated_relu_head(lay, q, k, v, o, e, mask_const, gate, s) for s in (1.0, -1.0)]


def relu_gd_heads(lay: ResidualLayout, lr: float, mask_const: float, w: str = "w", gate="gate",
                  scale: float = 1.0) -> list[dict]:
    """Two heads: ``w <- w - scale * lr * (1/n) sum_{admitted j} (w.x_j - y_j) x_j`` for the
    iterate replicated in every token's slot ``w`` (Bai et al. 2023, Prop. C.2, square loss)."""
    d = lay["x"].size
    q = {w: np.eye(d, d + 1), "one": -np.eye(d + 1)[d:]}  # q_i = (w_i, -1)
    k = {"x": np.eye(d, d + 1), "y": np.eye(d + 1)[d:]}  # k_j = (x_j, y_j)
    return sign_split(lay, q, k, {"x": np.eye(d)}, {w: -scale * lr * np.eye(d)}, d + 1, mask_const, gate)


def relu_decay_head(lay: ResidualLayout, rate: float, mask_const: float, w: str = "w", gate="gate") -> dict:
    """Bai et al.'s l2 head (Cor. C.1): constant score 1 on admitted keys, value ``-rate * w_j``:
    ``w <- (1 - rate) w`` for a replicated iterate."""
    d = lay["x"].size
    return gated_relu_head(lay, {"one": [[1.0]]}, {"one": [[1.0]]}, {w: np.eye(d)}, {w: -rate * np.eye(d)},
                           1, mask_const, gate)


def relu_readout_heads(lay: ResidualLayout, mask_const: float, w: str = "w", out: str = "y", gate="gate",
                       scale: float = 1.0) -> list[dict]:
    """Two heads writing ``scale * <w, x_i>`` into slot ``out`` of every token i (Bai's readout)."""
    d = lay["x"].size
    return sign_split(lay, {"x": np.eye(d)}, {w: np.eye(d)}, {"one": [[1.0]]}, {out: [[scale]]}, d, mask_const, gate)


# -- MLPs ------------------------------------------------------------------------------------------------
def units_mlp(lay: ResidualLayout, act: str, units: list[tuple[dict, float, dict]], bias_out: dict | None = None,
              layernorm: bool = False) -> MLPSpec:
    """An MLP from hidden units ``(reads {slot: vector}, bias, writes {slot: vector})``: unit f
    computes ``act(sum_s reads[s] . h[s] + bias)`` and adds ``writes[s]`` times it to slot s;
    ``bias_out`` adds constants to slots."""
    F = len(units)
    W_in, W_out, b_in = np.zeros((lay.width, F)), np.zeros((F, lay.width)), np.zeros(F)
    for f, (reads, b, writes) in enumerate(units):
        for s, v in reads.items():
            W_in[lay[s].index, f] += v
        for s, v in writes.items():
            W_out[f, lay[s].index] += v
        b_in[f] = b
    b_out = np.zeros(lay.width)
    for s, v in (bias_out or {}).items():
        b_out[lay[s].index] += v
    return MLPSpec(act, W_in, b_in, W_out, b_out, layernorm=layernorm)


def feature_mlp(lay: ResidualLayout, W_in, b_in, W_out, src: str = "x", dst: str = "f") -> MLPSpec:
    """A ReLU MLP writing the feature map ``m(x) = W_out relu(W_in x + b_in)`` of slot ``src`` into
    slot ``dst`` (which must hold 0 before it): ``W_in [h, d]``, ``b_in [h]``, ``W_out [k, h]`` for
    ``d = |src|``, ``k = |dst|``, h hidden units.  Every token gets its own features (queries too)."""
    W_in, b_in, W_out = (np.asarray(a, dtype=np.float64) for a in (W_in, b_in, W_out))
    h = W_in.shape[0]
    return MLPSpec("relu", lay.read({src: W_in.T}, h), b_in.copy(), lay.write({dst: W_out.T}, h), np.zeros(lay.width))


def soft_threshold_mlp(lay: ResidualLayout, threshold: float, w: str = "w") -> MLPSpec:
    """``w <- S_c(w)``, ``S_c(v) = sign(v) max(|v| - c, 0)``, as a residual ReLU MLP with 4d units
    (Bai et al. 2023, Prop. C.1): ``S_c(w) - w = relu(w - c) - relu(-w - c) - relu(w) + relu(-w)``."""
    d = lay[w].size
    I = np.eye(d)
    W_in = lay.read({w: np.hstack([I, -I, I, -I])}, 4 * d)
    b_in = np.concatenate([-threshold * np.ones(d), -threshold * np.ones(d), np.zeros(2 * d)])
    W_out = lay.write({w: np.vstack([I, -I, -I, I])}, 4 * d)
    return MLPSpec("relu", W_in, b_in, W_out, np.zeros(lay.width))


def box_projection_mlp(lay: ResidualLayout, radius: float, w: str = "w") -> MLPSpec:
    """``w <- clip(w, -R, R)`` coordinatewise as a residual ReLU MLP with 2d units (Bai et al.
    2023, App. C: a projection is a proximal step): ``clip(v) - v = -relu(v - R) + relu(-v - R)``."""
    d = lay[w].size
    I = np.eye(d)
    return MLPSpec("relu", lay.read({w: np.hstack([I, -I])}, 2 * d), -radius * np.ones(2 * d),
                   lay.write({w: np.vstack([-I, I])}, 2 * d), np.zeros(lay.width))


def shrink_mlp(lay: ResidualLayout, c: float, w: str = "w") -> MLPSpec:
    """``w <- (1 - c) w`` as a residual ReLU MLP with 2d units: ``-relu(c v) + relu(-c v) = -c v``
    (the proximal map of ``(lam/2)|w|^2`` with step lr is ``v/(1 + lr lam)``: ``c = lr lam/(1 + lr lam)``)."""
    d = lay[w].size
    I = np.eye(d)
    return MLPSpec("relu", lay.read({w: np.hstack([c * I, -c * I])}, 2 * d), np.zeros(2 * d),
                   lay.write({w: np.vstack([-I, I])}, 2 * d), np.zeros(lay.width))


def linear_units(reads: dict, writes: dict) -> list[tuple[dict, float, dict]]:
    """A linear map as two ReLU units (for :func:`units_mlp`): ``relu(v) - relu(-v) = v`` for
    ``v = sum_s reads[s] . h[s]``, added to the slots as ``writes``."""
    neg = lambda m: {s: -np.asarray(v, dtype=np.float64) for s, v in m.items()}  # noqa: E731
    return [(reads, 0.0, writes), (neg(reads), 0.0, neg(writes))]


def clear_units(lay: ResidualLayout, slots) -> list[tuple[dict, float, dict]]:
    """Units (for :func:`units_mlp`) that set the given slots to exactly 0: ``z - relu(z) + relu(-z) = 0``."""
    units = []
    for s in slots:
        for e in np.eye(lay[s].size):
            units += linear_units({s: e}, {s: -e})
    return units


def zero_mlp(lay: ResidualLayout, slots) -> MLPSpec:
    """A ReLU MLP that sets the given slots to exactly 0 (:func:`clear_units`)."""
    return units_mlp(lay, "relu", clear_units(lay, slots))


def bias_mlp(lay: ResidualLayout, values: dict) -> MLPSpec:
    """A ReLU MLP that adds constants to slots (its output bias; one idle unit)."""
    return units_mlp(lay, "relu", [({}, 0.0, {})], bias_out=values)


def block(kind: str, heads: list[dict], mlp: MLPSpec | None = None, **options) -> BlockSpec:
    """One block: the heads stacked as ``kind`` attention (``options``: ``causal``,
    ``null_score``), then the MLP (if any)."""
    return BlockSpec(AttentionSpec.from_heads(kind, heads, **options), mlp)


# -- domain checks -----------------------------------------------------------------------------------
def covariance(X: torch.Tensor) -> torch.Tensor:
    """``X^T X / n`` per prompt ``[B, d, d]``; refuses a prompt whose covariance overflows (an
    eigenvalue solver handed inf or NaN may crash the process)."""
    A = X.transpose(1, 2) @ X / X.shape[1]
    if not torch.isfinite(A).all():
        b = int((~torch.isfinite(A)).flatten(1).any(1).nonzero()[0])
        raise ConstructionError(f"prompt {b}: X^T X/n overflows {str(A.dtype).replace('torch.', '')} (max |x| = "
                                f"{float(X[b].abs().max()):.3g}); rescale X (and y) towards unit scale")
    return A


def lambda_max(X: torch.Tensor) -> torch.Tensor:
    """``lambda_max(X^T X / n)`` per prompt ``[B]`` (exact: an eigenvalue solve per prompt)."""
    return torch.linalg.eigvalsh(covariance(X))[:, -1]


def all_finite(t: torch.Tensor) -> bool:
    """Whether every entry of ``t`` is finite.  Certificate first: a finite sum has only finite
    terms (inf and NaN propagate through a sum), so one reduction decides the common case; the
    elementwise scan runs only when the sum is not finite (a NaN, an inf, or finite values whose
    sum overflows)."""
    if t.is_floating_point() and bool(torch.isfinite(t.sum())):
        return True
    return bool(torch.isfinite(t).all())


def spd_solve(A: torch.Tensor, b: torch.Tensor) -> torch.Tensor:
    """``A^+ b`` per prompt for symmetric positive semi-definite ``A [B, d, d]``, ``b [B, d]``: a
    Cholesky solve where A is positive definite (the usual case, far cheaper than an SVD), the
    pseudo-inverse only for the prompts whose factorisation fails or has a pivot at round-off level
    (singular A, e.g. n < d)."""
    L, info = torch.linalg.cholesky_ex(A)
    w = torch.cholesky_solve(b[..., None], L)[..., 0]
    # a singular A can factor in floats with a pivot at round-off level (its null space then gets a
    # huge, arbitrary component): such a pivot, below d eps times A's largest diagonal entry, counts
    # as a failed factorisation
    d = A.shape[-1]
    pivots = L.diagonal(dim1=-2, dim2=-1) ** 2
    tiny = pivots.amin(-1) <= d * torch.finfo(A.dtype).eps * A.diagonal(dim1=-2, dim2=-1).amax(-1)
    bad = ((info != 0) | tiny).nonzero().flatten()
    if bad.numel():
        w[bad] = (torch.linalg.pinv(A[bad], hermitian=True) @ b[bad][..., None])[..., 0]
    return w


def _first_above(values: torch.Tensor, limit: float):
    """``(b, values[b])`` for the first prompt b with ``values[b] > limit``, else None."""
    bad = (values > limit).nonzero()
    return None if bad.numel() == 0 else (int(bad[0, 0]), float(values[bad[0, 0]]))


def lambda_max_above(X: torch.Tensor, limit: float, lam: float = 0.0, transform: torch.Tensor | None = None):
    """The first prompt b with ``lambda_max(S_b) > limit`` for ``S_b = C^T X_b^T X_b C / n + lam I``
    (``C = transform``, default the identity), as ``(b, lambda_max(S_b))``; None if there is none.

    Certificates before the eigenvalue solve (S is symmetric positive semi-definite):
    ``lambda_max(S) <= tr(S) = |X C|_F^2 / n + d lam`` needs no covariance at all; the prompts
    it leaves undecided get the Gershgorin bound ``max_i sum_j |S_ij|``; only those still
    undecided get ``eigvalsh``.  Each bound is an upper bound, so a prompt passes only when its
    exact value would."""
    Z = X if transform is None else X @ transform
    n, d = Z.shape[1], Z.shape[2]
    tr = (Z * Z).sum((1, 2)) / n + d * lam
    todo = (~(tr <= limit)).nonzero().flatten()  # NaN/inf traces stay undecided
    if todo.numel() == 0:
        return None
    S = covariance(Z[todo]) + lam * torch.eye(d, dtype=Z.dtype, device=Z.device)
    gersh = S.abs().sum(-1).amax(-1)
    undecided = (gersh > limit).nonzero().flatten()
    if undecided.numel() == 0:
        return None
    exact = torch.linalg.eigvalsh(S[undecided])[:, -1]
    hit = _first_above(exact, limit)
    return None if hit is None else (int(todo[undecided[hit[0]]]), hit[1])


def prefix_lambda_max(X: torch.Tensor) -> torch.Tensor:
    """``max_k lambda_max(X_{:k}^T X_{:k} / k)`` over the prefix lengths k = 1..n, per prompt ``[B]``:
    the largest curvature of least squares on any prefix of the examples (a decoder's tokens
    see the prefixes of length 1..n-1, its queries all n).  Exact: an eigenvalue solve per
    prefix, in blocks of prompts and of prefixes holding at most the element limit
    (:func:`limits`) of ``d x d`` covariances at a time, whatever n and d."""
    B, n, d = X.shape
    out = torch.zeros(B, dtype=X.dtype, device=X.device)
    per = max(1, limits()[1] // (d * d))  # covariances per block
    pb = min(B, max(1, per // n))  # prompts per block
    kb = min(n, max(1, per // pb))  # prefixes per block
    for s in range(0, B, pb):
        x = X[s:s + pb]
        running = torch.zeros(x.shape[0], d, d, dtype=X.dtype, device=X.device)
        for k0 in range(0, n, kb):
            xb = x[:, k0:k0 + kb]
            cum = running[:, None] + torch.cumsum(xb[..., :, None] * xb[..., None, :], 1)  # sums of the first k
            running = cum[:, -1]
            C = cum / torch.arange(k0 + 1, k0 + xb.shape[1] + 1, dtype=X.dtype, device=X.device)[:, None, None]
            if not torch.isfinite(C).all():
                b = s + int((~torch.isfinite(C)).flatten(1).any(1).nonzero()[0])
                raise ConstructionError(f"prompt {b}: a prefix covariance X^T X/k overflows "
                                        f"{str(X.dtype).replace('torch.', '')} (max |x| = {float(X[b].abs().max()):.3g}); "
                                        "rescale X (and y) towards unit scale")
            out[s:s + pb] = torch.maximum(out[s:s + pb], torch.linalg.eigvalsh(C)[..., -1].amax(-1))
    return out


def prefix_step_check(lr: float, limit: float = 2.0):
    """``lr * lambda_max(X_{:k}^T X_{:k}/k) <= limit`` for every prefix length k = 1..n of every
    prompt (GD on each prefix is stable).  Certificate first: each prefix's curvature is at most
    ``max_j |x_j|^2``, so prompts with ``lr max_j |x_j|^2 <= limit`` pass without eigenvalues."""
    def check(X, y, Xq):
        bound = limit * (1 + STABILITY_SLACK) / lr
        cheap = (X * X).sum(-1).amax(-1)
        undecided = (cheap > bound).nonzero().flatten()
        if undecided.numel() == 0:
            return
        covariance(X)  # refuses an overflowing prompt by its index in the batch
        hit = _first_above(prefix_lambda_max(X[undecided]), bound)
        if hit is not None:
            b, v = int(undecided[hit[0]]), hit[1]
            raise stability_error("lr", lr, limit / v, b, f"use lr <= {limit:g}/lambda_max of the prompt's worst "
                                                           "prefix covariance (constructions.parts.prefix_lambda_max)")

    return check


def stability_error(what: str, value: float, limit: float, b: int, fix: str) -> ConstructionError:
    return ConstructionError(
        f"{what}={value:.6g} exceeds the stability limit {limit:.6g} for prompt {b} of the batch, "
        f"so the iteration would diverge; {fix}, or pass check=False to run it anyway"
    )


def step_check(lr: float, lam: float = 0.0, limit: float = 2.0, name: str = "lr", rows: int | None = None):
    """``name * lambda_max(X^T X/n + lam I) <= limit`` per prompt (the GD step's stability
    limit is 2); ``rows``: only the first ``rows`` context examples (a train split).  Decided by
    :func:`lambda_max_above` (trace and Gershgorin certificates, eigenvalues only where needed)."""
    def check(X, y, Xq):
        if lr == 0:
            return
        Xs = X if rows is None else X[:, :rows]
        hit = lambda_max_above(Xs, limit * (1 + STABILITY_SLACK) / lr, lam)
        if hit is not None:
            b, v = hit
            lam_term = " + lam I" if lam else ""
            raise stability_error(name, lr, limit / v, b, f"use {name} <= {limit:g}/lambda_max(X^T X/n{lam_term})")

    return check


def _psd_root(P: np.ndarray):
    """``C`` with ``P = C C^T`` if P is symmetric positive semi-definite (to round-off), else None."""
    if not np.array_equal(P, P.T):
        return None
    ev, V = np.linalg.eigh(P)
    if ev.min() < -1e-12 * max(abs(ev).max(), 1e-300):
        return None
    return V * np.sqrt(np.clip(ev, 0, None))


def precond_check(Ps: np.ndarray):
    """Spectral radius of ``I - P_t X^T X/n`` at most 1 for every layer's ``P_t`` (``[L, d, d]``).

    Each distinct P is checked once.  For a symmetric positive semi-definite ``P = C C^T`` the
    eigenvalues of ``P A`` are those of ``C^T A C`` (real, >= 0), so the condition is exactly
    ``lambda_max(C^T A C) <= 2``, decided by :func:`lambda_max_above`'s certificates; any other P
    gets the general eigenvalue solve."""
    distinct: dict[bytes, tuple[int, np.ndarray]] = {}
    for t, P in enumerate(Ps):
        distinct.setdefault(np.ascontiguousarray(P).tobytes(), (t, P))
    plan = [(t, P, _psd_root(P)) for t, P in distinct.values()]

    def check(X, y, Xq):
        A = None
        for t, P, C in plan:
            if C is not None:
                hit = lambda_max_above(X, 2 + STABILITY_SLACK, transform=torch.from_numpy(C).to(X))
                if hit is not None:
                    raise stability_error(f"spectral radius of I - P A (layer {t})", hit[1] - 1, 1.0, hit[0],
                                          "scale the preconditioner P down")
                continue
            A = covariance(X) if A is None else A
            I = torch.eye(A.shape[-1], dtype=A.dtype, device=A.device)
            M = I - torch.from_numpy(P).to(A) @ A
            if not torch.isfinite(M).all():
                raise ConstructionError(f"P A overflows float64 at layer {t} (the preconditioner times X^T X/n); "
                                        "rescale X or the preconditioner P")
            hit = _first_above(torch.linalg.eigvals(M).abs().max(-1).values, 1 + STABILITY_SLACK)
            if hit is not None:
                raise stability_error(f"spectral radius of I - P A (layer {t})", hit[1], 1.0, hit[0],
                                      "scale the preconditioner P down")

    return check


def norm_check(x_bound: float, why: str, queries: bool = False):
    """``|x| <= x_bound`` for every context input (and every query with ``queries=True``);
    ``why``: what relies on the bound (for the message)."""
    def check(X, y, Xq):
        xs = torch.cat([X, Xq], 1) if queries else X
        xmax = float(xs.norm(dim=-1).max())
        if xmax > x_bound * (1 + NORM_SLACK):
            which = "an input" if queries else "a context input"
            raise ConstructionError(f"{which} has norm {xmax:.6g} > x_bound={x_bound:.6g}: {why}; "
                                    f"rebuild with x_bound >= {xmax:.6g}")

    return check


def mask_check(mask_const: float, bound, what: str):
    """``mask_const >=`` the per-prompt score bound ``bound(X, y, Xq) -> [B]`` (every score a gate
    must push below zero; ``what`` names the bound in the message)."""
    def check(X, y, Xq):
        hit = _first_above(bound(X, y, Xq), mask_const)
        if hit is not None:
            b, v = hit
            raise ConstructionError(
                    f"mask_const={mask_const:.6g} is below the score bound {v:.6g} ({what}) of prompt {b}: "
                    f"the gate would not exclude the tokens it must; rebuild with mask_const >= {v:.6g}")

    return check


def label_check(values, name: str):
    """Every label ``y_i`` is one of ``values``."""
    values = tuple(float(v) for v in values)

    def check(X, y, Xq):
        ok = torch.zeros_like(y, dtype=torch.bool)
        for v in values:
            ok |= y == v
        if not torch.all(ok):
            raise ConstructionError(f"{name} needs labels y_i in {set(values)}")

    return check


def takes_dtype(check) -> bool:
    """Whether a domain check takes the run dtype (a ``dtype`` keyword): range checks need it."""
    try:
        return "dtype" in inspect.signature(check).parameters
    except (TypeError, ValueError):
        return False


def all_checks(*checks):
    """One domain check running ``checks`` in order (those taking ``dtype`` get the run dtype)."""
    def check(X, y, Xq, dtype=torch.float64):
        for c in checks:
            c(X, y, Xq, dtype=dtype) if takes_dtype(c) else c(X, y, Xq)

    return check


#: the degree of the products of prompt magnitudes every construction may form (a GD layer's
#: ``x^T P x y``): :func:`scale_check` keeps their size a normal number
SCALE_POWER = 3


def scale_range(dtype=torch.float64, power: int = SCALE_POWER) -> tuple[float, float]:
    """``[lo, hi]`` with ``lo^power = tiny/eps`` and ``hi^power = eps * max`` of ``dtype``."""
    fi = torch.finfo(dtype)
    return (fi.tiny / fi.eps) ** (1 / power), (fi.max * fi.eps) ** (1 / power)


def _first_outside(s: torch.Tensor, lo: float, hi: float, zero_ok: bool = False):
    """``(b, s[b])`` for the first prompt b with ``s[b]`` outside ``[lo, hi]`` (NaN and inf are
    outside; 0 is inside with ``zero_ok``), else None."""
    bad = ~((s >= lo) & (s <= hi))
    if zero_ok:
        bad &= s != 0
    idx = bad.nonzero()
    return None if idx.numel() == 0 else (int(idx[0, 0]), float(s[idx[0, 0]]))


def magnitude_check(power: int, what: str):
    """The products of ``power`` input magnitudes the construction forms (``what``) stay normal
    numbers of the run dtype with ``1/eps`` to spare on both sides: ``tiny/eps <= s^power <=
    eps * max`` for ``s = max_i |x_i|`` of every prompt (context and queries).  Below, the terms
    that matter at relative precision eps are subnormal or zero (underflow); above, they overflow."""
    def check(X, y, Xq, dtype=torch.float64):
        lo, hi = scale_range(dtype, power)
        hit = _first_outside(torch.cat([X, Xq], 1).norm(dim=-1).amax(-1), lo, hi)
        if hit is not None:
            b, v = hit
            side = "underflow" if v < lo else "overflow"
            raise ConstructionError(
                f"prompt {b}: max |x_i| = {v:.3g} is outside [{lo:.3g}, {hi:.3g}], where {what} (size |x|^{power}) "
                f"would {side} {str(dtype).replace('torch.', '')}; rescale X (and y) into that range "
                "(ridge is equivariant: w* scales by 1/s when X scales by s and lam by s^2)")

    return check


def scale_check(X, y, Xq, dtype=torch.float64) -> None:
    """The check every construction runs (``Construction.prepare``): each prompt's largest input
    norm ``max_i |x_i|`` and largest label ``max_i |y_i|``, unless exactly 0, lie in
    :func:`scale_range`, so that products of three of them (the size of every term a GD-type
    layer forms) neither overflow nor lose precision to subnormals (float64 about [4.6e-98,
    3.4e97], float32 [4.6e-11, 3.4e10])."""
    lo, hi = scale_range(dtype)
    with torch.no_grad():
        sx = torch.cat([X, Xq], 1).norm(dim=-1).amax(-1)  # inf where the norm itself overflows
        sy = y.abs().amax(-1)
    for what, s in (("max |x_i|", sx), ("max |y_i|", sy)):
        hit = _first_outside(s, lo, hi, zero_ok=True)
        if hit is not None:
            b, v = hit
            side = "underflow to subnormals" if v < lo else "overflow"
            raise ConstructionError(
                f"prompt {b}: {what} = {v:.3g} is outside [{lo:.3g}, {hi:.3g}], where the layers' products (size "
                f"|x|^2 |y|) would {side} in {str(dtype).replace('torch.', '')}; rescale the prompt into that "
                "range (or pass check=False)")


# -- sums of ReLUs for a scalar function ------------------------------------------------------------
def relu_interpolant(f, heads: int, radius: float) -> tuple[np.ndarray, np.ndarray, float]:
    """Knots ``s_0 = -R < ... < s_{heads-1} = R`` (equispaced) and coefficients ``a_m`` of the
    piecewise-linear interpolant of ``f`` at the knots, flat outside ``[-R, R]``:
    ``f_hat(s) = f(-R) + sum_m a_m relu(s - s_m)`` (:func:`verify.reference.relu_sum`).  Its error on ``[-R, R]`` is at
    most ``h^2 max|f''| / 8``, ``h = 2R/(heads - 1)``.  Returns (knots, a, f(-R))."""
    knots = np.linspace(-radius, radius, heads)
    vals = np.asarray(f(knots), dtype=np.float64)
    slopes = np.diff(vals) / np.diff(knots)  # heads - 1 pieces
    a = np.diff(np.concatenate([[0.0], slopes, [0.0]]))  # slope changes at every knot
    return knots, a, float(vals[0])


def relu_antiderivative(f, f_prime, heads: int, radius: float) -> tuple:
    """``(knots, b, h0, c0)``: ``h_hat(s) = h0 + sum_m b_m relu(s - s_m)``, the interpolant of ``f'``
    (:func:`relu_interpolant`), and the constant of its antiderivative
    ``f_tilde(s) = c0 + h0 s + sum_m b_m relu(s - s_m)^2 / 2`` with ``f_tilde(-R) = f(-R)``, so that
    ``f_tilde' = h_hat`` exactly (:func:`verify.reference.smoothed`): a smooth stand-in for f whose
    derivative is the sum of ReLUs, which makes a gradient or Newton step on it exact.  ``f_tilde``
    is within ``(s + R) max_{[-R, R]} |h_hat - f'|`` of f on ``[-R, R]``.  Refused when the knots are
    not distinct numbers."""
    with np.errstate(divide="ignore", invalid="ignore", over="ignore"):
        knots, b, h0 = relu_interpolant(f_prime, heads, radius)
    if not (np.isfinite(b).all() and np.all(np.diff(knots) > 0)):
        raise ConstructionError(f"the knots on [-R, R], R = {radius:.3g}, are not distinct numbers; use a radius of "
                                "moderate size (a normal float)")
    return knots, b, h0, float(f(-radius)) + h0 * radius


def logistic_radius(steps: int, lr: float, x_bound: float) -> float:
    """``R = steps * lr * x_bound^2``: no score ``<w_t, x>`` of logistic GD from 0 can leave ``[-R, R]``
    (with or without an l2 term inside the step limit), since ``|w_t| <= t lr x_bound``: every
    gradient of the logistic loss has norm at most ``x_bound``."""
    return steps * lr * x_bound * x_bound


# -- iteration counts and splits ---------------------------------------------------------------------
def squaring_iters(q: float, eps: float = 2.0**-53) -> int:
    """Smallest k >= 1 with ``q^(2^k) <= eps``: the iterations an error-squaring scheme (Newton
    for a reciprocal or an inverse) needs from a start with error factor ``q in [0, 1)``."""
    if not 0 <= q < 1:
        raise ConstructionError(f"the iteration's error factor q = {q!r} is not below 1 in float64, so it would never "
                                "converge: the regulariser is too small against x_bound^2 (raise lam, or lower x_bound)")
    return max(1, math.ceil(math.log2(math.log(eps) / math.log(q)))) if q > 0 else 1


def fixed_examples(n: int, name: str, fix: str, n_train: int | None = None):
    """A ``Construction.split`` for a construction built for exactly n context examples; it
    returns the number of train tokens (``n_train``, default all n)."""
    def split(n_prompt: int) -> int:
        if n_prompt != n:
            raise ConstructionError(f"{name} was built for n={n} context examples, got {n_prompt}; {fix}")
        return n if n_train is None else n_train

    return split
