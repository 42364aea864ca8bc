"""Streaming accumulators: ``update(xs, ys)`` per batch, ``compute()`` at the end.

Both serve a whole layer grid: pass lists (or dicts) of per-layer features of the same batch.
Memory never grows with the number of batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ._validation import as_feature_list, check_same_samples, near_constant, resolve_dtype
from .measures.cka import _estimator, cka_from_hsic
from .measures.gram import center_columns
from .measures.hsic import CrossMoments, LayerMoments, gram_hsic_grid, min_samples, moment_hsic_grid

_ACC = torch.float64


class _GridAccumulator:
    """Shared plumbing: input checks, a self-comparison shortcut, the grid/scalar return shape."""

    def __init__(self, debiased: bool, dtype: torch.dtype | None) -> None:
        self.debiased = debiased
        self.dtype = dtype
        self.reset()

    def reset(self) -> None:
        self.n = 0
        self._single: bool | None = None
        # per-layer column extremes over the whole stream, on the device: the NaN/Inf and constancy
        # checks happen once in compute(), so update() never synchronises with the host
        self._lo: list[Tensor] | None = None
        self._hi: list[Tensor] | None = None

    def _inputs(self, xs, ys) -> tuple[list[Tensor], list[Tensor]]:
        single = isinstance(xs, Tensor) and (ys is None or isinstance(ys, Tensor))
        if self._single is not None and single != self._single:
            raise ValueError("update() got single tensors after lists (or the reverse); keep one form per stream")
        self._single = single
        xs = as_feature_list(xs, "xs", 1, check_values=False)
        ys = xs if ys is None else as_feature_list(ys, "ys", 1, check_values=False)
        check_same_samples(xs[0], ys[0], ("xs", "ys"))
        both = xs if ys is xs else xs + ys
        lows = [t.amin(0).to(_ACC) for t in both]
        highs = [t.amax(0).to(_ACC) for t in both]
        if self._lo is None:
            self._lo, self._hi, self._dtypes = lows, highs, [t.dtype for t in both]
        elif len(both) != len(self._lo) or any(t.shape[1] != r.shape[0] for t, r in zip(both, self._lo, strict=False)):
            raise ValueError("update() got a different number of layers or feature sizes than the first batch")
        else:  # torch.minimum/maximum propagate NaN, and Inf stays Inf
            self._lo = [torch.minimum(a, b) for a, b in zip(self._lo, lows, strict=True)]
            self._hi = [torch.maximum(a, b) for a, b in zip(self._hi, highs, strict=True)]
        return xs, ys

    def _check_values(self) -> None:
        """The stream's NaN/Inf and constancy checks, with one host synchronisation."""
        flags = torch.stack(
            [torch.isfinite(lo).all() & torch.isfinite(hi).all() for lo, hi in zip(self._lo, self._hi, strict=True)]
            + [~near_constant(lo, hi, dt).all() for lo, hi, dt in zip(self._lo, self._hi, self._dtypes, strict=True)]
        ).tolist()
        layers = len(self._lo)
        if not all(flags[:layers]):
            bad = flags.index(False)
            raise ValueError(f"layer {bad} of the stream contains NaN or Inf values; clean or drop those samples first")
        if not all(flags[layers:]):
            bad = flags[layers:].index(False)
            raise ValueError(
                f"layer {bad} of the stream is constant across all samples (up to rounding), so CKA is undefined"
            )

    def _merge_common(self, other: _GridAccumulator) -> None:
        """Sample count, form and column extremes of another accumulator over other samples (another rank)."""
        if other._lo is None:
            return
        if self._lo is None:
            self._single, self._lo, self._hi, self._dtypes = other._single, other._lo, other._hi, other._dtypes
        else:
            self._lo = [torch.minimum(a, b) for a, b in zip(self._lo, other._lo, strict=True)]
            self._hi = [torch.maximum(a, b) for a, b in zip(self._hi, other._hi, strict=True)]
        self.n += other.n

    def _finish(self, kl: Tensor, kk: Tensor, ll: Tensor) -> Tensor:
        need = min_samples(_estimator(self.debiased))
        if self.n < need:
            raise ValueError(f"only {self.n} samples were accumulated; this estimator needs at least {need}")
        self._check_values()
        grid = cka_from_hsic(kl, kk, ll, self.debiased)
        return grid[0, 0] if self._single else grid


class StreamingLinearCKA(_GridAccumulator):
    """Exact linear CKA (biased or debiased) over batches, from running moments in float64.

    Keeps sum x, sum x x^T per layer and sum x y^T per layer pair (plus O(d) terms for the debiased
    estimator): memory O(d^2) whatever the number of batches, and ``compute()`` equals
    :func:`repsim.linear_cka` on the concatenated data (to ~1e-12 in float64). Features are shifted
    by the first batch's mean before accumulating, so large offsets (post-ReLU activations) do
    not cancel catastrophically; CKA and the unbiased HSIC are exactly shift-invariant.

    Example:
        >>> acc = StreamingLinearCKA()
        >>> for xb, yb in batches:            # or lists of per-layer features for a grid
        ...     acc.update(xb, yb)
        >>> acc.compute()
    """

    def __init__(self, debiased: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__(debiased, dtype)

    def reset(self) -> None:
        super().reset()
        self._shift_x: list[Tensor] | None = None
        self._shift_y: list[Tensor] | None = None
        self._mx = self._my = self._cross = None
        self._same = False

    def update(self, xs, ys=None) -> None:
        """Add one batch: ``xs`` and ``ys`` are tensors (b, d) or lists/dicts of them; ``ys=None`` for xs vs xs."""
        same = ys is None
        xs, ys = self._inputs(xs, ys)
        compute = resolve_dtype(self.dtype, *xs, *ys)
        if self._shift_x is None:
            self._same = same
            self._shift_x = [x.to(_ACC).mean(0) for x in xs]
            self._shift_y = self._shift_x if same else [y.to(_ACC).mean(0) for y in ys]
        elif same != self._same:
            raise ValueError("update() got ys=None after ys was given (or the reverse); keep one form per stream")
        unbiased = self.debiased
        xb = [(x.to(_ACC) - s).to(compute) for x, s in zip(xs, self._shift_x, strict=True)]
        mx, x_sq = LayerMoments.of(xb, unbiased)
        if same:
            yb, my, y_sq = xb, mx, x_sq
        else:
            yb = [(y.to(_ACC) - s).to(compute) for y, s in zip(ys, self._shift_y, strict=True)]
            my, y_sq = LayerMoments.of(yb, unbiased)
        cross = CrossMoments.of(xb, yb, x_sq, y_sq, unbiased, accumulate=True)
        if self._mx is None:
            self._mx, self._my, self._cross = mx, my, cross
        else:
            self._mx.add(mx)
            if not same:
                self._my.add(my)
            self._cross.add(cross)
        self.n += xs[0].shape[0]

    def set_shift(self, shift_x: list[Tensor], shift_y: list[Tensor] | None = None) -> None:
        """Fix the shift before the first update (``shift_y=None``: a stream of xs against itself).

        Accumulators of different data shards can be merged only when they share the shift."""
        if self.n:
            raise ValueError("set_shift() must come before the first update()")
        self._same = shift_y is None
        self._shift_x = [s.to(_ACC) for s in shift_x]
        self._shift_y = self._shift_x if shift_y is None else [s.to(_ACC) for s in shift_y]

    def merge(self, other: StreamingLinearCKA) -> None:
        """Add the sums of an accumulator over other samples with the same shift (see :meth:`set_shift`)."""
        if other._mx is None:
            return
        if self._mx is None:
            self._shift_x, self._shift_y, self._same = other._shift_x, other._shift_y, other._same
            self._mx, self._my, self._cross = other._mx, other._my, other._cross
        else:
            mine, theirs = self._shift_x + self._shift_y, other._shift_x + other._shift_y
            if not all(torch.equal(a, b) for a, b in zip(mine, theirs, strict=True)):
                raise ValueError("merge() needs accumulators with the same shift; fix it with set_shift() first")
            self._mx.add(other._mx)
            if not self._same:
                self._my.add(other._my)
            self._cross.add(other._cross)
        self._merge_common(other)

    def compute(self) -> Tensor:
        """CKA over everything seen so far: 0-d for single tensors, (L, M) for layer lists."""
        if self._mx is None:
            raise ValueError("compute() called before any update(); feed at least one batch")
        estimator = _estimator(self.debiased)
        kl = moment_hsic_grid(self._mx, self._my, self._cross, estimator)
        kk = self._mx.self_hsic(estimator)
        ll = kk if self._same else self._my.self_hsic(estimator)
        return self._finish(kl, kk, ll)


class MinibatchCKA(_GridAccumulator):
    """Minibatch CKA (Nguyen et al. 2021): sum_i HSIC(K_i, L_i) / sqrt(sum_i HSIC(K_i, K_i) sum_i HSIC(L_i, L_i)).

    Each batch contributes the unbiased HSIC (Song et al. 2012) of its own b x b Gram matrices
    (``debiased=False`` switches to the biased estimator). Each batch needs b >= 4 samples for the
    unbiased estimator. The value estimates population CKA without the O(n^2) cost, but is not
    equal to full-data CKA: use :class:`StreamingLinearCKA` for that.
    """

    def __init__(self, debiased: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__(debiased, dtype)

    def reset(self) -> None:
        super().reset()
        self._sums: list[Tensor] | None = None

    def update(self, xs, ys=None) -> None:
        """Add one batch; see :meth:`StreamingLinearCKA.update`."""
        same = ys is None
        xs, ys = self._inputs(xs, ys)
        need = min_samples(_estimator(self.debiased))
        if xs[0].shape[0] < need:
            raise ValueError(
                f"this batch has {xs[0].shape[0]} samples but minibatch CKA with the "
                f"{_estimator(self.debiased)} estimator needs at least {need} per batch; drop or merge small batches"
            )
        compute = resolve_dtype(self.dtype, *xs, *ys)
        ks = torch.stack([(c := center_columns(x, compute)) @ c.T for x in xs])
        ls = ks if same else torch.stack([(c := center_columns(y, compute)) @ c.T for y in ys])
        terms = gram_hsic_grid(ks, ls, _estimator(self.debiased))
        self._sums = list(terms) if self._sums is None else [a + b for a, b in zip(self._sums, terms, strict=True)]
        self.n += xs[0].shape[0]

    def merge(self, other: MinibatchCKA) -> None:
        """Add the per-batch HSIC sums of an accumulator over other batches (another rank)."""
        if other._sums is None:
            return
        sums = other._sums
        self._sums = sums if self._sums is None else [a + b for a, b in zip(self._sums, sums, strict=True)]
        self._merge_common(other)

    def compute(self) -> Tensor:
        """Minibatch CKA over all batches so far: 0-d for single tensors, (L, M) for layer lists."""
        if self._sums is None:
            raise ValueError("compute() called before any update(); feed at least one batch")
        return self._finish(*self._sums)
