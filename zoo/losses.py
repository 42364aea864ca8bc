"""Contrastive objectives on one masked log-sum-exp core.

Two views z1, z2 (B, d) give 2B anchors; p(i) is the other view of anchor i; embeddings are
L2-normalised inside; s_ik = z_i . z_k / tau. Every objective is

    loss_i = -mean_{p in P(i)} s_ip + lam * log sum_{k in D(i)} exp(s_ik)

and only declares its positive set P(i) and denominator set D(i):

* NT-Xent (SimCLR, Chen et al. 2020): P = {p(i)}, D = {k != i}
* DCL (decoupled, Yeh et al. 2022):   P = {p(i)}, D = {k not in {i, p(i)}}
* NSCL (arXiv 2510.08852):            P = {p(i)}, D = {k : y_k != y_i}
* SupCon L_out (Khosla et al. 2020):  P = {p != i : y_p = y_i}, D = {k != i}
* balanced (arXiv 2510.10572): -cos(z_i, z_p(i)) + (lam/alpha) log sum_{k not in {i,p(i)}} exp(alpha cos)
  = (1/alpha) [-s_ip + lam LSE_D(s)] with s = alpha cos; lam = 1, alpha = 1/tau gives tau * DCL.

``include_positive`` adds p(i) back to D(i). It exists for CL and NSCL alike, so that a CL/NSCL
pair differs only in the class mask: CL with it is NT-Xent, without it DCL; NSCL with it is the
authors' code, without it the paper's definition. The core masks with -inf and uses
``torch.logsumexp`` in float32 or higher, outside autocast. An anchor whose P or D is empty (NSCL
on a one-class batch; SupCon with a class seen once) is dropped from the mean, counted and
warned about; it never yields inf or NaN.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor

from repsim.core.deprecation import deprecated_arguments


@dataclass
class LossOutput:
    loss: Tensor
    """Mean over the anchors that have both a positive and a denominator."""
    dropped: int
    """Anchors left out because their positive or denominator set was empty."""


def _views(z1: Tensor, z2: Tensor) -> Tensor:
    if z1.shape != z2.shape or z1.ndim != 2:
        raise ValueError(f"z1 and z2 must be (B, d) of one shape, got {tuple(z1.shape)} and {tuple(z2.shape)}")
    if z1.shape[0] < 1:
        raise ValueError("empty batch")
    dtype = torch.promote_types(z1.dtype, torch.float32)  # never below float32, also under autocast
    return F.normalize(torch.cat([z1, z2]).to(dtype), dim=1)


def _pair_masks(n2: int, device) -> tuple[Tensor, Tensor]:
    """(self mask, other-view mask) for 2B anchors ordered [view1; view2]."""
    idx = torch.arange(n2, device=device)
    eye = idx[:, None] == idx[None, :]
    partner = (idx[:, None] - idx[None, :]).abs() == n2 // 2
    return eye, partner


def _label_mask(labels: Tensor | None, n: int, device) -> Tensor:
    if labels is None:
        raise ValueError("this objective needs labels")
    labels = torch.as_tensor(labels, device=device)
    if labels.shape != (n,):
        raise ValueError(f"labels must have shape ({n},), one per sample of a view; got {tuple(labels.shape)}")
    y = torch.cat([labels, labels])
    return y[:, None] == y[None, :]


def masked_contrastive(
    sim: Tensor, positives: Tensor, denominator: Tensor, lam: float = 1.0, scale: float = 1.0, name: str = "loss"
) -> LossOutput:
    """The core: scale * mean_i [-mean_{P(i)} sim_ip + lam * LSE_{D(i)} sim_ik] over valid anchors."""
    pos_count = positives.sum(1)
    valid = (pos_count > 0) & denominator.any(1)
    dropped = int((~valid).sum())
    if dropped:
        warnings.warn(
            f"{name}: {dropped} of {len(valid)} anchors have an empty positive or denominator set and "
            "were left out of the mean (e.g. a batch with one class)",
            RuntimeWarning,
            stacklevel=3,
        )
    if not bool(valid.any()):
        return LossOutput(sim.sum() * 0.0, dropped)  # keeps the graph; no anchor contributes
    neg_inf = torch.finfo(sim.dtype).min
    lse = torch.logsumexp(sim.masked_fill(~denominator, neg_inf), dim=1)
    pos_mean = (sim * positives).sum(1) / pos_count.clamp_min(1)
    per_anchor = -pos_mean + lam * lse
    return LossOutput(scale * per_anchor[valid].mean(), dropped)


def _cosine(z1: Tensor, z2: Tensor) -> Tensor:
    z = _views(z1, z2)
    with torch.autocast(device_type=z.device.type, enabled=False):
        return z @ z.T


def _check_tau(tau: float) -> None:
    if not tau > 0:
        raise ValueError(f"tau must be positive, got {tau}")


@deprecated_arguments(positional=("include_positive", "labels", "negatives_only"))
def contrastive(
    z1: Tensor,
    z2: Tensor,
    tau: float,
    *,
    include_positive: bool = True,
    labels: Tensor | None = None,
    negatives_only: bool = False,
) -> LossOutput:
    """CL (``negatives_only=False``) or NSCL (``True``, needs labels), with or without p(i) in D(i)."""
    _check_tau(tau)
    cos = _cosine(z1, z2)
    eye, partner = _pair_masks(cos.shape[0], cos.device)
    denominator = ~eye & ~partner
    if negatives_only:
        denominator &= ~_label_mask(labels, z1.shape[0], cos.device)
    if include_positive:
        denominator |= partner
    return masked_contrastive(cos / tau, partner, denominator, name="nscl" if negatives_only else "cl")


@deprecated_arguments(positional=("tau",))
def nt_xent(z1: Tensor, z2: Tensor, *, tau: float = 0.5) -> Tensor:
    """SimCLR's NT-Xent: -s_{i,p(i)} + log sum_{k != i} exp(s_ik), mean over the 2B anchors."""
    return contrastive(z1, z2, tau, include_positive=True).loss


@deprecated_arguments(positional=("tau",))
def dcl(z1: Tensor, z2: Tensor, *, tau: float = 0.5) -> Tensor:
    """Decoupled contrastive loss: NT-Xent without the positive in the denominator."""
    return contrastive(z1, z2, tau, include_positive=False).loss


@deprecated_arguments(positional=("tau", "include_positive"))
def nscl(z1: Tensor, z2: Tensor, labels: Tensor, *, tau: float = 0.5, include_positive: bool = False) -> Tensor:
    """Negatives-only supervised CL: -s_{i,p(i)} + log sum_{k: y_k != y_i} exp(s_ik) (+ p(i) if include_positive)."""
    return contrastive(z1, z2, tau, include_positive=include_positive, labels=labels, negatives_only=True).loss


@deprecated_arguments(positional=("tau",))
def supcon(z1: Tensor, z2: Tensor, labels: Tensor, *, tau: float = 0.1) -> Tensor:
    """SupCon L_out: -(1/|P(i)|) sum_{p in P(i)} [s_ip - log sum_{a != i} exp(s_ia)], P(i) = same class, not i."""
    _check_tau(tau)
    cos = _cosine(z1, z2)
    eye, _ = _pair_masks(cos.shape[0], cos.device)
    same = _label_mask(labels, z1.shape[0], cos.device)
    return masked_contrastive(cos / tau, same & ~eye, ~eye, name="supcon").loss


@deprecated_arguments(positional=("alpha", "lam"))
def balanced(z1: Tensor, z2: Tensor, *, alpha: float = 2.0, lam: float = 1.0) -> Tensor:
    """Balanced contrastive loss (arXiv 2510.10572).

    -cos(z_i, z_p(i)) + (lam/alpha) log sum_{k not in {i, p(i)}} exp(alpha cos(z_i, z_k)).
    """
    if not alpha > 0:
        raise ValueError(f"alpha must be positive, got {alpha}")
    cos = _cosine(z1, z2)
    eye, partner = _pair_masks(cos.shape[0], cos.device)
    return masked_contrastive(alpha * cos, partner, ~eye & ~partner, lam=lam, scale=1.0 / alpha, name="balanced").loss


def cross_entropy(logits1: Tensor, logits2: Tensor, labels: Tensor) -> Tensor:
    """CE over both views' logits (the classifier head's output), in float32 or higher."""
    logits = torch.cat([logits1, logits2]).float()
    return F.cross_entropy(logits, torch.cat([labels, labels]).to(logits.device))
