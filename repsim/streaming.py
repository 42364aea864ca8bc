"""Streaming CKA accumulators (``update(xs, ys)`` per batch, ``compute()`` at the end).

They live in :mod:`repsim.measures.streaming_cka` on the accumulator protocol of
:mod:`repsim.measures.accumulator`; this module keeps their public import path.
"""

from .measures.streaming_cka import MinibatchCKA, StreamingLinearCKA

__all__ = ["MinibatchCKA", "StreamingLinearCKA"]
