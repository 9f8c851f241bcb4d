"""docs/extending.md is a test: its code blocks, saved as the two files they name, register a
construction and its claim from the public API; the claim holds, its proof proves, its property
tests pass, the command line checks it with --import, and it is the toolkit's heavy_ball."""
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

import constructions
from constructions import registry
from verify import bench
from verify.claims import check_claim
from verify.proofs import prove
from verify.reference import HeavyBall

PAGE = Path(__file__).parent.parent / "docs" / "extending.md"


def tutorial_files() -> dict:
    """``{file name: source}`` from the page's ```python blocks, each labelled by its first line."""
    files: dict = {}
    for block in re.findall(r"```python\n(.*?)```", PAGE.read_text(), flags=re.S):
        label = block.splitlines()[0]
        name = re.match(r"# (\S+\.py)", label).group(1)
        files[name] = files.get(name, "") + block + "\n"
    return files


@pytest.fixture
def tutorial(tmp_path, monkeypatch):
    for name, text in tutorial_files().items():
        (tmp_path / name).write_text(text)
    monkeypatch.syspath_prepend(str(tmp_path))
    import my_heavy_ball
    import test_my_heavy_ball

    yield tmp_path, my_heavy_ball, test_my_heavy_ball
    registry.unregister("my_heavy_ball")
    for m in ("my_heavy_ball", "test_my_heavy_ball"):
        sys.modules.pop(m, None)


def test_the_page_has_both_files():
    assert set(tutorial_files()) == {"my_heavy_ball.py", "test_my_heavy_ball.py"}


def test_the_tutorial_construction_is_checked_proved_and_tested(tutorial):
    _, module, tests = tutorial
    claim = registry.claim("tutorial-heavy-ball")
    assert claim.construction is module.my_heavy_ball and "my_heavy_ball" in constructions.names()
    assert check_claim(claim, prompts=20, seed=0).holds
    result = prove(claim)
    assert result.kind == "general" and result.holds, result.parts
    tests.test_every_layer_is_a_heavy_ball_step()  # the hypothesis property test, as pytest would run it
    tests.test_without_the_momentum_head_the_layers_are_gd()
    row = bench.bench_one("my_heavy_ball", d=3, n=8, B=4)  # its benchmark row (no torch baseline declared)
    assert row["layers"] == 10 and row["flop_rate"] > 0 and np.isnan(row["ref_seconds"])
    assert "| my_heavy_ball | 3 | 8 | 4 |" in bench.report([row])


def test_the_tutorial_construction_is_the_toolkits_heavy_ball(tutorial):
    _, module, _ = tutorial
    params = dict(d=4, steps=3, lr=0.1, beta=0.5)
    mine, theirs = module.my_heavy_ball(**params), constructions.heavy_ball(**params)
    for a, b in zip(mine.blocks, theirs.blocks):
        for key in ("W_Q", "W_K", "W_V", "W_O"):
            assert np.array_equal(getattr(a.attn, key), getattr(b.attn, key))
    rng = np.random.default_rng(1)
    X, y = rng.normal(size=(2, 7, 4)), rng.normal(size=(2, 7))
    ref, ours = module.MyHeavyBall(5, 0.1, 0.5).fit(X, y), HeavyBall(5, 0.1, 0.5).fit(X, y)
    assert np.array_equal(ref.iterates_, ours.iterates_) and np.allclose(ref.magnitude_, ours.magnitude_, rtol=1e-15)


def test_the_command_line_checks_and_proves_the_tutorial_module(tutorial):
    folder, _, _ = tutorial
    for cmd, word in ((["check", "--prompts", "10", "--seed", "0"], "1/1 claims hold"), (["prove"], "PROVED")):
        r = subprocess.run([sys.executable, "-m", "verify", *cmd[:1], "--import", str(folder / "my_heavy_ball.py"),
                            "tutorial-heavy-ball", *cmd[1:]], capture_output=True, text=True)
        assert r.returncode == 0 and word in r.stdout, r.stdout + r.stderr
