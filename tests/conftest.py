"""The hypothesis profiles (dev, ci, thorough) are the toolkit's own: importing
``verify.strategies`` registers them and loads the one the environment names
(``HYPOTHESIS_PROFILE``, else ``ci`` when ``CI`` is set, else ``dev``)."""
import verify.strategies  # noqa: F401
