"""The fuzz campaign (verify.fuzz, docs/reliability.md): every class keeps the promise "a correct
finite answer or a ConstructionError" on a few hundred hostile inputs, deterministic under the
``ci`` hypothesis profile.  The class that hands overflow-scale prompts to linear algebra runs in
a subprocess, so a crash there fails this test instead of ending the session."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from verify import fuzz

ROOT = Path(__file__).resolve().parent.parent
#: examples per class: a few hundred (the ``thorough`` profile's max_examples when it is loaded)
EXAMPLES = 200 if os.environ.get("HYPOTHESIS_PROFILE") != "thorough" else 2000
IN_PROCESS = [name for name in fuzz.CLASSES if name != "prompt-values"]


@pytest.mark.parametrize("name", IN_PROCESS)
def test_a_fuzz_class_keeps_the_promise(name):
    counts = fuzz.run(name, EXAMPLES)
    assert sum(counts.values()) == EXAMPLES
    assert counts["refused"] > 0 and counts["answered"] > 0, counts  # the class draws both kinds of input


def test_overflow_scale_prompts_in_a_subprocess():
    env = dict(os.environ, PYTHONPATH=str(ROOT) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    r = subprocess.run([sys.executable, "-m", "verify.fuzz", "prompt-values", "--examples", str(EXAMPLES)],
                       cwd=ROOT, env=env, capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, (r.returncode, r.stderr[-4000:])
    counts = json.loads(r.stdout.strip().splitlines()[-1])
    assert counts["tried"] == EXAMPLES and counts["refused"] > 0 and counts["answered"] > 0, counts


def test_an_escape_is_reported():
    """The harness fails on an escape: a case answering NaN is not counted as answered."""
    with pytest.raises(fuzz.Escape, match="non-finite"):
        fuzz.attempt(lambda: [float("nan")], fuzz._finite)
    with pytest.raises(ZeroDivisionError):  # another exception than ConstructionError propagates
        fuzz.attempt(lambda: 1 / 0)
