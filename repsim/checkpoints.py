"""Moved to :mod:`repsim.networks.checkpoints` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .networks import checkpoints as _moved

warnings.warn(
    "repsim.checkpoints moved to repsim.networks.checkpoints; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
