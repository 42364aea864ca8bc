"""Moved to :mod:`repsim.core.compat` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .core import compat as _moved

warnings.warn(
    "repsim._compat moved to repsim.core.compat; the old path will be removed in 0.5", DeprecationWarning, stacklevel=2
)
sys.modules[__name__] = _moved
