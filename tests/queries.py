"""Queries over the one registry, for parametrizing tests (no test keeps a list of names)."""
from functools import lru_cache

from constructions import registry
from verify.knobs import Knobs
from verify.prompts import PromptSpec, make_prompt


def small_case(claim, seed: int = 0):
    """The claim's case on a small prompt of its ranges: (construction, reference[, prompt])."""
    spec, k = claim.adapt(PromptSpec(B=2, n=6, m=2, d=2, seed=seed), Knobs(steps=2, seed=seed))
    return claim.build(make_prompt(spec), k)


@lru_cache(maxsize=None)
def attention(claim_id: str) -> frozenset:
    """The attention kinds of a claim's construction, built from its cases on a small prompt with
    seeds 0 and 1 (a case may pick its form by the seed's parity, e.g. ``bai23-decoder``'s linear or
    ReLU heads); empty for claims whose case is a bound check."""
    claim = registry.claim(claim_id)
    if claim.kind == "bound":
        return frozenset()
    return frozenset().union(*(small_case(claim, seed)[0].resources["attention"] for seed in (0, 1)))


@lru_cache(maxsize=None)
def step_blocks(claim_id: str) -> int:
    """Blocks per algorithm step of a claim's construction (1: one layer = one step), from its case
    on a small prompt; 0 for claims whose case is a bound check."""
    claim = registry.claim(claim_id)
    return 0 if claim.kind == "bound" else small_case(claim)[0].step_blocks


def claim_ids(kind=None, attention_only=None, module=None, has_induction=False, one_layer_steps=False) -> list[str]:
    """Ids of registered claims by kind, by the only attention kind their construction uses, by
    the module that registers them, with an induction among their proof parts, or (``one_layer_steps``)
    whose construction takes one block per step."""
    out = []
    for c in registry.claims():
        if kind is not None and c.kind not in ((kind,) if isinstance(kind, str) else kind):
            continue
        if module is not None and (c.construction is None or c.construction.__module__ != module):
            continue
        if attention_only is not None and attention(c.id) != {attention_only}:
            continue
        if has_induction and not (c.proof and any(p.induction for p in c.proof.parts)):
            continue
        if one_layer_steps and step_blocks(c.id) != 1:
            continue
        out.append(c.id)
    return out


def inductions() -> dict:
    """``{part name: induction spec builder}`` of every distinct induction the registry's proofs use."""
    out = {}
    for c in registry.claims():
        for p in (c.proof.parts if c.proof else ()):
            if p.induction is not None:
                out.setdefault(p.name, p.induction)
    return out
