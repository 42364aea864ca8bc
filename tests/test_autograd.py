"""Declared autograd (MeasureInfo.differentiable), checked: float64 gradcheck for every entry that says
yes, a value detached from the graph (and no error) for every entry that says no, the layer grid's
gradient equal to the one-shot one, and the guide's CKA-as-a-loss snippet run as written."""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import torch

import repsim
from repsim.measures.registry import get_measure, registered_names

N, P, Q = 10, 4, 3
SMALL = {  # options that keep the slow entries' work small on N = 10 samples
    "geometry_score": {"n_landmarks": 5, "n_repeats": 2},
    "rtd": {"n_repeats": 2, "subset_size": 8},
    "imd": {"k": 3, "n_scales": 16},
}
VARIANTS = [  # option settings whose answer differs from the default's
    ("rsa", {"compare": "kendall"}),
    ("rsa", {"compare": "kendall_tau_b"}),
    ("rsa", {"compare": "spearman"}),
    ("rsa", {"rdm": "euclidean"}),
    ("linear_cka", {"method": "gram"}),
    ("linear_cka", {"method": "feature", "debiased": True}),
]
FULL_JACOBIAN = {"linear_cka", "debiased_cka", "kernel_cka", "rsa"}
CASES = [(n, {}) for n in registered_names() if get_measure(n).available()] + VARIANTS


def _inputs(info, seed=0):
    g = torch.Generator().manual_seed(seed)
    q = P if info.needs_equal_widths or info.needs_outputs else Q
    x = torch.randn(N, P, generator=g, dtype=torch.float64)
    y = torch.tanh(x @ torch.randn(P, q, generator=g, dtype=torch.float64)) + 0.5 * torch.randn(
        N, q, generator=g, dtype=torch.float64
    )
    options = {"labels": torch.arange(N) % P} if info.needs_labels else {}
    options.update({k: v for k, v in SMALL.get(info.name, {}).items() if k in info.options()})
    if "k" in info.options() and "k" not in options:  # kNN measures: k < n
        options["k"] = 3
    return x, y, options


@pytest.mark.parametrize(("name", "variant"), CASES, ids=[f"{n}{v or ''}" for n, v in CASES])
def test_declared_autograd_holds(name, variant):
    info = get_measure(name)
    x, y, options = _inputs(info)
    options.update(variant)
    x.requires_grad_(True)
    y.requires_grad_(True)

    def value(a, b):
        return repsim.measure(a, b, name, **options)

    if info.differentiable_at(**variant):
        # fast mode checks the derivative along random directions (a few evaluations instead of one per
        # input entry); the measures people train with get the full Jacobian
        fast = name not in FULL_JACOBIAN
        assert torch.autograd.gradcheck(value, (x, y), eps=1e-6, atol=1e-6, rtol=1e-4, fast_mode=fast), name
        return
    out = value(x, y)
    assert not out.requires_grad, f"{name} {variant} says it is not differentiable, so its value must be detached"
    assert torch.equal(out, value(x.detach(), y.detach()))
    grid = repsim.measure_grid([x], [y], name, **options)
    assert not grid.requires_grad


@pytest.mark.parametrize("name", [n for n in registered_names() if get_measure(n).differentiable])
def test_the_grid_has_the_one_shot_gradient(name):
    info = get_measure(name)
    x, y, options = _inputs(info, seed=1)
    x.requires_grad_(True)
    (gx_one,) = torch.autograd.grad(repsim.measure(x, y, name, **options), x)
    grid = repsim.measure_grid([x, x.flip(1)], [y], name, **options)
    (gx_grid,) = torch.autograd.grad(grid[0, 0], x)
    torch.testing.assert_close(gx_grid, gx_one, rtol=1e-7, atol=1e-9)


def test_declarations_are_needed():
    """Both kinds occur, so neither declaration is vacuous."""
    flags = {get_measure(n).differentiable for n in registered_names()}
    assert flags == {True, False}


def test_the_guide_snippet_trains_a_student_with_cka():
    page = (Path(__file__).parents[1] / "docs" / "guide" / "measures.md").read_text()
    block = re.search(r"<!-- autograd-snippet:start -->\s*```python\n(.*?)```", page, flags=re.S)
    assert block is not None, "the snippet's markers moved"
    exec(compile(block.group(1), "docs/guide/measures.md", "exec"), {})  # it asserts that CKA went up


def test_safe_sqrt_has_sqrt_values_and_a_zero_gradient_at_zero():
    from repsim.core.numerics import safe_sqrt

    t = torch.tensor([0.0, 0.25, 4.0], dtype=torch.float64, requires_grad=True)
    out = safe_sqrt(t)
    assert torch.equal(out, t.detach().sqrt())
    (grad,) = torch.autograd.grad(out.sum(), t)
    assert torch.equal(grad, torch.tensor([0.0, 1.0, 0.25], dtype=torch.float64))
