"""Encoding models: ridge with α per target against scikit-learn's RidgeCV per training fold, known
signal recovered, ceilings against the Spearman–Brown formula, blocked = unblocked, refusals."""

import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold, ShuffleSplit
from torch.utils.data import DataLoader, TensorDataset

import repsim
from repsim.core.budget import MemoryBudgetError
from repsim.inference import encoding_plan
from repsim.inference.encoding_plan import check_plan

ALPHAS = np.logspace(-2, 5, 15)
pytestmark = pytest.mark.filterwarnings("ignore:.*the grid may be too narrow:RuntimeWarning")  # tested once below


def _data(n, d, t, seed=0, offset=3.0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, d)) + offset
    w = rng.normal(size=(d, t)) * 0.3
    y = x @ w + rng.normal(size=(n, t)) * np.linspace(0.5, 8, t) + 5.0
    return x, y


def _sklearn(x, y, folds, mode):
    preds, alphas = [], []
    for tr, te in folds:
        m = RidgeCV(alphas=ALPHAS, alpha_per_target=True, gcv_mode=mode).fit(x[tr], y[tr])
        preds.append(m.predict(x[te]))
        alphas.append(m.alpha_)
    return np.concatenate(preds), np.array(alphas)


@pytest.mark.parametrize("solver", ["dual", "primal"])
@pytest.mark.parametrize("shape", [(90, 240), (110, 12)])  # wider and narrower than a training fold
def test_alphas_predictions_and_scores_equal_sklearn_ridgecv_per_fold(solver, shape):
    x, y = _data(*shape, t=7)
    folds = list(KFold(5).split(x))
    expected_pred, expected_alpha = _sklearn(x, y, folds, "eigen" if solver == "dual" else "svd")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # grid edges: not the point here
        res = repsim.encoding_score(x, y, alphas=ALPHAS, cv=5, solver=solver, return_predictions=True, progress=False)
    assert np.array_equal(res.alphas["features"], expected_alpha)
    assert np.abs(res.predictions["features"] - expected_pred).max() < 1e-8
    held = y[res.test_indices]
    r = [np.corrcoef(expected_pred[:, j], held[:, j])[0, 1] for j in range(y.shape[1])]
    r2 = 1 - ((held - expected_pred) ** 2).sum(0) / ((held - held.mean(0)) ** 2).sum(0)
    assert np.abs(res.table["score"].to_numpy() - r).max() < 1e-8
    assert np.abs(res.table["r2"].to_numpy() - r2).max() < 1e-8
    assert list(res.table["target"]) == list(range(7)) and set(res.table["route"]) == {solver}


def test_splitter_and_explicit_folds_equal_sklearn():
    x, y = _data(80, 30, 4, seed=1)
    splitter = ShuffleSplit(n_splits=3, test_size=0.25, random_state=0)
    folds = list(splitter.split(x))
    expected, _ = _sklearn(x, y, folds, "svd")
    for cv in (splitter, folds):
        res = repsim.encoding_score(x, y, alphas=ALPHAS, cv=cv, return_predictions=True, progress=False)
        assert np.abs(res.predictions["features"] - expected).max() < 1e-8
        assert len(res.test_indices) == 3 * 20 and res.table["n"].tolist() == [60] * 4


def test_known_signal_recovers_the_true_r_within_sampling_error():
    g = torch.Generator().manual_seed(5)
    n, d = 3000, 8
    x = torch.randn(n, d, generator=g, dtype=torch.float64)
    signal = x @ torch.randn(d, 1, generator=g, dtype=torch.float64)
    signal = (signal - signal.mean()) / signal.std()
    true_r = torch.tensor([0.9, 0.6, 0.3, 0.1], dtype=torch.float64)
    noise_sd = torch.sqrt(1 / true_r**2 - 1)  # r = 1 / sqrt(1 + noise variance), unit signal variance
    y = signal + torch.randn(n, 4, generator=g, dtype=torch.float64) * noise_sd
    res = repsim.encoding_score(x, y, cv=5, progress=False)
    se = (1 - true_r**2) / n**0.5  # sampling sd of Pearson r
    err = (torch.tensor(res.table["score"].to_numpy()) - true_r).abs()
    assert (err < 4 * se + d / n).all(), (res.table, se)
    assert res.summary["median_score"].iloc[0] == pytest.approx(res.table["score"].median())


def test_blocked_memmapped_and_unblocked_runs_are_equal(tmp_path, monkeypatch):
    x, y = _data(60, 150, 9, seed=2)
    whole = repsim.encoding_score(x, y, alphas=ALPHAS, return_predictions=True, progress=False)
    path = tmp_path / "x.npy"
    np.save(path, x)
    mm = np.load(path, mmap_mode="r")
    monkeypatch.setattr(encoding_plan, "COLUMN_BLOCK_BYTES", 60 * 16 * 7)  # 7 feature columns per block
    blocked = repsim.encoding_score(mm, y, alphas=ALPHAS, block_size=2, return_predictions=True, progress=False)
    assert blocked.plans["features"].block_size == 2
    same = ["target", "alpha", "n", "route"]
    pd.testing.assert_frame_equal(whole.table[same], blocked.table[same])
    assert np.abs(whole.table[["score", "r2"]].to_numpy() - blocked.table[["score", "r2"]].to_numpy()).max() < 1e-12
    assert np.abs(whole.predictions["features"] - blocked.predictions["features"]).max() < 1e-10


def test_layers_share_folds_and_equal_single_runs():
    x, y = _data(70, 40, 3, seed=3)
    x2 = np.tanh(x[:, :25])
    both = repsim.encoding_score({"a": x, "b": x2}, y, alphas=ALPHAS, cv=4, progress=False)
    assert list(both.table["layer"]) == ["a"] * 3 + ["b"] * 3
    for name, feats in (("a", x), ("b", x2)):
        one = repsim.encoding_score(feats, y, alphas=ALPHAS, cv=4, progress=False).table
        got = both.table[both.table["layer"] == name]
        assert np.allclose(got["score"].to_numpy(), one["score"].to_numpy(), rtol=0, atol=1e-12)
    assert list(both.summary["layer"]) == ["a", "b"]


def test_float32_products_choose_the_float64_alphas():
    rng = np.random.default_rng(0)  # benchmarks/encoding.py's data at n=300, d=2000, t=200: ReLU features of a latent
    f32 = np.float32
    z = rng.normal(size=(300, 64)).astype(f32)
    x = z @ (rng.normal(size=(64, 2000)).astype(f32) / 8)
    x = np.maximum(x + 0.5 * rng.normal(size=(300, 2000)).astype(f32), 0)
    y = z @ rng.normal(size=(64, 200)).astype(f32) / 8
    y += rng.normal(size=(300, 200)).astype(f32) * np.linspace(0.5, 8, 200, dtype=f32)
    kw = dict(alphas=[10.0**k for k in range(-3, 9)], progress=False, return_predictions=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        exact = repsim.encoding_score(x, y, dtype=torch.float64, **kw)
        fast = repsim.encoding_score(x, y, **kw)
    # the part of y outside the features' span is exact (0 here), so tiny alphas are not mis-scored: with it
    # rounded from float32 products, 7 of 1000 choices here were alpha = 1e-3 where float64 picks 100
    assert np.array_equal(exact.alphas["features"], fast.alphas["features"])
    assert np.abs(exact.table["score"] - fast.table["score"]).max() < 1e-5


def test_near_ties_are_found():
    from repsim.measures.ridge import near_ties

    mse = torch.tensor([[1.0, 1.0, 2.0], [1.000001, 1.5, 1.0], [3.0, 3.0, 1.00000001]], dtype=torch.float64)
    assert near_ties(mse).tolist() == [True, False, True]


def test_projection_takes_the_primal_route_with_the_stated_gram_error():
    from repsim.inference.encoding import _projected
    from repsim.inference.encoding_data import Columns

    x, y = _data(60, 500, 3, seed=6)
    res = repsim.encoding_score(x, y, alphas=ALPHAS, projection=32, progress=False)
    assert set(res.table["route"]) == {"primal"} and res.plans["features"].n_features == 32
    again = repsim.encoding_score(x, y, alphas=ALPHAS, projection=32, progress=False)
    assert res.table.equals(again.table)  # seeded
    k = 256
    xp = _projected(Columns(x, "x"), k, 0, None).data.double()
    xc = torch.from_numpy(x - x.mean(0))
    norms = xc.norm(dim=1)
    rel = (xp @ xp.T - xc @ xc.T) / (norms[:, None] * norms[None, :])
    assert rel.pow(2).mean().sqrt() <= (2 / k) ** 0.5  # the standard error the plan states


def test_reverse_predictivity_is_encoding_with_roles_swapped():
    x, y = _data(70, 6, 20, seed=7)
    x[:, 2] = 1.5  # a dead unit: left out, with a warning
    with pytest.warns(RuntimeWarning, match="constant"):
        rev = repsim.reverse_predictivity({"layer": x}, y, alphas=ALPHAS, progress=False)
    assert list(rev.table["unit"]) == [0, 1, 3, 4, 5]
    keep = [0, 1, 3, 4, 5]
    fwd = repsim.encoding_score(y, x[:, keep], alphas=ALPHAS, progress=False).table
    assert np.abs(rev.table["score"].to_numpy() - fwd["score"].to_numpy()).max() < 1e-12


def test_split_half_ceiling_against_spearman_brown():
    g = np.random.default_rng(8)
    x = g.normal(size=(2, 50, 3)) + g.normal(size=(1, 50, 3))  # two repeats: one possible split
    table = repsim.split_half_ceiling(x, n_splits=5, kind="r2")
    r = np.array([np.corrcoef(x[0, :, j], x[1, :, j])[0, 1] for j in range(3)])
    assert np.allclose(table["split_half_r"], r, atol=1e-12)
    assert np.allclose(table["reliability"], 2 * r / (1 + r), atol=1e-12)
    assert np.allclose(table["ceiling"], table["reliability"])
    assert np.allclose(repsim.split_half_ceiling(x, n_splits=5)["ceiling"], np.sqrt(2 * r / (1 + r)))


def test_split_half_reliability_recovers_the_simulated_one():
    g = np.random.default_rng(9)
    reps, stimuli = 6, 600
    noise = np.array([0.5, 1.0, 2.0, 3.0])
    x = g.normal(size=(1, stimuli, 4)) + g.normal(size=(reps, stimuli, 4)) * noise
    table = repsim.split_half_ceiling(x, n_splits=40, seed=1)
    true = 1 / (1 + noise**2 / reps)  # reliability of the mean of all repeats
    se = (1 - true**2) / np.sqrt(stimuli) * 2  # generous: r's sampling sd, through Spearman-Brown
    assert (np.abs(table["reliability"] - true) < 4 * se).all(), table


def test_ceiled_is_raw_over_ceiling_and_never_clipped():
    scores = pd.DataFrame({"target": [0, 1, 2], "score": [0.3, 0.5, 0.2]})
    ceiling = pd.DataFrame({"target": [0, 1, 2], "ceiling": [0.6, 0.4, -0.1]})
    with pytest.warns(RuntimeWarning) as rec:
        out = repsim.ceil_scores(scores, ceiling)
    messages = " ".join(str(w.message) for w in rec)
    assert "exceed 1" in messages and "no positive ceiling" in messages
    assert out["ceiled"].iloc[0] == pytest.approx(0.5) and out["ceiled"].iloc[1] == pytest.approx(1.25)
    assert np.isnan(out["ceiled"].iloc[2]) and list(out["score"]) == [0.3, 0.5, 0.2]
    arr = repsim.ceil_scores(scores.iloc[:2], [0.6, 0.5])
    assert list(arr["ceiled"]) == pytest.approx([0.5, 1.0])


def test_memory_plan_refuses_with_options():
    plan = repsim.plan_encoding(22000, 148000, 52000, cv=5, memory="8GB")
    assert plan.route == "dual" and plan.peak_bytes > 8e9
    with pytest.raises(MemoryBudgetError, match="Options") as err:
        check_plan(plan)
    msg = str(err.value)
    assert "projection=" in msg and "sqrt(2/" in msg and "max_samples=" in msg
    x, y = _data(200, 300, 50, seed=10)
    with pytest.raises(MemoryBudgetError, match="over the budget"):
        repsim.encoding_score(x, y, memory="200KB", progress=False)
    full = repsim.plan_encoding(200, 300, 50, memory="1GB", dtype=torch.float64)
    assert full.block_size == 50
    fits = repsim.plan_encoding(200, 300, 50, memory=int(full.peak_bytes * 0.99), dtype=torch.float64)
    assert fits.fits and 1 <= fits.block_size < 50  # fewer targets per block under a tighter budget


@pytest.mark.parametrize(
    "kwargs, match",
    [
        ({"cv": 1}, "cv must be between"),
        ({"alphas": [1.0, -1.0]}, "alphas must be"),
        ({"solver": "qr"}, "solver must be one of"),
        ({"cv": [(np.arange(10), np.arange(5, 15))]}, "disjoint"),
        ({"block_size": 0}, "block_size"),
    ],
)
def test_invalid_arguments_are_refused(kwargs, match):
    x, y = _data(40, 10, 3)
    with pytest.raises(ValueError, match=match):
        repsim.encoding_score(x, y, progress=False, **kwargs)


def test_invalid_data_is_refused():
    x, y = _data(40, 10, 3)
    with pytest.raises(ValueError, match="same stimuli"):
        repsim.encoding_score(x[:30], y, progress=False)
    bad = y.copy()
    bad[3, 1] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        repsim.encoding_score(x, bad, progress=False)
    flat = y.copy()
    flat[:, 2] = 4.0
    with pytest.raises(ValueError, match="constant"):
        repsim.encoding_score(x, flat, progress=False)
    with pytest.raises(ValueError, match="constant"):
        repsim.encoding_score(np.full((40, 60), 0.1), y, progress=False)  # 0.1 * 40 / 40 != 0.1 in floats
    with pytest.raises(ValueError, match="3-D"):
        repsim.split_half_ceiling(np.zeros((4, 5)))


def test_compare_encoding_layer_by_region_table():
    torch.manual_seed(0)
    model = torch.nn.Sequential(torch.nn.Linear(6, 30), torch.nn.Tanh(), torch.nn.Linear(30, 40)).double()
    g = torch.Generator().manual_seed(1)
    inputs = torch.randn(90, 6, generator=g, dtype=torch.float64)
    with torch.no_grad():
        hidden = model[1](model[0](inputs))
    targets = torch.cat([hidden[:, :4], inputs[:, :4] ** 2], dim=1) + 0.3 * torch.randn(90, 8, generator=g,
                                                                                         dtype=torch.float64)
    regions = ["V1"] * 4 + ["IT"] * 4
    loader = DataLoader(TensorDataset(inputs), batch_size=16)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)
        out = repsim.compare_encoding(model, loader, targets.numpy(), layers=["0", "1", "2"], regions=regions,
                                      ceiling=np.full(8, 0.9), n_resamples=50, progress=False)
    table = out.table
    assert len(table) == 6 and set(table["region"]) == {"V1", "IT"}
    assert (table["ci_low"] <= table["ceiled"] + 1e-12).all() and (table["ceiled"] <= table["ci_high"] + 1e-12).all()
    assert np.allclose(table["ceiled"], table["score"] / 0.9)
    assert out.best["V1"] in ("1", "2") and table.groupby("region")["p_best"].sum().round(12).eq(1).all()
    assert table.groupby("region")["best"].sum().eq(1).all()
    assert len(out.targets) == 24 and {"region", "ceiling", "ceiled"} <= set(out.targets.columns)


def test_a_grid_too_narrow_is_warned_and_ceiled_keeps_the_raw_score():
    x, y = _data(60, 100, 4, seed=12)
    with pytest.warns(RuntimeWarning, match="grid may be too narrow"):
        res = repsim.encoding_score(x, y, alphas=[1e-3, 1e-2], progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)  # ceiled > 1: tested above
        ceiled = res.ceiled(np.full(4, 0.5))
    assert np.allclose(ceiled["ceiled"], ceiled["score"] / 0.5) and (ceiled["score"] == res.table["score"]).all()
