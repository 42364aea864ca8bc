"""Uncertainty for every measure: permutation tests, bootstrap intervals, paired differences and
multiple-comparison adjustment over layer grids."""

from .bootstrap import BootstrapResult, PairedResult, bootstrap, compare_paired
from .grid import inference_table
from .multiple import adjust_p_values
from .permutation import PermutationResult, permutation_test

__all__ = [
    "BootstrapResult",
    "PairedResult",
    "PermutationResult",
    "adjust_p_values",
    "bootstrap",
    "compare_paired",
    "inference_table",
    "permutation_test",
]
