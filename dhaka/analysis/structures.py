"""Network structures compared on the same data (paper Table 1), and the warm-start report."""
from __future__ import annotations

import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Sequence

import numpy as np
import pandas as pd

from dhaka.analysis.robustness import (
    _matrix,
    _with_matrix,
    baseline_input,
    embed_baseline,
    resolve_labels,
    score_embedding,
)

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["compare_structures", "warm_start_table", "figure_structures"]

TABLE_COLUMNS = ["structure", "ari", "silhouette", "n_clusters", "seconds"]


def _structure_name(s) -> str:
    return s if isinstance(s, str) else "-".join(str(int(w)) for w in s)


def compare_structures(
    adata,
    *,
    structures: Sequence[str | Sequence[int]] = ("deep", "shallow"),
    include_tsne: bool = True,
    include_pca: bool = False,
    labels=None,
    estimator_params: dict[str, Any] | None = None,
    k_max: int = 10,
    cluster_kwargs: dict | None = None,
    seed: int = 0,
    progress: Callable[[dict[str, Any]], None] | None = None,
    stop_event: threading.Event | None = None,
    embeddings: dict[str, np.ndarray] | None = None,
) -> pd.DataFrame:
    """Train Dhaka with each structure on the same data and score the GMM clusters of each latent space.

    Parameters
    ----------
    adata
        AnnData (or matrix) as the estimator takes it.
    structures
        Presets (``"deep"``, ``"shallow"``, ...) or explicit hidden-layer widths.
    include_tsne, include_pca
        Add a t-SNE (and PCA) row on the same preprocessed genes.
    labels
        Known labels (array or ``obs`` column name) for ARI; ``None``: ARI is NaN.
    estimator_params
        Other :class:`dhaka.Dhaka` settings shared by every structure (``seed`` defaults to ``seed``).
    k_max
        Largest number of GMM components.
    cluster_kwargs
        Extra arguments for :func:`dhaka.cluster.gmm_bic`.
    seed
        Random state.
    progress
        Called after each row with ``{"done", "total", "message", "row"}``.
    stop_event
        When set, stop after the current row and return the rows done so far.
    embeddings
        If a dict is given, each row's embedding is stored in it under the row's ``structure`` name.

    Returns
    -------
    pandas.DataFrame
        ``structure, ari, silhouette, n_clusters, seconds`` (paper Table 1); ``attrs["stopped"]``.
    """
    from dhaka.estimator import Dhaka

    params = dict(estimator_params or {})
    params.setdefault("seed", seed)
    params.pop("structure", None)
    y = resolve_labels(adata, labels)
    X, _ = _matrix(adata)
    units: list[tuple[str, Any]] = [("dhaka", s) for s in structures]
    if include_pca:
        units.append(("pca", None))
    if include_tsne:
        units.append(("tsne", None))
    rows: list[dict[str, Any]] = []
    S = None
    stopped = False
    for i, (kind, struct) in enumerate(units):
        if stop_event is not None and stop_event.is_set():
            stopped = True
            break
        t0 = time.perf_counter()
        if kind == "dhaka":
            name = f"dhaka {_structure_name(struct)}"
            est = Dhaka(structure=struct, **params)
            inp = _with_matrix(adata, X)
            est.fit(inp, stop_event=stop_event)
            if stop_event is not None and stop_event.is_set():
                stopped = True
                break
            Z = est.transform(inp)
        else:
            name = kind
            if S is None:
                S = baseline_input(X, mode=params.get("mode", "expression"), n_genes=params.get("n_genes", "auto"),
                                   gene_selection=params.get("gene_selection", "cv"))
            Z = embed_baseline(S, kind, n_components=2 if kind == "tsne" else params.get("latent_dim", 3),
                               seed=seed)
        sc = score_embedding(Z, labels=y, k_max=k_max, seed=seed, cluster_kwargs=cluster_kwargs)
        row = {"structure": name, "ari": sc["ari"], "silhouette": sc["silhouette"],
               "n_clusters": sc["n_clusters"], "seconds": time.perf_counter() - t0}
        rows.append(row)
        if embeddings is not None:
            embeddings[name] = np.asarray(Z)
        if progress is not None:
            progress({"done": i + 1, "total": len(units), "message": f"{name} done", "row": row})
    df = pd.DataFrame(rows, columns=TABLE_COLUMNS)
    df.attrs["stopped"] = stopped
    return df


def warm_start_table(est) -> pd.DataFrame:
    """One row per random start of a fitted :class:`dhaka.Dhaka`: its silhouette and whether it was kept.

    Parameters
    ----------
    est
        A fitted estimator (``start_scores_`` holds one record per start).

    Returns
    -------
    pandas.DataFrame
        Columns ``start, silhouette, kept`` first, then whatever else the estimator recorded
        (``seed``, ``k``, ``final_loss``, ``epochs``, ``best_epoch``).

    Raises
    ------
    ValueError
        When the estimator has not been fitted.
    """
    scores = getattr(est, "start_scores_", None)
    if scores is None:
        raise ValueError("the estimator has no start_scores_; fit it first")
    records = []
    for i, s in enumerate(scores):
        if isinstance(s, dict):
            rec = dict(s)
            rec.setdefault("start", i)
        else:  # a bare silhouette per start
            rec = {"start": i, "silhouette": float(s)}
        records.append(rec)
    df = pd.DataFrame.from_records(records)
    if df.empty:
        return pd.DataFrame(columns=["start", "silhouette", "kept"])
    if "silhouette" not in df:
        df["silhouette"] = np.nan
    if "kept" not in df:
        kept = getattr(est, "best_start_", None)
        if kept is None:
            sil = df["silhouette"].to_numpy(dtype=float)
            kept = int(np.nanargmax(sil)) if np.isfinite(sil).any() else 0
        df["kept"] = df["start"] == kept
    df["kept"] = df["kept"].astype(bool)
    first = ["start", "silhouette", "kept"]
    return df[first + [c for c in df.columns if c not in first]].sort_values("start").reset_index(drop=True)


def figure_structures(table: pd.DataFrame, *, title: str | None = None) -> "go.Figure":
    """Grouped bars of ARI and silhouette per structure, runtime in the hover.

    Parameters
    ----------
    table
        Output of :func:`compare_structures`.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    fig = go.Figure()
    for metric, label in (("ari", "ARI"), ("silhouette", "silhouette")):
        if table[metric].notna().any():
            fig.add_trace(go.Bar(x=table["structure"], y=table[metric], name=label,
                                 customdata=table["seconds"],
                                 hovertemplate="%{x}<br>" + label + " %{y:.3f}<br>%{customdata:.1f} s<extra></extra>"))
    fig.update_layout(barmode="group", title=title or "Structures compared", yaxis_title="score",
                      template="plotly_white")
    return fig
