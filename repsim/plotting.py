"""Moved to :mod:`repsim.pipeline.plotting` in 0.4; this path is the same module and works until 0.5."""

import sys
import warnings

from .pipeline import plotting as _moved

warnings.warn(
    "repsim.plotting moved to repsim.pipeline.plotting; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
sys.modules[__name__] = _moved
