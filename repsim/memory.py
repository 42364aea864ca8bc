"""Moved in 0.4: budgets to :mod:`repsim.core.budget`, plans to :mod:`repsim.pipeline.plans`; works until 0.5."""

import warnings

from .core.budget import DEFAULT_FRACTION, MemoryBudgetError, available_memory, format_bytes, parse_memory
from .pipeline.plans import MeasureRequest, MemoryPlan, plan_routes, workspace_estimate

warnings.warn(
    "repsim.memory moved to repsim.core.budget and repsim.pipeline.plans; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
__all__ = ["DEFAULT_FRACTION", "MeasureRequest", "MemoryBudgetError", "MemoryPlan", "available_memory",
           "format_bytes", "parse_memory", "plan_routes", "workspace_estimate"]  # fmt: skip
