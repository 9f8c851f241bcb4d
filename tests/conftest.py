"""The hypothesis profiles (dev, ci, thorough) are the toolkit's own: importing
``verify.strategies`` registers them and loads the one the environment names
(``HYPOTHESIS_PROFILE``, else ``ci`` when ``CI`` is set, else ``dev``).

Under pytest-xdist (``pytest -n auto``, the README's test command) each worker process gets
``threads // workers`` torch intra-op threads (torch's default count split), so the workers do not oversubscribe the cores.

``ICL_MUTATION=<name>`` runs the session with that mutation of :mod:`verify.mutation`
applied (``python benchmarks/mutation.py --tests`` does this to see which tests catch it)."""
import os

import verify.strategies  # noqa: F401

_mutation = None


def pytest_configure(config):
    global _mutation
    workers = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
    if workers > 1:
        import torch

        torch.set_num_threads(max(1, torch.get_num_threads() // workers))
    name = os.environ.get("ICL_MUTATION")
    if name:
        from verify.mutation import by_name

        _mutation = by_name(name).patch()
        _mutation.__enter__()


def pytest_unconfigure(config):
    if _mutation is not None:
        _mutation.__exit__(None, None, None)
