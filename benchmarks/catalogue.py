"""Agreement of repsim's measures with the peers' own code on the same data, and the grid speed.

    .benchvenv/bin/python benchmarks/catalogue.py            # values -> benchmarks/results_catalogue_cpu.md
    flock /tmp/repsim-cpu.lock .benchvenv/bin/python benchmarks/catalogue.py --speed --n 5000 --d 512

Each peer runs in its own subprocess (``--worker PEER``), reading the shared data from an ``.npz`` file
and printing one JSON line per call, with a per-call alarm, so a slow or broken peer is a row that
says so. ReSi's package is also called ``repsim``: its worker puts the ReSi checkout first on
``sys.path`` and never imports ours.

Every row names the convention that maps the peer's number onto repsim's (``CONVERT``): the
mapping is the finding. ``docs/guide/catalogue/peers.md`` explains every difference above 1e-6;
the ``explain`` column reproduces the peer's number with the explained variant (a repsim option,
or a numpy line written from the peer's formula).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import signal
import subprocess
import sys
import tempfile
import time
import types
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
PEERS = Path(os.environ.get("REPSIM_PEERS", "/work/peers"))
BENCHVENV = Path(os.environ.get("REPSIM_BENCHVENV", "/work/main/.benchvenv"))


# ---------------------------------------------------------------- data
def make_cases(n: int = 500, p: int = 64, q: int = 48, seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """Two cases: related Gaussian features, and post-ReLU features with a large mean (+5)."""
    gen = np.random.default_rng(seed)
    z = gen.standard_normal((n, 16))
    x = z @ gen.standard_normal((16, p)) + 0.5 * gen.standard_normal((n, p))
    y = z @ gen.standard_normal((16, q)) + 0.5 * gen.standard_normal((n, q))
    y_eq = z @ gen.standard_normal((16, p)) + 0.5 * gen.standard_normal((n, p))
    logits_x = z[:, :10] + 0.3 * gen.standard_normal((n, 10))
    logits_y = z[:, :10] + 0.6 * gen.standard_normal((n, 10))
    labels = np.argmax(z[:, :10] + 0.5 * gen.standard_normal((n, 10)), axis=1)
    relu = {k: np.maximum(v, 0.0) + 5.0 for k, v in {"x": x, "y": y, "y_eq": y_eq}.items()}
    common = {"logits_x": logits_x, "logits_y": logits_y, "labels": labels.astype(np.int64)}
    return {"gaussian": {"x": x, "y": y, "y_eq": y_eq, **common}, "relu": {**relu, **common}}


# ---------------------------------------------------------------- rows
# (row id, repsim measure, repsim options, peer, peer function, input kind)
# input kind: "xy" features (p != q), "eq" equal widths, "out" logits, "acc" accuracies.
ROWS = [
    # ReSi (mklabunde/resi), measure(R, Rp, shape="nd")
    ("resi_pwcca", "pwcca", {}, "resi", "PWCCA", "xy"),
    ("resi_pwcca_yx", "pwcca", {}, "resi", "PWCCA (narrow first)", "yx"),
    ("resi_svcca", "svcca", {}, "resi", "SVCCA", "xy"),
    ("resi_hcm", "hard_correlation_match", {}, "resi", "HardCorrelationMatch", "xy"),
    ("resi_scm", "soft_correlation_match", {}, "resi", "SoftCorrelationMatch", "xy"),
    ("resi_dcor", "distance_correlation", {}, "resi", "DistanceCorrelation", "xy"),
    ("resi_eos", "eigenspace_overlap", {}, "resi", "EigenspaceOverlapScore", "xy"),
    ("resi_gulp", "gulp", {}, "resi", "Gulp", "xy"),
    ("resi_imd", "imd", {}, "resi", "IMDScore", "xy"),
    ("resi_linreg", "linear_regression", {}, "resi", "LinearRegression", "xy"),
    ("resi_jaccard", "jaccard_knn", {}, "resi", "JaccardSimilarity", "xy"),
    ("resi_rank", "rank_similarity", {}, "resi", "RankSimilarity", "xy"),
    ("resi_soc", "second_order_cosine", {}, "resi", "SecondOrderCosineSimilarity", "xy"),
    ("resi_aligned_cos", "aligned_cosine", {}, "resi", "AlignedCosineSimilarity", "xy"),
    ("resi_angular", "angular_shape", {}, "resi", "OrthogonalAngularShapeMetricCentered", "xy"),
    ("resi_procrustes", "procrustes", {}, "resi", "OrthogonalProcrustesCenteredAndNormalized", "xy"),
    ("resi_perm_procrustes", "permutation_procrustes", {}, "resi", "PermutationProcrustes", "eq"),
    ("resi_size_shape", "procrustes_size_shape", {}, "resi", "ProcrustesSizeAndShapeDistance", "xy"),
    ("resi_rsa", "rsa", {}, "resi", "RSA", "xy"),
    ("resi_rsmnd", "rsm_norm_difference", {}, "resi", "RSMNormDifference", "xy"),
    ("resi_concentricity", "concentricity_difference", {}, "resi", "ConcentricityDifference", "xy"),
    ("resi_magnitude", "magnitude_difference", {}, "resi", "MagnitudeDifference", "xy"),
    ("resi_uniformity", "uniformity_difference", {}, "resi", "UniformityDifference", "xy"),
    ("resi_cka", "linear_cka", {}, "resi", "CKA", "xy"),
    ("resi_rtd", "rtd", {}, "resi", "RTD", "xy"),
    ("resi_jsd", "jsd", {}, "resi", "JSD", "out"),
    ("resi_disagreement", "disagreement", {}, "resi", "Disagreement", "out"),
    ("resi_abs_acc", "abs_acc_diff", {}, "resi", "AbsoluteAccDiff", "acc"),
    # netrep (ahwillia/netrep)
    ("netrep_angular_a1", "angular_shape", {"alpha": 1.0}, "netrep", "LinearMetric(alpha=1).fit_score", "xy"),
    ("netrep_angular_a0", "angular_shape", {"alpha": 0.0}, "netrep", "LinearMetric(alpha=0).fit_score", "xy"),
    ("netrep_angular_a05", "angular_shape", {"alpha": 0.5}, "netrep", "LinearMetric(alpha=0.5).fit_score", "xy"),
    ("netrep_perm", "permutation_procrustes", {}, "netrep", "PermutationMetric(angular).fit_score", "eq"),
    # anatome (moskomule/anatome), inputs (n, d)
    ("anatome_mean_cca", "mean_cca", {}, "anatome", "cca(svd)[2].mean()", "xy"),
    ("anatome_svcca", "svcca", {}, "anatome", "svcca_distance(0.99, svd)", "xy"),
    ("anatome_pwcca", "pwcca", {}, "anatome", "pwcca_distance(svd)", "xy"),
    ("anatome_cka", "linear_cka", {}, "anatome", "linear_cka_distance(reduce_bias=False)", "xy"),
    ("anatome_dcka", "debiased_cka", {}, "anatome", "linear_cka_distance(reduce_bias=True)", "xy"),
    ("anatome_procrustes", "procrustes", {}, "anatome", "orthogonal_procrustes_distance", "xy"),
    # platonic-rep (minyoungg/platonic-rep) metrics.AlignmentMetrics, topk = 10
    ("platonic_mutual_knn", "mutual_knn", {}, "platonic", "mutual_knn(topk=10)", "xy"),
    ("platonic_cycle_knn", "cycle_knn", {}, "platonic", "cycle_knn(topk=10)", "xy"),
    ("platonic_cknna", "cknna", {}, "platonic", "cknna(topk=10)", "xy"),
    ("platonic_mutual_knn_unit", "mutual_knn", {}, "platonic", "mutual_knn(topk=10) on unit rows", "unit"),
    ("platonic_cycle_knn_unit", "cycle_knn", {}, "platonic", "cycle_knn(topk=10) on unit rows", "unit"),
    ("platonic_cknna_unit", "cknna", {}, "platonic", "cknna(topk=10) on unit rows", "unit"),
    ("platonic_cka", "linear_cka", {}, "platonic", "cka(ip)", "xy"),
    ("platonic_dcka", "debiased_cka", {}, "platonic", "unbiased_cka(ip)", "xy"),
    ("platonic_svcca", "svcca", {}, "platonic", "svcca(cca_dim=10)", "xy"),
    # PyPI peers
    ("dcor_dcor", "distance_correlation", {}, "dcor", "dcor.distance_correlation", "xy"),
    ("dcor_dcor_u", "distance_correlation", {"debiased": True}, "dcor", "dcor.u_distance_correlation_sqr", "xy"),
    (
        "rsatoolbox_rsa",
        "rsa",
        {"rdm": "correlation", "compare": "pearson"},
        "rsatoolbox",
        "calc_rdm(correlation) + compare(corr)",
        "xy",
    ),
    (
        "rsatoolbox_rsa_spearman",
        "rsa",
        {"rdm": "correlation", "compare": "spearman"},
        "rsatoolbox",
        "calc_rdm(correlation) + compare(spearman)",
        "xy",
    ),
    ("ckatorch_cka", "linear_cka", {}, "ckatorch", "cka_base(unbiased=False)", "xy"),
    ("ckatorch_dcka", "debiased_cka", {}, "ckatorch", "cka_base(unbiased=True)", "xy"),
]

# peer value -> repsim's convention, and what that mapping is (the finding).
CONVERT = {
    "anatome_svcca": (lambda v: 1 - v, "peer returns 1 - SVCCA"),
    "anatome_pwcca": (lambda v: 1 - v, "peer returns 1 - PWCCA"),
    "anatome_cka": (lambda v: 1 - v, "peer returns 1 - CKA"),
    "anatome_dcka": (lambda v: 1 - v, "peer returns 1 - CKA"),
    "anatome_procrustes": (lambda v: math.sqrt(max(2 * v, 0.0)), "peer returns 1 - |X'Y|_* = d^2 / 2: sqrt(2 v)"),
    "resi_jsd": (lambda v: v * math.log(2), "peer uses log base 2: v ln 2"),
    "dcor_dcor_u": (lambda v: v, "both return the bias-corrected dCor^2 (no root): as is"),
    "resi_gulp": (lambda v: math.sqrt(max(v, 0.0)), "peer returns the squared distance: sqrt(v)"),
    "resi_size_shape": (lambda v: v / math.sqrt(500), "peer does not divide by sqrt(n): v / sqrt(n), n = 500"),
}


# ---------------------------------------------------------------- peer workers
def _alarm(seconds: int):
    def handler(signum, frame):
        raise TimeoutError(f"> {seconds} s")

    signal.signal(signal.SIGALRM, handler)
    signal.alarm(seconds)


def _inputs(data: dict, case: str, kind: str):
    d = {k[len(case) + 1 :]: v for k, v in data.items() if k.startswith(case + "/")}
    if kind == "xy":
        return d["x"], d["y"]
    if kind == "unit":  # platonic-rep's pipeline L2-normalises rows before calling its metrics
        return tuple(m / np.linalg.norm(m, axis=1, keepdims=True) for m in (d["x"], d["y"]))
    if kind == "yx":
        return d["y"], d["x"]
    if kind == "eq":
        return d["x"], d["y_eq"]
    if kind == "out":
        return d["logits_x"], d["logits_y"]
    acc = [float(np.mean(d[k].argmax(1) == d["labels"])) for k in ("logits_x", "logits_y")]
    return acc[0], acc[1]


def _peer_resi() -> dict:
    sys.path[:] = [str(PEERS / "resi")] + [p for p in sys.path if "catalogue" not in p and p != str(ROOT)]
    from repsim.measures.output_similarity import AbsoluteAccDiff

    import repsim as resi
    from repsim.measures import ALL_MEASURES, FUNCTIONAL_SIMILARITY_MEASURES

    assert "resi" in resi.__file__, resi.__file__
    out = {}
    for row, _, _, p, fname, kind in ROWS:
        if p != "resi":
            continue
        name = fname.split(" ")[0]
        if kind == "out":
            out[row] = (lambda m: lambda a, b: m(a, b))(FUNCTIONAL_SIMILARITY_MEASURES[name])
        elif kind == "acc":
            out[row] = lambda a, b: AbsoluteAccDiff()(a, b)
        else:
            out[row] = (lambda m: lambda a, b: m(a, b, shape="nd"))(ALL_MEASURES[name])
    return out


def _peer_netrep() -> dict:
    sys.path.insert(0, str(PEERS / "netrep"))
    from netrep.metrics import LinearMetric, PermutationMetric

    return {
        "netrep_angular_a1": lambda a, b: LinearMetric(alpha=1.0, score_method="angular").fit_score(a, b),
        "netrep_angular_a0": lambda a, b: LinearMetric(alpha=0.0, score_method="angular").fit_score(a, b),
        "netrep_angular_a05": lambda a, b: LinearMetric(alpha=0.5, score_method="angular").fit_score(a, b),
        "netrep_perm": lambda a, b: PermutationMetric(score_method="angular").fit_score(a, b),
    }


def _peer_anatome() -> dict:
    # anatome imports torchvision's feature extractor at module level (only for its hooks); the
    # benchvenv's torchvision does not match its torch, so stub the one module it names.
    stub = types.ModuleType("torchvision.models.feature_extraction")
    stub.get_graph_node_names = stub.create_feature_extractor = None
    for name in ("torchvision", "torchvision.models"):
        sys.modules.setdefault(name, types.ModuleType(name))
    sys.modules["torchvision.models.feature_extraction"] = stub
    sys.path.insert(0, str(PEERS / "anatome"))
    import torch
    from anatome import distance as ad

    t = torch.as_tensor
    return {
        "anatome_mean_cca": lambda a, b: ad.cca(t(a), t(b), "svd")[2].mean().item(),
        "anatome_svcca": lambda a, b: ad.svcca_distance(t(a), t(b), 0.99, "svd").item(),
        "anatome_pwcca": lambda a, b: ad.pwcca_distance(t(a), t(b), "svd").item(),
        "anatome_cka": lambda a, b: ad.linear_cka_distance(t(a), t(b), False).item(),
        "anatome_dcka": lambda a, b: ad.linear_cka_distance(t(a), t(b), True).item(),
        "anatome_procrustes": lambda a, b: ad.orthogonal_procrustes_distance(t(a), t(b)).item(),
    }


def _peer_platonic() -> dict:
    sys.modules.setdefault("torchaudio", types.ModuleType("torchaudio"))
    sys.modules.setdefault("torchaudio.functional", types.ModuleType("torchaudio.functional"))
    sys.path.insert(0, str(PEERS / "platonic-rep"))
    import torch
    from metrics import AlignmentMetrics as am

    t = torch.as_tensor
    return {
        "platonic_mutual_knn": lambda a, b: am.mutual_knn(t(a), t(b), topk=10),
        "platonic_cycle_knn": lambda a, b: am.cycle_knn(t(a), t(b), topk=10),
        "platonic_cknna": lambda a, b: am.cknna(t(a), t(b), topk=10),
        "platonic_mutual_knn_unit": lambda a, b: am.mutual_knn(t(a), t(b), topk=10),
        "platonic_cycle_knn_unit": lambda a, b: am.cycle_knn(t(a), t(b), topk=10),
        "platonic_cknna_unit": lambda a, b: am.cknna(t(a), t(b), topk=10),
        "platonic_cka": lambda a, b: am.cka(t(a), t(b)),
        "platonic_dcka": lambda a, b: am.unbiased_cka(t(a), t(b)),
        "platonic_svcca": lambda a, b: am.svcca(t(a), t(b), cca_dim=10),
    }


def _peer_dcor() -> dict:
    import dcor

    return {
        "dcor_dcor": lambda a, b: dcor.distance_correlation(a, b),
        "dcor_dcor_u": lambda a, b: dcor.u_distance_correlation_sqr(a, b),
    }


def _peer_rsatoolbox() -> dict:
    import rsatoolbox

    def rsa(a, b, method):
        rdms = [rsatoolbox.rdm.calc_rdm(rsatoolbox.data.Dataset(m), method="correlation") for m in (a, b)]
        return rsatoolbox.rdm.compare(rdms[0], rdms[1], method=method)[0, 0]

    return {
        "rsatoolbox_rsa": lambda a, b: rsa(a, b, "corr"),
        "rsatoolbox_rsa_spearman": lambda a, b: rsa(a, b, "spearman"),
    }


def _peer_ckatorch() -> dict:
    import torch
    from ckatorch.core import cka_base

    t = torch.as_tensor
    return {
        "ckatorch_cka": lambda a, b: cka_base(t(a), t(b), unbiased=False).item(),
        "ckatorch_dcka": lambda a, b: cka_base(t(a), t(b), unbiased=True).item(),
    }


PEER_FUNCTIONS = {
    "resi": _peer_resi,
    "netrep": _peer_netrep,
    "anatome": _peer_anatome,
    "platonic": _peer_platonic,
    "dcor": _peer_dcor,
    "rsatoolbox": _peer_rsatoolbox,
    "ckatorch": _peer_ckatorch,
}


def _peer_functions(peer: str) -> dict:
    """Row id -> f(a, b) -> float, importing the peer (only in its worker)."""
    if peer not in PEER_FUNCTIONS:
        raise ValueError(peer)
    return PEER_FUNCTIONS[peer]()


def worker(peer: str, data_path: str, rows: list[str], cases: list[str], timeout: int) -> None:
    data = dict(np.load(data_path))
    try:
        fns = _peer_functions(peer)
    except Exception as e:  # a peer that does not import is a row per call, not a crash
        for row in rows:
            for case in cases:
                print(json.dumps({"row": row, "case": case, "error": f"import: {type(e).__name__}: {e}"[:200]}))
        return
    kinds = {r[0]: r[5] for r in ROWS}
    for row in rows:
        for case in cases:
            a, b = _inputs(data, case, kinds[row])
            rec = {"row": row, "case": case}
            try:
                _alarm(timeout)
                start = time.perf_counter()
                value = fns[row](a, b)
                rec["seconds"] = time.perf_counter() - start
                rec["value"] = float(np.asarray(value, dtype=np.float64).reshape(-1)[0])
            except Exception as e:
                rec["error"] = f"{type(e).__name__}: {e}"[:200]
            finally:
                signal.alarm(0)
            print(json.dumps(rec), flush=True)


def run_peer(peer: str, data_path: str, rows: list[str], cases: list[str], timeout: int) -> list[dict]:
    env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
    env.setdefault("OMP_NUM_THREADS", "1")
    env["PYTHONPATH"] = str(ROOT / "benchmarks")
    cmd = [
        sys.executable,
        str(Path(__file__).resolve()),
        "--worker",
        peer,
        "--data",
        data_path,
        "--rows",
        ",".join(rows),
        "--cases",
        ",".join(cases),
        "--timeout",
        str(timeout),
    ]
    total = timeout * len(rows) * len(cases) + 120
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=total, env=env, cwd="/tmp")
        out = proc.stdout
        tail = proc.stderr.strip().splitlines()[-1:] if proc.returncode else []
    except subprocess.TimeoutExpired as e:
        out = e.stdout.decode() if isinstance(e.stdout, bytes) else (e.stdout or "")
        tail = [f"worker > {total} s"]
    got = [json.loads(line) for line in out.splitlines() if line.startswith("{")]
    seen = {(g["row"], g["case"]) for g in got}
    for row in rows:
        for case in cases:
            if (row, case) not in seen:
                got.append({"row": row, "case": case, "error": (tail or ["worker died"])[0][:200]})
    return got


# ---------------------------------------------------------------- repsim side and explanations
def repsim_value(measure: str, options: dict, a, b, kind: str, labels=None):
    import torch

    import repsim

    start = time.perf_counter()
    ta, tb = torch.as_tensor(a), torch.as_tensor(b)
    if measure == "abs_acc_diff":
        v = repsim.measure(ta, tb, measure, labels=torch.as_tensor(labels))
    else:
        v = repsim.measure(ta, tb, measure, **options)
    return float(v), time.perf_counter() - start


def _centred(m):
    return m - m.mean(0)


def explain(row: str, a: np.ndarray, b: np.ndarray) -> tuple[float, str] | None:
    """The peer's number reproduced with the explained variant (written from its formula), or None."""
    peer = row.split("_")[0]
    return {"resi": _explain_resi, "platonic": _explain_platonic}.get(peer, _explain_other)(row, a, b)


def _explain_resi(row: str, a: np.ndarray, b: np.ndarray) -> tuple[float, str] | None:
    """ReSi's rows (see :func:`explain`)."""
    import torch

    import repsim

    if row == "resi_svcca":  # keeps one principal component: |corr(PC1(x), PC1(y))|
        pcs = []
        for m in (a, b):
            u, s, _ = np.linalg.svd(_centred(m), full_matrices=False)
            pcs.append(u[:, 0] * s[0])
        return abs(np.corrcoef(pcs[0], pcs[1])[0, 1]), "one principal component per side"
    if row == "resi_rsa":  # Pearson-similarity RSM (row-centred cosine), Spearman of lower triangles
        v = repsim.measure(torch.as_tensor(a), torch.as_tensor(b), "rsa", rdm="correlation", compare="spearman")
        return float(v), "repsim rsa(rdm='correlation', compare='spearman')"
    if row == "resi_rsmnd":  # spectral norm of the difference of the n x n Euclidean distance matrices
        dist = [np.sqrt(np.maximum(((m[:, None, :] - m[None, :, :]) ** 2).sum(-1), 0)) for m in (a, b)]
        return float(np.linalg.norm(dist[0] - dist[1], 2)), "spectral norm |D_x - D_y|_2"
    if row == "resi_magnitude":  # norm of the mean vector, not the mean of the row norms
        return abs(np.linalg.norm(a.mean(0)) - np.linalg.norm(b.mean(0))), "| |mean(x)| - |mean(y)| |"
    if row == "resi_scm":  # symmetrised: mean of both directions' best matches
        c = (_centred(a) / np.linalg.norm(_centred(a), axis=0)).T @ (_centred(b) / np.linalg.norm(_centred(b), axis=0))
        return (c.max(1).mean() + c.max(0).mean()) / 2, "(mean_i max_j r_ij + mean_j max_i r_ij) / 2"
    if row == "resi_perm_procrustes":  # raw (uncentred, unscaled) |x P - y|_F, P maximising tr(P x^T y)
        from scipy.optimize import linear_sum_assignment

        r, c = linear_sum_assignment(a.T @ b, maximize=True)
        return float(np.linalg.norm(a[:, r] - b[:, c])), "uncentred |x P - y|_F, no 1/sqrt(n)"
    if row == "resi_uniformity":  # Wang & Isola on unnormalised rows: exp(-2 |x_i - x_j|^2) underflows

        def u(m):
            sq = ((m[:, None, :] - m[None, :, :]) ** 2).sum(-1)
            return np.log(np.exp(-2 * sq).sum() / len(m) ** 2)

        return abs(u(a) - u(b)), "uniformity on unnormalised rows"
    if row == "resi_linreg":  # ReSi regresses its FIRST argument on the second
        v = repsim.measure(torch.as_tensor(a), torch.as_tensor(b), "linear_regression", predict="x")
        return float(v), "repsim linear_regression(predict='x')"
    if row == "resi_aligned_cos":  # uncentred, zero-padded to equal widths, x rotated onto y
        w = max(a.shape[1], b.shape[1])
        pa, pb = (np.pad(m, ((0, 0), (0, w - m.shape[1]))) for m in (a, b))
        u, _, vt = np.linalg.svd(pa.T @ pb)
        ra = pa @ (u @ vt)
        cos = (ra * pb).sum(1) / (np.linalg.norm(ra, axis=1) * np.linalg.norm(pb, axis=1))
        return float(cos.mean()), "uncentred x Q vs y, zero-padded"
    if row == "resi_pwcca_yx":  # google/svcca's "directions": u^T (x - mu) + mu, u from the WHITENED problem

        def inv_sqrt(s):
            lam, v = np.linalg.eigh(s)
            return v @ np.diag(lam**-0.5) @ v.T

        ca, cb = _centred(a), _centred(b)
        u, rho, _ = np.linalg.svd(inv_sqrt(ca.T @ ca) @ ca.T @ cb @ inv_sqrt(cb.T @ cb), full_matrices=False)
        basis, _ = np.linalg.qr((u.T @ ca.T + a.mean(0)[:, None]).T)
        weights = np.abs(basis.T @ a).sum(1)
        return float(weights @ rho / weights.sum()), "directions u^T (x - mu) + mu, unwhitened, means added back"
    return None


def _explain_platonic(row: str, a: np.ndarray, b: np.ndarray) -> tuple[float, str] | None:
    """The Platonic-representation rows (see :func:`explain`)."""

    if row in ("platonic_mutual_knn", "platonic_cycle_knn"):  # neighbours by raw inner product, self excluded

        def knn(m):
            g = m @ m.T
            np.fill_diagonal(g, -1e8)
            return np.argsort(-g, axis=1, kind="stable")[:, :10]

        ka, kb = knn(a), knn(b)
        if row == "platonic_mutual_knn":
            return np.mean([len(set(ka[i]) & set(kb[i])) / 10 for i in range(len(a))]), "raw inner-product kNN"
        hit = (ka[kb] == np.arange(len(a))[:, None, None]).reshape(len(a), -1).any(1)
        return hit.mean(), "raw inner-product kNN"
    if row in ("platonic_cknna", "platonic_cknna_unit"):  # raw K = x x^T, Song's HSIC, + 1e-6 in the denominator

        def hsic_u(k, m):
            k, m = k.copy(), m.copy()
            np.fill_diagonal(k, 0)
            np.fill_diagonal(m, 0)
            n = len(k)
            return ((k * m.T).sum() + k.sum() * m.sum() / ((n - 1) * (n - 2)) - 2 * (k @ m).sum() / (n - 2)) / (
                n * (n - 3)
            )

        def mask(k):
            g = k.copy()
            np.fill_diagonal(g, -np.inf)
            out = np.zeros_like(k)
            np.put_along_axis(out, np.argsort(-g, axis=1, kind="stable")[:, :10], 1.0, axis=1)
            return out

        gk, gl = a @ a.T, b @ b.T
        mk, ml = mask(gk), mask(gl)
        kl = hsic_u(mk * ml * gk, mk * ml * gl)
        return kl / (math.sqrt(hsic_u(mk * gk, mk * gk) * hsic_u(ml * gl, ml * gl)) + 1e-6), "raw Gram, + 1e-6"
    if row == "platonic_svcca":  # standardised columns, top-10 left singular vectors each, mean of 10 CCs
        us = []
        for m in (a, b):
            z = _centred(m) / (m.std(0, ddof=1) + 1e-8)
            us.append(np.linalg.svd(z, full_matrices=False)[0][:, :10])
        rho = np.linalg.svd(np.linalg.qr(us[0])[0].T @ np.linalg.qr(us[1])[0], compute_uv=False)
        return float(rho.mean()), "mean CC of the top-10 singular vectors of standardised x, y (exact SVD)"
    return None


def _explain_other(row: str, a: np.ndarray, b: np.ndarray) -> tuple[float, str] | None:
    """netrep's and anatome's rows (see :func:`explain`)."""
    import torch

    import repsim

    if row == "netrep_angular_a05":  # netrep's lambda are eigenvalues of X^T X (scatter), not X^T X / n
        k = math.sqrt(len(a))
        v = repsim.measure(torch.as_tensor(a * k), torch.as_tensor(b * k), "angular_shape", alpha=0.5)
        return float(v), "repsim angular_shape(sqrt(n) x, sqrt(n) y, alpha=0.5)"
    if row == "anatome_pwcca":  # the coefficients (not the variates) re-orthonormalised, weights sum_i |x_i a_j|
        qa, ra = np.linalg.qr(_centred(a))
        qb, _ = np.linalg.qr(_centred(b))
        u, rho, _ = np.linalg.svd(qa.T @ qb, full_matrices=False)
        coef, _ = np.linalg.qr(np.linalg.solve(ra, u))
        weights = np.abs(a @ coef).sum(0)
        return float(weights @ rho / weights.sum()), "weights from QR-orthonormalised coefficients, uncentred x"
    if row == "anatome_svcca":  # uncentred SVD, keep k with cumsum(s)/sum(s) < 0.99 (singular values)
        red = []
        for m in (a, b):
            _, s, vt = np.linalg.svd(m, full_matrices=False)
            k = int((np.cumsum(s) / s.sum() < 0.99).sum())
            red.append(m @ vt[:k].T)
        v = repsim.measure(torch.as_tensor(red[0]), torch.as_tensor(red[1]), "mean_cca")
        return float(v), "repsim mean_cca of uncentred SVD reductions (singular-value share)"
    if row == "netrep_perm":  # a different measure: angle after the best permutation, centred, unit norm
        from scipy.optimize import linear_sum_assignment

        xa, xb = _centred(a) / np.linalg.norm(_centred(a)), _centred(b) / np.linalg.norm(_centred(b))
        r, c = linear_sum_assignment(xa.T @ xb, maximize=True)
        return float(np.arccos(np.clip((xa[:, r] * xb[:, c]).sum(), -1, 1))), "arccos <x P, y> (unit, centred)"
    return None


def fmt(v) -> str:
    if v is None:
        return "—"
    if isinstance(v, str):
        return v
    return f"{v:.6g}"


def agreement(args) -> None:
    cases = make_cases(n=args.n_agree)
    peers_wanted = set(args.peers.split(",")) if args.peers else None
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "data.npz")
        np.savez(path, **{f"{c}/{k}": v for c, d in cases.items() for k, v in d.items()})
        by_peer: dict[str, list[str]] = {}
        for row, _, _, peer, _, _ in ROWS:
            if peers_wanted is None or peer in peers_wanted:
                by_peer.setdefault(peer, []).append(row)
        results = {}
        for peer, rows in by_peer.items():
            print(f"[{peer}] {len(rows)} rows ...", file=sys.stderr, flush=True)
            for rec in run_peer(peer, path, rows, list(cases), args.timeout):
                results[(rec["row"], rec["case"])] = rec
    lines = [
        "| measure | case | peer | peer function | repsim | peer (converted) | abs diff | convention | "
        "explained variant | peer s | repsim s |",
        "|" + "---|" * 11,
    ]
    diffs = []
    for row, measure, options, peer, fname, kind in ROWS:
        if peers_wanted is not None and peer not in peers_wanted:
            continue
        for case, d in cases.items():
            rec = results[(row, case)]
            a, b = _inputs(
                {f"{case}/{k}": v for k, v in d.items()},
                case,
                "eq" if kind == "eq" else ("out" if kind in ("out", "acc") else kind),
            )
            try:
                rv, rt = repsim_value(measure, options, a, b, kind, labels=d["labels"])
            except Exception as e:
                rv, rt = f"error: {type(e).__name__}: {str(e)[:80]}", None
            conv_fn, conv = CONVERT.get(row, (lambda v: v, "as is"))
            opt = ", ".join(f"{k}={v!r}" for k, v in options.items())
            mname = f"{measure}({opt})" if opt else measure
            if "error" in rec:
                pv, diff = f"error: {rec['error']}".replace("|", "/"), None
            else:
                pv = conv_fn(rec["value"])
                diff = abs(rv - pv) if isinstance(rv, float) else None
            ex = explain(row, a, b) if diff is not None and diff > 1e-6 else None
            ex_txt = "—" if ex is None else f"{ex[1]}: {ex[0]:.6g} (abs diff {abs(ex[0] - pv):.1e})".replace("|", "\\|")
            if diff is not None and diff > 1e-6:
                diffs.append((mname, case, peer, diff))
            lines.append(
                f"| {mname} | {case} | {peer} | {fname} | {fmt(rv)} | {fmt(pv)} | "
                f"{'—' if diff is None else f'{diff:.1e}'} | {conv} | {ex_txt} | "
                f"{fmt(rec.get('seconds'))} | {fmt(rt)} |"
            )
    header = (
        f"# repsim against the peers' own code (CPU)\n\nn = {args.n_agree}, p = 64, q = 48 (equal widths "
        "64/64 where marked 'eq'); cases: related Gaussian, and post-ReLU + 5. Generated by "
        "`benchmarks/catalogue.py`; explanations in `docs/guide/catalogue/peers.md`.\n\n"
    )
    text = header + "\n".join(lines) + "\n"
    print(text)
    Path(args.out).write_text(text)
    print(f"{len(diffs)} rows differ by more than 1e-6", file=sys.stderr)


# ---------------------------------------------------------------- speed
SPEED = [  # repsim measure, options, peer row (the fastest peer in the n = 500 agreement timings), n cap
    ("linear_cka", {}, "anatome_cka", None),
    ("debiased_cka", {}, "anatome_dcka", None),
    ("mean_cca", {}, "anatome_mean_cca", None),
    ("svcca", {}, "anatome_svcca", None),
    ("pwcca", {}, "anatome_pwcca", None),
    ("procrustes", {}, "anatome_procrustes", None),
    ("angular_shape", {"alpha": 1.0}, "resi_angular", None),
    ("angular_shape", {"alpha": 0.0}, "netrep_angular_a0", None),
    ("hard_correlation_match", {}, "resi_hcm", None),
    ("soft_correlation_match", {}, "resi_scm", None),
    ("linear_regression", {}, "resi_linreg", None),
    ("aligned_cosine", {}, "resi_aligned_cos", None),
    ("procrustes_size_shape", {}, "resi_size_shape", None),
    ("eigenspace_overlap", {}, "resi_eos", None),
    ("gulp", {}, "resi_gulp", None),
    ("concentricity_difference", {}, "resi_concentricity", None),
    ("magnitude_difference", {}, "resi_magnitude", None),
    ("mutual_knn", {}, "platonic_mutual_knn", None),
    ("cycle_knn", {}, "platonic_cycle_knn", None),
    ("cknna", {}, "platonic_cknna", 2000),
    ("jaccard_knn", {}, "resi_jaccard", 2000),
    ("rank_similarity", {}, "resi_rank", 2000),
    ("second_order_cosine", {}, "resi_soc", 2000),
    ("rsa", {"rdm": "correlation", "compare": "pearson"}, "rsatoolbox_rsa", 2000),
    ("distance_correlation", {}, "resi_dcor", 2000),
    ("rsm_norm_difference", {}, "resi_rsmnd", 1000),
    ("uniformity_difference", {}, "resi_uniformity", 2000),
]


def speed_worker(peer: str, row: str, data_path: str, timeout: int) -> None:
    data = np.load(data_path)
    xs = [data[f"x{i}"] for i in range(8)]
    fn = _peer_functions(peer)[row]
    _alarm(timeout)
    start = time.perf_counter()
    for a in xs:
        for b in xs:
            fn(a, b)
    signal.alarm(0)
    print(json.dumps({"seconds": time.perf_counter() - start}))


def speed(args) -> None:
    import torch

    import repsim

    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    gen = np.random.default_rng(1)
    base = gen.standard_normal((args.n, 32))
    layers = [
        np.maximum(base @ gen.standard_normal((32, args.d)) + 0.3 * gen.standard_normal((args.n, args.d)), 0)
        for _ in range(8)
    ]
    only = set(args.measures.split(",")) if args.measures else None
    lines = [
        "| measure | peer loop (64 calls) | n | repsim grid s | peer loop s | peer / repsim |",
        "|---|---|---|---|---|---|",
    ]
    peer_of = {r[0]: (r[3], r[4]) for r in ROWS}
    with tempfile.TemporaryDirectory() as tmp:
        for measure, options, row, cap in SPEED:
            if only and measure not in only:
                continue
            n = min(args.n, cap) if cap else args.n
            xs = [m[:n] for m in layers]
            path = os.path.join(tmp, f"grid{n}.npz")
            if not os.path.exists(path):
                np.savez(path, **{f"x{i}": m for i, m in enumerate(xs)})
            peer, fname = peer_of[row]
            env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
            env["PYTHONPATH"] = str(ROOT / "benchmarks")
            cmd = [
                sys.executable,
                str(Path(__file__).resolve()),
                "--speed-worker",
                peer,
                "--rows",
                row,
                "--data",
                path,
                "--timeout",
                str(args.timeout),
            ]
            try:
                proc = subprocess.run(
                    cmd, capture_output=True, text=True, timeout=args.timeout + 60, env=env, cwd="/tmp"
                )
                rec = [json.loads(x) for x in proc.stdout.splitlines() if x.startswith("{")]
                peer_s = rec[0]["seconds"] if rec else None
                peer_txt = (
                    fmt(peer_s)
                    if rec
                    else (f"> {args.timeout} s" if "Timeout" in proc.stderr else "error: " + proc.stderr.strip()[-100:])
                )
            except subprocess.TimeoutExpired:
                peer_s, peer_txt = None, f"> {args.timeout} s"
            txs = [torch.as_tensor(m) for m in xs]
            _alarm(args.timeout)
            try:
                start = time.perf_counter()
                repsim.measure_grid(txs, txs, measure, **options)
                rep_s = time.perf_counter() - start
                rep_txt = fmt(rep_s)
            except TimeoutError:
                rep_s, rep_txt = None, f"> {args.timeout} s"
            finally:
                signal.alarm(0)
            ratio = (
                fmt(peer_s / rep_s)
                if peer_s and rep_s
                else ("> " + fmt(args.timeout / rep_s) if rep_s and peer_txt.startswith(">") else "—")
            )
            opt = ", ".join(f"{k}={v!r}" for k, v in options.items())
            line = (
                f"| {measure}{f'({opt})' if opt else ''} | {peer}: {fname} | {n} | {rep_txt} | "
                f"{peer_txt.replace('|', '/')} | {ratio} |"
            )
            print(line, flush=True)
            lines.append(line)
            _write_speed(args, lines)


def _write_speed(args, lines: list[str]) -> None:
    text = (
        f"# 8 x 8 layer grid: repsim.measure_grid against the fastest peer's per-pair loop (CPU)\n\n"
        f"n = {args.n} (capped per row where shown), d = {args.d}, post-ReLU layers, one run, "
        f"OMP_NUM_THREADS={os.environ.get('OMP_NUM_THREADS', 'unset')}, per-method timeout {args.timeout} s, "
        f"under `flock /tmp/repsim-cpu.lock`. Generated by `benchmarks/catalogue.py --speed`.\n\n"
        + "\n".join(lines)
        + "\n"
    )
    Path(args.out_speed).write_text(text)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--worker")
    ap.add_argument("--speed-worker")
    ap.add_argument("--data")
    ap.add_argument("--rows", default="")
    ap.add_argument("--cases", default="gaussian,relu")
    ap.add_argument("--peers", default="", help="comma-separated subset of peers")
    ap.add_argument("--timeout", type=int, default=120)
    ap.add_argument("--n-agree", type=int, default=500)
    ap.add_argument("--speed", action="store_true")
    ap.add_argument("--measures", default="", help="speed: comma-separated subset")
    ap.add_argument("--n", type=int, default=5000)
    ap.add_argument("--d", type=int, default=512)
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results_catalogue_cpu.md"))
    ap.add_argument("--out-speed", default=str(ROOT / "benchmarks" / "results_catalogue_speed_cpu.md"))
    args = ap.parse_args()
    if args.worker:
        worker(args.worker, args.data, args.rows.split(","), args.cases.split(","), args.timeout)
    elif args.speed_worker:
        speed_worker(args.speed_worker, args.rows, args.data, args.timeout)
    elif args.speed:
        speed(args)
    else:
        agreement(args)


if __name__ == "__main__":
    main()
