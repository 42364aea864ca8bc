"""Differences of one summary statistic of each representation (the descriptive-statistics
measures of Klabunde et al.'s survey and ReSi): magnitude, concentricity, uniformity.

Each is |s(x) - s(y)| for a scalar statistic s: symmetric, 0 at y = x and satisfying the
triangle inequality, but 0 for any two representations whose statistic happens to agree, so
only a pseudometric (declared ``metric=False``). Each is invariant to every feature map that
leaves its statistic unchanged (declared per measure).
"""

from __future__ import annotations

import math

import torch
from torch import Tensor

from ..core.numerics import ACC, ZERO_NORM_RTOL, center_columns, gram_sq_distances, sq_row_norms, unit_rows
from ..core.validation import (
    as_features,
    check_choice,
    resolve_dtype,
)
from .accumulator import LayerStream, combine_states
from .kinds import layer_measure

_BLOCK_ELEMENTS = 1 << 24

MAGNITUDES = ("mean_row_norm", "norm_of_mean")


_SURVEY = "Klabunde, Schumacher, Strohmaier & Lemmerich 2025, ACM Comput. Surv.; ReSi (Klabunde et al. 2025, ICLR)"
# |s(x) - s(y)| of one statistic per representation: computed once per layer in a grid
_DIFFERENCE = dict(
    pair=lambda sx, sy, **_: (sx - sy).abs(),
    family="statistics",
    larger_is_more_similar=False,
    identity_value=0.0,
)


# ---------------------------------------------------------------------------- magnitude
def magnitude(x: Tensor, statistic: str = "mean_row_norm") -> Tensor:
    """mean_i |x_i|_2 (default), or |mean_i x_i|_2 with ``statistic="norm_of_mean"`` (ReSi's code)."""
    check_choice(statistic, "statistic", MAGNITUDES)
    return _magnitude_of(as_features(x, "x", 1).to(ACC), statistic)


def _magnitude_of(x64: Tensor, statistic: str) -> Tensor:
    if statistic == "mean_row_norm":
        return torch.linalg.vector_norm(x64, dim=1).mean()
    return torch.linalg.vector_norm(x64.mean(0))


def magnitude_difference_from_moments(m, statistic: str = "mean_row_norm") -> Tensor:
    check_choice(statistic, "statistic", MAGNITUDES)
    if statistic == "mean_row_norm":
        return ((m.norm_sum_x - m.norm_sum_y) / m.n).abs()
    return (torch.linalg.vector_norm(m.mean_x) - torch.linalg.vector_norm(m.mean_y)).abs()


def _check_statistic(statistic: str = "mean_row_norm", **_) -> None:
    check_choice(statistic, "statistic", MAGNITUDES)


@layer_measure(
    "magnitude_difference",
    differentiable=True,
    prepare=lambda x, name, statistic="mean_row_norm", **_: _magnitude_of(x.to(ACC), statistic),
    options_check=_check_statistic,
    min_samples=1,
    invariances=("orthogonal", "permutation"),
    streaming=True,
    from_moments=magnitude_difference_from_moments,
    cost="O(n d)",
    reference=_SURVEY,
    **_DIFFERENCE,
)
def magnitude_difference(x: Tensor, y: Tensor, *, statistic: str = "mean_row_norm") -> Tensor:
    """|mean_i |x_i| - mean_i |y_i||: the difference of the mean Euclidean row norms (Klabunde et al. 2025).

    ``statistic="norm_of_mean"`` gives ReSi's implementation, | |mean x| - |mean y| |, the norms
    of the mean representations. Both stream exactly (sum of row norms, means). Invariant to
    orthogonal maps and permutations of the features only; in the units of the features (a
    scale difference shows up as a difference). Cost O(n d).
    """


# ---------------------------------------------------------------------------- concentricity
def concentricity(x: Tensor) -> Tensor:
    """mean_i cos(x_i, mean_j x_j): how tightly the samples point along the mean representation."""
    return _concentricity_of(as_features(x, "x", 1).to(ACC))


def _concentricity_of(x64: Tensor, name: str = "x") -> Tensor:
    mean = x64.mean(0)
    mean_norm = torch.linalg.vector_norm(mean)
    unit = unit_rows(x64, name, fix="drop them or add a small offset")
    # A mean that is zero up to rounding (centred features) has no direction to measure cosines to.
    if not bool(mean_norm > ZERO_NORM_RTOL * x64.pow(2).sum(1).mean().sqrt()):
        raise ValueError(
            f"the mean representation of {name} is the zero vector (up to rounding, e.g. centred features), so its "
            "cosine with the samples is undefined; concentricity needs uncentred features"
        )
    return (unit @ mean).mean() / mean_norm


class StreamingConcentricity(LayerStream):
    """Exact concentricity difference over batches: keeps n, sum_i x_i, sum_i x_i/|x_i| and sum_i |x_i|^2 per layer.

    mean_i cos(x_i, x_bar) = <mean_i x_i/|x_i|, x_bar> / |x_bar|, so these first moments suffice.
    ``update(xs, ys=None)`` takes tensors or lists of per-layer tensors; ``compute()`` gives a
    0-d tensor for single tensors, else (L, M). Memory O(sum of widths). ``update`` never
    synchronises with the host: NaN/Inf values and all-zero rows are counted on the device and
    refused once, in ``compute``, with the same messages and thresholds as the one-shot measure.
    Mergeable across shards (``merge``/``sync``), so it runs under ``torchrun``.
    """

    def __init__(self, dtype: torch.dtype | None = None, **_) -> None:
        super().__init__()
        self.add_state("_sums", None, "sum")  # [x layers, y layers] of (sum x, sum unit x, sum |x|^2, #zero rows)

    def update(self, xs, ys=None) -> None:
        xs, ys_list = self._layer_lists(xs, ys)

        def stats(t: Tensor) -> list[Tensor]:
            t = t.to(ACC)
            sq = t.pow(2).sum(1)
            norms = sq.sqrt()
            unit = t / torch.where(norms > 0, norms, 1.0)[:, None]
            return [t.sum(0), unit.sum(0), sq.sum(), (norms == 0).sum().to(ACC)]

        new = [[stats(t) for t in xs], [stats(t) for t in ys_list]]
        if self._sums is not None and (
            [len(v) for v in new] != [len(v) for v in self._sums]
            or any(
                a[0].shape != b[0].shape
                for old, nw in zip(self._sums, new, strict=True)
                for a, b in zip(old, nw, strict=False)
            )
        ):
            raise ValueError("update() got a different number of layers or feature sizes than the first batch")
        self._sums = new if self._sums is None else combine_states(self._sums, new, "sum")
        self.n += xs[0].shape[0]

    def compute(self) -> Tensor:
        if self._sums is None:
            raise ValueError("no samples were accumulated; call update() with at least one batch first")
        flat = [v for side in self._sums for v in side]
        checks = torch.stack(
            [torch.stack([torch.isfinite(v[0]).all().to(ACC), v[3]]) for v in flat]
        ).tolist()  # one host synchronisation
        for (finite, zeros), side in zip(
            checks, ["xs"] * len(self._sums[0]) + ["ys"] * len(self._sums[1]), strict=True
        ):
            if not finite:
                raise ValueError(f"{side} contains NaN or Inf values; clean or drop those samples first")
            if zeros:
                raise ValueError(
                    f"{side} has {int(zeros)} all-zero rows, whose direction (cosine) is undefined; "
                    "drop them or add a small offset"
                )

        def conc(total: Tensor, unit_total: Tensor, sq: Tensor, side: str) -> Tensor:
            mean = total / self.n
            mean_norm = torch.linalg.vector_norm(mean)
            if not bool(mean_norm > ZERO_NORM_RTOL * (sq / self.n).sqrt()):  # the one-shot measure's threshold
                raise ValueError(
                    f"the mean representation of {side} is the zero vector (up to rounding, e.g. centred features), "
                    "so its cosine with the samples is undefined; concentricity needs uncentred features"
                )
            return unit_total @ mean / (mean_norm * self.n)

        sx = torch.stack([conc(v[0], v[1], v[2], "xs") for v in self._sums[0]])
        sy = torch.stack([conc(v[0], v[1], v[2], "ys") for v in self._sums[1]])
        grid = (sx[:, None] - sy[None, :]).abs()
        return grid[0, 0] if self._single else grid


@layer_measure(
    "concentricity_difference",
    differentiable=True,
    prepare=lambda x, name, **_: _concentricity_of(x.to(ACC), name),
    min_samples=1,
    invariances=("orthogonal", "isotropic_scaling", "permutation"),
    streaming=True,
    accumulator=StreamingConcentricity,
    cost="O(n d)",
    reference=_SURVEY,
    **_DIFFERENCE,
)
def concentricity_difference(x: Tensor, y: Tensor) -> Tensor:
    """|mean_i cos(x_i, x_bar) - mean_i cos(y_i, y_bar)| (Klabunde et al. 2025; as ReSi).

    Invariant to orthogonal maps, permutations and isotropic scaling of the features (cosines
    do not see them); not to shifts. Refuses all-zero rows and a zero mean. Cost O(n d).
    """


# ---------------------------------------------------------------------------- uniformity
def uniformity(x: Tensor, t: float = 2.0, normalize: bool = True, dtype: torch.dtype | None = None) -> Tensor:
    """log mean_{i<j} exp(-t |z_i - z_j|^2) (Wang & Isola 2020), z_i = x_i / |x_i| by default.

    Computed as a running log-sum-exp over row blocks, so it never underflows (ReSi's
    log(mean(exp(...))) gives log 0 = -inf once the distances are large). Cost O(n^2 d); the
    n x n products run in ``dtype`` (default: the inputs' precision), the rest in float64.
    """
    return _uniformity_of(x, t, normalize, dtype, "x")


def _uniformity_of(x: Tensor, t: float, normalize: bool, dtype: torch.dtype | None, name: str) -> Tensor:
    """:func:`uniformity` with errors naming the argument ``name`` (``y``, ``xs[2]``...)."""
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"t must be a positive number (the uniformity temperature), got {t!r}")
    x = as_features(x, name, 2, "uniformity averages over pairs of samples")
    compute = resolve_dtype(dtype, x)
    x64 = x.to(ACC)
    z = unit_rows(x64, name, fix="drop them or add a small offset") if normalize else center_columns(x64, ACC)
    n = z.shape[0]
    sq = sq_row_norms(z)
    zc = z.to(compute)
    b = max(1, min(n, _BLOCK_ELEMENTS // n))
    parts = []
    for i0 in range(0, n - 1, b):
        i1 = min(n - 1, i0 + b)
        gram = (zc[i0:i1] @ zc.T).to(ACC)
        d2 = gram_sq_distances(sq[i0:i1], sq, gram)
        cols = torch.arange(n, device=z.device)[None, :]
        rows = torch.arange(i0, i1, device=z.device)[:, None]
        logits = torch.where(cols > rows, -t * d2, torch.tensor(-math.inf, dtype=ACC, device=z.device))
        parts.append(torch.logsumexp(logits.flatten(), 0))
    return torch.logsumexp(torch.stack(parts), 0) - math.log(n * (n - 1) / 2)


def _check_temperature(t: float = 2.0, **_) -> None:
    if not (isinstance(t, (int, float)) and math.isfinite(t) and t > 0):
        raise ValueError(f"t must be a positive number (the uniformity temperature), got {t!r}")


def _uniformity_invariances(normalize: bool = True, **_) -> tuple[str, ...]:
    # normalised rows forget each sample's length (so the scale); raw rows are centred first (so shifts)
    return ("orthogonal", "permutation", "isotropic_scaling" if normalize else "translation")


@layer_measure(
    "uniformity_difference",
    differentiable=True,
    prepare=lambda x, name, t=2.0, normalize=True, dtype=None, **_: _uniformity_of(x, t, normalize, dtype, name),
    options_check=_check_temperature,
    min_samples=2,
    reason="uniformity averages over pairs of samples",
    invariances=_uniformity_invariances,
    cost="O(n^2 d) time, O(block n) memory",
    reference="Wang & Isola 2020, ICML; " + _SURVEY,
    **_DIFFERENCE,
)
def uniformity_difference(
    x: Tensor, y: Tensor, *, t: float = 2.0, normalize: bool = True, dtype: torch.dtype | None = None
) -> Tensor:
    """|U(x) - U(y)| with U the uniformity of Wang & Isola (2020) over pairs i < j, on L2-normalised rows.

    ``normalize=False`` uses the raw features as ReSi does (ReSi also averages over all n^2
    ordered pairs, diagonal included; that variant is not offered). With the default the measure is invariant to
    orthogonal maps, permutations and isotropic scaling; with ``normalize=False`` to orthogonal
    maps, permutations and shifts. Cost O(n^2 d), memory O(block n).
    """
