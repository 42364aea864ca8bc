"""Loss values against naive per-anchor loops from the papers' definitions (zoo/losses.py), identities, gradients,
edge cases."""

import math
import warnings

import pytest
import torch

from zoo import losses as L


def _naive(z1, z2, tau, labels=None, kind="cl", include_positive=True, lam=1.0, alpha=None):
    z = torch.nn.functional.normalize(torch.cat([z1, z2]).double(), dim=1)
    n2, b = z.shape[0], z.shape[0] // 2
    y = None if labels is None else torch.cat([labels, labels])
    total, count = 0.0, 0
    for i in range(n2):
        p = (i + b) % n2
        s = lambda k: (alpha * (z[i] @ z[k]) if alpha else (z[i] @ z[k]) / tau).item()  # noqa: B023, E731
        if kind == "supcon":
            pos = [k for k in range(n2) if k != i and y[k] == y[i]]
            den = [k for k in range(n2) if k != i]
        else:
            pos = [p]
            den = [k for k in range(n2) if k not in (i, p)]
            if kind == "nscl":
                den = [k for k in den if y[k] != y[i]]
            if include_positive and kind in ("cl", "nscl"):
                den.append(p)
        if not pos or not den:
            continue
        lse = math.log(sum(math.exp(s(k)) for k in den))
        li = -sum(s(k) for k in pos) / len(pos) + lam * lse
        total += li / alpha if alpha else li
        count += 1
    return total / count


@pytest.fixture
def views():
    g = torch.Generator().manual_seed(0)
    return torch.randn(6, 4, generator=g), torch.randn(6, 4, generator=g), torch.tensor([0, 1, 0, 2, 1, 2])


def test_against_naive_loops(views):
    z1, z2, y = views
    assert L.nt_xent(z1, z2, tau=0.5).item() == pytest.approx(_naive(z1, z2, 0.5), rel=1e-6)
    assert L.dcl(z1, z2, tau=0.5).item() == pytest.approx(_naive(z1, z2, 0.5, include_positive=False), rel=1e-6)
    for inc in (False, True):
        assert L.nscl(z1, z2, y, tau=0.3, include_positive=inc).item() == pytest.approx(
            _naive(z1, z2, 0.3, y, "nscl", include_positive=inc), rel=1e-6
        )
    assert L.supcon(z1, z2, y, tau=0.1).item() == pytest.approx(_naive(z1, z2, 0.1, y, "supcon"), rel=1e-6)
    assert L.balanced(z1, z2, alpha=3.0, lam=0.7).item() == pytest.approx(
        _naive(z1, z2, None, kind="balanced", include_positive=False, lam=0.7, alpha=3.0), rel=1e-6
    )


def test_tiny_closed_form():
    # B = 1, orthogonal views: s_12 = 0, the only other k is the positive -> NT-Xent = -0 + log(e^0) = 0
    z1, z2 = torch.tensor([[1.0, 0.0]]), torch.tensor([[0.0, 1.0]])
    assert L.nt_xent(z1, z2, tau=0.5).item() == pytest.approx(0.0, abs=1e-7)
    # B = 2, identical views a, a, b, b with a.b = 0, tau = 1: anchor 0 positive s=1, denominator {1, 2, 3} -> e^1 + 2
    z1 = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    assert L.nt_xent(z1, z1.clone(), tau=1.0).item() == pytest.approx(-1 + math.log(math.e + 2), rel=1e-6)
    assert L.dcl(z1, z1.clone(), tau=1.0).item() == pytest.approx(-1 + math.log(2), rel=1e-6)


def test_balanced_equals_tau_times_dcl(views):
    z1, z2, _ = views
    for tau in (0.1, 0.5, 1.0):
        assert L.balanced(z1, z2, alpha=1 / tau, lam=1.0).item() == pytest.approx(
            tau * L.dcl(z1, z2, tau=tau).item(), rel=1e-6
        )


def test_nscl_equals_dcl_when_all_labels_differ(views):
    z1, z2, _ = views
    distinct = torch.arange(6)
    assert L.nscl(z1, z2, distinct, tau=0.5).item() == pytest.approx(L.dcl(z1, z2, tau=0.5).item(), rel=1e-7)
    # ... and with include_positive the pair CL/NSCL differs only in the class mask
    assert L.nscl(z1, z2, distinct, tau=0.5, include_positive=True).item() == pytest.approx(
        L.nt_xent(z1, z2, tau=0.5).item(), rel=1e-7
    )


def test_float64_gradcheck(views):
    z1, z2, y = (t.double() if t.is_floating_point() else t for t in views)
    z1.requires_grad_(True)
    z2.requires_grad_(True)
    for fn in (
        lambda a, b: L.nt_xent(a, b, tau=0.5),
        lambda a, b: L.dcl(a, b, tau=0.5),
        lambda a, b: L.nscl(a, b, y, tau=0.5),
        lambda a, b: L.supcon(a, b, y, tau=0.2),
        lambda a, b: L.balanced(a, b, alpha=2.0, lam=0.5),
    ):
        assert torch.autograd.gradcheck(fn, (z1, z2))


def test_stable_at_small_temperature():
    g = torch.Generator().manual_seed(1)
    z1, z2 = torch.randn(64, 16, generator=g), torch.randn(64, 16, generator=g)
    y = torch.randint(0, 4, (64,), generator=g)
    z1.requires_grad_(True)
    for value in (L.nt_xent(z1, z2, tau=0.01), L.nscl(z1, z2, y, tau=0.01), L.supcon(z1, z2, y, tau=0.01)):
        value.backward()
        assert torch.isfinite(value) and torch.isfinite(z1.grad).all()


def test_float32_under_autocast_and_half_inputs():
    g = torch.Generator().manual_seed(2)
    z1, z2 = torch.randn(16, 8, generator=g), torch.randn(16, 8, generator=g)
    ref = L.nt_xent(z1, z2, tau=0.1)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        inside = L.nt_xent(z1.bfloat16(), z2.bfloat16(), tau=0.1)
    assert inside.dtype == torch.float32
    assert inside.item() == pytest.approx(ref.item(), rel=2e-2)


def test_empty_sets_are_dropped_counted_and_warned():
    g = torch.Generator().manual_seed(3)
    z1, z2 = torch.randn(4, 3, generator=g), torch.randn(4, 3, generator=g)
    same = torch.zeros(4, dtype=torch.long)
    with pytest.warns(RuntimeWarning, match="8 of 8 anchors"):
        out = L.contrastive(z1, z2, 0.5, include_positive=False, labels=same, negatives_only=True)
    assert out.dropped == 8 and out.loss.item() == 0.0
    z1.requires_grad_(True)
    with pytest.warns(RuntimeWarning):
        out = L.contrastive(z1, z2, 0.5, include_positive=False, labels=same, negatives_only=True)
    out.loss.backward()  # the zero loss keeps the graph: a training step does not crash
    assert torch.equal(z1.grad, torch.zeros_like(z1))
    # with two classes every anchor has negatives: nothing dropped, no warning
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = L.contrastive(z1, z2, 0.5, include_positive=False, labels=torch.tensor([0, 0, 0, 1]), negatives_only=True)
    assert out.dropped == 0 and torch.isfinite(out.loss)
    # SupCon: every anchor has its other view as a positive, so nothing is dropped
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        assert torch.isfinite(L.supcon(z1, z2, torch.arange(4), tau=0.1))


def test_bad_input():
    z = torch.randn(4, 3)
    with pytest.raises(ValueError, match="one shape"):
        L.nt_xent(z, torch.randn(5, 3))
    with pytest.raises(ValueError, match="labels must have shape"):
        L.nscl(z, z, torch.zeros(3, dtype=torch.long))
    with pytest.raises(ValueError, match="tau must be positive"):
        L.nt_xent(z, z, tau=0.0)
    with pytest.raises(ValueError, match="needs labels"):
        L.contrastive(z, z, 0.5, negatives_only=True)


def test_cross_entropy_over_both_views():
    logits1, logits2 = torch.randn(5, 3), torch.randn(5, 3)
    y = torch.tensor([0, 1, 2, 0, 1])
    expected = (torch.nn.functional.cross_entropy(logits1, y) + torch.nn.functional.cross_entropy(logits2, y)) / 2
    assert L.cross_entropy(logits1, logits2, y).item() == pytest.approx(expected.item(), rel=1e-6)
