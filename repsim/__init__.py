"""repsim: representational similarity of neural networks, exact and streaming.

Measures are pure functions on (n, d) tensors (``linear_cka``, ``kernel_cka``, ``hsic``, ``rsa``,
``gram_gap``, ``cka_grid``); streaming accumulators (``StreamingLinearCKA``, ``MinibatchCKA``)
serve data that does not fit in memory.
"""

from ._compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before anything in the project touches torchvision or timm

from .checkpoints import CheckpointError, load_model, load_state_dict, save_state_dict  # noqa: E402
from .compare import Comparison, compare  # noqa: E402
from .features import extract_features  # noqa: E402
from .hooks import FeatureHooks, default_layers, list_layers  # noqa: E402
from .many import compare_many  # noqa: E402
from .measures import (  # noqa: E402
    INVARIANCES,
    GramGap,
    MeasureInfo,
    Moments,
    StreamingMoments,
    abs_acc_diff,
    aligned_cosine,
    angular_shape,
    cka_grid,
    concentricity_difference,
    cosine_similarity_matrix,
    disagreement,
    distance_correlation,
    eigenspace_overlap,
    get_measure,
    gram_gap,
    gulp,
    hard_correlation_match,
    hsic,
    jsd,
    kernel_cka,
    linear_cka,
    linear_regression,
    list_measures,
    magnitude_difference,
    mean_cca,
    measure,
    measure_grid,
    moments_of,
    permutation_procrustes,
    procrustes,
    procrustes_size_shape,
    pwcca,
    rbf_gram,
    rdm,
    rsa,
    rsa_grid,
    rsm_norm_difference,
    soft_correlation_match,
    svcca,
    uniformity_difference,
)
from .streaming import MinibatchCKA, StreamingLinearCKA  # noqa: E402
from .weights import WeightDistance, weight_distance  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "INVARIANCES",
    "CheckpointError",
    "Comparison",
    "FeatureHooks",
    "GramGap",
    "MeasureInfo",
    "MinibatchCKA",
    "Moments",
    "StreamingLinearCKA",
    "StreamingMoments",
    "WeightDistance",
    "abs_acc_diff",
    "aligned_cosine",
    "angular_shape",
    "cka_grid",
    "compare",
    "compare_many",
    "concentricity_difference",
    "cosine_similarity_matrix",
    "default_layers",
    "disagreement",
    "distance_correlation",
    "eigenspace_overlap",
    "extract_features",
    "get_measure",
    "gram_gap",
    "gulp",
    "hard_correlation_match",
    "hsic",
    "jsd",
    "kernel_cka",
    "linear_cka",
    "linear_regression",
    "list_layers",
    "list_measures",
    "load_model",
    "load_state_dict",
    "magnitude_difference",
    "mean_cca",
    "measure",
    "measure_grid",
    "moments_of",
    "permutation_procrustes",
    "procrustes",
    "procrustes_size_shape",
    "pwcca",
    "rbf_gram",
    "rdm",
    "rsa",
    "rsa_grid",
    "rsm_norm_difference",
    "save_state_dict",
    "soft_correlation_match",
    "svcca",
    "uniformity_difference",
    "weight_distance",
]
