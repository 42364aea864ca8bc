"""Uncertainty for every measure: permutation tests, bootstrap intervals, paired differences,
multiple-comparison adjustment over layer grids, and calibrated similarity."""

from .bootstrap import BootstrapResult, PairedResult, bootstrap, compare_paired
from .calibration import CalibrationResult, GridCalibrationResult, calibrate, calibrate_grid
from .ceiling import ceil_scores, spearman_brown, split_half_ceiling
from .encoding import EncodingResult, encoding_layers, encoding_score, reverse_predictivity
from .encoding_plan import EncodingPlan, plan_encoding
from .grid import inference_table
from .multiple import adjust_p_values
from .permutation import PermutationResult, permutation_test
from .restricted import draw_permutations, permutation_design

__all__ = [
    "BootstrapResult",
    "CalibrationResult",
    "EncodingPlan",
    "EncodingResult",
    "GridCalibrationResult",
    "PairedResult",
    "PermutationResult",
    "adjust_p_values",
    "bootstrap",
    "calibrate",
    "calibrate_grid",
    "ceil_scores",
    "compare_paired",
    "draw_permutations",
    "encoding_layers",
    "encoding_score",
    "inference_table",
    "permutation_design",
    "permutation_test",
    "plan_encoding",
    "reverse_predictivity",
    "spearman_brown",
    "split_half_ceiling",
]
