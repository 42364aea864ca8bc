"""Moved to :mod:`repsim.core.io` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .core import io as _moved

warnings.warn(
    "repsim.io moved to repsim.core.io; the old path will be removed in 0.5", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = _moved
