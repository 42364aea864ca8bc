"""probes: how well simple classifiers read frozen features (linear probe, weighted kNN, NCCC few-shot)."""

import repsim  # noqa: F401  (runs the torchvision guard before anything imports torchvision)

from .evaluate import evaluate, evaluate_features, extract
from .knn import KNNResult, knn
from .linear import LinearProbeResult, linear_probe
from .nccc import nccc

__all__ = ["KNNResult", "LinearProbeResult", "evaluate", "evaluate_features", "extract", "knn", "linear_probe", "nccc"]
