"""Moved to :mod:`repsim.networks.batches` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .networks import batches as _moved

warnings.warn(
    "repsim.batches moved to repsim.networks.batches; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
