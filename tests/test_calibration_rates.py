"""Simulated rates of calibrated similarity under the null (independent representations).

At alpha = 0.05 with B = 99 permutations, P(calibrated > 0) = floor(0.05 * 100) / 100 = 0.05 exactly
for an exchangeable design; the simulations must land in [0.03, 0.07] (400 runs: sd 0.011):

* a single cell, and the maximum over a 4 x 4 layer grid calibrated against its own null, while
  the uncalibrated maximum (a cell beating its own threshold somewhere in the grid) is far above;
* tokens of one sentence sharing a sentence vector on both sides (independent across the two
  sides): token-level permutations are anti-conservative, whole-sentence blocks (the FFT over
  cyclic shifts of whole blocks) hold the rate.

benchmarks/calibration.py runs the same simulations with more runs and reports all the rates.
"""

import numpy as np
import pytest
import torch

import repsim

RUNS, B, ALPHA = 400, 99, 0.05


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Thousands of tiny problems: extra threads only add contention (30x slower on a busy 2-core machine)."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _rate(flags) -> float:
    return float(np.mean(flags))


def test_single_cell_rate():
    gen = torch.Generator().manual_seed(0)
    hits = []
    for run in range(RUNS):
        x = torch.randn(100, 6, generator=gen, dtype=torch.float64)
        y = torch.randn(100, 4, generator=gen, dtype=torch.float64)
        hits.append(repsim.calibrate(x, y, "linear_cka", n_permutations=B, alpha=ALPHA, seed=run).score > 0)
    assert 0.03 <= _rate(hits) <= 0.07, _rate(hits)


def _layers(gen, n: int, widths) -> list[torch.Tensor]:
    """Layers of one random network: a shared signal plus layer-specific noise (correlated layers)."""
    base = torch.randn(n, 6, generator=gen, dtype=torch.float64)
    return [base[:, : min(6, w)] @ torch.randn(min(6, w), w, generator=gen, dtype=torch.float64)
            + torch.randn(n, w, generator=gen, dtype=torch.float64) for w in widths]  # fmt: skip


def test_grid_max_rate_calibrated_and_uncalibrated():
    gen = torch.Generator().manual_seed(1)
    calibrated, naive = [], []
    for run in range(RUNS):
        xs, ys = _layers(gen, 100, (3, 5, 8, 4)), _layers(gen, 100, (4, 6, 3, 7))
        res = repsim.calibrate_grid(xs, ys, "linear_cka", aggregate="max", n_permutations=B, alpha=ALPHA, seed=run)
        calibrated.append(res.score > 0)
        naive.append(bool((res.cells["calibrated"] > 0).any()))
    assert 0.03 <= _rate(calibrated) <= 0.07, _rate(calibrated)
    assert _rate(naive) > 0.15, _rate(naive)  # the search over 16 cells: several times alpha


def _sentences(gen, n_sentences: int, tokens: int, width: int) -> torch.Tensor:
    """Token features = their sentence's vector + token noise: tokens of one sentence are dependent."""
    sentence = torch.randn(n_sentences, width, generator=gen, dtype=torch.float64).repeat_interleave(tokens, 0)
    return sentence + 0.7 * torch.randn(n_sentences * tokens, width, generator=gen, dtype=torch.float64)


def test_blocks_hold_the_rate_where_token_permutations_do_not():
    gen = torch.Generator().manual_seed(3)
    blocks = np.repeat(np.arange(40), 3)
    by_token, by_block = [], []
    for run in range(RUNS):
        x, y = _sentences(gen, 40, 3, 4), _sentences(gen, 40, 3, 4)  # independent sides, same sentence layout
        by_token.append(repsim.calibrate(x, y, "debiased_cka", n_permutations=39, alpha=ALPHA, seed=run).score > 0)
        res = repsim.calibrate(x, y, "debiased_cka", n_permutations=39, alpha=ALPHA, blocks=blocks, seed=run)
        by_block.append(res.score > 0)
    assert res.scheme == "block shifts"  # all 39 cyclic shifts of the 40 blocks: exact level 2/40
    assert _rate(by_token) > 0.3, _rate(by_token)
    assert 0.03 <= _rate(by_block) <= 0.07, _rate(by_block)
