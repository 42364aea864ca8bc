"""Calibrated similarity: the rule (from the formula), the grid nulls (against explicit permutations),
restricted permutations, input validation, the chance-level warning and the wiring into compare."""

import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch

import repsim
from repsim.inference._quadratic import explicit_null_grid, quadratic_form, shift_null_grid, shift_permutations
from repsim.inference.calibration import calibrated_values, null_grid
from repsim.inference.restricted import permutation_design
from tests.models import TinyConvNet, digits_batches, seeded


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    """Many tiny reference computations: extra threads only add contention on a busy machine."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def _features(gen, n=60, widths=(5, 7), dtype=torch.float64):
    return [torch.randn(n, d, generator=gen, dtype=dtype) for d in widths]


def _related(gen, n=60, p=6, q=5, noise=1.0):
    x = torch.randn(n, p, generator=gen, dtype=torch.float64)
    y = x[:, :q] + noise * torch.randn(n, q, generator=gen, dtype=torch.float64)
    return x, y


# -------------------------------------------------------------------------------- the rule
def test_threshold_is_the_inverted_cdf_quantile_with_the_observed_value_included():
    rng = np.random.default_rng(0)
    for b, alpha in [(99, 0.05), (200, 0.05), (19, 0.1), (7, 0.3), (1000, 0.01)]:
        null = rng.normal(size=b)
        obs = rng.normal() + 1.5
        obs_t = torch.tensor(obs, dtype=torch.float64)
        score, tau, p = calibrated_values(obs_t, torch.from_numpy(null), alpha, 10.0, True)
        combined = np.concatenate([[obs], null])
        ref_tau = np.quantile(combined, 1 - alpha, method="inverted_cdf")  # ceil((1-a)(B+1))-th smallest
        assert float(tau) == pytest.approx(ref_tau, abs=0)
        assert float(score) == pytest.approx(max(0.0, (obs - ref_tau) / (10.0 - ref_tau)), abs=1e-15)
        assert float(p) == pytest.approx((1 + (null >= obs).sum()) / (1 + b), abs=1e-15)


def test_distances_calibrate_on_the_lower_tail_and_unbounded_measures_give_the_excess():
    null = torch.tensor(dtype=torch.float64, data=[0.9, 1.0, 1.1, 1.2, 0.95, 1.05, 0.85, 1.15, 0.8, 1.3])
    score, tau, p = calibrated_values(torch.tensor(0.5), null, 0.2, 0.0, False)
    # negated values: tau' = the ceil(0.8 * 11) = 9th smallest of -combined = -(3rd smallest distance)
    assert float(tau) == pytest.approx(0.85)
    assert float(score) == pytest.approx((0.85 - 0.5) / 0.85)
    assert float(p) == pytest.approx(1 / 11)
    excess, tau2, _ = calibrated_values(torch.tensor(2.0), torch.tensor([0.1, 0.2, 0.3]), 0.5, None, True)
    assert float(excess) == pytest.approx(2.0 - float(tau2)) and float(tau2) == pytest.approx(0.2)  # 2nd of 4
    zero, _, _ = calibrated_values(torch.tensor(0.2), torch.tensor([0.1, 0.3, 0.4]), 0.05, 1.0, True)
    assert float(zero) == 0.0


def test_calibrate_scores_shared_signal_and_not_independence(gen):
    x, y = _related(gen, noise=0.5)
    strong = repsim.calibrate(x, y, "linear_cka", n_permutations=49, seed=0)
    assert strong.score > 0.5 and strong.p_value == pytest.approx(1 / 50) and strong.scheme == "shifts"
    assert strong.observed == pytest.approx(float(repsim.linear_cka(x, y)), abs=1e-12)
    assert strong.score == pytest.approx((strong.observed - strong.threshold) / (1 - strong.threshold))
    independent = repsim.calibrate(x, torch.randn(60, 5, generator=gen, dtype=torch.float64), seed=0, n_permutations=49)
    assert independent.score == 0.0 and independent.threshold >= independent.observed
    dist = repsim.calibrate(x, y, "procrustes", n_permutations=19, seed=0)
    assert dist.smax == 0.0 and dist.score > 0 and dist.threshold > dist.observed
    assert dist.score == pytest.approx((dist.threshold - dist.observed) / dist.threshold)
    raw = repsim.calibrate(x, y, "linear_cka", n_permutations=49, seed=0, smax=math.inf)
    assert raw.smax is None and raw.score == pytest.approx(strong.observed - strong.threshold)


def test_same_seed_same_result_and_kept_permutations_reproduce_the_null(gen):
    x, y = _related(gen)
    a = repsim.calibrate(x, y, "mutual_knn", n_permutations=15, seed=3, keep_permutations=True, k=5)
    b = repsim.calibrate(x, y, "mutual_knn", n_permutations=15, seed=3, k=5)
    assert torch.equal(a.null, b.null) and a.threshold == b.threshold
    again = torch.stack([repsim.mutual_knn(x, y[p], k=5) for p in a.permutations])
    assert torch.allclose(again, a.null, atol=1e-12)


# -------------------------------------------------------------------------------- the grid nulls
@pytest.mark.parametrize("measure", ["linear_cka", "debiased_cka", "rsa", "rsa_spearman"])
def test_quadratic_nulls_equal_the_measure_on_permuted_features(measure, gen):
    xs, ys = _features(gen, 48, (5, 9, 3)), _features(gen, 48, (4, 6))
    blocks = np.repeat(np.arange(16), 3)[np.random.default_rng(0).permutation(48)]  # scattered, equal sizes
    design = permutation_design(48, blocks=blocks)
    for scheme, restrict, expected in (("shifts", None, "shifts"), ("random", None, "random"),
                                       ("auto", blocks, "block shifts"), ("random", blocks, "random")):  # fmt: skip
        null, perms, used = null_grid(measure, xs, ys, 12, blocks=restrict, seed=1, scheme=scheme)
        assert used == expected and null.shape == (3, 2, 12)
        ref = torch.stack([repsim.measure_grid(xs, [y[p] for y in ys], measure) for p in perms], -1)
        assert torch.allclose(null, ref, atol=1e-12, rtol=0)
        assert restrict is None or all(design.allows(p) for p in perms)


def test_all_shifts_engine_matches_explicit_permutations(gen):
    xs, ys = _features(gen, 31, (4,)), _features(gen, 31, (3, 5))  # odd n: no self-mirrored diagonal
    form = quadratic_form("debiased_cka", {"debiased": True})
    order = torch.randperm(31, generator=gen)
    shifts = torch.arange(31)
    by_fft = shift_null_grid(form, xs, ys, order, shifts)
    by_gather = explicit_null_grid(form, xs, ys, shift_permutations(order, shifts))
    assert torch.allclose(by_fft, by_gather, atol=1e-12, rtol=0)
    assert torch.allclose(by_fft[..., 0], repsim.measure_grid(xs, ys, "debiased_cka"), atol=1e-12)  # shift 0
    # wide features take the Gram route of the explicit engine (narrow ones the feature route, above)
    wide_x, wide_y = _features(gen, 20, (40, 30)), _features(gen, 20, (50,))
    perms = repsim.draw_permutations(20, 6, seed=0)
    for debiased in (False, True):
        got = explicit_null_grid(quadratic_form("linear_cka", {"debiased": debiased}), wide_x, wide_y, perms)
        ref = torch.stack([repsim.cka_grid(wide_x, [y[p] for y in wide_y], debiased=debiased) for p in perms], -1)
        assert torch.allclose(got, ref, atol=1e-12, rtol=0)


def test_grid_cells_equal_single_cell_calibration_and_aggregates(gen):
    xs, ys = _features(gen, 80, (6, 4)), _features(gen, 80, (5, 3, 7))
    grid = repsim.calibrate_grid(xs, ys, "linear_cka", n_permutations=39, seed=5)
    assert list(grid.cells.columns) == ["layer_a", "layer_b", "observed", "threshold", "calibrated", "p_value"]
    assert len(grid.cells) == 6 and grid.cell_null.shape == (2, 3, 39)
    for row in grid.cells.itertuples():
        single = repsim.calibrate(xs[row.layer_a], ys[row.layer_b], n_permutations=39, seed=5)
        assert row.threshold == pytest.approx(single.threshold, abs=1e-12)
        assert row.calibrated == pytest.approx(single.score, abs=1e-12)
        assert row.p_value == pytest.approx(single.p_value)
    assert grid.observed == pytest.approx(grid.cells["observed"].max())
    assert torch.allclose(grid.null, grid.cell_null.amax(dim=(0, 1)))
    # the maximum's threshold is above every cell's: it is the null of a search over cells
    assert grid.threshold >= grid.cells["threshold"].max() - 1e-12
    custom = repsim.calibrate_grid(xs, ys, "linear_cka", aggregate=lambda g: g.max(), n_permutations=39, seed=5)
    assert custom.score == grid.score and custom.threshold == grid.threshold
    mean = repsim.calibrate_grid(xs, ys, "linear_cka", aggregate="mean", n_permutations=39, seed=5)
    assert mean.observed == pytest.approx(grid.cells["observed"].mean())
    named = repsim.calibrate_grid({"a": xs[0]}, {"u": ys[0], "v": ys[1]}, n_permutations=9, seed=0)
    assert list(named.cells["layer_a"]) == ["a", "a"] and list(named.cells["layer_b"]) == ["u", "v"]
    assert named.matrix().shape == (1, 2)


def test_distance_grid_max_is_the_best_cell(gen):
    x, y = _related(gen, noise=0.3)
    other = torch.randn(60, 5, generator=gen, dtype=torch.float64)
    grid = repsim.calibrate_grid([x], [y, other], "procrustes", n_permutations=49, seed=0)
    assert grid.observed == pytest.approx(grid.cells["observed"].min()) and grid.score > 0


def test_generic_measures_use_one_grid_call_per_permutation(gen, monkeypatch):
    import repsim.inference.calibration as calibration

    calls = []
    real = calibration.measure_grid
    monkeypatch.setattr(calibration, "measure_grid", lambda *a, **k: calls.append(1) or real(*a, **k))
    xs, ys = _features(gen, 40, (4, 5, 6)), _features(gen, 40, (3, 4))
    repsim.calibrate_grid(xs, ys, "procrustes", n_permutations=7, seed=0)
    assert len(calls) == 1 + 7  # the observed grid, then one per permutation: never one per cell
    calls.clear()
    repsim.calibrate_grid(xs, ys, "mutual_knn", n_permutations=7, seed=0, k=4)
    assert len(calls) == 1  # the observed grid; the null relabels its kNN lists (no search per permutation)


# -------------------------------------------------------------------------------- restricted permutations
def test_group_permutations_never_cross_a_group():
    groups = np.array(list("aabbbcccca") + list("bc"))
    perms = repsim.draw_permutations(len(groups), 300, groups=groups, seed=0)
    assert (groups[perms.numpy()] == groups[None, :]).all()
    assert (perms.sort(dim=1).values == torch.arange(len(groups))).all()  # permutations
    moved = (perms != torch.arange(len(groups))).any(0)
    assert moved.all()  # and every sample does move in some draw


def test_block_permutations_move_whole_blocks_among_blocks_of_the_same_size():
    blocks = np.array([0, 0, 0, 1, 1, 1, 2, 2, 3, 3, 4, 4, 4, 5, 6, 6, 6, 7, 7])  # sizes 3,3,2,2,3,1,3,2
    n = len(blocks)
    design = permutation_design(n, blocks=blocks)
    perms = design.draw(400, torch.Generator().manual_seed(0))
    positions = {b: np.flatnonzero(blocks == b) for b in np.unique(blocks)}
    landed = set()
    for perm in perms.numpy():
        assert design.allows(torch.from_numpy(perm))
        for b, pos in positions.items():
            source = perm[pos]
            src_block = blocks[source]
            assert (src_block == src_block[0]).all(), "a block was split"
            assert (source == positions[src_block[0]]).all(), "a block was reordered inside"
            assert len(positions[src_block[0]]) == len(pos)
            landed.add((b, src_block[0]))
    assert (5, 5) in landed and all((5, c) not in landed for c in range(8) if c != 5)  # the only size-1 block
    assert {(0, c) for c in (0, 1, 4, 6)} <= landed  # size-3 blocks reach every size-3 slot
    assert not design.allows(torch.tensor([1, 0, *range(2, n)]))


def test_groups_with_blocks_permute_blocks_within_groups():
    groups = np.repeat([0, 0, 1, 1, 1], 2)
    blocks = np.repeat([0, 1, 2, 3, 4], 2)
    perms = repsim.draw_permutations(10, 200, groups=groups, blocks=blocks, seed=1).numpy()
    assert (groups[perms] == groups).all() and (blocks[perms][:, ::2] == blocks[perms][:, 1::2]).all()


def test_restricted_calibration_and_permutation_test(gen):
    x, y = _related(gen, n=60)
    blocks = np.repeat(np.arange(20), 3)
    res = repsim.calibrate(x, y, n_permutations=29, blocks=blocks, seed=0, keep_permutations=True)
    assert res.scheme == "random" and res.score > 0
    design = permutation_design(60, blocks=blocks)
    assert all(design.allows(p) for p in res.permutations)
    test = repsim.permutation_test(x, y, "linear_cka", n_permutations=29, groups=np.arange(60) % 3)
    assert test.scheme == "random" and test.p_value == pytest.approx(1 / 30)
    with pytest.raises(ValueError, match="shifts"):
        repsim.permutation_test(x, y, "linear_cka", n_permutations=29, scheme="shifts", blocks=blocks)
    with pytest.raises(ValueError, match="groups/blocks"):
        repsim.calibrate(x, y, n_permutations=29, blocks=blocks, scheme="shifts")


# -------------------------------------------------------------------------------- validation
@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        ({"alpha": 0.0}, "alpha"),
        ({"alpha": 1.5}, "alpha"),
        ({"alpha": "0.05"}, "alpha"),
        ({"n_permutations": 0}, "n_permutations"),
        ({"n_permutations": 2.5}, "n_permutations"),
        ({"measure": "nope"}, "unknown measure"),
        ({"measure": "jsd"}, "measure 'jsd'"),
        ({"groups": [0, 1, 2]}, "groups"),
        ({"groups": np.zeros((30, 2))}, "groups"),
        ({"blocks": np.arange(30)[::-1].copy()[:29]}, "blocks"),
        ({"blocks": np.repeat([0, 1, 2], [10, 11, 9])}, "blocks leave nothing to permute"),
        ({"groups": np.arange(30)}, "groups leave nothing to permute"),
        ({"groups": np.repeat([0, 1], 15), "blocks": np.repeat(np.arange(3), 10)}, "blocks: block 1 spans"),
        ({"smax": "one"}, "smax"),
        ({"seed": 1.5}, "seed"),
        ({"scheme": "fft"}, "scheme"),
        ({"n_permutations": 40, "scheme": "shifts"}, "n_permutations=40 exceeds"),
        ({"k": 3}, "takes no option"),
    ],
)
def test_calibrate_rejects_bad_arguments_by_name(kwargs, match, gen):
    x, y = torch.randn(30, 4, generator=gen), torch.randn(30, 3, generator=gen)
    kwargs = {"n_permutations": 9, **kwargs}
    with pytest.raises(ValueError, match=match):
        repsim.calibrate(x, y, **kwargs)


def test_calibrate_grid_rejects_bad_aggregates_and_inputs(gen):
    xs = _features(gen, 30, (3,))
    with pytest.raises(ValueError, match="aggregate"):
        repsim.calibrate_grid(xs, xs, aggregate="median", n_permutations=9)
    with pytest.raises(ValueError, match="ys"):
        repsim.calibrate_grid(xs, [torch.randn(29, 3)], n_permutations=9)
    with pytest.raises(ValueError, match="xs"):
        repsim.calibrate_grid([], xs, n_permutations=9)
    with pytest.raises(ValueError, match="x contains"):
        repsim.calibrate(torch.full((30, 2), float("nan")), xs[0], n_permutations=9)


# -------------------------------------------------------------------------------- the chance-level warning
def test_chance_level_formula_matches_simulation():
    gen = torch.Generator().manual_seed(7)
    for n, p, q in [(40, 10, 80), (60, 120, 120)]:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", repsim.BiasedCKAChanceWarning)
            sims = [
                float(repsim.linear_cka(torch.randn(n, p, generator=gen, dtype=torch.float64),
                                        torch.randn(n, q, generator=gen, dtype=torch.float64)))
                for _ in range(30)
            ]  # fmt: skip
        assert np.mean(sims) == pytest.approx(repsim.biased_cka_chance_level(n, p, q), abs=0.015)


def test_biased_cka_warns_when_its_chance_level_is_high(gen):
    x, y = torch.randn(50, 200, generator=gen), torch.randn(50, 100, generator=gen)
    with pytest.warns(repsim.BiasedCKAChanceWarning, match=r"debiased=True.*calibrate"):
        repsim.linear_cka(x, y)
    with pytest.warns(repsim.BiasedCKAChanceWarning):
        repsim.measure_grid([x], [y], "linear_cka")
    with warnings.catch_warnings():
        warnings.simplefilter("error", repsim.BiasedCKAChanceWarning)
        repsim.linear_cka(x, y, debiased=True)
        repsim.linear_cka(x[:, :5], y[:, :5])  # chance level 0.09
        repsim.cka_grid([x])  # a self-grid
        repsim.calibrate(x, y, n_permutations=9, seed=0)  # the remedy itself does not warn


# -------------------------------------------------------------------------------- registry and wiring
def test_registry_declares_attainable_best():
    table = repsim.list_measures().set_index("name")
    assert table.loc["linear_cka", "attainable_best"] == 1.0
    assert table.loc["procrustes", "attainable_best"] == 0.0
    assert table.loc["cycle_knn", "attainable_best"] == 1.0  # declared: its identity value is not fixed
    assert repsim.get_measure("rsa").attainable_best == 1.0


@pytest.fixture(scope="module")
def batches():
    return digits_batches(120, 40)


def test_compare_adds_calibrated_columns_and_a_max_row(batches):
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.compare(
        a, b, batches, layers_a=["block1", "block2"], layers_b=["block2"], measures=["debiased_cka", "mutual_knn"],
        inference={"calibrate": 19, "permutations": 19}, progress=False,
    )  # fmt: skip
    table = res.table
    assert {"calibrated", "threshold", "p_value"} <= set(table.columns)
    top = table[table["layer_a"] == "<max>"].set_index("measure")
    assert sorted(top.index) == ["debiased_cka", "mutual_knn"] and (top["layer_b"] == "<max>").all()
    cells = table[table["layer_a"] != "<max>"]
    assert cells["calibrated"].notna().all() and cells["p_value"].notna().all()
    assert top.loc["debiased_cka", "value"] == pytest.approx(cells[cells["measure"] == "debiased_cka"]["value"].max())
    assert res.matrix("mutual_knn").shape == (2, 1)  # the "<max>" row stays out of the matrices
    with pytest.raises(ValueError, match="calibrate > 0"):
        repsim.compare(a, b, batches, inference={"alpha": 0.1}, progress=False)


def test_compare_many_calibrated_matrix(batches):
    models = [seeded(TinyConvNet, s) for s in range(3)]
    with pytest.warns(DeprecationWarning):  # the 0.3 call, kept until 0.5
        raw = repsim.compare_many(models, batches, layer="block2", measure="debiased_cka", progress=False)
        cal = repsim.compare_many(models, batches, layer="block2", measure="debiased_cka", progress=False, calibrate=19)
    assert cal.shape == (3, 3) and isinstance(cal.attrs["observed"], pd.DataFrame)
    assert np.allclose(cal.attrs["observed"].to_numpy(), raw.to_numpy())
    assert (cal.to_numpy() >= 0).all() and (cal.to_numpy() <= 1).all()
    assert np.allclose(np.diag(cal.to_numpy()), 1.0)  # a model against itself: (1 - tau) / (1 - tau)


def test_cli_calibrate(tmp_path, capsys):
    from repsim.cli import main

    pa = repsim.save_state_dict(seeded(TinyConvNet, 0).state_dict(), tmp_path / "a.pt")
    pb = repsim.save_state_dict(seeded(TinyConvNet, 1).state_dict(), tmp_path / "b.pt")
    args = ["--arch", "tests.models:TinyConvNet", "--max-samples", "120", "--out", str(tmp_path / "out")]
    compare_args = ["compare", str(pa), str(pb), "--layers", "block2", "--measures", "rsa", "--calibrate", "19"]
    assert main([*compare_args, *args]) == 0
    assert "grid maximum" in capsys.readouterr().out
    table = pd.read_csv(tmp_path / "out" / "comparison.csv")
    assert {"calibrated", "threshold"} <= set(table.columns) and "<max>" in set(table["layer_a"])
    with pytest.warns(DeprecationWarning):  # --layer: the 0.3 form
        assert main(["many", str(pa), str(pb), "--layer", "block2", "--calibrate", "19", *args]) == 0
    assert (tmp_path / "out" / "many_linear_cka_calibrated.csv").exists()
    assert main(["many", str(pa), str(pb), "--layers", "block2", "--calibrate", "19", *args]) == 0
    assert "calibrated" in pd.read_csv(tmp_path / "out" / "table.csv")
