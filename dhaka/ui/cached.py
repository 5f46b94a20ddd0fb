"""Streamlit caches around dhaka calls, keyed by content digests.

``st.cache_data`` / ``st.cache_resource`` are shared by every session of the
server process, so only two kinds of things are cached here:

* public data (the built-in demos) and process-wide services (the job
  manager, the views worker process);
* results that are a pure function of array *content* (embeddings, GMM
  calls): the cache key is a digest of the array, passed as ``digest``;
  the array itself is passed as ``_X`` / ``_Z`` so Streamlit does not hash
  it again on every rerun.  A session can only hit such an entry by holding
  the same numbers.

User datasets, jobs and fitted models are never cached here; they live in
:mod:`dhaka.ui.state`.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import streamlit as st

if TYPE_CHECKING:  # pragma: no cover
    import anndata

    from dhaka.jobs import JobManager
    from dhaka.ui.views_worker import ViewsWorker

__all__ = ["job_manager", "views_worker", "load_demo", "embedding", "clusters", "gmm_fixed_k",
           "qc_stats", "view_scores", "pseudotime_root", "pseudotime", "clone_calls"]


@st.cache_resource(show_spinner=False)
def job_manager() -> JobManager:
    """The process-wide :class:`dhaka.jobs.JobManager` (one per server)."""
    from dhaka.jobs import get_manager

    return get_manager()


@st.cache_resource(show_spinner=False)
def views_worker() -> ViewsWorker:
    """The process-wide worker process for t-SNE / UMAP (:mod:`dhaka.ui.views_worker`), started once.

    It compiles UMAP at low priority from start-up, so the first UMAP view takes seconds instead of a
    minute without stalling trainings. ``DHAKA_UMAP_WARMUP=0`` skips the compilation ahead (tests;
    machines that never use UMAP).
    """
    import os

    from dhaka.ui.views_worker import ViewsWorker

    warm = os.environ.get("DHAKA_UMAP_WARMUP", "1").strip().lower() not in ("0", "false", "no", "off")
    return ViewsWorker(warm=warm)


def load_demo(key: str) -> tuple[anndata.AnnData, anndata.AnnData | None]:
    """A built-in demo ``(adata, second)`` (public data: safe to share; callers get copies)."""
    from dhaka.ui import demos

    return _load_demo(key, fast=demos.demo_fast())


@st.cache_data(show_spinner="Loading demo dataset…", max_entries=8)
def _load_demo(key: str, *, fast: bool) -> tuple[anndata.AnnData, anndata.AnnData | None]:
    """:func:`load_demo`, cached per demo and per demo size (``DHAKA_DEMO_FAST`` shrinks some demos)."""
    from dhaka.ui import demos

    return demos.load(key)


@st.cache_data(show_spinner=False, max_entries=32)
def embedding(
    _X: Any,
    *,
    digest: str,
    method: Literal["pca", "tsne", "umap"],
    n_components: int,
    random_state: int = 0,
) -> np.ndarray:
    """PCA / t-SNE / UMAP of ``_X``, cached by ``(digest, method, n_components, random_state)``.

    PCA runs here; t-SNE and UMAP in the :func:`views_worker` process (UMAP's numba code is compiled
    there, and neither holds the server's GIL while trainings run).
    """
    if method == "pca":
        from dhaka import reduce

        return np.asarray(reduce.pca(_X, n_components=n_components, random_state=random_state))
    return views_worker().run(method, _X, n_components=n_components, random_state=random_state)


@st.cache_data(show_spinner=False, max_entries=32)
def clusters(_Z: np.ndarray, *, digest: str, k_max: int, seed: int, mode: str = "expression",
             clusterer: str | None = None) -> Any:
    """Clusters of ``_Z`` by the pipeline's caller (:func:`dhaka.clusterers.resolve`), cached by content and settings."""
    from dhaka.clusterers import resolve

    return resolve(clusterer, mode=mode, k_max=k_max).fit(_Z, seed=seed)


@st.cache_data(show_spinner=False, max_entries=64)
def gmm_fixed_k(_Z: np.ndarray, *, digest: str, k: int, seed: int) -> Any:
    """GMM with the user's ``k`` components (``dhaka.cluster.gmm_fixed_k``; ``.k``, ``.labels``), cached."""
    from threadpoolctl import threadpool_limits

    from dhaka.cluster import gmm_fixed_k as _fixed

    with threadpool_limits(1, user_api="blas"):
        return _fixed(_Z, k, seed=seed)


@st.cache_data(show_spinner=False, max_entries=16)
def qc_stats(_X: Any, *, digest: str) -> dict[str, Any]:
    """Summary and QC numbers of ``_X``: ``library_size`` per cell, ``dropout`` per gene, ``zero_fraction``,
    ``min``, ``max``."""
    import scipy.sparse as sp

    from dhaka.preprocess import dropout_fraction, library_size

    size = max(1, _X.shape[0] * _X.shape[1])
    if sp.issparse(_X):
        nnz = int(_X.count_nonzero())
        lo = float(_X.data.min()) if _X.nnz else 0.0
        hi = float(_X.data.max()) if _X.nnz else 0.0
        if nnz < size:
            lo, hi = min(lo, 0.0), max(hi, 0.0)
    else:
        A = np.asarray(_X)
        nnz = int(np.count_nonzero(A))
        lo, hi = (float(np.nanmin(A)), float(np.nanmax(A))) if A.size else (0.0, 0.0)
    return {"library_size": np.asarray(library_size(_X)), "dropout": np.asarray(dropout_fraction(_X)),
            "zero_fraction": 1.0 - nnz / size, "min": lo, "max": hi}


@st.cache_data(show_spinner=False, max_entries=64)
def view_scores(_coords: np.ndarray, _labels: np.ndarray, _truth: Any, *, key: str) -> dict[str, float]:
    """Silhouette (and ARI / NMI against ``_truth``) of one view's clusters, cached by ``key``.

    ``key`` must identify the coordinates, labels and truth (e.g. digests of the three), so a colour
    change reruns the page without recomputing silhouettes (O(n^2) on up to 5000 sampled cells).
    """
    from threadpoolctl import threadpool_limits

    from dhaka.pipeline import cluster_metrics

    with threadpool_limits(1, user_api="blas"):
        return cluster_metrics(_coords, _labels, _truth)


@st.cache_data(show_spinner=False, max_entries=64)
def pseudotime_root(_Z: np.ndarray, _clusters: np.ndarray, cluster: Any, *, digest: str, clusters_digest: str) -> int:
    """The root cell of ``cluster`` (``dhaka.analysis.pseudotime.root_from_cluster``), cached by the digests
    of the latent space and the cluster labels (a rerun of the Trajectory page costs nothing)."""
    from dhaka.analysis.pseudotime import root_from_cluster

    return int(root_from_cluster(_Z, _clusters, cluster))


@st.cache_data(show_spinner=False, max_entries=32)
def pseudotime(_Z: np.ndarray, *, digest: str, root: int, n_neighbors: int, method: str) -> np.ndarray:
    """Diffusion (or shortest-path) pseudotime of every cell from ``root``, cached by latent digest and settings."""
    from dhaka.analysis.pseudotime import diffusion_pseudotime

    return np.asarray(diffusion_pseudotime(_Z, root=int(root), n_neighbors=int(n_neighbors), method=method))


@st.cache_data(show_spinner=False, max_entries=32)
def clone_calls(_Z: np.ndarray, *, digest: str, min_cluster_size: Any, seed: int) -> Any:
    """Robust clone calls on ``_Z`` (``dhaka.analysis.copy_number.call_clones``), cached by latent digest."""
    from threadpoolctl import threadpool_limits

    from dhaka.analysis.copy_number import call_clones

    with threadpool_limits(1, user_api="blas"):
        return call_clones(_Z, min_cluster_size=min_cluster_size, seed=seed)
