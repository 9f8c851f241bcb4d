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
