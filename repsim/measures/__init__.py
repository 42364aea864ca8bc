"""Pure similarity math on (n, d) tensors: no models, no loaders.

One module per family; each registers its measures in :mod:`repsim.measures.registry` when
imported, so importing this package fills the registry.
"""

from .alignment import (
    aligned_cosine,
    angular_shape,
    bures_distance,
    hard_correlation_match,
    linear_regression,
    nbs,
    permutation_procrustes,
    procrustes,
    procrustes_size_shape,
    soft_correlation_match,
    soft_matching,
)
from .cca import mean_cca, mean_squared_cca, pwcca, svcca
from .cka import BiasedCKAChanceWarning, biased_cka_chance_level, cka_grid, kernel_cka, linear_cka
from .crossval import crossvalidated_shape
from .dimensions import ensd
from .functional import abs_acc_diff, disagreement, jsd
from .gram import GramGap, cka_lower_bound, cosine_similarity_matrix, frobenius_gap, gram_gap, rbf_gram
from .hsic import hsic
from .kinds import MomentParts, layer_measure, moment_measure
from .knn import KNNLists, knn_cache, knn_lists
from .moments import Moments, StreamingMoments, moments_of
from .neighbours import cknna, cycle_knn, jaccard_knn, knn_indices, mutual_knn, rank_similarity, second_order_cosine
from .registry import INVARIANCES, MeasureInfo, get_measure, list_measures, measure, measure_grid, temporary_measure
from .rsa import average_ranks, kendall_tau_a, kendall_tau_b, rdm, rsa, rsa_grid
from .rsm import distance_correlation, eigenspace_overlap, gulp, rsm_norm_difference
from .statistics import concentricity_difference, magnitude_difference, uniformity_difference
from .topology import geometry_score, imd, rtd

__all__ = [
    "INVARIANCES",
    "BiasedCKAChanceWarning",
    "GramGap",
    "KNNLists",
    "MeasureInfo",
    "MomentParts",
    "Moments",
    "StreamingMoments",
    "abs_acc_diff",
    "aligned_cosine",
    "angular_shape",
    "average_ranks",
    "biased_cka_chance_level",
    "bures_distance",
    "cka_grid",
    "cka_lower_bound",
    "cknna",
    "concentricity_difference",
    "cosine_similarity_matrix",
    "crossvalidated_shape",
    "cycle_knn",
    "disagreement",
    "distance_correlation",
    "eigenspace_overlap",
    "ensd",
    "frobenius_gap",
    "geometry_score",
    "get_measure",
    "gram_gap",
    "gulp",
    "hard_correlation_match",
    "hsic",
    "imd",
    "jaccard_knn",
    "jsd",
    "kendall_tau_a",
    "kendall_tau_b",
    "kernel_cka",
    "knn_cache",
    "knn_indices",
    "knn_lists",
    "layer_measure",
    "linear_cka",
    "linear_regression",
    "list_measures",
    "magnitude_difference",
    "mean_cca",
    "mean_squared_cca",
    "measure",
    "measure_grid",
    "moment_measure",
    "moments_of",
    "mutual_knn",
    "nbs",
    "permutation_procrustes",
    "procrustes",
    "procrustes_size_shape",
    "pwcca",
    "rank_similarity",
    "rbf_gram",
    "rdm",
    "rsa",
    "rsa_grid",
    "rsm_norm_difference",
    "rtd",
    "second_order_cosine",
    "soft_correlation_match",
    "soft_matching",
    "svcca",
    "temporary_measure",
    "uniformity_difference",
]
