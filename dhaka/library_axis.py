"""The library-size axis: how much of a per-cell covariate (log library size) a latent follows, and the gene axis
that carries it, for ``Dhaka(library_axis=...)`` (:meth:`dhaka.Dhaka.fit`).
"""
from __future__ import annotations

from typing import Any

import numpy as np

__all__ = ["LIBRARY_R2", "covariate_axis", "within_clusters", "deflated"]

#: ``library_axis="auto"`` repeats a fit without the library-size axis when its latent explains more than this
#: share of the cells' log library size, both overall and within the latent's clusters (a gradient of
#: sequencing depth, not cell types that differ in library size). Measured on first fits (bench/RESULTS.md):
#: Splatter with a 20x library spread 0.81-0.84 overall, 0.59-0.67 within clusters; simulate.counts() at most
#: 0.23 and the other Splatter cells of bench/independent.py at most 0.11 overall (final latents); two groups of
#: different library size (tests) 0.93 overall but 0.02-0.03 within clusters.
LIBRARY_R2 = 0.5


def covariate_axis(S: Any, inv: np.ndarray, covariate: np.ndarray) -> np.ndarray | None:
    """Unit gene vector along which the scaled input ``S * inv`` follows ``covariate`` (per cell).

    Its entries are the genes' regression coefficients on the centred covariate (the column
    means of ``S`` cancel against it, so ``S`` need not be centred); ``None`` when the covariate
    is constant or no gene follows it.
    """
    u = np.asarray(covariate, dtype=np.float64) - float(np.mean(covariate))
    if not np.any(u):
        return None
    t = inv * np.ravel(np.asarray(S.T @ u))
    norm = float(np.linalg.norm(t))
    return t / norm if norm > 1e-12 else None


def within_clusters(V: np.ndarray, labels: np.ndarray) -> np.ndarray:
    """``V`` (cells x columns) minus the mean of each cell's cluster."""
    out = np.array(V, dtype=np.float64)
    for label in np.unique(labels):
        rows = labels == label
        out[rows] -= out[rows].mean(axis=0)
    return out


def deflated(A: Any, w: np.ndarray) -> Any:
    """The linear operator ``A (I - w w^T)``: ``A`` with the unit gene axis ``w`` projected out."""
    from scipy.sparse.linalg import LinearOperator

    def matvec(v: np.ndarray) -> np.ndarray:
        v = np.ravel(v)
        return A.matvec(v - w * (w @ v))

    def rmatvec(u: np.ndarray) -> np.ndarray:
        t = np.ravel(A.rmatvec(np.ravel(u)))
        return t - w * (w @ t)

    return LinearOperator(A.shape, dtype=np.float64, matvec=matvec, rmatvec=rmatvec)
