"""Training and comparison (verify.train): a tiny deterministic run, metrics, checkpoints, plots."""
import numpy as np
import pytest
import torch

import constructions
from constructions.errors import ConstructionError
from verify import train as T

TINY = T.TaskConfig(d=3, n=6)


def test_one_layer_lsa_learns_the_gd_construction():
    lr, gd_loss = T.best_gd_lr(TINY, 1)
    m = T.lsa_model(TINY.d, 1, seed=0)
    hist = T.train(m, TINY, steps=600, batch=256, lr=3e-3, seed=0, progress=False)
    assert np.mean(hist[-50:]) < 0.6 * np.mean(hist[:10])  # the loss goes down
    cmp = T.compare(T.model_predictor(m), T.construction_predictor(constructions.gd(TINY.d, 1, lr=lr)), TINY)
    # stated margin: within 5% of the best one-step GD loss, sensitivities aligned (cos > 0.99)
    assert cmp["loss_a"] <= 1.05 * gd_loss
    assert cmp["cos_dx"] > 0.99 and cmp["cos_dy"] > 0.99
    w = T.weights_vs_gd(m, lr, TINY.d)
    assert w["rel_dist"] < 0.15


def test_training_is_deterministic_and_checkpoints_round_trip(tmp_path):
    a, b = T.lsa_model(3, 1, seed=1), T.lsa_model(3, 1, seed=1)
    ha = T.train(a, TINY, steps=20, batch=32, seed=5, progress=False, checkpoint=str(tmp_path / "a.safetensors"))
    hb = T.train(b, TINY, steps=20, batch=32, seed=5, progress=False)
    assert ha == hb
    c = T.load_checkpoint(T.lsa_model(3, 1, seed=9), tmp_path / "a.safetensors")
    for p, q in zip(a.parameters(), c.parameters()):
        assert torch.equal(p, q)


def test_compare_detects_a_different_predictor():
    c1 = T.construction_predictor(constructions.gd(3, 1, lr=1.0))
    same = T.compare(c1, c1, TINY, B=200)
    assert same["l2"] == 0 and same["cos_dx"] > 1 - 1e-12
    other = T.compare(c1, T.ridge_predictor(0.0), TINY, B=200)
    assert other["l2"] > 0.01 and other["cos_dx"] < 0.999


def test_gdpp_predictor_matches_the_construction():
    f = T.gdpp_predictor(0.5, 0.2, 3)
    g = T.construction_predictor(constructions.gd_plus_plus(3, 3, lr=0.5, gamma=0.2))
    gen = torch.Generator().manual_seed(0)
    X, y, Xq, _ = T.sample_tasks(TINY, 50, gen)
    assert torch.allclose(f(X, y, Xq), g(X, y, Xq), rtol=0, atol=1e-12)


def test_gdpp_takes_one_step_size_and_gamma_per_layer():
    gen = torch.Generator().manual_seed(0)
    X, y, Xq, _ = T.sample_tasks(TINY, 50, gen)
    same = T.gdpp_predictor([0.5] * 3, [0.2] * 3, 3)(X, y, Xq)
    assert torch.equal(same, T.gdpp_predictor(0.5, 0.2, 3)(X, y, Xq))
    # a zero second step adds nothing: two per-layer steps (0.5, 0) are one step of 0.5
    assert torch.equal(T.gdpp_predictor([0.5, 0.0], [0.2, 0.7], 2)(X, y, Xq), T.gdpp_predictor(0.5, 0.2, 1)(X, y, Xq))
    assert not torch.allclose(T.gdpp_predictor([0.5, 0.3], [0.2, 0.2], 2)(X, y, Xq), T.gdpp_predictor(0.5, 0.2, 2)(X, y, Xq))


def test_plots_are_png_images_with_their_labels(tmp_path):
    import matplotlib.image

    path = T.plot_lines(tmp_path / "p.png", {"a": [1.0, 0.5, 0.2], "b": [0.8, 0.8, 0.8]}, "a title", "steps",
                        "loss", references={"paper: 0.2": 0.2})
    assert path.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    img = matplotlib.image.imread(path)
    assert img.shape[:2] == (400, 640) and img.std() > 0  # drawn, not blank


def test_without_matplotlib_plotting_names_the_extra(monkeypatch, tmp_path):
    import builtins

    real = builtins.__import__

    def no_matplotlib(name, *args, **kw):
        if name == "matplotlib" or name.startswith("matplotlib."):
            raise ImportError("No module named 'matplotlib'")
        return real(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_matplotlib)
    with pytest.raises(ConstructionError, match=r"\[plot\]"):
        T.plot_lines(tmp_path / "p.png", {"a": [1.0]}, "t", "x", "y")


def test_the_input_distribution_of_von_oswald_et_al():
    """docs/pitfalls.md #9: with x ~ U(-0.5, 0.5) (their code) one GD step reaches the reported loss
    of about 0.2 at lr about 6; with U(-1, 1) (their text) it would be about 0.8 at lr about 1.5."""
    lr, loss = T.best_gd_lr(T.TaskConfig(x_range=1.0))
    assert 5.8 < lr < 6.2 and 0.19 < loss < 0.21
    lr2, loss2 = T.best_gd_lr(T.TaskConfig(x_range=2.0))
    assert 1.4 < lr2 < 1.6 and 0.75 < loss2 < 0.85


# -- Ahn et al.: a trained one-layer LSA lands on the proved optimum P* ----------------------------------
ANISO = T.TaskConfig(d=3, n=6, cov=((2.0, 0.0, 0.0), (0.0, 0.5, 0.0), (0.0, 0.0, 0.25)), noise=0.3)


def test_a_trained_layer_lands_on_the_optimal_preconditioner_not_on_gd():
    from constructions.optimum import optimal_precond

    S = np.array(ANISO.cov)
    Pstar = optimal_precond(S, ANISO.n, ANISO.noise)
    G = (ANISO.n + 1) / ANISO.n * S @ S + (np.trace(S) + ANISO.noise**2) / ANISO.n * S
    eta = np.trace(S @ S) / np.trace(S @ G)  # the best plain GD step (closed-form risk over P = eta I)
    gd_dist = np.linalg.norm(eta * np.eye(3) - Pstar) / np.linalg.norm(Pstar)
    m, path = T.train_to_optimum(ANISO, steps=1000, seed=0, progress=False)
    assert path[0][1] > 0.9  # it started far from P* (near P = 0)
    # stated margins: within 10% of P*, and far closer to P* than the best plain GD step (0.5x its distance)
    assert path[-1][1] < 0.1 and path[-1][1] < 0.5 * gd_dist
    assert T.other_terms(m, 3) < 1e-3  # the label channels stayed shut (antithetic batches)


def test_antithetic_batches_keep_the_label_channels_shut():
    """From the Zhang-Frei-Bartlett start, the gradient of the key's label row and of the value's x
    rows is even in the labels: zero in expectation, but not per batch, unless each task comes with
    its negated twin.  Stated margins: below 1e-3 with twins, above 1e-2 without, after 200 steps."""
    sizes = {}
    for anti in (True, False):
        m = T.lsa_model(3, 1, seed=0, label_channels=False)
        assert T.other_terms(m, 3) == 0
        T.train(m, ANISO, 200, batch=128 if anti else 256, lr=1e-2, progress=False, antithetic=anti)
        sizes[anti] = T.other_terms(m, 3)
    assert sizes[True] < 1e-3 and sizes[False] > 1e-2


def test_gaussian_tasks_have_the_requested_covariance():
    gen = torch.Generator().manual_seed(0)
    X, y, Xq, yq = T.sample_tasks(ANISO, 20_000, gen)
    emp = torch.einsum("bni,bnj->ij", X, X) / (X.shape[0] * X.shape[1])
    # within 6 standard errors of each entry (Var of x_i x_j is S_ii S_jj + S_ij^2)
    S = torch.tensor(ANISO.cov)
    se = torch.sqrt((S.diagonal()[:, None] * S.diagonal()[None, :] + S**2) / (X.shape[0] * X.shape[1]))
    assert ((emp - S).abs() <= 6 * se).all()
    with pytest.raises(ConstructionError, match="symmetric"):
        T.TaskConfig(d=2, cov=((1.0, 0.5), (0.0, 1.0)))
    with pytest.raises(ConstructionError, match="positive definite"):
        T.TaskConfig(d=2, cov=((1.0, 0.0), (0.0, -1.0)))


def test_a_trained_checkpoint_loads_from_the_file_alone(tmp_path):
    m = T.lsa_model(3, 1, seed=2, label_channels=False)
    T.train(m, ANISO, steps=5, batch=16, seed=1, progress=False, checkpoint=str(tmp_path / "m.safetensors"))
    back, task, training = T.load_trained(tmp_path / "m.safetensors")
    assert task == ANISO and training["steps"] == 5 and training["schedule"] == "constant"
    assert back.icl_architecture == m.icl_architecture
    for p, q in zip(m.parameters(), back.parameters()):
        assert torch.equal(p, q)
    sm = T.softmax_model(3, layers=1, heads=2, mlp=4, seed=0)
    T.save_checkpoint(sm, tmp_path / "s.safetensors", TINY, steps=0)
    back, _, _ = T.load_trained(tmp_path / "s.safetensors")
    assert all(torch.equal(p, q) for p, q in zip(sm.parameters(), back.parameters()))


def _rewrite(path, out, meta=None, tensors=None):
    from safetensors.torch import load_file, safe_open, save_file

    with safe_open(str(path), framework="pt") as f:
        old = f.metadata()
    state = load_file(str(path))
    state.update(tensors or {})
    save_file(state, str(out), metadata={**old, **(meta or {})})
    return out


@pytest.mark.parametrize("change, message", [
    (dict(meta={"architecture": '{"factory": "os.system", "d": 3, "layers": 1}'}), "broken metadata"),
    (dict(meta={"architecture": '{"factory": "lsa_model", "d": 3, "layers": 10000000}'}), "size limit"),
    (dict(meta={"architecture": '{"factory": "lsa_model", "d": 3, "layers": 2, "label_channels": false}'}),
     "do not fit"),
    (dict(meta={"task": "[1, 2"}), "broken metadata"),
    (dict(meta={"architecture": '{"factory": "lsa_model", "d": 3, "layers": 1, "heads": 2}'}), "broken metadata"),
    (dict(meta={"task": '{"d": 5, "n": 6}'}), "broken metadata"),
    (dict(meta={"task": '{"d": 3, "n": "6"}'}), "broken metadata"),
    (dict(meta={"format": "icl-constructions/1"}), "not a trained checkpoint"),
    (dict(tensors={"blocks.0.attn.W_Q": torch.full((1, 4, 4), float("nan"), dtype=torch.float64)}), "NaN"),
])
def test_a_tampered_checkpoint_is_refused(tmp_path, change, message):
    m = T.lsa_model(3, 1, seed=2, label_channels=False)
    T.save_checkpoint(m, tmp_path / "m.safetensors", ANISO, steps=0)
    bad = _rewrite(tmp_path / "m.safetensors", tmp_path / "bad.safetensors", **change)
    with pytest.raises(ConstructionError, match=message):
        T.load_trained(bad)


def test_each_loader_names_the_other_for_the_other_kind_of_file(tmp_path):
    m = T.lsa_model(3, 1, seed=2)
    T.save_checkpoint(m, tmp_path / "m.safetensors", TINY, steps=0)
    with pytest.raises(ConstructionError, match="load_trained"):
        constructions.load(tmp_path / "m.safetensors")
    constructions.gd(3, 1, lr=0.5).save(tmp_path / "c.safetensors")
    with pytest.raises(ConstructionError, match="constructions.load"):
        T.load_trained(tmp_path / "c.safetensors")
    with pytest.raises(ConstructionError, match="does not fit"):
        T.load_checkpoint(T.lsa_model(4, 1), tmp_path / "m.safetensors")


def test_an_existing_file_is_not_replaced_by_a_checkpoint_unless_asked(tmp_path, monkeypatch):
    target = tmp_path / "notes.safetensors"
    target.write_text("my notes")
    calls = []
    monkeypatch.setattr(T, "sample_tasks", lambda *a, **k: calls.append(1))
    with pytest.raises(ConstructionError, match="overwrite=True"):
        T.train(T.lsa_model(3, 1), TINY, steps=5, progress=False, checkpoint=str(target))
    assert not calls and target.read_text() == "my notes"  # refused before any training step
    with pytest.raises(ConstructionError, match="overwrite=True"):
        T.save_checkpoint(T.lsa_model(3, 1), target, TINY)
    assert target.read_text() == "my notes"
    T.save_checkpoint(T.lsa_model(3, 1), target, TINY, overwrite=True)
    assert T.load_trained(target)[1] == TINY


def test_a_diverging_run_and_misused_helpers_are_refused():
    with pytest.raises(ConstructionError, match="diverged"):
        T.train(T.lsa_model(3, 1, init_std=1.0), T.TaskConfig(d=3, n=6, x_range=1e120), steps=3, batch=8,
                progress=False)
    gen = torch.Generator().manual_seed(0)
    X, y, Xq, _ = T.sample_tasks(TINY, 5, gen)
    with pytest.raises(ConstructionError, match="one lr and one gamma"):
        T.gdpp_predictor([0.5, 0.5], 0.2, 3)(X, y, Xq)
    with pytest.raises(ConstructionError, match="one-head linear"):
        T.effective_precond(T.softmax_model(3, layers=1), 3)
    with pytest.raises(ConstructionError, match="one-head linear"):
        T.effective_precond(T.lsa_model(3, 1), 4)


def test_a_looped_lsa_holds_one_layer_and_its_checkpoint_keeps_the_tie(tmp_path):
    """tied=True: every block holds block 0's parameters, training moves them together, and the
    checkpoint stores them once and loads back tied."""
    m = T.lsa_model(d=3, layers=3, tied=True)
    assert sum(p.numel() for p in m.parameters()) == 4 * 4 * 4  # one layer's W_Q, W_K, W_V, W_O [1, 4, 4]
    path = tmp_path / "looped.safetensors"
    T.train(m, T.TaskConfig(d=3, n=6), steps=20, batch=32, lr=1e-2, progress=False, checkpoint=str(path))
    for b in m.blocks[1:]:
        assert b.attn.W_Q is m.blocks[0].attn.W_Q and torch.equal(b.attn.W_O, m.blocks[0].attn.W_O)
    loaded, task, training = T.load_trained(path)
    assert loaded.icl_architecture["tied"] and loaded.blocks[2].attn.W_V is loaded.blocks[0].attn.W_V
    X, y, Xq, _ = T.sample_tasks(task, 8, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(T.model_predictor(loaded)(X, y, Xq), T.model_predictor(m)(X, y, Xq))
    untied = T.lsa_model(d=3, layers=3)
    assert sum(p.numel() for p in untied.parameters()) == 3 * 4 * 4 * 4


def test_prefix_training_and_a_wide_softmax_model(tmp_path):
    """prefixes=True trains on every context length; a model wider than the token pads its stream,
    and its checkpoint records the width."""
    m = T.softmax_model(d=2, layers=1, width=6)
    assert m.width == 6
    path = tmp_path / "wide.safetensors"
    T.train(m, T.TaskConfig(d=2, n=5), steps=5, batch=16, progress=False, prefixes=True, checkpoint=str(path))
    loaded, _, training = T.load_trained(path)
    assert loaded.width == 6 and training["prefixes"] is True
    X, y, Xq, _ = T.sample_tasks(T.TaskConfig(d=2, n=3), 4, torch.Generator().manual_seed(0))
    with torch.no_grad():
        assert torch.equal(T.model_predictor(loaded)(X, y, Xq), T.model_predictor(m)(X, y, Xq))
    with pytest.raises(ConstructionError, match="width must be at least"):
        T.softmax_model(d=4, width=3)
    with pytest.raises(ConstructionError, match="width"):
        T.softmax_model(d=4, width=8.5)
    for bad in ((1.0,), ("a", "b"), 3.0, (1.0, float("nan"))):  # a fixed task weight of the wrong kind
        with pytest.raises(ConstructionError, match="w must be 2 finite numbers"):
            T.TaskConfig(d=2, w=bad)
