"""The mutation suite (verify.mutation, docs/mutation.md): every small wrong change is caught by
``check`` on its claims and by ``prove`` where a proof applies; every registered construction has
a one-weight mutation of relative size 1e-6; patches are undone."""
import pytest

from constructions import registry
from verify import mutation as M


@pytest.mark.parametrize("m", M.CATALOGUE, ids=lambda m: m.name)
def test_mutation_is_caught(m):
    r = M.run(m, prompts=10, seed=0)
    assert r.by_check, f"{m.name} passes check on {m.claims}"
    assert r.by_prove is not False, f"{m.name} passes every applicable proof: {r.prove}"


def test_every_construction_has_a_one_weight_mutation():
    small = {m.subject for m in M.CATALOGUE if m.relative is not None and 0 < m.relative <= M.SMALL}
    assert set(registry.names()) <= small, sorted(set(registry.names()) - small)


def test_mutations_are_undone():
    before = {name: registry.entry(name).factory for name in registry.names()}
    import constructions.transformer as tr

    pattern, forward = tr.attention_pattern, tr.Attention.forward
    for m in M.CATALOGUE:
        with m.patch():
            pass
    assert {name: registry.entry(name).factory for name in registry.names()} == before
    assert (tr.attention_pattern, tr.Attention.forward) == (pattern, forward)


def test_a_mutation_changes_what_it_names():
    """Control: under gd-weight the built construction differs from the original in exactly one
    step weight entry per step block, by 1e-6 relative."""
    import numpy as np

    c0 = registry.build("gd", d=3, steps=2, lr=0.1)
    with M.by_name("gd-weight").patch():
        c1 = registry.build("gd", d=3, steps=2, lr=0.1)
    for b0, b1 in zip(c0.blocks[: c0.n_step_blocks], c1.blocks[: c1.n_step_blocks]):
        diff = np.argwhere(b0.attn.W_O != b1.attn.W_O)
        assert len(diff) == 1
        i = tuple(diff[0])
        assert b1.attn.W_O[i] / b0.attn.W_O[i] - 1 == pytest.approx(M.SMALL, rel=1e-6)
