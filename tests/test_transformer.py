"""The transformer against a direct, loop-by-loop evaluation of its defining formulas."""
import math

import numpy as np
import pytest
import torch

from constructions import ConstructionError
from constructions.spec import AttentionSpec, BlockSpec, MLPSpec
from constructions.transformer import Transformer
from verify.tolerance import tolerance

#: zero padding forced on every width and dtype (the default pads only where it is faster)
FORCED = {dt: dict(multiple=8, max_growth=math.inf) for dt in (torch.float64, torch.float32)}


def _padded(model, padded):
    if padded:
        model.padding = FORCED
    return model


def _rand_attention(rng, kind, H=2, D=5, E=3):
    return AttentionSpec(kind, *(rng.normal(size=s) for s in [(H, D, E), (H, D, E), (H, D, E), (H, E, D)]))


#: the keys row i sees under each mask (constructions.spec, "Masks"), written out
SEES = {False: lambda i, j: True, True: lambda i, j: j <= i, "strict": lambda i, j: j < i, "self": lambda i, j: j == i}


def _naive_attention(spec, h, n, mask_query=True):
    """Per token, per head, per key: the formula in the module docstring."""
    B, T, D = h.shape
    out = np.zeros_like(h)
    for b in range(B):
        for i in range(T):
            keys = [j for j in range(n if mask_query and spec.causal != "self" else T) if SEES[spec.causal](i, j)]
            div = max(len(keys), 1) if spec.divisor == "keys" else n
            for hd in range(spec.heads if keys else 0):  # a row that sees no key gets no update
                q = h[b, i] @ spec.W_Q[hd]
                s = np.array([q @ (h[b, j] @ spec.W_K[hd]) for j in keys])
                if spec.kind == "linear":
                    a = s / div
                elif spec.kind == "relu":
                    a = np.maximum(s, 0) / div
                elif spec.kind == "exp":
                    a = np.exp(s) / div
                else:
                    a = np.exp(s - s.max()) / np.exp(s - s.max()).sum()
                z = sum(a[k] * (h[b, j] @ spec.W_V[hd]) for k, j in enumerate(keys))
                out[b, i] += z @ spec.W_O[hd]
    return out


def _unsigned(spec, h, n, mask_query):
    """Size of the terms the layer sums: |h| plus sum_j |a_ij| |v_j W_O| (naive, with |.|)."""
    B, T, D = h.shape
    keys = range(n) if mask_query else range(T)
    total = 0.0
    for hd in range(spec.heads):
        q, k = h @ spec.W_Q[hd], h @ spec.W_K[hd]
        qk = np.einsum("bie,bje->bij", q, k)[:, :, list(keys)]
        s = np.exp(qk) * (1 + np.abs(qk)) if spec.kind == "exp" else np.abs(qk)  # exp: the pattern and its sensitivity
        v = np.abs(h @ spec.W_V[hd]) @ np.abs(spec.W_O[hd])
        total += (s.sum(-1).max() / n if spec.kind != "softmax" else 1.0) * np.abs(v).max() + np.abs(q).max() * np.abs(k).max()
    return np.abs(h).max() + total


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("kind", ["linear", "relu", "exp", "softmax"])
@pytest.mark.parametrize("mask_query", [True, False])
def test_attention_matches_its_formula(kind, mask_query, padded):
    rng = np.random.default_rng(1)
    spec = _rand_attention(rng, kind)
    model = _padded(Transformer([BlockSpec(spec)], mask_query=mask_query), padded)
    h = rng.normal(size=(2, 6, 5))
    got = model(torch.from_numpy(h), n_context=4).numpy()
    want = h + _naive_attention(spec, h, 4, mask_query)
    # one layer of sums over at most T keys of E-dimensional products (verify.tolerance)
    tol = tolerance(torch.float64, h.shape[1], spec.W_Q.shape[2], np.array([_unsigned(spec, h, 4, mask_query)]))[0]
    assert np.abs(got - want).max() <= tol


@pytest.mark.parametrize("divisor", ["n", "keys"])
@pytest.mark.parametrize("causal", [True, "strict", "self"])
@pytest.mark.parametrize("kind", ["linear", "relu", "exp"])
def test_masks_and_the_key_count_divisor_match_their_formula(kind, causal, divisor):
    """Causal, strictly causal and self-only heads, divided by n or by each row's key count (at
    least 1), in the torch model and the numpy pass, against the per-key loop."""
    from constructions.numpy_pass import numpy_forward

    rng = np.random.default_rng(3)
    a = _rand_attention(rng, kind)
    spec = AttentionSpec(kind, a.W_Q, a.W_K, a.W_V, a.W_O, causal=causal, divisor=divisor)
    h = rng.normal(size=(2, 7, 5))
    want = h + _naive_attention(spec, h, 4)
    tol = tolerance(torch.float64, h.shape[1], 3, np.array([_unsigned(spec, h, 4, False)]))[0]
    for padded in (False, True):
        got = _padded(Transformer([BlockSpec(spec)]), padded)(torch.from_numpy(h), n_context=4).numpy()
        assert np.abs(got - want).max() <= tol
    assert np.abs(numpy_forward([BlockSpec(spec)], h, 4)[-1] - want).max() <= tol


def test_attention_spec_refuses_unknown_masks_and_divisors():
    rng = np.random.default_rng(0)
    a = _rand_attention(rng, "linear")
    W = (a.W_Q, a.W_K, a.W_V, a.W_O)
    with pytest.raises(ConstructionError, match="causal must be one of"):
        AttentionSpec("linear", *W, causal="future")
    with pytest.raises(ConstructionError, match="divisor must be one of"):
        AttentionSpec("linear", *W, causal=True, divisor="rows")
    with pytest.raises(ConstructionError, match="needs a causal mask"):
        AttentionSpec("linear", *W, divisor="keys")
    with pytest.raises(ConstructionError, match="softmax"):
        AttentionSpec("softmax", *W, causal=True, divisor="keys")
    with pytest.raises(ConstructionError, match="null_score"):  # its first row would be a 0/0 softmax
        AttentionSpec("softmax", *W, causal="strict")
    spec = AttentionSpec("softmax", *W, causal="strict", null_score=0.0)  # the null logit takes that row
    out = Transformer([BlockSpec(spec)])(torch.from_numpy(rng.normal(size=(1, 4, 5))), n_context=4)
    assert torch.isfinite(out).all()


def test_queries_do_not_influence_context_tokens_when_masked():
    rng = np.random.default_rng(2)
    model = Transformer([BlockSpec(_rand_attention(rng, "linear"))] * 2)
    h = rng.normal(size=(1, 6, 5))
    h2 = h.copy()
    h2[:, 4:] += 10.0  # change the queries only
    a = model(torch.from_numpy(h), 4).numpy()
    b = model(torch.from_numpy(h2), 4).numpy()
    np.testing.assert_array_equal(a[:, :4], b[:, :4])


@pytest.mark.parametrize("padded", [False, True])
@pytest.mark.parametrize("act", ["relu", "gelu"])
def test_mlp_matches_its_formula(act, padded):
    rng = np.random.default_rng(3)
    D, F = 4, 6
    mlp = MLPSpec(act, rng.normal(size=(D, F)), rng.normal(size=F), rng.normal(size=(F, D)), rng.normal(size=D))
    model = _padded(Transformer([BlockSpec(None, mlp)]), padded)
    h = rng.normal(size=(2, 3, D))
    pre = h @ mlp.W_in + mlp.b_in
    from math import erf, sqrt

    post = np.maximum(pre, 0) if act == "relu" else pre * 0.5 * (1 + np.vectorize(erf)(pre / sqrt(2)))
    want = h + post @ mlp.W_out + mlp.b_out
    pre_u = np.abs(h) @ np.abs(mlp.W_in) + np.abs(mlp.b_in)  # unsigned size of the pre-activations
    scale = np.abs(h).max() + (pre_u @ np.abs(mlp.W_out)).max() + np.abs(mlp.b_out).max()
    tol = tolerance(torch.float64, F, D, np.array([scale]))[0]
    assert np.abs(model(torch.from_numpy(h), 3).numpy() - want).max() <= tol


def test_relu_pair_mlp_is_an_exact_linear_map():
    """relu(z) - relu(-z) = z: the sign-split identity (docs/pitfalls.md #17) through the MLP."""
    D = 3
    W_in = np.hstack([np.eye(D), -np.eye(D)])
    W_out = np.vstack([np.eye(D), -np.eye(D)]) * 2.0
    model = Transformer([BlockSpec(None, MLPSpec("relu", W_in, np.zeros(2 * D), W_out, np.zeros(D)))])
    h = np.random.default_rng(4).normal(size=(1, 5, D))
    np.testing.assert_array_equal(model(torch.from_numpy(h), 5).numpy(), h + 2 * h)


@pytest.mark.parametrize("padded", [False, True])
def test_hooks_cache_and_intervene(padded):
    rng = np.random.default_rng(5)
    model = _padded(Transformer([BlockSpec(_rand_attention(rng, "linear"))] * 3), padded)
    h = torch.from_numpy(rng.normal(size=(1, 5, 5)))
    cache = {}
    out = model(h, 3, cache=cache)
    assert set(cache) == {f"blocks.{l}.hook_{p}" for l in range(3) for p in ("resid_pre", "attn_out", "resid_mid", "resid_post")}
    torch.testing.assert_close(cache["blocks.2.hook_resid_post"], out, rtol=0, atol=0)
    torch.testing.assert_close(cache["blocks.1.hook_resid_pre"], cache["blocks.0.hook_resid_post"], rtol=0, atol=0)
    zeroed = model(h, 3, hooks={f"blocks.{l}.hook_attn_out": torch.zeros_like for l in range(3)})
    torch.testing.assert_close(zeroed, h, rtol=0, atol=0)
    res = model.residuals(h, 3)
    assert res.shape == (4, 1, 5, 5)
    assert model(h[:0], 3).shape == (0, 5, 5)  # an empty batch
    doubled = model(h, 3, stop=1, hooks={"blocks.0.hook_resid_pre": lambda x: 2 * x})  # a replaced stream
    torch.testing.assert_close(doubled, model(2 * h, 3, stop=1), rtol=0, atol=0)


def test_shape_errors():
    rng = np.random.default_rng(6)
    with pytest.raises(ConstructionError, match="W_O"):
        AttentionSpec("linear", np.zeros((1, 4, 2)), np.zeros((1, 4, 2)), np.zeros((1, 4, 2)), np.zeros((1, 3, 4)))
    with pytest.raises(ConstructionError, match="kind"):
        _rand_attention(rng, "cosine")
    with pytest.raises(ConstructionError, match="one residual width"):
        Transformer([BlockSpec(_rand_attention(rng, "linear", D=5)), BlockSpec(_rand_attention(rng, "linear", D=4))])
    model = Transformer([BlockSpec(_rand_attention(rng, "linear", D=5))])
    with pytest.raises(ConstructionError, match="residual stream"):
        model(torch.zeros(1, 3, 4), 2)
    with pytest.raises(ConstructionError, match="n_context"):
        model(torch.zeros(1, 3, 5, dtype=torch.float64), 0)
    with pytest.raises(ConstructionError, match=r"float32 on cpu but the model is torch.float64.*\.to\(dtype"):
        model(torch.zeros(1, 3, 5, dtype=torch.float32), 2)


def _integer_block(rng, kind, D=5, H=2, E=3, F=6):
    """A block with small-integer weights: on integer streams with n a power of two every
    linear/ReLU sum is exact (below 2^53), so padding (adding exact zeros) must not change a bit."""
    ints = lambda *s: rng.integers(-2, 3, size=s).astype(float)  # noqa: E731
    mlp = MLPSpec("relu", ints(D, F), ints(F), ints(F, D), ints(D))
    return BlockSpec(AttentionSpec(kind, ints(H, D, E), ints(H, D, E), ints(H, D, E), ints(H, E, D)), mlp)


@pytest.mark.parametrize("kind", ["linear", "relu"])
@pytest.mark.parametrize("mask_query", [True, False])
def test_padding_changes_no_bit_of_exact_sums_nor_of_their_gradients(kind, mask_query):
    rng = np.random.default_rng(7)
    blocks = [_integer_block(rng, kind)]
    plain, padded = Transformer(blocks, mask_query), _padded(Transformer(blocks, mask_query), True)
    h = torch.from_numpy(rng.integers(-2, 3, size=(3, 6, 5)).astype(float))
    x = torch.tensor([1.0, -1.0, 0.5, 2.0, 0.25], dtype=torch.float64)
    outs, grads = [], []
    for model in (plain, padded):
        assert model.compute_width(h) == (5 if model is plain else 8)
        model.blocks[0].attn.W_Q.requires_grad_(True)
        out = model(h, 4)
        (out @ x).sum().backward()  # an exact, nonzero gradient
        outs.append(out.detach())
        grads.append(model.blocks[0].attn.W_Q.grad)
    assert torch.equal(outs[0], outs[1]) and torch.equal(grads[0], grads[1])
    assert grads[0].abs().sum() > 0


@pytest.mark.parametrize("dtype, D, want", [(torch.float64, 21, 24), (torch.float64, 23, 24), (torch.float64, 20, 20),
                                            (torch.float64, 45, 48), (torch.float64, 40, 40), (torch.float32, 23, 24),
                                            (torch.float32, 21, 21), (torch.float32, 31, 32), (torch.float16, 21, 21)])
def test_default_padding_rule(dtype, D, want):
    """PADDING pads to a multiple only when (Dp/D)^2 stays within max_growth (docs/performance.md)."""
    model = Transformer([BlockSpec(_rand_attention(np.random.default_rng(0), "linear", D=D))])
    assert model.compute_width(torch.zeros(1, 2, D, dtype=dtype)) == want
    assert model.compute_width(torch.zeros(1, 2, D, dtype=dtype, device="meta")) == D  # CPU only


@pytest.mark.parametrize("kind", ["linear", "relu", "softmax"])
def test_per_head_hook_points(kind):
    """``heads=True`` exposes each head's scores, pattern (as applied: s/n, relu(s)/n, softmax) and
    z; the output is the same map as the folded / (K^T V)-first evaluation."""
    rng = np.random.default_rng(8)
    spec = _rand_attention(rng, kind, H=2, D=5, E=3)
    model = Transformer([BlockSpec(spec)])
    h = torch.from_numpy(rng.normal(size=(2, 6, 5)))
    cache = {}
    out = model(h, 4, cache=cache, heads=True)
    scores, pattern, z = (cache[f"blocks.0.attn.{p}"] for p in ("hook_attn_scores", "hook_pattern", "hook_z"))
    assert scores.shape == pattern.shape == (2, 2, 6, 4) and z.shape == (2, 6, 2, 3)
    q = torch.einsum("btd,hde->bthe", h, torch.from_numpy(spec.W_Q))
    k = torch.einsum("bsd,hde->bshe", h[:, :4], torch.from_numpy(spec.W_K))
    want = torch.einsum("bthe,bshe->bhts", q, k)
    tol = tolerance(torch.float64, 6, 3, np.array([float(q.abs().max() * k.abs().max() * 3)]))[0]
    assert (scores - want).abs().max() <= tol
    applied = {"linear": want / 4, "relu": torch.relu(want) / 4, "softmax": torch.softmax(want, -1)}[kind]
    assert (pattern - applied).abs().max() <= tol
    plain = model(h, 4)
    assert (out - plain).abs().max() <= tolerance(torch.float64, 6, 5, np.array([_unsigned(spec, h.numpy(), 4, True)]))[0]
    resid_only = {}
    model(h, 4, cache=resid_only)
    assert "blocks.0.attn.hook_z" not in resid_only and "blocks.0.hook_resid_post" in resid_only  # only when asked


def test_a_per_head_hook_intervenes_on_one_head():
    """Zeroing head 1's pattern leaves exactly head 0's contribution (ablation, as TransformerLens)."""
    rng = np.random.default_rng(9)
    spec = _rand_attention(rng, "linear", H=2)
    h = torch.from_numpy(rng.normal(size=(1, 5, 5)))
    model = Transformer([BlockSpec(spec)])

    def drop_head_1(p):
        p = p.clone()
        p[:, 1] = 0
        return p

    ablated = model(h, 3, hooks={"blocks.0.attn.hook_pattern": drop_head_1})
    only0 = Transformer([BlockSpec(AttentionSpec("linear", spec.W_Q[:1], spec.W_K[:1], spec.W_V[:1], spec.W_O[:1]))])
    torch.testing.assert_close(ablated, only0(h, 3, heads=True, cache={}), rtol=0, atol=1e-12)


@pytest.mark.parametrize("how", ["data", "copy_", "load_state_dict", "to"])
def test_memoised_maps_follow_every_change_of_the_weights(how):
    """The padded maps are memoised per block (transformer._memo), but a weight changed in any
    way (in place through .data, which bumps no version counter; copy_; load_state_dict; a dtype
    change) is read afresh: the pass equals a freshly built model of the new weights."""
    import constructions
    from constructions import transformer

    rng = np.random.default_rng(1)
    c = constructions.gd(3, 2, 0.2)
    X, y, Xq = rng.normal(size=(2, 5, 3)), rng.normal(size=(2, 5)), rng.normal(size=(2, 1, 3))
    before = c.predict(X, y, Xq)
    assert c.model.blocks[0].attn.__dict__.get("_maps_memo")  # the first call memoised the maps
    W = c.model.blocks[1].attn.W_O
    new = W.detach().clone() * 1.5
    if how == "data":
        W.data[...] = new
    elif how == "copy_":
        with torch.no_grad():
            W.copy_(new)
    elif how == "load_state_dict":
        state = c.model.state_dict()
        state["blocks.1.attn.W_O"] = new
        c.model.load_state_dict(state)
    else:
        c = c.to("float32")
        W = c.model.blocks[1].attn.W_O
        with torch.no_grad():
            W.copy_(new.to(torch.float32))
    fresh = Transformer([BlockSpec(AttentionSpec(b.attn.kind, *(getattr(b.attn, k).detach().double().numpy()
                                                                 for k in ("W_Q", "W_K", "W_V", "W_O"))))
                         for b in c.model.blocks]).to(c.dtype)
    h = c.embed(c.prepare(X, y, Xq))
    got, want = c.model(h, c.n_keys(5)), fresh(h, c.n_keys(5))
    assert torch.equal(got, want)
    assert not np.allclose(c.predict(X, y, Xq), before)
    assert all(len(b.attn.__dict__.get("_maps_memo", {})) <= transformer.MEMO_SIZE for b in c.model.blocks)


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32])
def test_a_converted_copy_is_deepcopy_then_to_and_shares_nothing(dtype):
    """``Transformer.converted`` (what ``Construction.to`` calls) gives the parameters, the forward
    pass bits, the attributes and the hooks of ``copy.deepcopy(model).to(dtype)``; changing the copy
    (a weight, its padding rule, a hook) leaves the original as it was; tied weights stay tied."""
    import copy

    rng = np.random.default_rng(2)
    blocks = [BlockSpec(_rand_attention(rng, kind), MLPSpec("relu", *(rng.normal(size=s) for s in [(5, 4), (4,), (4, 5), (5,)])))
              for kind in ("linear", "relu", "softmax")]
    model = Transformer(blocks)
    model.blocks[2].attn.W_V = model.blocks[0].attn.W_V  # tied
    model.order, model.chunk_bytes = "kv", 4096
    calls = []
    model.blocks[1].attn.register_forward_hook(lambda m, i, o: calls.append(1))
    h = torch.from_numpy(rng.normal(size=(2, 6, 5)))
    model(h, 4)  # memoises the maps of the float64 model
    new, want = model.converted(dtype), copy.deepcopy(model).to(dtype)
    assert [k for k, _ in new.named_parameters()] == [k for k, _ in want.named_parameters()]
    for (_, a), (_, b), (_, o) in zip(new.named_parameters(), want.named_parameters(), model.named_parameters()):
        assert torch.equal(a, b) and a.dtype == dtype and type(a) is type(b) and a.data_ptr() != o.data_ptr()
    assert new.blocks[2].attn.W_V is new.blocks[0].attn.W_V
    assert (new.order, new.chunk_bytes, new.mask_query, new.padding) == (want.order, want.chunk_bytes, want.mask_query,
                                                                         want.padding)
    calls.clear()
    assert torch.equal(new(h.to(dtype), 4), want(h.to(dtype), 4)) and len(calls) == 2  # both copies kept the hook
    original = {k: v.clone() for k, v in model.state_dict().items()}
    with torch.no_grad():
        new.blocks[0].attn.W_O.mul_(2)
    new.padding[dtype]["multiple"] = 3
    new.blocks[0].attn.register_forward_hook(lambda m, i, o: None)
    assert all(torch.equal(v, original[k]) for k, v in model.state_dict().items())
    assert model.padding != new.padding and not model.blocks[0].attn._forward_hooks
    assert new.blocks[0].attn.__dict__.get("_maps_memo") is not model.blocks[0].attn.__dict__.get("_maps_memo")
    new.blocks[0].attn.register_buffer("scratch", torch.zeros(1), persistent=False)  # torch's set of such names
    assert not model.blocks[0].attn._non_persistent_buffers_set


def test_the_model_dtype_is_read_from_the_first_block_that_has_parameters():
    """A block may have neither attention nor MLP (a no-op): the dtype and device come from the
    first block that has weights, as ``next(parameters())`` would give them."""
    rng = np.random.default_rng(3)
    model = Transformer([BlockSpec(None), BlockSpec(None, MLPSpec("relu", *(rng.normal(size=s) for s in [(5, 4), (4,), (4, 5), (5,)]))),
                         BlockSpec(_rand_attention(rng, "linear"))])
    assert model.first_parameter is next(model.parameters()) is model.blocks[1].mlp.W_in
    assert model.converted(torch.float32).first_parameter.dtype == torch.float32
