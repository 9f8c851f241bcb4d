"""``icl-verify prove``: run the proof each claim declares (docs/proofs.md).

Kinds (``icl-verify prove`` prints them, ``docs/claims.md`` lists them):

* ``general`` -- sympy proofs for symbolic d and n (:mod:`verify.symbolic`): base case, one
  step layer = one algorithm step from an arbitrary state, and the readout (an
  :class:`~verify.symbolic.Induction`, see :func:`verify.claims.induction`); with scalar lemmas
  where the construction uses ReLU pairs.  It proves the claim for every d, n and number of
  layers.
* ``exact-rational`` -- the construction's forward pass in exact rational arithmetic equals the
  algorithm exactly (zero tolerance) at concrete sizes on random rational prompts
  (:mod:`verify.exact`), plus any general lemmas; for constructions outside the symbolic
  fragment (MLPs, position gates, reciprocal iterations).
* ``none`` -- nothing to prove: approximate constructions, whose error *rate* is checked
  numerically (``icl-verify check``), and claims that declare no proof.

Every proof builds the construction through its public factory (the same code that builds the
torch weights) with exactly representable parameters, so the weights it reads are the weights
a user gets.  The proofs themselves are declared beside their constructions (``Claim(proof=...)``).
"""
from __future__ import annotations

import time
from dataclasses import dataclass

from . import symbolic
from .claims import Claim, Outcome, Part
from .symbolic import NotLiftable


@dataclass
class ProofResult:
    claim: str
    kind: str
    holds: bool | None  # None: nothing to prove
    seconds: float
    parts: list  # (name, Outcome)
    note: str = ""


def run_part(part: Part) -> Outcome:
    """One proof part's outcome; a weight outside the recognised forms fails the part."""
    try:
        if part.induction is not None:
            return symbolic.prove_induction(part.induction())
        if part.lemma is not None:
            return getattr(symbolic, part.lemma)()
        return part.run()
    except NotLiftable as e:
        return Outcome(False, f"not liftable: {e}")


def prove(claim: Claim | str) -> ProofResult:
    """Run every part of the claim's proof; a claim without one is of kind ``none``."""
    if isinstance(claim, str):
        from constructions.registry import claim as lookup

        claim = lookup(claim)
    proof = claim.proof
    if proof is None:
        return ProofResult(claim.id, "none", None, 0.0, [], "no proof declared")
    t0 = time.perf_counter()
    parts = []
    for part in proof.parts:
        parts.append((part.name, run_part(part)))
    holds = None if not parts else all(o.holds for _, o in parts)
    return ProofResult(claim.id, proof.kind, holds, time.perf_counter() - t0, parts, proof.note)
