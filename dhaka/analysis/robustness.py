"""Robustness to dropout (paper Fig. 3 and Fig. 6).

Inject extra dropout (a seeded fraction of each cell's non-zero values set to
zero), re-embed with Dhaka and the baselines (PCA, t-SNE, UMAP), call clusters
with GMM-BIC and score them: ARI against known labels when they exist,
otherwise the silhouette of the called clusters.
"""
from __future__ import annotations

import threading
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Callable, Literal, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["dropout_study", "dropout_curve", "DropoutStudy", "figure_curve", "figure_dropout_histograms",
           "embed_baseline", "baseline_input", "resolve_labels", "score_embedding"]

Method = Literal["dhaka", "pca", "tsne", "umap"]
METHODS: tuple[str, ...] = ("dhaka", "pca", "tsne", "umap")
TABLE_COLUMNS = ["level", "method", "ari", "n_clusters", "silhouette", "seconds"]
ProgressFn = Callable[[dict[str, Any]], None]


# ----------------------------------------------------------------------------- helpers
def _matrix(data) -> tuple[Any, Any]:
    """(matrix, obs DataFrame or None) of AnnData / DataFrame / array input."""
    if hasattr(data, "X") and hasattr(data, "obs"):
        return data.X, data.obs
    if isinstance(data, pd.DataFrame):
        return data.to_numpy(dtype=np.float32), None
    return data, None


def _with_matrix(data, X):
    """``data`` with its matrix replaced by ``X`` (names kept, nothing else copied)."""
    if hasattr(data, "obs_names") and hasattr(data, "var_names"):
        if X is data.X:
            return data
        import anndata

        return anndata.AnnData(X=X, obs=pd.DataFrame(index=data.obs_names.copy()),
                               var=pd.DataFrame(index=data.var_names.copy()))
    return X


def resolve_labels(data, labels) -> np.ndarray | None:
    """Known labels as an array: ``None``, an array of length n_cells, or an ``obs`` column name.

    Parameters
    ----------
    data
        AnnData (for an ``obs`` column) or a matrix.
    labels
        ``None``, a column name of ``data.obs``, or one label per cell.

    Returns
    -------
    numpy.ndarray or None
    """
    if labels is None:
        return None
    X, obs = _matrix(data)
    if isinstance(labels, str):
        if obs is None or labels not in obs.columns:
            cols = [] if obs is None else list(obs.columns)
            raise ValueError(f"no obs column {labels!r} (columns: {', '.join(map(str, cols)) or 'none'})")
        return obs[labels].astype(str).to_numpy()
    arr = np.asarray(labels)
    if arr.shape[0] != X.shape[0]:
        raise ValueError(f"{arr.shape[0]} labels for {X.shape[0]} cells")
    return arr.astype(str)


def baseline_input(
    X,
    *,
    mode: Literal["expression", "cnv"] = "expression",
    n_genes: int | Literal["auto"] | None = 2000,
    gene_selection: str = "cv",
    normalize: bool | Literal["auto"] = "auto",
    log: bool | Literal["auto"] = "auto",
) -> np.ndarray:
    """The matrix the baselines (PCA, t-SNE, UMAP) see: Dhaka's preprocessing, dense, gene-centred.

    A :class:`dhaka.preprocess.Preprocessor` with these settings and Dhaka's defaults for the rest
    (Pearson residuals of raw counts, ``value_transform="auto"``, else library-size normalisation and the
    log step as the detected kind asks, unless forced; copy-number states trimmed per bin,
    ``winsorize="auto"``), its top ``n_genes`` genes, each centred over cells.

    Parameters
    ----------
    X
        Cells x genes (dense or sparse).
    mode
        ``"expression"`` or ``"cnv"``.
    n_genes
        Genes kept (``None``: all; ``"auto"``: Dhaka's rule, :func:`dhaka.preprocess.n_selected`).
    gene_selection
        Score used to keep genes.
    normalize, log
        As in :class:`dhaka.Dhaka`.

    Returns
    -------
    numpy.ndarray
        ``(n_cells, n_selected)`` float32, each column centred.
    """
    from dhaka.preprocess import Preprocessor

    pre = Preprocessor(mode=mode, n_genes=n_genes, gene_selection=gene_selection, normalize=normalize, log=log,
                       relative=True, scale="none")
    return pre.standardize(pre.fit_transform(X))


def embed_baseline(S: np.ndarray, method: str, *, n_components: int = 3, seed: int = 0) -> np.ndarray:
    """Embed a preprocessed matrix with PCA, t-SNE or UMAP (``dhaka.reduce``).

    t-SNE and UMAP run on the first 50 principal components when there are more features
    (``dhaka.reduce`` does that).

    Parameters
    ----------
    S
        Cells x features (dense).
    method
        ``"pca"``, ``"tsne"`` or ``"umap"``.
    n_components
        Output dimension.
    seed
        Random state.

    Returns
    -------
    numpy.ndarray
    """
    from dhaka import reduce

    if method == "pca":
        return np.asarray(reduce.pca(S, n_components=n_components, random_state=seed))
    if method not in ("tsne", "umap"):
        raise ValueError(f"unknown method {method!r}; choose from {', '.join(METHODS)}")
    fn = getattr(reduce, method)  # runs on the top 50 principal components when there are more features
    return np.asarray(fn(S, n_components=n_components, random_state=seed))


def score_embedding(Z: np.ndarray, *, labels: np.ndarray | None, k_max: int = 10, seed: int = 0,
                    cluster_kwargs: dict | None = None) -> dict[str, Any]:
    """GMM-BIC clusters of ``Z`` and their scores.

    Parameters
    ----------
    Z
        Embedding.
    labels
        Known labels, or ``None``.
    k_max
        Largest number of GMM components tried.
    seed
        Random state.
    cluster_kwargs
        Extra keyword arguments for :func:`dhaka.cluster.gmm_bic`.

    Returns
    -------
    dict
        ``ari`` (NaN without labels), ``n_clusters``, ``silhouette``, ``clusters``.
    """
    from dhaka.cluster import ari, gmm_bic, silhouette

    res = gmm_bic(np.asarray(Z, dtype=np.float64), k_max=k_max, seed=seed, **(cluster_kwargs or {}))
    called = np.asarray(res.labels)
    return {
        "ari": float(ari(labels, called)) if labels is not None else float("nan"),
        "n_clusters": int(len(np.unique(called))),
        "silhouette": float(silhouette(Z, called)),
        "clusters": called,
    }


# ------------------------------------------------------------------------------ study
@dataclass
class DropoutStudy:
    """Everything a dropout study produced.

    Attributes
    ----------
    table
        One row per (level, method): ``level, method, ari, n_clusters, silhouette, seconds``.
    dropout_fractions
        Per level, the per-gene fraction of zeros after injection (for histograms).
    embeddings
        ``{(level, method): Z}`` (empty when ``keep_embeddings=False``).
    clusters
        ``{(level, method): GMM labels}``.
    labels
        The known labels used for ARI, or ``None``.
    stopped
        ``True`` when the study was cancelled before finishing.
    params
        The settings that made it.
    """

    table: pd.DataFrame
    dropout_fractions: dict[float, np.ndarray] = field(default_factory=dict)
    embeddings: dict[tuple[float, str], np.ndarray] = field(default_factory=dict)
    clusters: dict[tuple[float, str], np.ndarray] = field(default_factory=dict)
    labels: np.ndarray | None = None
    stopped: bool = False
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def metric(self) -> str:
        """``"ari"`` when labels were given, else ``"silhouette"``."""
        return "ari" if self.labels is not None else "silhouette"


def dropout_study(
    adata,
    *,
    levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
    methods: Sequence[str] = METHODS,
    labels=None,
    estimator_params: dict[str, Any] | None = None,
    n_components: int = 3,
    k_max: int = 10,
    cluster_kwargs: dict | None = None,
    seed: int = 0,
    keep_embeddings: bool = True,
    progress: ProgressFn | None = None,
    stop_event: threading.Event | None = None,
) -> DropoutStudy:
    """Embed and cluster the data at several levels of injected dropout.

    Parameters
    ----------
    adata
        AnnData (or cells x genes matrix) of raw input as the estimator takes it.
    levels
        Extra dropout fractions (each level injected into the original data with its own seed).
    methods
        Any of ``"dhaka"``, ``"pca"``, ``"tsne"``, ``"umap"``.
    labels
        Known labels (array or ``obs`` column name) for ARI; ``None``: silhouette only.
    estimator_params
        Keyword arguments for :class:`dhaka.Dhaka` (``seed`` defaults to ``seed``); ``mode``,
        ``n_genes`` and ``gene_selection`` also shape the baselines' input.
    n_components
        Dimension of the PCA / t-SNE / UMAP embeddings.
    k_max
        Largest number of GMM components.
    cluster_kwargs
        Extra arguments for :func:`dhaka.cluster.gmm_bic`.
    seed
        Seed of the injection (level ``i`` uses ``seed + i``), the estimator and the baselines.
    keep_embeddings
        Keep every embedding (for plots).
    progress
        Called after each unit with ``{"done", "total", "message", "row"}`` (``row`` is the
        finished table row or ``None``); from the calling thread, so it must not call streamlit.
    stop_event
        When set, the study stops after the current unit (Dhaka training stops within an epoch)
        and returns what it has, with ``stopped=True``.

    Returns
    -------
    DropoutStudy
    """
    from dhaka.preprocess import dropout_fraction, inject_dropout

    methods = [str(m).lower() for m in methods]
    bad = [m for m in methods if m not in METHODS]
    if bad:
        raise ValueError(f"unknown method(s) {bad}; choose from {', '.join(METHODS)}")
    levels = [float(v) for v in levels]
    if any(not 0.0 <= v < 1.0 for v in levels):
        raise ValueError(f"dropout levels must be in [0, 1), got {levels}")
    params = dict(estimator_params or {})
    params.setdefault("seed", seed)
    mode = params.get("mode", "expression")
    X, _ = _matrix(adata)
    y = resolve_labels(adata, labels)

    total = len(levels) * (len(methods) + 1)
    done = 0
    rows: list[dict[str, Any]] = []
    study = DropoutStudy(table=pd.DataFrame(columns=TABLE_COLUMNS), labels=y,
                         params=dict(levels=levels, methods=methods, estimator_params=params,
                                     n_components=n_components, k_max=k_max, seed=seed))

    def tick(message: str, row: dict | None = None) -> None:
        if progress is not None:
            progress({"done": done, "total": total, "message": message, "row": row})

    def stopped() -> bool:
        return stop_event is not None and stop_event.is_set()

    for i, level in enumerate(levels):
        if stopped():
            study.stopped = True
            break
        Xd = inject_dropout(X, fraction=level, seed=seed + i) if level > 0 else X
        study.dropout_fractions[level] = np.asarray(dropout_fraction(Xd))
        S = baseline_input(Xd, mode=mode, n_genes=params.get("n_genes", "auto"),
                           gene_selection=params.get("gene_selection", "cv")) \
            if any(m != "dhaka" for m in methods) else None
        done += 1
        tick(f"dropout {level:.0%}: injected")
        for method in methods:
            if stopped():
                study.stopped = True
                break
            tick(f"dropout {level:.0%}: {method}")
            t0 = time.perf_counter()
            if method == "dhaka":
                from dhaka.estimator import Dhaka

                est = Dhaka(**params)
                inp = _with_matrix(adata, Xd)
                est.fit(inp, stop_event=stop_event)
                if stopped():
                    study.stopped = True
                    break
                Z = est.transform(inp)
            else:
                Z = embed_baseline(S, method, n_components=n_components, seed=seed)
            sc = score_embedding(Z, labels=y, k_max=k_max, seed=seed, cluster_kwargs=cluster_kwargs)
            seconds = time.perf_counter() - t0
            row = {"level": level, "method": method, "ari": sc["ari"], "n_clusters": sc["n_clusters"],
                   "silhouette": sc["silhouette"], "seconds": seconds}
            rows.append(row)
            study.clusters[(level, method)] = sc["clusters"]
            if keep_embeddings:
                study.embeddings[(level, method)] = np.asarray(Z)
            done += 1
            tick(f"dropout {level:.0%}: {method} done", row)
        if study.stopped:
            break
    study.table = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    return study


def dropout_curve(
    adata,
    *,
    levels: Sequence[float] = (0.0, 0.1, 0.2, 0.3, 0.5),
    methods: Sequence[str] = METHODS,
    labels=None,
    estimator_params: dict[str, Any] | None = None,
    seed: int = 0,
    progress: ProgressFn | None = None,
    stop_event: threading.Event | None = None,
    **kwargs: Any,
) -> pd.DataFrame:
    """The table of :func:`dropout_study`: ``level, method, ari, n_clusters, silhouette, seconds``.

    Parameters are those of :func:`dropout_study`; use that function for the histograms and
    embeddings.

    Returns
    -------
    pandas.DataFrame
    """
    return dropout_study(adata, levels=levels, methods=methods, labels=labels,
                         estimator_params=estimator_params, seed=seed, progress=progress,
                         stop_event=stop_event, **kwargs).table


# ------------------------------------------------------------------------------ figures
def figure_curve(table: pd.DataFrame, *, metric: Literal["ari", "silhouette", "n_clusters"] = "ari",
                 title: str | None = None) -> "go.Figure":
    """Metric against dropout level, one line per method.

    Parameters
    ----------
    table
        :attr:`DropoutStudy.table`.
    metric
        Column to plot.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for method, sub in table.groupby("method", sort=False):
        sub = sub.sort_values("level")
        fig.add_trace(go.Scatter(x=sub["level"] * 100, y=sub[metric], mode="lines+markers", name=str(method)))
    label = {"ari": "ARI", "silhouette": "silhouette", "n_clusters": "GMM clusters"}[metric]
    fig.update_layout(title=title or f"{label} against injected dropout", xaxis_title="extra dropout (%)",
                      yaxis_title=label, template="plotly_white")
    return fig


def figure_dropout_histograms(study: DropoutStudy, *, levels: Sequence[float] | None = None,
                              nbins: int = 40) -> "go.Figure":
    """Overlaid histograms of the per-gene dropout fraction at each level.

    Parameters
    ----------
    study
        A :class:`DropoutStudy`.
    levels
        Levels to show (default all).
    nbins
        Histogram bins.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for level in (levels if levels is not None else list(study.dropout_fractions)):
        frac = study.dropout_fractions.get(float(level))
        if frac is None:
            continue
        fig.add_trace(go.Histogram(x=frac, name=f"{float(level):.0%} extra", opacity=0.6,
                                   xbins=dict(start=0, end=1, size=1.0 / nbins)))
    fig.update_layout(barmode="overlay", title="Per-gene dropout fraction",
                      xaxis_title="fraction of cells with zero", yaxis_title="genes", template="plotly_white")
    return fig
