"""Session state of Dhaka Explorer: keys as constants, typed getters and setters.

One browser tab is one Streamlit session; everything a user loads or trains
lives here (never in ``st.cache_*``, which all sessions share) or in the run
store on disk.  Pages read state through the getters below and change it
through the setters, so the rules that tie the pieces together live in one
place:

* a dataset and the results computed from it travel together: loading a new
  dataset clears the latent space, clusters and embeddings of the old one
  (a trained model stays available as :func:`get_estimator` for projecting
  new data, but :func:`get_latent` then returns ``None``);
* results carry the key of the dataset they were computed on
  (:func:`results_match_dataset`).

This module is stable API for every page, including the analysis pages::

    from dhaka.ui import state
    adata = state.get_dataset()          # AnnData or None
    Z = state.get_latent()               # (n_cells, latent_dim) ndarray or None
    labels = state.get_clusters()        # int ndarray (GMM calls in use) or None
    est = state.get_estimator()          # fitted dhaka.Dhaka or None
    state.require_latent()               # st.info + st.stop() when nothing is trained

Only the functions named ``require_*`` draw anything.
"""
from __future__ import annotations

import uuid
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

if TYPE_CHECKING:  # pragma: no cover
    import anndata

    from dhaka.cluster import GMMResult
    from dhaka.estimator import Dhaka
    from dhaka.jobs import Job

__all__ = [
    # keys
    "SESSION_ID", "DATASET", "DATASET_INFO", "SECOND_DATASET", "PREPROCESS", "TRAIN_PARAMS", "JOB",
    "ESTIMATOR", "LATENT", "GMM", "CLUSTERS", "CLUSTER_K", "EMBEDDINGS", "MODEL_INPUT", "RESULT_INFO",
    "TRUTH_COLUMN", "BATCH_KEY", "NOTICE", "COLLECTED_JOB", "VIEWS_JOB", "ANNOTATIONS",
    # functions
    "init_state", "get_dataset", "get_dataset_info", "get_dataset_key", "get_second_dataset",
    "set_dataset", "get_preprocess", "set_preprocess", "get_train_params", "set_train_params",
    "get_estimator_params", "get_job", "set_job", "get_estimator", "get_latent", "get_gmm", "get_clusters",
    "get_cluster_k", "set_clusters", "get_annotations", "set_annotations", "get_embeddings", "set_embedding", "get_views_job", "set_views_job", "views_running", "get_model_input", "set_model_input",
    "get_result_info", "set_result", "clear_results", "results_match_dataset", "get_truth_column",
    "set_truth_column", "get_truth_labels", "get_batch_key", "set_batch_key", "push_notice", "pop_notices", "require_dataset",
    "require_latent",
]

_P = "dhaka."
#: str: random id of this browser session (jobs and runs belong to the person's key, :mod:`dhaka.ui.owner`).
SESSION_ID = _P + "session_id"
#: anndata.AnnData: the loaded dataset (cells x genes).
DATASET = _P + "dataset"
#: dict: about the dataset: ``name``, ``source`` ("demo" / "upload" / "run"), ``demo`` key,
#: ``truth`` (obs column with true labels or None), ``mode`` hint, ``key`` (unique per load),
#: ``fingerprint`` (from dhaka.io.fingerprint when available), ``filename``, ``shape``,
#: ``digest`` (content digest of ``X``, the cache key of QC statistics).
DATASET_INFO = _P + "dataset_info"
#: anndata.AnnData: a second sample to project with a trained model (e.g. the copy-number pair).
SECOND_DATASET = _P + "second_dataset"
#: dict: preprocessing keyword arguments of ``dhaka.Dhaka`` chosen on the Data page.
PREPROCESS = _P + "preprocess"
#: dict: training keyword arguments of ``dhaka.Dhaka`` chosen on the Train page.
TRAIN_PARAMS = _P + "train_params"
#: dhaka.jobs.Job: this session's current (or last) training job.
JOB = _P + "job"
#: dhaka.Dhaka: the fitted estimator of the result in use.
ESTIMATOR = _P + "estimator"
#: numpy.ndarray: latent coordinates (n_cells, latent_dim) of the dataset's cells.
LATENT = _P + "latent"
#: dhaka.cluster.GMMResult: the BIC search over k on the latent space.
GMM = _P + "gmm"
#: numpy.ndarray: the cluster labels in use (BIC choice or the user's k).
CLUSTERS = _P + "clusters"
#: int: the k of the labels in :data:`CLUSTERS`.
CLUSTER_K = _P + "cluster_k"
#: dict[str, numpy.ndarray]: embeddings computed on demand, e.g. ``{"pca_2d": ..., "tsne_3d": ...}``.
EMBEDDINGS = _P + "embeddings"
#: tuple[matrix, str]: the preprocessed matrix the model was trained on (genes selected) and its digest.
MODEL_INPUT = _P + "model_input"
#: dict: about the result in use: ``run_id``, ``dataset_key``, ``source`` ("job" / "run"), ``status``,
#: ``latent_digest``, ``obs_names`` (cell ids of the latent rows).
RESULT_INFO = _P + "result_info"
#: str | None: obs column holding true labels (for ARI / NMI).
TRUTH_COLUMN = _P + "truth_column"
#: str | None: obs column the next training corrects for (batch correction), chosen on the Train page.
BATCH_KEY = _P + "batch_key"
#: str | None: id of the last finished job whose result was taken into the session.
COLLECTED_JOB = _P + "collected_job"
#: list[tuple[str, str]]: one-shot messages (level, text) shown on the next page draw.
NOTICE = _P + "notices"

#: tuple[dhaka.jobs.Job, dhaka.ui.tasks.ViewsTask]: the background job computing the comparison views.
VIEWS_JOB = _P + "views_job"

#: dict[str, numpy.ndarray]: the person's labels of the result's cells, by annotation name (object arrays,
#: ``None`` where a cell is unlabelled); kept with the run (:mod:`dhaka.ui.annotate`).
ANNOTATIONS = _P + "annotations"

_RESULT_KEYS = (ESTIMATOR, LATENT, GMM, CLUSTERS, CLUSTER_K, EMBEDDINGS, MODEL_INPUT, RESULT_INFO, VIEWS_JOB,
                ANNOTATIONS)


def init_state() -> None:
    """Create every key with its empty value (idempotent; call at the top of app.py)."""
    ss = st.session_state
    if SESSION_ID not in ss:
        ss[SESSION_ID] = uuid.uuid4().hex
    for key, empty in ((DATASET, None), (DATASET_INFO, {}), (SECOND_DATASET, None), (PREPROCESS, {}),
                       (TRAIN_PARAMS, {}), (JOB, None), (ESTIMATOR, None), (LATENT, None), (GMM, None),
                       (CLUSTERS, None), (CLUSTER_K, None), (EMBEDDINGS, {}), (MODEL_INPUT, None),
                       (RESULT_INFO, {}), (TRUTH_COLUMN, None), (BATCH_KEY, None), (NOTICE, []),
                       (COLLECTED_JOB, None),
                       (VIEWS_JOB, None), (ANNOTATIONS, {})):
        if key not in ss:
            ss[key] = empty


def _get(key: str, default: Any = None) -> Any:
    return st.session_state.get(key, default)


# ------------------------------------------------------------------ dataset
def get_dataset() -> anndata.AnnData | None:
    """The loaded dataset, or ``None``."""
    return _get(DATASET)


def get_dataset_info() -> dict[str, Any]:
    """What is known about the loaded dataset (see :data:`DATASET_INFO`); ``{}`` when none."""
    return dict(_get(DATASET_INFO) or {})


def get_dataset_key() -> str | None:
    """A key unique to this load of the dataset (results remember it)."""
    return get_dataset_info().get("key")


def get_second_dataset() -> anndata.AnnData | None:
    """A second sample to project with the trained model (e.g. the later copy-number sample), or ``None``."""
    return _get(SECOND_DATASET)


def set_dataset(
    adata: anndata.AnnData,
    *,
    name: str,
    source: str,
    truth: str | None = None,
    mode: str | None = None,
    demo: str | None = None,
    second: anndata.AnnData | None = None,
    fingerprint: dict[str, Any] | None = None,
    filename: str | None = None,
) -> None:
    """Make ``adata`` the session's dataset; clears results computed on the previous one.

    Parameters
    ----------
    adata
        Cells x genes.
    name
        Shown in the sidebar and stored with runs.
    source
        ``"demo"``, ``"upload"`` or ``"run"``.
    truth
        obs column with true labels, if any (pre-selects ARI / NMI).
    mode
        ``"expression"`` or ``"cnv"``: the preprocessing mode to suggest.
    demo
        Key of the built-in demo, if it is one.
    second
        A second sample (kept for projection), or ``None``.
    fingerprint
        Shape + hash of the data (``dhaka.io.fingerprint``), stored with runs.
    filename
        The uploaded file's name.
    """
    init_state()
    ss = st.session_state
    had_result = ss.get(LATENT) is not None
    ss[DATASET] = adata
    from dhaka.ui.tasks import digest

    ss[DATASET_INFO] = {"name": name, "source": source, "truth": truth, "mode": mode, "demo": demo,
                        "key": uuid.uuid4().hex[:12], "fingerprint": fingerprint, "filename": filename,
                        "shape": tuple(int(s) for s in adata.shape), "digest": digest(adata.X)}
    ss[SECOND_DATASET] = second
    ss[TRUTH_COLUMN] = truth if truth is not None and truth in adata.obs.columns else None
    if mode is not None:
        prep = dict(ss.get(PREPROCESS) or {})
        prep["mode"] = mode
        ss[PREPROCESS] = prep
    clear_results(keep_estimator=True)
    if had_result:
        push_notice("info", "A new dataset was loaded: the previous latent space and clusters were cleared "
                            "(they are kept in the Runs page).")


# ------------------------------------------------------------------ settings
def get_preprocess() -> dict[str, Any]:
    """Preprocessing keyword arguments of ``dhaka.Dhaka`` (a copy; ``{}`` = library defaults)."""
    return dict(_get(PREPROCESS) or {})


def set_preprocess(params: dict[str, Any]) -> None:
    """Store the preprocessing choices (keyword arguments of ``dhaka.Dhaka``)."""
    st.session_state[PREPROCESS] = dict(params)


def get_train_params() -> dict[str, Any]:
    """Training keyword arguments of ``dhaka.Dhaka`` (a copy)."""
    return dict(_get(TRAIN_PARAMS) or {})


def set_train_params(params: dict[str, Any]) -> None:
    """Store the training choices (keyword arguments of ``dhaka.Dhaka``)."""
    st.session_state[TRAIN_PARAMS] = dict(params)


def get_estimator_params() -> dict[str, Any]:
    """Preprocessing and training choices merged: ``Dhaka(**get_estimator_params())``."""
    return {**get_preprocess(), **get_train_params()}


# ---------------------------------------------------------------------- job
def get_job() -> Job | None:
    """This session's current or last training job, or ``None``."""
    return _get(JOB)


def set_job(job: Job | None) -> None:
    """Remember this session's training job."""
    st.session_state[JOB] = job


# ------------------------------------------------------------------ results
def get_estimator() -> Dhaka | None:
    """The fitted estimator in use, or ``None``."""
    return _get(ESTIMATOR)


def get_latent() -> np.ndarray | None:
    """Latent coordinates of the loaded dataset's cells ``(n_cells, latent_dim)``, or ``None``."""
    return _get(LATENT)


def get_gmm() -> GMMResult | None:
    """The GMM BIC search on the latent space (``.k``, ``.labels``, ``.bic``, ``.ks``), or ``None``."""
    return _get(GMM)


def get_clusters() -> np.ndarray | None:
    """Cluster labels in use (one int per cell: the BIC choice or the user's k), or ``None``."""
    return _get(CLUSTERS)


def get_cluster_k() -> int | None:
    """Number of clusters of :func:`get_clusters`."""
    return _get(CLUSTER_K)


def set_clusters(labels: np.ndarray, *, k: int) -> None:
    """Set the cluster labels in use (e.g. after the user overrides k)."""
    st.session_state[CLUSTERS] = np.asarray(labels)
    st.session_state[CLUSTER_K] = int(k)


def get_annotations() -> dict[str, np.ndarray]:
    """The person's annotations of the result's cells: name -> one label (or ``None``) per cell (a copy)."""
    return dict(_get(ANNOTATIONS) or {})


def set_annotations(annotations: dict[str, np.ndarray]) -> None:
    """Replace the annotations (checked and kept with the run by :mod:`dhaka.ui.annotate`)."""
    st.session_state[ANNOTATIONS] = {str(k): np.asarray(v, dtype=object) for k, v in annotations.items()}


def get_embeddings() -> dict[str, np.ndarray]:
    """Embeddings computed so far, by name (``"pca_2d"``, ``"tsne_3d"``, ``"umap_2d"``, ...)."""
    return dict(_get(EMBEDDINGS) or {})


def set_embedding(name: str, coords: np.ndarray) -> None:
    """Store an embedding of the current result's cells."""
    emb = dict(_get(EMBEDDINGS) or {})
    emb[name] = np.asarray(coords)
    st.session_state[EMBEDDINGS] = emb


def get_views_job() -> tuple[Job, Any] | None:
    """``(job, task)`` of the background comparison views of the result in use, or ``None``."""
    return _get(VIEWS_JOB)


def views_running() -> bool:
    """``True`` while the background comparison views of the result in use are still being computed."""
    views = get_views_job()
    return views is not None and not views[0].done


def set_views_job(job: Job, task: Any) -> None:
    """Remember the job computing the comparison views (``task.results`` fills as views finish)."""
    st.session_state[VIEWS_JOB] = (job, task)


def get_model_input() -> tuple[Any, str] | None:
    """``(matrix, digest)``: the preprocessed, gene-selected matrix the model saw, or ``None``."""
    return _get(MODEL_INPUT)


def set_model_input(matrix: Any, digest: str) -> None:
    """Store the model's input matrix and its content digest (cache key of embeddings)."""
    st.session_state[MODEL_INPUT] = (matrix, digest)


def get_result_info() -> dict[str, Any]:
    """About the result in use (see :data:`RESULT_INFO`); ``{}`` when none."""
    return dict(_get(RESULT_INFO) or {})


def set_result(
    estimator: Dhaka | None,
    latent: np.ndarray,
    *,
    gmm: GMMResult | None = None,
    run_id: str | None = None,
    source: str = "job",
    status: str | None = None,
    latent_digest: str | None = None,
    obs_names: list[str] | None = None,
) -> None:
    """Make a trained result the one in use, for the loaded dataset.

    Parameters
    ----------
    estimator
        The fitted estimator (``None`` when a run's model could not be loaded).
    latent
        ``(n_cells, latent_dim)`` coordinates, rows in the dataset's cell order.
    gmm
        GMM BIC search on ``latent``; its labels become the clusters in use.
    run_id
        The run in the store this result is saved as.
    source
        ``"job"`` (trained in this session) or ``"run"`` (opened from the store).
    status
        ``"done"``, ``"stopped"``, ``"failed"``, ``"interrupted"``.
    latent_digest
        Content digest of ``latent`` (cache key of the cluster calls).
    obs_names
        Cell ids of the rows of ``latent``.
    """
    clear_results(keep_estimator=False)
    ss = st.session_state
    ss[ESTIMATOR] = estimator
    ss[LATENT] = np.asarray(latent)
    ss[GMM] = gmm
    if gmm is not None:
        ss[CLUSTERS] = np.asarray(gmm.labels)
        ss[CLUSTER_K] = int(gmm.k)
    ss[RESULT_INFO] = {"run_id": run_id, "dataset_key": get_dataset_key(), "source": source, "status": status,
                       "latent_digest": latent_digest, "obs_names": obs_names}


def clear_results(*, keep_estimator: bool = False) -> None:
    """Forget the latent space, clusters and embeddings (optionally keep the fitted estimator)."""
    ss = st.session_state
    views = ss.get(VIEWS_JOB)
    if views is not None:
        views[0].cancel()  # its views belong to the result being forgotten
    for key in _RESULT_KEYS:
        if keep_estimator and key == ESTIMATOR:
            continue
        ss[key] = {} if key in (EMBEDDINGS, RESULT_INFO, ANNOTATIONS) else None


def results_match_dataset() -> bool:
    """``True`` when a latent space exists and was computed on the loaded dataset."""
    info = get_result_info()
    key = get_dataset_key()
    return get_latent() is not None and key is not None and info.get("dataset_key") == key


# -------------------------------------------------------------------- truth
def _obs_column(key: str) -> str | None:
    """The obs column stored under ``key``, or ``None`` when none is or the loaded dataset lacks it."""
    col = _get(key)
    adata = get_dataset()
    if col is None or adata is None or col not in adata.obs.columns:
        return None
    return col


def get_truth_column() -> str | None:
    """The obs column with true labels chosen for ARI / NMI, or ``None``."""
    return _obs_column(TRUTH_COLUMN)


def set_truth_column(column: str | None) -> None:
    """Choose the obs column with true labels (``None`` for none)."""
    st.session_state[TRUTH_COLUMN] = column


def get_truth_labels() -> np.ndarray | None:
    """The true labels of the loaded cells (from :func:`get_truth_column`), or ``None``."""
    col = get_truth_column()
    if col is None:
        return None
    return get_dataset().obs[col].astype(str).to_numpy()


def get_batch_key() -> str | None:
    """The obs column the next training corrects for (``None``: no batch correction, or not in this dataset)."""
    return _obs_column(BATCH_KEY)


def set_batch_key(column: str | None) -> None:
    """Choose the obs column to correct for (``None`` for none)."""
    st.session_state[BATCH_KEY] = column


# ------------------------------------------------------------------ notices
def push_notice(level: str, text: str) -> None:
    """Queue a one-shot message (``level``: "info", "success", "warning", "error")."""
    notices = list(_get(NOTICE) or [])
    notices.append((level, text))
    st.session_state[NOTICE] = notices


def pop_notices() -> list[tuple[str, str]]:
    """Take the queued messages (the caller shows them)."""
    notices = list(_get(NOTICE) or [])
    st.session_state[NOTICE] = []
    return notices


# ------------------------------------------------------------------- guards
def require_dataset() -> anndata.AnnData:
    """The dataset, or an info box pointing to the Data page and ``st.stop()``."""
    adata = get_dataset()
    if adata is None:
        st.info("Load a dataset first (Data page).")
        st.stop()
    return adata


def require_latent() -> np.ndarray:
    """The latent space of the loaded dataset, or an info box pointing to Train / Runs and ``st.stop()``."""
    require_dataset()
    if not results_match_dataset():
        st.info("Train a model on this dataset first (Train page), or open a run of it (Runs page).")
        st.stop()
    return get_latent()
