"""Functional family on model outputs (logits): jsd, disagreement, abs_acc_diff."""

import math

import numpy as np
import pytest
import torch

import repsim

from . import reference_rsm_stats as ref


def _logits(gen, n=60, c=5, scale=2.0):
    return scale * torch.randn(n, c, generator=gen, dtype=torch.float64)


def test_jsd_matches_rel_entr_reference(gen):
    x, y = _logits(gen), _logits(gen)
    got = repsim.jsd(x, y)
    assert got.dtype == torch.float64 and got.ndim == 0
    assert got.item() == pytest.approx(ref.jsd(x.numpy(), y.numpy()), abs=1e-14)
    # float32 logits are upcast: same value
    assert repsim.jsd(x.float(), y.float()).item() == pytest.approx(
        ref.jsd(x.float().double().numpy(), y.float().double().numpy()), abs=1e-14
    )


def test_jsd_closed_forms(gen):
    x = _logits(gen)
    assert repsim.jsd(x, x).item() == 0.0
    assert repsim.jsd(x, x + 3.0).item() == pytest.approx(0.0, abs=1e-15)  # softmax ignores a per-row shift
    # disjoint (numerically one-hot) outputs: JSD = log 2, with no log(0) or overflow at extreme logits
    a = torch.tensor([[1e4, -1e4], [0.0, 2e3]], dtype=torch.float64)
    b = torch.tensor([[-1e4, 1e4], [2e3, 0.0]], dtype=torch.float64)
    assert repsim.jsd(a, b).item() == pytest.approx(math.log(2), abs=1e-15)
    v = repsim.jsd(_logits(gen, scale=10.0), _logits(gen, scale=10.0))
    assert 0 <= v <= math.log(2)


def test_disagreement_and_accuracy_match_reference(gen):
    x, y = _logits(gen), _logits(gen)
    labels = torch.randint(0, 5, (60,), generator=gen)
    assert repsim.disagreement(x, y).item() == pytest.approx(ref.disagreement(x.numpy(), y.numpy()), abs=0)
    assert repsim.disagreement(x, x).item() == 0.0
    assert repsim.disagreement(x, 3.0 * x).item() == 0.0
    want = ref.abs_acc_diff(x.numpy(), y.numpy(), labels.numpy())
    assert repsim.abs_acc_diff(x, y, labels=labels).item() == pytest.approx(want, abs=1e-15)
    assert repsim.abs_acc_diff(x, y, labels=labels.numpy().astype(np.int32)).item() == pytest.approx(want, abs=1e-15)
    assert repsim.measure(x, y, "abs_acc_diff", labels=labels).item() == pytest.approx(want, abs=1e-15)
    # closed form: y always right, x always wrong -> 1
    onehot = torch.nn.functional.one_hot(labels, 5).double()
    assert repsim.abs_acc_diff(-onehot, onehot, labels=labels).item() == 1.0


@pytest.mark.parametrize("name", ["jsd", "disagreement", "abs_acc_diff"])
def test_grid_equals_pair_loop(gen, name):
    outs = [_logits(gen) for _ in range(3)]
    opts = {"labels": torch.randint(0, 5, (60,), generator=gen)} if name == "abs_acc_diff" else {}
    grid = repsim.measure_grid(outs, outs[:2], name, **opts)
    loop = torch.stack([torch.stack([repsim.measure(a, b, name, **opts) for b in outs[:2]]) for a in outs])
    assert grid.shape == (3, 2) and grid.dtype == torch.float64
    assert torch.allclose(grid, loop, rtol=0, atol=1e-15)
    assert (repsim.measure_grid(outs, None, name, **opts).diagonal() == 0).all()


def test_bad_inputs_are_clear_errors(gen):
    x, y = _logits(gen), _logits(gen)
    labels = torch.randint(0, 5, (60,), generator=gen)
    with pytest.raises(ValueError, match="same classes"):
        repsim.jsd(x, y[:, :4])
    with pytest.raises(ValueError, match="same samples"):
        repsim.disagreement(x, y[:50])
    with pytest.raises(ValueError, match="at least 2 classes"):
        repsim.jsd(x[:, :1], y[:, :1])
    with pytest.raises(ValueError, match="NaN or Inf"):
        repsim.jsd(x.clone().fill_(float("nan")), y)
    with pytest.raises(ValueError, match="needs the true classes"):
        repsim.abs_acc_diff(x, y)
    with pytest.raises(ValueError, match="integer class indices"):
        repsim.abs_acc_diff(x, y, labels=labels.double())
    with pytest.raises(ValueError, match="shape"):
        repsim.abs_acc_diff(x, y, labels=labels[:10])
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\]"):
        repsim.abs_acc_diff(x, y, labels=labels + 1)
    with pytest.raises(ValueError, match=r"must lie in \[0, 4\]"):
        repsim.abs_acc_diff(x, y, labels=labels - 1)
    with pytest.raises(ValueError, match="labels must be a tensor"):
        repsim.abs_acc_diff(x, y, labels="cats")
    assert repsim.abs_acc_diff(x, y, labels=labels.tolist()) == repsim.abs_acc_diff(x, y, labels=labels)


def test_registry_declarations():
    table = repsim.list_measures().set_index("name")
    for name in ("jsd", "disagreement", "abs_acc_diff"):
        row = table.loc[name]
        assert row["family"] == "functional" and row["needs_outputs"] and row["batched"]
        assert row["identity_value"] == 0.0 and not row["larger_is_more_similar"]
        assert row["needs_equal_widths"]
    assert table.loc["abs_acc_diff", "needs_labels"] and not table.loc["jsd", "needs_labels"]
    assert not table.loc["jsd", "inv_isotropic_scaling"] and table.loc["disagreement", "inv_isotropic_scaling"]
