"""Other dimensionality reductions to set beside Dhaka's latent space: PCA, t-SNE, UMAP.

Every function takes cells x features, dense or :mod:`scipy.sparse`, and returns a
float32 array ``(n_cells, n_components)``. A sparse matrix is never densified (except
tiny ones): PCA centres it implicitly.

t-SNE and UMAP run on the top 50 principal components when the input has more than
50 columns (the standard practice of scanpy and Seurat: it removes noise and makes
the neighbour search fast); pass ``n_pcs=None`` to use the input as is.

Tiny inputs never raise: the number of components is padded with zero columns when
the data have fewer dimensions, t-SNE's perplexity is lowered to ``(n - 1) / 3``,
UMAP's ``n_neighbors`` to ``n - 1``, and below 4 cells t-SNE / UMAP fall back to PCA.

Pass a dict as ``info=`` to any function to learn what was actually run (solver,
method, perplexity, number of PCs, seconds).
"""
from __future__ import annotations

import time
import warnings
from typing import Literal

import numpy as np
from scipy import sparse

__all__ = ["pca", "tsne", "umap", "warmup_umap", "subsample", "choose_tsne_method", "TSNE_FFT_MIN_CELLS"]

#: From this many cells on, 2-D t-SNE uses openTSNE's FFT gradients (which scale best, 20k-100k cells).
TSNE_FFT_MIN_CELLS = 20_000

TSNEMethod = Literal["auto", "sklearn", "opentsne_bh", "opentsne_fft"]


def _as_matrix(X):
    if sparse.issparse(X):
        X = sparse.csr_matrix(X)
        if X.dtype not in (np.float32, np.float64):
            X = X.astype(np.float32)
        return X
    X = np.asarray(X)
    if X.dtype not in (np.float32, np.float64):
        X = X.astype(np.float32)
    if X.ndim == 1:
        X = X[:, None]
    if X.ndim != 2:
        raise ValueError(f"expected a 2-D cells x features matrix, got shape {X.shape}")
    return X


def _check_finite(X) -> None:
    data = X.data if sparse.issparse(X) else X
    if not np.all(np.isfinite(data)):
        raise ValueError("the matrix contains NaN or infinite values; remove or impute them first")


def _pad(Y: np.ndarray, n: int, n_components: int) -> np.ndarray:
    out = np.zeros((n, n_components), dtype=np.float32)
    k = min(Y.shape[1], n_components) if Y.ndim == 2 else 0
    if k:
        out[:, :k] = Y[:, :k]
    return out


def _sign_flip(U: np.ndarray) -> np.ndarray:
    """Deterministic signs: the largest-magnitude entry of each column is positive."""
    idx = np.argmax(np.abs(U), axis=0)
    signs = np.sign(U[idx, np.arange(U.shape[1])])
    signs[signs == 0] = 1
    return U * signs


def _randomized_pca_sparse(X, k: int, *, random_state: int, n_iter: int = 6, oversample: int = 10) -> np.ndarray:
    """Top-``k`` PC scores of sparse ``X`` with implicit centring (Halko et al. 2011)."""
    rng = np.random.default_rng(random_state)
    n, p = X.shape
    mu = np.asarray(X.mean(axis=0)).ravel().astype(np.float64)
    ell = min(k + oversample, min(n, p))

    def A(M):  # (X - 1 mu^T) @ M
        return X @ M - np.outer(np.ones(n), mu @ M)

    def At(M):  # (X - 1 mu^T)^T @ M
        return X.T @ M - np.outer(mu, M.sum(axis=0))

    Q = A(rng.standard_normal((p, ell)))
    Q, _ = np.linalg.qr(Q)
    for _ in range(n_iter):
        Q, _ = np.linalg.qr(At(Q))
        Q, _ = np.linalg.qr(A(Q))
    B = At(Q).T                                            # ell x p
    Ub, s, _ = np.linalg.svd(B, full_matrices=False)
    U = Q @ Ub[:, :k]
    return _sign_flip(U) * s[:k]


def pca(
    X,
    *,
    n_components: int = 3,
    random_state: int = 0,
    info: dict | None = None,
) -> np.ndarray:
    """Principal component scores.

    Dense input: :class:`sklearn.decomposition.PCA` (``svd_solver="auto"``: exact for
    small matrices, randomized for big ones). Sparse input is centred implicitly:
    ARPACK (via scikit-learn) up to 10 000 cells, a randomized SVD with implicit
    centring above that; tiny sparse matrices are densified.

    Parameters
    ----------
    X
        Cells x features, dense or scipy sparse.
    n_components
        Number of components; when the data have fewer dimensions
        (``min(n_cells, n_features)``) the missing columns are zeros.
    random_state
        Seed of the randomized solvers.
    info
        Optional dict, filled with ``solver``, ``n_components`` computed and
        ``explained_variance_ratio`` (when known).

    Returns
    -------
    np.ndarray
        float32 ``(n_cells, n_components)``.
    """
    from sklearn.decomposition import PCA

    t0 = time.perf_counter()
    X = _as_matrix(X)
    _check_finite(X)
    n, p = X.shape
    if n_components < 1:
        raise ValueError(f"n_components must be at least 1, got {n_components}")
    info = {} if info is None else info
    k = min(n_components, n, p)
    if n < 2 or k < 1:
        info.update(solver="none", n_computed=0, seconds=time.perf_counter() - t0)
        return np.zeros((n, n_components), dtype=np.float32)
    if sparse.issparse(X) and n * p <= 2_000_000:
        X = X.toarray()
    evr = None
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if sparse.issparse(X):
            k = min(k, min(n, p) - 1)                       # ARPACK needs k < min(n, p)
            if n > 10_000 or k < 1:
                Y = _randomized_pca_sparse(X, max(k, 1), random_state=random_state)
                solver = "randomized-implicit-centring"
            else:
                model = PCA(n_components=k, svd_solver="arpack", random_state=random_state)
                Y = model.fit_transform(X)
                evr = model.explained_variance_ratio_
                solver = "arpack"
        else:
            model = PCA(n_components=k, svd_solver="auto", random_state=random_state)
            Y = model.fit_transform(X)
            evr = model.explained_variance_ratio_
            solver = getattr(model, "_fit_svd_solver", "auto")
    Y = np.nan_to_num(np.asarray(Y), nan=0.0)
    info.update(solver=solver, n_computed=int(Y.shape[1]), seconds=time.perf_counter() - t0)
    if evr is not None:
        info["explained_variance_ratio"] = [float(v) for v in evr]
    return _pad(Y, n, n_components)


def _embed_input(X, n_pcs: int | None, random_state: int, info: dict) -> np.ndarray:
    """Dense float32 input for t-SNE / UMAP: top ``n_pcs`` PCs when there are more columns."""
    X = _as_matrix(X)
    _check_finite(X)
    if n_pcs is not None and X.shape[1] > n_pcs:
        info["n_pcs"] = n_pcs
        return pca(X, n_components=n_pcs, random_state=random_state)
    info["n_pcs"] = None
    if sparse.issparse(X):
        X = X.toarray()
    return np.ascontiguousarray(X, dtype=np.float32)


def choose_tsne_method(n_cells: int, n_components: int) -> str:
    """The t-SNE implementation ``method="auto"`` uses.

    Rule (from timings on 4347 cells x 50 PCs: scikit-learn 21.6 s in 2-D and 62.7 s
    in 3-D; openTSNE 39.9 s in 2-D and 31.4 s in 3-D; openTSNE's FFT gradients scale
    best from 20k to 100k cells but exist only up to 2-D):

    * 2-D (or 1-D), fewer than :data:`TSNE_FFT_MIN_CELLS` cells: ``"sklearn"`` (Barnes-Hut);
    * 2-D (or 1-D), from :data:`TSNE_FFT_MIN_CELLS` cells: ``"opentsne_fft"``;
    * 3-D: ``"opentsne_bh"`` (openTSNE Barnes-Hut, twice as fast as scikit-learn's);
    * more than 3-D: ``"sklearn"`` (its exact method, the only one that supports it).
    """
    if n_components <= 2:
        return "opentsne_fft" if n_cells >= TSNE_FFT_MIN_CELLS else "sklearn"
    if n_components == 3:
        return "opentsne_bh"
    return "sklearn"


def tsne(
    X,
    *,
    n_components: int = 2,
    random_state: int = 0,
    perplexity: float = 30.0,
    method: TSNEMethod = "auto",
    n_pcs: int | None = 50,
    n_jobs: int = 1,
    info: dict | None = None,
) -> np.ndarray:
    """t-SNE embedding.

    Parameters
    ----------
    X
        Cells x features, dense or scipy sparse. With more than ``n_pcs`` columns the
        embedding is computed on the top ``n_pcs`` principal components.
    n_components
        Output dimensions (2 or 3 usually).
    random_state
        Seed.
    perplexity
        Lowered to ``(n_cells - 1) / 3`` on small inputs.
    method
        ``"auto"`` (see :func:`choose_tsne_method`), ``"sklearn"``, ``"opentsne_bh"``
        or ``"opentsne_fft"`` (2-D at most).
    n_pcs
        PCs to embed from, or ``None`` for the input itself.
    n_jobs
        Threads: openTSNE's, and the most scikit-learn's gradient (OpenMP) and neighbour search use
        (``-1``: all cores). One by default: the app computes views while a training, a browser or
        another view keeps the cores busy, and there two OpenMP threads took 6-7 s for 500 cells where
        one took 2.3 s (their barriers spin while a thread waits for a core; 2.1 s vs 2.5 s on idle cores).
    info
        Optional dict, filled with ``method``, ``perplexity``, ``n_pcs``, ``seconds``.

    Returns
    -------
    np.ndarray
        float32 ``(n_cells, n_components)``.
    """
    t0 = time.perf_counter()
    info = {} if info is None else info
    if method not in ("auto", "sklearn", "opentsne_bh", "opentsne_fft"):
        raise ValueError(f"unknown t-SNE method {method!r}")
    Y0 = _embed_input(X, n_pcs, random_state, info)
    n = Y0.shape[0]
    if n < 4:
        info.update(method="pca-fallback", perplexity=None, seconds=time.perf_counter() - t0)
        return pca(Y0, n_components=n_components, random_state=random_state)
    perp = float(min(perplexity, max((n - 1) / 3.0, 1.0)))
    chosen = choose_tsne_method(n, n_components) if method == "auto" else method
    if chosen == "opentsne_fft" and n_components > 2:
        raise ValueError("openTSNE's FFT gradients support at most 2 components; use method='opentsne_bh'")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        if chosen == "sklearn":
            from sklearn.manifold import TSNE

            from threadpoolctl import threadpool_limits

            algo = "barnes_hut" if n_components < 4 else "exact"
            with threadpool_limits(limits=None if n_jobs < 0 else max(int(n_jobs), 1), user_api="openmp"):
                Y = TSNE(n_components=n_components, perplexity=perp, init="pca", learning_rate="auto",
                         method=algo, random_state=random_state, n_jobs=n_jobs).fit_transform(Y0)
            info["sklearn_method"] = algo
        else:
            import openTSNE

            Y = openTSNE.TSNE(n_components=n_components, perplexity=perp,
                              negative_gradient_method="fft" if chosen == "opentsne_fft" else "bh",
                              random_state=random_state, n_jobs=n_jobs, verbose=False).fit(Y0)
    info.update(method=chosen, perplexity=perp, seconds=time.perf_counter() - t0)
    return np.asarray(Y, dtype=np.float32)


def umap(
    X,
    *,
    n_components: int = 2,
    random_state: int = 0,
    n_neighbors: int = 15,
    min_dist: float = 0.1,
    n_pcs: int | None = 50,
    info: dict | None = None,
) -> np.ndarray:
    """UMAP embedding (umap-learn).

    The first call in a process compiles numba code (about a minute); see
    :func:`warmup_umap`. With more than ``n_pcs`` columns UMAP runs on the top
    ``n_pcs`` principal components. ``n_neighbors`` is lowered to ``n_cells - 1``, the
    spectral initialisation is replaced by a random one below 20 cells (where it can
    fail), and below 4 cells the result is PCA.

    Parameters
    ----------
    X
        Cells x features, dense or scipy sparse.
    n_components, random_state, n_neighbors, min_dist
        As in :class:`umap.UMAP`.
    n_pcs
        PCs to embed from, or ``None`` for the input itself.
    info
        Optional dict, filled with ``n_neighbors``, ``init``, ``n_pcs``, ``seconds``.

    Returns
    -------
    np.ndarray
        float32 ``(n_cells, n_components)``.
    """
    t0 = time.perf_counter()
    info = {} if info is None else info
    Y0 = _embed_input(X, n_pcs, random_state, info)
    n = Y0.shape[0]
    if n < 4:
        info.update(method="pca-fallback", seconds=time.perf_counter() - t0)
        return pca(Y0, n_components=n_components, random_state=random_state)
    import umap as umap_

    nn = int(max(2, min(n_neighbors, n - 1)))
    init = "spectral" if n >= 20 else "random"
    kw: dict = {}
    if n < UMAP_EXACT_KNN_MAX:
        kw = {"precomputed_knn": _exact_knn(Y0, nn), "force_approximation_algorithm": True}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        Y = umap_.UMAP(n_components=n_components, n_neighbors=nn, min_dist=min_dist, init=init,
                       random_state=random_state, **kw).fit_transform(Y0)
    info.update(method="umap-learn", n_neighbors=nn, init=init, exact_knn=bool(kw),
                seconds=time.perf_counter() - t0)
    return np.asarray(Y, dtype=np.float32)


#: Below this many cells UMAP gets exact neighbours from scikit-learn (umap-learn computes them itself
#: below 4096 with a numba kernel whose first compilation took 5 of the 11 s a fresh process spent
#: on its first UMAP here; the neighbours, and so the embedding, are the same).
UMAP_EXACT_KNN_MAX = 4096


def _exact_knn(Y: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray, None]:
    """Each point's ``k`` nearest points (itself first, at distance 0), as umap-learn's exact path finds them."""
    from sklearn.neighbors import NearestNeighbors

    dist, idx = NearestNeighbors(n_neighbors=k).fit(Y).kneighbors(Y)
    return idx.astype(np.int32), dist.astype(np.float32), None


def warmup_umap(*, n: int = 5000, seed: int = 0) -> float:
    """Fit UMAP once on ``n`` random points so numba compiles its code; returns seconds.

    The app calls this in a background thread at start-up: the first real UMAP then
    takes seconds instead of a minute. ``n`` of 5000 (above umap's 4096-point
    threshold) also compiles the approximate nearest-neighbour search used on real data.
    """
    t0 = time.perf_counter()
    import umap as umap_

    X = np.random.default_rng(seed).standard_normal((n, 10)).astype(np.float32)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        umap_.UMAP(n_components=2, n_epochs=20, random_state=seed).fit_transform(X)
    return time.perf_counter() - t0


def subsample(n: int, *, max_n: int, seed: int = 0) -> np.ndarray:
    """Indices of at most ``max_n`` of ``n`` items, drawn without replacement, sorted.

    All ``n`` indices when ``n <= max_n``. Used to draw or compute on a subset of cells.
    """
    if n < 0 or max_n < 0:
        raise ValueError(f"n and max_n must be non-negative, got n={n}, max_n={max_n}")
    if n <= max_n:
        return np.arange(n, dtype=np.int64)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=max_n, replace=False)).astype(np.int64)
