from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dhaka import preprocess as pp


def test_detect_kind_counts_log_scaled_normalized(blobs_counts):
    X, _ = blobs_counts
    assert pp.detect_kind(X).kind == "counts"
    assert pp.detect_kind(sp.csr_matrix(X)).kind == "counts"
    assert pp.detect_kind(np.log2(X + 1)).kind == "log"
    assert pp.detect_kind(np.log2(X + 1) - 1.0).kind == "scaled"
    tpm = X / X.sum(1, keepdims=True) * 1e6 + 0.5
    k = pp.detect_kind(tpm)
    assert k.kind == "normalized" and k.log and not k.normalize
    assert pp.detect_kind(X, mode="cnv").kind == "cnv"
    assert "log2" in pp.detect_kind(X).describe()


def test_normalize_and_log_keep_sparse_and_match_dense(blobs_counts):
    X, _ = blobs_counts
    S = sp.csr_matrix(X)
    Nd, t = pp.normalize_total(X)
    Ns, t2 = pp.normalize_total(S)
    assert sp.issparse(Ns) and t == t2
    np.testing.assert_allclose(Ns.toarray(), Nd, rtol=1e-5)
    np.testing.assert_allclose(pp.library_size(Nd), t, rtol=1e-4)
    Ls = pp.log2p(Ns)
    assert sp.issparse(Ls)
    np.testing.assert_allclose(Ls.toarray(), pp.log2p(Nd), rtol=1e-5)
    np.testing.assert_allclose(pp.log2p(np.array([[0.0, 1.0, 3.0]])), [[0.0, 1.0, 2.0]])


def test_relative_expression_centres_each_gene_over_cells(blobs_counts):
    X, _ = blobs_counts
    R = pp.relative_expression(sp.csr_matrix(X))
    np.testing.assert_allclose(R.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(R, X - X.mean(0), rtol=1e-5, atol=1e-4)


def test_column_moments_sparse_equals_dense(blobs_counts):
    X, _ = blobs_counts
    m1, v1 = pp.column_moments(X)
    m2, v2 = pp.column_moments(sp.csr_matrix(X))
    np.testing.assert_allclose(m1, m2, rtol=1e-6)
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["cv", "entropy", "mean", "variance", "dispersion"])
def test_select_genes_methods(blobs_counts, method):
    X, _ = blobs_counts
    idx = pp.select_genes(X, n_genes=10, method=method)
    assert idx.shape == (10,) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, pp.select_genes(sp.csr_matrix(X), n_genes=10, method=method))
    assert len(pp.select_genes(X, n_genes=None)) == X.shape[1]


def test_select_by_mean_picks_the_highest_mean_genes():
    X = np.tile(np.arange(1, 9, dtype=np.float32), (20, 1)) + np.random.default_rng(0).random((20, 8))
    np.testing.assert_array_equal(pp.select_genes(X, n_genes=3, method="mean"), [5, 6, 7])


def test_cv_skips_genes_seen_in_one_cell():
    rng = np.random.default_rng(1)
    X = rng.poisson(5, size=(50, 6)).astype(np.float32)
    X[:, 0] = 0
    X[3, 0] = 100  # maximal CV, but detected in a single cell
    assert 0 not in pp.select_genes(X, n_genes=3, method="cv")


def test_entropy_of_constant_gene_is_zero_and_uniform_is_high():
    X = np.zeros((100, 2))
    X[:, 1] = np.arange(100)
    ent = pp.gene_scores(X, method="entropy")
    assert ent[0] == 0 and ent[1] > 4


def test_inject_dropout_fraction_and_seed(blobs_counts):
    X, _ = blobs_counts
    nz_before = np.count_nonzero(X, axis=1)
    Y = pp.inject_dropout(X, fraction=0.3, seed=5)
    nz_after = np.count_nonzero(Y, axis=1)
    np.testing.assert_array_equal(nz_after, nz_before - np.round(0.3 * nz_before).astype(int))
    assert np.all((Y == 0) | (Y == X))
    np.testing.assert_array_equal(Y, pp.inject_dropout(X, fraction=0.3, seed=5))
    assert not np.array_equal(Y, pp.inject_dropout(X, fraction=0.3, seed=6))
    Ys = pp.inject_dropout(sp.csr_matrix(X), fraction=0.3, seed=5)
    assert sp.issparse(Ys) and Ys.nnz == nz_after.sum()
    with pytest.raises(ValueError, match="fraction"):
        pp.inject_dropout(X, fraction=1.5)


def test_dropout_fraction_counts_explicit_zeros():
    S = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0], [4.0, 0.0]]))
    S.data[0] = 0.0  # an explicitly stored zero
    np.testing.assert_allclose(pp.dropout_fraction(S), [0.5, 0.75])
    np.testing.assert_allclose(pp.dropout_fraction(S.toarray()), [0.5, 0.75])


def _latent_driven(n=300, n_signal=20, n_noise=400, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    W = rng.normal(size=(3, n_signal))
    X = np.hstack([Z @ W + 0.5 * rng.normal(size=(n, n_signal)), rng.normal(size=(n, n_noise))])
    return (X + 5.0).astype(np.float32), Z


def test_latent_r2_sparse_equals_dense_and_is_a_fraction():
    X, Z = _latent_driven()
    X[X < 4.5] = 0.0
    dense = pp.latent_r2(X, Z)
    sparse = pp.latent_r2(sp.csr_matrix(X), Z)
    np.testing.assert_allclose(dense, sparse, atol=1e-6)
    assert ((dense >= 0) & (dense <= 1)).all()
    assert dense[:20].min() > dense[20:].max()  # latent-driven genes explain more than any noise gene


def test_select_by_latent_finds_the_latent_driven_genes_and_few_others():
    X, Z = _latent_driven()
    sel = pp.select_by_latent(X, Z, alpha=0.01, min_genes=1)
    assert set(range(20)) <= set(sel.indices.tolist())
    assert sel.n_significant <= 22  # alpha = 0.01 family-wise: at most a stray noise gene or two
    assert np.all(np.diff(sel.indices) > 0)


def test_select_by_latent_limits_and_collapsed_latent():
    X, Z = _latent_driven()
    assert len(pp.select_by_latent(X, Z, min_genes=50).indices) == 50      # topped up by R^2
    assert len(pp.select_by_latent(X, Z, min_genes=1, max_genes=5).indices) == 5
    flat = pp.select_by_latent(X, np.zeros_like(Z), min_genes=10)
    assert flat.n_significant == 0 and flat.threshold == float("inf")
    with pytest.raises(ValueError, match="rows"):
        pp.latent_r2(X, Z[:10])
