import numpy as np
import pandas as pd
import pytest
import torch

import repsim
from repsim.networks.features import extract_features
from tests.models import TinyConvNet, digits_batches, seeded


@pytest.fixture(scope="module")
def batches():
    return digits_batches(200, 50)


def test_table_shape_and_columns(batches):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(a, b, batches, layers_a=["block1", "block2"], layers_b=["block2", "head"], progress=False)
    assert list(res.table.columns) == ["layer_a", "layer_b", "measure", "value", "n", "route"]
    assert len(res.table) == 3 * 2 * 2
    assert set(res.table["n"]) == {200}
    m = res.matrix("debiased_cka")
    assert list(m.index) == ["block1", "block2"] and list(m.columns) == ["block2", "head"]


def test_streaming_compare_equals_one_shot(batches):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(
        a,
        b,
        batches,
        layers_a=["block1", "block2"],
        layers_b=["block2"],
        measures=["linear_cka", "debiased_cka", "rsa", "kernel_cka"],
        progress=False,
    )
    fa, _ = extract_features(a, batches, layers=["block1", "block2"], progress=False)
    fb, _ = extract_features(b, batches, layers=["block2"], progress=False)
    for (la, lb), row in res.table.set_index(["layer_a", "layer_b"]).groupby(level=[0, 1]):
        values = row.set_index("measure")["value"]
        x, y = fa[la].double(), fb[lb].double()  # compare's products run in float64 by default
        assert values["linear_cka"] == pytest.approx(repsim.linear_cka(x, y).item(), abs=1e-10)
        assert values["debiased_cka"] == pytest.approx(repsim.linear_cka(x, y, debiased=True).item(), abs=1e-10)
        assert values["rsa"] == pytest.approx(repsim.rsa(x, y).item(), abs=1e-10)
        assert values["kernel_cka"] == pytest.approx(repsim.kernel_cka(x, y).item(), abs=1e-10)


def test_same_model_gives_unit_diagonal(batches):
    a = seeded(TinyConvNet, 0)
    res = repsim.compare(a, a, batches, progress=False)
    for measure in res.measures:
        assert np.allclose(np.diag(res.matrix(measure).to_numpy()), 1.0, atol=1e-9), measure


def test_two_models_from_same_seed_are_identical(batches):
    a, b = seeded(TinyConvNet, 7), seeded(TinyConvNet, 7)
    res = repsim.compare(a, b, batches, progress=False)
    for measure in ("linear_cka", "debiased_cka", "rsa"):
        assert np.allclose(np.diag(res.matrix(measure).to_numpy()), 1.0, atol=1e-9)
    assert repsim.weight_distance(a, b).mean_relative == 0.0


@pytest.mark.parametrize("out", ["tuple", "dict"])
def test_models_returning_tuples_and_dicts(batches, out):
    a = seeded(TinyConvNet, 0, out=out)
    b = seeded(TinyConvNet, 0)
    res = repsim.compare(a, b, batches, measures=["linear_cka"], progress=False)
    assert np.allclose(np.diag(res.matrix().to_numpy()), 1.0, atol=1e-9)


def test_loaders_of_tensors_and_dicts(batches):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    ref = repsim.compare(a, b, batches, measures=["linear_cka"], progress=False).table["value"]
    tensors = [x for x, _ in batches]
    dicts = [{"image": x, "label": y} for x, y in batches]
    for loader in (tensors, dicts):
        got = repsim.compare(a, b, loader, measures=["linear_cka"], progress=False).table["value"]
        assert np.allclose(got, ref, atol=1e-12)


def test_max_samples_and_sample_cap(batches):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(a, b, batches, measures=["linear_cka", "rsa"], max_samples=120, sample_cap=60, progress=False)
    n = res.table.groupby("measure")["n"].first()
    assert n["linear_cka"] == 120 and n["rsa"] == 60


def test_heatmap_and_csv(batches, tmp_path):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(a, b, batches, measures=["linear_cka", "frobenius_gap"], progress=False)
    ax = res.heatmap("linear_cka")
    assert ax.get_title() == "linear_cka"
    path = res.to_csv(tmp_path / "out" / "c.csv")
    assert pd.read_csv(path).shape == res.table.shape
    with pytest.raises(ValueError, match="not in this comparison"):
        res.matrix("rsa")


def test_unknown_measure():
    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare(TinyConvNet(), TinyConvNet(), [], measures=["cca"])


def test_memory_of_streaming_measures_does_not_grow_with_data():
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    # 40 batches of fresh data: streaming state is sized by feature dims only
    gen = torch.Generator().manual_seed(0)
    loader = [torch.randn(32, 1, 8, 8, generator=gen) for _ in range(40)]
    res = repsim.compare(a, b, loader, measures=["linear_cka"], progress=False)
    assert res.table["n"].iloc[0] == 1280


def test_extract_features_labels(batches):
    feats, y = extract_features(seeded(TinyConvNet, 0), batches, layers="block2", progress=False)
    assert feats["block2"].shape == (200, 16) and y.shape == (200,)


def test_compare_many_matches_pairwise(tmp_path, batches):
    models = [seeded(TinyConvNet, s) for s in range(3)]
    m = repsim.compare_many(models, batches, layers=["block2"], progress=False).matrix("linear_cka")
    assert m.shape == (3, 3) and np.allclose(np.diag(m.to_numpy()), 1.0)
    fa, _ = extract_features(models[0], batches, layers=["block2"], progress=False)
    fb, _ = extract_features(models[2], batches, layers=["block2"], progress=False)
    assert m.iloc[0, 2] == pytest.approx(repsim.linear_cka(fa["block2"], fb["block2"]).item(), abs=1e-10)
    # checkpoints with an on-disk feature cache
    paths = []
    for i, model in enumerate(models):
        paths.append(repsim.save_state_dict(model.state_dict(), tmp_path / f"m{i}.pt"))
    cache = tmp_path / "cache"
    kw = dict(layers=["block2"], arch=TinyConvNet, cache_dir=cache, progress=False)
    first = repsim.compare_many(paths, batches, **kw).matrix("linear_cka")
    assert len(list(cache.iterdir())) == 3
    second = repsim.compare_many(paths, batches, **kw).matrix("linear_cka")
    assert np.allclose(first.to_numpy(), m.to_numpy(), atol=1e-12) and np.allclose(second, first)


def test_compare_accepts_the_whole_registry(batches):
    """Every registered measure through compare (on the logit layer: block2 has a dead ReLU unit,
    which the correlation-match measures rightly refuse): streaming ones over all samples equal the
    one-shot value on the extracted features; capped ones equal it on the first sample_cap samples;
    functional ones compare the logits (and labels)."""
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    names = [n for n in repsim.list_measures()["name"] if n not in ("rtd", "imd")]  # slow; tested alone
    options = {"svcca": {"variance": 0.95}}
    res = repsim.compare(
        a,
        b,
        batches,
        layers_a=["head"],
        layers_b=["head"],
        measures=names,
        sample_cap=120,
        measure_options=options,
        progress=False,
    )
    fa, labels = extract_features(a, batches, layers=["head"], progress=False)
    fb, _ = extract_features(b, batches, layers=["head"], progress=False)
    fa, fb = fa["head"].double(), fb["head"].double()  # compare's products run in float64 by default
    table = res.table.set_index("measure")
    assert set(table.index) == set(names)
    for name in names:
        info = repsim.get_measure(name)
        row = table.loc[name]
        if info.needs_outputs:
            extra = {"labels": labels[:120]} if info.needs_labels else {}
            want = repsim.measure(fa[:120], fb[:120], name, **extra)
            assert row["layer_a"] == "<output>" and row["n"] == 120
        elif info.streaming:
            want = repsim.measure(fa, fb, name, **options.get(name, {}))
            assert row["n"] == 200, name
        else:
            want = repsim.measure(fa[:120], fb[:120], name, **options.get(name, {}))
            assert row["n"] == 120, name
        assert abs(row["value"] - float(want)) < 1e-9 * max(1.0, abs(float(want))), name


def test_compare_measure_errors(batches):
    a = seeded(TinyConvNet, 0)
    with pytest.raises(ValueError, match="unknown measure"):
        repsim.compare(a, a, batches, measures=["nope"], progress=False)
    with pytest.raises(ValueError, match="not requested"):
        repsim.compare(a, a, batches, measures=["svcca"], measure_options={"gulp": {"lam": 1.0}}, progress=False)


def test_compare_many_takes_any_registered_measure(batches):
    models = [seeded(TinyConvNet, s) for s in range(3)]
    table = repsim.compare_many(models, batches, layers=["block2"], measures=["procrustes"], progress=False)
    table = table.matrix("procrustes")
    feats = [extract_features(m, batches, layers=["block2"], progress=False)[0]["block2"] for m in models]
    assert table.values[0, 1] == pytest.approx(float(repsim.procrustes(feats[0], feats[1])), abs=1e-10)
    assert np.allclose(np.diag(table.values), 0.0)
    with pytest.raises(ValueError, match="compares model outputs"):
        repsim.compare_many(models, batches, layers=["block2"], measures=["jsd"], progress=False)


def test_compare_with_inference_columns_and_marked_heatmap(batches, tmp_path):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(
        a,
        b,
        batches,
        layers_a=["block1", "block2"],
        layers_b=["block2"],
        measures=["debiased_cka", "rsa"],
        sample_cap=120,
        inference={"permutations": 99, "bootstrap": 50, "adjust": "bh"},
        progress=False,
    )
    for col in ("p_value", "p_adjusted", "ci_low", "ci_high", "n_inference"):
        assert col in res.table and res.table[col].notna().all()
    assert set(res.table["n_inference"]) == {120}
    assert (res.table["p_adjusted"] >= res.table["p_value"]).all()
    assert (res.table["ci_low"] <= res.table["ci_high"]).all()
    ax = res.heatmap("rsa")
    assert "not significant" in ax.get_title()
    with pytest.raises(ValueError, match="inference takes the keys"):
        repsim.compare(a, b, batches, inference={"perms": 10}, progress=False)
