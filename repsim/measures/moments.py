"""Second moments of two representations, exact over batches: the state of every streaming measure.

Every measure computable from (n, means, centred scatter matrices S_xx, S_yy, S_xy) streams
exactly: CKA, the CCA family, Procrustes and the shape metrics, linear regression, eigenspace
overlap, GULP, ... Each registers ``from_moments(m: Moments, **options)``.

Batches are merged with Chan et al.'s (1979) pairwise update, in float64:
  S = S_a + S_b + (n_a n_b / n) d_x d_y^T,   d = mean_b - mean_a,
so no sum of raw squares is ever formed and large offsets (post-ReLU features) cannot cancel
catastrophically. The same merge combines the states of data shards (``merge``), which is what
a distributed run all-gathers (:meth:`repsim.measures.accumulator.Accumulator.sync`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC
from ..core.validation import as_feature_list, as_features, check_same_samples, resolve_dtype
from ._products import self_product, transpose_product
from .accumulator import Accumulator


@dataclass
class Moments:
    """Sufficient statistics of one (x, y) pair of n samples, all float64.

    ``sxx = sum_i (x_i - mean_x)(x_i - mean_x)^T`` (p, p); ``syy`` (q, q); ``sxy`` (p, q);
    ``norm_sum_x = sum_i |x_i|`` and ``norm_sum_y`` (uncentred row norms, for magnitude measures).
    """

    n: int
    mean_x: Tensor
    mean_y: Tensor
    sxx: Tensor
    syy: Tensor
    sxy: Tensor
    norm_sum_x: Tensor
    norm_sum_y: Tensor

    def uncentred_xx(self) -> Tensor:
        """sum_i x_i x_i^T = S_xx + n mean mean^T."""
        return self.sxx + self.n * torch.outer(self.mean_x, self.mean_x)

    def uncentred_yy(self) -> Tensor:
        return self.syy + self.n * torch.outer(self.mean_y, self.mean_y)

    def uncentred_xy(self) -> Tensor:
        return self.sxy + self.n * torch.outer(self.mean_x, self.mean_y)

    def swapped(self) -> Moments:
        """The moments of (y, x)."""
        return Moments(
            self.n, self.mean_y, self.mean_x, self.syy, self.sxx, self.sxy.T, self.norm_sum_y, self.norm_sum_x
        )


@deprecated_arguments(positional=("dtype",))
def moments_of(x: Tensor, y: Tensor, *, dtype: torch.dtype | None = None) -> Moments:
    """One-shot :class:`Moments` of validated-or-not ``x`` (n, p) and ``y`` (n, q)."""
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_samples(x, y)
    acc = StreamingMoments(dtype=dtype)
    acc.update(x, y)
    return acc.moments()


def _batch_stats(t: Tensor, compute: torch.dtype) -> tuple[Tensor, Tensor, Tensor]:
    """(mean float64, centred batch in ``compute`` dtype, sum of row norms float64)."""
    mean = t.to(ACC).mean(0)
    centred = (t.to(ACC) - mean).to(compute)
    norms = torch.linalg.vector_norm(t, dim=1, dtype=ACC).sum()
    return mean, centred, norms


class StreamingMoments(Accumulator):
    """Exact float64 second moments over batches, for one pair or a whole layer grid.

    ``update(xs, ys=None)`` takes tensors (b, d) or lists/dicts of per-layer tensors of the same
    batch (``ys=None``: xs against itself). ``moments(i, j)`` gives the :class:`Moments` of layer
    pair (i, j); ``compute(name, **options)`` evaluates a registered streaming measure: 0-d for
    single tensors, (L, M) for layer lists. Memory: O(sum_l d_l^2 + P Q) whatever n.

    ``dtype`` is the precision of the per-batch products (``None``, the default: the inputs' precision,
    half raised to float32; ``torch.float64``: exact); centring and accumulation are always float64.
    """

    @deprecated_arguments(positional=("dtype",))
    def __init__(self, *, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.dtype = dtype
        self.add_state("n", 0, None)  # n, the means and the scatters merge jointly (Chan et al.)
        self.add_state("_single", None, "same")
        self.add_state("_same", None, "same")
        self.add_state("_sizes_x", [], None)
        self.add_state("_sizes_y", [], None)
        self.add_state("_mean_x", None, None)  # (P,) concatenated over layers
        self.add_state("_mean_y", None, None)
        self.add_state("_sxx", [], None)
        self.add_state("_syy", [], None)
        self.add_state("_sxy", None, None)  # (P, Q) every layer pair's cross block
        self.add_state("_norm_x", None, None)  # (L,)
        self.add_state("_norm_y", None, None)

    # ---------------------------------------------------------------- accumulation
    def update(self, xs, ys=None) -> None:
        """Add one batch (every layer's features of the same samples)."""
        single = isinstance(xs, Tensor) and (ys is None or isinstance(ys, Tensor))
        same = ys is None
        if self._single is not None and (single != self._single or same != self._same):
            raise ValueError("update() changed form (single tensor vs list, or ys given vs None); keep one per stream")
        # values (NaN/Inf) are checked once at the end, from the float64 means they propagate into:
        # update() never synchronises with the host
        xs = as_feature_list(xs, "xs", 1, check_values=False)
        ys_list = xs if same else as_feature_list(ys, "ys", 1, check_values=False)
        check_same_samples(xs[0], ys_list[0], ("xs", "ys"))
        if self._single is None:
            self._single, self._same = single, same
            self._sizes_x = [x.shape[1] for x in xs]
            self._sizes_y = [y.shape[1] for y in ys_list]
        elif [x.shape[1] for x in xs] != self._sizes_x or [y.shape[1] for y in ys_list] != self._sizes_y:
            raise ValueError("update() got a different number of layers or feature sizes than the first batch")
        compute = resolve_dtype(self.dtype, *xs, *ys_list)
        stats_x = [_batch_stats(x, compute) for x in xs]
        stats_y = stats_x if same else [_batch_stats(y, compute) for y in ys_list]
        b = xs[0].shape[0]
        mean_x = torch.cat([s[0] for s in stats_x])
        mean_y = torch.cat([s[0] for s in stats_y])
        cx = torch.cat([s[1] for s in stats_x], dim=1) if len(xs) > 1 else stats_x[0][1]
        cy = cx if same else (torch.cat([s[1] for s in stats_y], dim=1) if len(ys_list) > 1 else stats_y[0][1])
        sxy = transpose_product(cx, cy).to(ACC)
        sxx = [self_product(s[1]).to(ACC) for s in stats_x]
        syy = sxx if same else [self_product(s[1]).to(ACC) for s in stats_y]
        norm_x = torch.stack([s[2] for s in stats_x])
        norm_y = torch.stack([s[2] for s in stats_y])
        self._merge(b, mean_x, mean_y, sxx, syy, sxy, norm_x, norm_y)

    def _merge(self, b, mean_x, mean_y, sxx, syy, sxy, norm_x, norm_y) -> None:
        if self.n == 0:
            self.n, self._mean_x, self._mean_y = b, mean_x, mean_y
            self._sxx, self._syy, self._sxy = sxx, syy, sxy
            self._norm_x, self._norm_y = norm_x, norm_y
            return
        n_a, n = self.n, self.n + b
        dx, dy = mean_x - self._mean_x, mean_y - self._mean_y
        w = n_a * b / n
        ox = 0
        new_sxx = []
        for s_a, s_b, d in zip(self._sxx, sxx, self._sizes_x, strict=True):
            delta = dx[ox : ox + d]
            new_sxx.append(s_a + s_b + w * torch.outer(delta, delta))
            ox += d
        if self._same:
            new_syy = new_sxx
        else:
            new_syy, oy = [], 0
            for s_a, s_b, d in zip(self._syy, syy, self._sizes_y, strict=True):
                delta = dy[oy : oy + d]
                new_syy.append(s_a + s_b + w * torch.outer(delta, delta))
                oy += d
        self._sxy = self._sxy + sxy + w * torch.outer(dx, dy)
        self._sxx, self._syy = new_sxx, new_syy
        self._mean_x = self._mean_x + dx * (b / n)
        self._mean_y = self._mean_y + dy * (b / n)
        self._norm_x, self._norm_y = self._norm_x + norm_x, self._norm_y + norm_y
        self.n = n

    def merge_state(self, other: StreamingMoments) -> None:
        """Chan et al.'s pairwise update with the state of another accumulator over other samples."""
        if other.n == 0:
            return
        if self.n and (other._sizes_x != self._sizes_x or other._sizes_y != self._sizes_y):
            raise ValueError("merge() needs accumulators over the same layers and feature sizes")
        if self.n == 0:
            self._sizes_x, self._sizes_y = list(other._sizes_x), list(other._sizes_y)
        self._merge(
            other.n, other._mean_x, other._mean_y, other._sxx, other._syy, other._sxy, other._norm_x, other._norm_y
        )

    # ---------------------------------------------------------------- results
    def _check_finite(self) -> None:
        if self.n == 0:
            raise ValueError("no samples were accumulated; call update() with at least one batch first")
        finite = torch.isfinite(self._mean_x).all() & torch.isfinite(self._mean_y).all()
        finite = finite & torch.isfinite(self._norm_x).all() & torch.isfinite(self._norm_y).all()
        if not finite.item():  # one host synchronisation per result, never per batch
            raise ValueError("the stream contains NaN or Inf values; clean or drop those samples first")

    def moments(self, i: int = 0, j: int = 0) -> Moments:
        """The :class:`Moments` of x-layer ``i`` and y-layer ``j``."""
        self._check_finite()
        return self._moments(i, j)

    def _moments(self, i: int, j: int) -> Moments:
        ox = sum(self._sizes_x[:i])
        oy = sum(self._sizes_y[:j])
        px, qy = self._sizes_x[i], self._sizes_y[j]
        return Moments(
            n=self.n,
            mean_x=self._mean_x[ox : ox + px],
            mean_y=self._mean_y[oy : oy + qy],
            sxx=self._sxx[i],
            syy=self._syy[j],
            sxy=self._sxy[ox : ox + px, oy : oy + qy],
            norm_sum_x=self._norm_x[i],
            norm_sum_y=self._norm_y[j],
        )

    def compute(self, name: str, **options) -> Tensor:
        """A registered streaming measure over everything seen: 0-d for single tensors, else (L, M)."""
        from .registry import call_with_supported, get_measure

        info = get_measure(name)
        if info.from_moments is None:
            raise ValueError(
                f"{name} is not computed from second moments; "
                + (
                    "use its own accumulator, get_measure(name).accumulator"
                    if info.streaming
                    else "it needs all samples at once: compute it on (a capped subset of) the samples instead"
                )
            )
        opts = info.resolve_options(options)
        self._check_finite()
        grid = torch.stack(
            [
                torch.stack(
                    [
                        call_with_supported(info.from_moments, self._moments(i, j), **opts)
                        for j in range(len(self._sizes_y))
                    ]
                )
                for i in range(len(self._sizes_x))
            ]
        )
        return grid[0, 0] if self._single else grid
