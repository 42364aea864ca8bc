"""Every registry entry keeps the promises its metadata makes.

For each registered measure, on random inputs drawn by hypothesis:
* each declared invariance holds, and each invariance it does not declare (and that no declared
  one implies) fails on some input: declarations are tested, not assumed;
* symmetric measures are symmetric; identical inputs give ``identity_value``;
* metrics satisfy the triangle inequality;
* streaming entries equal the one-shot value to 1e-10 over uneven batches with a large offset;
* ``measure_grid`` equals the per-pair loop;
* NaN, mismatched samples and wrong dimensions are refused with a ValueError.
"""

from __future__ import annotations

import math

import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import repsim
from repsim.measures.moments import StreamingMoments
from repsim.measures.registry import get_measure, registered_names

N, P, Q = 60, 6, 5
# measures whose optional package is missing here are tested where it is installed
NAMES = [n for n in registered_names() if get_measure(n).available()]  # the entry names its optional package
# Options passed to every call of a measure here: geometry_score's default 64 landmarks exceed N = 60
# samples, and 10 landmark draws instead of 100 keep its part of this file to seconds.
OPTIONS = {"geometry_score": {"n_landmarks": 16, "n_repeats": 10}}
FEATURE_MEASURES = [n for n in NAMES if not get_measure(n).needs_outputs]
# An invariance implies the ones of the smaller groups it contains.
IMPLIES = {
    "affine": {"invertible_linear", "translation", "orthogonal", "isotropic_scaling", "permutation"},
    "invertible_linear": {"orthogonal", "isotropic_scaling", "permutation"},
    "orthogonal": {"permutation"},
}
SETTINGS = settings(max_examples=4, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])


def _closure(invariances) -> set[str]:
    out = set(invariances)
    for inv in invariances:
        out |= IMPLIES.get(inv, set())
    return out


def _data(seed: int, name: str, n: int = N, near: bool = False):
    """x and a y that shares a nonlinear signal with it (so the measures are away from their extremes);
    ``near``: y is a slightly noisy copy of x's first columns (for measures that saturate otherwise)."""
    info = get_measure(name)
    g = torch.Generator().manual_seed(seed)
    q = P if info.needs_equal_widths else Q
    x = torch.randn(n, P, generator=g, dtype=torch.float64)
    mix = torch.randn(P, q, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ mix) + 0.7 * torch.randn(n, q, generator=g, dtype=torch.float64)
    if near:
        y = x[:, :q] + 0.1 * torch.randn(n, q, generator=g, dtype=torch.float64)
    if info.needs_outputs:  # logits of C classes
        x, y = 3 * x[:, :4], 3 * (x[:, :4] + 0.8 * torch.randn(n, 4, generator=g, dtype=torch.float64))
    kwargs = {"labels": torch.randint(0, x.shape[1], (n,), generator=g)} if info.needs_labels else {}
    kwargs.update(OPTIONS.get(name, {}))
    return x, y, kwargs, g


def _transform(kind: str, y: torch.Tensor, g: torch.Generator) -> torch.Tensor:
    q = y.shape[1]
    if kind == "orthogonal":
        qmat, _ = torch.linalg.qr(torch.randn(q, q, generator=g, dtype=y.dtype))
        return y @ qmat
    if kind == "isotropic_scaling":
        return 3.7 * y
    if kind == "translation":
        return y + 4.0 * torch.randn(q, generator=g, dtype=y.dtype)
    if kind == "permutation":
        return y[:, torch.randperm(q, generator=g)]
    # an invertible map that is far from orthogonal (condition number ~ 10)
    a = torch.randn(q, q, generator=g, dtype=y.dtype)
    u, _, vt = torch.linalg.svd(a)
    a = u @ torch.diag(torch.logspace(0, 1, q, dtype=y.dtype)) @ vt
    out = y @ a
    return out + 4.0 * torch.randn(q, generator=g, dtype=y.dtype) if kind == "affine" else out


def _value(name, x, y, kwargs) -> float:
    return float(repsim.measure(x, y, name, **kwargs))


def _close(a: float, b: float, tol: float = 1e-6) -> bool:
    return abs(a - b) <= tol * max(1.0, abs(a), abs(b))


DECLARED = [(n, k) for n in FEATURE_MEASURES for k in repsim.INVARIANCES if k in _closure(get_measure(n).invariances)]
UNDECLARED = [
    (n, k) for n in FEATURE_MEASURES for k in repsim.INVARIANCES if k not in _closure(get_measure(n).invariances)
]


@pytest.mark.parametrize(("name", "kind"), DECLARED)
@SETTINGS
@given(seed=st.integers(0, 2**16), near=st.booleans())
def test_declared_invariances_hold(name, kind, seed, near):
    x, y, kwargs, g = _data(seed, name, near=near)
    base = _value(name, x, y, kwargs)
    for side, moved in (
        ("y", _value(name, x, _transform(kind, y, g), kwargs)),
        ("x", _value(name, _transform(kind, x, g), y, kwargs)),
    ):
        assert _close(base, moved), f"{name} declares {kind} invariance but moved from {base} to {moved} ({side})"


@pytest.mark.parametrize(("name", "kind"), UNDECLARED)
def test_undeclared_invariances_fail_somewhere(name, kind):
    changes = []
    for seed, near in [(0, False), (1, False), (2, True), (3, True)]:
        x, y, kwargs, g = _data(seed, name, near=near)
        base = _value(name, x, y, kwargs)
        for moved in (_value(name, x, _transform(kind, y, g), kwargs), _value(name, _transform(kind, x, g), y, kwargs)):
            changes.append(abs(base - moved) / max(1.0, abs(base)))
    assert max(changes) > 1e-5, f"{name} is {kind}-invariant on every try ({changes}); declare it"


# Option settings at which entries with option-dependent invariances (``invariances_at``) are tested;
# every such entry must appear here, so a new declaration cannot go untested.
OPTION_SETTINGS = {
    "rsa": [{"rdm": "euclidean"}, {"rdm": "correlation"}, {"rdm": "euclidean", "compare": "spearman"}],
    "rsa_spearman": [{"rdm": "euclidean"}, {"rdm": "correlation"}],
    "angular_shape": [{"alpha": 0.0}, {"alpha": 0.5}, {"alpha": 0.0, "center": False}, {"center": False}],
    "gulp": [{"lam": 0.1}],
    "soft_matching": [{"center": False}],
    "uniformity_difference": [{"normalize": False}],
}
SYMMETRY_SETTINGS = {"rtd": [{"symmetric": False}]}  # measures whose symmetry depends on an option
OPTION_CASES = [
    (name, options, kind)
    for name, settings in OPTION_SETTINGS.items()
    for options in settings
    for kind in repsim.INVARIANCES
]


def test_every_option_dependent_declaration_is_tested():
    dependent = {n for n in NAMES if get_measure(n).invariances_given is not None}
    assert dependent == set(OPTION_SETTINGS), "add the measure's option settings to OPTION_SETTINGS"


@pytest.mark.parametrize(("name", "options", "kind"), OPTION_CASES)
def test_invariances_at_other_options(name, options, kind):
    """Declared invariances hold at these options, and undeclared ones fail on some input."""
    declared = kind in _closure(get_measure(name).invariances_at(**options))
    changes = []
    for seed, near in [(0, False), (1, False), (2, True), (3, True)]:
        x, y, kwargs, g = _data(seed, name, near=near)
        kwargs = {**kwargs, **options}
        base = _value(name, x, y, kwargs)
        for moved in (_value(name, x, _transform(kind, y, g), kwargs), _value(name, _transform(kind, x, g), y, kwargs)):
            changes.append(abs(base - moved) / max(1.0, abs(base)))
    if declared:
        assert max(changes) <= 1e-6, f"{name}{options} declares {kind} invariance but moved by {max(changes)}"
    else:
        assert max(changes) > 1e-5, f"{name}{options} is {kind}-invariant on every try ({changes}); declare it"


@pytest.mark.parametrize("name", NAMES)
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_symmetry_and_identity(name, seed):
    info = get_measure(name)
    x, y, kwargs, _ = _data(seed, name)
    if info.identity_value is not None:
        assert _close(_value(name, x, x, kwargs), info.identity_value, 1e-8), f"{name}(x, x) != {info.identity_value}"
    if info.symmetric:
        assert _close(_value(name, x, y, kwargs), _value(name, y, x, kwargs), 1e-8), f"{name} is not symmetric"


def test_asymmetric_declarations_are_needed():
    """A measure declared asymmetric really is (else the declaration hides a useful property)."""
    for name in NAMES:
        info = get_measure(name)
        if info.symmetric:
            continue
        diffs = []
        for seed in range(3):
            x, y, kwargs, _ = _data(seed, name)
            diffs.append(abs(_value(name, x, y, kwargs) - _value(name, y, x, kwargs)))
        assert max(diffs) > 1e-8, f"{name} is declared asymmetric but is symmetric on every try"


def test_option_dependent_symmetry_holds():
    """``symmetric_at(**options)`` is right both ways at the settings where the symmetry changes."""
    dependent = {n for n in NAMES if get_measure(n).symmetric_given is not None}
    assert dependent == set(SYMMETRY_SETTINGS) & set(NAMES), "add the measure's settings to SYMMETRY_SETTINGS"
    for name in dependent:
        for options in [{}, *SYMMETRY_SETTINGS[name]]:
            diffs = []
            for seed in range(2):
                x, y, kwargs, _ = _data(seed, name)
                kwargs = {**kwargs, **options}
                diffs.append(abs(_value(name, x, y, kwargs) - _value(name, y, x, kwargs)))
            symmetric = max(diffs) <= 1e-8
            assert symmetric == get_measure(name).symmetric_at(**options), f"{name}{options}: {diffs}"


@pytest.mark.parametrize("name", [n for n in NAMES if get_measure(n).metric])
@SETTINGS
@given(seed=st.integers(0, 2**16))
def test_metrics_satisfy_triangle_inequality(name, seed):
    x, y, kwargs, g = _data(seed, name)
    z = x[:, : y.shape[1]] + 1.5 * torch.randn(y.shape, generator=g, dtype=y.dtype)
    d_xy, d_yz, d_xz = _value(name, x, y, kwargs), _value(name, y, z, kwargs), _value(name, x, z, kwargs)
    assert min(d_xy, d_yz, d_xz) >= -1e-10
    assert d_xz <= d_xy + d_yz + 1e-9, f"{name}: d(x,z)={d_xz} > d(x,y)+d(y,z)={d_xy + d_yz}"


@pytest.mark.parametrize("name", [n for n in NAMES if get_measure(n).streaming])
def test_streaming_equals_one_shot(name):
    info = get_measure(name)
    x, y, kwargs, _ = _data(7, name, n=97)
    x, y = x + 300.0, y - 200.0  # a large offset: the moments must not cancel
    if info.from_moments is not None:
        acc = StreamingMoments()
        for i in range(0, 97, 23):
            acc.update(x[i : i + 23], y[i : i + 23])
        streamed = acc.compute(name)
    else:
        acc = info.accumulator(**info.defaults)
        for i in range(0, 97, 23):
            acc.update(x[i : i + 23], y[i : i + 23])
        streamed = acc.compute()
    one_shot = repsim.measure(x, y, name, **kwargs)
    assert abs(float(streamed) - float(one_shot)) <= 1e-10 * max(1.0, abs(float(one_shot)))


@pytest.mark.parametrize("name", NAMES)
def test_grid_equals_pairwise_loop(name):
    info = get_measure(name)
    x, y, kwargs, g = _data(3, name)
    x2 = x + 0.5 * torch.randn(x.shape, generator=g, dtype=x.dtype)
    y2 = y[:, : y.shape[1]] * 2 + torch.randn(y.shape, generator=g, dtype=y.dtype)
    if info.needs_equal_widths or info.needs_outputs:
        xs, ys = [x, x2], [y, y2]
    else:
        xs, ys = [x, x2[:, :3]], [y, y2, x]
    grid = repsim.measure_grid(xs, ys, name, **kwargs)
    assert grid.shape == (len(xs), len(ys)) and grid.dtype == torch.float64
    for i, a in enumerate(xs):
        for j, b in enumerate(ys):
            want = repsim.measure(a, b, name, **kwargs)
            assert math.isclose(float(grid[i, j]), float(want), rel_tol=1e-8, abs_tol=1e-10), (name, i, j)


@pytest.mark.parametrize("name", NAMES)
def test_bad_inputs_are_refused(name):
    x, y, kwargs, _ = _data(5, name)
    bad = x.clone()
    bad[3, 1] = float("nan")
    with pytest.raises(ValueError, match=r"NaN|Inf"):
        repsim.measure(bad, y, name, **kwargs)
    with pytest.raises(ValueError, match="samples"):
        repsim.measure(x, y[:-1], name, **kwargs)
    with pytest.raises(ValueError, match="2-D"):
        repsim.measure(x[None], y, name, **kwargs)
    if not get_measure(name).needs_outputs:
        with pytest.raises(ValueError, match=r"^x (is constant|has a constant)"):  # names the argument
            repsim.measure(torch.ones(N, P, dtype=torch.float64), y, name, **kwargs)


def test_every_entry_has_complete_metadata():
    table = repsim.list_measures()
    assert not table["cost"].eq("").any()
    assert table["name"].is_unique
    for name in NAMES:
        info = get_measure(name)
        assert info.fn.__doc__, f"{name} has no docstring"
        assert info.reference or info.family in ("gram",), f"{name} names no reference"
