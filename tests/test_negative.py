"""Negative tests: the harness catches what it must catch."""
import numpy as np
import pytest
import torch
from hypothesis import given

import constructions
from constructions import registry
from constructions.linear_gd import unmasked
from queries import claim_ids
from verify.knobs import Knobs
from verify.prompts import PromptSpec, make_prompt
from verify.reference import GD
from verify.strategies import knobs, prompts
from verify.tolerance import compare_trace

#: the exact claims on constructions of linear attention only (ReLU ones: tests/test_bai.py), one layer per
#: step (a step of several layers, Newton's in newton_logistic, is perturbed layer by layer in its own tests)
EXACT = claim_ids(kind="exact", attention_only="linear", one_layer_steps=True)


@given(p=prompts(m=3), k=knobs(steps=(2, 8), lr_factor=(0.5, 1.95)))
def test_without_query_mask_layer_one_matches_but_later_layers_fail(p, k):
    c, ref = registry.claim("vonoswald23-prop1").build(p, k)
    assert compare_trace(c, GD(k.steps, lr=c.params["lr"]), *p.arrays).ok
    cmp = compare_trace(unmasked(c), ref, *p.arrays)
    assert cmp.layers_failing() and cmp.layers_failing()[0] >= 2
    assert (cmp.ratio[0] <= 1).all()


def test_one_layer_without_mask_is_still_exact():
    p = make_prompt(PromptSpec(B=2, n=7, m=2, d=3, seed=4))
    c, ref = registry.claim("vonoswald23-prop1").build(p, Knobs(steps=1))
    assert compare_trace(unmasked(c), ref, *p.arrays).ok


@pytest.mark.parametrize("claim_id", EXACT)
@pytest.mark.parametrize("weight", ["W_Q", "W_K", "W_V", "W_O"])
@pytest.mark.parametrize("seed", range(4))
def test_perturbed_weight_is_caught_at_its_layer(claim_id, weight, seed):
    """Scale one entry of one weight of step k's (last) layer by (1 + 1e-7): step k+1 fails first.

    The entry is on the path into this layer's readout, chosen through the layout:
    the largest entry of W_Q / W_K (the step heads read only their input slot), the entry of
    W_V that reads ``y``, the entry of W_O that writes ``y`` (head 0; the step blocks come after
    any prefix blocks).  (GD++'s x-transform entries only
    reach the readout one layer later.)"""
    p = make_prompt(PromptSpec(B=2, n=12, m=2, d=4, log10_kappa=1.0, seed=seed))
    k = Knobs(steps=4, lr_factor=1.0, log10_lam=-1.0, gamma_factor=0.5, skew=0.5, seed=seed)
    k = registry.claim(claim_id).adapt(p.spec, k)[1]  # the claim's fixed knobs (e.g. one step)
    c, ref, *adapted = registry.claim(claim_id).build(p, k)
    p = adapted[0] if adapted else p  # a case may adapt the prompt (e.g. to 0/1 labels)
    assert compare_trace(c, ref, *p.arrays).ok
    layer = seed % k.steps
    # head 0 of the last block of step `layer` (its only block, but for a step of several blocks)
    W = getattr(c.model.blocks[c.n_prefix + (layer + 1) * c.step_blocks - 1].attn, weight).data[0]
    ys = c.layout["y"].start
    largest = np.unravel_index(int(torch.argmax(W.abs())), W.shape)
    if weight in ("W_Q", "W_K"):  # the step heads read only their input slot (x, or the features f)
        idx = largest
    elif weight == "W_V":  # the entry reading y, where the step updates the residuals in y
        idx = (ys, int(torch.argmax(W[ys].abs()))) if W[ys].abs().max() > 0 else largest
    else:  # the entry writing y, or (an iterate in its own slot) the largest
        idx = (int(torch.argmax(W[:, ys].abs())), ys) if W[:, ys].abs().max() > 0 else largest
    assert W[idx] != 0
    W[idx] *= 1 + 1e-7
    cmp = compare_trace(c, ref, *p.arrays)
    assert not cmp.ok
    assert cmp.layers_failing()[0] == layer + 1


def test_float32_rounded_step_size_is_caught_in_float64():
    """A silent float32 downcast of lr (relative error ~3e-8) is caught; torch's default
    assert_close tolerance would miss it (docs/tolerance.md)."""
    p = make_prompt(PromptSpec(B=4, n=20, m=3, d=5, seed=11))
    lr = 1.0 / 3.0 / np.linalg.eigvalsh(np.einsum("bni,bnj->bij", p.X, p.X) / 20)[:, -1].max()
    lr32 = float(np.float32(lr))
    assert lr32 != lr
    cmp = compare_trace(constructions.gd(5, 3, lr32), GD(3, lr=lr), *p.arrays)
    assert not cmp.ok and cmp.layers_failing()[0] == 1
