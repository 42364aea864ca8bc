"""The memory plan of an encoding model: the peak of every phase, estimated before anything is read,
and a refusal with options when it exceeds the budget.

Phases of one layer (m training rows of the largest fold, p held-out rows, r <= min(m, d) the rank,
s the bytes of the product dtype, tb targets per block, cb feature columns per block):

* dual route (d >= m), Gram accumulation: K (n², float64) + one column block (n cb (s + 8));
* dual, decomposition: K + the centred fold Gram, its eigenvectors and LAPACK's syevd workspace
  (about 4 m² float64 in all);
* primal route (d < m), decomposition: the features (n d, float64) + the centred fold, its SVD and
  gesdd's workspace (about 3 m d + 5 d² float64);
* fit of one target block: the basis (U in float64 and in the product dtype, the held-out
  projection: m r (8 + s) + p r 8) + the block's targets, residuals and predictions
  (tb (8 n + m (32 + 2 s) + r s + 16 p + 8 n_alphas));
* always: the per-target results (a few float64 vectors of length t per fold), and the held-out
  predictions (n t float64) when they are kept.

The refusal lists what brings the peak under the budget: fewer targets per block, float32 products,
a Gaussian random projection of the features to k columns (each Gram entry then has standard error
at most sqrt(2/k) |x_i| |x_j|: E[x_iᵀ R Rᵀ x_j] = x_iᵀ x_j and
Var = ((x_iᵀ x_j)² + |x_i|² |x_j|²) / k), or fewer stimuli (``max_samples``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch

from ..core.budget import MemoryBudgetError, format_bytes, parse_memory

_F64 = 8
COLUMN_BLOCK_BYTES = 1 << 28
"""Bytes of one column block of features read for the Gram matrix (256 MiB): large enough that the
n × n product runs at full speed, small enough to sit beside the n² kernel."""


MAX_BLOCK = 4096
"""Most targets per block the plan chooses by itself: the m × r × t products run at full speed well
below that, and a larger block only holds more memory."""


def column_block(n: int, itemsize: int) -> int:
    """Feature columns per block: :data:`COLUMN_BLOCK_BYTES` of the block and its float64 centring."""
    return max(1, COLUMN_BLOCK_BYTES // max(1, n * (itemsize + _F64)))


@dataclass
class EncodingPlan:
    """Peak memory of an encoding run, per phase, and the targets per block it chose.

    ``route``: "dual" (n × n Gram, d >= m) or "primal" (SVD of the m × d features);
    ``peak_bytes``: the largest phase plus the results; ``phases``: bytes of each phase;
    ``block_size``: targets per block; ``budget``: the budget in bytes.
    """

    n_samples: int
    n_features: int
    n_targets: int
    n_train: int
    n_test: int
    n_folds: int
    n_alphas: int
    layers: int
    itemsize: int
    route: str
    block_size: int
    phases: dict
    results_bytes: int
    budget: int

    @property
    def peak_bytes(self) -> int:
        return max(self.phases.values()) + self.results_bytes

    @property
    def fits(self) -> bool:
        return self.peak_bytes <= self.budget

    def describe(self) -> str:
        """One paragraph: shapes, route, every phase's bytes and the peak against the budget."""
        phases = ", ".join(f"{k} {format_bytes(v)}" for k, v in self.phases.items())
        return (
            f"{self.n_samples} stimuli x {self.n_features} features x {self.n_targets} targets, "
            f"{self.n_folds} folds ({self.n_train} training rows), {self.n_alphas} alphas, {self.layers} layer(s): "
            f"{self.route} route, {self.block_size} targets per block, {8 * self.itemsize}-bit products; "
            f"phases: {phases}; results {format_bytes(self.results_bytes)}; "
            f"peak {format_bytes(self.peak_bytes)} of a {format_bytes(self.budget)} budget"
        )


def _phases(n, d, m, p, a, s, tb, route) -> dict:
    r = min(m, d)
    block = tb * (_F64 * n + m * (32 + 2 * s) + r * s + 16 * p + _F64 * a)
    basis = m * r * (_F64 + s) + p * r * _F64
    if route == "dual":
        gram = _F64 * n * n
        cb = min(d, column_block(n, s))
        return {
            "gram": gram + n * cb * (s + _F64),
            "decomposition": gram + 4 * _F64 * m * m + _F64 * p * m,
            "fit": gram + basis + block,
        }
    features = _F64 * n * d
    return {
        "decomposition": features + _F64 * (3 * m * d + 5 * d * d + p * d),
        "fit": features + basis + block,
    }


def plan_encoding(
    n_samples: int,
    n_features: int,
    n_targets: int,
    *,
    cv: int = 5,
    n_train: int | None = None,
    n_alphas: int = 12,
    layers: int = 1,
    dtype: torch.dtype = torch.float32,
    block_size: int | None = None,
    memory=None,
    keep_predictions: bool = False,
    route: str = "auto",
    device=None,
) -> EncodingPlan:
    """The memory plan of :func:`repsim.encoding_score` for these shapes, without any data.

    ``cv``: the number of contiguous folds (``n_train``: the largest training fold instead);
    ``block_size``: targets per block (default: the most that fit the budget, at most :data:`MAX_BLOCK`);
    ``memory``: the budget (bytes or "8GB"; default 60 % of the memory available now: free GPU
    memory when ``device`` is a CUDA device, else RAM).
    Layers run one after another, so the peak does not grow with ``layers`` (only the results do).
    """
    n, d, t = int(n_samples), int(n_features), int(n_targets)
    m = int(n_train) if n_train is not None else n - n // max(int(cv), 2)
    p = n - m if n_train is None else max(1, n - m)
    s = torch.empty((), dtype=dtype).element_size()
    if route == "auto":
        route = "primal" if d < m else "dual"
    budget = parse_memory(memory, device)
    folds = max(int(cv), 1)
    results = layers * (_F64 * t * (8 + folds) + (_F64 * n * t if keep_predictions else 0))
    if block_size is None:
        block_size = _largest_block(n, d, m, p, n_alphas, s, t, route, budget - results)
    block_size = max(1, min(int(block_size), t))
    phases = _phases(n, d, m, p, n_alphas, s, block_size, route)
    return EncodingPlan(n, d, t, m, p, folds, n_alphas, layers, s, route, block_size, phases, results, budget)


def _largest_block(n, d, m, p, a, s, t, route, room) -> int:
    base = _phases(n, d, m, p, a, s, 0, route)
    per = _phases(n, d, m, p, a, s, 1, route)["fit"] - base["fit"]
    if max(base.values()) > room:
        return 1
    return int(max(1, min(t, MAX_BLOCK, (room - base["fit"]) // max(per, 1))))


def check_plan(plan: EncodingPlan, what: str = "encoding_score") -> None:
    """Refuse (:class:`MemoryBudgetError`) a plan whose peak exceeds its budget, listing the options."""
    if plan.fits:
        return
    options = []
    if plan.block_size > 1:
        small = _with(plan, block_size=1)
        if small.fits:
            options.append(f"block_size={_largest_fitting_block(plan)} (fewer targets per block)")
    if plan.itemsize > 4 and _with(plan, itemsize=4).fits:
        options.append("dtype=torch.float32 (float32 products, float64 reductions)")
    k = _largest_projection(plan)
    if k:
        options.append(
            f"projection={k} (a seeded Gaussian random projection to {k} features: each Gram entry "
            f"x_i.x_j then has standard error <= sqrt(2/{k}) |x_i||x_j| = {math.sqrt(2 / k):.3f} |x_i||x_j|)"
        )
    n = _largest_samples(plan)
    if n:
        options.append(f"max_samples={n} (the first {n} stimuli)")
    options.append("a larger memory= budget, if the machine has it")
    raise MemoryBudgetError(
        f"{what} would need about {format_bytes(plan.peak_bytes)} at its peak, over the budget of "
        f"{format_bytes(plan.budget)} ({plan.describe()}). Options: " + "; ".join(options)
    )


def _with(plan: EncodingPlan, **changes) -> EncodingPlan:
    fields = dict(vars(plan))
    fields.update(changes)
    n, d, m = fields["n_samples"], fields["n_features"], fields["n_train"]
    fields["route"] = "primal" if d < m else "dual"
    fields["phases"] = _phases(n, d, m, fields["n_test"], fields["n_alphas"], fields["itemsize"],
                               fields["block_size"], fields["route"])  # fmt: skip
    return EncodingPlan(**fields)


def _largest_fitting_block(plan: EncodingPlan) -> int:
    lo, hi = 1, plan.block_size
    while lo < hi:
        mid = (lo + hi + 1) // 2
        lo, hi = (mid, hi) if _with(plan, block_size=mid).fits else (lo, mid - 1)
    return lo


def _largest_projection(plan: EncodingPlan) -> int | None:
    """The largest power-of-two k < d (and < m: the primal route) whose plan fits, None if none does."""
    k = 1 << max(1, (min(plan.n_features, plan.n_train) - 1).bit_length() - 1)
    while k >= 64:
        if k < plan.n_features and _with(plan, n_features=k, block_size=1).fits:
            return k
        k //= 2
    return None


def _largest_samples(plan: EncodingPlan) -> int | None:
    ratio = plan.n_train / plan.n_samples
    for n in (int(plan.n_samples * f) for f in (0.75, 0.5, 0.35, 0.25, 0.15, 0.1, 0.05)):
        m = max(2, int(n * ratio))
        if n >= 10 and _with(plan, n_samples=n, n_train=m, n_test=max(1, n - m), block_size=1).fits:
            return n
    return None
