"""Moved to :mod:`repsim.inference.grounding` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .inference import grounding as _moved

warnings.warn(
    "repsim.grounding moved to repsim.inference.grounding; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
