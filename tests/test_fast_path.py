"""The forward pass without hooks (preallocated buffers, cache-sized batch chunks, a padded
stream) against the hooked pass that ``trace()`` and ``residuals()`` use, for the construction
of every claim, with padding off, as by default, and forced on every width.

On the same batch the two passes give the same bits.  A prompt run in a different batch (a
chunk) may differ in its last bits, since MKL picks GEMM kernels by matrix size, so chunked
predictions are held to the tolerance model instead."""
import math
from unittest import mock

import pytest
import torch
from hypothesis import given

from constructions import fastpath, registry
from verify.prompts import make_prompt
from verify.strategies import knobs, prompts
from verify.tolerance import compare_trace

#: off, and forced on every width (the default pads a subset of widths: the rest of the suite)
PADDINGS = {"none": {}, "forced": {dt: dict(multiple=8, max_growth=math.inf) for dt in (torch.float64, torch.float32)}}


def _case(claim_id, p, k, padding):
    claim = registry.claim(claim_id)
    spec, k = claim.adapt(p.spec, k)
    prompt = make_prompt(spec)
    with mock.patch.dict(fastpath.PADDING, PADDINGS[padding], clear=True):
        c, ref, *rest = claim.build(prompt, k)
    return c, ref, (rest[0] if rest else prompt)


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims() if c.kind != "bound"])
@given(p=prompts(), k=knobs())
def test_fast_pass_has_the_bits_of_the_hooked_pass(claim_id, padding, p, k):
    c, _, prompt = _case(claim_id, p, k, padding)
    prep = c.prepare(*(torch.from_numpy(a) for a in prompt.arrays), check=False)
    n = prep.X.shape[1]
    h, nk = c.embed(prep), c.n_keys(n)
    with torch.no_grad():
        hooked = c.model.residuals(h, nk, norm=n)[-1]
        fast = c.model(h, nk, norm=n)
    assert fast.shape == hooked.shape == h.shape
    torch.testing.assert_close(fast, hooked, rtol=0, atol=0, equal_nan=True)  # same bits (a diverging control: NaN)


@pytest.mark.parametrize("padding", list(PADDINGS))
@pytest.mark.parametrize("claim_id", [c.id for c in registry.claims() if c.kind == "exact"])
@given(p=prompts(), k=knobs())
def test_claim_holds_and_predictions_in_one_prompt_chunks_hold_the_error_model(claim_id, padding, p, k):
    c, ref, prompt = _case(claim_id, p, k, padding)
    cmp = compare_trace(c, ref, *prompt.arrays)  # the hooked pass, every layer
    assert cmp.ok, f"{claim_id}: {cmp.report()}"
    c.model.chunk_bytes = 1  # one prompt per chunk
    err = abs(c.predict(*prompt.arrays) - cmp.ref[-1])
    assert (err <= cmp.tol[-1]).all(), f"{claim_id}: chunked error {err.max():.3e} vs tolerance {cmp.tol[-1].max():.3e}"
