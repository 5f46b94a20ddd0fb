"""The one fit -> embed -> cluster -> record chain.

:func:`run` is what a training is, wherever it starts: the app's training worker, ``tl.dhaka``,
``python -m dhaka embed`` and the distributed runner all call it, and ``tl.project`` / ``dhaka
project`` call its second half, :func:`embed_cluster`. A change to how Dhaka fits, embeds,
clusters or records a result is made here once.

::

    from dhaka.pipeline import run
    result = run(adata, estimator={"epochs": 50}, k_max=10)
    result.latent, result.labels, result.record      # record: what uns["dhaka"] holds
"""
from __future__ import annotations

import logging
import time
import warnings
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable

import numpy as np

from dhaka.batch import labels_from_obs
from dhaka.clusterers import Clusterer, ClusterResult, resolve
from dhaka.record import uns_record

if TYPE_CHECKING:  # pragma: no cover
    from dhaka.estimator import Dhaka

__all__ = ["PipelineResult", "run", "embed_cluster", "cluster_metrics"]

_log = logging.getLogger(__name__)


@dataclass
class PipelineResult:
    """What :func:`run` and :func:`embed_cluster` return.

    Attributes
    ----------
    estimator
        The fitted :class:`dhaka.Dhaka`.
    latent
        Cells x latent_dim posterior means (``None`` on a distributed rank other than the main one).
    clusters
        The :class:`dhaka.clusterers.ClusterResult`, or ``None`` when not asked for or when the
        latent could not be clustered (``metrics["cluster_error"]`` then says why).
    metrics
        ``k``, ``silhouette`` and, with ``truth``, ``ari`` / ``nmi``.
    record
        The ``uns["dhaka"]`` record (:func:`dhaka.record.uns_record`).
    missing
        Model features absent from the embedded cells (filled with the training mean).
    model_input
        The selected, preprocessed matrix the encoder read (what baseline views of the same input
        use); ``None`` for out-of-core input.
    """

    estimator: Any
    latent: np.ndarray | None
    clusters: ClusterResult | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    record: dict[str, Any] = field(default_factory=dict)
    missing: list[str] = field(default_factory=list)
    model_input: Any = None

    @property
    def labels(self) -> np.ndarray | None:
        return None if self.clusters is None else np.asarray(self.clusters.labels)


def cluster_metrics(latent: np.ndarray, labels: np.ndarray | None, truth: Any = None) -> dict[str, float]:
    """Silhouette of the clusters, and ARI / NMI against ``truth`` when given."""
    from dhaka.cluster import ari, nmi, silhouette

    out: dict[str, float] = {}
    if labels is None:
        return out
    out["silhouette"] = float(silhouette(latent, labels))
    if truth is not None:
        t = np.asarray(truth).astype(str)
        out["ari"] = float(ari(t, labels))
        out["nmi"] = float(nmi(t, labels))
    return out


def _estimator(estimator: Dhaka | Mapping[str, Any] | None) -> Dhaka:
    from dhaka.estimator import Dhaka

    if estimator is None or isinstance(estimator, Mapping):
        return Dhaka(**dict(estimator or {}))
    return estimator


def run(
    data: Any,
    *,
    estimator: Dhaka | Mapping[str, Any] | None = None,
    clusterer: Clusterer | str | None = None,
    k_max: int = 10,
    truth: Any = None,
    batch_key: str | None = None,
    backed: bool = False,
    main_process: bool = True,
    callback: Callable[[Any], None] | None = None,
    stop_event: Any = None,
    checkpoint: Callable[[Callable[[Any], None], int], None] | None = None,
    checkpoint_every: int = 5,
    seams: Any = None,
    on_phase: Callable[[str], None] | None = None,
    extra: Mapping[str, Any] | None = None,
) -> PipelineResult:
    """Fit Dhaka on ``data``, embed its cells, call clusters and build the record.

    Parameters
    ----------
    data
        Cells x features (AnnData, DataFrame, ndarray, sparse), or with ``backed=True`` the path
        of an ``.h5ad`` trained out of core (:func:`dhaka.backed.fit_backed`).
    estimator
        An unfitted :class:`dhaka.Dhaka`, or its settings as a dict (defaults when ``None``).
    clusterer
        A :class:`dhaka.clusterers.Clusterer`, a registered name, or ``None`` for the mode's
        default (GMM with k by BIC). The same caller scores the estimator's random starts.
    k_max
        Largest number of clusters the default caller tries.
    truth
        Known labels per cell: ARI / NMI are added to ``metrics``.
    batch_key
        Correct for the batch in ``data.obs[batch_key]`` (:mod:`dhaka.batch`): the model is conditioned on
        it in training and embedding; the record keeps ``batch_key`` and ``batch_categories``.
    backed, seams, main_process
        Out-of-core input; training seams (e.g. data parallel); whether this process embeds and
        clusters (only the main rank of a distributed fit does).
    callback, stop_event, checkpoint, checkpoint_every
        As in :meth:`dhaka.Dhaka.fit`.
    on_phase
        Called with ``"embedding"`` when the fit is over.
    extra
        More entries for the record (e.g. a run id).
    """
    est = _estimator(estimator)
    caller = resolve(clusterer, mode=est.mode, k_max=k_max)
    _refuse_backed_batch(backed, batch_key is not None)
    batch = labels_from_obs(data, batch_key)  # a missing column is named before any training
    if backed:
        from dhaka.backed import fit_backed

        fit_backed(data, estimator=est, callback=callback, stop_event=stop_event, seams=seams, clusterer=caller)
    else:
        est.fit(data, batch=batch, callback=callback, stop_event=stop_event, checkpoint=checkpoint,
                checkpoint_every=checkpoint_every, seams=seams, clusterer=caller)
    if on_phase is not None:
        on_phase("embedding")
    if not main_process:
        return PipelineResult(estimator=est, latent=None)
    extra = {"n_genes_used": len(est.genes_), "train_seconds": float(getattr(est, "train_seconds_", 0.0) or 0.0),
             "n_threads": int(est.n_threads_),  # the CPU share the fit ran with: same seed + same share = same model
             **dict(extra or {})}
    return embed_cluster(est, data, clusterer=caller, truth=truth, batch_key=batch_key, backed=backed, extra=extra)


def _refuse_backed_batch(backed: bool, batch: bool) -> None:
    if backed and batch:
        raise ValueError("batch correction (batch_key) is not supported for out-of-core (backed) input; "
                         "load the data into memory to correct for batch")


def embed_cluster(
    estimator: Dhaka,
    data: Any,
    *,
    clusterer: Clusterer | str | None = None,
    cluster: bool = True,
    k_max: int = 10,
    truth: Any = None,
    batch_key: str | None = None,
    backed: bool = False,
    extra: Mapping[str, Any] | None = None,
) -> PipelineResult:
    """Embed ``data`` with a fitted estimator, call clusters (unless ``cluster=False``) and build the record.

    Features are matched by name and preprocessed once (:meth:`dhaka.Dhaka.embed`); the names of model features
    missing from ``data`` are in ``result.missing`` and counted in the record. A latent that cannot
    be clustered (degenerate, too few cells) is still a result: ``clusters`` is ``None``, a warning
    says why and ``metrics["cluster_error"]`` keeps it. A batch-trained model reads each cell's batch
    from ``data.obs[batch_key]`` (one of the model's ``batch_categories_``).
    """
    est = estimator
    categories = getattr(est, "batch_categories_", None)
    _refuse_backed_batch(backed, batch_key is not None or categories is not None)
    batch = labels_from_obs(data, batch_key)
    if backed:
        from dhaka.backed import transform_backed

        Z, missing, model_input = np.asarray(transform_backed(est, data)), [], None
    else:
        emb = est.embed(data, batch=batch)
        Z, missing, model_input = np.asarray(emb.latent), emb.missing, emb.model_input
    seed = int(est.get_params().get("seed", 0))
    clusters, metrics = None, {}
    if cluster:
        caller = resolve(clusterer, mode=est.get_params().get("mode", "expression"), k_max=k_max)
        t0 = time.perf_counter()
        try:
            clusters = caller.fit(Z, seed=seed)
        except Exception as exc:  # a degenerate latent space still is a result
            warnings.warn(f"the latent space could not be clustered ({type(exc).__name__}: {exc})")
            metrics["cluster_error"] = f"{type(exc).__name__}: {exc}"
        if clusters is not None:
            metrics["cluster_seconds"] = time.perf_counter() - t0  # the caller alone, not the scores below
            metrics["k"] = int(clusters.k)
            _log.info("%d clusters called by %s on %d cells", clusters.k, getattr(caller, "name", "clusterer"),
                      Z.shape[0])
            metrics.update(cluster_metrics(Z, np.asarray(clusters.labels), truth))
    used = {"batch_key": batch_key, "batch_categories": list(categories)} if categories is not None else {}
    record = uns_record(params=est.get_params(), clusters=clusters, seed=seed,
                        extra={**({"n_genes_missing": len(missing)} if missing else {}), **used, **dict(extra or {})})
    return PipelineResult(estimator=est, latent=Z, clusters=clusters, metrics=metrics, record=record,
                          missing=list(missing), model_input=model_input)
