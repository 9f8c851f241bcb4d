"""functional_gd (Cheng et al. 2023): ReLU attention as functional GD, and its convergence to kernel ridge."""
import numpy as np
import pytest

import constructions
from constructions import ConstructionError
from constructions import functional as fg
from verify.knobs import Knobs
from verify.prompts import PromptSpec, make_prompt
from verify.tolerance import assert_trace_matches


def _prompt(B=2, n=8, d=3, seed=0):
    rng = np.random.default_rng(seed)
    return rng.normal(size=(B, n, d)), rng.normal(size=(B, n)), rng.normal(size=(B, 2, d))


def test_layers_are_kernel_gd_steps_with_summed_heads():
    X, y, Xq = _prompt()
    heads = [np.eye(3), np.diag([1.0, 0.5, 2.0])]
    for lam in (0.0, 0.4):
        c = constructions.functional_gd(3, 5, 0.05, lam, heads)
        assert_trace_matches(c, fg._reference(c), X, y, Xq)
    # one head alone is a different kernel: the sum matters
    one = fg._reference(constructions.functional_gd(3, 5, 0.05, 0.0, heads[:1])).fit(X, y)
    assert np.abs(one.trace(Xq) - fg._reference(constructions.functional_gd(3, 5, 0.05, 0.0, heads)).fit(X, y)
                  .trace(Xq)).max() > 1e-3


def test_the_proximal_iteration_reaches_kernel_ridge():
    X, y, Xq = _prompt(seed=1)
    n, lam, lr = X.shape[1], 0.5, 0.2
    c = constructions.functional_gd(3, 300, lr, lam)
    K = np.maximum(np.einsum("bjd,bid->bji", X, X), 0)
    Kq = np.maximum(np.einsum("bqd,bid->bqi", Xq, X), 0)
    alpha = np.linalg.solve(K + n * lam * np.eye(n), y[..., None])[..., 0]
    f_star = np.einsum("bqi,bi->bq", Kq, alpha)
    rho = np.abs(1 - lr * np.linalg.eigvalsh(K) / n).max(-1) / (1 + lr * lam)  # cheng23-kernel-ridge's rate
    bound = np.linalg.norm(Kq, axis=-1) * (rho**300 * np.linalg.norm(alpha, axis=-1))[:, None]
    tol = assert_trace_matches(c, fg._reference(c), X, y, Xq).tol[-1]  # the model is the iteration, to round-off
    assert (rho < 0.95).all() and (np.abs(c.predict(X, y, Xq) - f_star) <= bound + tol).all()
    assert np.abs(constructions.functional_gd(3, 300, lr, 0.0).predict(X, y, Xq) - f_star).max() > 1e-3


def test_kernel_ridge_check_measures_a_real_contraction():
    p = make_prompt(PromptSpec(B=3, n=12, m=2, d=3, seed=4))
    k = Knobs(steps=6, lr_factor=1.0, log10_lam=-1.0, seed=3)
    cmp = fg.check_kernel_ridge(p, k)
    m, t = cmp.model[0], cmp.tol[0]
    assert (m <= t).all()
    per = 1 + p.Xq.shape[1]  # each layer: the context error, then one entry per query
    ctx, query, bound = m[:, 0::per], m[:, 1::per], t[:, 1::per]
    assert (ctx[:, -1] < 0.5 * ctx[:, 0]).all()  # the context error shrinks over the layers
    assert (query[:, -1] < query[:, 0]).all()  # and so does the query's
    rate = bound[:, 1:] / bound[:, :-1]  # the query bound shrinks by rho < 1 per layer
    assert (rate < 1).all() and np.allclose(rate, rate[:, :1], rtol=1e-6)


def test_bad_input_is_refused():
    for bad in (dict(lr=0.0), dict(lam=-0.1), dict(heads=[np.eye(2)]), dict(heads=[]), dict(steps=0)):
        with pytest.raises(ConstructionError):
            constructions.functional_gd(**{**dict(d=3, steps=2, lr=0.1), **bad})


def test_exp_attention_is_functional_gd_in_the_exp_kernel():
    """kernel="exp": the heads sum exp(x^T W_h x'); every layer against the loop written out here."""
    X, y, Xq = _prompt(seed=3)
    X, Xq = X / 3, Xq / 3
    heads = [np.eye(3), np.diag([0.5, 1.0, -0.5])]
    lr, lam, steps, n = 0.2, 0.1, 4, X.shape[1]
    c = constructions.functional_gd(3, steps, lr, lam, heads, kernel="exp")
    assert c.resources["attention"] == ["exp"]
    K = sum(np.exp(np.einsum("bjd,de,bid->bji", X, W, X)) for W in heads)
    Kq = sum(np.exp(np.einsum("bqd,de,bid->bqi", Xq, W, X)) for W in heads)
    r, f, trace = y.copy(), np.zeros(Xq.shape[:2]), []
    for _ in range(steps):
        r, f = r - lr / n * np.einsum("bji,bi->bj", K, r), f + lr / n * np.einsum("bqi,bi->bq", Kq, r)
        r, f = (r + lr * lam * y) / (1 + lr * lam), f / (1 + lr * lam)
        trace.append(f)
    np.testing.assert_allclose(c.trace(X, y, Xq), np.stack(trace), rtol=1e-12, atol=1e-13)
    with pytest.raises(ConstructionError, match="kernel must be one of"):
        constructions.functional_gd(3, 2, 0.1, kernel="softmax")
    from verify import exact as ex

    with pytest.raises(ConstructionError, match="exp attention needs floats"):  # no exact-rational pass for exp
        ex.trace(c, X[:1, :3], y[:1, :3], Xq[:1])
