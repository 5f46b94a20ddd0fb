"""Batch correction: one categorical covariate per cell (sample, donor, sequencing run).

Given to :meth:`dhaka.Dhaka.fit` as ``batch=`` (per-cell labels), or as ``batch_key=`` (an ``obs``
column) to :func:`dhaka.tl.dhaka`, :func:`dhaka.pipeline.run` and ``python -m dhaka embed
--batch-key``, each cell's one-hot batch goes into the encoder and the decoder of the model
(:class:`dhaka.model.VAE`, ``n_batch``): the conditional VAE of scVI (Lopez et al. 2018), so the
latent space need not carry what the batch explains. This module turns labels into the integer
codes the model reads, and keeps the categories with the fitted estimator
(``Dhaka.batch_categories_``, saved with the model).

Embedding cells with a batch-trained model needs their batch too, as one of the training
categories. Unknown categories are refused, naming them: nothing is mapped silently. To read
cells of a batch the model never saw as one of its batches, pass that category (a single label
stands for every cell).
"""
from __future__ import annotations

from typing import Any, Sequence

import numpy as np

__all__ = ["labels_from_obs", "fit_codes", "codes_for", "candidate_columns", "check_obs_column", "mixing_entropy"]

#: Most categories a column offered by the Train form may have.
FORM_MAX_CATEGORIES = 50


def _strings(batch: Any, n_cells: int, *, what: str) -> np.ndarray:
    """Per-cell labels as strings; refuses a wrong length or missing values."""
    import pandas as pd

    s = pd.Series(np.asarray(batch, dtype=object) if not isinstance(batch, pd.Series) else batch.to_numpy(object))
    if len(s) != n_cells:
        raise ValueError(f"{what} has {len(s)} labels for {n_cells} cells; give one batch label per cell")
    missing = int(s.isna().sum())
    if missing:
        raise ValueError(f"{what} has {missing} missing labels; every cell needs a batch")
    return s.astype(str).to_numpy()


def fit_codes(batch: Any, n_cells: int) -> tuple[list[str] | None, np.ndarray | None]:
    """``(categories, codes)`` of the training cells' labels (sorted categories), or ``(None, None)`` without."""
    if batch is None:
        return None, None
    if isinstance(batch, str) or np.ndim(batch) == 0:
        raise ValueError("batch for fit must hold one label per cell, not a single value")
    labels = _strings(batch, n_cells, what="batch")
    categories, codes = np.unique(labels, return_inverse=True)
    if n_cells >= 4 and len(categories) > n_cells // 2:
        raise ValueError(f"batch has {len(categories)} categories for {n_cells} cells: a batch is a group of "
                         "cells (sample, donor, run), not a label per cell")
    return [str(c) for c in categories], codes.astype(np.int64)


def codes_for(categories: Sequence[str] | None, batch: Any, n_cells: int) -> np.ndarray | None:
    """The codes of cells to embed with a model trained on ``categories`` (``None``: trained without batches).

    ``batch`` holds one label per cell, or one label for all of them; labels outside
    ``categories`` are refused with their names.
    """
    if categories is None:
        if batch is not None:
            raise ValueError("this model was trained without batch correction; leave batch (batch_key) out")
        return None
    if batch is None:
        raise ValueError(f"this model was trained with batch correction (batches: {_names(categories)}); "
                         "pass batch= (or batch_key=) with each cell's batch")
    if isinstance(batch, str) or np.ndim(batch) == 0:
        batch = np.full(n_cells, str(batch), dtype=object)
    labels = _strings(batch, n_cells, what="batch")
    pos = {c: i for i, c in enumerate(categories)}
    unknown = sorted(set(labels) - pos.keys())
    if unknown:
        raise ValueError(f"batch categories unknown to the model: {_names(unknown)} (it was trained on "
                         f"{_names(categories)}); to read these cells as one of the model's batches, pass that "
                         "batch for them")
    return np.fromiter((pos[v] for v in labels), dtype=np.int64, count=n_cells)


def _names(values: Sequence[str], most: int = 8) -> str:
    shown = ", ".join(repr(str(v)) for v in list(values)[:most])
    return shown + (f" and {len(values) - most} more" if len(values) > most else "")


def check_obs_column(data: Any, batch_key: str) -> None:
    """Refuse a ``batch_key`` that is not a column of ``data.obs``, naming it and the columns there are."""
    obs = getattr(data, "obs", None)
    if obs is None or not hasattr(obs, "columns"):
        raise ValueError(f"batch_key={batch_key!r} needs an AnnData with obs columns, got {type(data).__name__}; "
                         "for a plain matrix pass batch= (one label per cell) to Dhaka.fit")
    if batch_key not in obs.columns:
        have = ", ".join(map(repr, map(str, obs.columns[:12]))) or "none"
        raise ValueError(f"batch_key {batch_key!r} is not a column of obs (it has: {have})")


def labels_from_obs(data: Any, batch_key: str | None) -> np.ndarray | None:
    """``data.obs[batch_key]`` as an array of labels (``None`` when ``batch_key`` is ``None``)."""
    if batch_key is None:
        return None
    check_obs_column(data, batch_key)
    return data.obs[batch_key].to_numpy()


def candidate_columns(obs: Any, *, max_categories: int = FORM_MAX_CATEGORIES) -> list[str]:
    """The ``obs`` columns that can be a batch: categorical, text, boolean or integer, with no missing value
    and between 2 and ``max_categories`` values, fewer than half as many as cells (the Train form offers them)."""
    out = []
    n = len(obs)
    for column in obs.columns:
        s = obs[column]
        kind = getattr(s.dtype, "kind", "O")
        if not (str(s.dtype) in ("category", "string") or kind in "OUSbiu"):
            continue
        if s.isna().any():
            continue
        k = int(s.nunique())
        if 2 <= k <= max_categories and k <= n // 2:
            out.append(str(column))
    return out


def mixing_entropy(latent: np.ndarray, batch: Any, *, n_neighbors: int = 30) -> float:
    """How well batches mix in a latent space: the mean over cells of the entropy of the batch labels among
    the cell's ``n_neighbors`` nearest neighbours (itself left out), divided by the entropy of the labels
    over all cells; 1: every neighbourhood holds the batches as the whole data does, 0: none holds two."""
    from sklearn.neighbors import NearestNeighbors

    labels = np.unique(np.asarray(batch).astype(str), return_inverse=True)[1]
    n_cat = int(labels.max()) + 1 if len(labels) else 0
    overall = np.bincount(labels, minlength=n_cat) / max(len(labels), 1)
    h_all = float(-(overall[overall > 0] * np.log(overall[overall > 0])).sum())
    if n_cat < 2 or h_all == 0.0:
        return float("nan")
    k = int(min(n_neighbors, len(labels) - 1))
    idx = NearestNeighbors(n_neighbors=k + 1).fit(latent).kneighbors(latent, return_distance=False)[:, 1:]
    counts = np.stack([np.bincount(row, minlength=n_cat) for row in labels[idx]]) / k
    with np.errstate(divide="ignore", invalid="ignore"):
        h = -np.where(counts > 0, counts * np.log(counts), 0.0).sum(axis=1)
    return float(h.mean() / h_all)
