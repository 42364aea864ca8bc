"""RDMs of brains and models: distances, comparators, noise ceilings, model fitting and evaluation.

References are written from the formulas (float64 numpy, brute force where that is the definition);
rsatoolbox's own values on the 92-image data are recorded by benchmarks/brain.py."""

import itertools
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.stats
import torch
from scipy.spatial.distance import squareform

import repsim
from repsim.inference.rdm_models import ceilings, resample_stimuli
from repsim.measures.rdms import ledoit_wolf

DATA = Path(__file__).parent / "data" / "kriegeskorte92"
RECORDED = DATA / "rsatoolbox_values.json"
N_BOOT = 400  # repsim's resamples against rsatoolbox's recorded ones (keeps the test to seconds)


def _rand_rdms(k, n, seed=0, ties=False):
    g = np.random.default_rng(seed)
    v = g.random((k, n * (n - 1) // 2))
    return np.round(v * 4) / 4 + 0.25 if ties else v


# ------------------------------------------------------------------------------------------ forms
def test_square_condensed_roundtrip_matches_scipy():
    v = _rand_rdms(3, 7)
    sq = repsim.to_square(v)
    for i in range(3):
        assert np.allclose(sq[i].numpy(), squareform(v[i]))
    assert np.allclose(repsim.to_condensed(sq).numpy(), v)
    assert np.allclose(repsim.compare_rdms(sq, v, method="pearson").numpy(), 1)
    with pytest.raises(ValueError, match="n\\(n-1\\)/2"):
        repsim.to_square(np.ones(5))


# ------------------------------------------------------------------------------------------ comparators
def _ref_tau(a, b, variant):
    con = dis = ta = tb = 0
    for i, j in itertools.combinations(range(len(a)), 2):
        s = np.sign(a[i] - a[j]) * np.sign(b[i] - b[j])
        con += s > 0
        dis += s < 0
        ta += a[i] == a[j]
        tb += b[i] == b[j]
    n0 = len(a) * (len(a) - 1) / 2
    return (con - dis) / (n0 if variant == "a" else np.sqrt((n0 - ta) * (n0 - tb)))


def _ref_whitened(a, b, n, centre):
    """a^T V^-1 b / sqrt(...) with V = Xi o Xi, Xi = C C^T (Diedrichsen et al. 2021), dense."""
    pairs = list(itertools.combinations(range(n), 2))
    c = np.zeros((len(pairs), n))
    for p, (i, j) in enumerate(pairs):
        c[p, i], c[p, j] = 1, -1
    xi = c @ c.T
    vinv = np.linalg.inv(xi * xi)
    if centre:
        a, b = a - a.mean(), b - b.mean()
    return a @ vinv @ b / np.sqrt((a @ vinv @ a) * (b @ vinv @ b))


@pytest.mark.parametrize("ties", [False, True])
def test_comparators_match_formulas(ties):
    n = 7
    a, b = _rand_rdms(2, n, seed=3, ties=ties)
    ra, rb = scipy.stats.rankdata(a), scipy.stats.rankdata(b)
    m = len(a)
    expected = {
        "pearson": np.corrcoef(a, b)[0, 1],
        "cosine": a @ b / np.linalg.norm(a) / np.linalg.norm(b),
        "spearman": np.corrcoef(ra, rb)[0, 1],
        "rho_a": 12 * ((ra - ra.mean()) @ (rb - rb.mean())) / (m**3 - m),
        "kendall_tau_a": _ref_tau(a, b, "a"),
        "kendall_tau_b": _ref_tau(a, b, "b"),
        "whitened_cosine": _ref_whitened(a, b, n, False),
        "whitened_pearson": _ref_whitened(a, b, n, True),
    }
    if not ties:  # without ties rho_a is Spearman's textbook 1 - 6 sum d^2 / (m^3 - m)
        assert np.isclose(expected["rho_a"], 1 - 6 * ((ra - rb) ** 2).sum() / (m**3 - m))
    for method, value in expected.items():
        got = float(repsim.compare_rdms(a, b, method=method))
        assert got == pytest.approx(value, abs=1e-12), method


@pytest.mark.parametrize("method", ["pearson", "spearman", "rho_a", "cosine", "whitened_cosine", "kendall_tau_a"])
def test_compare_broadcasts_models_by_subjects(method):
    models, subjects = _rand_rdms(3, 8, seed=1), _rand_rdms(4, 8, seed=2)
    grid = repsim.compare_rdms(models[:, None], subjects[None], method=method)
    assert grid.shape == (3, 4)
    loop = [[float(repsim.compare_rdms(m, s, method=method)) for s in subjects] for m in models]
    assert np.allclose(grid.numpy(), loop, atol=1e-12)


def test_compare_refuses_bad_input():
    v = _rand_rdms(1, 6)[0]
    with pytest.raises(ValueError, match="constant"):
        repsim.compare_rdms(v, np.ones_like(v), method="pearson")
    bad = v.copy()
    bad[0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        repsim.compare_rdms(bad, v)
    with pytest.raises(ValueError, match="same conditions"):
        repsim.compare_rdms(v, _rand_rdms(1, 7)[0])
    with pytest.raises(ValueError, match="method"):
        repsim.compare_rdms(v, v, method="kendall")


def test_masked_comparison_equals_dropping_the_pairs():
    """A bootstrap sample with a repeated stimulus: the pair of the stimulus with its copy is excluded;
    the rest equals the comparison on the sample's other pairs (whitened: weighted least squares)."""
    a, b = _rand_rdms(2, 6, seed=5)
    idx = torch.tensor([[0, 0, 1, 2, 4, 5]])
    (va, keep), (vb, _) = resample_stimuli(torch.tensor(a), idx), resample_stimuli(torch.tensor(b), idx)
    kept = keep[0].numpy()
    assert kept.sum() == 14 and not kept[0]
    from repsim.measures.rdms import compare_vectors

    for method in ("pearson", "spearman", "cosine", "kendall_tau_b"):
        got = float(compare_vectors(va[0], vb[0], method, keep[0]))
        want = _plain(va[0].numpy()[kept], vb[0].numpy()[kept], method)
        assert got == pytest.approx(want, abs=1e-12), method


def _plain(a, b, method):
    if method == "pearson":
        return np.corrcoef(a, b)[0, 1]
    if method == "spearman":
        return scipy.stats.spearmanr(a, b).statistic
    if method == "cosine":
        return a @ b / np.linalg.norm(a) / np.linalg.norm(b)
    return scipy.stats.kendalltau(a, b).statistic


# ------------------------------------------------------------------------------------------ distances
def _design(k=5, runs=4, p=6, seed=0, noise=1.0):
    g = np.random.default_rng(seed)
    true = g.normal(size=(k, p))
    x = np.concatenate([true + noise * g.normal(size=(k, p)) for _ in range(runs)])
    return true, x, np.repeat(np.arange(runs), k), np.tile(np.arange(k), runs)


def test_crossnobis_matches_fold_pair_sum():
    _, x, run, cond = _design()
    g = np.random.default_rng(1)
    a = g.normal(size=(6, 6))
    prec = a @ a.T + np.eye(6)
    got = repsim.rdm(torch.tensor(x), method="crossnobis", runs=run, conditions=cond, noise=prec).numpy()
    u = x.reshape(4, 5, 6)
    ref = np.zeros((5, 5))
    for i, j in itertools.combinations(range(5), 2):
        terms = [(u[ra, i] - u[ra, j]) @ prec @ (u[rb, i] - u[rb, j]) for ra in range(4) for rb in range(4) if ra != rb]
        ref[i, j] = ref[j, i] = np.mean(terms) / 6
    assert np.allclose(got, ref, atol=1e-12)
    maha = repsim.rdm(torch.tensor(x), method="mahalanobis", conditions=cond, noise=prec).numpy()
    um = u.mean(0)
    ref_m = np.array([[(um[i] - um[j]) @ prec @ (um[i] - um[j]) / 6 for j in range(5)] for i in range(5)])
    assert np.allclose(maha, ref_m, atol=1e-12)


def test_crossnobis_is_unbiased_and_can_be_negative():
    true, *_ = _design(k=4, p=8, seed=2)
    true[1] = true[0]  # two equal conditions: true distance 0
    g = np.random.default_rng(3)
    sims = []
    for _ in range(400):
        x = np.concatenate([true + g.normal(size=true.shape) for _ in range(3)])
        sims.append(repsim.rdm(torch.tensor(x), method="crossnobis", runs=np.repeat(np.arange(3), 4),
                               conditions=np.tile(np.arange(4), 3), noise="identity").numpy())  # fmt: skip
    sims = np.array(sims)
    d_true = ((true[:, None] - true[None]) ** 2).sum(-1) / 8
    se = sims.std(0) / np.sqrt(len(sims)) + 1e-12
    assert (np.abs(sims.mean(0) - d_true) < 4 * se + 1e-12).all()
    assert (sims[:, 0, 1] < 0).mean() > 0.3  # unbiased around 0: negative about half the time
    # the plain (non-crossvalidated) distance is biased upwards by the noise
    noisy = [torch.tensor(true + g.normal(size=true.shape) / np.sqrt(3)) for _ in range(50)]
    plain = np.array([repsim.rdm(t, method="euclidean").numpy() for t in noisy])
    assert (plain[:, 0, 1] ** 2 / 8).mean() > 0.2


def test_ledoit_wolf_matches_sklearn_and_batched_crossnobis():
    covariance = pytest.importorskip("sklearn.covariance")
    g = np.random.default_rng(4)
    res = g.normal(size=(30, 12)) * np.linspace(0.5, 2, 12)
    want = covariance.ledoit_wolf(res, assume_centered=True)[0]
    got = ledoit_wolf(torch.tensor(res)[None])[0].numpy()
    assert np.allclose(got, want, atol=1e-12)
    _, x, run, cond = _design(seed=6)
    batch = np.stack([x, 2 * x, x[::-1].copy()])
    run_b, cond_b = run, cond
    out = repsim.rdm(torch.tensor(batch), method="crossnobis", runs=run_b, conditions=cond_b)
    one = repsim.rdm(torch.tensor(x), method="crossnobis", runs=run, conditions=cond)
    assert out.shape == (3, 5, 5) and torch.allclose(out[0], one) and torch.allclose(out[1], one)  # scale-free


def test_distance_errors_and_budget():
    _, x, run, cond = _design()
    with pytest.raises(ValueError, match="runs="):
        repsim.rdm(torch.tensor(x), method="crossnobis", conditions=cond)
    with pytest.raises(ValueError, match="every run"):
        repsim.rdm(torch.tensor(x[:-1]), method="crossnobis", runs=run[:-1], conditions=cond[:-1])
    with pytest.raises(ValueError, match="noise="):
        repsim.rdm(torch.tensor(x[:5]), method="mahalanobis", conditions=cond[:5])
    with pytest.raises(repsim.MemoryBudgetError, match="Options"):
        repsim.rdm(torch.tensor(x), method="crossnobis", runs=run, conditions=cond, memory=1000)
    with pytest.raises(ValueError, match="apply to"):
        repsim.rdm(torch.tensor(x), method="euclidean", runs=run)


# ------------------------------------------------------------------------------------------ ceilings, models
def _pool_ref(v, method):
    if method == "pearson":
        v = (v - v.mean(1, keepdims=True)) / v.std(1, keepdims=True)
    elif method == "cosine":
        v = v / np.sqrt((v**2).mean(1, keepdims=True))
    else:
        v = np.array([scipy.stats.rankdata(r) for r in v])
    return v.mean(0)


@pytest.mark.parametrize("method", ["pearson", "spearman", "cosine"])
def test_noise_ceiling_is_leave_one_out_and_full_pool(method):
    v = _rand_rdms(5, 9, seed=8) + np.linspace(0, 1, 36)  # a shared structure
    lower, upper = repsim.noise_ceiling(v, method=method)
    f = {"pearson": lambda a, b: np.corrcoef(a, b)[0, 1], "cosine": lambda a, b: a @ b / np.linalg.norm(a)
         / np.linalg.norm(b), "spearman": lambda a, b: scipy.stats.spearmanr(a, b).statistic}[method]  # fmt: skip
    lo = np.mean([f(_pool_ref(np.delete(v, s, 0), method), v[s]) for s in range(5)])
    up = np.mean([f(_pool_ref(v, method), v[s]) for s in range(5)])
    assert (lower, upper) == pytest.approx((lo, up), abs=1e-12)
    assert lower < upper


def test_bootstrapped_ceiling_leaves_out_every_copy():
    v = torch.tensor(_rand_rdms(4, 8, seed=9) + np.linspace(0, 1, 28))
    counts = torch.tensor([[2.0, 0, 1, 1]])
    lo, up = ceilings(v, "pearson", counts)[0].tolist()
    sample = v[[0, 0, 2, 3]]
    f = lambda a, b: np.corrcoef(a, b)[0, 1]  # noqa: E731
    want_lo = np.mean([f(_pool_ref(sample[[i for i in range(4) if [0, 0, 2, 3][i] != s]].numpy(), "pearson"),
                         v[s].numpy()) for s in (0, 2, 3)])  # fmt: skip
    want_up = np.mean([f(_pool_ref(sample.numpy(), "pearson"), v[s].numpy()) for s in (0, 2, 3)])
    assert (lo, up) == pytest.approx((want_lo, want_up), abs=1e-12)


def test_weighted_model_recovers_known_weights():
    comps = _rand_rdms(3, 12, seed=10)
    w = np.array([2.0, 0.0, 0.5])
    g = np.random.default_rng(11)
    subjects = w @ comps + 0.01 * g.normal(size=(6, comps.shape[1]))
    model = repsim.WeightedModel(comps).fit(subjects, method="cosine")
    assert np.allclose(model.weights_ / model.weights_.sum(), w / w.sum(), atol=0.02)
    model = repsim.WeightedModel(comps).fit(subjects + 3.0, method="pearson")  # an offset: the intercept is free
    assert np.allclose(model.weights_ / model.weights_.sum(), w / w.sum(), atol=0.02)
    sel = repsim.SelectModel(comps).fit(subjects, method="spearman")
    assert sel.best_ == 0
    cv = repsim.crossvalidate_rdm_models({"weighted": repsim.WeightedModel(comps), "fixed": comps[1]}, subjects,
                                         method="pearson", n_folds_subjects=2, n_folds_stimuli=2)  # fmt: skip
    means = cv.groupby("model")["score"].mean()
    assert len(cv) == 8 and means["weighted"] > 0.9 > means["fixed"]


def test_split_half_reliability_is_spearman_brown():
    _, x, run, cond = _design(k=6, runs=6, p=20, seed=12, noise=0.3)
    out = repsim.rdm_split_half(x, runs=run, conditions=cond, n_splits=5)
    assert 0 < out["r_half"] < out["reliability"] <= 1 and len(out["r_splits"]) == 5
    assert out["reliability"] == pytest.approx(np.mean([2 * r / (1 + r) for r in out["r_splits"]]), abs=1e-12)
    # a split's r is the Pearson r of the two halves' correlation RDMs (condition means of 3 runs each)
    half = np.isin(run, np.random.default_rng(0).permutation(6)[:3])
    means = [np.stack([x[part & (cond == c)].mean(0) for c in range(6)]) for part in (half, ~half)]
    iu = np.triu_indices(6, 1)
    r0 = np.corrcoef(*[(1 - np.corrcoef(m))[iu] for m in means])[0, 1]
    assert out["r_splits"][0] == pytest.approx(r0, abs=1e-10)
    noisier = repsim.rdm_split_half(_design(k=6, runs=6, p=20, seed=12, noise=3.0)[1], runs=run, conditions=cond)
    assert noisier["reliability"] < out["reliability"]


# ------------------------------------------------------------------------------------------ 92 images
def _k92():
    z = np.load(DATA / "rdms.npz")
    return z["hit"].astype(np.float64).mean(1), dict(zip(z["model_names"], z["models"], strict=True))


def test_evaluate_fixed_is_a_t_test_across_subjects():
    subjects, models = _k92()
    result = repsim.evaluate_rdm_models(models, subjects, method="spearman")
    table = result.table
    per = np.array([[scipy.stats.spearmanr(m, s).statistic for m in models.values()] for s in subjects])
    assert np.allclose(table["mean"], per.mean(0), atol=1e-12)
    assert np.allclose(table["sem"], per.std(0, ddof=1) / 2, atol=1e-12)
    t = scipy.stats.ttest_1samp(per, 0, alternative="greater")
    assert np.allclose(table["p_zero"], t.pvalue, atol=1e-9)
    pair = result.pairwise
    a, b = list(models).index(pair.loc[0, "model_a"]), list(models).index(pair.loc[0, "model_b"])
    assert pair.loc[0, "p_value"] == pytest.approx(scipy.stats.ttest_rel(per[:, a], per[:, b]).pvalue, abs=1e-9)
    assert (pair["p_adjusted"] >= pair["p_value"]).all()
    assert {"ceiling_lower", "ceiling_upper", "ceiled_lower", "mean"} <= set(table.columns)


@pytest.mark.skipif(not RECORDED.exists(), reason="run benchmarks/brain.py --record (rsatoolbox in .benchvenv)")
def test_92_images_equal_rsatoolbox():
    rec = json.loads(RECORDED.read_text())
    subjects, models = _k92()
    for method, ours in rec["methods"].items():
        mine = method_name(method)
        assert repsim.noise_ceiling(subjects, method=mine) == pytest.approx(ours["noise_ceiling"], abs=1e-6), method
        table = repsim.evaluate_rdm_models(models, subjects, method=mine).table
        assert np.allclose(table["mean"], ours["fixed_mean"], atol=1e-6), method
        assert np.allclose(table["sem"], ours["fixed_sem"], atol=1e-6), method
        assert np.allclose(table["p_zero"], ours["fixed_p_zero"], atol=1e-6), method
        assert np.allclose(table["p_ceiling"], ours["fixed_p_ceiling"], atol=1e-6), method
    boot = rec["bootstrap"]
    for mode, ours in boot["modes"].items():
        result = repsim.evaluate_rdm_models(models, subjects, method=method_name(boot["method"]), bootstrap=mode,
                                            n_resamples=N_BOOT, seed=1)  # fmt: skip
        table = result.table
        # an SD from N resamples has relative Monte-Carlo error ~ 1/sqrt(2N): both sides' errors, 4 sigma
        tol = 4 * np.sqrt(1 / (2 * N_BOOT) + 1 / (2 * boot["n_resamples"]))
        assert np.allclose(table["sem"], ours["sem"], rtol=tol), mode
        if ours["boot_mean"] is not None:  # the mean over bootstrap samples, to 4 Monte-Carlo SEs
            se = np.array(ours["sem"]) * np.sqrt(1 / N_BOOT + 1 / boot["n_resamples"])
            assert (np.abs(result.samples.mean(0) - ours["boot_mean"]) < 4 * se + 1e-9).all(), mode


RSATOOLBOX_NAMES = {"corr": "pearson", "spearman": "spearman", "cosine": "cosine", "rho-a": "rho_a",
                    "tau-a": "kendall_tau_a", "corr_cov": "whitened_pearson",
                    "cosine_cov": "whitened_cosine"}  # fmt: skip


def method_name(rsatoolbox_name):
    return RSATOOLBOX_NAMES[rsatoolbox_name]


# ------------------------------------------------------------------------------------------ CLI
def tiny_rgb(num_classes: int = 10):
    """TinyConvNet on RGB 8 x 8 images (the `repsim brain` test's architecture)."""
    from tests.models import TinyConvNet

    return TinyConvNet(in_channels=3, num_classes=num_classes)


def test_brain_command_end_to_end(tmp_path, capsys):
    from PIL import Image

    from repsim.cli import main

    g = np.random.default_rng(13)
    (tmp_path / "images").mkdir()
    for i in range(8):
        Image.fromarray(g.integers(0, 255, (8, 8, 3), dtype=np.uint8)).save(tmp_path / "images" / f"{i:02d}.png")
    np.save(tmp_path / "rdms.npy", _rand_rdms(3, 8, seed=14))
    torch.manual_seed(0)
    ckpt = repsim.save_state_dict(tiny_rgb().state_dict(), tmp_path / "m.pt")
    args = ["brain", str(ckpt), "--arch", "tests.test_brain_rdms:tiny_rgb", "--images", str(tmp_path / "images"),
            "--rdms", str(tmp_path / "rdms.npy"), "--image-size", "8", "--layers", "block1,block2",
            "--out", str(tmp_path / "out")]  # fmt: skip
    assert main(args) == 0
    printed = capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "brain.csv")
    assert list(table["layer"]) == ["block1", "block2"] and "wrote:" in printed
    assert table["ceiling_lower"].nunique() == 1 and np.isfinite(table["mean"]).all()
    assert main([*args[:6], "--rdms", str(tmp_path / "missing.npy")]) == 2
