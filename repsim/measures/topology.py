"""Topological measures: Representation Topology Divergence (RTD), the Intrinsic Multi-scale
Distance (IMD) and the Geometry Score (GS).

RTD's persistent homology comes from ripser, the Geometry Score's witness complexes from gudhi
(both in the optional extra ``repsim-toolkit[topology]``; the project's setup installs it).
IMD needs only an eigendecomposition, so it is written here with torch; the reference
implementation estimates the same heat traces stochastically (Lanczos quadrature), which is what
one needs only far beyond the sizes these exact spectra handle.
"""

from __future__ import annotations

import numpy as np
import torch
from torch import Tensor

from ..core.numerics import ACC, center_columns, gram_sq_distances, sq_row_norms
from .gram import squared_distances
from .kinds import layer_measure


def _ripser():
    try:
        import ripser
    except ImportError as err:  # pragma: no cover - exercised only without the extra
        raise ImportError(
            "rtd needs the ripser package: pip install 'repsim-toolkit[topology]' (or pip install ripser)"
        ) from err
    return ripser


def _gudhi():
    try:
        import gudhi
    except ImportError as err:
        raise ImportError(
            "geometry_score needs the gudhi package: pip install 'repsim-toolkit[topology]' (or pip install gudhi)"
        ) from err
    return gudhi


def _normalised_distances(x: Tensor) -> Tensor:
    """Euclidean distances divided by their 0.9 quantile (Barannikov et al.'s normalisation)."""
    d = squared_distances(x.to(ACC)).sqrt()
    n = d.shape[0]
    iu = torch.triu_indices(n, n, 1, device=d.device)
    scale = torch.quantile(d[iu[0], iu[1]], 0.9)
    if not bool(scale > 0):
        raise ValueError("most pairwise distances are 0 (duplicated samples), so RTD's normalisation is undefined")
    return d / scale


def _cross_barcode_total(dx: np.ndarray, dy: np.ndarray) -> float:
    """Sum of the H1 bar lengths of R-Cross-Barcode(x, y): the Vietoris-Rips filtration of the
    2n-vertex graph with weights [[0, D_x^T], [D_x, min(D_x, D_y)]] (Barannikov et al. 2022, eq. 2)."""
    n = dx.shape[0]
    m = np.zeros((2 * n, 2 * n))
    m[n:, :n] = dx
    m[:n, n:] = dx.T
    m[n:, n:] = np.minimum(dx, dy)
    bars = _ripser().ripser(m, distance_matrix=True, maxdim=1)["dgms"][1]
    finite = bars[np.isfinite(bars[:, 1])]
    return float((finite[:, 1] - finite[:, 0]).sum())


_INVARIANT = ("orthogonal", "isotropic_scaling", "translation", "permutation")
_TOPOLOGY = dict(family="topology", larger_is_more_similar=False, invariances=_INVARIANT, identity_value=0.0)


def _check_rtd_options(n_repeats: int = 10, subset_size: int = 500, **_) -> None:
    if n_repeats < 1 or subset_size < 4:
        raise ValueError(
            f"n_repeats must be >= 1 and subset_size >= 4, got n_repeats={n_repeats}, subset_size={subset_size}"
        )


def _rtd_pair(x: Tensor, y: Tensor, n_repeats: int, subset_size: int, symmetric: bool, seed: int) -> Tensor:
    n = x.shape[0]
    gen = torch.Generator().manual_seed(seed)
    subsets = (
        [torch.arange(n)]
        if n <= subset_size
        else [torch.randperm(n, generator=gen)[:subset_size] for _ in range(n_repeats)]
    )
    values = []
    for idx in subsets:
        idx = idx.to(x.device)
        dx = _normalised_distances(x[idx]).cpu().numpy()
        dy = _normalised_distances(y[idx]).cpu().numpy()
        forward = _cross_barcode_total(dx, dy)
        values.append((forward + _cross_barcode_total(dy, dx)) / 2 if symmetric else forward)
    return torch.tensor(float(np.mean(values)), dtype=ACC, device=x.device)


@layer_measure(
    "rtd",
    differentiable=False,
    pair=_rtd_pair,
    options_check=_check_rtd_options,
    min_samples=4,
    reason="RTD needs n >= 4",
    renamed={"trials": "n_repeats", "batch": "subset_size"},  # the vocabulary of geometry_score
    symmetric=lambda symmetric=True, **_: symmetric,  # symmetric=False: RTD(x, y) alone
    needs_package="ripser",
    cost="ripser H1 of 2*subset_size points per repeat (host)",
    reference="Barannikov et al. 2022, Representation Topology Divergence (ICML)",
    **_TOPOLOGY,
)
def rtd(
    x: Tensor, y: Tensor, *, n_repeats: int = 10, subset_size: int = 500, symmetric: bool = True, seed: int = 0
) -> Tensor:
    """Representation Topology Divergence (Barannikov et al. 2022, ICML).

    Distances of each representation are divided by their 0.9 quantile; RTD(x, y) is the total
    length of the H1 bars of the R-Cross-Barcode: the persistent homology of the Rips filtration of
    [[0, D_x^T], [D_x, min(D_x, D_y)]] over 2n vertices, i.e. the cycles that appear in
    min(D_x, D_y) but not in D_x. ``symmetric=True`` averages RTD(x, y) and RTD(y, x). With more
    than ``subset_size`` samples it is averaged over ``n_repeats`` random subsets of ``subset_size`` samples
    (seeded by ``seed``; the same subsets for both sides), as the authors do. 0 for identical
    inputs; invariant to rotations, translations, isotropic scaling and feature permutations.
    Homology runs on the host (ripser); cost grows steeply with ``subset_size``.
    """


# -------------------------------------------------------------------------------- IMD
def _heat_traces(x: Tensor, k: int, ts: Tensor) -> Tensor:
    """Heat-kernel traces tr(exp(-t L)) / n of the normalised Laplacian of x's symmetrised kNN graph."""
    d = squared_distances(x.to(ACC))
    n = d.shape[0]
    d.fill_diagonal_(float("inf"))  # a sample is not its own neighbour
    nn = d.topk(k, dim=1, largest=False).indices
    adj = torch.zeros(n, n, dtype=ACC, device=x.device)
    adj.scatter_(1, nn, 1.0)
    adj = torch.maximum(adj, adj.T)  # undirected, unweighted kNN graph
    inv_sqrt_deg = adj.sum(1).rsqrt()
    lap = torch.eye(n, dtype=ACC, device=x.device) - inv_sqrt_deg[:, None] * adj * inv_sqrt_deg[None, :]
    eig = torch.linalg.eigvalsh(lap).clamp_min(0.0)
    return torch.exp(-ts[:, None] * eig[None, :]).sum(1) / n


def _imd_validated(xs: list[Tensor], ys_list: list[Tensor], k, n_scales: int, max_exact_samples: int) -> Tensor:
    n = xs[0].shape[0]
    if not isinstance(k, int) or not 1 <= k < n:
        raise ValueError(f"k must be an integer in [1, n) for the kNN graph, got {k!r} with n = {n}")
    if n > max_exact_samples:
        raise ValueError(
            f"imd computes exact spectra (O(n^3)); n = {n} exceeds max_exact_samples = {max_exact_samples}: "
            "subsample the samples (compare() does, with sample_cap) or raise max_exact_samples"
        )
    ts = torch.logspace(-1, 1, n_scales, dtype=ACC, device=xs[0].device)
    hx = torch.stack([_heat_traces(x, k, ts) for x in xs])
    hy = hx if ys_list is xs else torch.stack([_heat_traces(y, k, ts) for y in ys_list])
    diff = (hx[:, None, :] - hy[None, :, :]).abs()
    return (torch.exp(-2 * (ts + 1 / ts)) * diff).amax(-1)


# -------------------------------------------------------------------------------- Geometry Score
def _relative_living_times(intervals: np.ndarray, alpha_max: float, i_max: int) -> np.ndarray:
    """RLT(i) = |{alpha in [0, alpha_max) : beta_1(alpha) = i}| / alpha_max for i = 0, ..., i_max - 1
    (Khrulkov & Oseledets 2018, eqs. 2-3), from the H1 intervals [birth, death) of one filtration.

    beta_1(alpha) counts the intervals alive at alpha; deaths beyond alpha_max (infinite ones
    included) are cut at alpha_max. The count is constant between consecutive interval ends, so
    each gap between sorted ends adds its length to the RLT of its count. Counts >= i_max are not
    recorded (as in the paper), so the RLTs then sum to less than 1.
    """
    intervals = np.asarray(intervals, dtype=np.float64).reshape(-1, 2)
    births = np.sort(np.minimum(intervals[:, 0], alpha_max))
    deaths = np.sort(np.minimum(intervals[:, 1], alpha_max))
    ends = np.unique(np.concatenate([[0.0, alpha_max], births, deaths]))
    ends = ends[(ends >= 0) & (ends <= alpha_max)]
    left = ends[:-1]
    # alive on [left, next end): born at or before left, not yet dead at left
    alive = np.searchsorted(births, left, side="right") - np.searchsorted(deaths, left, side="right")
    lengths = np.diff(ends)
    kept = alive < i_max
    return np.bincount(alive[kept], weights=lengths[kept], minlength=i_max) / alpha_max


@layer_measure(
    "imd",
    differentiable=False,
    grid=lambda xs, ys, k, n_scales, max_exact_samples, **_: _imd_validated(xs, ys, k, n_scales, max_exact_samples),
    renamed={"max_samples": "max_exact_samples"},  # max_samples truncates elsewhere; this one refuses
    # A pseudo-metric only: a sup-norm of heat-trace differences obeys the triangle inequality, but it is 0 for
    # any two inputs with isospectral kNN graphs (e.g. the same graph after a non-rigid map), not only equivalent ones.
    metric=False,
    cost="O(n^3) (exact Laplacian spectra)",
    reference="Tsitsulin et al. 2020, The shape of data: Intrinsic distance for data distributions (ICLR)",
    **_TOPOLOGY,
)
def imd(x: Tensor, y: Tensor, *, k: int = 5, n_scales: int = 256, max_exact_samples: int = 4000) -> Tensor:
    """Intrinsic Multi-scale Distance (Tsitsulin et al. 2020, ICLR).

    Each representation becomes the undirected kNN graph of its samples (Euclidean, k = 5 by
    default) with normalised Laplacian L; its heat-trace descriptor is h(t) = tr(exp(-t L)) / n at
    ``n_scales`` scales t log-spaced in [0.1, 10]; IMD = max_t exp(-2 (t + 1/t)) |h_x(t) - h_y(t)|.
    The traces are exact (eigendecomposition, O(n^3)), so no estimation noise; n is limited to
    ``max_exact_samples``. A pseudo-metric, invariant to rotations, translations, isotropic scaling
    and feature permutations (it depends only on the kNN graphs).
    """


def _landmark_sets(n: int, n_landmarks: int, n_repeats: int, seed: int) -> Tensor:
    """(n_repeats, n_landmarks) sample indices, each row distinct samples, from a generator seeded by ``seed``."""
    gen = torch.Generator().manual_seed(seed)
    return torch.stack([torch.randperm(n, generator=gen)[:n_landmarks] for _ in range(n_repeats)])


def _mean_rlt(x: Tensor, landmarks: Tensor, gamma: float, i_max: int) -> np.ndarray:
    """MRLT of x: the mean over the rows of ``landmarks`` of the H1 RLTs of the witness complex
    W(L, x) (every sample a witness) with distances d(w, l) and relaxation up to
    alpha_max = gamma * max_{w, l} d(w, l)."""
    gudhi = _gudhi()
    xc = center_columns(x, ACC)  # distances of centred samples: a large offset does not eat the digits
    n, n_repeats, n_landmarks = xc.shape[0], landmarks.shape[0], landmarks.shape[1]
    landmarks = landmarks.to(x.device)
    sq_norms = sq_row_norms(xc)
    total = np.zeros(i_max)
    per_chunk = max(1, (1 << 22) // (n * n_landmarks))  # witness tables of ~4M entries per host transfer
    for start in range(0, n_repeats, per_chunk):
        idx = landmarks[start : start + per_chunk]  # (c, L)
        # |w - l|^2 = |w|^2 + |l|^2 - 2 w.l, in float64 (in float32 the cancellation would move the
        # filtration by ~1e-4 of the data's spread, i.e. a few % of alpha_max); ~10x faster than differences
        dist = gram_sq_distances(
            sq_norms, sq_norms[idx], torch.matmul(xc, xc[idx].transpose(1, 2))
        ).sqrt_()  # (c, n, L)
        rows = torch.arange(idx.shape[0], device=x.device)[:, None]
        dist[rows, idx, torch.arange(n_landmarks, device=x.device)] = 0.0  # a landmark witnesses itself at 0
        dist, order = dist.sort(dim=2, stable=True)  # each witness's landmarks, nearest first
        tables = torch.stack([order.to(ACC), dist], dim=3).cpu().numpy()  # (c, n, L, 2): (landmark, distance)
        for table in tables:
            alpha_max = gamma * float(table[:, -1, 1].max())
            tree = gudhi.WitnessComplex(nearest_landmark_table=table).create_simplex_tree(
                max_alpha_square=alpha_max, limit_dimension=2
            )
            tree.compute_persistence(homology_coeff_field=2)
            total += _relative_living_times(tree.persistence_intervals_in_dimension(1), alpha_max, i_max)
    return total / n_repeats


_GS_REASON = "geometry_score needs at least 3 landmarks"


def _check_gs_options(n: int, n_landmarks, gamma, i_max, n_repeats) -> None:
    for name, value, low in (("n_landmarks", n_landmarks, 3), ("i_max", i_max, 1), ("n_repeats", n_repeats, 1)):
        if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < low:
            raise ValueError(f"{name} must be an integer >= {low}, got {value!r}")
    if not (isinstance(gamma, (int, float)) and 0 < gamma < float("inf")):
        raise ValueError(f"gamma must be a positive finite number (alpha_max / max distance), got {gamma!r}")
    if n_landmarks > n:
        raise ValueError(
            f"geometry_score draws n_landmarks = {n_landmarks} landmarks from the samples but there are only {n} "
            "samples; pass more samples or a smaller n_landmarks"
        )


def _geometry_scores(xs: list[Tensor], ys_list: list[Tensor], n_landmarks, gamma, i_max, n_repeats, seed) -> Tensor:
    if n_landmarks is None:  # the paper's 64, or every sample when there are fewer (n >= 3 is checked)
        n_landmarks = min(64, xs[0].shape[0])
    _check_gs_options(xs[0].shape[0], n_landmarks, gamma, i_max, n_repeats)
    landmarks = _landmark_sets(xs[0].shape[0], n_landmarks, n_repeats, seed)
    mx = np.stack([_mean_rlt(x, landmarks, gamma, i_max) for x in xs])
    my = mx if ys_list is xs else np.stack([_mean_rlt(y, landmarks, gamma, i_max) for y in ys_list])
    diff = mx[:, None, :] - my[None, :, :]
    return torch.tensor((diff * diff).sum(-1), dtype=ACC, device=xs[0].device)


@layer_measure(
    "geometry_score",
    differentiable=False,
    grid=lambda xs, ys, n_landmarks, gamma, i_max, n_repeats, seed, **_: _geometry_scores(
        xs, ys, n_landmarks, gamma, i_max, n_repeats, seed
    ),
    reason=_GS_REASON,
    needs_package="gudhi",
    cost="O(n_repeats n n_landmarks d) + n_repeats gudhi witness complexes and H1 persistence (host)",
    reference="Khrulkov & Oseledets 2018, Geometry Score: A Method For Comparing Generative Adversarial Networks "
    "(ICML)",
    **_TOPOLOGY,
)
def geometry_score(
    x: Tensor,
    y: Tensor,
    *,
    n_landmarks: int | None = None,
    gamma: float = 1 / 128,
    i_max: int = 100,
    n_repeats: int = 100,
    seed: int = 0,
) -> Tensor:
    """Geometry Score (Khrulkov & Oseledets 2018, ICML): how differently the samples of x and y
    are arranged into 1-dimensional holes (loops), at the scale of landmark witness complexes.

    For a point cloud X and a set L of ``n_landmarks`` landmarks drawn from it, the relaxed witness
    complex W(L, X) (gudhi; every sample is a witness) contains a simplex s at filtration value
    alpha when some witness w has d(w, l) <= d(w, l') + alpha for every l in s and every landmark
    l' not in s (Euclidean distances, not squared, as the authors' code). It is built up to
    dimension 2 and alpha_max = ``gamma`` * max_{w, l} d(w, l). With beta_1(alpha) the number of
    H1 persistence intervals alive at alpha (Z/2 coefficients), the relative living times are

        RLT(i) = |{alpha in [0, alpha_max] : beta_1(alpha) = i}| / alpha_max,  i = 0, ..., i_max - 1

    (counts >= ``i_max`` are not recorded). MRLT is the mean RLT over ``n_repeats`` landmark draws,
    a distribution over the number of holes, and

        GS(x, y) = sum_i (MRLT_x(i) - MRLT_y(i))^2.

    Defaults follow the paper's Algorithm 1 (L_0 = 64 landmarks, gamma = 1/128, i_max = 100) except
    two: ``n_landmarks=None`` (default) means min(64, n), so fewer than 64 samples are all landmarks
    (every draw is then the same set, and the repeats agree) instead of being refused; and the
    number of repeats: the paper averages n = 10000 draws, here ``n_repeats = 100`` (seconds on
    one CPU core at n = 5000); raise it for a less noisy MRLT. gamma = 1/128 is the authors' value at
    N = 5000 samples (their code's default scales it by N / 5000); it is fixed here, pass
    ``gamma=n / (128 * 5000)`` to reproduce that. Landmarks are distinct samples (the authors' code
    draws with replacement).

    Paired representations: x and y hold the same samples, so both use the SAME landmark indices
    (draw r: the first ``n_landmarks`` entries of the r-th ``torch.randperm(n)`` of a CPU generator
    seeded by ``seed``), so the value is deterministic for a fixed seed and GS(x, x) = 0 exactly.
    A distance (0 = the same hole statistics), symmetric, not a metric (a squared Euclidean
    distance between MRLTs). Invariant to rotations, translations, feature permutations and
    isotropic scaling (alpha_max scales with the distances), not to other linear maps. Not
    streaming; cost O(n_repeats * (n * n_landmarks * d + witness complex + persistence)), on the
    host (gudhi) after the distances.
    """
