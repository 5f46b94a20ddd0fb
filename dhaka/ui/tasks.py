"""Work the app hands to background jobs, and the files it offers for download.

Nothing here imports streamlit: :func:`make_train_task` returns a function
that runs in a :class:`dhaka.jobs.JobManager` worker thread, and the
``*_bytes`` builders are plain functions (the pages pass them to
``st.download_button`` as callables, so files are built only when clicked).

The training task:

1. creates a run in the :class:`dhaka.runs.RunStore` (settings, data
   fingerprint, owner);
2. fits :class:`dhaka.Dhaka` (:func:`dhaka.ui.training.fit_embed_cluster`, i.e.
   :func:`dhaka.pipeline.run`) in a training process
   of its own (:mod:`dhaka.ui.train_worker`; ``DHAKA_TRAIN_IN_THREAD=1`` keeps it
   in the job's thread), relaying every epoch to the job
   (``ctx.report(..., history_row=...)``, which the Train page polls) and
   writing a checkpoint every few epochs;
3. embeds the cells, calls clusters (:mod:`dhaka.clusterers`), scores them against
   the true labels when known (in the same process);
4. finishes the run (model, latent + clusters CSV, history, metrics) and
   returns a :class:`TrainOutcome`.

A stop request ends training within one epoch; the model is kept and the run
is stored as ``"stopped"``.  A failure is stored as ``"failed"`` (with its last
checkpoint) and re-raised so the job reports its message.
"""
from __future__ import annotations

import io as _io
import logging
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dhaka import cpu
from dhaka.pipeline import cluster_metrics
from dhaka.ui.train_worker import run_in_worker
from dhaka.ui.training import fit_embed_cluster
from dhaka.ui.views_worker import trainings_first

_log = logging.getLogger(__name__)

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import pandas as pd

    from dhaka.estimator import Dhaka
    from dhaka.jobs import JobContext

__all__ = [
    "TrainOutcome",
    "digest",
    "data_fingerprint",
    "check_training_memory",
    "make_train_task",
    "fit_embed_cluster",
    "train_in_thread",
    "cluster_metrics",
    "latent_frame",
    "latent_csv_bytes",
    "h5ad_bytes",
    "model_zip_bytes",
    "VIEW_METHODS",
    "ViewsTask",
    "progress_reporter",
    "structures_task",
    "dropout_task",
    "de_task",
]

#: The comparison views of the Explore page, in the order they are computed (cheapest first).
VIEW_METHODS = ("pca", "tsne", "umap")
VIEW_LABELS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}


@dataclass
class TrainOutcome:
    """What a training job returns (its ``Job.result``).

    Attributes
    ----------
    estimator
        The fitted :class:`dhaka.Dhaka` (stopped early when ``status == "stopped"``).
    latent
        ``(n_cells, latent_dim)`` posterior means, in the dataset's cell order.
    gmm
        The clusters called on ``latent`` (a :class:`dhaka.clusterers.ClusterResult`; ``None`` if
        the latent could not be clustered).
    run_id
        The run the result is stored as.
    status
        ``"done"`` or ``"stopped"``.
    dataset_key
        The session's dataset key at submission (results of an older dataset are not shown on a newer one).
    obs_names
        Cell ids of the latent rows.
    model_input
        The preprocessed, gene-selected matrix the model was trained on.
    model_input_digest, latent_digest
        Content digests (cache keys).
    metrics
        Summary numbers stored with the run (final_loss, k, silhouette, ari, nmi).
    """

    estimator: Any
    latent: np.ndarray
    gmm: Any
    run_id: str | None
    status: str
    dataset_key: str | None
    obs_names: list[str]
    model_input: Any
    model_input_digest: str
    latent_digest: str
    metrics: dict[str, Any] = field(default_factory=dict)


def digest(X: Any) -> str:
    """A content digest of an array or sparse matrix (shape, dtype and values).

    Used as the cache key of embeddings and cluster calls, so that cached
    results are found by content, never by session.  The ``sha256`` of
    :func:`dhaka.io.fingerprint`.
    """
    from dhaka.io import fingerprint

    return fingerprint(X)["sha256"]


def data_fingerprint(adata: anndata.AnnData) -> dict[str, Any]:
    """Shape + content hash of a dataset, for the run record.

    See :func:`dhaka.io.fingerprint`.
    """
    from dhaka.io import fingerprint

    return dict(fingerprint(adata))


def check_training_memory(adata: anndata.AnnData, params: dict[str, Any]) -> int:
    """Refuse a training that would not fit in memory (``dhaka.resources``).

    Returns
    -------
    int
        The estimate in bytes.

    Raises
    ------
    dhaka.resources.ResourceError
        With a message saying how much it needs and what to change.
    """
    import scipy.sparse as sp

    from dhaka.estimator import Dhaka
    from dhaka.model import resolve_structure
    from dhaka.resources import check_memory, estimate_training_memory

    est = Dhaka(**params)
    p = est.get_params()
    preview = est.preview(adata)
    X = adata.X
    sparse = sp.issparse(X)
    density = (X.nnz / max(1, X.shape[0] * X.shape[1])) if sparse else None
    estimate = estimate_training_memory(
        int(adata.n_obs), int(adata.n_vars), hidden=resolve_structure(p["structure"]),
        latent_dim=int(p["latent_dim"]), batch_size=est.resolved_batch_size(int(adata.n_obs)), sparse=sparse,
        density=density,
        n_selected=int(preview["n_selected"]), dense_pool=int(preview.get("pool", 0)))
    if not train_in_thread():
        # the training process gets its own copy of the matrix, through a pickled message of the same size
        estimate += 2 * _matrix_bytes(X)
    check_memory(estimate)
    return estimate


def _matrix_bytes(X: Any) -> int:
    import scipy.sparse as sp

    if sp.issparse(X):
        X = sp.csr_matrix(X)
        return int(X.data.nbytes + X.indices.nbytes + X.indptr.nbytes)
    return int(np.asarray(X).nbytes)


def latent_frame(latent: np.ndarray, obs_names: list[str], *, labels: np.ndarray | None = None) -> pd.DataFrame:
    """Latent coordinates as a table: index = cell ids, columns ``dhaka_1..dhaka_d`` (+ ``cluster``)."""
    import pandas as pd

    Z = np.asarray(latent)
    df = pd.DataFrame(Z, index=pd.Index([str(o) for o in obs_names], name="cell"),
                      columns=[f"dhaka_{i + 1}" for i in range(Z.shape[1])])
    if labels is not None:
        df["cluster"] = np.asarray(labels).astype(int)
    return df


def train_in_thread() -> bool:
    """``True`` when ``DHAKA_TRAIN_IN_THREAD=1``: trainings run in the job's thread, not a process of their own.

    The process is the default (see :mod:`dhaka.ui.train_worker` for why); the thread is for
    debugging with a debugger or a profiler attached to the server.
    """
    import os

    return os.environ.get("DHAKA_TRAIN_IN_THREAD", "0").strip() == "1"


def _lean(adata: anndata.AnnData, batch_key: str | None = None) -> anndata.AnnData:
    """The matrix and names only (and the ``batch_key`` column): what the training process needs of a dataset."""
    import anndata as ad
    import pandas as pd

    obs = adata.obs[[batch_key]].copy() if batch_key is not None else pd.DataFrame(index=adata.obs_names.copy())
    return ad.AnnData(X=adata.X, obs=obs, var=pd.DataFrame(index=adata.var_names.copy()))


def make_train_task(
    adata: anndata.AnnData,
    params: dict[str, Any],
    *,
    data_name: str,
    dataset_key: str | None = None,
    fingerprint: dict[str, Any] | None = None,
    truth: Any = None,
    batch_key: str | None = None,
    k_max: int = 10,
    checkpoint_every: int = 5,
    checkpoint_seconds: float = 30.0,
    store: Any = None,
    in_thread: bool | None = None,
) -> Callable[[JobContext], TrainOutcome]:
    """The function a training job runs (see the module docstring).

    Parameters
    ----------
    adata
        The cells to train on (not modified).
    params
        Keyword arguments of :class:`dhaka.Dhaka`.
    data_name
        Name of the dataset for the run record.
    dataset_key
        The session's dataset key, returned in the outcome.
    fingerprint
        Shape + hash of the data (default: :func:`data_fingerprint`).
    truth
        True labels per cell (ARI / NMI stored with the run), or ``None``.
    batch_key
        The obs column of ``adata`` to correct for (:func:`dhaka.pipeline.run`), kept in the run's data record.
    k_max
        Largest number of GMM clusters tried.
    checkpoint_every, checkpoint_seconds
        Epochs between offers of a checkpoint, and the least seconds between two checkpoints (each is
        a model folder written and fsync-ed; every 5 epochs of a fast training is several a second).
    store
        A :class:`dhaka.runs.RunStore` (default: the one under ``DHAKA_HOME``).
    in_thread
        Fit in the job's own thread instead of a training process (:mod:`dhaka.ui.train_worker`);
        default :func:`train_in_thread`.

    Returns
    -------
    callable
        ``task(ctx) -> TrainOutcome``; never calls streamlit.
    """
    params = dict(params)
    use_thread = train_in_thread() if in_thread is None else bool(in_thread)
    obs_names = [str(o) for o in adata.obs_names]
    truth_arr = None if truth is None else np.asarray(truth).astype(str)
    if batch_key is not None:  # a wrong column is named when the job is made, not in the training process
        from dhaka.batch import check_obs_column

        check_obs_column(adata, batch_key)

    def task(ctx: JobContext) -> TrainOutcome:
        from dhaka.estimator import Dhaka
        from dhaka.runs import RunStore

        ctx.report(phase="preparing", message="Preparing data and run folder")
        est = Dhaka(**params)
        run_store = store if store is not None else RunStore()
        fp = fingerprint if fingerprint is not None else data_fingerprint(adata)
        run = run_store.create(settings=est.get_params(), owner=ctx.owner,
                               data={"name": data_name, "fingerprint": fp,
                                     **({"batch_key": batch_key} if batch_key is not None else {})})
        ctx.report(run_id=run.id)
        history: list[dict[str, Any]] = []

        def on_epoch(row: dict[str, Any]) -> None:
            history.append(row)
            ctx.report(phase="training", message="Training", epoch=row.get("epoch"),
                       n_epochs=row.get("n_epochs"), eta=row.get("eta"), elapsed=row.get("elapsed"),
                       start=row.get("start", 0), n_starts=row.get("n_starts", 1), stage=row.get("stage", ""),
                       loss=row.get("loss"),
                       history_row=row)
            try:
                run.heartbeat(epoch=row.get("epoch"))
            except Exception:  # a heartbeat must never stop training
                pass

        def on_checkpoint(save_fn: Callable[[Any], None], epoch: int) -> None:
            run.write_checkpoint(save_fn, epoch)

        try:
            kw = dict(truth=truth_arr, batch_key=batch_key, k_max=k_max, checkpoint_every=checkpoint_every,
                      checkpoint_seconds=checkpoint_seconds)
            with trainings_first() as release_views:  # a UMAP warm-up still compiling waits (dhaka.ui.views_worker)

                def on_phase(phase: str) -> None:
                    release_views()  # only the embedding is left: a paused UMAP compile may go on
                    ctx.report(phase="embedding", message="Embedding cells and calling clusters",
                               n_fits=len({row.get("start", 0) for row in history}) or 1)

                if use_thread:
                    fit = fit_embed_cluster(adata, params, on_epoch=on_epoch, stop_event=ctx.stop_event,
                                            checkpoint=on_checkpoint, on_phase=on_phase, **kw)
                else:
                    scratch = str(run.path) if getattr(run, "path", None) is not None else None
                    fit = run_in_worker({"adata": _lean(adata, batch_key), "params": params, "scratch": scratch, **kw},
                                        stop_event=ctx.stop_event, threads=ctx.threads,
                                        on_epoch=on_epoch, on_checkpoint=on_checkpoint, on_phase=on_phase)
            est, Z, gmm, labels = fit.estimator, fit.latent, fit.clusters, fit.labels
            metrics: dict[str, Any] = {"n_epochs_run": len(history)}
            if history:
                metrics["final_loss"] = history[-1].get("loss")
            metrics.update(fit.metrics)
            stopped = bool(getattr(est, "stopped_", False) or ctx.stop_event.is_set())
            status = "stopped" if stopped else "done"
            run.finish(status=status, save_fn=est.save, latent=latent_frame(Z, obs_names, labels=labels),
                       history=history, metrics=metrics, device=getattr(est, "device_", None))
        except BaseException as exc:
            try:
                run.finish(status="failed", history=history, error=f"{type(exc).__name__}: {exc}")
            except Exception:
                run.close()
            raise
        S = fit.model_input
        return TrainOutcome(estimator=est, latent=Z, gmm=gmm, run_id=run.id, status=status,
                            dataset_key=dataset_key, obs_names=obs_names, model_input=S,
                            model_input_digest=digest(S), latent_digest=digest(Z), metrics=metrics)

    return task


class ViewsTask:
    """A job that computes the comparison views (PCA, t-SNE, UMAP) of the model's input.

    Each finished view is put in :attr:`results` at once (``{"tsne_2d": coords, ...}``), so the
    Explore page shows the views one by one while the rest still run; ``ctx.report`` says which
    one is running. Views already known (``done``) are skipped. ``run(method, X, n_components=,
    random_state=)`` computes UMAP elsewhere (the app's worker process, where numba compiled it
    ahead); PCA and t-SNE run here (the training has its own process, so they hold no training's GIL;
    t-SNE in the worker waited for UMAP's compilation: 15 s after the default demo's training).
    ``after()`` is called when all views are done (not when the job was stopped): the app starts
    the next training's spare process then, whose start-up would otherwise compete with the views.
    """

    def __init__(self, X: Any, *, digest: str, n_components: int = 2, seed: int = 0,
                 methods: tuple[str, ...] = VIEW_METHODS, done: tuple[str, ...] = (),
                 run: Callable[..., np.ndarray] | None = None, after: Callable[[], None] | None = None) -> None:
        self.X = X
        self.run = run
        self.after = after
        self.digest = digest
        self.n_components = int(n_components)
        self.seed = int(seed)
        self.methods = tuple(m for m in methods if f"{m}_{int(n_components)}d" not in done)
        self.results: dict[str, np.ndarray] = {}

    def _key(self, method: str) -> str:
        return f"{method}_{self.n_components}d"

    def __call__(self, ctx: JobContext) -> dict[str, np.ndarray]:
        import threading

        from dhaka import reduce

        fns = {"pca": reduce.pca, "tsne": reduce.tsne, "umap": reduce.umap}
        here = [m for m in self.methods if self.run is None or m != "umap"]
        away = [m for m in self.methods if m not in here]
        errors: list[BaseException] = []

        def compute(method: str, fn: Callable[..., Any]) -> None:
            t0 = time.perf_counter()
            with cpu.limit_threads(ctx.threads, torch=False):  # the job's share, not every core beside a training
                coords = fn(self.X, n_components=self.n_components, random_state=self.seed)
            self.results[self._key(method)] = np.asarray(coords, dtype=np.float32)
            _log.info("view %s_%dd of %d cells: %.2f s", method, self.n_components, len(coords),
                      time.perf_counter() - t0)

        def compute_away(method: str) -> None:
            try:
                compute(method, lambda X, **kw: self.run(method, X, **kw))
            except BaseException as exc:  # noqa: BLE001 - raised in the job's thread below
                errors.append(exc)

        def pending(*first: str) -> str:
            return " and ".join(VIEW_LABELS[m] for m in [*first, *away] if self._key(m) not in self.results)

        # UMAP goes to the worker first and runs beside PCA and t-SNE here: right after a training the
        # worker may still be finishing its compile, which the views here need not wait for
        helpers = [threading.Thread(target=compute_away, args=(m,), daemon=True, name=f"views-{m}") for m in away]
        for t in helpers:
            t.start()
        for method in here:
            if ctx.stopped:
                break
            ctx.report(done=len(self.results), total=len(self.methods), method=method,
                       message=f"Computing {pending(method)} ({self.n_components}-D)")
            compute(method, fns[method])
        for m, t in zip(away, helpers):
            if not ctx.stopped and pending():
                ctx.report(done=len(self.results), total=len(self.methods), method=m,
                           message=f"Computing {pending()} ({self.n_components}-D)")
            t.join()
        if errors:
            raise errors[0]
        ctx.report(done=len(self.methods), total=len(self.methods), message="done")
        if self.after is not None and not ctx.stopped:
            self.after()
        return dict(self.results)


# ------------------------------------------------------------- analysis tasks
def progress_reporter(ctx: JobContext) -> Callable[[dict[str, Any]], None]:
    """The ``progress=`` callback of the analyses, reporting into a job.

    ``compare_structures`` and ``dropout_study`` call ``progress({"row", "done", "total", "message"})``
    after each finished unit; the row goes into the job's history (the page's rows-so-far table).
    """
    def progress(p: dict[str, Any]) -> None:
        ctx.report(history_row=p.get("row"), done=p.get("done", 0), total=p.get("total"),
                   message=p.get("message", ""))

    return progress


def structures_task(adata: anndata.AnnData, *, structures: tuple[Any, ...], include_tsne: bool, include_pca: bool,
                    labels: Any, estimator_params: dict[str, Any]) -> Callable[[JobContext], pd.DataFrame]:
    """The job of the Compare page: :func:`dhaka.analysis.structures.compare_structures`, row by row.

    Every finished structure is reported as a history row (the page's rows-so-far table); a stop request
    ends the comparison after the structure being trained, with the finished rows.
    """
    params = dict(estimator_params)

    def task(ctx: JobContext) -> pd.DataFrame:
        from dhaka.analysis import structures as _structures

        return _structures.compare_structures(adata, structures=tuple(structures), include_tsne=include_tsne,
                                              include_pca=include_pca, labels=labels, estimator_params=params,
                                              seed=int(params.get("seed", 0)), progress=progress_reporter(ctx),
                                              stop_event=ctx.stop_event)

    return task


def dropout_task(adata: anndata.AnnData, *, levels: tuple[float, ...], methods: tuple[str, ...], labels: Any,
                 estimator_params: dict[str, Any], k_max: int, seed: int) -> Callable[[JobContext], Any]:
    """The job of the Robustness page: :func:`dhaka.analysis.robustness.dropout_study`, row by row."""
    params = dict(estimator_params)

    def task(ctx: JobContext) -> Any:
        from dhaka.analysis import robustness

        return robustness.dropout_study(adata, levels=tuple(levels), methods=tuple(methods), labels=labels,
                                        estimator_params=params, k_max=int(k_max), seed=int(seed),
                                        progress=progress_reporter(ctx), stop_event=ctx.stop_event)

    return task


def de_task(X: Any, a: np.ndarray, b: np.ndarray | None, *, genes: list[str], mode: str, method: str,
            label_a: str, label_b: str) -> Callable[[JobContext], dict[str, Any]]:
    """The job of the Differential expression page: every gene tested between two groups of cells.

    Parameters
    ----------
    X
        Cells x genes as loaded (normalised and logged here by
        :func:`dhaka.analysis.differential.prepare_expression`).
    a, b
        Boolean masks of groups A and B; ``b=None`` is every cell not in A.
    genes
        Gene names.
    mode
        ``"expression"`` or ``"cnv"`` (copy-number states are tested as given).
    method
        ``"welch"`` or ``"wilcoxon"``.
    label_a, label_b
        What the groups are, for the result's title and the cell-id download.

    Returns
    -------
    callable
        ``task(ctx) -> dict(df, a, b, label_a, label_b, method)`` with ``a`` / ``b`` as cell positions.
    """
    a = np.asarray(a, dtype=bool).copy()
    b = None if b is None else np.asarray(b, dtype=bool).copy()

    def task(ctx: JobContext) -> dict[str, Any]:
        from dhaka.analysis import differential

        ctx.report(done=0, total=1, message=f"Testing {len(genes):,} genes")
        M, scale = differential.prepare_expression(X, mode="cnv" if mode == "cnv" else "expression")
        df = differential.differential_expression(M, a, b, genes=list(genes), method=method, scale=scale)
        ctx.report(done=1, total=1, message="done")
        return {"df": df, "a": np.flatnonzero(a), "b": np.flatnonzero(~a if b is None else b),
                "label_a": label_a, "label_b": label_b, "method": method}

    return task


# ------------------------------------------------------------------ downloads
def latent_csv_bytes(latent: np.ndarray, obs_names: list[str], *, labels: np.ndarray | None = None,
                     annotations: dict[str, np.ndarray] | None = None) -> bytes:
    """CSV of latent coordinates, cluster labels and annotations (``cell, dhaka_1..dhaka_d, cluster, <name>...``).

    Annotations are people's text: written through the formula-neutralising writer, unlabelled
    cells left empty.
    """
    from dhaka.io import write_latent_csv

    buf = _io.StringIO()
    extra = {str(k): np.asarray(v, dtype=object) for k, v in (annotations or {}).items()}
    write_latent_csv(buf, np.asarray(latent), obs_names=list(obs_names), labels=labels, extra=extra or None)
    return buf.getvalue().encode("utf-8")


def h5ad_bytes(
    adata: anndata.AnnData,
    *,
    latent: np.ndarray,
    labels: np.ndarray | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
    run_id: str | None = None,
    params: dict[str, Any] | None = None,
    cluster_result: Any = None,
    annotations: Any = None,
) -> bytes:
    """An .h5ad of the dataset with the run's results (built by :func:`dhaka.tl.to_anndata`).

    ``obsm["X_dhaka"]`` and every computed embedding (``X_pca``, ``X_tsne``, ``X_umap``;
    ``X_umap_3d`` when both 2-D and 3-D exist), ``obs["dhaka_cluster"]`` and the hand-made
    ``annotations`` as categorical columns, ``uns["dhaka"]`` with settings, versions and seed.
    """
    from dhaka.io import to_h5ad_bytes
    from dhaka.tl import to_anndata

    out = to_anndata(adata, latent=latent, clusters=labels, embeddings=embeddings, annotations=annotations,
                     params=params, cluster_result=cluster_result, extra={"run_id": run_id or ""})
    return to_h5ad_bytes(out)


def model_zip_bytes(estimator: Dhaka) -> bytes:
    """The fitted model directory (``Dhaka.save``) as a .zip."""
    from dhaka.io import zip_dir

    with tempfile.TemporaryDirectory() as d:
        path = Path(d) / "dhaka-model"
        estimator.save(path)
        return zip_dir(path)
