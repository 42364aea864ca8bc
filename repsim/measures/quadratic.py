"""Quadratic forms: what a measure declares (``quadratic=`` on its registry entry) when its value
on permuted or re-weighted samples is a function of per-layer n x n matrices.

Linear CKA (biased or debiased) and Pearson/Spearman RSA of x against y with y's samples permuted
by pi are functions of

    Q(pi) = sum_ab A[a, b] B[pi(a), pi(b)]     and     D(pi) = sum_a u[a] v[pi(a)]

for per-layer symmetric matrices A, B (centred Gram matrices, zero-diagonal Grams, standardised
RDMs), per-layer vectors u, v (Gram row sums) and permutation-invariant per-layer scalars. A form
object says how to build one layer's part (:meth:`QuadraticForm.side`) and how to finish the
statistic from Q, D and the scalars (:meth:`QuadraticForm.finish`); the permutation, bootstrap and
calibration engines (:mod:`repsim.inference`) take it from the entry,
``get_measure(name).quadratic_form(**options)``, and never ask for the measure by name. Each
measure module defines its own form (:class:`repsim.measures.cka.CKAForm`,
:class:`repsim.measures.rsa.RSAForm`).
"""

from __future__ import annotations

from dataclasses import dataclass

from torch import Tensor

__all__ = ["QuadraticForm", "Side"]


@dataclass
class Side:
    """One layer's part of a quadratic form: matrix, optional vector, invariant scalars."""

    matrix: Tensor
    vector: Tensor | None
    scalars: dict[str, Tensor]
    features: Tensor | None = None
    """Low-rank forms only: the centred features Z_c, with matrix = Z_c Z_c^T (zero diagonal if debiased)."""


@dataclass(frozen=True)
class QuadraticForm:
    """statistic_ij(pi) = finish(Q_ij(pi), D_ij(pi), x-side scalars, y-side scalars).

    Subclasses set ``uses_vector`` (D is needed), ``low_rank`` (the matrices are Z_c Z_c^T of
    centred features, so Q and D also come from features) and ``subsample_matrices`` (the measure
    on a subsample is a function of full-sample matrices restricted to it: the bootstrap's fast
    path), and implement :meth:`side` and :meth:`finish`."""

    uses_vector = False
    low_rank = False
    subsample_matrices = False

    def raw_matrix(self, z: Tensor) -> Tensor:
        """Forms with ``subsample_matrices``: the full-sample (n, n) float64 matrix whose restriction to
        a subsample gives the measure there (with the statistic's own weights)."""
        raise NotImplementedError

    def side(self, z: Tensor, native: bool = False) -> Side:
        """Layer ``z`` (n, d)'s matrix, vector and scalars (float64). ``native=True`` may leave the
        matrix in the precision of its products, for engines that convert it themselves (the FFTs
        of the cyclic shifts read it once, in float64: half the memory traffic for float32 inputs)."""
        raise NotImplementedError

    def finish(self, q: Tensor, d: Tensor | None, sx: dict, sy: dict) -> Tensor:
        """The statistics from Q (L, M, B), D (L, M, B) or None and the stacked scalars (L,), (M,)."""
        raise NotImplementedError
