"""Project a second sample into a trained model's latent space (paper Fig. 7b, Fig. 8a).

The second sample is aligned to the model's selected genes (or bins) by name;
names the second sample lacks are reported (the estimator fills them with the
training mean, so they contribute nothing). Each projected cell is assigned to a
cluster of the reference sample, and the fraction of the second sample in each
reference cluster is tabulated.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["ProjectionResult", "project", "assign_clusters", "transfer_labels", "figure_projection"]


@dataclass
class ProjectionResult:
    """A second sample in the reference latent space.

    Attributes
    ----------
    latent
        ``(n_cells_second, latent_dim)`` posterior means.
    labels
        Reference cluster assigned to each cell of the second sample.
    fractions
        One row per reference cluster: ``cluster, n_cells, fraction`` (fractions sum to 1),
        plus ``reference_fraction`` (that cluster's share of the reference sample).
    missing
        Model genes / bins absent from the second sample (filled with the training mean).
    n_features
        Number of genes / bins the model uses.
    assign
        How cells were assigned (``"centroid"``, ``"knn"`` or ``"gmm"``).
    obs_names
        Cell names of the second sample.
    """

    latent: np.ndarray
    labels: np.ndarray
    fractions: pd.DataFrame
    missing: list[str] = field(default_factory=list)
    n_features: int = 0
    assign: str = "centroid"
    obs_names: list[str] | None = None

    @property
    def n_matched(self) -> int:
        """Model features found in the second sample."""
        return self.n_features - len(self.missing)

    def fraction_in(self, cluster) -> float:
        """Fraction of the second sample assigned to ``cluster``."""
        row = self.fractions.loc[self.fractions["cluster"].astype(str) == str(cluster), "fraction"]
        return float(row.iloc[0]) if len(row) else 0.0


def transfer_labels(Z, reference_latent, reference_labels, *, n_neighbors: int = 15) -> tuple[np.ndarray, np.ndarray]:
    """Labels of the reference carried to new cells by their nearest reference cells in the latent space.

    Returns ``(labels, confidence)``: each cell's majority label among its ``n_neighbors`` nearest
    reference cells, and the share of those neighbours that carry it (1.0: all agree).
    """
    from sklearn.neighbors import KNeighborsClassifier

    R = np.asarray(reference_latent, dtype=np.float64)
    lab = np.asarray(reference_labels)
    k = int(min(n_neighbors, R.shape[0]))
    knn = KNeighborsClassifier(n_neighbors=k).fit(R, lab)
    proba = knn.predict_proba(np.asarray(Z, dtype=np.float64))
    best = proba.argmax(axis=1)
    return knn.classes_[best], proba[np.arange(len(best)), best]


def assign_clusters(
    Z: np.ndarray,
    reference_latent: np.ndarray,
    reference_labels: np.ndarray,
    *,
    method: Literal["centroid", "knn", "gmm"] = "centroid",
    gmm=None,
    n_neighbors: int = 15,
) -> np.ndarray:
    """Assign cells to reference clusters.

    Parameters
    ----------
    Z
        Cells to assign (latent coordinates).
    reference_latent, reference_labels
        The reference sample's latent coordinates and cluster labels.
    method
        ``"centroid"``: nearest cluster centroid; ``"knn"``: majority of the ``n_neighbors``
        nearest reference cells; ``"gmm"``: ``gmm.predict`` (a fitted mixture, e.g.
        ``GMMResult.model``), each component mapped to the reference label most of its reference
        cells carry (so merged components map to their merged cluster).
    gmm
        Fitted model with ``predict``; required for ``"gmm"``.
    n_neighbors
        Neighbours for ``"knn"``.

    Returns
    -------
    numpy.ndarray
        A reference label per cell.
    """
    Z = np.asarray(Z, dtype=np.float64)
    R = np.asarray(reference_latent, dtype=np.float64)
    lab = np.asarray(reference_labels)
    if R.shape[0] != lab.shape[0]:
        raise ValueError(f"{lab.shape[0]} reference labels for {R.shape[0]} reference cells")
    if Z.shape[1] != R.shape[1]:
        raise ValueError(f"latent dimensions differ: {Z.shape[1]} (second) vs {R.shape[1]} (reference)")
    cats = pd.unique(lab)
    if method == "centroid":
        cent = np.stack([R[lab == c].mean(0) for c in cats])
        d = ((Z[:, None, :] - cent[None, :, :]) ** 2).sum(-1)
        return cats[np.argmin(d, axis=1)]
    if method == "knn":
        return transfer_labels(Z, R, lab, n_neighbors=n_neighbors)[0]
    if method == "gmm":
        if gmm is None or not hasattr(gmm, "predict"):
            raise ValueError("method='gmm' needs the fitted mixture (gmm=GMMResult.model)")
        comp_ref = np.asarray(gmm.predict(R))
        comp_new = np.asarray(gmm.predict(Z))
        mapping = {}
        for c in np.unique(np.r_[comp_ref, comp_new]):
            members = lab[comp_ref == c]
            if members.size:
                vals, counts = np.unique(members, return_counts=True)
                mapping[c] = vals[np.argmax(counts)]
        # components no reference cell falls in: nearest centroid of their cells
        out = np.empty(Z.shape[0], dtype=lab.dtype)
        known = np.array([c in mapping for c in comp_new], dtype=bool)
        out[known] = [mapping[c] for c in comp_new[known]]
        if (~known).any():
            out[~known] = assign_clusters(Z[~known], R, lab, method="centroid")
        return out
    raise ValueError(f"method must be 'centroid', 'knn' or 'gmm', got {method!r}")


def project(
    estimator,
    adata_second,
    *,
    reference_latent: np.ndarray,
    reference_labels: Sequence,
    assign: Literal["centroid", "knn", "gmm"] = "centroid",
    gmm=None,
    n_neighbors: int = 15,
) -> ProjectionResult:
    """Embed a second sample with a fitted model and place its cells in the reference clusters.

    Parameters
    ----------
    estimator
        A fitted :class:`dhaka.Dhaka`.
    adata_second
        The second sample (AnnData or DataFrame with gene/bin names; a bare matrix must have the
        training columns in the training order).
    reference_latent
        Latent coordinates of the reference (first) sample.
    reference_labels
        Cluster label of every reference cell.
    assign, gmm, n_neighbors
        How cells are assigned, see :func:`assign_clusters`.

    Returns
    -------
    ProjectionResult
    """
    genes = list(getattr(estimator, "genes_", []) or [])
    names = None
    if hasattr(adata_second, "var_names"):
        names = [str(s) for s in adata_second.var_names]
    elif isinstance(adata_second, pd.DataFrame):
        names = [str(s) for s in adata_second.columns]
    has_names = getattr(estimator, "feature_names_", None) is not None and names is not None
    missing = [g for g in genes if g not in set(names)] if has_names else []
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=".*missing from the new data.*")
        Z = np.asarray(estimator.transform(adata_second))
    lab = np.asarray(reference_labels)
    assigned = assign_clusters(Z, reference_latent, lab, method=assign, gmm=gmm, n_neighbors=n_neighbors)
    cats = list(pd.unique(lab))
    try:
        cats = sorted(cats)
    except TypeError:
        pass
    n2 = max(len(assigned), 1)
    fractions = pd.DataFrame({
        "cluster": cats,
        "n_cells": [int(np.sum(assigned == c)) for c in cats],
        "fraction": [float(np.sum(assigned == c)) / n2 for c in cats],
        "reference_fraction": [float(np.mean(lab == c)) for c in cats],
    })
    obs_names = [str(s) for s in adata_second.obs_names] if hasattr(adata_second, "obs_names") else None
    return ProjectionResult(latent=Z, labels=assigned, fractions=fractions, missing=missing,
                            n_features=len(genes), assign=assign, obs_names=obs_names)


def figure_projection(
    reference_latent: np.ndarray,
    reference_labels: Sequence,
    result: ProjectionResult,
    *,
    names: tuple[str, str] = ("first sample", "second sample"),
    title: str | None = None,
) -> "go.Figure":
    """Both samples in one latent plot: reference coloured by cluster (circles), second sample as diamonds.

    Parameters
    ----------
    reference_latent, reference_labels
        The reference sample.
    result
        Output of :func:`project`.
    names
        Legend names of the two samples.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        3-D when the latent space has at least 3 dimensions, else 2-D.
    """
    import plotly.graph_objects as go
    from plotly.colors import qualitative

    R = np.asarray(reference_latent)
    Z = np.asarray(result.latent)
    lab = np.asarray(reference_labels)
    three = R.shape[1] >= 3
    pal = qualitative.Plotly + qualitative.D3
    cats = list(result.fractions["cluster"])
    colour = {str(c): pal[i % len(pal)] for i, c in enumerate(cats)}

    def trace(P, *, name, color, symbol, size, group):
        if three:
            return go.Scatter3d(x=P[:, 0], y=P[:, 1], z=P[:, 2], mode="markers", name=name,
                                legendgroup=group,
                                marker=dict(color=color, symbol=symbol, size=size, opacity=0.8))
        return go.Scattergl(x=P[:, 0], y=P[:, 1], mode="markers", name=name, legendgroup=group,
                            marker=dict(color=color, symbol=symbol, size=size + 3, opacity=0.8))

    fig = go.Figure()
    for c in cats:
        m = lab.astype(str) == str(c)
        fig.add_trace(trace(R[m], name=f"{names[0]}: cluster {c}", color=colour[str(c)], symbol="circle",
                            size=3, group=names[0]))
    for c in cats:
        m = np.asarray(result.labels).astype(str) == str(c)
        if m.any():
            fig.add_trace(trace(Z[m], name=f"{names[1]} -> cluster {c}", color=colour[str(c)],
                                symbol="diamond", size=4, group=names[1]))
    fig.update_layout(title=title or "Second sample projected into the reference latent space",
                      template="plotly_white", legend=dict(itemsizing="constant"))
    return fig
