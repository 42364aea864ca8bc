"""Models of RDMs against data RDMs of several subjects: noise ceilings, fitted models, evaluation and bootstraps.

Noise ceiling (Nili et al. 2014, PLoS Comput Biol 10: e1003553). For S subject RDMs and a
comparator c, ``pool`` is the comparator's best average of RDMs: the mean of z-scored RDMs
(pearson), of RDMs scaled to unit root mean square (cosine, whitened), of rank-transformed RDMs
(spearman, rho_a, Kendall's taus; for the taus an approximation, as in rsatoolbox).
upper = mean_s c(pool(all), RDM_s): no model can beat it on average;
lower = mean_s c(pool(others), RDM_s): what the other subjects' average achieves, a model that
reaches it explains the data as well as the other subjects do. A model's score means something
only against this band, so every table here carries the raw score beside both bounds.

Inference (Schuett et al. 2023, eLife 12: e82566, and rsatoolbox's evaluation functions, whose
values the tests reproduce on the 92-image data):

* ``bootstrap=None``: one score per subject; mean, SEM = sd / sqrt(S), one-sided t-test against 0
  and two-sided against the lower ceiling with S - 1 degrees of freedom (rsatoolbox ``eval_fixed``).
* ``"subjects"``: subjects resampled with replacement. A resampled subject counts with its
  multiplicity in the model score; the ceiling leaves out every copy of a subject and averages over
  the distinct subjects (as rsatoolbox's ``boot_noise_ceiling`` on a bootstrap sample).
* ``"stimuli"``: stimuli resampled with replacement; the dissimilarity of a stimulus with its own
  copy is a trivially predicted zero, so those pairs are excluded from every comparison (as
  rsatoolbox's ``subsample_pattern``, which sets them to NaN); pairs between copies of two different
  stimuli count with multiplicity.
* ``"both"``: the dual bootstrap. Resampling subjects and stimuli together counts each noise source
  twice; with V_both, V_subj, V_stim the variances of the three bootstraps on the same draws, the
  corrected variance is n_s/(n_s-1) V_subj + n_c/(n_c-1) V_stim - n_s n_c/((n_s-1)(n_c-1))
  (V_both - V_subj - V_stim), kept within [max(corrected singles), V_both] (Schuett et al. 2023).

Bootstrap modes report the full-data score as ``mean`` (rsatoolbox reports the mean over bootstrap
samples), the bootstrap standard error as ``sem`` (with the n/(n-1) small-sample factor rsatoolbox
applies), t intervals and t-tests on that standard error (degrees of freedom: S - 1, n_stimuli - 1,
min of both).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np
import pandas as pd
import torch
from torch import Tensor

from ..core.numerics import ACC
from ..core.validation import check_choice
from ..measures.rdms import (
    COMPARE_METHODS,
    VECTORISED,
    compare_vectors,
    condensed_checked,
    masked_ranks,
    n_conditions,
    prepare,
)
from .multiple import adjust_p_values

BOOTSTRAPS = (None, "subjects", "stimuli", "both")


# ------------------------------------------------------------------------------------------------ ceilings
def pool_transform(v: Tensor, method: str, keep: Tensor | None = None) -> Tensor:
    """Per-RDM transform whose mean over RDMs is the comparator's pooled RDM (excluded entries 0)."""
    w = None if keep is None else keep.to(ACC).expand(v.shape)
    if method in ("spearman", "rho_a", "kendall_tau_a", "kendall_tau_b"):
        return masked_ranks(v, keep)
    cnt = v.shape[-1] if w is None else w.sum(-1, keepdim=True)
    vw = v if w is None else v * w
    if method in ("pearson", "whitened_pearson"):
        mean = vw.sum(-1, keepdim=True) / cnt
        c = v - mean if w is None else (v - mean) * w
        sd = (c.pow(2).sum(-1, keepdim=True) / cnt).sqrt()
        return c / sd
    rms = (vw.pow(2).sum(-1, keepdim=True) / cnt).sqrt()
    return vw / rms


def ceilings(v: Tensor, method: str, counts: Tensor | None = None, keep: Tensor | None = None) -> Tensor:
    """(..., 2) lower and upper bound of subject RDMs v (..., S, M), subjects weighted by ``counts`` (..., S)
    (a subject bootstrap; None: each once). Every copy of a subject is left out of its own pool and the
    bounds average over the subjects present."""
    s = v.shape[-2]
    if counts is None:
        counts = torch.ones(s, dtype=ACC)
    counts = counts.to(ACC)
    kp = None if keep is None else keep.unsqueeze(-2)
    t = pool_transform(v, method, kp)
    total = (counts.unsqueeze(-1) * t).sum(-2, keepdim=True)
    n_tot = counts.sum(-1)[..., None, None]
    upper_pool = total / n_tot
    others = n_tot - counts.unsqueeze(-1)
    alone = others == 0  # only one distinct subject: rsatoolbox's leave-one-out falls back to the full set
    lower_pool = torch.where(alone, upper_pool, (total - counts.unsqueeze(-1) * t) / others.clamp_min(1))
    if method in VECTORISED:  # the subjects' prepared vectors (their ranks, for rank comparators) once
        pv = prepare(v, method, kp)
        up = torch.einsum("...m,...m->...", prepare(upper_pool, method, kp), pv)
        lo = torch.einsum("...m,...m->...", prepare(lower_pool, method, kp), pv)
    else:
        up = compare_vectors(upper_pool, v, method, kp)
        lo = compare_vectors(lower_pool, v, method, kp)
    present = (counts > 0).to(ACC)
    n_present = present.sum(-1)
    return torch.stack([(lo * present).sum(-1) / n_present, (up * present).sum(-1) / n_present], dim=-1)


def noise_ceiling(rdms, *, method: str = "spearman") -> tuple[float, float]:
    """(lower, upper) noise ceiling of subject RDMs ``rdms`` (S, M) or (S, n, n) under comparator ``method``.

    upper = mean_s c(pool(all subjects), RDM_s), lower = mean_s c(pool(all but s), RDM_s) (Nili et
    al. 2014; equal to rsatoolbox's ``boot_noise_ceiling``): see :mod:`repsim.inference.rdm_models`.
    """
    check_choice(method, "method", COMPARE_METHODS)
    v = condensed_checked(rdms, "rdms")
    if v.ndim != 2 or v.shape[0] < 2:
        raise ValueError(f"rdms must hold at least 2 subject RDMs (S, M) or (S, n, n), got shape {tuple(v.shape)}")
    lo, up = ceilings(v, method).tolist()
    return lo, up


def rdm_split_half(
    x,
    *,
    runs,
    conditions,
    rdm_method: str = "correlation",
    method: str = "pearson",
    n_splits: int = 20,
    seed: int = 0,
) -> dict:
    """Split-half reliability of one subject's RDM from data with repeats (runs).

    For each of ``n_splits`` random halvings of the runs: the RDM of each half's condition means
    (``rdm_method``; "crossnobis" needs >= 2 runs per half), r = compare(RDM_1, RDM_2), and the
    Spearman-Brown prediction for the full data 2r/(1 + r). Returns {"r_half", "reliability",
    "n_splits", "r_splits"} (means over splits; r per split). ``reliability`` is a ceiling for one
    subject's RDM against a model; a ceiled score is raw / reliability (report values over 1 as they are).
    """
    from ..measures.rdms import compare_rdms, labels_index
    from ..measures.rsa import rdm

    x = torch.as_tensor(x, dtype=ACC)
    run_names, run = labels_index(runs, x.shape[0], "runs")
    if len(run_names) < 2:
        raise ValueError("runs holds one label: a split-half reliability needs at least 2 runs")
    gen = np.random.default_rng(seed)
    cond = np.asarray(conditions)
    rs = []
    for _ in range(n_splits):
        half = gen.permutation(len(run_names))[: len(run_names) // 2]
        mask = np.isin(run, half)
        pair = []
        for part in (mask, ~mask):
            xs, cs, rn = x[torch.as_tensor(part)], cond[part], run[part]
            if rdm_method in ("mahalanobis", "crossnobis"):
                pair.append(rdm(xs, method=rdm_method, runs=rn, conditions=cs))
            else:
                names, code = np.unique(cs, return_inverse=True)
                means = torch.zeros(len(names), x.shape[1], dtype=ACC).index_add_(0, torch.as_tensor(code), xs)
                pair.append(rdm(means / torch.as_tensor(np.bincount(code), dtype=ACC)[:, None], method=rdm_method))
        rs.append(float(compare_rdms(pair[0], pair[1], method=method)))
    r = float(np.mean(rs))
    reliability = float(np.mean([2 * v / (1 + v) for v in rs]))
    return {"r_half": r, "reliability": reliability, "n_splits": n_splits, "r_splits": rs}


# ------------------------------------------------------------------------------------------------ inputs
def model_matrix(models, n_m: int | None = None) -> tuple[list[str], Tensor]:
    """(names, (K, M) condensed RDMs) of a mapping name -> RDM."""
    if not isinstance(models, Mapping) or not models:
        raise ValueError("models must be a non-empty mapping {name: RDM (square or condensed)}")
    names = [str(k) for k in models]
    vs = [condensed_checked(models[k], f"models[{k!r}]") for k in models]
    for nm, v in zip(names, vs, strict=True):
        if v.ndim != 1:
            raise ValueError(f"models[{nm!r}] must be one RDM (n, n) or (M,), got shape {tuple(v.shape)}")
        if n_m is not None and v.shape[0] != n_m:
            raise ValueError(
                f"models[{nm!r}] has {v.shape[0]} dissimilarities but the data RDMs have {n_m}: same conditions needed"
            )
    return names, torch.stack(vs)


def subject_matrix(rdms, min_subjects: int = 2) -> Tensor:
    v = condensed_checked(rdms, "rdms")
    if v.ndim != 2 or v.shape[0] < min_subjects:
        raise ValueError(
            f"rdms must hold one RDM per subject (S, M) or (S, n, n), S >= {min_subjects}; got shape {tuple(v.shape)}"
        )
    return v


def resample_stimuli(v: Tensor, idx: Tensor) -> tuple[Tensor, Tensor]:
    """RDM vectors (..., M) over the stimuli ``idx`` (R, k) (with repeats) -> ((R, ..., M'), keep (R, 1.., M')):
    pairs of a stimulus with its own copy are excluded (keep False)."""
    n = n_conditions(v.shape[-1])
    iu = torch.triu_indices(n, n, 1)
    # position of pair (i, j) in the condensed vector; the diagonal maps to entry 0 and is masked
    pos = torch.zeros(n, n, dtype=torch.long)
    pos[iu[0], iu[1]] = torch.arange(iu.shape[1])
    pos = pos + pos.T
    k = idx.shape[-1]  # the sample's size (a subset of stimuli when restricting)
    ik = torch.triu_indices(k, k, 1)
    a, b = idx[:, ik[0]], idx[:, ik[1]]  # (R, M)
    keep = a != b
    gathered = v[..., pos[a, b]]  # (..., R, M)
    gathered = gathered.movedim(-2, 0)
    return gathered, keep.reshape(keep.shape[0], *([1] * (gathered.ndim - 2)), keep.shape[1])


# ------------------------------------------------------------------------------------------------ evaluation
@dataclass
class RdmEvaluation:
    """What :func:`evaluate_rdm_models` returns: the tidy ``table`` (one row per model), the ``pairwise``
    comparisons, the bootstrap ``samples`` (or None) and the ``per_subject`` scores."""

    table: pd.DataFrame
    pairwise: pd.DataFrame
    samples: np.ndarray | None
    per_subject: np.ndarray

    def __repr__(self) -> str:
        return f"RdmEvaluation(\n{self.table.round(4).to_string()}\n)"


def evaluate_rdm_models(
    models: Mapping,
    rdms,
    *,
    method: str = "spearman",
    bootstrap: str | None = None,
    n_resamples: int = 1000,
    ci: float = 0.95,
    adjust: str = "holm",
    block_size: int = 100,
    seed: int = 0,
    progress: bool = False,
) -> RdmEvaluation:
    """Evaluate fixed model RDMs against subject RDMs: a tidy table, one row per model.

    Args:
        models: {name: RDM} (square (n, n) or condensed (M,)), over the conditions of ``rdms``.
        rdms: subject RDMs (S, M) or (S, n, n).
        method: comparator (:func:`repsim.compare_rdms`).
        bootstrap: None (t-tests across subjects), "subjects", "stimuli" or "both" (dual bootstrap with
            the variance correction): see :mod:`repsim.inference.rdm_models`.
        n_resamples: bootstrap samples; ``block_size``: samples evaluated at once (memory);
        ci: two-sided level of the t interval; adjust: "holm", "bh" or "none" for the pairwise tests.
    Returns an :class:`RdmEvaluation`: ``.table`` (tidy DataFrame) with columns ``model, method,
    bootstrap, mean, sem, ci_low, ci_high, p_zero, p_ceiling, ceiling_lower, ceiling_upper,
    ceiled_lower, ceiled_upper, dof`` (``ceiled_*`` = mean / bound, kept beside the raw ``mean``);
    ``.pairwise``: the pairwise model comparisons (two-sided t-tests on the same variance estimate,
    adjusted over the pairs); ``.samples``: the bootstrap scores (resamples, models) or None;
    ``.per_subject``: the scores (subjects, models) on the full data.
    """
    check_choice(method, "method", COMPARE_METHODS)
    check_choice(bootstrap, "bootstrap", BOOTSTRAPS)
    data = subject_matrix(rdms)
    names, mods = model_matrix(models, data.shape[-1])
    if bootstrap is not None and (not isinstance(n_resamples, int) or n_resamples < 10):
        raise ValueError(f"n_resamples must be an integer >= 10 for a bootstrap, got {n_resamples!r}")
    if not 0 < ci < 1:
        raise ValueError(f"ci must be in (0, 1), got {ci}")
    per_subject = compare_vectors(mods[None], data[:, None], method, None)  # (S, K)
    ceiling = ceilings(data, method)
    s, n = data.shape[0], n_conditions(data.shape[-1])
    if bootstrap is None:
        cov = torch.cov(per_subject.T, correction=1).reshape(len(names), len(names)) / s
        variances = _split_variance(cov.numpy(), nc_included=False)
        samples, dof = None, s - 1
    else:
        samples, cov, dof = _bootstrap_covariances(mods, data, method, bootstrap, n_resamples, block_size, seed,
                                                   progress)  # fmt: skip
        variances = _split_variance(cov, nc_included=bootstrap != "subjects", n_subjects=s, n_stimuli=n,
                                    mode=bootstrap)  # fmt: skip
    table = _table(names, per_subject.mean(0).numpy(), variances, ceiling.numpy(), dof, ci, method, bootstrap)
    pairwise = _pairwise(names, per_subject.mean(0).numpy(), variances[1], dof, adjust)
    return RdmEvaluation(table, pairwise, samples, per_subject.numpy())


def _bootstrap_covariances(mods, data, method, mode, n_resamples, block_size, seed, progress):
    """Bootstrap scores and the covariance(s) of [model scores, lower, upper] (rsatoolbox's layout)."""
    from tqdm.auto import tqdm

    gen = torch.Generator().manual_seed(seed)
    s, m = data.shape
    n = n_conditions(m)
    full = compare_vectors(mods[None], data[:, None], method, None)  # (S, K)
    out = {"both": [], "subjects": [], "stimuli": []}
    for start in tqdm(range(0, n_resamples, block_size), disable=not progress, desc="bootstrap"):
        r = min(block_size, n_resamples - start)
        counts = torch.stack([torch.bincount(torch.randint(s, (s,), generator=gen), minlength=s) for _ in range(r)])
        counts = counts.to(ACC)
        idx = torch.randint(n, (r, n), generator=gen) if mode in ("stimuli", "both") else None
        if idx is not None:
            idx = idx.sort(-1).values
            dv, keep = resample_stimuli(data, idx)  # (R, S, M), (R, 1, M)
            mv, _ = resample_stimuli(mods, idx)  # (R, K, M)
            e_stim = compare_vectors(mv[:, None], dv[:, :, None], method, keep[..., None, :])  # (R, S, K)
            ok = (keep.reshape(r, -1).any(-1)) & (torch.tensor([len(torch.unique(i)) >= 3 for i in idx]))
        if mode in ("subjects", "both"):
            nc = ceilings(data, method, counts)
            out["subjects"].append(torch.cat([(counts @ full) / s, nc], -1))
        if mode in ("stimuli", "both"):  # both: every subject once, and the subject draw, in one call
            weights = torch.ones(1, r, s, dtype=ACC) if mode == "stimuli" else torch.stack([torch.ones_like(counts),
                                                                                           counts])  # fmt: skip
            nc = ceilings(dv, method, weights, keep.squeeze(-2))
            for i, key in enumerate(("stimuli", "both")[: weights.shape[0]]):
                rows = torch.cat([torch.einsum("rs,rsk->rk", weights[i], e_stim) / s, nc[i]], -1)
                rows[~ok] = float("nan")
                out[key].append(rows)
    mats = {k: torch.cat(v).numpy() for k, v in out.items() if v}
    valid = np.all([np.isfinite(v).all(-1) for v in mats.values()], axis=0)
    mats = {k: v[valid] for k, v in mats.items()}
    k = mods.shape[0]
    if mode == "both":
        cov = np.stack([np.cov(mats[key].T) for key in ("both", "subjects", "stimuli")])
        return mats["both"][:, :k], cov, min(s, n) - 1
    key = mode
    if mode == "subjects":  # rsatoolbox's eval_bootstrap_rdm: the ceiling is held fixed in the tests
        return mats[key][:, :k], np.cov(mats[key][:, :k].T).reshape(k, k), s - 1
    return mats[key][:, :k], np.cov(mats[key].T), n - 1


def _split_variance(cov, *, nc_included: bool, n_subjects=None, n_stimuli=None, mode=None):
    """(model variances (K,), variances of differences (K, K), variances of score - ceiling (K, 2)) from the
    covariance of [scores, lower, upper] (or of the scores only), with the small-sample factors."""
    cov = np.asarray(cov, dtype=np.float64)

    def parts(c):
        k = c.shape[-1] - (2 if nc_included else 0)
        var = np.diagonal(c)[:k].copy()
        diff = var[:, None] + var[None, :] - 2 * c[:k, :k]
        nc = var[:, None] - 2 * c[:k, k:] + np.diagonal(c)[k:][None, :] if nc_included else np.stack([var, var], -1)
        return var, diff, nc

    if mode == "both":
        singles = [parts(c) for c in cov]
        return tuple(_dual(*(p[i] for p in singles), n_subjects, n_stimuli) for i in range(3))
    factor = {None: 1.0, "subjects": n_subjects / max(n_subjects - 1, 1) if n_subjects else 1.0,
              "stimuli": n_stimuli / max(n_stimuli - 1, 1) if n_stimuli else 1.0}[mode]  # fmt: skip
    return tuple(factor * p for p in parts(cov))


def _dual(v_both, v_subj, v_stim, n_s: int, n_c: int):
    """Schuett et al. (2023) variance of the dual bootstrap from the three bootstraps on the same draws."""
    fs, fc = n_s / (n_s - 1), n_c / (n_c - 1)
    var = fs * v_subj + fc * v_stim - fs * fc * (v_both - v_subj - v_stim)
    var = np.maximum(np.maximum(var, fs * v_subj), fc * v_stim)
    return np.minimum(var, v_both)


def _table(names, means, variances, ceiling, dof, ci, method, bootstrap) -> pd.DataFrame:
    from scipy import stats

    var, _, nc_var = variances
    sem = np.sqrt(np.maximum(var, 0))
    eps = np.finfo(float).eps
    t_zero = means / np.sqrt(np.maximum(var, eps))
    t_nc = (means - ceiling[0]) / np.sqrt(np.maximum(nc_var[:, 0], eps))
    half = stats.t.ppf(0.5 + ci / 2, dof) * sem if dof > 0 else np.full_like(sem, np.nan)
    return pd.DataFrame(
        {
            "model": names,
            "method": method,
            "bootstrap": bootstrap or "none",
            "mean": means,
            "sem": sem,
            "ci_low": means - half,
            "ci_high": means + half,
            "p_zero": 1 - stats.t.cdf(t_zero, dof),
            "p_ceiling": 2 * (1 - stats.t.cdf(np.abs(t_nc), dof)),
            "ceiling_lower": ceiling[0],
            "ceiling_upper": ceiling[1],
            "ceiled_lower": means / ceiling[0],
            "ceiled_upper": means / ceiling[1],
            "dof": dof,
        }
    )


def _pairwise(names, means, diff_var, dof, adjust) -> pd.DataFrame:
    from scipy import stats

    rows = []
    for i in range(len(names)):
        for j in range(i + 1, len(names)):
            t = (means[i] - means[j]) / np.sqrt(max(diff_var[i, j], np.finfo(float).eps))
            rows.append((names[i], names[j], means[i] - means[j], np.sqrt(max(diff_var[i, j], 0)), t,
                         2 * (1 - stats.t.cdf(abs(t), dof))))  # fmt: skip
    table = pd.DataFrame(rows, columns=["model_a", "model_b", "difference", "sem", "t", "p_value"])
    table["p_adjusted"] = adjust_p_values(table["p_value"].to_numpy(), method=adjust) if rows else []
    table["adjust"] = adjust
    return table


# ------------------------------------------------------------------------------------------------ models
class FixedModel:
    """A model RDM without parameters: ``predict()`` returns it (condensed)."""

    def __init__(self, rdm):
        self.rdm_ = condensed_checked(rdm, "rdm")

    def fit(self, rdms, *, method: str = "spearman", stimuli=None) -> FixedModel:
        return self

    def predict(self, stimuli=None) -> Tensor:
        return _restrict(self.rdm_, stimuli)


class SelectModel:
    """The best of a family of candidate RDMs (K, M): ``fit`` picks the one with the highest mean score
    against the training subjects (``best_``, its index; ``scores_``, every candidate's)."""

    def __init__(self, rdms):
        self.candidates_ = condensed_checked(rdms, "rdms")
        if self.candidates_.ndim != 2:
            raise ValueError("SelectModel needs candidate RDMs (K, M) or (K, n, n)")
        self.best_ = 0

    def fit(self, rdms, *, method: str = "spearman", stimuli=None) -> SelectModel:
        data = subject_matrix(rdms, 1)
        cand = _restrict(self.candidates_, stimuli)
        self.scores_ = compare_vectors(cand[None], data[:, None], method, None).mean(0)
        self.best_ = int(self.scores_.argmax())
        return self

    def predict(self, stimuli=None) -> Tensor:
        return _restrict(self.candidates_[self.best_], stimuli)


class WeightedModel:
    """A non-negative weighted sum of component RDMs (K, M): sum_k w_k RDM_k, w >= 0.

    ``fit`` solves non-negative least squares (scipy ``nnls``, Lawson & Hanson 1974) of the training
    subjects' pooled RDM (:func:`pool_transform`) on the components, in the comparator's geometry:
    entries centred for pearson/spearman/rho_a (the intercept is free), whitened for the whitened
    comparators, ranks of the data for the rank comparators (an approximation: the rank correlation
    itself is not a least-squares objective). ``weights_`` holds the fitted weights (K,).
    """

    def __init__(self, rdms):
        self.components_ = condensed_checked(rdms, "rdms")
        if self.components_.ndim != 2:
            raise ValueError("WeightedModel needs component RDMs (K, M) or (K, n, n)")
        self.weights_ = np.ones(self.components_.shape[0])

    def fit(self, rdms, *, method: str = "spearman", stimuli=None) -> WeightedModel:
        from scipy.optimize import nnls

        from ..measures.rdms import whiten

        check_choice(method, "method", COMPARE_METHODS)
        data = subject_matrix(rdms, 1)
        comps = _restrict(self.components_, stimuli)
        target = pool_transform(data, method).mean(0)
        if method in ("whitened_cosine", "whitened_pearson"):
            if method == "whitened_pearson":
                target, comps = target - target.mean(), comps - comps.mean(-1, keepdim=True)
            target, comps = whiten(target, None), whiten(comps, None)
        elif method != "cosine":
            target, comps = target - target.mean(), comps - comps.mean(-1, keepdim=True)
        self.weights_, _ = nnls(comps.T.numpy(), target.numpy())
        return self

    def predict(self, stimuli=None) -> Tensor:
        return torch.as_tensor(self.weights_, dtype=ACC) @ _restrict(self.components_, stimuli)


def _restrict(v: Tensor, stimuli) -> Tensor:
    """Condensed RDMs (..., M) restricted to the conditions ``stimuli`` (distinct indices; None: all)."""
    if stimuli is None:
        return v
    n = n_conditions(v.shape[-1])
    idx = torch.as_tensor(np.asarray(stimuli), dtype=torch.long).sort().values
    if len(torch.unique(idx)) != len(idx) or len(idx) < 3 or int(idx.max()) >= n or int(idx.min()) < 0:
        raise ValueError(f"stimuli must be >= 3 distinct condition indices in [0, {n}), got {len(idx)} indices")
    sub, _ = resample_stimuli(v, idx[None])
    return sub[0]


def crossvalidate_rdm_models(
    models: Mapping,
    rdms,
    *,
    method: str = "spearman",
    n_folds_subjects: int = 2,
    n_folds_stimuli: int = 2,
    n_repeats: int = 1,
    seed: int = 0,
) -> pd.DataFrame:
    """Fit each model on training subjects x training stimuli, score it on held-out subjects x held-out stimuli.

    ``models``: {name: FixedModel | SelectModel | WeightedModel | RDM}. Subjects and stimuli are split
    into folds at random (``n_repeats`` times); every (subject fold, stimulus fold) is a test set once
    (with one subject fold, the held-out stimuli of the same subjects are the test set; a subject
    fold needs >= 2 subjects, a stimulus fold >= 3 stimuli). Returns one row per model, repeat and
    fold pair: ``model, repeat, subject_fold, stimulus_fold, score`` (the mean over the test subjects);
    average ``score`` by model for the cross-validated estimate.
    """
    check_choice(method, "method", COMPARE_METHODS)
    data = subject_matrix(rdms)
    s, n = data.shape[0], n_conditions(data.shape[-1])
    objs = {k: (v if hasattr(v, "fit") else FixedModel(v)) for k, v in models.items()}
    if n_folds_stimuli < 1 or n // max(n_folds_stimuli, 1) < 3:
        raise ValueError(f"n_folds_stimuli={n_folds_stimuli} leaves fewer than 3 of the {n} stimuli per fold")
    if n_folds_subjects < 1 or (n_folds_subjects > 1 and s // n_folds_subjects < 1):
        raise ValueError(f"n_folds_subjects={n_folds_subjects} leaves a fold without subjects (S = {s})")
    gen = np.random.default_rng(seed)
    rows = []
    for rep in range(n_repeats):
        subj_folds = np.array_split(gen.permutation(s), n_folds_subjects)
        stim_folds = np.array_split(gen.permutation(n), n_folds_stimuli)
        for i, test_s in enumerate(subj_folds):
            train_s = np.setdiff1d(np.arange(s), test_s) if n_folds_subjects > 1 else test_s
            for j, test_c in enumerate(stim_folds):
                train_c = np.setdiff1d(np.arange(n), test_c) if n_folds_stimuli > 1 else test_c
                train = _restrict(data[torch.as_tensor(train_s)], train_c)
                test = _restrict(data[torch.as_tensor(test_s)], test_c)
                for name, model in objs.items():
                    model.fit(train, method=method, stimuli=train_c)
                    score = compare_vectors(model.predict(test_c)[None], test, method, None).mean()
                    rows.append((name, rep, i, j, float(score)))
    return pd.DataFrame(rows, columns=["model", "repeat", "subject_fold", "stimulus_fold", "score"])
