"""The toolkit's one exception type.

Every public entry point of ``constructions`` and ``verify`` raises
:class:`ConstructionError` for bad input: wrong shapes or dtypes, NaN/inf,
a dimension that does not match the construction, a prompt outside the
construction's stated domain, or an unstable step size.  It subclasses
``ValueError`` so generic handlers keep working.  Messages name the problem
and the fix.
"""


class ConstructionError(ValueError):
    """Bad input to a construction or to the verification harness."""
