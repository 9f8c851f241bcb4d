"""Claims: what a construction module declares about its construction, and how a claim is checked.

A :class:`Claim` names its paper and section, the construction object it is about, its
reference algorithm, how one checkable *case* is built from a random prompt and random
knobs (:mod:`verify.knobs`), the ranges it draws them from, and its proof
(:class:`Proof`).  A construction module passes its claims to
:func:`constructions.register`; ``icl-verify``, the docs and the test suite read them from
that one registry (:func:`constructions.registry.claims`).

:func:`check_claim` draws prompts and knobs, compares every layer with
:func:`verify.tolerance.compare_trace` and aggregates the worst ratio error/tolerance.

The case contract (``Claim.case(prompt, knobs)``):

* ``kind="exact"`` or ``"negative"``: returns ``(construction, reference)`` or
  ``(construction, reference, prompt)`` (a case may adapt the prompt, e.g. to 0/1 labels);
  the reference is *unfitted* (:class:`verify.reference.Reference`: ``fit(X, y)`` fills
  ``iterates_ [S+1, B, d]`` and ``magnitude_ [S+1, B]``, or a subclass overrides ``trace``
  and ``scale``).  ``bounds(prompt, knobs, construction) -> Comparison`` adds stated bounds
  checked on the construction's output.
* ``kind="bound"``: returns a :class:`~verify.tolerance.Comparison` of measured quantities
  against stated bounds.

This module imports nothing from :mod:`constructions` (construction modules import it).
"""
from __future__ import annotations

import zlib
from dataclasses import asdict, dataclass, field, replace
from typing import Callable

import numpy as np
import torch

from .knobs import KNOB_RANGES, Knobs
from .prompts import Prompt, PromptSpec, make_prompt
from .tolerance import Comparison, compare_trace

KINDS = ("exact", "negative", "bound")
#: the attention evaluation order forced on a prompt, by its knobs' seed: the default (fastest) order,
#: then each order of constructions.fastpath.ORDERS, so that every path is drawn by every claim
EVALUATION_ORDERS = (None, "folded", "kv", "scores")
#: exactly representable parameters for proofs (their products too), so that the float weights a
#: factory stores are exactly these rationals: a step size, a lambda, a gamma and a masking constant
LR, LAM, GAMMA, MASK = 3 / 16, 1 / 8, 5 / 32, 2.0**20
PROOF_KINDS = ("general", "exact-rational", "none")


@dataclass
class Outcome:
    """The result of one proof part: ``holds``, what was shown, and the premises it used."""

    holds: bool
    detail: str
    premises: list = field(default_factory=list)


@dataclass(frozen=True)
class Part:
    """One part of a proof, run by :func:`verify.proofs.prove`: a function ``run() -> Outcome``, or
    an ``induction`` (a ``() -> verify.symbolic.Induction`` spec, proved by
    :func:`verify.symbolic.prove_induction`; tests can change it), or a ``lemma`` (the name of a
    general lemma of :mod:`verify.symbolic`).  sympy is imported only when a proof runs."""

    name: str
    run: Callable[[], Outcome] | None = field(default=None, repr=False)
    induction: Callable | None = field(default=None, repr=False)
    lemma: str | None = None

    def __post_init__(self):
        if sum(x is not None for x in (self.run, self.induction, self.lemma)) != 1:
            raise ValueError("a proof part has exactly one of run, induction and lemma")


def induction(name: str, spec: Callable) -> Part:
    """A proof part that proves the induction ``spec()`` for symbolic d and n."""
    return Part(name, induction=spec)


def lemma(name: str, function: str) -> Part:
    """A proof part running the general lemma ``verify.symbolic.<function>()`` (e.g. ``lemma_sign_split``)."""
    return Part(name, lemma=function)


@dataclass(frozen=True)
class Proof:
    """How a claim is proved (``icl-verify prove``, docs/proofs.md).

    ``general``: sympy proofs for symbolic d and n; ``exact-rational``: the forward pass in
    exact Fraction arithmetic equals the algorithm at concrete sizes, plus general lemmas;
    ``none``: nothing to prove (approximate constructions are checked on their rate)."""

    kind: str
    parts: tuple = ()
    note: str = ""

    def __post_init__(self):
        if self.kind not in PROOF_KINDS:
            raise ValueError(f"proof kind must be one of {PROOF_KINDS}, got {self.kind!r}")


@dataclass(frozen=True)
class Claim:
    """A claim of the literature, checkable on random prompts (module docstring).

    Positional fields: ``id`` (lower case, digits, ``-``: ``"polyak64-heavy-ball"``), ``paper``,
    ``section``, ``statement`` (what is claimed), ``reference`` (what it is checked against, in
    words), ``case`` (``(prompt, knobs) -> case``) and ``algorithm`` (the reference class the case
    returns).  ``prompt`` and ``knobs`` narrow the drawn ranges (a value or ``(lo, hi)``); a knob
    name outside :data:`verify.knobs.KNOB_RANGES` adds a knob of the claim's own, drawn from its
    range and read as ``knobs.<name>``.  ``construction`` is set when the claim is registered
    with its factory (``constructions.register(..., claims=[...])``)."""

    id: str
    paper: str
    section: str
    statement: str
    reference: str  # what the claim is checked against, in words
    case: Callable = field(repr=False)  # (prompt, knobs) -> case (module docstring)
    #: the reference algorithm (a class of verify.reference, or any Reference type) the case returns
    algorithm: type | None = field(default=None, repr=False)
    #: the construction (its registered factory); set by constructions.register, None for a claim
    #: about mathematics alone (identities, bounds)
    construction: Callable | None = field(default=None, repr=False)
    variant: str = ""  # which form of the construction, e.g. "lam>0"
    subject: str = ""  # what a claim without a construction is about
    #: "exact": every layer within tolerance; "negative": layer 1 matches, a later one must not;
    #: "bound": the case returns a Comparison of measured quantities against stated bounds
    kind: str = "exact"
    #: prompt parameters: a value or a (lo, hi) range replacing verify.prompts.RANGES
    prompt: dict = field(default_factory=dict)
    #: knobs: a value or (lo, hi) range replacing verify.knobs.KNOB_RANGES, or a knob of its own
    knobs: dict = field(default_factory=dict)
    #: negative claims: the first layer that must miss (earlier layers must match)
    negative_from: int = 2
    #: extra bounds checked besides the exact trace: ``(prompt, knobs, construction) -> Comparison``
    #: whose "model" is a measured deviation, "ref" 0 and "tol" the stated bound (plus round-off)
    bounds: Callable | None = field(default=None, repr=False)
    proof: Proof | None = field(default=None, repr=False)
    #: ``(seed) -> str``: a measurement ``icl-verify check`` prints under its table for this claim
    #: (e.g. the decoder's prefix-risk curve); not part of whether the claim holds
    report: Callable | None = field(default=None, repr=False)

    def __post_init__(self):
        if self.kind not in KINDS:
            raise ValueError(f"claim kind must be one of {KINDS}, got {self.kind!r}")
        taken = [k for k in self.knobs if k in ("seed", "extra")]
        if taken:
            raise ValueError(f"claim {self.id}: a knob cannot be named {taken[0]!r} (a field of Knobs)")

    @property
    def name(self) -> str:
        """The construction's registered name ("" for a claim without one)."""
        return getattr(self.construction, "__name__", "") if self.construction is not None else ""

    @property
    def label(self) -> str:
        """What the claim is about, for tables: ``gd(lam>0)``, or the subject."""
        if self.construction is None:
            return self.subject
        return f"{self.name}({self.variant})" if self.variant else self.name

    @property
    def knob_ranges(self) -> dict:
        return {**KNOB_RANGES, **self.knobs}

    def sample(self, rng: np.random.Generator) -> tuple[Prompt, Knobs]:
        """A random prompt and knobs from this claim's ranges."""
        spec = PromptSpec.sample(rng, **self.prompt)
        return make_prompt(spec), Knobs.sample(rng, **self.knobs).completed(self.knobs)

    def adapt(self, spec: PromptSpec, knobs: Knobs) -> tuple[PromptSpec, Knobs]:
        """Apply the claim's fixed values (and clamp into its ranges) to drawn parameters."""
        def fix(obj, fixed):
            vals = {f: (min(max(getattr(obj, f), v[0]), v[1]) if isinstance(v, tuple) else v)
                    for f, v in fixed.items()}
            return replace(obj, **vals)

        return fix(spec, self.prompt), fix(knobs, {k: v for k, v in self.knobs.items() if k in KNOB_RANGES})

    def build(self, prompt: Prompt, knobs: Knobs) -> tuple:
        """The case for one prompt (module docstring), with this claim's added knobs drawn."""
        return self.case(prompt, knobs.completed(self.knobs))

    def evaluate(self, prompt: Prompt, knobs: Knobs, dtype=torch.float64, device=None) -> tuple[bool, float, Comparison]:
        """(holds, figure, comparison).  Exact claims: figure = worst ratio error/tolerance
        over all layers, holds iff <= 1.  Negative claims: figure = largest ratio at layers
        >= ``negative_from``, holds iff the earlier layers are within tolerance and figure > 1."""
        knobs = knobs.completed(self.knobs)
        if self.kind == "bound":
            cmp = self.case(prompt, knobs)
            return cmp.ok, cmp.worst, cmp
        c, ref, *rest = self.build(prompt, knobs)
        prompt = rest[0] if rest else prompt  # a case may adapt the prompt (e.g. 0/1 labels)
        if self.kind == "negative":
            # A mismatch of relative size ~|x_q|^2/n can hide under float32 round-off; a
            # negative control is a statement about the algebra, so it runs in float64.
            dtype = torch.float64
        if device is not None:
            from constructions.parts import device as usable  # ConstructionError for a device not here

            device = usable(device)
        if c.dtype != dtype or (device is not None and device != c.device):
            c = c.to(dtype, device)  # a converted copy (only when it changes something: a deep model's copy
            # costs about as much as building it)
        # else the case's own construction (a copy of a deep model costs as much as its check): its
        # evaluation order is put back afterwards, in case the case function shares it
        before = c.model.order
        c.model.order = EVALUATION_ORDERS[knobs.seed % len(EVALUATION_ORDERS)]
        try:
            if self.kind == "negative":  # a negative control may diverge to inf: the domain is checked, not the overflow
                c.prepare(*prompt.arrays)
            cmp = compare_trace(c, ref, *prompt.arrays, check=self.kind != "negative")
            if self.bounds is not None:
                cmp = cmp.join(self.bounds(prompt.rounded(dtype), knobs, c))
        finally:
            c.model.order = before
        if self.kind == "exact":
            return cmp.ok, cmp.worst, cmp
        f = self.negative_from - 1
        first_ok = bool((cmp.ratio[:f] <= 1).all())
        figure = float(cmp.ratio[f:].max()) if cmp.ratio.shape[0] > f else 0.0  # largest miss from that layer on
        return first_ok and figure > 1.0, figure, cmp


@dataclass
class ClaimResult:
    claim: Claim
    prompts: int
    dtype: str
    holds: bool
    figure: float  # exact: worst ratio over prompts; negative: smallest per-prompt miss ratio
    err: float  # |model - ref| at that figure
    tol: float  # tolerance there
    failures: list = field(default_factory=list)  # (PromptSpec, Knobs, report) of failing cases


def claim_rng(claim: Claim, seed: int) -> np.random.Generator:
    """The random stream of one claim in a run with ``seed``: the same whichever claims run with it."""
    return np.random.default_rng([seed, zlib.crc32(claim.id.encode())])


def check_claim(claim: Claim, prompts: int = 100, dtype=torch.float64, rng=None, seed: int = 0,
                device=None) -> ClaimResult:
    """Draw ``prompts`` random prompts and knobs (from :func:`claim_rng` unless ``rng`` is given),
    evaluate, aggregate."""
    rng = rng if rng is not None else claim_rng(claim, seed)
    holds, figure, at = True, (0.0 if claim.kind != "negative" else np.inf), (0.0, 0.0)
    failures = []
    for _ in range(prompts):
        prompt, knobs = claim.sample(rng)
        ok, fig, cmp = claim.evaluate(prompt, knobs, dtype, device)
        if not ok:
            holds = False
            failures.append((asdict(prompt.spec), asdict(knobs), cmp.report()))
        if (fig > figure) if claim.kind != "negative" else (fig < figure):
            figure, at = fig, cmp.at_worst()
    name = "float32" if dtype == torch.float32 and claim.kind == "exact" else "float64"
    return ClaimResult(claim, prompts, name, holds, float(figure), at[0], at[1], failures)
