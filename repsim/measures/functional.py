"""Functional measures: compare two models' OUTPUTS (logits, (n, C)) on the same samples.

``jsd`` (mean Jensen-Shannon divergence of the softmax outputs), ``disagreement`` (fraction of
samples whose predicted class differs) and ``abs_acc_diff`` (|accuracy difference| given the
labels), as in Klabunde et al.'s survey and ReSi. Registered with ``needs_outputs=True``.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..core.numerics import ACC
from ..core.validation import as_features
from .kinds import layer_measure


def _logits(x, name: str) -> Tensor:
    x = as_features(x, name, 1)
    if x.shape[1] < 2:
        raise ValueError(f"{name} has {x.shape[1]} class (column); logits need at least 2 classes, shape (n, C)")
    return x


def _logit_pair(x, y) -> tuple[Tensor, Tensor]:
    x, y = _logits(x, "x"), _logits(y, "y")
    if x.shape != y.shape:
        raise ValueError(
            f"x has shape {tuple(x.shape)} but y has {tuple(y.shape)}; both must be logits (n, C) of the same "
            "samples over the same classes"
        )
    if x.device != y.device:
        raise ValueError(f"x is on {x.device} but y is on {y.device}; move both to one device")
    return x, y


def _logit_layers(xs, ys) -> tuple[list[Tensor], list[Tensor]]:
    def as_list(v, name):
        if isinstance(v, (Tensor, np.ndarray)):
            v = [v]
        v = list(v.values()) if isinstance(v, dict) else list(v)
        if not v:
            raise ValueError(f"{name} is empty; pass at least one (n, C) logit tensor")
        return [_logits(t, f"{name}[{i}]") for i, t in enumerate(v)]

    xs_list = as_list(xs, "xs")
    ys_list = xs_list if ys is None else as_list(ys, "ys")
    for t in xs_list + ys_list:
        _logit_pair(xs_list[0], t)
    return xs_list, ys_list


def _jsd_rows(lp: Tensor, lq: Tensor) -> Tensor:
    """Per-sample JSD(p, q) in nats from log-probabilities (..., n, C); never forms log(0).

    With delta = log q - log p and m = (p + q)/2: log p - log m = -f(delta), log q - log m = -f(-delta),
    f(delta) = log((1 + e^delta)/2) = relu(delta) + log1p(expm1(-|delta|)/2) (no overflow, exactly 0
    at delta = 0). Each class's term p log(p/m) + q log(q/m) = phi(p) + phi(q) - 2 phi(m) >= 0
    (convexity of phi(t) = t log t), so a negative term is rounding and is set to 0.
    """
    delta = lq - lp
    h = torch.log1p(torch.expm1(-delta.abs()) / 2)
    p, q = lp.exp(), lq.exp()
    term = -(p * (delta.clamp_min(0) + h) + q * ((-delta).clamp_min(0) + h))
    return 0.5 * term.clamp_min(0).sum(-1)


_SURVEY = "Klabunde, Schumacher, Strohmaier & Lemmerich 2025, ACM Comput. Surv.; ReSi (Klabunde et al. 2025, ICLR)"
_OUTPUTS = dict(
    validate_pair=_logit_pair,
    validate_layers=_logit_layers,
    family="functional",
    larger_is_more_similar=False,
    cost="O(n C)",
    identity_value=0.0,
    needs_outputs=True,
    needs_equal_widths=True,  # the same classes on both sides
)


def _log_probabilities(x: Tensor, **_) -> Tensor:
    return torch.log_softmax(x.to(ACC), 1)


@layer_measure(
    "jsd",
    differentiable=True,
    prepare=_log_probabilities,
    pair=lambda lp, lq, **_: _jsd_rows(lp, lq).mean(),
    reference="Lin 1991, IEEE Trans. Inf. Theory; " + _SURVEY,
    **_OUTPUTS,
)
def jsd(x: Tensor, y: Tensor) -> Tensor:
    """mean_i JSD(softmax(x_i), softmax(y_i)), natural log (in [0, log 2]).

    JSD(p, q) = KL(p || m)/2 + KL(q || m)/2, m = (p + q)/2, from log-softmax in float64 (once
    per output set in a grid). Invariant only to adding the same constant to all logits of a
    sample (not a feature-space map; none of the registry's invariances holds). Cost O(n C).
    """


@layer_measure(
    "disagreement",
    differentiable=False,
    prepare=lambda x, **_: x.argmax(1),
    pair=lambda px, py, **_: (px != py).to(ACC).mean(),
    invariances=("isotropic_scaling",),
    reference=_SURVEY,
    **_OUTPUTS,
)
def disagreement(x: Tensor, y: Tensor) -> Tensor:
    """Fraction of samples whose predicted classes differ: mean_i [argmax x_i != argmax y_i].

    Ties go to the first maximal class (torch.argmax). Invariant to positive scaling of the
    logits. Cost O(n C).
    """


def _labels(labels, n: int, classes: int, device) -> Tensor:
    if labels is None:
        raise ValueError("abs_acc_diff needs the true classes: pass labels= (an (n,) integer tensor)")
    if isinstance(labels, np.ndarray):
        labels = torch.from_numpy(labels)
    elif isinstance(labels, (list, tuple)):
        labels = torch.tensor(labels)
    if not isinstance(labels, Tensor):
        raise ValueError(f"labels must be a tensor, numpy array or list of shape (n,), got {type(labels).__name__}")
    if labels.is_floating_point() or labels.is_complex() or labels.dtype == torch.bool:
        raise ValueError(f"labels must hold integer class indices, got dtype {labels.dtype}")
    if labels.shape != (n,):
        raise ValueError(f"labels has shape {tuple(labels.shape)} but the logits have {n} samples; pass shape ({n},)")
    labels = labels.to(device=device, dtype=torch.int64)
    lo, hi = int(labels.min()), int(labels.max())
    if lo < 0 or hi >= classes:
        raise ValueError(f"labels must lie in [0, {classes - 1}] for logits with {classes} classes; got [{lo}, {hi}]")
    return labels


def _accuracy_differences(xs: list[Tensor], ys: list[Tensor], labels: Tensor | None) -> Tensor:
    labels = _labels(labels, xs[0].shape[0], xs[0].shape[1], xs[0].device)
    ax = torch.stack([(x.argmax(1) == labels).to(ACC).mean() for x in xs])
    ay = ax if ys is xs else torch.stack([(y.argmax(1) == labels).to(ACC).mean() for y in ys])
    return (ax[:, None] - ay[None, :]).abs()


@layer_measure(
    "abs_acc_diff",
    differentiable=False,
    grid=_accuracy_differences,
    invariances=("isotropic_scaling",),
    needs_labels=True,
    reference=_SURVEY,
    **_OUTPUTS,
)
def abs_acc_diff(x: Tensor, y: Tensor, *, labels: Tensor | None = None) -> Tensor:
    """|acc(x) - acc(y)| with acc = mean_i [argmax x_i == labels_i]. Invariant to positive scaling
    of the logits. Cost O(n C)."""
