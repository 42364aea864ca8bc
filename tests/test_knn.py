"""Neighbour lists as reusable state (repsim.knn_lists): exact lists equal brute force with ties by
index, the permutation null from relabelled lists equals recomputing the measure per permutation,
the approximate route's recall is measured against exact search, and plans refuse before starting."""

import numpy as np
import pytest
import torch

import repsim
from repsim.core.budget import MemoryBudgetError
from repsim.measures.knn import KNNCache, exact_indices, topk_by_index
from repsim.pipeline.plans import MeasureRequest, plan_routes

NEIGHBOUR_MEASURES = ["mutual_knn", "jaccard_knn", "rank_similarity", "cycle_knn", "second_order_cosine", "cknna"]
LIST_ONLY = ["mutual_knn", "jaccard_knn", "rank_similarity", "cycle_knn"]  # functions of the index lists alone


def _brute_force(x: torch.Tensor, k: int) -> torch.Tensor:
    """Every cosine in float64, the sample itself excluded, sorted by (-similarity, index)."""
    z = x.double() / x.double().norm(dim=1, keepdim=True)
    sims = (z @ z.T).numpy()
    n = sims.shape[0]
    out = []
    for i in range(n):
        others = [j for j in range(n) if j != i]
        out.append(sorted(others, key=lambda j: (-sims[i, j], j))[:k])
    return torch.tensor(out)


def _tied(gen, prototypes=4, copies=7, d=5):
    """Rows repeated exactly: every list's boundary falls inside a block of equal similarities."""
    base = torch.randint(-3, 4, (prototypes, d), generator=gen).double()
    base[base.norm(dim=1) == 0, 0] = 1.0
    return base.repeat_interleave(copies, 0)[torch.randperm(prototypes * copies, generator=gen)]


@pytest.fixture
def gen():
    return torch.Generator().manual_seed(0)


# -------------------------------------------------------------------------------- exact lists
@pytest.mark.parametrize("k", [1, 3, 6, 10])
def test_exact_blocked_lists_equal_brute_force_with_ties_by_index(gen, k):
    x = _tied(gen)
    expected = _brute_force(x, k)
    for block in (1, 5, 4096):  # every block split gives the same lists
        got = repsim.knn_lists(x, k=k, block_size=block)
        assert torch.equal(got.indices, expected), block
    random = torch.randn(50, 8, generator=gen, dtype=torch.float64)
    assert torch.equal(repsim.knn_lists(random, k=k, block_size=7).indices, _brute_force(random, k))
    # float32 products (the default for float32 features) on exactly tied float32 rows: same lists
    assert torch.equal(repsim.knn_lists(x.float(), k=k, block_size=3).indices, expected)


def test_topk_by_index_breaks_every_tie_by_the_smaller_index():
    sims = torch.tensor([[1.0, 3.0, 3.0, 2.0, 3.0, 3.0], [0.0, 0.0, 0.0, 0.0, 0.0, 1.0]])
    assert topk_by_index(sims, 3).tolist() == [[1, 2, 4], [5, 0, 1]]
    assert topk_by_index(sims, 5).tolist() == [[1, 2, 4, 5, 3], [5, 0, 1, 2, 3]]


def test_lists_carry_float64_similarities_and_timings(gen):
    x = torch.randn(40, 6, generator=gen)
    lists = repsim.knn_lists(x, k=4)
    z = x.double() / x.double().norm(dim=1, keepdim=True)
    expected = (z[:, None, :] * z[lists.indices]).sum(-1)
    assert lists.similarities.dtype == torch.float64
    assert torch.allclose(lists.similarities, expected, rtol=0, atol=1e-14)
    assert (lists.similarities[:, :-1] >= lists.similarities[:, 1:] - 1e-6).all()  # nearest first
    assert lists.route == "exact" and lists.recall is None and lists.describe() == "exact"
    assert {"products", "selection", "rescoring"} <= set(lists.timings)
    assert exact_indices(z.float(), 4).shape == (40, 4)


def test_knn_options_are_checked(gen):
    x = torch.randn(20, 3, generator=gen)
    with pytest.raises(ValueError, match="knn must be one of"):
        repsim.mutual_knn(x, x, k=3, knn="fast")
    with pytest.raises(ValueError, match="recall must be"):
        repsim.mutual_knn(x, x, k=3, recall=1.5)
    with pytest.raises(ValueError, match="k must be an integer"):
        repsim.knn_lists(x, k=20)
    with pytest.raises(ValueError, match="index must be one of"):
        repsim.knn_lists(x, k=3, index="lsh")
    assert repsim.measures.knn.resolve_route("auto", 20, 3) == "exact"


# -------------------------------------------------------------------------------- the null from fixed lists
def _layers(gen, n=45):
    base = torch.randn(n, 4, generator=gen, dtype=torch.float64)
    xs = [base @ torch.randn(4, d, generator=gen, dtype=torch.float64) + 0.3 * torch.randn(n, d, generator=gen,
          dtype=torch.float64) for d in (5, 7)]  # fmt: skip
    ys = [base + 0.5 * torch.randn(n, 4, generator=gen, dtype=torch.float64), torch.randn(n, 6, generator=gen,
          dtype=torch.float64)]  # fmt: skip
    return xs, ys


@pytest.mark.parametrize("name", NEIGHBOUR_MEASURES)
def test_relabelled_lists_null_equals_recomputation_per_permutation(gen, name):
    xs, ys = _layers(gen)
    perms = torch.stack([torch.randperm(45, generator=gen) for _ in range(6)])
    info = repsim.get_measure(name)
    reused = info.null_grid(xs, ys, perms, k=4)
    recomputed = torch.stack([repsim.measure_grid(xs, [y[p] for y in ys], name, k=4) for p in perms], dim=-1)
    assert reused.shape == (2, 2, 6)
    if name in LIST_ONLY:
        assert torch.equal(reused, recomputed)
    else:  # the same values summed in another order (CKNNA's HSIC, second-order's products)
        assert torch.allclose(reused, recomputed, rtol=0, atol=1e-12)


@pytest.mark.parametrize("name", ["mutual_knn", "cknna"])
def test_calibrate_and_permutation_test_use_the_relabelled_lists(gen, name):
    xs, ys = _layers(gen)
    res = repsim.calibrate_grid(xs, ys, name, n_permutations=9, seed=3, keep_permutations=True, k=4)
    direct = torch.stack([repsim.measure_grid(xs, [y[p] for y in ys], name, k=4) for p in res.permutations], -1)
    assert torch.allclose(res.cell_null, direct, rtol=0, atol=1e-12)
    # permutation_test: the same draws as its one-call-per-permutation loop
    test = repsim.permutation_test(xs[0], ys[0], name, n_permutations=8, seed=1, k=4)
    g = torch.Generator().manual_seed(1)
    torch.randperm(45, generator=g)  # the ordering drawn first (for the shift scheme)
    loop = [float(repsim.measure(xs[0], ys[0][torch.randperm(45, generator=g)], name, k=4)) for _ in range(8)]
    assert np.allclose(test.null.numpy(), loop, rtol=0, atol=1e-12)


def test_one_search_per_layer_within_a_cache_scope(gen):
    xs, ys = _layers(gen)
    with repsim.knn_cache() as cache:
        for name in NEIGHBOUR_MEASURES:
            repsim.measure_grid(xs, ys, name, k=4)
        repsim.calibrate_grid(xs, ys, "jaccard_knn", n_permutations=5, seed=0, k=4)
    assert isinstance(cache, KNNCache) and len(cache.computed) == 4  # 2 + 2 layers, once each
    assert cache.routes() == "exact"
    with repsim.knn_cache() as cache:
        y = ys[0].clone()
        repsim.mutual_knn(xs[0], y, k=4)
        y.mul_(-1.0).add_(torch.randn(y.shape, generator=gen, dtype=y.dtype))  # modified in place: searched again
        repsim.mutual_knn(xs[0], y, k=4)
    assert len(cache.computed) == 3


# -------------------------------------------------------------------------------- approximate route
def _clustered(gen, n=3000, d=16, centres=30):
    c = torch.randn(centres, d, generator=gen)
    return c[torch.randint(0, centres, (n,), generator=gen)] + 0.4 * torch.randn(n, d, generator=gen)


@pytest.mark.parametrize("index", ["hnsw", "ivf-flat"])
def test_approximate_recall_is_measured_against_exact_search(gen, index):
    pytest.importorskip("faiss")
    x = _clustered(gen)
    exact = repsim.knn_lists(x, k=10)
    approx = repsim.knn_lists(x, k=10, knn="approx", recall=0.95, index=index, n_queries=200, seed=1)
    true_recall = (approx.indices[:, :, None] == exact.indices[:, None, :]).any(-1).double().mean().item()
    assert approx.route == "approx" and approx.params["index"] == index
    assert 0.0 <= approx.recall <= 1.0 and abs(approx.recall - true_recall) < 0.05  # the sample estimates it
    assert true_recall >= 0.9
    assert (approx.indices != torch.arange(3000)[:, None]).all()  # the sample itself is never its neighbour
    assert f"recall@10={approx.recall:.3f}" in approx.describe()
    breadth = "efSearch" if index == "hnsw" else "nprobe"
    assert breadth in approx.params
    y = x + 0.5 * torch.randn(x.shape, generator=gen)
    assert abs(float(repsim.mutual_knn(x, y, knn="approx")) - float(repsim.mutual_knn(x, y))) < 0.03


def test_recall_target_widens_the_search(gen):
    pytest.importorskip("faiss")
    x = _clustered(gen)
    low = repsim.knn_lists(x, k=10, knn="approx", recall=0.5, index="ivf-flat", n_queries=200)
    high = repsim.knn_lists(x, k=10, knn="approx", recall=0.99, index="ivf-flat", n_queries=200)
    assert high.params["nprobe"] >= low.params["nprobe"] and high.recall >= low.recall


# -------------------------------------------------------------------------------- plans
def test_plan_covers_knn_and_refuses_before_starting():
    ok = plan_routes([MeasureRequest("mutual_knn", capped=True)], {"a": 64}, {"b": 64}, 10**5, 10**5, 8 * 2**30)
    assert ok.route("mutual_knn") == "capped at 100000, knn exact"
    workspace = int(ok.table["workspace_bytes"].iloc[0])
    assert workspace < 2 * 2**30 and workspace < 8 * 10**10 / 100  # lists and a block, never n x n
    approx = plan_routes(
        [MeasureRequest("cknna", options={"knn": "approx"}, capped=True)], {"a": 64}, None, 10**6, 10**6, 8 * 2**30
    )
    assert approx.route("cknna") == "capped at 1000000, knn approx"
    with pytest.raises(MemoryBudgetError, match="knn='approx'"):
        plan_routes([MeasureRequest("mutual_knn", capped=True)], {"a": 768}, None, 10**6, 10**6, 2**30)


def test_compare_route_column_names_the_lists_route():
    pytest.importorskip("faiss")
    from torch.utils.data import DataLoader, TensorDataset

    torch.manual_seed(0)
    a = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5))
    data = DataLoader(TensorDataset(torch.randn(300, 6)), batch_size=100)
    options = {"mutual_knn": {"k": 5, "knn": "approx", "recall": 0.9}, "jaccard_knn": {"k": 5}}
    table = repsim.compare(a, a, data, layers_a=["0"], layers_b=["2"], measures=["mutual_knn", "jaccard_knn"],
                           measure_options=options, progress=False).table  # fmt: skip
    routes = table.set_index("measure")["route"]
    assert routes["mutual_knn"].startswith("capped at 300, knn approx hnsw M=32 efSearch=")
    assert "recall@5=" in routes["mutual_knn"] and routes["jaccard_knn"] == "capped at 300, knn exact"


def test_knn_keyword_of_compare_compare_many_and_the_cli():
    pytest.importorskip("faiss")
    from torch.utils.data import DataLoader, TensorDataset

    from repsim.cli import parser

    torch.manual_seed(1)
    a = torch.nn.Sequential(torch.nn.Linear(6, 12), torch.nn.Tanh(), torch.nn.Linear(12, 5))
    b = torch.nn.Sequential(torch.nn.Linear(6, 9), torch.nn.Tanh(), torch.nn.Linear(9, 5))
    data = DataLoader(TensorDataset(torch.randn(240, 6)), batch_size=80)
    table = repsim.compare(a, b, data, layers_a=["2"], layers_b=["2"], measures=["mutual_knn", "linear_cka"],
                           measure_options={"mutual_knn": {"k": 5}}, knn="approx", progress=False).table  # fmt: skip
    routes = table.set_index("measure")["route"]
    assert "knn approx" in routes["mutual_knn"] and "knn" not in routes["linear_cka"]
    many = repsim.compare_many([a, b, a], data, layers=["2"], measures=["mutual_knn"], knn="approx", progress=False)
    exact = repsim.compare_many([a, b, a], data, layers=["2"], measures=["mutual_knn"], progress=False)
    assert np.allclose(many.table["value"].to_numpy(), exact.table["value"].to_numpy(), atol=0.05)
    assert parser().parse_args(["compare", "a.pt", "b.pt", "--arch", "resnet18", "--knn", "auto"]).knn == "auto"
    with pytest.raises(ValueError, match="knn must be one of"):
        repsim.compare(a, b, data, measures=["mutual_knn"], knn="fast", progress=False)
