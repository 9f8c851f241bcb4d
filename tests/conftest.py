"""Hypothesis profiles.  Every profile states every settings key (engineering.md sec. 1.1):
hypothesis auto-loads its own ``ci`` profile when ``CI`` is set, and a profile that
leaves a key out would inherit it from whatever profile was loaded before.

* ``dev``       (default locally): randomised, example database, 50 examples.
* ``ci``        (chosen automatically when ``CI`` is set): derandomized, no database,
  no deadline, 50 examples -- the same examples on every run.
* ``thorough``  (``HYPOTHESIS_PROFILE=thorough pytest``): randomised, 2000 examples.
"""
import os

from hypothesis import HealthCheck, Phase, Verbosity, settings
from hypothesis.database import DirectoryBasedExampleDatabase

_common = dict(
    backend="hypothesis",
    deadline=None,  # first torch calls and a noisy 2-core VM make timing meaningless
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
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "dev"))
