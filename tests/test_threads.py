"""The thread policy: a small CPU forward pass runs on one intra-op thread, a large one on
torch's count, and ``fastpath.threads(None)`` leaves torch's setting alone (docs/performance.md)."""
import numpy as np
import pytest
import torch

import constructions
from constructions import fastpath


@pytest.fixture
def two_threads():
    old = torch.get_num_threads()
    torch.set_num_threads(2)
    yield
    torch.set_num_threads(old)


def _threads_seen(c, B):
    rng = np.random.default_rng(0)
    X, y, Xq = rng.normal(size=(B, 40, 20)) / 10, rng.normal(size=(B, 40)), rng.normal(size=(B, 1, 20)) / 10
    seen = []
    c.run_with_hooks(X, y, Xq, hooks={"blocks.0.hook_resid_pre": lambda t: seen.append(torch.get_num_threads())})
    return seen[0]


def test_small_passes_run_on_one_thread_and_large_ones_on_all(two_threads):
    c = constructions.gd(20, 2, lr=0.01)
    per_prompt = fastpath.model_flops(c.model, 40, 41) / c.model.n_layers
    small, large = 1, int(2 * fastpath.THREAD_MIN_FLOPS / per_prompt) + 1
    assert _threads_seen(c, small) == 1 and torch.get_num_threads() == 2  # restored afterwards
    assert _threads_seen(c, large) == 2
    with fastpath.threads(None):
        assert _threads_seen(c, small) == 2
    with pytest.raises(ValueError):
        fastpath.set_policy("many")


def test_cli_threads_fixes_the_count(two_threads, capsys):
    from verify.cli import main

    try:
        assert main(["list", "--threads", "1"]) == 0
        assert torch.get_num_threads() == 1 and fastpath._THREADS.get() is None
        assert main(["list", "--threads", "0"]) == 2
    finally:
        fastpath.set_policy("auto")
