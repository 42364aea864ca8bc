"""The registry's API and the shared moment accumulator (per-measure properties: test_measure_properties.py)."""

import re

import pytest
import torch

import repsim
from repsim.measures import registry
from repsim.measures.moments import StreamingMoments, moments_of

from .conftest import related


def test_list_measures_has_metadata_columns():
    table = repsim.list_measures()
    for col in (
        "name",
        "family",
        "larger_is_more_similar",
        "metric",
        "streaming",
        "batched",
        "cost",
        "needs_equal_widths",
        "needs_labels",
        "needs_outputs",
        "inv_orthogonal",
        "inv_affine",
    ):
        assert col in table.columns
    assert {"linear_cka", "debiased_cka", "kernel_cka", "rsa"} <= set(table["name"])
    assert table["name"].is_unique


def test_unknown_measure_and_option_are_clear_errors(gen):
    x, y = related(gen)
    with pytest.raises(ValueError, match="unknown measure 'nope'; registered:"):
        repsim.measure(x, y, "nope")
    with pytest.raises(ValueError, match="takes no option"):
        repsim.measure(x, y, "linear_cka", sigma=1.0)
    with pytest.raises(ValueError, match="fixes"):
        repsim.measure(x, y, "debiased_cka", debiased=False)


def test_alias_equals_base_with_option(gen):
    x, y = related(gen)
    assert repsim.measure(x, y, "debiased_cka") == repsim.linear_cka(x, y, debiased=True)
    grid = repsim.measure_grid([x, y], [y], "debiased_cka")
    assert torch.allclose(grid[:, 0], torch.stack([repsim.linear_cka(x, y, debiased=True), torch.tensor(1.0).double()]))


def test_grid_fallback_loops_over_pairs(gen):
    # a temporary measure without a batched grid (every registered one may have one); removed after the test
    calls = []

    def pair_only(x, y, sigma=0.8):
        calls.append((x.shape[1], y.shape[1]))
        return repsim.kernel_cka(x, y, sigma=sigma)

    x, y = related(gen)
    with repsim.temporary_measure("test_pair_only", like="kernel_cka", fn=pair_only, grid=None):
        grid = repsim.measure_grid([x, y], [y], "test_pair_only", sigma=0.5)
    assert "test_pair_only" not in registry.registered_names()
    assert grid.shape == (2, 1) and grid.dtype == torch.float64
    assert calls == [(x.shape[1], y.shape[1]), (y.shape[1], y.shape[1])]  # one call per pair, options passed on
    assert grid[0, 0] == repsim.kernel_cka(x, y, sigma=0.5) and grid[1, 0] == repsim.kernel_cka(y, y, sigma=0.5)


def test_measures_guide_lists_the_measures_without_dtype():
    from pathlib import Path

    page = (Path(__file__).parent.parent / "docs" / "guide" / "measures.md").read_text()
    names = registry.registered_names()
    without = sorted(n for n in names if "dtype" not in registry.get_measure(n).options())
    paragraph = page.split("**Precision.**")[1].split("For the others")[0]
    listed = sorted(re.findall(r"`(\w+)`", paragraph.split("to choose:")[1].split("(`repsim")[0]))
    assert listed == without, "update the **Precision.** paragraph of docs/guide/measures.md"
    assert f"({len(names) - len(without)} of the {len(names)})" in " ".join(paragraph.split())


@pytest.mark.parametrize("same", [False, True])
def test_streaming_moments_equal_one_shot_with_large_offset(gen, same):
    x, y = related(gen, n=150)
    x, y = torch.relu(x) + 1000.0, y + 500.0
    acc = StreamingMoments()
    for i in range(0, 150, 23):  # uneven batches
        acc.update([x[i : i + 23], y[i : i + 23]], None if same else [y[i : i + 23]])
    m = acc.moments(0, 1 if same else 0)
    xc, yc = x - x.mean(0), y - y.mean(0)
    assert m.n == 150
    assert torch.allclose(m.sxx, xc.T @ xc, rtol=1e-10, atol=1e-8)
    assert torch.allclose(m.sxy, xc.T @ yc, rtol=1e-10, atol=1e-8)
    assert torch.allclose(m.mean_x, x.mean(0), rtol=1e-12)
    assert torch.allclose(m.norm_sum_x, x.norm(dim=1).sum(), rtol=1e-12)
    assert torch.allclose(acc.compute("linear_cka")[0, -1], repsim.linear_cka(x, y), rtol=0, atol=1e-10)


def test_streaming_moments_merge_equals_single_pass(gen):
    x, y = related(gen, n=90)
    whole, a, b = StreamingMoments(), StreamingMoments(), StreamingMoments()
    whole.update(x, y)
    a.update(x[:31], y[:31])
    b.update(x[31:], y[31:])
    a.merge(b)
    for u, v in zip(
        (a.moments().sxx, a.moments().syy, a.moments().sxy),
        (whole.moments().sxx, whole.moments().syy, whole.moments().sxy),
        strict=True,
    ):
        assert torch.allclose(u, v, rtol=1e-12, atol=1e-10)
    assert torch.allclose(moments_of(x, y).sxy, whole.moments().sxy)


def test_streaming_moments_refuses_non_moment_measure_and_empty(gen):
    acc = StreamingMoments()
    with pytest.raises(ValueError, match="no samples"):
        acc.moments()
    x, y = related(gen)
    acc.update(x, y)
    with pytest.raises(ValueError, match="all samples at once"):
        acc.compute("rsa")
    with pytest.raises(ValueError, match="own accumulator"):
        acc.compute("debiased_cka")


def test_choosing_guide_table_is_current():
    import importlib.util
    from pathlib import Path

    spec = importlib.util.spec_from_file_location(
        "registry_table", Path(__file__).parent.parent / "scripts" / "registry_table.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    text = module.PAGE.read_text()
    assert module.render(text) == text, "run: python scripts/registry_table.py"


def test_exports_and_api_page_follow_the_registry():
    """Every registered measure is importable from repsim under its function's name and documented in
    the API page; repsim re-exports everything repsim.measures exports."""
    import pathlib

    import repsim.measures

    exported = set(repsim.__all__)
    assert set(repsim.measures.__all__) <= exported, sorted(set(repsim.measures.__all__) - exported)
    api = (pathlib.Path(__file__).parents[1] / "docs" / "api" / "repsim.md").read_text()
    for name in registry.registered_names():
        fn = repsim.get_measure(name).fn
        assert fn.__name__ in exported and getattr(repsim, fn.__name__) is fn, f"{name}: export {fn.__name__}"
        assert f"::: repsim.{fn.__name__}\n" in api, f"{name}: add '::: repsim.{fn.__name__}' to docs/api/repsim.md"


def test_temporary_measure_leaves_the_registry_as_it_was(gen):
    before = registry.registered_names()
    x, y = related(gen)
    with repsim.temporary_measure("test_copy", like="linear_cka", identity_value=1.0) as info:
        assert info.name == "test_copy" and info.fn is repsim.linear_cka
        assert repsim.measure(x, y, "test_copy") == repsim.linear_cka(x, y)
        with pytest.raises(ValueError, match="registered already"), repsim.temporary_measure("test_copy", like="rsa"):
            pass
    with repsim.temporary_measure():  # measures declared inside the block go too
        repsim.layer_measure("test_declared", pair=lambda a, b: (a - b).sum(), family="cka",
                             larger_is_more_similar=True, cost="-", differentiable=True)(_declared)  # fmt: skip
        assert "test_declared" in registry.registered_names()
    with pytest.raises(RuntimeError), repsim.temporary_measure("test_gone", like="rsa"):
        raise RuntimeError("the registry is restored on errors too")
    assert registry.registered_names() == before


def _declared(x, y):
    """A toy measure (its body is its docstring)."""


def test_declared_invariances_include_the_groups_they_contain():
    """Issue 32: mean_cca declared invertible_linear and affine but not the orthogonal, scaling, translation
    and permutation invariances they imply, so list_measures() showed False for them."""
    from tests.test_measure_properties import IMPLIES

    for name in repsim.list_measures()["name"]:
        declared = set(registry.get_measure(name).invariances)
        for inv in declared:
            assert IMPLIES.get(inv, set()) <= declared, (name, inv, IMPLIES[inv] - declared)
    row = repsim.list_measures().set_index("name").loc["mean_cca"]
    assert all(row[f"inv_{k}"] for k in repsim.INVARIANCES)
