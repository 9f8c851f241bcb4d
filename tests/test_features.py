"""feature_gd (von Oswald et al. 2023, Prop. 2): the feature block is a prefix, every later layer
is a GD step on the features, and bad feature maps or steps are refused."""
import numpy as np
import pytest
import torch

import constructions
from constructions import ConstructionError, registry
from constructions.features import _feature_map, feature_gd, random_relu_features
from verify.reference import GD, OnFeatures, relu_feature_bound, relu_features
from verify.tolerance import assert_trace_matches


def _prompt(d=3, n=10, m=2, B=2, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, n, d)) * 0.5, rng.normal(size=(B, n)), rng.normal(size=(B, m, d))


def test_the_prefix_writes_the_features_and_each_layer_is_one_gd_step():
    feats = random_relu_features(3, 5, seed=1)
    c = feature_gd(3, 4, 0.05, features=feats)
    X, y, Xq = _prompt()
    F, Fq = (relu_features(A, feats["W_in"], feats["b_in"], feats["W_out"]) for A in (X, Xq))
    assert c.trace(X, y, Xq).shape == (4, 2, 2)  # one entry per GD layer, none for the feature block
    f0 = c.read_slot(X, y, Xq, "f")[0]  # index 0: the stream after the prefix
    assert np.allclose(f0[:, :10], F, atol=1e-15) and np.allclose(f0[:, 10:], Fq, atol=1e-15)
    want = GD(4, 0.05).fit(F, y).trace(Fq)
    assert np.abs(c.trace(X, y, Xq) - want).max() <= 1e-13
    assert c.resources["layers"] == 5 and c.resources["width"] == 3 + 5 + 1 and c.resources["mlp_width"] == 5


def test_random_features_are_deterministic_and_plain_data():
    a, b = random_relu_features(4, 6, seed=3), random_relu_features(4, 6, seed=3)
    assert a == b and a != random_relu_features(4, 6, seed=4)
    c = constructions.build("feature_gd", d=4, steps=2, lr=0.1, k=6, seed=3)
    assert c.params["features"] == a


def test_save_and_load_round_trip(tmp_path):
    c = feature_gd(2, 2, 0.1, k=3)
    path = c.save(tmp_path / "f.safetensors")
    X, y, Xq = _prompt(d=2)
    assert np.array_equal(constructions.load(path).predict(X, y, Xq), c.predict(X, y, Xq))


@pytest.mark.parametrize("features, match", [
    ("relu", "must be a dict"),
    (dict(W_in=[[1.0, 2.0]], b_in=[0.0]), "must be a dict"),
    (dict(W_in=[[1.0, 2.0]], b_in=[0.0], W_out=[[1.0]]), r"expected W_in \[h, 3\]"),
    (dict(W_in=[[1.0, 2.0, 3.0]], b_in=[0.0, 1.0], W_out=[[1.0]]), "expected W_in"),
    (dict(W_in=[[1.0, np.nan, 3.0]], b_in=[0.0], W_out=[[1.0]]), "finite|NaN"),
])
def test_bad_feature_maps_are_refused(features, match):
    with pytest.raises(ConstructionError, match=match):
        feature_gd(3, 2, 0.1, features=features)


@pytest.mark.parametrize("seed", [-1, 1.5, True, "0"])
def test_bad_seeds_are_refused(seed):
    with pytest.raises(ConstructionError, match="seed"):
        random_relu_features(3, 4, seed=seed)


def test_an_unstable_step_on_the_features_is_refused():
    feats = dict(W_in=np.eye(3).tolist(), b_in=[1.0, 1.0, 1.0], W_out=(10 * np.eye(3)).tolist())
    c = feature_gd(3, 2, 1.0, features=feats)
    X, y, Xq = _prompt()
    with pytest.raises(ConstructionError, match="stability limit"):
        c.predict(X, y, Xq)
    assert np.isfinite(c.predict(X, y, Xq, check=False)).all()  # two steps stay finite; check=False skips the domain


def test_relu_polynomial_features_interpolate_the_monomials():
    from constructions.features import relu_polynomial_features, torch_features

    K, bound, degree = 8, 1.0, 3
    feats = relu_polynomial_features(2, degree, knots=K, bound=bound)
    x = torch.linspace(-bound, bound, 401, dtype=torch.float64)
    X = torch.stack([x, -x], -1)
    m = torch_features(feats, X).reshape(-1, 2, degree)
    h = bound / K
    for p in range(1, degree + 1):
        err = (m[:, :, p - 1] - X**p).abs().max()
        assert err <= h**2 * p * (p - 1) * bound ** max(p - 2, 0) / 8 + 1e-12
        assert p < 2 or err > h**2 * p * (p - 1) * bound ** max(p - 2, 0) / 8 / 4  # the bound is the error's order
    t = torch.linspace(-bound, bound, 2 * K + 1, dtype=torch.float64)  # exact at the knots
    assert (torch_features(feats, torch.stack([t, t], -1)).reshape(-1, 2, degree)[:, 0, 2] - t**3).abs().max() <= 1e-14
    # no cancellation: the terms W_out * relu(.) of each feature have one sign at every x
    W_in, b_in, W_out = (torch.tensor(feats[k], dtype=torch.float64) for k in ("W_in", "b_in", "W_out"))
    terms = W_out[None] * torch.relu(X @ W_in.T + b_in)[:, None, :]
    assert torch.allclose(terms.abs().sum(-1), (terms.sum(-1)).abs())
    c = feature_gd(2, 3, 0.05, features=feats)
    assert c.resources["width"] == 2 + 2 * degree + 1


def test_ridge_on_the_representation_converges_to_ridge_on_the_features():
    """Guo et al.'s in-context ridge on a ReLU-MLP representation: with lam > 0 the GD layers
    converge to ``(M^T M/n + lam I)^{-1} M^T y/n`` on the features M = m(X)."""
    rng = np.random.default_rng(2)
    X, y, Xq = rng.normal(size=(2, 12, 3)), rng.normal(size=(2, 12)), rng.normal(size=(2, 3, 3))
    feats = random_relu_features(3, 6, seed=5)
    M, Mq = (relu_features(Z, feats["W_in"], feats["b_in"], feats["W_out"]) for Z in (X, Xq))
    lam = 0.3
    lr = 1.0 / (np.linalg.eigvalsh(np.einsum("bnk,bnl->bkl", M, M) / 12).max() + lam)
    w = np.linalg.solve(np.einsum("bnk,bnl->bkl", M, M) / 12 + lam * np.eye(6), np.einsum("bnk,bn->bk", M, y)[..., None] / 12)[..., 0]
    ridge = np.einsum("bqk,bk->bq", Mq, w)
    c = feature_gd(3, 400, lr, features=feats, lam=lam)
    # GD on the ridge objective contracts by rho = max|1 - lr (kappa + lam)| toward w*: |w_T - w*| <= rho^T |w*|
    rho = np.abs(1 - lr * (np.linalg.eigvalsh(np.einsum("bnk,bnl->bkl", M, M) / 12) + lam)).max(-1)
    tol = assert_trace_matches(c, OnFeatures(_feature_map(c), GD(400, lr, lam)), X, y, Xq).tol[-1]
    bound = np.linalg.norm(Mq, axis=-1) * (rho**400 * np.linalg.norm(w, axis=-1))[:, None]
    assert (rho < 1).all() and (np.abs(c.predict(X, y, Xq) - ridge) <= bound + tol).all()
    assert np.abs(feature_gd(3, 400, lr, features=feats).predict(X, y, Xq) - ridge).max() > 1e-3  # lam matters
    assert (c.resources["heads"], c.resources["width"]) == (2, 3 + 6 + 3)
    with pytest.raises(ConstructionError):
        feature_gd(3, 2, 0.1, features=feats, lam=-1.0)


@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims() if c.construction is feature_gd])
def test_features_whose_sums_cancel_hold_the_error_model(claim_id):
    """A prompt (found by hypothesis) on which the hidden units' sums ``W_in x + b`` cancel: the
    features carry round-off of the size of ``|W_in||x| + |b|``, far above ``|m(x)|``.  The
    references' scale takes it from :func:`relu_feature_bound`; with ``|m(x)|`` there the error was
    5x the tolerance."""
    from verify.knobs import Knobs
    from verify.prompts import PromptSpec, make_prompt
    from verify.tolerance import compare_trace

    claim = registry.claim(claim_id)
    spec = PromptSpec(B=1, n=1, m=2, d=4, log10_scale=1.40625, log10_kappa=0.0, log10_wscale=0.0, noise=0.0, seed=988)
    k = Knobs(steps=1, lr_factor=1.0, log10_lam=0.0, gamma_factor=0.0, skew=0.0, log10_mask=1.0, log10_gamma=0.0,
              heads=3, log10_eta=0.0, R=1.0, seed=15082, extra={})
    spec, k = claim.adapt(spec, k)
    p = make_prompt(spec)
    c, ref, *_ = claim.build(p, k)
    f = c.params["features"]
    m = relu_features(p.X, f["W_in"], f["b_in"], f["W_out"])
    assert (relu_feature_bound(p.X, f["W_in"], f["b_in"], f["W_out"]) > 10 * np.abs(m)).any()  # the sums cancel
    cmp = compare_trace(c, ref, p.X, p.y, p.Xq)
    assert cmp.ok, cmp.report()
