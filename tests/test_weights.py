import math

import pytest
import torch

import repsim
from tests.models import TinyConvNet, seeded


def test_per_tensor_and_global_values():
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.weight_distance(a, b)
    assert list(res.table.columns) == ["name", "shape", "numel", "relative_frobenius", "l2", "cosine"]
    assert len(res.table) == len(list(a.parameters()))
    row = res.table.set_index("name").loc["block1.0.weight"]
    wa, wb = a.block1[0].weight.double(), b.block1[0].weight.double()
    expected = (wa - wb).norm() / (0.5 * (wa.norm() + wb.norm()))
    assert row["relative_frobenius"] == pytest.approx(expected.item(), rel=1e-12)
    va = torch.cat([p.double().flatten() for p in a.parameters()])
    vb = torch.cat([p.double().flatten() for p in b.parameters()])
    assert res.global_l2 == pytest.approx((va - vb).norm().item(), rel=1e-12)
    assert res.global_cosine == pytest.approx((va @ vb / (va.norm() * vb.norm())).item(), rel=1e-12)
    weights = res.table[[len(s) >= 2 for s in res.table["shape"]]]
    assert res.mean_relative == pytest.approx(weights["relative_frobenius"].mean())
    assert 0 < res.angle_degrees < 180


def test_identical_and_scaled():
    a = seeded(TinyConvNet, 0)
    assert repsim.weight_distance(a, a).mean_relative == 0.0
    b = seeded(TinyConvNet, 0)
    with torch.no_grad():
        for p in b.parameters():
            p.mul_(3.0)
    res = repsim.weight_distance(a, b)
    assert res.global_cosine == pytest.approx(1.0, abs=1e-12)  # same direction
    assert res.mean_relative == pytest.approx(1.0, rel=1e-6)  # |3w - w| / (0.5 * 4|w|) = 1, float32 weights
    assert math.isclose(res.angle_degrees, 0.0, abs_tol=1e-5)


def test_mismatched_architectures_list_the_differences():
    class Other(TinyConvNet):
        def __init__(self):
            super().__init__(num_classes=5)
            self.extra = torch.nn.Linear(2, 2)

    with pytest.raises(ValueError, match=r"only in model_b: \['extra.bias', 'extra.weight'\].*different shapes"):
        repsim.weight_distance(TinyConvNet(), Other())


def test_state_dicts_and_include_filter():
    a, b = seeded(TinyConvNet, 0), seeded(TinyConvNet, 1)
    res = repsim.weight_distance(a.state_dict(), b.state_dict(), include=r"^block1\.")
    assert set(res.table["name"]) == {"block1.0.weight", "block1.0.bias"}
    with pytest.raises(ValueError, match="no parameters"):
        repsim.weight_distance(a, b, include="^nothing")
