"""GPU readiness checked on CPU: per-batch and per-pair loops never synchronise with the host.

Every Python-level way to pull a tensor value to the host (.item(), bool(), float(), int(),
.tolist(), .cpu(), .numpy()) is counted while the loops run; one check per result is allowed.
"""

import contextlib

import pytest
import torch

import repsim
from repsim.measures.moments import StreamingMoments
from repsim.streaming import StreamingLinearCKA

_SYNCS = ("item", "__bool__", "__float__", "__int__", "tolist", "cpu", "numpy")


@contextlib.contextmanager
def count_host_syncs():
    counts = {"n": 0}
    originals = {name: getattr(torch.Tensor, name) for name in _SYNCS}

    def wrap(orig):
        def counted(self, *args, **kwargs):
            counts["n"] += 1
            return orig(self, *args, **kwargs)

        return counted

    for name, orig in originals.items():
        setattr(torch.Tensor, name, wrap(orig))
    try:
        yield counts
    finally:
        for name, orig in originals.items():
            setattr(torch.Tensor, name, orig)


def _batches(gen, count=6, b=16):
    return [
        ([torch.randn(b, 5, generator=gen), torch.randn(b, 3, generator=gen)], [torch.randn(b, 4, generator=gen)])
        for _ in range(count)
    ]


def test_counter_catches_a_sync(gen):
    with count_host_syncs() as counts:
        bool(torch.ones(()) > 0)
        torch.ones(2).sum().item()
    assert counts["n"] == 2


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_cka_update_loop_has_no_host_sync(gen, debiased):
    acc = StreamingLinearCKA(debiased=debiased)
    batches = _batches(gen)
    with count_host_syncs() as counts:
        for xs, ys in batches:
            acc.update(xs, ys)
    assert counts["n"] == 0
    with count_host_syncs() as counts:
        acc.compute()
    assert counts["n"] <= 2  # the one-off value checks of the result


def test_streaming_moments_update_loop_has_no_host_sync(gen):
    acc = StreamingMoments()
    batches = _batches(gen)
    with count_host_syncs() as counts:
        for xs, ys in batches:
            acc.update(xs, ys)
    assert counts["n"] == 0
    with count_host_syncs() as counts:
        acc.compute("linear_cka")
    assert counts["n"] <= 2  # once per result, not once per layer pair


@pytest.mark.parametrize("grid", [repsim.cka_grid, repsim.rsa_grid])
def test_grid_syncs_do_not_grow_with_pairs(gen, grid):
    def syncs(layers):
        xs = [torch.randn(30, 4, generator=gen) for _ in range(layers)]
        with count_host_syncs() as counts:
            grid(xs)
        return counts["n"]

    # checks are once per layer (at most 3: input values, RDM rows, RDM spread); nothing is per pair
    # (4 layers: 16 pairs, 8 layers: 64 pairs)
    small, large = syncs(4), syncs(8)
    assert large - small <= 3 * (8 - 4)
