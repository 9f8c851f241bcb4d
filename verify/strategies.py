"""Hypothesis strategies for prompts and knobs, and the toolkit's hypothesis profiles (public API).

Hypothesis draws the *parameters* (sizes, scale, conditioning, noise, knobs and a seed)
and :func:`verify.prompts.make_prompt` builds the arrays from the seed with numpy's
generator: drawing every matrix entry gives rank-deficient or rejected examples.
Shrinking then acts on the parameters (smallest d, n, steps), which is what a debugger wants.

Profiles (registered when this module is imported; each states every setting, since
hypothesis loads a profile named ``ci`` of its own when ``CI`` is set and a profile that
leaves a key out inherits it from whatever was loaded before):

* ``dev``       (default locally): randomised, example database, 50 examples.
* ``ci``        (chosen when ``CI`` is set): derandomized, no database, 50 examples --
  the same examples on every run.
* ``thorough``  (``HYPOTHESIS_PROFILE=thorough``): randomised, 2000 examples.

All have ``deadline=None``: first torch calls and a shared 2-core machine make timing
meaningless.  Importing this module loads the profile named by ``HYPOTHESIS_PROFILE`` (or
``ci``/``dev`` by ``CI``) unless another profile than hypothesis's own default was loaded;
:func:`load_profile` loads one explicitly.

>>> from hypothesis import given
>>> from verify.strategies import prompts
>>> @given(prompts(d=3))
... def test_shapes(p):
...     assert p.X.shape[-1] == 3
>>> test_shapes()
"""
from __future__ import annotations

import os

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis import strategies as st
from hypothesis.database import DirectoryBasedExampleDatabase

from .knobs import KNOB_RANGES, Knobs
from .prompts import RANGES, Prompt, PromptSpec, make_prompt

_common = dict(
    backend="hypothesis",
    deadline=None,
    phases=tuple(Phase),
    print_blob=True,
    report_multiple_bugs=True,
    stateful_step_count=50,
    suppress_health_check=[HealthCheck.too_slow],
    verbosity=Verbosity.normal,
)
_db = DirectoryBasedExampleDatabase(".hypothesis/examples")
settings.register_profile("dev", max_examples=50, derandomize=False, database=_db, **_common)
settings.register_profile("ci", max_examples=50, derandomize=True, database=None, **_common)
settings.register_profile("thorough", max_examples=2000, derandomize=False, database=_db, **_common)
PROFILES = ("dev", "ci", "thorough")


def load_profile(name: str | None = None) -> str:
    """Load a toolkit profile: ``name``, else ``HYPOTHESIS_PROFILE``, else ``ci`` when ``CI`` is
    set and ``dev`` otherwise.  Returns the name loaded."""
    name = name or os.environ.get("HYPOTHESIS_PROFILE") or ("ci" if os.environ.get("CI") else "dev")
    settings.load_profile(name)
    return name


if settings.get_current_profile_name() in ("default", "ci") or os.environ.get("HYPOTHESIS_PROFILE"):
    load_profile()


def _range(name: str, ranges: dict, value):
    """A strategy for one parameter: a fixed value, a (lo, hi) range, or the default range."""
    if isinstance(value, st.SearchStrategy):
        return value
    value = ranges[name] if value is None else value
    if not isinstance(value, tuple):
        return st.just(value)
    lo, hi = value
    if isinstance(lo, int) and isinstance(hi, int):
        return st.integers(lo, hi)
    return st.floats(float(lo), float(hi), allow_nan=False, allow_infinity=False)


def _fields(ranges: dict, over: dict, what: str) -> dict:
    unknown = set(over) - set(ranges) - {"seed"}
    if unknown:
        raise TypeError(f"unknown {what} {sorted(unknown)}; known: {sorted(ranges)}")
    fields = {k: _range(k, ranges, over.get(k)) for k in ranges}
    fields["seed"] = _range("seed", {"seed": (0, 2**32 - 1)}, over.get("seed"))
    return fields


def prompt_specs(claim=None, **over) -> st.SearchStrategy[PromptSpec]:
    """Specs from :data:`verify.prompts.RANGES` (narrowed by ``claim``'s prompt ranges); a keyword
    fixes a field (``d=3``), narrows its range (``n=(1, 5)``) or gives a strategy."""
    over = {**(claim.prompt if claim is not None else {}), **over}
    return st.builds(PromptSpec, **_fields(RANGES, over, "prompt parameters"))


def prompts(claim=None, **over) -> st.SearchStrategy[Prompt]:
    """Prompts (arrays + spec) built from :func:`prompt_specs`."""
    return prompt_specs(claim, **over).map(make_prompt)


def knobs(claim=None, **over) -> st.SearchStrategy[Knobs]:
    """Knobs from :data:`verify.knobs.KNOB_RANGES` with the same override rules; with a ``claim``,
    also the knobs it adds (``Claim(knobs={...})``: e.g. ``momentum``)."""
    ranges = claim.knob_ranges if claim is not None else dict(KNOB_RANGES)
    fields = _fields(ranges, over, "knobs")
    extra = {k: fields.pop(k) for k in list(fields) if k not in KNOB_RANGES and k != "seed"}
    return st.builds(Knobs, extra=st.fixed_dictionaries(extra), **fields)
