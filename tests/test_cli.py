import math
import subprocess
import sys
from pathlib import Path
from unittest import mock

import pytest
import torch
from hypothesis import given

from constructions import transformer

from verify import claims as registry
from verify.cli import main
from verify.docs import claims_markdown
from verify.prompts import make_prompt
from verify.strategies import knobs, prompts

ROOT = Path(__file__).parent.parent


@pytest.mark.parametrize("claim_id", list(registry.CLAIMS))
@given(p=prompts(), k=knobs())
def test_every_registered_claim_holds_on_random_prompts(claim_id, p, k):
    claim = registry.CLAIMS[claim_id]
    spec, k = claim.adapt(p.spec, k)
    holds, figure, cmp = claim.evaluate(make_prompt(spec), k)
    assert holds, f"{claim_id}: figure {figure}; {cmp.report()}"


FORCED = {dt: dict(multiple=8, max_growth=math.inf) for dt in (torch.float64, torch.float32)}
#: float64 exact claims with padding forced: tests/test_fast_path.py
_PADDED = [(c, torch.float64) for c, v in registry.CLAIMS.items() if v.kind != "exact"] + [
    (c, torch.float32) for c, v in registry.CLAIMS.items() if v.kind == "exact"]


@pytest.mark.parametrize("claim_id, dtype", _PADDED, ids=[f"{c}-{str(dt)[6:]}" for c, dt in _PADDED])
@given(p=prompts(), k=knobs())
def test_every_claim_holds_with_the_stream_padded(claim_id, dtype, p, k):
    """The padded forward pass (constructions.transformer.PADDING, on by default only at the
    widths where it is faster) forced on every width: every claim still holds, layer by layer."""
    claim = registry.CLAIMS[claim_id]
    spec, k = claim.adapt(p.spec, k)
    with mock.patch.dict(transformer.PADDING, FORCED):
        holds, figure, cmp = claim.evaluate(make_prompt(spec), k, dtype)
    assert holds, f"{claim_id} ({dtype}): figure {figure}; {cmp.report()}"


def test_check_prints_the_table_and_exits_zero(capsys):
    assert main(["check", "--prompts", "5", "--seed", "0"]) == 0
    out = capsys.readouterr().out
    for header in ("claim", "construction", "source", "prompts", "worst error", "tolerance", "verdict"):
        assert header in out
    for cid in registry.CLAIMS:
        assert cid in out
    n = len(registry.CLAIMS)
    assert f"{n}/{n} claims hold" in out and "seed 0" in out


def test_check_float32_and_subset(capsys):
    assert main(["check", "vonoswald23-prop1", "--prompts", "5", "--dtype", "float32", "--seed", "1"]) == 0
    out = capsys.readouterr().out
    assert "float32" in out and "1/1 claims hold" in out


def test_failing_claim_exits_one(monkeypatch, capsys):
    """A claim whose construction is wrong (lr doubled) must be reported as failing."""
    import constructions
    from verify.reference import GD

    def broken(p, k):
        lr = registry.stable_lr(p.X, k.lr_factor) / 2
        return constructions.gd(p.spec.d, k.steps, 2 * lr * 1.001), GD(k.steps, lr=2 * lr)

    bad = registry.Claim("broken", "nobody", "nowhere", "a wrong step size", "gd", "GD", broken)
    monkeypatch.setitem(registry.CLAIMS, "broken", bad)
    assert main(["check", "broken", "--prompts", "3", "--seed", "0"]) == 1
    out = capsys.readouterr().out
    assert "FAILS" in out and "FAILED broken" in out and "first deviation at layer 1" in out


def test_unknown_claim_and_list(capsys):
    assert main(["check", "no-such-claim"]) == 2
    assert "unknown claim" in capsys.readouterr().err
    assert main(["list"]) == 0
    assert "vonoswald23-prop1" in capsys.readouterr().out


def test_seed_reproduces_a_run(capsys):
    main(["check", "--prompts", "4", "--seed", "123"])
    a = capsys.readouterr().out
    main(["check", "--prompts", "4", "--seed", "123"])
    b = capsys.readouterr().out
    strip = lambda s: [line for line in s.splitlines() if "claims hold" not in line]  # noqa: E731 (timing)
    assert strip(a) == strip(b)


def test_python_dash_m_verify_runs():
    r = subprocess.run([sys.executable, "-m", "verify", "check", "--prompts", "2", "--seed", "0"],
                       capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr
    assert "claims hold" in r.stdout


def test_docs_claims_table_is_up_to_date():
    assert (ROOT / "docs" / "claims.md").read_text() == claims_markdown(), "run `icl-verify docs`"
