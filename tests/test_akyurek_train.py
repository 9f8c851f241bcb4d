"""Akyurek et al. 2022's trained-learner evidence (verify.akyurek): the metrics, the probes, the run."""
import numpy as np
import torch

from verify import akyurek as A
from verify import baselines
from verify import train as T
from verify.tolerance import C, eps


def _context(d=3, k=5, B=200, seed=0):
    X, y, Xq, yq = T.sample_tasks(A._gaussian(d, k, 0.3), B, torch.Generator().manual_seed(seed))
    return X, y, Xq, yq


def test_implicit_weights_of_a_linear_predictor_are_its_weights():
    """ILWD is 0 between a linear predictor and itself: the fit on the probe queries is exact."""
    X, y, _, _ = _context()
    for name in A.PREDICTORS:
        w = A.algorithm_weights(name, X, y, 0.3, lr=0.4)
        f = lambda X, y, Xq, w=w: baselines.predict(Xq, w)  # noqa: E731
        np.testing.assert_allclose(A.implicit_weights(f, X, y, torch.Generator().manual_seed(1)), w, atol=1e-10)
    ridge = A.algorithm_weights("ridge", X, y, 0.3, lr=0.0)
    np.testing.assert_allclose(ridge, baselines.ridge(X, y, 0.3**2 / X.shape[1]), atol=1e-14)  # Bayes lam = sigma^2/k


def test_a_linear_probe_reads_a_linear_code_and_not_noise():
    g = torch.Generator().manual_seed(0)
    t = torch.randn(2000, 3, generator=g, dtype=torch.float64)
    M = torch.randn(3, 8, generator=g, dtype=torch.float64)
    assert A.probe_error(t @ M, t) < 1e-20  # the target is a linear image of the features
    noise = torch.randn(2000, 8, generator=g, dtype=torch.float64)
    assert A.probe_error(noise, t) > 0.9  # unrelated features: about the target's variance (1)
    assert A.probe_error(torch.tanh(t @ M), t, kind="mlp") < A.probe_error(noise, t, kind="mlp")


def test_the_attention_probe_finds_a_code_in_one_position_that_the_query_token_lacks():
    """States [B, T, D]: position 2 holds a linear image of the target and a marker feature, the
    others (the query token last among them) noise.  The query-token probe reads nothing; the
    attention probe learns to weight position 2, so it reads the target better than the mean over
    positions does (the noise of the other positions dilutes the mean)."""
    g = torch.Generator().manual_seed(0)
    t = torch.randn(3000, 3, generator=g, dtype=torch.float64)
    H = torch.randn(3000, 6, 9, generator=g, dtype=torch.float64)
    H[:, 2, :8] = t @ torch.randn(3, 8, generator=g, dtype=torch.float64)
    H[:, :, 8] = 0.0
    H[:, 2, 8] = 1.0  # the marker the learned query can key on
    query = A.probe_error(H[:, -1], t)
    assert query > 0.9  # about the target's variance: nothing there
    # it learns to weight position 2: better than the uniform weights of a mean-pooled linear probe
    assert A.probe_error(H, t, kind="attention") < A.probe_error(H.mean(1), t) < query


def test_probes_on_a_hand_set_construction_do_at_least_as_well_as_its_slot():
    """On relu_gd the w slot holds GD's iterate; reading it is one of the linear maps the probe's least
    squares chooses from, so on its fitting rows the probe's error is at most the slot's (a sanity bound
    for the probes, up to round-off), and the slot's error falls with depth (GD contracts towards w_OLS)."""
    r = A.construction_probes(d=3, N=6, steps=3, prompts=800, seed=0)
    roundoff = C * eps(torch.float64) * 800  # the least-squares sums run over the 600 fitting rows
    assert all(p <= s + roundoff * (1 + s) for p, s in zip(r["probe_train"], r["slot_train"]))
    assert r["slot"][3] < r["slot"][2] < r["slot"][1] < r["slot"][0]


def test_the_reproduction_runs_end_to_end(tmp_path, monkeypatch):
    """A tiny setting: the report has the phase diagram and probe tables, the plots and the
    checkpoint are written."""
    monkeypatch.setitem(A.SETTINGS, True, dict(d=2, depths=(1,), noises=(0.0, 0.5), widths=(8,), width_depth=1,
                                               steps=10, batch=16, prompts=40, probe_prompts=80))
    text = A.reproduce_akyurek(quick=True, out=str(tmp_path))
    assert "Phase diagram" in text and "SPD to OLS" in text and "control" in text and "relu_gd" in text
    for name in ("phase_diagram.png", "spd_vs_examples.png", "probes.png", "akyurek22.safetensors"):
        assert (tmp_path / name).stat().st_size > 0
    model, task, training = T.load_trained(tmp_path / "akyurek22.safetensors")
    assert training["prefixes"] is True and task.n == 4
