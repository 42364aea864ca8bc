"""compare under a 2-process gloo group equals one process's run to 1e-10 (float64)."""

import os
import tempfile

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, DistributedSampler, TensorDataset

import repsim
from repsim.core import distributed as D

MEASURES = ["linear_cka", "debiased_cka", "rsa", "kernel_cka"]
SAMPLE_CAP = 9  # fewer than n: the capped measures must pick the same samples in the same order


def _models():
    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(5, 6), torch.nn.Tanh(), torch.nn.Linear(6, 4)).double()
    b = torch.nn.Sequential(torch.nn.Linear(5, 3), torch.nn.Sigmoid(), torch.nn.Linear(3, 7)).double()
    return a, b


def _wide_models():
    """Layers wider than the 13 samples: the memory plan stores the features (Gram-space CKA/RSA)."""
    torch.manual_seed(1)
    a = torch.nn.Sequential(torch.nn.Linear(5, 60), torch.nn.Tanh(), torch.nn.Linear(60, 50)).double()
    b = torch.nn.Sequential(torch.nn.Linear(5, 40), torch.nn.Sigmoid(), torch.nn.Linear(40, 70)).double()
    return a, b


def _wide_run(loader):
    a, b = _wide_models()
    measures = ["linear_cka", "debiased_cka", "rsa", "concentricity_difference"]
    return repsim.compare(a, b, loader, layers_a=["0", "2"], layers_b=["0", "2"], measures=measures, progress=False)


KNN = ["mutual_knn", "jaccard_knn", "cknna"]


def _knn_run(loader):
    """Neighbour measures on every rank's gathered samples, calibrated (the null relabels the lists)."""
    a, b = _models()
    return repsim.compare(a, b, loader, layers_a=["0", "2"], layers_b=["1", "2"], measures=KNN, progress=False,
                          measure_options={m: {"k": 3} for m in KNN}, inference={"calibrate": 19})  # fmt: skip


def _data(n):
    g = torch.Generator().manual_seed(3)
    return TensorDataset(torch.randn(n, 5, generator=g, dtype=torch.float64), torch.arange(n) % 3)


def _run(loader, **kw):
    a, b = _models()
    return repsim.compare(
        a,
        b,
        loader,
        layers_a=["0", "2"],
        layers_b=["1", "2"],
        measures=MEASURES,
        sample_cap=SAMPLE_CAP,
        progress=False,
        **kw,
    )


def _cases(rank, world):
    """(name, loader) of this rank, for each case."""
    out = {}
    for shuffle in (False, True):
        data = _data(13)  # 13 = 2 * 7 - 1: one padding repeat on rank 1
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=shuffle, seed=5)
        out[f"sampler_shuffle={shuffle}"] = DataLoader(data, batch_size=3, sampler=sampler)
    # One batch only: rank 1 receives no sample at all.
    batches = [(_data(7).tensors[0], _data(7).tensors[1])]
    out["iterable_empty_rank"] = D.shard(batches, rank, world)
    uneven = [tuple(t[i : i + 4] for t in _data(11).tensors) for i in range(0, 11, 4)]
    out["iterable_uneven"] = D.shard(uneven, rank, world)
    return out


def _reference(name):
    if name.startswith("sampler"):
        data = _data(13)
        order = list(DistributedSampler(data, num_replicas=1, rank=0, shuffle=name.endswith("True"), seed=5))
        return _run(DataLoader(data, batch_size=3, sampler=order))
    if name == "iterable_empty_rank":
        return _run([(_data(7).tensors[0], _data(7).tensors[1])])
    return _run([tuple(t[i : i + 4] for t in _data(11).tensors) for i in range(0, 11, 4)])


def _probe_loaders(rank, world):
    """Train and test loaders for probes.evaluate: 3 separable classes, uneven shards (61 and 31 samples)."""
    loaders = []
    for n, seed in ((61, 1), (31, 2)):
        g = torch.Generator().manual_seed(seed)
        labels = torch.arange(n) % 3
        x = torch.randn(n, 5, generator=g, dtype=torch.float64) + 2.0 * torch.nn.functional.one_hot(labels, 5)
        data = TensorDataset(x, labels)
        sampler = DistributedSampler(data, num_replicas=world, rank=rank, shuffle=True, seed=seed)
        loaders.append(DataLoader(data, batch_size=8, sampler=sampler))
    return loaders


def _probe_table(train_loader, test_loader):
    from probes import evaluate

    a, _ = _models()
    return evaluate(a, train_loader, test_loader, "0", device="cpu", shots=(1, 3), episodes=20, progress=False)


def _worker(rank, world, init_file, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        results = {name: _run(loader).table for name, loader in _cases(rank, world).items()}
        a, b = _models()
        many_loader = _cases(rank, world)["sampler_shuffle=True"]
        results["many"] = {
            m: repsim.compare_many([a, b, a], many_loader, layers=["2"], measures=[m], progress=False).matrix(m)
            for m in ("linear_cka", "rsa")
        }
        results["features"] = repsim.extract_features(a, many_loader, layers=["0", "2"], progress=False)
        results["wide"] = _wide_run(many_loader).table
        results["knn"] = _knn_run(many_loader).table
        results["probes"] = _probe_table(*_probe_loaders(rank, world))
        rank0_only = _run(_cases(rank, world)["sampler_shuffle=False"], result_on="rank0")
        if rank == 1:
            assert rank0_only is None
        with pytest.raises(ValueError, match="not sharded"):
            _run(DataLoader(_data(8), batch_size=4))
        # NaN in one rank's batch: every rank refuses together (one collective in finish), none hangs
        bad = [tuple(t[i : i + 4] for t in _data(11).tensors) for i in range(0, 11, 4)]
        bad[1] = (bad[1][0] * float("nan"), bad[1][1])
        with pytest.raises(ValueError, match=r"NaN or Inf in the features of model_a layer '0' \(batch \d on rank"):
            _run(D.shard(bad, rank, world))
        torch.save(results, result_file + str(rank))
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_processes_equal_one_process():
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "result.pt")
        mp.spawn(_worker, args=(2, init_file, result_file), nprocs=2, join=True)
        got = [torch.load(result_file + str(r), weights_only=False) for r in range(2)]
    a, b = _models()
    data = _data(13)
    order = list(DistributedSampler(data, num_replicas=1, rank=0, shuffle=True, seed=5))
    for m in ("linear_cka", "rsa"):
        expected = repsim.compare_many(
            [a, b, a], DataLoader(data, batch_size=3, sampler=order), layers=["2"], measures=[m], progress=False
        ).matrix(m)
        for rank in range(2):
            assert (got[rank]["many"][m] - expected).abs().to_numpy().max() < 1e-10, (m, rank)
    feats, labels = repsim.extract_features(
        a, DataLoader(data, batch_size=3, sampler=order), layers=["0", "2"], progress=False
    )
    for rank in range(2):
        got_feats, got_labels = got[rank]["features"]
        assert torch.equal(got_labels, labels)
        for layer in ("0", "2"):
            assert torch.allclose(got_feats[layer], feats[layer], rtol=0, atol=1e-12)
    # probes.evaluate: sharded extraction, then every rank probes all features in the global order
    expected_probes = _probe_table(*_probe_loaders(0, 1))
    for rank in range(2):
        table = got[rank]["probes"]
        assert list(table["probe"]) == list(expected_probes["probe"]) and len(table) >= 4
        assert list(table["setting"]) == list(expected_probes["setting"])
        assert (table["value"] - expected_probes["value"]).abs().max() < 1e-10, rank
    # the stored route: every rank's features gathered in the global order, Gram-space CKA/RSA
    wide = _wide_run(DataLoader(data, batch_size=3, sampler=order)).table
    routes = wide.groupby("measure")["route"].first()
    assert routes["linear_cka"] == routes["debiased_cka"] == "stored", routes
    for rank in range(2):
        assert list(got[rank]["wide"]["route"]) == list(wide["route"])
        assert (got[rank]["wide"]["value"] - wide["value"]).abs().max() < 1e-10, rank
    # neighbour measures and their calibration (lists searched once, relabelled per permutation)
    knn = _knn_run(DataLoader(data, batch_size=3, sampler=order)).table
    assert set(KNN) <= set(knn["measure"]) and "calibrated" in knn
    for rank in range(2):
        for column in ("value", "calibrated"):
            assert (got[rank]["knn"][column] - knn[column]).abs().max() < 1e-10, (column, rank)
    for name in [k for k in got[0] if k not in ("many", "features", "probes", "wide", "knn")]:
        expected = _reference(name).table
        for rank in range(2):
            table = got[rank][name]
            assert list(table["measure"]) == list(expected["measure"]), name
            assert list(table["n"]) == list(expected["n"]), (name, rank)
            diff = (table["value"] - expected["value"]).abs().max()
            assert diff < 1e-10, (name, rank, diff)


def test_sampler_padding_is_dropped_and_keys_follow_global_order():
    data = _data(5)
    sampler = DistributedSampler(data, num_replicas=2, rank=1, shuffle=False)
    s = D.Shard(1, 2, sampler=sampler)
    keys, keep = s.keys(0, 0, 3)  # rank 1 sees positions 1, 3, 5; 5 is a padding repeat
    assert keys.tolist() == [1, 3, 5] and keep == 2
    s0 = D.Shard(0, 2, sampler=DistributedSampler(data, num_replicas=2, rank=0, shuffle=False))
    assert s0.keys(0, 0, 3)[1] == 3


def test_non_distributed_needs_no_group():
    assert not D.is_distributed()
    assert D.shard_of([1, 2], None).world == 1
    with pytest.raises(ValueError, match="rank must be"):
        D.shard([], rank=2, world=2)


@pytest.mark.parametrize("debiased", [False, True])
def test_streaming_cka_merge_with_shared_shift_equals_one_stream(debiased):
    g = torch.Generator().manual_seed(7)
    x, y = (
        torch.randn(30, 4, generator=g, dtype=torch.float64) + 50,
        torch.randn(30, 3, generator=g, dtype=torch.float64),
    )
    whole = repsim.StreamingLinearCKA(debiased=debiased)
    whole.update(x, y)
    parts = [repsim.StreamingLinearCKA(debiased=debiased) for _ in range(2)]
    for acc, rows in zip(parts, (slice(0, 11), slice(11, 30)), strict=True):
        acc.set_shift([x[:5].mean(0)], [y[:5].mean(0)])
        acc.update(x[rows], y[rows])
    parts[0].merge(parts[1])
    assert abs(float(parts[0].compute() - whole.compute())) < 1e-12
    other = repsim.StreamingLinearCKA(debiased=debiased)
    other.update(x[:8], y[:8])
    with pytest.raises(ValueError, match="same shift"):
        parts[0].merge(other)
