"""repsim: representational similarity of neural networks, exact and streaming.

Measures are pure functions on (n, d) tensors (``linear_cka``, ``kernel_cka``, ``hsic``, ``rsa``,
``gram_gap``, ``cka_grid``); streaming accumulators (``StreamingLinearCKA``, ``MinibatchCKA``)
serve data that does not fit in memory.
"""

from ._compat import ensure_torchvision_importable

ensure_torchvision_importable()  # before anything in the project touches torchvision or timm

from .measures import (  # noqa: E402
    GramGap,
    cka_grid,
    cosine_similarity_matrix,
    gram_gap,
    hsic,
    kernel_cka,
    linear_cka,
    rbf_gram,
    rdm,
    rsa,
    rsa_grid,
)
from .streaming import MinibatchCKA, StreamingLinearCKA  # noqa: E402

__version__ = "0.1.0"

__all__ = [
    "GramGap",
    "MinibatchCKA",
    "StreamingLinearCKA",
    "cka_grid",
    "cosine_similarity_matrix",
    "gram_gap",
    "hsic",
    "kernel_cka",
    "linear_cka",
    "rbf_gram",
    "rdm",
    "rsa",
    "rsa_grid",
]
