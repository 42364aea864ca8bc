"""Permutation tests of "x and y are unrelated" for any registered measure.

The rows of y are permuted, x stays fixed; the p-value is (1 + #{null at least as extreme}) /
(1 + B), the +1 counting the observed arrangement (Phipson & Smyth 2010), so it is never 0 and
the test is exact. A distance (``larger_is_more_similar=False``) tests the lower tail.

Two schemes:

* ``"random"``: B uniformly random permutations, each a call of the measure. Any measure.
* ``"shifts"`` (the default where available: linear CKA, debiased CKA, RSA with the Pearson or
  Spearman comparator): the permutations are the cyclic shifts of one random ordering of the
  samples, pi_s = sigma^-1 o (i -> i + s) o sigma. They form a group, so the randomisation test
  is exact (Hemerik & Goeman 2018, JRSS-B), and every statistic is a quadratic form
  sum_ij K_ij L_pi(i)pi(j) of two n x n matrices, which all n - 1 shifts give at once through one
  FFT over the matrices' wrapped diagonals: O(n^2 (d + log n)) for up to n - 1 permutations,
  instead of B times the measure's cost.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments
from ..core.numerics import ACC
from ..core.validation import as_features, check_choice, check_same_samples
from ..measures.knn import knn_cache
from ..measures.registry import get_measure
from ._quadratic import shift_statistics
from .restricted import permutation_design

SCHEMES = ("auto", "shifts", "random")


@dataclass
class PermutationResult:
    """The observed statistic, its permutation null and the p-value."""

    measure: str
    statistic: float
    p_value: float
    null: Tensor = field(repr=False)
    alternative: str
    """"greater" for similarities, "less" for distances: the tail that counts as evidence."""
    scheme: str
    n: int

    @property
    def n_permutations(self) -> int:
        return int(self.null.numel())


def p_value(statistic: Tensor | float, null: Tensor, larger_is_more_similar: bool) -> float:
    """(1 + #{null as or more extreme}) / (1 + B)."""
    stat = torch.as_tensor(statistic, dtype=ACC, device=null.device)
    # a tolerance of 1e-12 relative: equal values up to rounding count as "as extreme"
    tol = 1e-12 * max(1.0, float(stat.abs()))
    extreme = (null >= stat - tol) if larger_is_more_similar else (null <= stat + tol)
    return (1 + int(extreme.sum())) / (1 + null.numel())


# -------------------------------------------------------------------------------- shift statistics
def _shift_statistics(name: str, options: dict):
    """A function (x, y) -> statistics at all n shifts, or None if the measure has no shift form: its
    registry entry declares the quadratic form it is (:attr:`~repsim.MeasureInfo.quadratic`); CKA's
    Gram products follow ``dtype``, and the FFTs and every sum run in float64."""
    form = get_measure(name).quadratic_form(**options)
    return None if form is None else (lambda x, y: shift_statistics(form, x, y))


def _shifts_if_used(measure: str, opts: dict, scheme: str, restricted: bool, n_permutations: int, n: int):
    """The shift statistics when the test uses them (``scheme`` "shifts", or "auto" with a shift form and
    B <= n - 1), else None; refuses "shifts" where they cannot serve."""
    shifts_fn = _shift_statistics(measure, opts) if scheme != "random" and not restricted else None
    if scheme == "shifts" and shifts_fn is None:
        raise ValueError(f"{measure} with these options has no shift form; use scheme='random'")
    if scheme == "shifts" and n_permutations > n - 1:
        raise ValueError(
            f"n_permutations={n_permutations} exceeds the n - 1 = {n - 1} cyclic shifts of {n} samples; "
            "use scheme='auto' or 'random' (random permutations), or n_permutations <= n - 1"
        )
    # auto: past the n - 1 shifts, random permutations (B as asked, never n - 1 silently)
    return shifts_fn if n_permutations <= n - 1 else None


# -------------------------------------------------------------------------------- the test
def _draws(n: int, count: int, gen: torch.Generator) -> Tensor:
    """(count, n) uniform permutations, drawn one after another as the per-permutation loop draws them."""
    return torch.stack([torch.randperm(n, generator=gen) for _ in range(count)])


def seeded_generator(seed: int | None, device) -> torch.Generator:
    """A CPU generator seeded by ``seed`` (None: 0, so an unseeded test is reproducible)."""
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else seed)
    return gen


@deprecated_arguments(positional=("n_permutations", "seed", "scheme", "groups", "blocks"))
def permutation_test(
    x,
    y,
    measure: str = "linear_cka",
    *,
    n_permutations: int = 1000,
    seed: int | None = 0,
    scheme: str = "auto",
    groups=None,
    blocks=None,
    **measure_options,
) -> PermutationResult:
    """Permutation test of the null "x and y are unrelated" with any registered measure.

    The rows of ``y`` are permuted while ``x`` stays fixed; under the null every arrangement is
    equally likely, so the p-value (1 + #{null >= observed}) / (1 + B) is exact. Distances test
    the lower tail. ``scheme="shifts"`` uses the cyclic-shift group of one random ordering and
    computes all its statistics with one FFT; it has only n - 1 non-identity shifts, so it serves
    B <= n - 1 (a larger B with ``scheme="shifts"`` is refused). ``scheme="random"`` draws B
    uniformly random permutations and calls the measure B times. ``scheme="auto"`` takes the
    shifts for linear/debiased CKA and RSA when B <= n - 1 and random permutations otherwise, so
    B is always the number asked for (``result.n_permutations``). The same ``seed`` gives
    bit-identical results.

    ``groups`` (one label per sample) permutes only within each label; ``blocks`` (one id per
    sample) moves the samples of one id together, among blocks of the same size (see
    :mod:`repsim.inference.restricted`). Restricted permutations have no cyclic-shift form, so
    they are explicit draws (``scheme`` "auto" or "random").

    Returns a :class:`PermutationResult` (statistic, p_value, null sample, tail, scheme, n).
    """
    check_choice(scheme, "scheme", SCHEMES)
    info = get_measure(measure)
    if info.needs_outputs:
        raise ValueError(f"{measure} compares model outputs; permutation tests are for measures of representations")
    if not isinstance(n_permutations, int) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    x, y = as_features(x, "x"), as_features(y, "y")
    check_same_samples(x, y)
    opts = info.resolve_options(measure_options)
    n = x.shape[0]
    design = permutation_design(n, groups, blocks)
    if design.restricted and scheme == "shifts":
        raise ValueError("scheme='shifts' cannot respect groups/blocks; use scheme='auto' or 'random'")
    with knn_cache():  # the observed value and a list-based null share the neighbour lists
        return _permutation_test(info, x, y, opts, n_permutations, seed, scheme, design)


def _permutation_test(info, x, y, opts, n_permutations, seed, scheme, design) -> PermutationResult:
    measure, n = info.name, x.shape[0]
    gen = seeded_generator(seed, x.device)
    order = torch.randperm(n, generator=gen).to(x.device)
    statistic = info.fn(x, y, **opts)
    shifts_fn = _shifts_if_used(measure, opts, scheme, design.restricted, n_permutations, n)
    if shifts_fn is not None:
        all_shifts = shifts_fn(x[order], y[order])
        chosen = (
            torch.arange(1, n) if n_permutations == n - 1 else torch.randperm(n - 1, generator=gen)[:n_permutations] + 1
        )
        null = all_shifts[chosen.to(all_shifts.device)]
        used = "shifts"
    elif info.null_grid is not None:  # lists searched once, relabelled per permutation (same draws)
        perms = design.draw(n_permutations, gen) if design.restricted else _draws(n, n_permutations, gen)
        null = info.null_grid([x], [y], perms.to(y.device), **opts)[0, 0].to(ACC)
        used = "random"
    elif design.restricted:
        values = [info.fn(x, y[perm.to(y.device)], **opts) for perm in design.draw(n_permutations, gen)]
        null = torch.stack(values).to(ACC)
        used = "random"
    else:
        values = [info.fn(x, y[perm.to(y.device)], **opts) for perm in _draws(n, n_permutations, gen)]
        null = torch.stack(values).to(ACC)
        used = "random"
    return PermutationResult(
        measure=measure,
        statistic=float(statistic),
        p_value=p_value(statistic, null, info.larger_is_more_similar),
        null=null,
        alternative="greater" if info.larger_is_more_similar else "less",
        scheme=used,
        n=n,
    )
