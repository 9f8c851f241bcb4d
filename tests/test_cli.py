"""The icl-verify command line: every command reads the one registry."""
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

import constructions
from constructions import registry
from verify.cli import main
from verify.docs import claims_markdown, readme_with_table

ROOT = Path(__file__).parent.parent


def test_check_prints_the_table_reproduces_its_seed_and_a_claim_alone_sees_the_same_prompts(capsys):
    """One full run (every claim), its table; the same command again gives the same rows; a claim
    checked alone draws the prompts it drew in the full run (each claim's prompts come from the
    seed and its id).  One test, so that the full run is paid for once per repetition."""
    assert main(["check", "--prompts", "4", "--seed", "123"]) == 0
    a = capsys.readouterr().out
    for header in ("claim", "construction", "source", "prompts", "worst error", "tolerance", "verdict"):
        assert header in a
    for c in registry.claims():
        assert c.id in a
    n = len(registry.claims())
    assert f"{n}/{n} claims hold" in a and "seed 123" in a
    main(["check", "--prompts", "4", "--seed", "123"])
    b = capsys.readouterr().out
    strip = lambda s: [line for line in s.splitlines() if "claims hold" not in line]  # noqa: E731 (timing)
    assert strip(a) == strip(b)
    main(["check", "bai23-lasso", "--prompts", "4", "--seed", "123"])
    alone = capsys.readouterr().out
    row = lambda out: [line.split() for line in out.splitlines() if line.startswith("bai23-lasso ")]  # noqa: E731
    assert row(a) == row(alone) and len(row(a)) == 1


def test_check_float32_and_subset(capsys):
    assert main(["check", "vonoswald23-prop1", "--prompts", "5", "--dtype", "float32", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "1/1 claims hold" in out


def test_failing_claim_exits_one(capsys):
    """A claim whose construction is wrong (lr off by 0.1%) must be reported as failing."""
    from verify.claims import Claim
    from verify.knobs import stable_lr
    from verify.reference import GD

    def broken(p, k):
        lr = stable_lr(p.X, k.lr_factor) / 2
        return constructions.gd(p.spec.d, k.steps, 2 * lr * 1.001), GD(k.steps, lr=2 * lr)

    registry.add_claim(Claim("broken", "nobody", "nowhere", "a wrong step size", "GD", broken, GD,
                             construction=constructions.gd))
    try:
        assert main(["check", "broken", "--prompts", "3", "--seed", "0"]) == 1
    finally:
        registry.remove_claim("broken")
    out = capsys.readouterr().out
    assert "FAILS" in out and "FAILED broken" in out and "first deviation at layer 1" in out


def test_unknown_claim_and_list(capsys):
    assert main(["check", "no-such-claim"]) == 2
    assert "unknown claim" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "vonoswald23-prop1" in capsys.readouterr().out


def test_python_dash_m_verify_runs():
    """``python -m verify`` in a fresh process: it lists every registered claim and checks one."""
    r = subprocess.run([sys.executable, "-m", "verify", "list"], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    for c in registry.claims():
        assert c.id in r.stdout
    r = subprocess.run([sys.executable, "-m", "verify", "check", "vonoswald23-prop1", "--prompts", "2", "--seed", "0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "1/1 claims hold" in r.stdout


def test_docs_claims_table_and_readme_table_are_up_to_date():
    assert (ROOT / "docs" / "claims.md").read_text() == claims_markdown(), "run `icl-verify docs`"
    readme = (ROOT / "README.md").read_text()
    assert readme == readme_with_table(readme), "run `icl-verify docs`"


USER_MODULE = textwrap.dedent("""
    import numpy as np
    import constructions
    from verify.claims import Claim
    from verify.knobs import stable_lr
    from verify.reference import GD

    def half_gd(d, steps, lr):
        \"\"\"**Theorem** GD at half the step (a user's construction).\"\"\"
        c = constructions.gd(d, steps, lr / 2)
        return constructions.Construction("half_gd", dict(d=d, steps=steps, lr=lr), c.blocks, c.layout, d)

    def case(p, k):
        lr = stable_lr(p.X, k.lr_factor)
        return half_gd(p.spec.d, k.steps, lr), GD(k.steps, lr=lr / 2)

    constructions.register(half_gd, summary="GD at half the step", source="a user", exactness="exact",
                           claims=[Claim("user-half-gd", "a user", "notes", "GD at half the step", "GD (numpy)", case, GD)])
""")


def test_import_option_checks_a_users_module(tmp_path):
    """``icl-verify check --import my_module`` runs a claim that only the user's module registers;
    the real command, in a fresh process, as a user would run it."""
    (tmp_path / "my_claims.py").write_text(USER_MODULE)
    r = subprocess.run([sys.executable, "-m", "verify", "check", "--import", "my_claims", "user-half-gd",
                        "--prompts", "4", "--seed", "0"], capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 0, r.stdout + r.stderr
    assert "user-half-gd" in r.stdout and "half_gd" in r.stdout and "1/1 claims hold" in r.stdout
    r = subprocess.run([sys.executable, "-m", "verify", "--import", str(tmp_path / "my_claims.py"), "list"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0 and "user-half-gd" in r.stdout
    r = subprocess.run([sys.executable, "-m", "verify", "check", "--import", "no_such_module_here"],
                       capture_output=True, text=True, cwd=tmp_path)
    assert r.returncode == 2 and r.stderr.count("\n") == 1 and "--import no_such_module_here" in r.stderr


def test_installed_plugins_register_through_the_entry_point_group(monkeypatch, tmp_path):
    import importlib.metadata

    (tmp_path / "plugin_mod.py").write_text(USER_MODULE.replace("half_gd", "plugin_gd").replace("user-half", "plugin"))
    monkeypatch.syspath_prepend(str(tmp_path))
    ep = importlib.metadata.EntryPoint("mine", "plugin_mod", registry.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points",
                        lambda group=None: [ep] if group == registry.ENTRY_POINTS else [])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    try:
        assert "plugin_gd" in registry.names() and registry.claim("plugin-gd").name == "plugin_gd"
    finally:
        registry.unregister("plugin_gd")


def test_a_broken_plugin_names_itself(monkeypatch):
    import importlib.metadata

    ep = importlib.metadata.EntryPoint("broken", "no_such_plugin_module", registry.ENTRY_POINTS)
    monkeypatch.setattr(importlib.metadata, "entry_points", lambda group=None: [ep])
    monkeypatch.setattr(registry, "_plugins_loaded", False)
    with pytest.raises(constructions.ConstructionError, match="plugin 'broken'"):
        registry.names()


def test_check_prints_a_claims_report(capsys):
    """The decoder claim's prefix-risk curve is printed under the table."""
    assert main(["check", "bai23-decoder", "--prompts", "3", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    assert "prefix risk" in out and "least squares" in out and "decoder_gd" in out
