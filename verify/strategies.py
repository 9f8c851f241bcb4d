"""Hypothesis strategies for prompts and knobs, importable by users for their own constructions.

Hypothesis draws the *parameters* (sizes, scale, conditioning, noise, knobs
and a seed) and :func:`verify.prompts.make_prompt` builds the arrays from the
seed with numpy's generator: drawing every matrix entry gives rank-deficient
or rejected examples (engineering.md sec. 1.2).  Shrinking then acts on the
parameters (smallest d, n, steps), which is what a debugger wants.

>>> from hypothesis import given
>>> from verify.strategies import prompts
>>> @given(prompts(d=3))
... def test_shapes(p):
...     assert p.X.shape[-1] == 3
>>> test_shapes()
"""
from __future__ import annotations

from hypothesis import strategies as st

from .claims import KNOB_RANGES, Knobs
from .prompts import RANGES, Prompt, PromptSpec, make_prompt


def _range(name: str, ranges: dict, value):
    """A strategy for one parameter: a fixed value, a (lo, hi) range, or the default range."""
    if isinstance(value, st.SearchStrategy):
        return value
    if value is not None and not isinstance(value, tuple):
        return st.just(value)
    lo, hi = value if isinstance(value, tuple) else ranges[name]
    if isinstance(lo, int) and isinstance(hi, int):
        return st.integers(lo, hi)
    return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)


def _builds(cls, ranges: dict, over: dict, what: str) -> st.SearchStrategy:
    unknown = set(over) - set(ranges) - {"seed"}
    if unknown:
        raise TypeError(f"unknown {what} {sorted(unknown)}; known: {sorted(ranges)}")
    fields = {k: _range(k, ranges, over.get(k)) for k in ranges}
    fields["seed"] = _range("seed", {"seed": (0, 2**32 - 1)}, over.get("seed"))
    return st.builds(cls, **fields)


def prompt_specs(**over) -> st.SearchStrategy[PromptSpec]:
    """Specs from :data:`verify.prompts.RANGES`; a keyword fixes a field (``d=3``), narrows
    its range (``n=(1, 5)``) or gives a strategy."""
    return _builds(PromptSpec, RANGES, over, "prompt parameters")


def prompts(**over) -> st.SearchStrategy[Prompt]:
    """Prompts (arrays + spec) built from :func:`prompt_specs`."""
    return prompt_specs(**over).map(make_prompt)


def knobs(**over) -> st.SearchStrategy[Knobs]:
    """Knobs from :data:`verify.claims.KNOB_RANGES`, with the same override rules."""
    return _builds(Knobs, KNOB_RANGES, over, "knobs")
