"""Every registered claim, on random prompts from its own ranges: float64, float32 (exact
claims; negative controls and bound claims are statements in float64), and with the padded
forward pass forced on every width."""
import math
from unittest import mock

import pytest
import torch
from hypothesis import given, note

from constructions import fastpath, registry
from verify.prompts import make_prompt
from verify.strategies import knobs, prompts

ALL = [c.id for c in registry.claims()]
EXACT = [c.id for c in registry.claims() if c.kind == "exact"]
FORCED = {dt: dict(multiple=8, max_growth=math.inf) for dt in (torch.float64, torch.float32)}


def _holds(claim_id, p, k, dtype=torch.float64):
    claim = registry.claim(claim_id)
    spec, k = claim.adapt(p.spec, k)
    holds, figure, cmp = claim.evaluate(make_prompt(spec), k, dtype)
    note(f"{spec} | {k} | {cmp.report()}")
    assert holds, f"{claim_id} ({dtype}): figure {figure}; {cmp.report()}"


@pytest.mark.parametrize("claim_id", ALL)
@given(p=prompts(), k=knobs())
def test_every_claim_holds_in_float64(claim_id, p, k):
    _holds(claim_id, p, k)


@pytest.mark.parametrize("claim_id", EXACT)
@given(p=prompts(), k=knobs())
def test_every_exact_claim_holds_in_float32(claim_id, p, k):
    _holds(claim_id, p, k, torch.float32)


#: float64 exact claims with padding forced: tests/test_fast_path.py
_PADDED = [(c, torch.float64) for c in ALL if c not in EXACT] + [(c, torch.float32) for c in EXACT]


@pytest.mark.parametrize("claim_id, dtype", _PADDED, ids=[f"{c}-{str(dt)[6:]}" for c, dt in _PADDED])
@given(p=prompts(), k=knobs())
def test_every_claim_holds_with_the_stream_padded(claim_id, dtype, p, k):
    """The padded forward pass (constructions.fastpath.PADDING, on by default only at the widths
    where it is faster) forced on every width: every claim still holds, layer by layer."""
    with mock.patch.dict(fastpath.PADDING, FORCED):
        _holds(claim_id, p, k, dtype)
