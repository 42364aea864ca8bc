"""Uncertainty for every measure: permutation tests, bootstrap intervals, paired differences,
multiple-comparison adjustment over layer grids, and calibrated similarity."""

from .bootstrap import BootstrapResult, PairedResult, bootstrap, compare_paired
from .calibration import CalibrationResult, GridCalibrationResult, calibrate, calibrate_grid
from .grid import inference_table
from .multiple import adjust_p_values
from .permutation import PermutationResult, permutation_test
from .restricted import draw_permutations, permutation_design

__all__ = [
    "BootstrapResult",
    "CalibrationResult",
    "GridCalibrationResult",
    "PairedResult",
    "PermutationResult",
    "adjust_p_values",
    "bootstrap",
    "calibrate",
    "calibrate_grid",
    "compare_paired",
    "draw_permutations",
    "inference_table",
    "permutation_design",
    "permutation_test",
]
