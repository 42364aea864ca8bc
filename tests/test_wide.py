"""Wide layers: every route equals a float64 Gram-space reference, the planner's choices, refusals, memory."""

import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset

import repsim
from repsim.core.budget import MemoryBudgetError, parse_memory
from repsim.measures.blocked import block_rows, workspace_limit
from repsim.pipeline.plans import MeasureRequest, plan_routes

from .reference import linear_cka as ref_linear_cka


def _rdm_pearson_reference(x, y):
    """Pearson correlation of the upper triangles of the cosine RDMs (Kriegeskorte et al. 2008), float64."""

    def rdm(a):
        a = np.asarray(a, np.float64)
        u = a / np.linalg.norm(a, axis=1, keepdims=True)
        return 1 - u @ u.T

    iu = np.triu_indices(len(x), 1)
    return np.corrcoef(rdm(x)[iu], rdm(y)[iu])[0, 1]


class Wide(nn.Module):
    """A conv net whose flattened maps are wider than the number of samples."""

    def __init__(self, seed: int) -> None:
        super().__init__()
        torch.manual_seed(seed)
        self.c1 = nn.Conv2d(3, 8, 3, padding=1)
        self.c2 = nn.Conv2d(8, 6, 3, padding=1, stride=2)
        self.fc = nn.Linear(6, 5)

    def forward(self, x):
        h = self.c2(self.c1(x).relu()).relu()
        return self.fc(h.mean((2, 3)))


def _loader(n=60, batch=16):
    g = torch.Generator().manual_seed(0)
    return DataLoader(TensorDataset(torch.randn(n, 3, 12, 12, generator=g), torch.arange(n) % 4), batch_size=batch)


def _features(model, loader, layers):
    feats, _ = repsim.extract_features(model, loader, layers=layers, pool="flatten", progress=False)
    return [feats[name].double().numpy() for name in layers]


LAYERS = ["c1", "c2", "fc"]


@pytest.mark.parametrize(
    ("pool", "route"), [("flatten", "stored"), ("mean", "moments")], ids=["wide-stored", "pooled-moments"]
)
def test_each_route_equals_the_gram_reference_for_every_layer_pair(pool, route):
    a, b, loader = Wide(0), Wide(1), _loader()
    res = repsim.compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, pool=pool, progress=False)
    table = res.table.set_index(["layer_a", "layer_b", "measure"])
    streamed = table.xs("linear_cka", level="measure")["route"].unique().tolist()
    assert streamed == [route]
    feats_a = repsim.extract_features(a, loader, layers=LAYERS, pool=pool, progress=False)[0]
    feats_b = repsim.extract_features(b, loader, layers=LAYERS, pool=pool, progress=False)[0]
    for la in LAYERS:
        for lb in LAYERS:
            x, y = feats_a[la].double().numpy(), feats_b[lb].double().numpy()
            # centred first: both estimators are shift-invariant, and uncentred Grams would cancel digits
            xc, yc = x - x.mean(0), y - y.mean(0)
            for name, expected in (
                ("linear_cka", ref_linear_cka(xc, yc)),
                ("debiased_cka", ref_linear_cka(xc, yc, unbiased=True)),
                ("rsa", _rdm_pearson_reference(x, y)),
            ):
                assert table.loc[(la, lb, name), "value"] == pytest.approx(expected, abs=1e-10), (la, lb, name)


@pytest.mark.parametrize("limit", [10**4, 10**6, 10**9])
@pytest.mark.parametrize("debiased", [False, True])
def test_blocked_gram_grid_at_any_block_height(limit, debiased):
    g = torch.Generator().manual_seed(1)
    xs = [torch.randn(37, d, generator=g, dtype=torch.float64) + 3 for d in (50, 80)]
    ys = [torch.randn(37, d, generator=g, dtype=torch.float64).relu() for d in (40, 5, 90)]
    with workspace_limit(limit):
        gram = repsim.cka_grid(xs, ys, debiased=debiased, method="gram")
        feature = repsim.cka_grid(xs, ys, debiased=debiased, method="feature")
        rsa = repsim.measure_grid(xs, ys, "rsa")
    for i, x in enumerate(xs):
        for j, y in enumerate(ys):
            expected = ref_linear_cka(x.numpy(), y.numpy(), unbiased=debiased)
            assert float(gram[i, j]) == pytest.approx(expected, abs=1e-12)
            assert float(feature[i, j]) == pytest.approx(expected, abs=1e-12)
            assert float(rsa[i, j]) == pytest.approx(_rdm_pearson_reference(x.numpy(), y.numpy()), abs=1e-12)


def test_block_rows_respect_the_limit():
    assert block_rows(1000, 10, 4, limit=10 * 1000 * 20 * 7) == 7
    assert block_rows(1000, 10, 4, limit=1) == 1  # never zero rows
    assert block_rows(50, 2, 8, limit=10**12) == 50


def _req(name, **kw):
    return MeasureRequest(name, streaming_moments=name == "linear_cka", **kw)


def test_planner_picks_moments_when_d_is_small_against_n():
    plan = plan_routes([_req("linear_cka")], {"a": 64, "b": 32}, {"c": 48}, n=100_000, sample_cap=5000, budget=10**9)
    assert plan.route("linear_cka") == "moments"
    assert plan.store_samples == 0


def test_planner_picks_stored_features_when_n_is_small_against_d():
    plan = plan_routes([_req("linear_cka")], {"a": 16384}, {"b": 16384}, n=256, sample_cap=5000, budget=10**9)
    assert plan.route("linear_cka") == "stored"
    assert plan.store_samples == 256
    assert plan.total_bytes < 10**9


def test_planner_refuses_with_the_layer_its_width_the_bytes_and_the_options():
    with pytest.raises(MemoryBudgetError) as info:
        plan_routes([_req("linear_cka")], {"layer1": 16384}, {"layer1": 16384}, n=10**6, sample_cap=5000, budget=10**9)
    message = str(info.value)
    for part in ("layer1 (d = 16384)", "moments need", "stored features need", "pool='mean'", "max_samples",
                 "memory=", "minibatch_cka", "sketch="):  # fmt: skip
        assert part in message, part
    # an unknown sample count cannot size the stored route: say so
    with pytest.raises(MemoryBudgetError, match="number of samples"):
        plan_routes([_req("linear_cka")], {"a": 16384}, None, n=None, sample_cap=5000, budget=10**8)


def test_compare_refuses_before_running_and_dry_run_returns_the_plan():
    a, b, loader = Wide(0), Wide(1), _loader()
    plan = repsim.compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, pool="flatten", dry_run=True, progress=False)
    assert isinstance(plan, repsim.MemoryPlan)
    assert plan.n == 60
    assert plan.layers.set_index(["model", "layer"]).loc[("a", "c1"), "d"] == 8 * 12 * 12
    assert set(plan.table["measure"]) == {"linear_cka", "debiased_cka", "rsa"}
    assert "memory plan" in str(plan)
    with pytest.raises(MemoryBudgetError, match="c1 \\(d = 1152\\)"):
        repsim.compare(a, b, loader, layers_a=LAYERS, layers_b=LAYERS, pool="flatten", memory="100KB", progress=False)


def test_parse_memory():
    assert parse_memory("8GB") == 8 * 10**9
    assert parse_memory("512MiB") == 512 * 2**20
    assert parse_memory(12345) == 12345
    assert parse_memory(None) > 0
    for bad in ("eight", -1, 0, "0GB", True):
        with pytest.raises(ValueError, match="memory"):
            parse_memory(bad)


def test_minibatch_and_sketch_routes_are_labelled():
    a, b, loader = Wide(0), Wide(1), _loader()
    res = repsim.compare(
        a, b, loader, layers_a=["c1"], layers_b=["c1"], pool="flatten", measures=["minibatch_cka"], progress=False
    )
    assert res.table["route"].tolist() == ["minibatch 16"]
    res = repsim.compare(a, b, loader, layers_a=["c1", "fc"], layers_b=["c1"], pool="flatten", sketch=64,
                         measures=["linear_cka", "rsa"], progress=False)  # fmt: skip
    assert set(res.table["route"]) == {"sketch 64", "sketch 64, capped at 60"}
    again = repsim.compare(a, b, loader, layers_a=["c1", "fc"], layers_b=["c1"], pool="flatten", sketch=64,
                           measures=["linear_cka", "rsa"], progress=False)  # fmt: skip
    assert again.table["value"].tolist() == res.table["value"].tolist()  # seeded
    with pytest.raises(ValueError, match="sketch"):
        repsim.compare(a, b, loader, layers_a=["c1"], sketch=1, progress=False)


def test_sketched_cka_parts_are_unbiased_and_the_correction_beats_the_plain_sketch():
    """Over many seeds: numerator and corrected denominators average to the exact ones (module docstring)."""
    from repsim.measures.moments import moments_of
    from repsim.measures.sketch import LayerSketch, corrected_frobenius_sq, sketched_linear_cka

    g = torch.Generator().manual_seed(2)
    n, d, k = 80, 400, 32
    z = torch.randn(n, 20, generator=g, dtype=torch.float64)
    x = z @ torch.randn(20, d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, d, generator=g).double()
    y = z @ torch.randn(20, d, generator=g, dtype=torch.float64) + 0.5 * torch.randn(n, d, generator=g).double()
    exact = moments_of(x, y)
    true_cka = float(repsim.linear_cka(x, y))
    nums, dens, corrected, plain = [], [], [], []
    for seed in range(300):
        xs_, ys_ = LayerSketch(k, seed, 0)([x])[0], LayerSketch(k, seed, 1)([y])[0]
        m = moments_of(xs_, ys_)
        nums.append(float(m.sxy.pow(2).sum()))
        dens.append(float(corrected_frobenius_sq(m.sxx, k)))
        corrected.append(float(sketched_linear_cka(m, k, True, True)))
        plain.append(float(repsim.linear_cka(xs_, ys_)))
    assert np.mean(nums) == pytest.approx(float(exact.sxy.pow(2).sum()), rel=0.05)
    assert np.mean(dens) == pytest.approx(float(exact.sxx.pow(2).sum()), rel=0.05)
    assert abs(np.mean(corrected) - true_cka) < 0.5 * abs(np.mean(plain) - true_cka)


def test_peak_memory_of_the_stored_route_is_within_the_plan():
    """A subprocess measures its peak RSS around one stored-route grid; the plan's workspace bounds it (1.5x)."""
    script = textwrap.dedent(
        """
        import torch, repsim
        from repsim.pipeline.plans import MeasureRequest, plan_routes
        from repsim.measures.blocked import workspace_limit
        torch.set_num_threads(1)
        def rss(field):
            for line in open("/proc/self/status"):
                if line.startswith(field):
                    return int(line.split()[1]) * 1024
        g = torch.Generator().manual_seed(0)
        dims = [3000, 5000, 2000]
        xs = [torch.randn(1200, d, generator=g) for d in dims]
        ys = [torch.randn(1200, d, generator=g) for d in dims]
        plan = plan_routes([MeasureRequest("linear_cka", streaming_moments=True)], dict(zip("abc", dims)),
                           dict(zip("def", dims)), n=1200, sample_cap=5000, budget=2 * 10**9)
        repsim.cka_grid(xs[:1], ys[:1], method="gram")  # warm up the allocator and BLAS
        open("/proc/self/clear_refs", "w").write("5")  # reset the peak RSS
        base = rss("VmRSS:")
        with workspace_limit(plan.workspace):
            repsim.cka_grid(xs, ys, method="gram", dtype=torch.float64)
        print(plan.route("linear_cka"), rss("VmHWM:") - base, int(plan.table["workspace_bytes"].max()))
        """
    )
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr
    route, used, planned = out.stdout.split()
    assert route == "stored"
    assert int(used) <= 1.5 * int(planned), (used, planned)
    assert int(used) >= int(planned) / 4, (used, planned)  # the estimate is not wildly conservative either


def test_accumulators_share_one_protocol():
    """update/merge/compute/reset on every streaming accumulator: two shards merged equal one stream."""
    from repsim.measures.statistics import StreamingConcentricity

    g = torch.Generator().manual_seed(4)
    xs = [torch.randn(40, d, generator=g, dtype=torch.float64) + 2 for d in (3, 6)]
    ys = [torch.randn(40, d, generator=g, dtype=torch.float64) + 1 for d in (4,)]
    makers = [
        lambda: repsim.StreamingMoments(),
        lambda: repsim.StreamingLinearCKA(debiased=True),
        lambda: repsim.MinibatchCKA(),
        lambda: StreamingConcentricity(),
    ]
    for make in makers:
        whole, parts = make(), [make(), make()]
        assert isinstance(whole, repsim.Accumulator)
        for lo in range(0, 40, 10):
            whole.update([x[lo : lo + 10] for x in xs], [y[lo : lo + 10] for y in ys])
        shift = ([x[:10].mean(0) for x in xs], [y[:10].mean(0) for y in ys])
        for acc, rows in zip(parts, ((0, 20), (20, 40)), strict=True):
            if hasattr(acc, "set_shift"):
                acc.set_shift(*shift)
            for lo in range(rows[0], rows[1], 10):
                acc.update([x[lo : lo + 10] for x in xs], [y[lo : lo + 10] for y in ys])
        parts[0].merge(parts[1])

        def value(acc):
            return acc.compute("linear_cka") if isinstance(acc, repsim.StreamingMoments) else acc.compute()

        assert torch.allclose(value(parts[0]), value(whole), atol=1e-12, rtol=0), type(whole).__name__
        assert parts[0].n == 40
        whole.reset()
        assert whole.n == 0
        with pytest.raises(ValueError, match=r"no samples|before any update"):  # a reset stream is empty
            value(whole)
        with pytest.raises(ValueError, match="cannot merge"):
            whole.merge(repsim.StreamingMoments() if not isinstance(whole, repsim.StreamingMoments) else make_other())


def make_other():
    return repsim.MinibatchCKA()


def test_a_refused_merge_changes_nothing():
    g = torch.Generator().manual_seed(5)
    x, y = torch.randn(20, 3, generator=g, dtype=torch.float64), torch.randn(20, 2, generator=g, dtype=torch.float64)
    a, b = repsim.StreamingLinearCKA(), repsim.StreamingLinearCKA()
    a.update(x[:10], y[:10])
    b.update(x[10:], y[10:])  # another shift
    before = float(a.compute())
    with pytest.raises(ValueError, match="same shift"):
        a.merge(b)
    assert a.n == 10 and float(a.compute()) == before


def test_extract_features_refuses_or_spills_to_disk_and_resumes(tmp_path):
    import json

    a, loader = Wide(0), _loader()
    layers = ["c1", "fc"]
    full, labels = repsim.extract_features(a, loader, layers=layers, pool="flatten", progress=False)
    with pytest.raises(MemoryBudgetError, match="spill_dir"):
        repsim.extract_features(a, loader, layers=layers, pool="flatten", memory="50KB", progress=False)
    spilled, spilled_labels = repsim.extract_features(
        a, loader, layers=layers, pool="flatten", memory="50KB", spill_dir=tmp_path, progress=False
    )
    assert all(torch.equal(spilled[k], full[k]) for k in layers) and torch.equal(spilled_labels, labels)
    # a run killed after two batches: the files hold them and progress.json says so; the rest is redone
    progress = tmp_path / "progress.json"
    state = json.loads(progress.read_text())
    state["done"] = 32
    progress.write_text(json.dumps(state))
    resumed, _ = repsim.extract_features(a, loader, layers=layers, pool="flatten", spill_dir=tmp_path, progress=False)
    assert all(torch.equal(resumed[k], full[k]) for k in layers)


def test_compare_many_checks_the_budget_and_sketches():
    models, loader = [Wide(0), Wide(1), Wide(2)], _loader()
    with pytest.raises(MemoryBudgetError, match="3 models"):
        repsim.compare_many(models, loader, layers=["c1"], pool="flatten", memory="1MB", progress=False)
    exact = repsim.compare_many(models, loader, layers=["c1"], pool="flatten", progress=False).matrix("linear_cka")
    sketched = repsim.compare_many(models, loader, layers=["c1"], pool="flatten", sketch=256, progress=False)
    sketched = sketched.matrix("linear_cka")
    assert np.allclose(np.diag(sketched.to_numpy()), 1.0)
    assert np.abs(sketched.to_numpy() - exact.to_numpy()).max() < 0.15  # an estimator, close at k = 256


def test_probes_evaluate_refuses_features_over_the_budget():
    from probes import evaluate

    a, loader = Wide(0), _loader()
    with pytest.raises(MemoryBudgetError):
        evaluate(a, loader, loader, "c1", pool="flatten", memory="100KB", progress=False)
