"""The measure kinds (repsim.measures.kinds): what one declaration builds, and what it refuses."""

from __future__ import annotations

import inspect

import pytest
import torch

import repsim
from repsim.measures import registry
from repsim.measures.cka import CKAForm
from repsim.measures.kinds import MomentParts, layer_measure, moment_measure
from repsim.measures.moments import StreamingMoments
from repsim.measures.rsa import RSAForm


@pytest.fixture
def scratch_names():
    """Names registered by a test, removed afterwards (the registry is process-wide)."""
    names: list[str] = []  # kept for the tests' bookkeeping: temporary_measure removes whatever they declare
    with repsim.temporary_measure():
        yield names


def _data(n=80, p=6, q=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g, dtype=torch.float64)
    y = torch.tanh(x[:, :q] @ torch.randn(q, q, generator=g, dtype=torch.float64)) + 0.3 * torch.randn(
        n, q, generator=g, dtype=torch.float64
    )
    return x, y


def _frobenius(s, n, **_):
    return s.norm()


def _cka_pair(fx, fy, sxy, n, power: float = 2.0, **_):
    return sxy.abs().pow(power).sum() / (fx * fy)


def _declare_toy_cka(names):
    names.append("toy_cka")

    @moment_measure(
        "toy_cka",
        differentiable=True,
        prepare=_frobenius,
        pair=_cka_pair,
        options_check=lambda power=2.0, **_: None if power > 0 else (_ for _ in ()).throw(ValueError("power > 0")),
        family="cka",
        larger_is_more_similar=True,
        invariances=("orthogonal", "isotropic_scaling", "translation", "permutation"),
        cost="O(n d^2)",
        identity_value=1.0,
    )
    def toy_cka(x, y, *, power: float = 2.0, dtype: torch.dtype | None = None):
        """|S_xy|^power summed over entries / (|S_xx|_F |S_yy|_F): linear CKA at power = 2."""

    return toy_cka


def test_moment_measure_builds_function_grid_and_streaming(scratch_names):
    toy = _declare_toy_cka(scratch_names)
    x, y = _data()
    # the public function: the declaration's name, signature and docstring, computing from the parts
    assert toy.__name__ == "toy_cka" and "linear CKA at power = 2" in toy.__doc__
    assert list(inspect.signature(toy).parameters) == ["x", "y", "power", "dtype"]
    assert abs(float(toy(x, y)) - float(repsim.linear_cka(x, y, dtype=torch.float64))) < 1e-12
    # the registry entry, with the grid and the streaming form
    info = repsim.get_measure("toy_cka")
    assert info.streaming and info.options() == ["power", "dtype"] and info.fn is toy
    x2 = x + 0.5 * torch.randn_like(x)
    grid = repsim.measure_grid([x, x2], [y, x2[:, :3]], "toy_cka")
    for i, a in enumerate([x, x2]):
        for j, b in enumerate([y, x2[:, :3]]):
            assert abs(float(grid[i, j]) - float(toy(a, b))) < 1e-12
    acc = StreamingMoments()
    for i in range(0, 80, 17):
        acc.update(x[i : i + 17] + 100.0, y[i : i + 17] - 50.0)
    assert abs(float(acc.compute("toy_cka", power=1.5)) - float(toy(x, y, power=1.5))) < 1e-10


def test_moment_measure_refuses_bad_options_and_inputs(scratch_names):
    toy = _declare_toy_cka(scratch_names)
    x, y = _data()
    with pytest.raises(TypeError):
        toy(x, y, 2.0)  # options are keyword-only
    with pytest.raises(TypeError, match="unexpected option"):
        toy(x, y, powr=2.0)
    with pytest.raises(ValueError, match="power > 0"):
        toy(x, y, power=-1.0)
    bad = y.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"\by\b"):
        toy(x, bad)
    with pytest.raises(ValueError, match=r"same|samples"):
        toy(x, y[:-1])
    with pytest.raises(ValueError, match=r"ys\[1\]"):
        toy.grid([x], [y, torch.ones_like(y)])  # a constant layer, named


def test_parts_follow_the_options(scratch_names):
    """``parts`` chooses the computation per option; ``swap`` exchanges the sides everywhere."""
    scratch_names.append("toy_ratio")

    @moment_measure(
        "toy_ratio",
        differentiable=True,
        parts=lambda side="x", **_: MomentParts(_frobenius, lambda fx, fy, sxy, n, **_: fx / fy, swap=side == "y"),
        family="cka",
        larger_is_more_similar=True,
        cost="O(n d^2)",
        symmetric=False,
    )
    def toy_ratio(x, y, *, side: str = "x", dtype: torch.dtype | None = None):
        """|S_xx|_F / |S_yy|_F, or its inverse with side="y"."""

    x, y = _data()
    forward, backward = float(toy_ratio(x, y)), float(toy_ratio(x, y, side="y"))
    assert abs(forward * backward - 1) < 1e-12
    grid = toy_ratio.grid([x], [y], side="y")
    assert abs(float(grid[0, 0]) - backward) < 1e-12
    acc = StreamingMoments()
    acc.update(x, y)
    assert abs(float(acc.compute("toy_ratio", side="y")) - backward) < 1e-12


def test_layer_measure_prepares_each_layer_once_and_names_layers(scratch_names):
    scratch_names += ["toy_norms", "toy_norms_squared"]
    prepared = []

    def mean_norm(x, name, power: float = 1.0, **_):
        prepared.append(name)
        if bool((x.norm(dim=1) == 0).any()):
            raise ValueError(f"{name} has a zero row")
        return x.norm(dim=1).pow(power).mean()

    @layer_measure(
        "toy_norms",
        differentiable=True,
        prepare=mean_norm,
        pair=lambda a, b, **_: (a - b).abs(),
        family="statistics",
        larger_is_more_similar=False,
        invariances=("orthogonal", "permutation"),
        cost="O(n d)",
        identity_value=0.0,
        aliases={"toy_norms_squared": {"defaults": {"power": 2.0}}},
    )
    def toy_norms(x, y, *, power: float = 1.0):
        """|mean_i |x_i|^power - mean_i |y_i|^power|."""

    x, y = _data()
    xs = [x, 2 * x, x[:, :2]]
    grid = toy_norms.grid(xs)  # a self-grid: each layer prepared once
    assert prepared == ["xs[0]", "xs[1]", "xs[2]"]
    assert grid.shape == (3, 3) and grid.dtype == torch.float64 and float(grid.diagonal().abs().max()) == 0.0
    assert abs(float(grid[0, 1]) - float(toy_norms(x, 2 * x))) < 1e-12
    assert abs(float(repsim.measure(x, y, "toy_norms_squared")) - float(toy_norms(x, y, power=2.0))) < 1e-12
    assert repsim.get_measure("toy_norms_squared").defaults == {"power": 2.0}
    z = y.clone()
    z[5] = 0.0
    with pytest.raises(ValueError, match=r"^y has a zero row"):
        toy_norms(x, z)
    with pytest.raises(ValueError, match=r"^ys\[1\] has a zero row"):
        toy_norms.grid([x], [y, z])


def test_declarations_are_checked(scratch_names):
    scratch_names += ["toy_body", "toy_positional"]
    with pytest.raises(TypeError, match="no code"):

        @moment_measure("toy_body", prepare=_frobenius, pair=_cka_pair, family="cka", larger_is_more_similar=True,
                        cost="-", differentiable=True)  # fmt: skip
        def toy_body(x, y, *, dtype=None):
            """A body that would never run."""
            return x

    with pytest.raises(TypeError, match="keyword-only"):

        @layer_measure("toy_positional", pair=lambda a, b: a.sum(), family="cka", larger_is_more_similar=True,
                       cost="-", differentiable=True)  # fmt: skip
        def toy_positional(x, y, k=3):
            """Options must be keyword-only."""

    with pytest.raises(TypeError, match="prepare and pair, or parts"):
        moment_measure("toy_none", family="cka", larger_is_more_similar=True, cost="-", differentiable=True)
    with pytest.raises(TypeError, match="declare differentiable"):

        @layer_measure("toy_silent", pair=lambda a, b: a.sum(), family="cka", larger_is_more_similar=True, cost="-")
        def toy_silent(x, y):
            """Every declaration says whether autograd differentiates it."""


def test_option_dependent_properties_are_on_the_entry():
    rtd, uniformity = repsim.get_measure("rtd"), repsim.get_measure("uniformity_difference")
    assert rtd.symmetric and rtd.symmetric_at(symmetric=True) and not rtd.symmetric_at(symmetric=False)
    assert rtd.needs_package == "ripser" and repsim.get_measure("geometry_score").needs_package == "gudhi"
    assert "isotropic_scaling" in uniformity.invariances and "translation" not in uniformity.invariances
    assert uniformity.invariances_at(normalize=False) == {"orthogonal", "permutation", "translation"}
    rsa = repsim.get_measure("rsa")
    assert rsa.differentiable and not rsa.differentiable_at(compare="kendall")
    assert not repsim.get_measure("rsa_spearman").differentiable and not repsim.get_measure("mutual_knn").differentiable
    assert "translation" not in rsa.invariances and "translation" in rsa.invariances_at(rdm="euclidean")
    assert "orthogonal" not in rsa.invariances_at(rdm="correlation")
    assert rsa.quadratic_form() == RSAForm("cosine", "pearson") and rsa.quadratic_form(compare="kendall") is None
    assert rsa.quadratic_form(rdm="euclidean").subsample_matrices
    assert repsim.get_measure("rsa_spearman").quadratic_form() == RSAForm("cosine", "spearman")
    assert not repsim.get_measure("rsa_spearman").quadratic_form().subsample_matrices  # ranks change on subsamples
    assert repsim.get_measure("debiased_cka").quadratic_form(dtype=torch.float32) == CKAForm(True, torch.float32)
    shape = repsim.get_measure("angular_shape")
    assert "invertible_linear" in shape.invariances_at(alpha=0.0)
    assert "isotropic_scaling" not in shape.invariances_at(alpha=0.5)
    assert "translation" not in shape.invariances_at(center=False)
    assert repsim.get_measure("procrustes").quadratic_form() is None


def test_every_registered_measure_is_built_by_a_kind():
    """One way to write a measure: every entry's function and grid come from a declaration."""
    for name in registry.registered_names():
        info = repsim.get_measure(name)
        assert info.grid is not None and getattr(info.fn, "grid", None) is info.grid, name
        params = list(inspect.signature(info.fn).parameters.values())[2:]
        assert all(p.kind is p.KEYWORD_ONLY for p in params), f"{name}: options must be keyword-only"


def test_old_option_names_still_work_with_a_warning():
    """One vocabulary (debiased=, n_repeats=, subset_size=, max_exact_samples=); the old names map to it."""
    x, y = _data(n=30)
    with pytest.warns(DeprecationWarning, match="bias_corrected= is now debiased="):
        old = repsim.distance_correlation(x, y, bias_corrected=True)
    assert float(old) == float(repsim.distance_correlation(x, y, debiased=True))
    with pytest.warns(DeprecationWarning, match="bias_corrected= is now debiased="):
        via_registry = repsim.measure(x, y, "distance_correlation", bias_corrected=True)
    assert float(via_registry) == float(old)
    with pytest.raises(ValueError, match="pass debiased= only"):
        repsim.distance_correlation(x, y, bias_corrected=True, debiased=True)
    with pytest.warns(DeprecationWarning, match="max_samples= is now max_exact_samples="):
        repsim.imd(x, y, max_samples=100)


def test_compare_inference_takes_the_functions_vocabulary():
    from repsim.pipeline.comparison import check_inference

    assert check_inference({"n_permutations": 50, "n_resamples": 20}) == check_inference(
        {"permutations": 50, "bootstrap": 20}
    )
    with pytest.raises(ValueError, match="not both"):
        check_inference({"n_permutations": 50, "permutations": 50})


def test_moment_parts_say_center():
    parts = MomentParts(_frobenius, _cka_pair, center=False)
    assert parts.center is False and parts._fields == ("prepare", "pair", "prepare_y", "center", "swap")
    with pytest.warns(DeprecationWarning, match="centre= is now center="):
        assert MomentParts(_frobenius, _cka_pair, centre=False) == parts
    with pytest.raises(TypeError, match="unexpected"):
        MomentParts(_frobenius, _cka_pair, centering=False)
