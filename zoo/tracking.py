"""Alignment of every model with the CL model, measured by repsim and probes (nothing re-implemented)."""

from __future__ import annotations

from collections.abc import Iterable

import torch
from torch import Tensor, nn

import probes
import repsim

LAYERS = ("encoder", "projector")


def model_features(model: nn.Module, loader: Iterable, device, layers=LAYERS) -> tuple[dict[str, Tensor], Tensor]:
    feats, labels = repsim.extract_features(model, loader, layers=list(layers), device=device, progress=False)
    return feats, labels


def alignment_rows(
    features: dict[str, dict[str, Tensor]],
    models: dict[str, nn.Module],
    reference: str = "cl",
) -> list[dict]:
    """CKA, debiased CKA, RSA, the Frobenius gap and its bounds, and weight distance, each vs ``reference``."""
    rows = []
    base = features[reference]
    for run, feats in features.items():
        if run == reference:
            continue
        for layer, x in base.items():
            y = feats[layer]
            gap = repsim.gram_gap(x, y)
            values = {
                "linear_cka": repsim.linear_cka(x, y),
                "debiased_cka": repsim.linear_cka(x, y, debiased=True),
                "rsa": repsim.rsa(x, y),
                "frobenius_gap": gap.frobenius_gap,
                "relative_centered_gap": gap.relative_centered_gap,
                "cka_lower_bound": gap.cka_lower_bound,
                "rsa_lower_bound": gap.rsa_lower_bound,
            }
            rows += [{"objective": run, "layer": layer, "measure": m, "value": float(v)} for m, v in values.items()]
        wd = repsim.weight_distance(models[reference].encoder, models[run].encoder)
        rows.append({"objective": run, "layer": "encoder", "measure": "weight_distance", "value": wd.mean_relative})
    return rows


def knn_rows(bank: dict[str, tuple[Tensor, Tensor]], queries: dict[str, tuple[Tensor, Tensor]]) -> list[dict]:
    """Weighted kNN top-1 of every model's encoder features (bank: train split, queries: reference set)."""
    rows = []
    for run, (bx, by) in bank.items():
        qx, qy = queries[run]
        res = probes.knn(bx, by, qx, qy)
        rows.append({"objective": run, "layer": "encoder", "measure": "knn_top1", "value": res.top1})
    return rows


@torch.no_grad()
def final_probe_rows(bank, queries, seed: int, l2_grid=None) -> list[dict]:
    """Linear probe, kNN and NCCC few-shot of every run's encoder features (``l2_grid``: the linear probe's
    L2 strengths; None: the probes' default grid)."""
    rows = []
    grid = {} if l2_grid is None else {"l2_grid": l2_grid}
    for run, (bx, by) in bank.items():
        qx, qy = queries[run]
        table = probes.evaluate_features(bx, by, qx, qy, shots=(1, 5), episodes=50, seed=seed, **grid)
        for r in table.to_dict("records"):
            rows.append({"objective": run, **r})
    return rows


def theory_rows(
    cl_projection: Tensor, lr_sum: float, steps: int, batch_size: int, n_classes: int, tau: float, delta: float = 0.05
) -> list[dict]:
    """The bound of arXiv 2510.08852 on |Sigma_CL - Sigma_NSCL|_F, and the CKA/RSA bounds it implies,
    logged beside the measured projector-output gap of the NSCL model."""
    from . import theory

    z = torch.nn.functional.normalize(cl_projection.double(), dim=1)
    sigma = z @ z.T
    bound = theory.gap_bound_from_total(lr_sum, steps, batch_size, n_classes, tau, delta)
    values = {
        "frobenius_gap_bound": bound,
        "cka_bound_theory": theory.cka_lower_bound(bound, sigma),
        "rsa_bound_theory": theory.rsa_lower_bound(bound, sigma),
    }
    return [{"objective": "nscl", "layer": "projector", "measure": m, "value": v} for m, v in values.items()]


CLAIM_MEASURES = ("linear_cka", "debiased_cka", "rsa")


def final_inference_rows(features: dict[str, dict[str, Tensor]], resamples: int, seed: int, reference: str = "cl"):
    """Intervals for every objective's alignment with ``reference`` and paired intervals for the claim.

    Returns (interval rows keyed objective/layer/measure with ci_low, ci_high; paired rows for
    NSCL - CE and NSCL - SupCon with value, ci_low, ci_high, p_value), from
    :func:`repsim.bootstrap` and :func:`repsim.compare_paired` on the reference set.
    """
    intervals, paired = [], []
    base = features[reference]
    for layer, x in base.items():
        for measure in CLAIM_MEASURES:
            for run, feats in features.items():
                if run == reference:
                    continue
                res = repsim.bootstrap(x, feats[layer], measure, n_resamples=resamples, seed=seed)
                intervals.append({"objective": run, "layer": layer, "measure": measure,
                                  "ci_low": res.ci_low, "ci_high": res.ci_high})  # fmt: skip
            if "nscl" not in features:
                continue
            for rival in ("ce", "supcon"):
                if rival not in features:
                    continue
                res = repsim.compare_paired(
                    x, features["nscl"][layer], features[rival][layer], measure, n_resamples=resamples, seed=seed
                )
                paired.append(
                    {
                        "objective": f"nscl-{rival}",
                        "layer": layer,
                        "measure": f"paired_{measure}",
                        "value": res.difference,
                        "ci_low": res.ci_low,
                        "ci_high": res.ci_high,
                        "p_value": res.p_value,
                    }
                )
    return intervals, paired
