"""Permutations that respect the data's structure: within groups, and of whole blocks.

A permutation test is exact when the null distribution of the data is invariant under every
permutation the test draws from. Uniformly random permutations of all n samples assume that the
samples are exchangeable one by one. That fails when samples come in dependent bundles (the
tokens of one sentence, the crops of one image, several captions of one image) or when a design
variable must stay paired (class-stratified comparisons). Two restrictions cover these cases:

* ``groups=labels``: samples are permuted only among samples with the same label (a stratified
  permutation; class labels, datasets, recording sessions).
* ``blocks=ids``: the samples with the same id form a block that moves as a unit. Block b is
  sent onto block c position by position (its t-th sample, in the order the samples appear,
  onto c's t-th), so the within-block structure travels intact. A block can only take the place
  of a block of the **same size**: blocks of unequal sizes are not exchangeable (their
  within-block dependence differs, and a size-4 block cannot occupy a size-3 slot without
  splitting or padding), so blocks are permuted among blocks of their own size and a size that
  occurs once stays in place.

With both, blocks are permuted among blocks of the same size and the same group (every block
must then lie inside one group). The allowed permutations form a group (a product of symmetric
groups, one per stratum) and each draw is uniform on it, so the add-one p-value stays exact
(Hemerik & Goeman 2018, JRSS-B; for blocks: Winkler et al. 2015, NeuroImage, "exchangeability
blocks").

A permutation here is an index tensor ``perm`` of length n applied to the rows of y:
``y[perm]`` pairs x's sample i with y's sample ``perm[i]``.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from ..core.deprecation import deprecated_arguments


def _codes(values, name: str, n: int) -> np.ndarray:
    """Integer codes 0..k-1 of a length-n label sequence (ints, strings, a tensor or an array)."""
    if isinstance(values, Tensor):
        values = values.detach().cpu().numpy()
    arr = np.asarray(values)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be one label per sample (a 1-d sequence), got shape {arr.shape}")
    if arr.shape[0] != n:
        raise ValueError(f"{name} has {arr.shape[0]} labels but there are {n} samples; give one label per sample")
    if arr.dtype.kind == "f" and np.isnan(arr).any():
        raise ValueError(f"{name} contains NaN; give every sample a label")
    _, codes = np.unique(arr, return_inverse=True)
    return codes.reshape(-1)


@dataclass(frozen=True)
class PermutationDesign:
    """Which permutations of n samples are allowed: the strata of exchangeable units.

    ``strata`` holds one (m, s) int64 array per stratum: m units of s samples each (row u lists
    unit u's sample positions in order). A draw permutes the rows of every stratum independently.
    """

    n: int
    strata: tuple[np.ndarray, ...]
    restricted: bool

    @property
    def n_movable(self) -> int:
        """Samples that some allowed permutation moves (those in strata with at least two units)."""
        return int(sum(s.size for s in self.strata if s.shape[0] > 1))

    def draw(self, n_draws: int, generator: torch.Generator) -> Tensor:
        """(n_draws, n) int64 permutations, each uniform on the allowed set (CPU tensor)."""
        if not self.restricted:
            return torch.argsort(torch.rand(n_draws, self.n, generator=generator), dim=1)
        perms = torch.arange(self.n, dtype=torch.int64).repeat(n_draws, 1)
        for units in self.strata:
            m = units.shape[0]
            if m < 2:
                continue
            order = torch.argsort(torch.rand(n_draws, m, generator=generator), dim=1)  # (B, m)
            pos = torch.from_numpy(units)  # (m, s)
            # unit u's positions receive the samples of unit order[u], position by position
            perms[:, pos.reshape(-1)] = pos[order].reshape(n_draws, -1)
        return perms

    def allows(self, perm: Tensor) -> bool:
        """Whether ``perm`` (length n) is one of the allowed permutations (for tests and checks)."""
        p = perm.cpu().numpy()
        for units in self.strata:
            images = p[units]  # (m, s): where each unit's samples are sent from
            rows = {tuple(r) for r in units.tolist()}
            if any(tuple(r) not in rows for r in images.tolist()):
                return False
        return True


def block_positions(codes: np.ndarray) -> list[np.ndarray]:
    """The sample positions of each block of integer ``codes`` 0..k-1 (see ``_codes``), block by block,
    each block's positions in increasing order (a stable sort by block id)."""
    order = np.argsort(codes, kind="stable")
    _, starts = np.unique(codes[order], return_index=True)
    return np.split(order, starts[1:])


def permutation_design(n: int, groups=None, blocks=None) -> PermutationDesign:
    """The allowed permutations of n samples for ``groups`` and/or ``blocks`` (see the module doc).

    Raises a ValueError naming the argument when the labels have the wrong length, when a block
    straddles two groups, or when the restriction leaves nothing to permute.
    """
    if groups is None and blocks is None:
        return PermutationDesign(n, (np.arange(n, dtype=np.int64)[:, None],), False)
    group = _codes(groups, "groups", n) if groups is not None else np.zeros(n, dtype=np.int64)
    block = _codes(blocks, "blocks", n) if blocks is not None else np.arange(n, dtype=np.int64)
    members = block_positions(block)
    sizes = [len(pos) for pos in members]
    block_group = np.empty(len(members), dtype=np.int64)
    for b, pos in enumerate(members):
        g = np.unique(group[pos])
        if g.size > 1:
            raise ValueError(
                f"blocks: block {b} spans {g.size} groups; every block must lie inside one group "
                "(blocks are permuted within groups)"
            )
        block_group[b] = g[0]
    strata: dict[tuple[int, int], list[np.ndarray]] = {}
    for b, pos in enumerate(members):
        strata.setdefault((int(block_group[b]), int(sizes[b])), []).append(pos)
    arrays = tuple(np.stack(units).astype(np.int64) for _, units in sorted(strata.items()))
    design = PermutationDesign(n, arrays, True)
    if design.n_movable == 0:
        what = "blocks" if blocks is not None else "groups"
        why = (
            "no two blocks of the same size share a group" if blocks is not None else "every group has a single sample"
        )
        raise ValueError(
            f"{what} leave nothing to permute: {why}; a permutation test needs exchangeable units "
            "(use smaller blocks, blocks of equal size, or coarser groups)"
        )
    return design


@deprecated_arguments(positional=("groups", "blocks", "seed"))
def draw_permutations(n: int, n_permutations: int, *, groups=None, blocks=None, seed: int | None = 0) -> Tensor:
    """(n_permutations, n) random permutations allowed by ``groups``/``blocks`` (uniform on that set).

    ``y[perm]`` pairs x's sample i with y's sample ``perm[i]``. The same seed gives the same draws.
    """
    if not isinstance(n_permutations, int) or isinstance(n_permutations, bool) or n_permutations < 1:
        raise ValueError(f"n_permutations must be a positive integer, got {n_permutations!r}")
    gen = torch.Generator(device="cpu")
    gen.manual_seed(0 if seed is None else seed)
    return permutation_design(n, groups, blocks).draw(n_permutations, gen)
