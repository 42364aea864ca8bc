"""Many models from stored features: FeatureSets, other tools' files, joins on ids, the atlas, resuming."""

import json
import os
import subprocess
import sys
import tempfile
import textwrap

import numpy as np
import pandas as pd
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch.utils.data import DataLoader, TensorDataset

import repsim
from repsim.pipeline.atlas import aggregate_grid
from tests.models import TinyConvNet, seeded

N, D = 60, 6


def _set(seed: int, layers=3, n=N, name=None, ids=None) -> repsim.FeatureSet:
    """Layers that share a latent (so that the atlas has structure), float32 like stored features."""
    g = torch.Generator().manual_seed(seed)
    z = torch.randn(n, 4, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    feats = {}
    for i in range(layers):
        mix = torch.randn(4, D, generator=g, dtype=torch.float64)
        feats[f"l{i}"] = (z @ mix + (0.5 + i) * torch.randn(n, D, generator=g, dtype=torch.float64)).float()
    return repsim.FeatureSet(feats, ids=ids, meta={"model": name or f"m{seed}"})


# -------------------------------------------------------------------------------- feature sets
def test_featureset_round_trip_is_memory_mapped(tmp_path):
    fs = repsim.FeatureSet({"a": np.ones((4, 3), np.float32), "b": torch.arange(8.0).reshape(4, 2)},
                           ids=["w", "x", "y", "z"], meta={"model": "toy", "arch": "resnet18"})
    back = repsim.load_features(fs.save(tmp_path / "fs"))
    assert back.layers == ["a", "b"] and back.ids == ["w", "x", "y", "z"] and back.meta["arch"] == "resnet18"
    assert torch.equal(back["b"], fs["b"]) and back.dims == {"a": 3, "b": 2}
    assert isinstance(back._features["a"], np.memmap)  # read lazily
    with pytest.raises(ValueError, match="same number of rows"):
        repsim.FeatureSet({"a": np.ones((4, 3)), "b": np.ones((5, 3))})
    with pytest.raises(ValueError, match="3 entries for 4 samples"):
        repsim.FeatureSet({"a": np.ones((4, 3))}, ids=[1, 2, 3])


def test_extract_features_out_writes_a_featureset_with_ids_and_metadata(tmp_path):
    model = seeded(TinyConvNet, 0)
    x = torch.randn(50, 1, 8, 8, generator=torch.Generator().manual_seed(0))
    loader = DataLoader(TensorDataset(x, torch.arange(50) % 3), batch_size=16)
    feats, labels = repsim.extract_features(model, loader, layers=["block1", "block2"], progress=False,
                                            out=tmp_path / "fs", ids=lambda i: f"img{i:03d}", name="tiny")
    fs = repsim.load_features(tmp_path / "fs")
    assert fs.ids[:2] == ["img000", "img001"] and len(fs.ids) == 50
    assert fs.meta["model"] == "tiny" and len(fs.meta["weights_sha256"]) == 64
    assert fs.meta["layers"] == ["block1", "block2"]
    assert fs.meta["repsim_version"] == repsim.__version__ and fs.meta["data_fingerprint"]
    plain, plain_labels = repsim.extract_features(model, loader, layers=["block1", "block2"], progress=False)
    for k in ("block1", "block2"):
        assert torch.equal(fs[k], plain[k]) and torch.equal(feats[k], plain[k])
    assert torch.equal(fs.labels, plain_labels) and torch.equal(labels, plain_labels)
    with pytest.warns(DeprecationWarning, match="keyword-only"):
        repsim.extract_features(model, loader, ["block1"], "mean", progress=False)


# -------------------------------------------------------------------------------- joins
def test_an_id_shuffled_featureset_gives_the_same_values():
    a, b = _set(0), _set(1)
    perm = torch.randperm(N, generator=torch.Generator().manual_seed(3)).numpy()
    shuffled = repsim.FeatureSet({k: b[k][perm] for k in b.layers}, ids=[b.ids[i] for i in perm], meta=b.meta)
    kw = dict(measures=["linear_cka", "mutual_knn"], progress=False)
    same = repsim.compare_many([a, b], **kw).table
    moved = repsim.compare_many([a, shuffled], **kw).table
    assert np.abs(same["value"].to_numpy() - moved["value"].to_numpy()).max() < 1e-12
    wrong = repsim.compare_many([a, repsim.FeatureSet({k: b[k][perm] for k in b.layers})], **kw).table  # ids lost
    assert np.abs(same["value"].to_numpy() - wrong["value"].to_numpy()).max() > 1e-3


def test_missing_and_duplicate_ids_refuse_with_counts_and_inner_join_drops():
    a = _set(0)
    b = repsim.FeatureSet({k: a[k][5:] for k in a.layers}, ids=list(range(5, N)))
    c = repsim.FeatureSet({k: a[k] for k in a.layers}, ids=[0, 0, *range(2, N)])
    with pytest.raises(ValueError, match=r"5 of a's 60 ids are missing from b, 0 of b's 55"):
        repsim.compare_many([a, b], names=["a", "b"], progress=False)
    with pytest.raises(ValueError, match="b has 1;"):
        repsim.compare_many([a, c], names=["a", "b"], progress=False)
    with pytest.warns(UserWarning, match=r"comparing 55 common ids; dropped \{'a': 5\}"):
        inner = repsim.compare_many([a, b], names=["a", "b"], join="inner", layers=["l0"], progress=False)
    assert inner.table["n"].iloc[0] == 55
    expected = repsim.linear_cka(a["l0"][5:].double(), b["l0"].double()).item()
    assert inner.matrix("linear_cka").loc["a", "b"] == pytest.approx(expected, abs=1e-6)


# -------------------------------------------------------------------------------- other tools' files
def _check(fs, expected: dict, ids=None):
    assert sorted(fs.layers) == sorted(expected)
    for k, v in expected.items():
        assert np.allclose(fs[k].numpy(), v)
    if ids is not None:
        assert fs.ids == ids


def test_plain_formats_round_trip(tmp_path):
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((10, 4)).astype(np.float32), rng.standard_normal((10, 3)).astype(np.float32)
    np.save(tmp_path / "layer.npy", x)
    _check(repsim.load_features(tmp_path / "layer.npy"), {"layer": x})
    np.savez(tmp_path / "f.npz", a=x, b=y, ids=np.arange(100, 110))
    _check(repsim.load_features(tmp_path / "f.npz"), {"a": x, "b": y}, list(range(100, 110)))
    from safetensors.torch import save_file

    save_file({"a": torch.from_numpy(x), "b": torch.from_numpy(y)}, str(tmp_path / "f.safetensors"))
    _check(repsim.load_features(tmp_path / "f.safetensors", layers=["b"]), {"b": y})
    torch.save({"a": torch.from_numpy(x), "ids": list(range(10))}, tmp_path / "f.pt")
    _check(repsim.load_features(tmp_path / "f.pt"), {"a": x}, list(range(10)))
    h5py = pytest.importorskip("h5py")
    with h5py.File(tmp_path / "f.h5", "w") as f:
        f.create_dataset("blocks/a", data=x)
        f.create_dataset("b", data=y)
        f.create_dataset("ids", data=np.array([f"s{i}" for i in range(10)], dtype="S"))
    _check(repsim.load_features(tmp_path / "f.h5"), {"blocks/a": x, "b": y}, [f"s{i}" for i in range(10)])


def test_thingsvision_net2brain_and_platonic_rep_layouts(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((6, 5)).astype(np.float32)
    names = [f"img_{i}.jpg" for i in range(6)]
    # thingsvision: save_features(features, out_path, "npy") -> out_path/features.npy; its dataset's file_names.txt
    tv = tmp_path / "thingsvision" / "fc7"
    tv.mkdir(parents=True)
    np.save(tv / "features.npy", x)
    (tv / "file_names.txt").write_text("\n".join(names) + "\n")
    _check(repsim.load_features(tv), {"fc7": x}, names)
    split = tmp_path / "tv_split"  # split_features: features_01.npy, features_02.npy ... in order
    split.mkdir()
    np.save(split / "features_02.npy", x[3:])
    np.save(split / "features_01.npy", x[:3])
    _check(repsim.load_features(split), {"tv_split": x})
    h5py = pytest.importorskip("h5py")
    tvh = tmp_path / "tvh"
    tvh.mkdir()
    with h5py.File(tvh / "features.hdf5", "w") as f:
        f.create_dataset("features", data=x)
    _check(repsim.load_features(tvh), {"tvh": x})
    # Net2Brain: consolidate_per_layer -> {layer}.npz, one (1, ...) entry per image keyed by its name
    nb = tmp_path / "net2brain"
    nb.mkdir()
    stems = [f"img_{i}" for i in range(6)]
    conv = rng.standard_normal((6, 2, 2, 2)).astype(np.float32)
    np.savez_compressed(nb / "layer1.npz", **{s: x[i][None] for i, s in enumerate(stems)})
    np.savez_compressed(nb / "layer2.npz", **{s: conv[i][None] for i, s in enumerate(stems)})
    _check(repsim.load_features(nb), {"layer1": x, "layer2": conv.reshape(6, -1)}, stems)
    # platonic-rep: torch.save({"feats": (N, L, D), "num_params": ...}, path)
    stacked = torch.from_numpy(rng.standard_normal((6, 3, 4)).astype(np.float32))
    torch.save({"feats": stacked, "num_params": 1234, "loss": torch.tensor(2.5)}, tmp_path / "vit_pool-none.pt")
    pr = repsim.load_features(tmp_path / "vit_pool-none.pt")
    _check(pr, {str(i): stacked[:, i].numpy() for i in range(3)})
    assert pr.meta["num_params"] == 1234 and pr.meta["layout"] == "platonic-rep"


# -------------------------------------------------------------------------------- the atlas
def test_aggregates_equal_a_hand_loop_over_measure_grid():
    sets = [_set(0, layers=3), _set(1, layers=2), _set(2, layers=3)]
    res = repsim.compare_many(sets, measures=["linear_cka", "mutual_knn"], measure_options={"mutual_knn": {"k": 5}},
                              progress=False)
    assert set(res.table.columns) >= {"model_a", "layer_a", "model_b", "layer_b", "measure", "value", "n", "route"}
    for m, opts in (("linear_cka", {}), ("mutual_knn", {"k": 5})):
        for how in ("max", "diagonal", "best_match", lambda g: g.median()):
            mat = res.matrix(m, aggregate=how)
            for i, a in enumerate(sets):
                for j, b in enumerate(sets):
                    g = repsim.measure_grid([a[k] for k in a.layers], [b[k] for k in b.layers], m, **opts)
                    if how == "max":
                        want = g.max()
                    elif how == "diagonal":
                        rows = g.shape[0]
                        want = torch.stack([g[r, round(r * (g.shape[1] - 1) / (rows - 1))] for r in range(rows)]).mean()
                    elif how == "best_match":
                        want = (g.max(1).values.mean() + g.max(0).values.mean()) / 2
                    else:
                        want = g.median()
                    assert mat.iloc[i, j] == pytest.approx(want.item(), abs=1e-10), (m, how, i, j)
    grid = res.grid("linear_cka", "m1", "m0")
    assert grid.shape == (2, 3) and list(grid.index) == ["l0", "l1"]


def test_aggregate_of_a_distance_takes_the_smallest():
    g = torch.tensor([[0.5, 0.2], [0.9, 0.4]], dtype=torch.float64)
    assert aggregate_grid(g, "max", larger_is_more_similar=False).item() == 0.2
    assert aggregate_grid(g, "best_match", larger_is_more_similar=False).item() == pytest.approx((0.3 + 0.35) / 2)


def test_calibrated_aggregate_and_the_deprecated_calibrate(tmp_path):
    sets = [_set(0, layers=2), _set(1, layers=2), repsim.FeatureSet({"l0": torch.randn(N, 3)}, meta={"model": "rnd"})]
    res = repsim.compare_many(sets, layers={"rnd": ["l0"]}, inference={"calibrate": 19}, progress=False)
    top = res.table[res.table["layer_a"] == "<max>"]
    assert len(top) == 3 and top["calibrated"].between(0, 1).all()
    cells = res.table[(res.table["layer_a"] != "<max>") & (res.table["model_a"] != res.table["model_b"])]
    assert cells["p_value"].notna().all()
    pair = cells[(cells["model_a"] == "m0") & (cells["model_b"] == "m1")]
    assert top.iloc[0]["value"] == pytest.approx(pair["value"].max(), abs=1e-12)
    cal = res.matrix("linear_cka", calibrated=True)
    assert cal.loc["m0", "m1"] > 0 and cal.loc["m0", "m1"] == cal.loc["m1", "m0"]
    with pytest.warns(DeprecationWarning):
        old = repsim.compare_many(sets[:2], layers=["l0"], calibrate=19, progress=False)
    assert "calibrated" in old.table


def test_the_planner_groups_models_and_refuses_what_cannot_fit():
    sets = [_set(s) for s in range(4)]
    whole = repsim.compare_many(sets, measures=["linear_cka", "rsa"], progress=False).table
    grouped = repsim.compare_many(sets, measures=["linear_cka", "rsa"], block_models=1, progress=False).table
    pd.testing.assert_frame_equal(whole, grouped, check_exact=False, atol=1e-12, rtol=0)
    with pytest.raises(repsim.MemoryBudgetError, match="atlas of 4 models"):
        repsim.compare_many(sets, memory="10KB", progress=False)


def test_asymmetric_measures_have_both_directions():
    sets = [_set(0, layers=2), _set(1, layers=2)]
    res = repsim.compare_many(sets, measures=["cycle_knn"], block_models=1, progress=False)
    ab, ba = res.grid("cycle_knn", "m0", "m1"), res.grid("cycle_knn", "m1", "m0")
    want = repsim.measure_grid([sets[1][k] for k in sets[1].layers], [sets[0][k] for k in sets[0].layers], "cycle_knn")
    assert np.allclose(ba.to_numpy(), want.numpy(), atol=1e-12) and not np.allclose(ab.to_numpy(), ba.to_numpy().T)


def test_a_killed_atlas_resumes_to_the_same_table(tmp_path):
    paths = [str(_set(s, name=f"m{s}").save(tmp_path / f"m{s}")) for s in range(4)]
    out = tmp_path / "atlas"
    script = textwrap.dedent(f"""
        import os, signal
        import repsim
        from repsim.pipeline import atlas
        write, count = atlas.atomic_write_text, [0]
        def dying(path, text):
            write(path, text)
            count[0] += "blocks" in str(path)
            if count[0] == 4:
                os.kill(os.getpid(), signal.SIGKILL)
        atlas.atomic_write_text = dying
        repsim.compare_many({paths!r}, measures=["linear_cka", "mutual_knn"], block_models=1, out={str(out)!r},
                            progress=False)
    """)
    env = {**os.environ, "PYTHONPATH": os.getcwd(), "OMP_NUM_THREADS": "1"}
    proc = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True, text=True, timeout=120)
    assert proc.returncode == -9, proc.stderr[-2000:]
    assert len(list((out / "blocks").glob("*.json"))) == 4 and not list(out.rglob("*.tmp"))
    from repsim.pipeline import atlas

    computed, original = [], atlas._unit_blocks

    def counting(job, ga, gb, same, done, cache):
        new = original(job, ga, gb, same, done, cache)
        computed.extend(new)
        return new

    atlas._unit_blocks = counting
    try:
        resumed = repsim.compare_many(paths, measures=["linear_cka", "mutual_knn"], block_models=1, out=out,
                                      progress=False)
    finally:
        atlas._unit_blocks = original
    assert len(computed) == 10 - 4  # 4 models: 10 pairs with the self pairs; 4 were on disk
    fresh = repsim.compare_many(paths, measures=["linear_cka", "mutual_knn"], progress=False)
    pd.testing.assert_frame_equal(resumed.table, fresh.table, check_exact=True)
    assert (out / "table.csv").exists() and json.loads((out / "atlas.json").read_text())["models"][0] == "m0"
    with pytest.raises(ValueError, match="another atlas"):
        repsim.compare_many(paths, measures=["rsa"], out=out, progress=False)


def _atlas_worker(rank, world, init_file, paths, result_file):
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world)
    try:
        res = repsim.compare_many(paths, measures=["linear_cka", "cycle_knn"], progress=False)
        res.table.to_pickle(f"{result_file}{rank}")
    finally:
        dist.barrier()
        dist.destroy_process_group()


def test_two_gloo_ranks_equal_one_process_for_the_atlas(tmp_path):
    paths = [str(_set(s, name=f"m{s}").save(tmp_path / f"m{s}")) for s in range(3)]
    with tempfile.TemporaryDirectory() as tmp:
        init_file, result_file = os.path.join(tmp, "init"), os.path.join(tmp, "table")
        mp.spawn(_atlas_worker, args=(2, init_file, paths, result_file), nprocs=2, join=True)
        tables = [pd.read_pickle(f"{result_file}{r}") for r in range(2)]
    one = repsim.compare_many(paths, measures=["linear_cka", "cycle_knn"], progress=False).table
    for table in tables:
        pd.testing.assert_frame_equal(table, one, check_exact=False, atol=1e-12, rtol=0)


# -------------------------------------------------------------------------------- the CLI
def test_cli_extract_then_many_from_features(tmp_path, capsys):
    from repsim.cli import main

    ckpts = [repsim.save_state_dict(seeded(TinyConvNet, s).state_dict(), tmp_path / f"c{s}.pt") for s in (0, 1)]
    for c in ckpts:
        assert main(["extract", str(c), "--arch", "tests.models:TinyConvNet", "--layers", "block1,block2",
                     "--max-samples", "80", "--out", str(tmp_path / "feats" / c.stem)]) == 0
    assert "FeatureSet" in capsys.readouterr().out
    out = tmp_path / "out"
    assert main(["many", "--features", str(tmp_path / "feats"), "--measures", "linear_cka", "rsa",
                 "--aggregate", "best_match", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "wrote:" in printed and str(out / "table.csv") in printed
    table = pd.read_csv(out / "table.csv")
    assert set(table["model_a"]) == {"c0", "c1"} and set(table["layer_a"]) == {"block1", "block2"}
    m = pd.read_csv(out / "matrix_rsa_best_match.csv", index_col=0)
    assert m.shape == (2, 2) and (out / "atlas_linear_cka_best_match.png").stat().st_size > 1000
    # checkpoints with --layers: the same atlas, extracted on the fly
    assert main(["many", *map(str, ckpts), "--arch", "tests.models:TinyConvNet", "--layers", "block1,block2",
                 "--max-samples", "80", "--out", str(tmp_path / "out2")]) == 0
    again = pd.read_csv(tmp_path / "out2" / "matrix_linear_cka_max.csv", index_col=0)
    stored = pd.read_csv(out / "table.csv")
    stored = stored[stored["measure"] == "linear_cka"].groupby(["model_a", "model_b"])["value"].max()
    assert again.loc["c0", "c1"] == pytest.approx(stored.loc[("c0", "c1")], abs=1e-12)
