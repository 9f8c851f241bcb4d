"""Mutation testing: small wrong changes to the constructions and to the transformer, applied at
run time, each of which ``icl-verify check`` and (where a proof applies) ``icl-verify prove``
must catch.

A :class:`Mutation` is a context manager factory (``patch``) and the claims that must catch it.
Construction mutations wrap a registered factory (in its module, where the claims' cases and the
proofs look it up, and in the registry, where the CLI does) so that every construction it builds
has one weight changed; transformer mutations replace one evaluation path (the attention pattern
or one evaluation order).  Nothing is written to disk and every patch is undone on exit.

``python benchmarks/mutation.py`` runs the whole catalogue and writes the table of
docs/mutation.md; ``tests/test_mutation.py`` runs it in the test suite.
"""
from __future__ import annotations

import contextlib
import copy
import dataclasses
import importlib
import time
from dataclasses import dataclass
from typing import Callable

import numpy as np
import torch

#: the relative size of the "one weight" mutations
SMALL = 1e-6


@dataclass(frozen=True)
class Mutation:
    """One wrong change: ``patch()`` is a context manager applying it; ``claims`` must catch it
    (``check`` fails for at least one of them, and ``prove`` for at least one of those with a
    proof, if any has one)."""

    name: str
    what: str
    claims: tuple
    patch: Callable
    tests: tuple = ()  # the test files that cover it (benchmarks/mutation.py --tests runs them)

    @property
    def subject(self) -> str:
        """The registered construction it changes ("" for the transformer and other code)."""
        return getattr(self.patch, "subject", "")

    @property
    def relative(self) -> float | None:
        """The relative size of a weight change (None: not a scaling of weights)."""
        return getattr(self.patch, "relative", None)


# -- patching helpers ----------------------------------------------------------------------------------
@contextlib.contextmanager
def _setattr(obj, attr: str, value):
    old = getattr(obj, attr)
    setattr(obj, attr, value)
    try:
        yield
    finally:
        setattr(obj, attr, old)


def _factory(name: str, transform: Callable):
    """Wrap the registered factory ``name``: every construction it builds goes through
    ``transform(construction, args, kwargs)``; patched in its module and in the registry."""
    from constructions import registry

    entry = registry.entry(name)
    module = importlib.import_module(entry.module)
    original = entry.factory

    def mutated(*args, **kwargs):
        return transform(original(*args, **kwargs), args, kwargs)

    mutated.__name__, mutated.__doc__ = original.__name__, original.__doc__

    @contextlib.contextmanager
    def patch():
        with _setattr(module, name, mutated), _setattr(entry, "factory", mutated):
            yield

    patch.subject = name
    return patch


def _module_function(module: str, attr: str, wrap: Callable):
    """Replace ``module.attr`` by ``wrap(original)``."""
    @contextlib.contextmanager
    def patch():
        m = importlib.import_module(module)
        with _setattr(m, attr, wrap(getattr(m, attr))):
            yield

    return patch


def edit(c, block: int, part: str, matrix: str, change: Callable):
    """A copy of construction ``c`` with ``change(W)`` applied in place to a copy of
    ``blocks[block].<part>.<matrix>`` (part ``attn`` or ``mlp``); the other blocks are shared."""
    blocks = list(c.blocks)
    b = copy.deepcopy(blocks[block])
    spec = getattr(b, part)
    W = np.array(getattr(spec, matrix), dtype=np.float64, copy=True)
    change(W)
    setattr(spec, matrix, W)
    blocks[block] = b
    return dataclasses.replace(c, blocks=blocks)


def scale_largest(factor: float, head: int | None = 0):
    """``change`` for :func:`edit`: scale the largest-magnitude entry (of one head, for attention
    weights ``[H, ., .]``) by ``factor``."""
    def change(W):
        sub = W[head] if head is not None and W.ndim == 3 else W
        idx = np.unravel_index(np.abs(sub).argmax(), sub.shape)
        sub[idx] *= factor

    return change


class _GateShift:
    """``constructions.parts`` with ``relu_gd_heads`` reading gate entry ``(t + 1) mod n`` for entry t."""

    def __init__(self, parts):
        self._parts = parts

    def __getattr__(self, name):
        return getattr(self._parts, name)

    def relu_gd_heads(self, lay, lr, mask_const, w="w", gate="gate", scale=1.0):
        if isinstance(gate, tuple):
            gate = (gate[0], (gate[1] + 1) % lay[gate[0]].size)
        return self._parts.relu_gd_heads(lay, lr, mask_const, w, gate, scale)


def _scale_most_negative(factor: float):
    """``change`` for :func:`edit`: scale the most negative entry by ``factor`` (e.g. the one
    negative weight of a key map)."""
    def change(W):
        idx = np.unravel_index(W.argmin(), W.shape)
        W[idx] *= factor

    return change


def _block(c, where: str) -> int:
    """The index of the first block with attention (``"attn"``) or an MLP (``"mlp"``), the first
    step block (``"step"``, after any prefix), the first readout block (``"readout"``) or the last
    block (``"last"``)."""
    if where == "step":
        return c.n_prefix
    if where == "readout":
        return c.n_step_blocks
    if where == "last":
        return len(c.blocks) - 1
    return next(i for i, b in enumerate(c.blocks) if getattr(b, where) is not None)


def _same(a, b) -> bool:
    """Two blocks with the same weights (a step layer repeated)."""
    if a is b:
        return True
    for part in ("attn", "mlp"):
        pa, pb = getattr(a, part), getattr(b, part)
        if (pa is None) != (pb is None):
            return False
        if pa is not None and not all(np.array_equal(x, y) for x, y in zip(dataclasses.astuple(pa), dataclasses.astuple(pb))
                                      if isinstance(x, np.ndarray)):
            return False
    return True


def one_weight(name: str, where: str = "attn", matrix: str = "W_O", head: int | None = 0, factor: float = 1 + SMALL,
               when: Callable = lambda args, kwargs: True, change: Callable | None = None):
    """Construction ``name`` with the largest entry of ``matrix`` (of ``head``) in its first
    ``where`` block (:func:`_block`) scaled by ``factor`` -- or ``change(W)`` applied to the whole
    matrix -- for the builds where ``when(args, kwargs)``.  The same change is made in every block
    with that block's weights: a step layer is one layer repeated, and the change is to it."""
    part = "mlp" if matrix in ("W_in", "b_in", "W_out", "b_out") else "attn"

    def transform(c, args, kwargs):
        if not when(args, kwargs):
            return c
        first = _block(c, where)
        target = c.blocks[first]
        for i, b in enumerate(list(c.blocks)):
            if _same(b, target):
                c = edit(c, i, part, matrix, change or scale_largest(factor, head))
        return c

    patch = _factory(name, transform)
    patch.relative = None if change is not None else abs(factor - 1)
    return patch


def writes(name: str, slot: str, factor: float, blocks: Callable = lambda c: range(len(c.blocks))):
    """Construction ``name`` with every attention output written into ``slot`` (in ``blocks(c)``)
    scaled by ``factor`` (-1: the sign of those updates flipped)."""
    def transform(c, args, kwargs):
        cols = c.layout[slot].index
        for i in blocks(c):
            if c.blocks[i].attn is not None and np.any(c.blocks[i].attn.W_O[..., cols] != 0):
                def change(W, cols=cols):
                    W[..., cols] *= factor
                c = edit(c, i, "attn", "W_O", change)
        return c

    patch = _factory(name, transform)
    patch.relative = abs(factor - 1)
    return patch


def mlp_reads(name: str, slots, factor: float):
    """Construction ``name`` with every MLP input weight read from ``slots`` scaled by ``factor``."""
    def transform(c, args, kwargs):
        for i, b in enumerate(c.blocks):
            if b.mlp is None:
                continue
            rows = np.zeros(c.layout.width, dtype=bool)
            for s in slots:
                if s in c.layout:
                    rows[c.layout[s].index] = True
            if np.any(b.mlp.W_in[rows] != 0):
                def change(W, rows=rows):
                    W[rows] *= factor
                c = edit(c, i, "mlp", "W_in", change)
        return c

    return _factory(name, transform)


# -- transformer paths ---------------------------------------------------------------------------------
def _pattern(kind: str, change: Callable):
    """The torch attention pattern of ``kind`` heads replaced: ``change(scores, norm)`` returns
    the (scores, norm) the original pattern then sees (or a pattern, for ``"relu-in-linear"``)."""
    def wrap(original):
        def pattern(k, scores, norm, null_score=None, future=None, divisor="n"):
            if k == kind and isinstance(scores, torch.Tensor):
                scores, norm = change(scores, norm)
            return original(k, scores, norm, null_score, future, divisor)
        return pattern

    return _module_function("constructions.transformer", "attention_pattern", wrap)


def _causal_off():
    """Causal heads see the future (the torch pattern ignores the causal mask)."""
    def wrap(original):
        def pattern(k, scores, norm, null_score=None, future=None, divisor="n"):
            return original(k, scores, norm, null_score, None if isinstance(scores, torch.Tensor) else future, divisor)
        return pattern

    return _module_function("constructions.transformer", "attention_pattern", wrap)


def _in_both_passes(attr: str, wrap: Callable):
    """``attr`` replaced by ``wrap(original)`` in the torch model and in the numpy pass (the
    exact-rational proofs' path), so that a wrong definition reaches the checks and the proofs."""
    torch_path = _module_function("constructions.transformer", attr, wrap)
    numpy_path = _module_function("constructions.numpy_pass", attr, wrap)

    @contextlib.contextmanager
    def patch():
        with torch_path(), numpy_path():
            yield

    return patch


def _keys_divisor_off():
    """Heads with ``divisor="keys"`` divide by the norm n instead of each row's key count."""
    def wrap(original):
        def pattern(k, scores, norm, null_score=None, future=None, divisor="n"):
            return original(k, scores, norm, null_score, future, "n")
        return pattern

    return _in_both_passes("attention_pattern", wrap)


def _strict_inclusive():
    """Strictly causal heads also see their own token (the mask of ``causal=True``)."""
    def wrap(original):
        def hidden(causal, T, S, device=None, numpy=False):
            return original(True if causal == "strict" else causal, T, S, device, numpy)
        return hidden

    return _in_both_passes("hidden_keys", wrap)


def _relu_in_linear():
    def wrap(original):
        def pattern(k, scores, norm, null_score=None, future=None, divisor="n"):
            if k == "linear" and isinstance(scores, torch.Tensor):
                k = "relu"
            return original(k, scores, norm, null_score, future, divisor)
        return pattern

    return _module_function("constructions.transformer", "attention_pattern", wrap)


def _divisor_in_order(order: str):
    """Linear attention divides by n + 1 instead of n in one evaluation order."""
    from constructions import fastpath
    from constructions.transformer import Attention

    def wrap(original):
        def forward(self, h, n_context, mask_query=True, norm=None, weights=None, scratch=None, point=None, order=None):
            o = order
            T, S = h.shape[1], (n_context if mask_query else h.shape[1])
            used = "scores" if point is not None else (o or fastpath.order_of(self, T, S))
            if used == order and self.kind == "linear":
                norm, weights, scratch = (n_context if norm is None else norm) + 1, None, None
            return original(self, h, n_context, mask_query, norm, weights, scratch, point, order=o)
        return forward

    @contextlib.contextmanager
    def patch():
        with _setattr(Attention, "forward", wrap(Attention.forward)):
            yield

    return patch


def writes_loss():
    """ridge_select with the validation losses averaged over n_val + 1: the loss heads' outputs
    x n_val/(n_val + 1)."""
    def transform(c, args, kwargs):
        n_val = kwargs["n_val"] if "n_val" in kwargs else args[5]
        f = n_val / (n_val + 1)
        K = len(kwargs.get("lams", args[1] if len(args) > 1 else []))
        for k in range(K):
            cols = c.layout[f"L{k}"].index
            i = next(i for i, b in enumerate(c.blocks) if b.attn is not None and np.any(b.attn.W_O[..., cols] != 0))

            def change(W, cols=cols):
                W[..., cols] *= f
            c = edit(c, i, "attn", "W_O", change)
        return c

    return _factory("ridge_select", transform)


def _scaled_mlp(block, factor):
    b = copy.deepcopy(block)
    b.mlp.W_out = b.mlp.W_out * factor
    return b


def _scaled_query(block, factor):
    b = copy.deepcopy(block)
    if b.attn is not None:
        b.attn.W_Q = b.attn.W_Q * factor
    return b


#: the test files of the transformer's paths
PATH_TESTS = ("tests/test_transformer.py", "tests/test_fast_path.py")


# -- the catalogue --------------------------------------------------------------------------------------
def _d_at_least(k: int):
    return lambda args, kwargs: (args[0] if args else kwargs.get("d", 0)) >= k


CATALOGUE = [
    # every construction: one weight changed by 1e-6 relative
    Mutation("gd-weight", "gd: one step weight x (1 + 1e-6)", ("vonoswald23-prop1",), one_weight("gd")),
    Mutation("gd-weight-d5", "gd: one step weight x (1 + 1e-6), only when built with d >= 5",
             ("vonoswald23-prop1",), one_weight("gd", when=_d_at_least(5))),
    Mutation("gdpp-weight", "gd_plus_plus: one step weight x (1 + 1e-6)", ("vonoswald23-gdpp",), one_weight("gd_plus_plus")),
    Mutation("pgd-weight", "preconditioned_gd: one step weight x (1 + 1e-6)", ("ahn23-pgd",),
             one_weight("preconditioned_gd")),
    Mutation("heavy-ball-weight", "heavy_ball: one step weight x (1 + 1e-6)", ("polyak64-heavy-ball",),
             one_weight("heavy_ball")),
    Mutation("feature-gd-weight", "feature_gd: one step weight x (1 + 1e-6)", ("vonoswald23-prop2",),
             one_weight("feature_gd")),
    Mutation("feature-gd-mlp", "feature_gd: one feature unit's bias x (1 + 1e-6)", ("vonoswald23-prop2",),
             one_weight("feature_gd", where="mlp", matrix="b_in", head=None)),
    Mutation("softmax-gd-weight", "softmax_gd: one step weight x (1 + 1e-6)", ("vonoswald23-softmax-lsa",),
             one_weight("softmax_gd")),
    Mutation("copy-gd-weight", "copy_gd: the copying head's output x (1 + 1e-6)", ("vonoswald23-prop3",),
             one_weight("copy_gd")),
    Mutation("relu-gd-weight", "relu_gd: one step weight x (1 + 1e-6)", ("bai23-icgd",), one_weight("relu_gd")),
    Mutation("relu-gd-decay", "relu_gd: the ridge decay head's weight x (1 + 1e-6)", ("bai23-ridge-relu",),
             one_weight("relu_gd", head=2)),
    Mutation("glm-ridge-decay", "logistic_gd (lam > 0): the l2 head's output x (1 + 1e-6)", ("bai23-glm-ridge",),
             one_weight("logistic_gd", head=-1, when=lambda a, k: bool(k.get("lam") or (list(a) + [0.0] * 7)[6]))),
    Mutation("decoder-weight", "decoder_gd: one step weight x (1 + 1e-6)", ("bai23-decoder",), one_weight("decoder_gd")),
    Mutation("lasso-weight", "lasso_ista: one step weight x (1 + 1e-6)", ("bai23-lasso",), one_weight("lasso_ista")),
    Mutation("lasso-threshold", "lasso_ista: the soft threshold's bias x (1 + 1e-6)", ("bai23-lasso",),
             one_weight("lasso_ista", where="mlp", matrix="b_in", head=None)),
    Mutation("lasso-zero", "lasso_ista: every output zero (the readout writes nothing)", ("bai23-lasso",),
             one_weight("lasso_ista", where="readout", change=lambda W: W.fill(0.0))),
    Mutation("glm-weight", "logistic_gd: one step weight x (1 + 1e-6)", ("bai23-glm",), one_weight("logistic_gd")),
    Mutation("select-weight", "ridge_select: one step weight x (1 + 1e-6)", ("bai23-selection",),
             one_weight("ridge_select")),
    Mutation("select-sval", "ridge_select: validation average over n_val + 1 (s_val off by one)", ("bai23-selection",),
             writes_loss()),
    Mutation("select-gamma-2", "ridge_select: gamma doubled in the selection map", ("bai23-selection",),
             mlp_reads("ridge_select", ["c0", "c1", "c2"], 0.5)),
    Mutation("select-gamma-half", "ridge_select: gamma halved in the selection map", ("bai23-selection",),
             mlp_reads("ridge_select", ["c0", "c1", "c2"], 2.0)),
    Mutation("select-aggregate", "ridge_select: the aggregation's output x (1 + 1e-6)", ("bai23-selection",),
             one_weight("ridge_select", where="last", head=0)),
    Mutation("binary-weight", "binary_test: one psi weight x (1 + 1e-6)", ("bai23-binary-test",),
             one_weight("binary_test")),
    Mutation("pre-select-ridge", "pre_icl_select: one ridge-GD step weight x (1 + 1e-6)", ("bai23-pre-icl-select",),
             one_weight("pre_icl_select", where="step", head=0)),
    Mutation("pre-select-logistic", "pre_icl_select: the logistic-GD label head's weight x (1 + 1e-6) (relu(y_j), the head of positive labels)",
             ("bai23-pre-icl-select",), one_weight("pre_icl_select", where="step", head=-2)),
    Mutation("link-weight", "link_select: one square-loss GD step weight x (1 + 1e-6)", ("bai23-link-selection",),
             one_weight("link_select", where="step", head=0)),
    Mutation("link-sigma", "link_select: the sigmoid MLP's largest slope x (1 + 1e-6)", ("bai23-link-selection",),
             one_weight("link_select", where="readout", matrix="W_out", head=None)),
    Mutation("optimal-weight", "optimal_lsa: the step weight x (1 + 1e-6)", ("ahn23-optimum",), one_weight("optimal_lsa")),
    Mutation("newton-weight", "ridge_newton: one step weight x (1 + 1e-6)", ("fu23-newton",), one_weight("ridge_newton")),
    Mutation("newton-iters-2", "ridge_newton: two Newton iterations fewer by default", ("fu23-newton",),
             _module_function("constructions.ridge", "newton_iters", lambda f: lambda *a, **k: max(1, f(*a, **k) - 2))),
    Mutation("sm-sign", "ridge_sherman_morrison: the P update's sign flipped (P + u v^T)", ("akyurek22-thm2",),
             writes("ridge_sherman_morrison", "P", -1.0)),
    Mutation("sm-weight", "ridge_sherman_morrison: the P update x (1 + 1e-6)", ("akyurek22-thm2",),
             writes("ridge_sherman_morrison", "P", 1 + SMALL)),
    Mutation("sm-readout", "ridge_sherman_morrison: the readout x 1.001", ("akyurek22-thm2",),
             one_weight("ridge_sherman_morrison", where="readout", factor=1.001)),
    Mutation("sm-reciprocal", "ridge_sherman_morrison: one Newton reciprocal step fewer", ("akyurek22-thm2",),
             _module_function("constructions.sherman_morrison", "reciprocal_iters",
                              lambda f: lambda *a, **k: max(1, f(*a, **k) - 1))),
    Mutation("raw-weight", "raw_gd: one weight of the first mov x (1 + 1e-6)", ("akyurek22-thm1",), one_weight("raw_gd")),
    Mutation("sgd-weight", "raw_sgd: one weight of the first mov x (1 + 1e-6)", ("akyurek22-sgd-pass",),
             one_weight("raw_sgd")),
    Mutation("nw-weight", "nw_kernel_smoother: the value-output weight x (1 + 1e-6)", ("nw-kernel-smoother",),
             one_weight("nw_kernel_smoother")),
    Mutation("nw-norm-term", "nw_kernel_smoother: the Gaussian key's norm term -beta sq/2 x (1 + 1e-6)",
             ("nw-kernel-smoother",), one_weight("nw_kernel_smoother", matrix="W_K",
                                                 when=lambda a, k: (list(a) + [None] * 3)[2] == "gaussian"
                                                 or k.get("kernel") == "gaussian",
                                                 change=_scale_most_negative(1 + SMALL))),
    Mutation("fgd-weight", "functional_gd: one kernel head's output weight x (1 + 1e-6)", ("cheng23-functional-gd",),
             one_weight("functional_gd")),
    Mutation("fgd-exp-weight", "functional_gd (exp kernel): one kernel head's score weight x (1 + 1e-6)",
             ("cheng23-exp-kernel",),
             one_weight("functional_gd", matrix="W_Q",
                        when=lambda args, kwargs: (args[5] if len(args) > 5 else kwargs.get("kernel")) == "exp")),
    Mutation("fgd-prox", "functional_gd: the ridge prox's MLP output x (1 + 1e-6)",
             ("cheng23-functional-gd", "cheng23-kernel-ridge"),
             one_weight("functional_gd", where="mlp", matrix="W_out", head=None,
                        when=lambda a, k: bool((list(a) + [0.0] * 4)[3] or k.get("lam")))),
    Mutation("newton-logistic-weight", "newton_logistic: the self head's score weight (s = w.x) x (1 + 1e-6)",
             ("giannou24-newton-logistic", "giannou24-newton-quadratic"), one_weight("newton_logistic")),
    Mutation("newton-logistic-gradient", "newton_logistic: the gradient head's output into g x (1 + 1e-6)",
             ("giannou24-newton-logistic",), writes("newton_logistic", "g", 1 + SMALL)),
    Mutation("two-layer-weight", "two_layer_gd: the first score head's output (s_1 = v_1.x) x (1 + 1e-6)",
             ("bai23-two-layer", "bai23-two-layer-local"), one_weight("two_layer_gd")),
    Mutation("two-layer-gradient", "two_layer_gd: the update heads' output into v x (1 + 1e-6)",
             ("bai23-two-layer", "bai23-two-layer-local"), writes("two_layer_gd", "v", 1 + SMALL)),
    Mutation("delta-weight", "delta_rule: one update head's output weight x (1 + 1e-6)", ("schlag21-delta-rule",),
             one_weight("delta_rule")),
    Mutation("delta-gate", "delta_rule: layer t admits example t + 1 (the gate off by one)", ("schlag21-delta-rule",),
             _module_function("constructions.fast_weights", "parts", lambda P: _GateShift(P))),
    Mutation("feature-ridge", "feature_gd (lam > 0): the ridge decay head's output x (1 + 1e-6)", ("guo23-representation",),
             one_weight("feature_gd", head=1, when=lambda a, k: bool(k.get("lam")))),
    Mutation("prox-weight", "proximal_gd: one GD head's output weight x (1 + 1e-6)", ("bai23-prox",),
             one_weight("proximal_gd")),
    Mutation("prox-radius", "proximal_gd (box): the clip threshold R x (1 + 1e-6)", ("bai23-prox",),
             one_weight("proximal_gd", where="mlp", matrix="b_in", head=None,
                        when=lambda a, k: (list(a) + [None] * 4)[3] == "box" or k.get("prox") == "box")),
    Mutation("ridge-raw-weight", "raw_ridge: one weight of the first mov x (1 + 1e-6)", ("akyurek22-thm2-raw",),
             one_weight("raw_ridge")),
    Mutation("raw-div", "raw_ridge: the div primitive's output x (1 + 1e-6)", ("akyurek22-thm2-raw",),
             _module_function("constructions.raw", "div", lambda f: lambda *a, **k: _scaled_mlp(f(*a, **k), 1 + SMALL))),
    Mutation("raw-mul", "raw_gd, raw_sgd, raw_ridge: the mul primitive's output x 1.01",
             ("akyurek22-primitives", "akyurek22-thm1", "akyurek22-sgd-pass", "akyurek22-thm2-raw"),
             _module_function("constructions.raw", "mul", lambda f: lambda *a, **k: _scaled_mlp(f(*a, **k), 1.01))),
    Mutation("softmax-layer", "softmax regression's attention layer: the score x (1 + 1e-6)", ("li23-closeness",),
             _module_function("constructions.softmax_regression", "Transformer",
                              lambda T: lambda blocks, **k: T([_scaled_query(b, 1 + SMALL) for b in blocks], **k))),
    Mutation("rescaled-hessian", "softmax regression: the rescaled loss's closed-form Hessian x (1 + 1e-6)",
             ("gao23-rescaled",), _module_function("constructions.softmax_regression", "hessian_rescaled",
                                                   lambda f: lambda *a, **k: f(*a, **k) * (1 + SMALL))),
    Mutation("kron-order", "softmax regression: the tensor trick's Kronecker factors swapped (A2 (x) A1)",
             ("gao23-matrix-hessian", "gao23-tensor-trick"),
             _module_function("constructions.softmax_regression", "kron", lambda f: lambda P, Q: f(Q, P))),
    # the transformer's paths
    Mutation("relu-in-linear", "transformer: linear attention takes relu of its scores (per-head scores order)",
             ("vonoswald23-prop1", "ahn23-pgd"), _relu_in_linear(), tests=PATH_TESTS),
    Mutation("divisor-kv", "transformer: linear attention divides by n + 1 in the (K^T V)-first order",
             ("vonoswald23-prop1", "ahn23-pgd"), _divisor_in_order("kv"), tests=PATH_TESTS),
    Mutation("divisor-scores", "transformer: linear attention divides by n + 1 in the scores order",
             ("vonoswald23-prop1", "ahn23-pgd"), _divisor_in_order("scores"), tests=PATH_TESTS),
    Mutation("divisor-folded", "transformer: linear attention divides by n + 1 in the folded order",
             ("vonoswald23-prop1", "ahn23-pgd"), _divisor_in_order("folded"), tests=PATH_TESTS),
    Mutation("relu-divisor", "transformer: ReLU attention divides by n + 1", ("bai23-icgd", "fu23-newton"),
             _pattern("relu", lambda s, n: (s, n + 1)), tests=PATH_TESTS),
    Mutation("softmax-scale", "transformer: softmax scores x 1.1", ("akyurek22-primitives", "akyurek22-thm1",
                                                                    "li23-closeness"),
             _pattern("softmax", lambda s, n: (1.1 * s, n)), tests=PATH_TESTS),
    Mutation("causal-off", "transformer: causal heads see later tokens", ("akyurek22-primitives", "akyurek22-thm1"),
             _causal_off(), tests=PATH_TESTS),
    Mutation("keys-divisor-off", "transformer: divisor='keys' heads divide by n", ("bai23-decoder",),
             _keys_divisor_off(), tests=PATH_TESTS),
    Mutation("strict-sees-self", "transformer: strictly causal heads see their own token", ("bai23-decoder",),
             _strict_inclusive(), tests=PATH_TESTS),
]


def by_name(name: str) -> Mutation:
    return next(m for m in CATALOGUE if m.name == name)


# -- running ---------------------------------------------------------------------------------------------
@dataclass
class Caught:
    """What caught one mutation: ``check`` and ``prove`` map claim ids to True (caught: the check
    failed or raised) / False; ``prove`` has None for claims without a proof.  ``raised`` lists
    the exceptions counted as caught (``(claim, "check"|"prove", repr)``), for review: a harness
    error must not pass for a catch."""

    mutation: Mutation
    check: dict
    prove: dict
    seconds: float
    raised: list = dataclasses.field(default_factory=list)

    @property
    def by_check(self) -> bool:
        return any(self.check.values())

    @property
    def by_prove(self) -> bool | None:
        applies = [v for v in self.prove.values() if v is not None]
        return any(applies) if applies else None

    @property
    def ok(self) -> bool:
        return self.by_check and self.by_prove is not False


#: exceptions that mean the mutation harness (not the mutated construction) is broken
HARNESS_ERRORS = (AttributeError, IndexError, KeyError, NameError, TypeError)


def run(m: Mutation, prompts: int = 20, seed: int = 0, proofs: bool = True) -> Caught:
    """Apply ``m`` and run ``check`` (``prompts`` prompts) and ``prove`` on its claims."""
    from constructions import registry
    from verify.claims import check_claim
    from verify.proofs import prove

    t0 = time.perf_counter()
    check, proved, raised = {}, {}, []
    with m.patch():
        for cid in m.claims:
            claim = registry.claim(cid)
            try:
                check[cid] = not check_claim(claim, prompts=prompts, seed=seed).holds
            except HARNESS_ERRORS:
                raise
            except Exception as e:  # a crash under the mutation is a failed check, not a pass
                check[cid] = True
                raised.append((cid, "check", repr(e)[:200]))
            if not proofs:
                continue
            if claim.proof is None or claim.proof.kind == "none":
                proved[cid] = None
                continue
            try:
                proved[cid] = not prove(claim).holds
            except HARNESS_ERRORS:
                raise
            except Exception as e:
                proved[cid] = True
                raised.append((cid, "prove", repr(e)[:200]))
    return Caught(m, check, proved, time.perf_counter() - t0, raised)
