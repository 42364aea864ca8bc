"""Functional measures: compare what two models output (logits of the same samples), not how
they represent it (Klabunde et al. 2025, ReSi's functional measures)."""

from __future__ import annotations

import math

import torch
from torch import Tensor

from .._validation import as_features, check_same_samples
from .registry import register

_ACC = torch.float64
_RESI = "Klabunde et al. 2025, ReSi (ICLR)"


def _logits(x, y, min_samples: int = 1) -> tuple[Tensor, Tensor]:
    x = as_features(x, "x", min_samples)
    y = as_features(y, "y", min_samples)
    check_same_samples(x, y)
    if x.shape[1] != y.shape[1]:
        raise ValueError(f"x and y must be logits over the same classes; got {x.shape[1]} and {y.shape[1]} columns")
    if x.shape[1] < 2:
        raise ValueError("functional measures need logits over at least 2 classes (shape (n, C), C >= 2)")
    return x.to(_ACC), y.to(_ACC)


def jsd(x: Tensor, y: Tensor) -> Tensor:
    """Mean Jensen-Shannon divergence between the two models' predictive distributions (natural log).

    JSD(p, q) = (KL(p | m) + KL(q | m)) / 2, m = (p + q)/2, with p = softmax(x_i), q = softmax(y_i);
    in [0, log 2]. Computed from log-softmax and logsumexp, so no log(0) or 0/0 even for
    saturated logits.
    """
    x, y = _logits(x, y)
    lp, lq = torch.log_softmax(x, 1), torch.log_softmax(y, 1)
    lm = torch.logaddexp(lp, lq) - math.log(2)
    kl_pm = (lp.exp() * (lp - lm)).sum(1)
    kl_qm = (lq.exp() * (lq - lm)).sum(1)
    return ((kl_pm + kl_qm) / 2).clamp_min(0.0).mean()


def disagreement(x: Tensor, y: Tensor) -> Tensor:
    """Fraction of samples on which the two models' top-1 predictions (argmax of the logits) differ."""
    x, y = _logits(x, y)
    return (x.argmax(1) != y.argmax(1)).to(_ACC).mean()


def abs_acc_diff(x: Tensor, y: Tensor, labels: Tensor | None = None) -> Tensor:
    """|accuracy(x) - accuracy(y)| of the two models' top-1 predictions against ``labels`` (n,)."""
    x, y = _logits(x, y)
    if labels is None:
        raise ValueError("abs_acc_diff needs labels=: the (n,) true class indices of the samples")
    labels = torch.as_tensor(labels, device=x.device)
    if labels.shape != (x.shape[0],) or labels.is_floating_point():
        raise ValueError(f"labels must be an integer tensor of shape ({x.shape[0]},), got {tuple(labels.shape)}")
    if bool((labels < 0).any() or (labels >= x.shape[1]).any()):
        raise ValueError(f"labels must lie in [0, {x.shape[1]}) (one per logit column)")
    acc_x = (x.argmax(1) == labels).to(_ACC).mean()
    acc_y = (y.argmax(1) == labels).to(_ACC).mean()
    return (acc_x - acc_y).abs()


_FUNC = {"family": "functional", "larger_is_more_similar": False, "needs_outputs": True, "identity_value": 0.0}
register("jsd", fn=jsd, cost="O(n C)", reference=_RESI + "; Lin 1991", **_FUNC)
register("disagreement", fn=disagreement, metric=True, cost="O(n C)", reference=_RESI, **_FUNC)
register("abs_acc_diff", fn=abs_acc_diff, metric=True, needs_labels=True, cost="O(n C)", reference=_RESI, **_FUNC)
