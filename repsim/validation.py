"""Moved to :mod:`repsim.core.validation` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .core import validation as _moved

warnings.warn(
    "repsim.validation moved to repsim.core.validation; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
