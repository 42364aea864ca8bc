"""Moved to :mod:`repsim.core.distributed` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .core import distributed as _moved

warnings.warn(
    "repsim.distributed moved to repsim.core.distributed; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
