"""repsim: representational similarity of neural networks, exact and streaming.

Measures are pure functions on (n, d) tensors behind one registry (``measure``, ``measure_grid``,
``list_measures``, ``get_measure``): every family of the survey literature (CKA, RSA, the CCA
family, Procrustes and shape metrics, neighbourhood, distance-matrix, topological, descriptive
statistics and functional measures; ``list_measures()`` is the current list), each also callable by
name (``linear_cka``, ``rsa``, ``svcca``, ``procrustes``, ...). Accumulators (``StreamingMoments``,
``StreamingLinearCKA``, ``MinibatchCKA``, on the ``Accumulator`` protocol) stream data that does not
fit in memory; ``compare`` runs two models over a loader under a memory plan (``plan``,
``MemoryPlan``, ``sketch`` for wide layers) and ``compare_many`` an N x N grid of models;
``compare_texts`` and the ``*_features`` helpers take language models; ``permutation_test``,
``bootstrap``, ``compare_paired`` and ``calibrate`` give p-values, intervals and chance-corrected
scores.
"""

from .core.compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before anything in the project touches torchvision or timm

from . import measures  # noqa: E402
from .core.budget import MemoryBudgetError  # noqa: E402
from .core.feature_files import load_features  # noqa: E402
from .core.featureset import FeatureSet  # noqa: E402
from .inference import (  # noqa: E402
    BootstrapResult,
    CalibrationResult,
    EncodingPlan,
    EncodingResult,
    GridCalibrationResult,
    PairedResult,
    PermutationResult,
    adjust_p_values,
    bootstrap,
    calibrate,
    calibrate_grid,
    ceil_scores,
    compare_paired,
    draw_permutations,
    encoding_score,
    permutation_test,
    plan_encoding,
    reverse_predictivity,
    split_half_ceiling,
)
from .inference.rdm_models import (  # noqa: E402
    FixedModel,
    SelectModel,
    WeightedModel,
    crossvalidate_rdm_models,
    evaluate_rdm_models,
    noise_ceiling,
    rdm_split_half,
)
from .measures import *  # noqa: E402, F403  (every measure, the registry and the kinds: repsim.measures.__all__)
from .measures.accumulator import Accumulator  # noqa: E402
from .measures.rdms import compare_rdms, to_condensed, to_square  # noqa: E402
from .measures.sketch import sketch  # noqa: E402
from .networks.checkpoints import CheckpointError, load_model, load_state_dict, save_state_dict  # noqa: E402
from .networks.features import extract_features  # noqa: E402
from .networks.hooks import FeatureHooks, default_layers, list_layers  # noqa: E402
from .networks.text import sentence_features, text_batches, token_features, word_features  # noqa: E402
from .networks.weights import WeightDistance, weight_distance  # noqa: E402
from .pipeline.atlas import ManyResult  # noqa: E402
from .pipeline.brain import compare_brain  # noqa: E402
from .pipeline.compare import Comparison, compare, plan  # noqa: E402
from .pipeline.encoding import EncodingComparison, compare_encoding  # noqa: E402
from .pipeline.many import compare_many  # noqa: E402
from .pipeline.plans import MemoryPlan  # noqa: E402
from .pipeline.text import compare_texts  # noqa: E402
from .streaming import MinibatchCKA, StreamingLinearCKA  # noqa: E402

__version__ = "0.4.0.dev0"  # the one place the version is written (pyproject.toml reads it)

__all__ = [
    "Accumulator",
    "BootstrapResult",
    "CalibrationResult",
    "CheckpointError",
    "Comparison",
    "EncodingComparison",
    "EncodingPlan",
    "EncodingResult",
    "FeatureHooks",
    "FixedModel",
    "FeatureSet",
    "GridCalibrationResult",
    "MemoryBudgetError",
    "ManyResult",
    "MemoryPlan",
    "MinibatchCKA",
    "PairedResult",
    "PermutationResult",
    "SelectModel",
    "StreamingLinearCKA",
    "WeightDistance",
    "WeightedModel",
    "adjust_p_values",
    "bootstrap",
    "calibrate",
    "calibrate_grid",
    "ceil_scores",
    "compare",
    "compare_encoding",
    "compare_brain",
    "compare_many",
    "compare_paired",
    "compare_rdms",
    "compare_texts",
    "crossvalidate_rdm_models",
    "default_layers",
    "draw_permutations",
    "encoding_score",
    "evaluate_rdm_models",
    "extract_features",
    "list_layers",
    "load_features",
    "load_model",
    "load_state_dict",
    "noise_ceiling",
    "permutation_test",
    "plan",
    "plan_encoding",
    "reverse_predictivity",
    "rdm_split_half",
    "save_state_dict",
    "sentence_features",
    "sketch",
    "split_half_ceiling",
    "text_batches",
    "to_condensed",
    "to_square",
    "token_features",
    "weight_distance",
    "word_features",
    *measures.__all__,
]
