"""Moved to :mod:`repsim.pipeline.many` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .pipeline import many as _moved

warnings.warn(
    "repsim.many moved to repsim.pipeline.many; the old path will be removed in 0.5", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = _moved
