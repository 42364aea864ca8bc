"""repsim.core.numerics: each helper against a float64 reference written from its formula, its threshold
at the boundary, and its precision policy."""

from __future__ import annotations

import pytest
import torch

from repsim.core import numerics as nm

F64 = torch.float64


def _rand(*shape, seed=0, dtype=F64):
    return torch.randn(*shape, generator=torch.Generator().manual_seed(seed), dtype=F64).to(dtype)


# ------------------------------------------------------------------------------- centring
def test_column_mean_is_float64_and_matches_the_formula():
    x = _rand(50, 4, dtype=torch.float32) + 1e3
    mu = nm.column_mean(x)
    assert mu.dtype == F64
    ref = x.to(F64).sum(0) / 50
    torch.testing.assert_close(mu, ref, rtol=1e-15, atol=0)


@pytest.mark.parametrize("dtype", [torch.float32, F64])
def test_center_columns_matches_the_reference_and_returns_the_compute_dtype(dtype):
    x = _rand(40, 5) * 3 + 7
    ref = x - x.mean(0, keepdim=True)
    out = nm.center_columns(x, dtype)
    assert out.dtype == dtype
    tol = 1e-14 if dtype == F64 else 1e-6
    torch.testing.assert_close(out.to(F64), ref, rtol=tol, atol=tol)
    assert float(out.to(F64).sum(0).abs().max()) < 40 * tol * 10


def test_center_columns_centres_float64_inputs_in_float64_even_for_float32_products():
    # a large offset: converting to float32 first would leave ~1e4 * 6e-8 = 6e-4 of error in a 1e-3 signal
    signal = _rand(64, 3) * 1e-3
    x = signal + 1e4
    out = nm.center_columns(x, torch.float32)
    ref = (x - x.mean(0)).to(torch.float32)  # centred in float64, rounded once
    assert torch.equal(out, ref)
    naive = x.to(torch.float32) - x.to(torch.float32).mean(0)
    exact = x - x.mean(0)
    assert float((out.to(F64) - exact).abs().max()) < 1e-3 * 1e-6
    assert float((naive.to(F64) - exact).abs().max()) > 1e-5  # what the policy avoids


def test_center_columns_keeps_float32_inputs_in_float32_and_uses_a_given_mean():
    x = _rand(30, 4, dtype=torch.float32)
    out = nm.center_columns(x, torch.float32)
    assert out.dtype == torch.float32
    torch.testing.assert_close(out.to(F64), x.to(F64) - x.to(F64).mean(0), rtol=0, atol=1e-6)
    mean = torch.full((4,), 0.5, dtype=F64)
    torch.testing.assert_close(nm.center_columns(x, F64, mean), x.to(F64) - 0.5, rtol=0, atol=0)


def test_center_columns_of_float32_is_float64_centring_rounded_once(monkeypatch):
    x = (_rand(500, 3, seed=10) + 1e3).to(torch.float32)  # offset 1e3, spread 1
    ref = (x.to(F64) - x.to(F64).mean(0)).to(torch.float32)
    assert torch.equal(nm.center_columns(x, torch.float32), ref)
    mean = nm.column_mean(x)
    monkeypatch.setattr(nm, "CENTRE_CHUNK", 7)  # row chunks of 2 rows (and a last one of 0 or 1)
    assert torch.equal(nm.center_columns(x, torch.float32), ref)
    torch.testing.assert_close(nm.column_mean(x), mean, rtol=1e-15, atol=0)
    # what float32 centring would leave: a common shift of ~eps * offset in every row
    naive = x - nm.column_mean(x).to(torch.float32)
    assert float((naive.to(F64) - ref.to(F64)).abs().max()) > 0


# ------------------------------------------------------------------------------- norms
def test_squared_norms_are_float64_and_match_the_formula():
    x = _rand(20, 7, dtype=torch.float32)
    sq = nm.sq_row_norms(x)
    assert sq.dtype == F64 and sq.shape == (20,)
    torch.testing.assert_close(sq, (x.to(F64) ** 2).sum(1), rtol=1e-14, atol=0)
    fro = nm.sq_frobenius(x)
    assert fro.dtype == F64 and fro.ndim == 0
    torch.testing.assert_close(fro, (x.to(F64) ** 2).sum(), rtol=1e-14, atol=0)


def test_block_sq_norms_matches_the_per_block_reference():
    m = _rand(9, 7, dtype=torch.float32)
    rows, cols = [2, 3, 4], [5, 2]
    out = nm.block_sq_norms(m, rows, cols)
    assert out.dtype == F64 and out.shape == (3, 2)
    m64, r0, ref = m.to(F64), 0, torch.empty(3, 2, dtype=F64)
    for i, r in enumerate(rows):
        c0 = 0
        for j, c in enumerate(cols):
            ref[i, j] = (m64[r0 : r0 + r, c0 : c0 + c] ** 2).sum()
            c0 += c
        r0 += r
    torch.testing.assert_close(out, ref, rtol=1e-14, atol=0)


# ------------------------------------------------------------------------------- unit rows
def test_unit_rows_matches_the_reference():
    x = _rand(10, 4)
    ref = x / (x**2).sum(1, keepdim=True).sqrt()
    torch.testing.assert_close(nm.unit_rows(x, "x"), ref, rtol=1e-15, atol=0)
    assert nm.unit_rows(x.to(torch.float32), "x").dtype == torch.float32


def test_unit_rows_without_reference_refuses_exactly_zero_rows_only():
    x = _rand(6, 3)
    x[1] *= 1e-100  # tiny but with a direction: accepted, whatever the other rows' scale
    x[2] *= 1e100
    z = nm.unit_rows(x, "x")
    torch.testing.assert_close((z**2).sum(1), torch.ones(6, dtype=F64), rtol=1e-15, atol=0)
    x[4] = 0
    with pytest.raises(ValueError, match="x has 1 all-zero rows"):
        nm.unit_rows(x, "x")


def test_unit_rows_threshold_relative_to_the_reference_at_the_boundary():
    x = torch.tensor([[3.0, 4.0], [0.6, 0.8]], dtype=F64)  # norms 5 and 1
    above = torch.tensor([10.0, 1.0 / (nm.ZERO_NORM_RTOL * (1 + 1e-6))], dtype=F64)  # 1 > rtol * ref
    nm.unit_rows(x, "x", above)
    below = torch.tensor([10.0, 1.0 / (nm.ZERO_NORM_RTOL * (1 - 1e-6))], dtype=F64)  # 1 < rtol * ref
    with pytest.raises(ValueError, match=r"x has 1 constant rows.*drop them or else"):
        nm.unit_rows(x, "x", below, "constant", "drop them or else")


def test_a_constant_row_centred_across_features_is_refused():
    # the row mean of [0.1, 0.1, 0.1] need not be exactly 0.1: the residue is rounding, not a direction
    x = torch.tensor([[0.1, 0.1, 0.1], [1.0, 2.0, 4.0]], dtype=F64)
    centred = x - x.mean(1, keepdim=True)
    with pytest.raises(ValueError, match="1 constant rows"):
        nm.unit_rows(centred, "x", torch.linalg.vector_norm(x, dim=1), "constant")


# ------------------------------------------------------------------------------- Gram-identity distances
def test_gram_sq_distances_matches_direct_differences():
    a, b = _rand(8, 5, seed=1), _rand(6, 5, seed=2)
    out = nm.gram_sq_distances(nm.sq_row_norms(a), nm.sq_row_norms(b), a @ b.T)
    ref = ((a[:, None, :] - b[None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)


def test_gram_sq_distances_broadcasts_over_leading_dimensions():
    a = _rand(7, 3, seed=3)
    idx = torch.tensor([[0, 2], [5, 6]])  # two batches of two "landmarks"
    sq = nm.sq_row_norms(a)
    out = nm.gram_sq_distances(sq, sq[idx], torch.matmul(a, a[idx].transpose(1, 2)))
    assert out.shape == (2, 7, 2)
    ref = ((a[None, :, None, :] - a[idx][:, None, :, :]) ** 2).sum(-1)
    torch.testing.assert_close(out, ref, rtol=1e-12, atol=1e-13)


def test_gram_sq_distances_clamps_rounding_below_zero():
    eps = torch.finfo(F64).eps
    one = torch.ones(1, dtype=F64)
    assert float(nm.gram_sq_distances(one, one, torch.tensor([[1.0 + 2 * eps]], dtype=F64))) == 0.0
    assert float(nm.gram_sq_distances(one, one, torch.tensor([[1.0 - 2 * eps]], dtype=F64))) > 0.0


# ------------------------------------------------------------------------------- unbiased HSIC
def _song_reference(k: torch.Tensor, l: torch.Tensor) -> float:
    """Song et al. (2012) written out with explicit zero-diagonal matrices and ones vectors."""
    n = k.shape[0]
    kt, lt = k - torch.diag(torch.diag(k)), l - torch.diag(torch.diag(l))
    one = torch.ones(n, 1, dtype=F64)
    first = torch.trace(kt @ lt)
    second = (one.T @ kt @ one) * (one.T @ lt @ one) / ((n - 1) * (n - 2))
    third = 2.0 / (n - 2) * (one.T @ kt @ lt @ one)
    return float((first + second - third) / (n * (n - 3)))


def test_unbiased_hsic_matches_the_explicit_formula():
    x, y = _rand(12, 3, seed=4), _rand(12, 2, seed=5)
    k, l = x @ x.T, torch.tanh(y @ y.T)
    k.fill_diagonal_(0)
    l.fill_diagonal_(0)
    out = nm.unbiased_hsic(12, (k * l).sum(), k.sum(), l.sum(), k.sum(1) @ l.sum(1))
    assert out.dtype == F64
    assert float(out) == pytest.approx(_song_reference(k, l), rel=1e-12)


def test_unbiased_hsic_broadcasts_over_grids():
    ks = torch.stack([(x := _rand(10, 2, seed=s)) @ x.T for s in range(3)])
    ks = ks - torch.diag_embed(torch.diagonal(ks, dim1=-2, dim2=-1))
    rows = ks.sum(-1)
    grid = nm.unbiased_hsic(
        10, (ks[:, None] * ks[None]).sum((-2, -1)), rows.sum(-1)[:, None], rows.sum(-1)[None], rows @ rows.T
    )
    assert grid.shape == (3, 3)
    for i in range(3):
        for j in range(3):
            assert float(grid[i, j]) == pytest.approx(_song_reference(ks[i], ks[j]), rel=1e-12)


# ------------------------------------------------------------------------------- eigen cut-off
def test_eigh_kept_matches_the_reference_in_descending_order():
    a = _rand(6, 4, seed=6)
    s = a.T @ a
    vals, vecs = nm.eigh_kept(s)
    ref = torch.linalg.eigvalsh(s).flip(0)
    torch.testing.assert_close(vals, ref, rtol=1e-12, atol=0)
    torch.testing.assert_close((vecs * vals) @ vecs.T, s, rtol=1e-12, atol=1e-12)


def test_eigh_kept_threshold_at_the_boundary():
    # a diagonal scatter: its eigenvalues are exact, so the cut-off (rtol * 2) is tested to 1e-6 of itself
    lam = torch.tensor([2 * nm.EIGEN_RTOL * (1 - 1e-6), 2.0, 0.0, 2 * nm.EIGEN_RTOL * (1 + 1e-6)], dtype=F64)
    vals, vecs = nm.eigh_kept(torch.diag(lam))
    assert vals.numel() == 2 and vecs.shape == (4, 2)
    assert vals.tolist() == [2.0, 2 * nm.EIGEN_RTOL * (1 + 1e-6)]
    assert nm.eigh_kept(torch.diag(lam), rtol=1e-12)[0].numel() == 3  # the tolerance is the caller's to lower


def test_eigh_kept_keeps_nothing_of_a_zero_matrix_and_keeps_the_dtype():
    assert nm.eigh_kept(torch.zeros(3, 3, dtype=F64))[0].numel() == 0
    vals, vecs = nm.eigh_kept(torch.eye(3, dtype=torch.float32))
    assert vals.dtype == vecs.dtype == torch.float32 and vals.numel() == 3


def test_thresholds_are_the_documented_constants():
    assert nm.ZERO_NORM_RTOL == 1e-12
    assert nm.EIGEN_RTOL == 1e-10


# ------------------------------------------------------------------------------- at the call sites
def test_correlation_rdm_refuses_a_constant_row_whose_centring_leaves_rounding():
    import repsim

    x = _rand(6, 3, seed=8)
    x[2] = 0.7  # 0.7 - mean(0.7, 0.7, 0.7) is ~2e-16, not 0: a direction made of rounding
    assert float((x[2] - x[2].mean()).norm()) > 0
    with pytest.raises(ValueError, match="1 constant rows"):
        repsim.rdm(x, method="correlation")
    repsim.rdm(x, method="cosine")  # the row itself has a direction


def test_cosine_neighbours_accept_a_small_row_that_has_a_direction():
    import repsim

    x = _rand(12, 3, seed=9)
    x[0] *= 1e-14  # 1e-14 of the other rows' norms: still a direction, so still a neighbour list
    knn = repsim.measures.knn_indices(nm.unit_rows(x, "x"), 3)
    assert knn.shape == (12, 3)
    assert float(repsim.measure(x, x, "jaccard_knn", k=3)) == 1.0
