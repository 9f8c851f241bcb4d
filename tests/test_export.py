"""TransformerLens export (optional extra [tl]; runs in its own CI job: .ci/run-tl)."""
import numpy as np
import pytest

tl = pytest.importorskip("transformer_lens", reason="transformer-lens<4 is not installed (extra [tl])")
pytest.importorskip("transformer_lens.HookedTransformer", reason="transformer-lens>=4 has no HookedTransformer")

import constructions  # noqa: E402
from constructions.errors import ConstructionError  # noqa: E402
from constructions.export import predict, to_transformer_lens  # noqa: E402
from verify.tolerance import C, eps  # noqa: E402

CASES = {
    "gd": dict(d=3, steps=3, lr=0.1, lam=0.05),
    "gd_plus_plus": dict(d=3, steps=2, lr=0.1, gamma=0.05),
    "relu_gd": dict(d=3, steps=2, lr=0.1, lam=0.05),
    "lasso_ista": dict(d=3, steps=2, lr=0.1, lam=0.05),
    "ridge_newton": dict(d=3, lam=0.5, iters=3),
}


@pytest.mark.parametrize("name", list(CASES))
def test_export_reproduces_predict(name):
    import torch

    c = constructions.build(name, **CASES[name])
    model = to_transformer_lens(c)
    rng = np.random.default_rng(0)
    X = np.tanh(rng.normal(size=(2, 6, 3))) * 0.5
    y, Xq = np.tanh(rng.normal(size=(2, 6))), np.tanh(rng.normal(size=(2, 2, 3))) * 0.5
    want = c.predict(X, y, Xq)
    got = predict(model, c, X, y, Xq)
    scale = 1 + np.abs(want).max()
    assert np.abs(got - want).max() <= C * eps(torch.float64) * (len(c.blocks) + 1) * (6 + 3) * scale
    for k, v in model.state_dict().items():  # the weights are the construction's, not a copy that drifted
        if k.endswith("attn.W_Q") and k.startswith("blocks.0."):
            a = c.blocks[0].attn.W_Q
            assert torch.equal(v[: a.shape[0], :, : a.shape[2]], torch.from_numpy(a))


def test_unsupported_constructions_raise():
    with pytest.raises(ConstructionError, match="causal"):
        to_transformer_lens(constructions.raw_gd(2, [0.0, 0.0], 0.1))
