"""TransformerLens export (optional extra [tl]; runs in its own CI jobs, one per major version:
``bash .ci/run-tl 3`` and ``bash .ci/run-tl 4``)."""
from importlib import metadata

import numpy as np
import pytest

tl = pytest.importorskip("transformer_lens", reason="transformer-lens is not installed (extra [tl])")

import constructions  # noqa: E402
from constructions import export  # noqa: E402
from constructions.errors import ConstructionError  # noqa: E402
from constructions.export import predict, to_transformer_lens  # noqa: E402
from verify.bench import example  # noqa: E402
from verify.tolerance import C, eps  # noqa: E402


@pytest.mark.parametrize("dtype", ["float64", "float32"])
@pytest.mark.parametrize("name", constructions.names())
def test_export_reproduces_predict(name, dtype):
    import torch

    c, X, y, Xq = example(name)  # a small instance from the construction's declaration
    c = c.to(dtype)
    model = to_transformer_lens(c)
    assert next(model.parameters()).dtype == c.dtype
    want = c.predict(X, y, Xq, check=False)
    got = predict(model, c, X, y, Xq, check=False)
    assert got.dtype == want.dtype and got.shape == want.shape
    scale = 1 + np.abs(want).max()
    if "config" in c.params:  # Akyurek's primitives amplify round-off by 1/s (mul) and M (div): their error model
        from constructions.raw import roundoff_gain

        scale *= roundoff_gain(c.params["config"])
    n, d = X.shape[1:]
    assert np.abs(got - want).max() <= C * eps(c.dtype) * (len(c.blocks) + 1) * (n + d) * scale
    first = next(i for i, b in enumerate(c.blocks) if b.attn is not None)
    a = torch.from_numpy(c.blocks[first].attn.W_Q).to(c.dtype)  # the construction's weights, not a drifted copy
    state = model.state_dict()
    if model.icl_major < 4:  # HookedTransformer: W_Q [H, D, E]
        v = state[f"blocks.{first}.attn.W_Q"]
    else:  # the bridge's nn.Linear: weight [H·E, D]
        v = state[f"blocks.{first}.attn.q.weight"].view(model.cfg.n_heads, model.cfg.d_head, -1).transpose(1, 2)
    assert torch.equal(v[: a.shape[0], :, : a.shape[2]], a)
    assert model.icl_major == int(metadata.version("transformer-lens").split(".")[0])


def test_a_bare_call_is_refused_and_prompt_makes_it_the_construction():
    import torch

    c, X, y, Xq = example("gd")
    model = to_transformer_lens(c)
    p = c.prepare(X, y, Xq)
    h = c.embed(p)
    with pytest.raises(ConstructionError, match="bare call"):
        model(h, start_at_layer=0, stop_at_layer=len(c.blocks))
    n = X.shape[1]
    L = len(c.blocks)
    with export.prompt(model, c.n_keys(n), n):
        _, cache = model.run_with_cache(h, start_at_layer=0, stop_at_layer=L)
        out = export.residual(model, h, L)
    got = c.read(cache[f"blocks.{L - 1}.hook_resid_post"], c.n_keys(n)).detach().numpy()
    assert np.allclose(got, c.predict(X, y, Xq), rtol=0, atol=1e-12)
    assert torch.equal(out, cache[f"blocks.{L - 1}.hook_resid_post"])
    assert "blocks.0.attn.hook_pattern" in cache
    with pytest.raises(ConstructionError, match="bare call"):  # the context ended
        model(h, start_at_layer=0, stop_at_layer=len(c.blocks))


def test_layernorm_mlps_export():
    from constructions import Construction, parts

    d = 3
    lay = parts.lsa_layout(d)
    units = [({"x": np.eye(d)[0]}, 0.5, {"y": [0.25]}), ({"x": np.eye(d)[1]}, -0.1, {"y": [-0.5]})]
    blocks = [parts.block("linear", [parts.gd_head(lay, 0.1 * np.eye(d))]),
              constructions.spec.BlockSpec(None, parts.units_mlp(lay, "relu", units, layernorm=True)),
              parts.block("linear", [parts.gd_head(lay, 0.1 * np.eye(d))])]
    c = Construction("ln_demo", {}, blocks, lay, d)
    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(2, 6, d)), rng.normal(size=(2, 6)), rng.normal(size=(2, 2, d))
    got = predict(to_transformer_lens(c), c, X, y, Xq)
    assert np.abs(got - c.predict(X, y, Xq)).max() <= 1e-12 * (1 + np.abs(got).max())


def test_exp_attention_and_decoder_masks_export():
    """The exp kind (functional_gd's exp kernel) and the strict / self masks with the key-count divisor
    (decoder_gd, both attention kinds) are built into the exported model's pattern hooks."""
    rng = np.random.default_rng(1)
    X, y, Xq = rng.normal(size=(2, 6, 3)) / 3, rng.normal(size=(2, 6)), rng.normal(size=(2, 2, 3)) / 3
    for c in (constructions.functional_gd(3, 3, 0.2, 0.1, kernel="exp"), constructions.decoder_gd(3, 3, 0.05, "linear"),
              constructions.decoder_gd(3, 3, 0.05, "relu")):
        got = predict(to_transformer_lens(c), c, X, y, Xq)
        assert np.abs(got - c.predict(X, y, Xq)).max() <= 1e-12 * (1 + np.abs(got).max()), c.name


def test_refusals_name_the_reason():
    c, X, y, Xq = example("gd")
    other, *_ = example("relu_gd")
    with pytest.raises(ConstructionError, match="not an export of this construction"):
        predict(to_transformer_lens(c), other, X, y, Xq)
    with pytest.raises(ConstructionError, match="expected a Construction"):
        to_transformer_lens("gd")
    with pytest.raises(ConstructionError, match="needs a model from"):
        with export.prompt(object(), 3, 3):
            pass
    model = to_transformer_lens(c)
    with pytest.raises(ConstructionError, match="stop <= its number of blocks"):
        export.residual(model, c.embed(c.prepare(X, y, Xq)), len(c.blocks) + 1)
