"""TransformerLens export (optional extra [tl]; runs in its own CI job: .ci/run-tl)."""
import numpy as np
import pytest

tl = pytest.importorskip("transformer_lens", reason="transformer-lens<4 is not installed (extra [tl])")
pytest.importorskip("transformer_lens.HookedTransformer", reason="transformer-lens>=4 has no HookedTransformer")

import constructions  # noqa: E402
from constructions import export  # noqa: E402
from constructions.errors import ConstructionError  # noqa: E402
from constructions.export import predict, to_transformer_lens  # noqa: E402
from verify.bench import example  # noqa: E402
from verify.tolerance import C, eps  # noqa: E402


@pytest.mark.parametrize("name", constructions.names())
def test_export_reproduces_predict_or_says_why_not(name):
    import torch

    c, X, y, Xq = example(name)  # a small instance from the construction's declaration
    try:
        export._check(c)
    except ConstructionError as e:  # the TransformerLens model has no such attention or MLP
        assert "causal" in str(e) or "LayerNorm" in str(e) or "activation" in str(e)
        return
    model = to_transformer_lens(c)
    want = c.predict(X, y, Xq, check=False)
    got = predict(model, c, X, y, Xq, check=False)
    scale = 1 + np.abs(want).max()
    n, d = X.shape[1:]
    assert np.abs(got - want).max() <= C * eps(torch.float64) * (len(c.blocks) + 1) * (n + d) * scale
    for k, v in model.state_dict().items():  # the weights are the construction's, not a copy that drifted
        if k.endswith("attn.W_Q") and k.startswith("blocks.0."):
            a = c.blocks[0].attn.W_Q
            assert torch.equal(v[: a.shape[0], :, : a.shape[2]], torch.from_numpy(a))


def test_unsupported_constructions_raise():
    with pytest.raises(ConstructionError, match="causal"):
        to_transformer_lens(constructions.raw_gd(2, [0.0, 0.0], 0.1))
