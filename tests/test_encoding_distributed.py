"""encoding_score under a 2-process gloo group (targets split over ranks) equals one process's run."""

import os
import tempfile

import numpy as np
import torch
import torch.distributed as dist
import torch.multiprocessing as mp

import repsim

ALPHAS = np.logspace(-2, 5, 8)


def _data():
    rng = np.random.default_rng(11)
    x = rng.normal(size=(50, 80))
    y = x[:, :5] @ rng.normal(size=(5, 7)) + rng.normal(size=(50, 7))  # 7 targets: 3 on rank 0, 4 on rank 1
    return x, y


def _runs(distributed=None):
    x, y = _data()
    fwd = repsim.encoding_score({"a": x, "b": x[:, :20]}, y, alphas=ALPHAS, return_predictions=True,
                                distributed=distributed, progress=False)  # fmt: skip
    rev = repsim.reverse_predictivity({"a": x[:, :9]}, y, alphas=ALPHAS, distributed=distributed, progress=False)
    return fwd.table, fwd.predictions, fwd.alphas, rev.table, fwd.plans["a"].n_targets


def _worker(rank, world, init_file, result_file):
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        torch.save(_runs(), result_file + str(rank))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        got = [torch.load(result_file + str(r), weights_only=False) for r in range(2)]
    table, preds, alphas, rev, _ = _runs()
    for rank in range(2):
        g_table, g_preds, g_alphas, g_rev, share = got[rank]
        assert share == 4  # each rank planned for its share (at most 4) of the 7 targets, not all
        assert list(g_table["target"]) == list(table["target"]) and list(g_table["layer"]) == list(table["layer"])
        assert np.abs(g_table["score"].to_numpy() - table["score"].to_numpy()).max() < 1e-10
        assert np.abs(g_rev["score"].to_numpy() - rev["score"].to_numpy()).max() < 1e-10
        for layer in ("a", "b"):
            assert np.abs(g_preds[layer] - preds[layer]).max() < 1e-10
            assert np.array_equal(g_alphas[layer], alphas[layer])
