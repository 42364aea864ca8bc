"""Moved in 0.4: text features to :mod:`repsim.networks.text`, ``compare_texts`` to :mod:`repsim.pipeline.text`;
works until 0.5."""

import warnings

from .networks.text import UNITS, sentence_features, text_batches, text_units, token_features, word_features
from .pipeline.text import compare_texts

warnings.warn(
    "repsim.text moved to repsim.networks.text and repsim.pipeline.text; the old path will be removed in 0.5",
    DeprecationWarning,
    stacklevel=2,
)
__all__ = ["UNITS", "compare_texts", "sentence_features", "text_batches", "text_units", "token_features",
           "word_features"]  # fmt: skip
