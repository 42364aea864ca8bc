"""Streaming linear CKA: exact (feature moments) and minibatch (Nguyen et al. 2021), on the accumulator protocol.

Both serve a whole layer grid: pass lists (or dicts) of per-layer features of the same batch.
Memory never grows with the number of batches.
"""

from __future__ import annotations

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC
from ..core.validation import constant_tolerance, near_constant, resolve_dtype
from .accumulator import LayerStream, combine_states
from .hsic import (
    CrossMoments,
    LayerMoments,
    cka_from_hsic,
    double_center,
    estimator_name,
    gram_hsic_grid,
    min_samples,
    moment_hsic_grid,
)


class LayerGridAccumulator(LayerStream):
    """An accumulator over a layer grid: input checks, the single-tensor vs list form, and per-layer
    column extremes (the NaN/Inf and constancy checks run once in ``compute``, so ``update`` never
    synchronises with the host)."""

    def __init__(self) -> None:
        super().__init__()
        self.add_state("_lo", None, "min")
        self.add_state("_hi", None, "max")
        self.add_state("_dtypes", None, "same")

    def _inputs(self, xs, ys) -> tuple[list[Tensor], list[Tensor]]:
        xs, ys = self._layer_lists(xs, ys)
        both = xs if ys is xs else xs + ys
        extremes = [torch.aminmax(t, dim=0) for t in both]  # one read of each layer
        lows = [e.min.to(ACC) for e in extremes]
        highs = [e.max.to(ACC) for e in extremes]
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
        _raise_flags(flags, "across all samples (up to rounding), so CKA is undefined")

    def _finish(self, debiased: bool, kl: Tensor, kk: Tensor, ll: Tensor) -> Tensor:
        need = min_samples(estimator_name(debiased))
        if self.n < need:
            raise ValueError(f"only {self.n} samples were accumulated; this estimator needs at least {need}")
        self._check_values()
        grid = cka_from_hsic(kl, kk, ll, debiased)
        return grid[0, 0] if self._single else grid


class StreamingLinearCKA(LayerGridAccumulator):
    """Exact linear CKA (biased or debiased) over batches, from running moments in float64.

    Keeps sum x, sum x x^T per layer and sum x y^T per layer pair (plus O(d) terms for the debiased
    estimator): memory O(d^2) whatever the number of batches, and ``compute()`` equals
    :func:`repsim.linear_cka` on the concatenated data (to ~1e-12 in float64). Features are shifted
    by the first batch's mean before accumulating, so large offsets (post-ReLU activations) do
    not cancel catastrophically; CKA and the unbiased HSIC are exactly shift-invariant. Shards
    merge when they share the shift (:meth:`set_shift`; ``repsim.compare`` agrees on one).

    Example:
        >>> acc = StreamingLinearCKA()
        >>> for xb, yb in batches:            # or lists of per-layer features for a grid
        ...     acc.update(xb, yb)
        >>> acc.compute()
    """

    @deprecated_arguments(positional=("debiased", "dtype"))
    def __init__(self, *, debiased: bool = False, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.debiased, self.dtype = debiased, dtype
        unshared = "merge() needs accumulators with the same shift; fix it with set_shift() first"
        self.add_state("_shift_x", None, "same", unshared)
        self.add_state("_shift_y", None, "same", unshared)
        self.add_state("_same", None, "same")
        self.add_state("_mx", None, "sum")
        self.add_state("_my", None, None)  # the x moments when the stream is xs against itself
        self.add_state("_cross", None, "sum")

    def merge_state(self, other: StreamingLinearCKA) -> None:
        if not (self._same or other._same):
            self._my = combine_states(self._my, other._my, "sum")
        elif self._my is None:
            self._my = other._my

    def update(self, xs, ys=None) -> None:
        """Add one batch: ``xs`` and ``ys`` are tensors (b, d) or lists/dicts of them; ``ys=None`` for xs vs xs."""
        same = ys is None
        xs, ys = self._inputs(xs, ys)
        compute = resolve_dtype(self.dtype, *xs, *ys)
        if self._shift_x is None:
            self._same = same
            self._shift_x = [x.to(ACC).mean(0) for x in xs]
            self._shift_y = None if same else [y.to(ACC).mean(0) for y in ys]
        elif same != self._same:
            raise ValueError("update() got ys=None after ys was given (or the reverse); keep one form per stream")
        unbiased = self.debiased
        xb = [(x.to(ACC) - s).to(compute) for x, s in zip(xs, self._shift_x, strict=True)]
        mx, x_sq = LayerMoments.of(xb, unbiased)
        if same:
            yb, my, y_sq = xb, None, x_sq
        else:
            yb = [(y.to(ACC) - s).to(compute) for y, s in zip(ys, self._shift_y, strict=True)]
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
        self._shift_x = [s.to(ACC) for s in shift_x]
        self._shift_y = None if shift_y is None else [s.to(ACC) for s in shift_y]

    def compute(self) -> Tensor:
        """CKA over everything seen so far: 0-d for single tensors, (L, M) for layer lists."""
        if self._mx is None:
            raise ValueError("compute() called before any update(); feed at least one batch")
        estimator = estimator_name(self.debiased)
        my = self._mx if self._same else self._my
        kl = moment_hsic_grid(self._mx, my, self._cross, estimator)
        kk = self._mx.self_hsic(estimator)
        ll = kk if self._same else my.self_hsic(estimator)
        return self._finish(self.debiased, kl, kk, ll)


class MinibatchCKA(LayerStream):
    """Minibatch CKA (Nguyen et al. 2021): sum_i HSIC(K_i, L_i) / sqrt(sum_i HSIC(K_i, K_i) sum_i HSIC(L_i, L_i)).

    Each batch contributes the unbiased HSIC (Song et al. 2012) of its own b x b Gram matrices
    (``debiased=False`` switches to the biased estimator). Each batch needs b >= 4 samples for the
    unbiased estimator. The value estimates population CKA without the O(n^2) cost, but is not
    equal to full-data CKA: use :class:`StreamingLinearCKA` for that.

    Cost per batch and layer: one pass for the batch's column mean, one for the centred copy, the
    b x b product (in ``dtype``: float32 for float32 features by default) and O(b^2) float64 work.
    Subtracting the mean in the product dtype before the product is what keeps float32 products
    honest on features with a large offset (the subtraction is exact where x is near its mean); the
    rounding of the mean itself leaves a common shift, which the float64 double centring of the
    Gram matrix removes. NaN/Inf and constant layers are refused in ``compute`` from per-layer
    energies: the centred energy sum_i |x_i - mean_b|^2 against the raw one sum_i |x_i|^2.
    """

    @deprecated_arguments(positional=("debiased", "dtype"))
    def __init__(self, *, debiased: bool = True, dtype: torch.dtype | None = None) -> None:
        super().__init__()
        self.debiased, self.dtype = debiased, dtype
        self.add_state("_sums", None, "sum")  # [sum_i HSIC(K_i, L_i) (L, M), sum HSIC(K_i, K_i) (L,), ... (M,)]
        self.add_state("_energy", None, "sum")  # (2, L + M): centred and raw energies, float64
        self.add_state("_widths", None, "same")
        self.add_state("_dtypes", None, "same")

    def update(self, xs, ys=None) -> None:
        """Add one batch; see :meth:`StreamingLinearCKA.update`."""
        same = ys is None
        xs, ys = self._layer_lists(xs, ys)
        both = xs if same else xs + ys
        widths = [t.shape[1] for t in both]
        if self._widths is not None and widths != self._widths:
            raise ValueError("update() got a different number of layers or feature sizes than the first batch")
        need = min_samples(estimator_name(self.debiased))
        if xs[0].shape[0] < need:
            raise ValueError(
                f"this batch has {xs[0].shape[0]} samples but minibatch CKA with the "
                f"{estimator_name(self.debiased)} estimator needs at least {need} per batch; "
                "drop or merge small batches"
            )
        compute = resolve_dtype(self.dtype, *xs, *ys)
        ks, e_x = _centred_grams(xs, compute)
        ls, e_y = (ks, e_x) if same else _centred_grams(ys, compute)
        terms = list(gram_hsic_grid(ks, ls, estimator_name(self.debiased)))
        energy = e_x if same else torch.cat([e_x, e_y], dim=1)
        if self._sums is None:
            self._sums, self._energy = terms, energy
            self._widths, self._dtypes = widths, [t.dtype for t in both]
        else:
            self._sums = [a + b for a, b in zip(self._sums, terms, strict=True)]
            self._energy = self._energy + energy
        self.n += xs[0].shape[0]

    def compute(self) -> Tensor:
        """Minibatch CKA over all batches so far: 0-d for single tensors, (L, M) for layer lists."""
        if self._sums is None:
            raise ValueError("compute() called before any update(); feed at least one batch")
        need = min_samples(estimator_name(self.debiased))
        if self.n < need:
            raise ValueError(f"only {self.n} samples were accumulated; this estimator needs at least {need}")
        centred, raw = self._energy
        tol = torch.tensor([constant_tolerance(dt) ** 2 for dt in self._dtypes], dtype=ACC, device=raw.device)
        finite = torch.isfinite(raw) & torch.isfinite(centred)
        flags = torch.cat([finite, finite & (centred > tol * raw)]).tolist()  # the one host synchronisation
        _raise_flags(flags, "within every batch (up to rounding), so minibatch CKA is undefined")
        grid = cka_from_hsic(*self._sums, self.debiased)
        return grid[0, 0] if self._single else grid


def _centred_grams(xs: list[Tensor], compute: torch.dtype) -> tuple[Tensor, Tensor]:
    """Doubly centred float64 Gram matrices (L, b, b) of a batch's layers, and their energies (2, L):
    sum_i |x_i - mu|^2 and sum_i |x_i|^2 = that + b |mu|^2 (mu the batch's column mean)."""
    grams, means = [], []
    for x in xs:
        if x.dtype == compute:
            mu = x.mean(0)
            xc = x - mu  # exact where x is near mu (Sterbenz)
        else:  # converted once, centred in place (a mixed-dtype subtraction is many times slower)
            xc = x.to(compute)
            mu = xc.mean(0)
            xc.sub_(mu)
        grams.append((xc @ xc.T).to(ACC))
        means.append(mu.to(ACC).pow(2).sum())
    ks = double_center(torch.stack(grams))  # removes the common shift the rounded mean left, in float64
    centred = ks.diagonal(dim1=-2, dim2=-1).sum(-1)
    return ks, torch.stack([centred, centred + xs[0].shape[0] * torch.stack(means)])


def _raise_flags(flags: list[bool], constant: str) -> None:
    """Raise for the first failing layer of ``flags``: per layer "finite", then per layer "varies"."""
    layers = len(flags) // 2
    if not all(flags[:layers]):
        bad = flags.index(False)
        raise ValueError(f"layer {bad} of the stream contains NaN or Inf values; clean or drop those samples first")
    if not all(flags[layers:]):
        bad = flags[layers:].index(False)
        raise ValueError(f"layer {bad} of the stream is constant {constant}")
