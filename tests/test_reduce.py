"""dhaka.reduce: shapes and dtypes on dense and sparse input, tiny inputs, method choice, subsampling."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from dhaka import reduce


@pytest.fixture(scope="module")
def groups():
    """120 cells x 80 features in three groups (dense) and a sparse count version."""
    rng = np.random.default_rng(0)
    centres = rng.normal(size=(3, 80)) * 3
    y = np.repeat(np.arange(3), 40)
    X = (centres[y] + rng.normal(size=(120, 80))).astype(np.float32)
    C = sparse.csr_matrix(rng.poisson(np.exp(centres[y] / 3)).astype(np.float32))
    return X, C, y


def _separates(Y, y) -> bool:
    """Each group's centroid is nearer its own cells than any other group's (a weak check)."""
    c = np.stack([Y[y == g].mean(axis=0) for g in np.unique(y)])
    d = ((Y[:, None, :] - c[None]) ** 2).sum(-1)
    return (np.argmin(d, axis=1) == y).mean() > 0.9


# ------------------------------------------------------------------------------- PCA
@pytest.mark.parametrize("k", [2, 3, 10])
def test_pca_dense_and_sparse_shapes(groups, k):
    X, C, y = groups
    for M in (X, C):
        Y = reduce.pca(M, n_components=k, random_state=0)
        assert Y.shape == (120, k) and Y.dtype == np.float32 and np.all(np.isfinite(Y))
    assert _separates(reduce.pca(X, n_components=3), y)


def test_pca_sparse_matches_dense(groups):
    _, C, _ = groups
    a = reduce.pca(C, n_components=3)
    b = reduce.pca(C.toarray(), n_components=3)
    for j in range(3):
        assert abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) > 0.99


def test_randomized_sparse_pca_recovers_structure():
    """The implicit-centring randomized solver (used above 10 000 sparse cells) agrees with exact PCA."""
    rng = np.random.default_rng(1)
    low = rng.normal(size=(400, 3)) * [6, 4, 2] @ rng.normal(size=(3, 60))
    X = np.clip(low + rng.normal(size=(400, 60)) + 3, 0, None)
    X[rng.random(X.shape) < 0.5] = 0
    S = sparse.csr_matrix(X)
    a = reduce._randomized_pca_sparse(S, 3, random_state=0)
    b = reduce.pca(X, n_components=3)
    for j in range(3):
        assert abs(np.corrcoef(a[:, j], b[:, j])[0, 1]) > 0.99


def test_pca_reports_solver(groups):
    X, C, _ = groups
    info: dict = {}
    reduce.pca(X, n_components=3, info=info)
    assert info["solver"] in {"full", "covariance_eigh", "randomized", "arpack"}
    assert len(info["explained_variance_ratio"]) == 3


def test_pca_deterministic(groups):
    X, C, _ = groups
    assert np.array_equal(reduce.pca(C, n_components=3, random_state=0), reduce.pca(C, n_components=3, random_state=0))


@pytest.mark.parametrize("n", [1, 2, 3, 5])
def test_pca_tiny_pads_missing_components(n):
    X = np.random.default_rng(0).normal(size=(n, 4))
    Y = reduce.pca(X, n_components=3)
    assert Y.shape == (n, 3) and np.all(np.isfinite(Y))
    Ys = reduce.pca(sparse.csr_matrix(X), n_components=3)
    assert Ys.shape == (n, 3)


def test_pca_few_features_and_1d():
    X = np.random.default_rng(0).normal(size=(30, 2))
    Y = reduce.pca(X, n_components=3)
    assert Y.shape == (30, 3) and np.all(Y[:, 2] == 0)
    assert reduce.pca(np.arange(10.0), n_components=2).shape == (10, 2)


def test_pca_rejects_nan():
    X = np.ones((5, 3))
    X[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        reduce.pca(X)


# ------------------------------------------------------------------------ t-SNE / UMAP
def test_tsne_method_rule():
    assert reduce.choose_tsne_method(4347, 2) == "sklearn"
    assert reduce.choose_tsne_method(50_000, 2) == "opentsne_fft"
    assert reduce.choose_tsne_method(4347, 3) == "opentsne_bh"
    assert reduce.choose_tsne_method(100, 5) == "sklearn"


@pytest.mark.parametrize("k", [2, 3])
def test_tsne_dense_and_sparse(groups, k):
    X, C, y = groups
    info: dict = {}
    Y = reduce.tsne(C, n_components=k, random_state=0, info=info)
    assert Y.shape == (120, k) and Y.dtype == np.float32 and np.all(np.isfinite(Y))
    assert info["method"] == reduce.choose_tsne_method(120, k)
    Yd = reduce.tsne(X, n_components=k, random_state=0, info=info)
    assert Yd.shape == (120, k)
    assert info["n_pcs"] == 50                                    # 80 columns -> top 50 PCs first
    assert _separates(Yd, y)


def test_tsne_sklearn_threads_follow_n_jobs(groups, monkeypatch):
    """scikit-learn's OpenMP gradient runs on ``n_jobs`` threads (spinning threads cost 3x on busy cores)."""
    from sklearn.manifold import TSNE
    from sklearn.utils._openmp_helpers import _openmp_effective_n_threads

    X, _, _ = groups
    seen: list[int] = []
    real = TSNE.fit_transform

    def spy(self, Y0, *a, **kw):
        seen.append(_openmp_effective_n_threads())
        return real(self, Y0, *a, **kw)

    monkeypatch.setattr(TSNE, "fit_transform", spy)
    outside = _openmp_effective_n_threads()
    reduce.tsne(X, method="sklearn")                    # default: one thread
    reduce.tsne(X, method="sklearn", n_jobs=-1)         # all of them
    assert seen == [1, outside]
    assert _openmp_effective_n_threads() == outside      # the limit ends with the call


def test_tsne_fft_3d_refused_and_unknown_method(groups):
    X, _, _ = groups
    with pytest.raises(ValueError, match="FFT"):
        reduce.tsne(X[:60], n_components=3, method="opentsne_fft")
    with pytest.raises(ValueError, match="unknown"):
        reduce.tsne(X[:60], method="bogus")  # type: ignore[arg-type]


@pytest.mark.slow
def test_tsne_opentsne_fft_2d(groups):
    X, _, y = groups
    info: dict = {}
    Y = reduce.tsne(X, n_components=2, method="opentsne_fft", info=info)
    assert Y.shape == (120, 2) and info["method"] == "opentsne_fft"
    assert _separates(Y, y)


@pytest.mark.parametrize("k", [2, 3])
@pytest.mark.parametrize("n", [1, 3, 5, 12, 40])
def test_tsne_tiny_inputs(n, k):
    X = np.random.default_rng(0).normal(size=(n, 10)).astype(np.float32)
    info: dict = {}
    Y = reduce.tsne(X, n_components=k, perplexity=30, info=info)
    assert Y.shape == (n, k) and np.all(np.isfinite(Y))
    if n >= 4:
        assert info["perplexity"] < n


@pytest.mark.parametrize("k", [2, 3])
def test_umap_dense_and_sparse(groups, k):
    X, C, y = groups
    info: dict = {}
    Y = reduce.umap(X, n_components=k, random_state=0, info=info)
    assert Y.shape == (120, k) and Y.dtype == np.float32 and np.all(np.isfinite(Y))
    assert _separates(Y, y)
    assert reduce.umap(C, n_components=k, random_state=0).shape == (120, k)


@pytest.mark.parametrize("n", [1, 3, 5, 12])
def test_umap_tiny_inputs(n):
    X = np.random.default_rng(0).normal(size=(n, 6)).astype(np.float32)
    info: dict = {}
    Y = reduce.umap(X, n_components=2, n_neighbors=15, info=info)
    assert Y.shape == (n, 2) and np.all(np.isfinite(Y))
    if n >= 4:
        assert info["n_neighbors"] < n


@pytest.mark.slow
def test_warmup_umap_runs():
    assert reduce.warmup_umap(n=5000) > 0


# --------------------------------------------------------------------------- subsample
def test_subsample():
    idx = reduce.subsample(1000, max_n=100, seed=0)
    assert idx.shape == (100,) and np.all(np.diff(idx) > 0) and idx.max() < 1000
    assert np.array_equal(idx, reduce.subsample(1000, max_n=100, seed=0))
    assert not np.array_equal(idx, reduce.subsample(1000, max_n=100, seed=1))
    assert np.array_equal(reduce.subsample(50, max_n=100, seed=0), np.arange(50))
    assert reduce.subsample(0, max_n=10).shape == (0,)
