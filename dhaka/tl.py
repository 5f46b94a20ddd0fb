"""Scanpy-style tools: results written into an :class:`~anndata.AnnData` in place.

::

    import dhaka, scanpy as sc
    dhaka.tl.dhaka(adata, latent_dim=3, epochs=100)         # obsm["X_dhaka"], obs["dhaka_cluster"], uns["dhaka"]
    sc.pl.embedding(adata, basis="dhaka", projection="3d", color="dhaka_cluster")
    sc.pp.neighbors(adata, use_rep="X_dhaka")

Conventions follow scanpy's ``tl`` functions: the data first, options keyword-only,
string options as ``Literal``, every result stored with the settings that made it
(``uns[key_added]``), ``copy=True`` returns a modified copy and leaves the input
untouched. :func:`to_anndata` builds the ``.h5ad`` the app and the CLI export, with
every embedding under ``obsm["X_*"]`` (the names scanpy and cellxgene look for).

anndata, pandas and torch are imported inside the functions, so ``import dhaka.tl``
stays light.
"""
from __future__ import annotations

import json
import os
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

from dhaka.record import uns_record, versions
from dhaka.store import is_occupied

if TYPE_CHECKING:  # pragma: no cover
    import anndata

    from dhaka.clusterers import Clusterer, ClusterResult
    from dhaka.estimator import Dhaka

__all__ = ["dhaka", "project", "to_anndata", "versions", "uns_record", "params_from_uns"]

#: Embedding methods of the app whose coordinates are exported as ``obsm["X_<method>"]``.
EMBEDDING_METHODS = ("pca", "tsne", "umap")


# ------------------------------------------------------------------ records
def params_from_uns(adata: anndata.AnnData, *, key: str = "dhaka") -> dict[str, Any]:
    """The exact ``Dhaka`` settings recorded in ``adata.uns[key]`` (``Dhaka(**params)`` rebuilds it)."""
    try:
        return json.loads(str(adata.uns[key]["params_json"]))
    except KeyError:
        raise KeyError(f"adata.uns[{key!r}] has no recorded settings (params_json); was it written by "
                       "dhaka.tl.dhaka or the Dhaka Explorer app?") from None


# ------------------------------------------------------------------ helpers
def _check_key(key_added: str) -> str:
    if not isinstance(key_added, str) or not key_added or key_added.startswith("X_"):
        raise ValueError(f"key_added must be a non-empty name without the X_ prefix (got {key_added!r}); "
                         "the embedding is stored as obsm['X_' + key_added]")
    return key_added


def _input(adata: anndata.AnnData, layer: str | None, batch_key: str | None = None) -> anndata.AnnData:
    """``adata`` itself, or a light AnnData of one of its layers (same cell and gene names, and the
    ``obs[batch_key]`` column when given); a ``batch_key`` that is not a column is named."""
    if not (hasattr(adata, "obs_names") and hasattr(adata, "var_names") and hasattr(adata, "layers")):
        raise TypeError(f"expected an AnnData, got {type(adata).__name__}; for a plain matrix use "
                        "dhaka.Dhaka().fit_transform(X)")
    if batch_key is not None:
        from dhaka.batch import check_obs_column

        check_obs_column(adata, batch_key)
    if layer is None:
        return adata
    if layer not in adata.layers:
        have = ", ".join(map(repr, adata.layers.keys())) or "none"
        raise KeyError(f"layer {layer!r} is not in adata.layers (it has: {have})")
    import anndata as ad
    import pandas as pd

    obs = adata.obs[[batch_key]].copy() if batch_key is not None else pd.DataFrame(index=adata.obs_names)
    return ad.AnnData(X=adata.layers[layer], obs=obs, var=pd.DataFrame(index=adata.var_names))


def _categorical(values: Any) -> Any:
    """Cluster calls or labels as a pandas Categorical of strings in natural order (0, 1, 2, ..., 10)."""
    import pandas as pd

    arr = np.asarray(values)
    if arr.dtype.kind in "iu" or (arr.dtype.kind == "f" and np.all(np.isfinite(arr)) and np.all(arr % 1 == 0)):
        ints = arr.astype(np.int64)
        cats = [str(v) for v in np.unique(ints)]
        return pd.Categorical([str(v) for v in ints], categories=cats)
    s = pd.Series(values, dtype="object")
    strs = s.where(s.isna(), s.astype(str))
    cats = sorted({v for v in strs if isinstance(v, str)}, key=_natural_key)
    return pd.Categorical(strs, categories=cats)


def _natural_key(s: str) -> tuple:
    import re

    return tuple(int(t) if t.isdigit() else t for t in re.split(r"(\d+)", s))


def _write(adata: anndata.AnnData, *, key: str, Z: np.ndarray, clusters: Any, record: dict[str, Any]) -> None:
    adata.obsm[f"X_{key}"] = np.asarray(Z, dtype=np.float32)
    if clusters is not None:
        adata.obs[f"{key}_cluster"] = _categorical(clusters)
    adata.uns[key] = record


# ------------------------------------------------------------------ tools
#: Names of a mode that mean the same (``tl.dhaka(mode="copy_number")`` is ``mode="cnv"``).
MODE_ALIASES = {"copy_number": "cnv", "copy-number": "cnv", "scdna": "cnv", "rna": "expression"}


def dhaka(
    adata: anndata.AnnData,
    *,
    mode: Literal["expression", "cnv", "copy_number"] = "expression",
    latent_dim: int = 3,
    key_added: str = "dhaka",
    layer: str | None = None,
    copy: bool = False,
    seed: int = 0,
    k_max: int = 10,
    clusterer: Clusterer | str | None = None,
    batch_key: str | None = None,
    model_path: str | os.PathLike | None = None,
    return_model: bool = False,
    **params: Any,
) -> anndata.AnnData | Dhaka | tuple[anndata.AnnData, Dhaka] | None:
    """Train Dhaka on ``adata`` and store its latent space and clusters, scanpy style.

    Parameters
    ----------
    adata
        Cells x genes (or copy-number bins). Raw counts, normalised or log values are
        recognised as :class:`dhaka.Dhaka` does.
    mode
        ``"expression"`` (scRNA-seq) or ``"cnv"`` (copy-number states per bin; ``"copy_number"`` too).
    latent_dim
        Dimension of the latent space (3 for ``projection="3d"`` plots).
    key_added
        Results go to ``obsm["X_" + key_added]``, ``obs[key_added + "_cluster"]`` and
        ``uns[key_added]``.
    layer
        Train on ``adata.layers[layer]`` instead of ``adata.X``.
    copy
        Work on a copy and return it; ``adata`` is left untouched.
    seed
        Seed of training and clustering.
    k_max
        Largest number of clusters tried by the clustering.
    clusterer
        How clusters are called (:mod:`dhaka.clusterers`: an object or a registered name);
        ``None``: Gaussian mixtures with k by BIC, the mode's merge rule.
    batch_key
        Correct for the batch in ``adata.obs[batch_key]`` (sample, donor, run), as scVI's ``batch_key``:
        the model is conditioned on each cell's batch (:mod:`dhaka.batch`); ``uns[key_added]`` records
        ``batch_key`` and ``batch_categories``. Cells projected later (:func:`project`) need a batch
        the model knows.
    model_path
        Save the trained model to this folder (it must not exist or be empty); recorded as
        ``uns[key_added]["model_path"]`` so :func:`project` can be given the path later.
    return_model
        Also return the trained :class:`dhaka.Dhaka` (to project further samples with).
    **params
        Further :class:`dhaka.Dhaka` settings (``epochs``, ``structure``, ``n_genes``, ...).

    Returns
    -------
    ``None``; the modified copy when ``copy=True``; the model when ``return_model=True``
    (``(copy, model)`` with both). Sets

    ``adata.obsm["X_dhaka"]``
        Latent coordinates (posterior means), float32, cells x ``latent_dim``.
    ``adata.obs["dhaka_cluster"]``
        Cluster of every cell: a categorical of strings ``"0"``, ``"1"``, ... (``"0"`` the largest).
    ``adata.uns["dhaka"]``
        ``params`` / ``params_json`` (``Dhaka.get_params()``), ``versions``, ``bic`` (BIC per
        ``k = 1..k_max``), ``k``, ``seed``, ``n_genes_used``, ``train_seconds``, ``model_path``
        (and ``batch_key``, ``batch_categories`` with a batch).

    Examples
    --------
    >>> model = dhaka.tl.dhaka(adata, epochs=50, model_path="model/", return_model=True)  # doctest: +SKIP
    >>> sc.pl.embedding(adata, basis="dhaka", projection="3d", color="dhaka_cluster")  # doctest: +SKIP
    >>> dhaka.tl.project(second, "model/", reference=adata, transfer="dhaka_cluster")  # doctest: +SKIP
    """
    from dhaka.estimator import Dhaka
    from dhaka.pipeline import run

    key = _check_key(key_added)
    mode = MODE_ALIASES.get(mode, mode)
    if model_path is not None:
        _check_model_path(model_path)
    data = _input(adata, layer, batch_key)
    result = run(data, estimator=Dhaka(mode=mode, latent_dim=latent_dim, seed=seed, **params),
                 clusterer=clusterer, k_max=k_max, batch_key=batch_key, extra={"layer": layer})
    record = dict(result.record)
    if model_path is not None:
        result.estimator.save(model_path)
        record["model_path"] = str(Path(model_path).resolve())
    out = adata.copy() if copy else adata
    _write(out, key=key, Z=result.latent, clusters=result.labels, record=record)
    if return_model:
        return (out, result.estimator) if copy else result.estimator
    return out if copy else None


def _check_model_path(path: str | os.PathLike) -> None:
    p = Path(path)
    if is_occupied(p):
        raise FileExistsError(f"model_path {p} exists and is not an empty folder; choose a new one "
                              "(or save with model.save(path, overwrite=True))")
    if not p.resolve().parent.is_dir():
        raise FileNotFoundError(f"model_path {p}: the folder {p.resolve().parent} does not exist")


def project(
    adata: anndata.AnnData,
    model: Dhaka | str | os.PathLike,
    *,
    key_added: str = "dhaka",
    layer: str | None = None,
    cluster: bool = False,
    k_max: int = 10,
    clusterer: Clusterer | str | None = None,
    reference: anndata.AnnData | None = None,
    transfer: str | None = None,
    n_neighbors: int = 15,
    batch_key: str | None = None,
    copy: bool = False,
) -> anndata.AnnData | None:
    """Embed a second sample with a fitted model (no training), scanpy style.

    Genes are matched by name as :meth:`dhaka.Dhaka.transform` does; genes of the model
    missing here are filled with the training mean and counted in
    ``uns[key_added]["n_genes_missing"]`` (a warning names them).

    Parameters
    ----------
    adata
        The new cells.
    model
        A fitted :class:`dhaka.Dhaka`, or the folder it was saved to (``model_path`` of
        :func:`dhaka`, :meth:`dhaka.Dhaka.save`).
    key_added
        Results go to ``obsm["X_" + key_added]`` and ``uns[key_added]``.
    layer
        Read ``adata.layers[layer]`` instead of ``adata.X``.
    cluster
        Also cluster the projected cells into ``obs[key_added + "_cluster"]`` (new cluster numbers,
        unrelated to the reference's; see ``transfer`` for the reference's labels).
    k_max, clusterer
        As in :func:`dhaka`, when ``cluster=True``.
    reference, transfer, n_neighbors
        Label transfer: ``obs[transfer]`` of ``reference`` (e.g. ``"dhaka_cluster"`` or a cell type;
        ``reference`` embedded by the same model, in ``obsm["X_" + key_added]``) is carried to each new
        cell by the majority of its ``n_neighbors`` nearest reference cells in the latent space, into
        ``obs[transfer]``, with the share of neighbours that agree in ``obs[transfer + "_confidence"]``.
    batch_key
        For a model trained with a batch: the ``obs`` column holding each cell's batch, one of the
        model's ``batch_categories_`` (unknown ones are refused by name; to read cells of a new batch
        as one the model knows, set that category in the column).
    copy
        Work on a copy and return it.

    Returns
    -------
    ``None``, or the modified copy when ``copy=True``.
    """

    from sklearn.utils.validation import check_is_fitted

    from dhaka.estimator import Dhaka, warn_missing
    from dhaka.pipeline import embed_cluster

    key = _check_key(key_added)
    model_dir = None
    if isinstance(model, (str, os.PathLike)):
        model_dir = str(Path(model).resolve())
        model = Dhaka.load(model)
    check_is_fitted(model, "model_")
    ref = _transfer_source(reference, transfer, key) if transfer is not None else None
    data = _input(adata, layer, batch_key)
    result = embed_cluster(model, data, cluster=cluster, clusterer=clusterer, k_max=k_max, batch_key=batch_key)
    warn_missing(result.missing, len(model.genes_))
    record = {**result.record, "projected": True, "layer": "None" if layer is None else layer,
              "n_genes_used": len(model.genes_), "n_genes_missing": len(result.missing)}
    if model_dir is not None:
        record["model_path"] = model_dir
    out = adata.copy() if copy else adata
    _write(out, key=key, Z=result.latent, clusters=result.labels, record=record)
    if ref is not None:
        from dhaka.analysis.projection import transfer_labels

        labels, confidence = transfer_labels(result.latent, ref[0], ref[1], n_neighbors=n_neighbors)
        out.obs[transfer] = _categorical(labels)
        out.obs[f"{transfer}_confidence"] = confidence.astype(np.float32)
        out.uns[key]["transfer"] = {"obs": transfer, "method": "knn", "n_neighbors": int(n_neighbors),
                                    "mean_confidence": float(confidence.mean())}
    return out if copy else None


def _transfer_source(reference: Any, transfer: str, key: str) -> tuple[np.ndarray, np.ndarray]:
    """The reference's latent and its ``obs[transfer]`` labels, or a message naming what is missing."""
    if reference is None:
        raise ValueError(f"transfer={transfer!r} needs reference=<the AnnData the labels come from>")
    if f"X_{key}" not in reference.obsm:
        raise ValueError(f"the reference has no obsm['X_{key}']; run dhaka.tl.dhaka (or tl.project with the same "
                         "model) on it first")
    if transfer not in reference.obs:
        raise ValueError(f"the reference has no obs[{transfer!r}] to transfer (it has: "
                         f"{', '.join(map(str, reference.obs.columns[:8])) or 'no columns'})")
    return np.asarray(reference.obsm[f"X_{key}"]), reference.obs[transfer].astype(str).to_numpy()


# ------------------------------------------------------------------ export
def _embedding_keys(embeddings: Mapping[str, Any]) -> dict[str, str]:
    """obsm key of each app embedding name (``"umap_2d"`` -> ``"X_umap"``).

    One per method gets the plain ``X_<method>`` (the 2-D one when both are there,
    since cellxgene and ``sc.pl.umap`` read two columns); the other keeps its
    dimension, ``X_<method>_3d``. Other names become ``X_<name>``.
    """
    by_method: dict[str, list[str]] = {}
    keys: dict[str, str] = {}
    for name in embeddings:
        method, _, dims = str(name).partition("_")
        if dims.endswith("d") and dims[:-1].isdigit():
            by_method.setdefault(method, []).append(name)
        else:
            keys[name] = f"X_{name}"
    for method, names in by_method.items():
        names = sorted(names, key=lambda n: (n.partition("_")[2] != "2d", n))
        keys[names[0]] = f"X_{method}"
        for other in names[1:]:
            keys[other] = f"X_{other}"
    return keys


def to_anndata(
    adata: anndata.AnnData,
    *,
    latent: Any,
    clusters: Any = None,
    embeddings: Mapping[str, Any] | None = None,
    annotations: Mapping[str, Any] | Any = None,
    params: Mapping[str, Any] | None = None,
    cluster_result: ClusterResult | None = None,
    seed: int | None = None,
    key_added: str = "dhaka",
    cellxgene_views: bool = True,
    extra: Mapping[str, Any] | None = None,
) -> anndata.AnnData:
    """A copy of ``adata`` carrying a run's results, for ``write_h5ad`` (the app's and CLI's export).

    Parameters
    ----------
    adata
        The dataset the run was trained on (not modified).
    latent
        Dhaka coordinates, cells x latent_dim -> ``obsm["X_dhaka"]``.
    clusters
        Cluster calls -> ``obs["dhaka_cluster"]`` (categorical strings).
    embeddings
        App embeddings by name (``"pca_2d"``, ``"umap_3d"``, ...) -> ``obsm["X_pca"]``,
        ``obsm["X_umap"]`` (``X_umap_3d`` when the 2-D one is also there).
    annotations
        Labels made by hand: ``{column: values}`` or a DataFrame indexed like ``adata``
        -> categorical ``obs`` columns (a name already in ``obs`` is replaced).
    params
        The estimator's settings (``Dhaka.get_params()``) for ``uns["dhaka"]``.
    cluster_result
        The clustering (:class:`dhaka.clusterers.ClusterResult`), for its record (``k``, BIC curve).
    seed
        Seed of the run (defaults to ``params["seed"]``).
    key_added
        Name of the Dhaka results (``obsm["X_" + key_added]``, ``uns[key_added]``).
    cellxgene_views
        With a latent of 3 or more dimensions, also store the other pairs of its first
        three axes as 2-D embeddings ``X_dhaka_dims13`` and ``X_dhaka_dims23``: cellxgene
        draws the first two columns of an embedding only.
    extra
        More ``uns[key_added]`` entries (e.g. ``run_id``).

    Returns
    -------
    A new AnnData; all of ``adata``'s own obs, var, obsm, layers and uns are kept.
    """
    key = _check_key(key_added)
    Z = np.asarray(latent, dtype=np.float32)
    if Z.ndim != 2 or Z.shape[0] != adata.n_obs:
        raise ValueError(f"latent has shape {Z.shape}, but the dataset has {adata.n_obs} cells; "
                         "was the run trained on this dataset?")
    out = adata.copy()
    extra = dict(extra or {})
    if clusters is not None:  # the clusters in use may be a k the user chose, not the BIC's
        extra.setdefault("n_clusters", int(len(np.unique(np.asarray(clusters).astype(str)))))
    record = uns_record(params=params, clusters=cluster_result, seed=seed, extra=extra)
    _write(out, key=key, Z=Z, clusters=clusters, record=record)
    if cellxgene_views and Z.shape[1] >= 3:
        out.obsm[f"X_{key}_dims13"] = Z[:, [0, 2]].copy()
        out.obsm[f"X_{key}_dims23"] = Z[:, [1, 2]].copy()
    emb = dict(embeddings or {})
    for name, obsm_key in _embedding_keys(emb).items():
        coords = np.asarray(emb[name], dtype=np.float32)
        if coords.ndim != 2 or coords.shape[0] != adata.n_obs:
            raise ValueError(f"embedding {name!r} has shape {coords.shape}; expected {adata.n_obs} cells x dims")
        out.obsm[obsm_key] = coords
    for column, values in _annotation_items(annotations, adata):
        out.obs[column] = _categorical(values)
    return out


def _annotation_items(annotations: Any, adata: anndata.AnnData) -> list[tuple[str, Any]]:
    if annotations is None:
        return []
    if hasattr(annotations, "columns") and hasattr(annotations, "index"):
        frame = annotations.reindex([str(o) for o in adata.obs_names]) if len(annotations) else annotations
        items = [(str(c), frame[c].to_numpy(dtype=object)) for c in frame.columns]
    else:
        items = [(str(c), v) for c, v in dict(annotations).items()]
    for column, values in items:
        if len(values) != adata.n_obs:
            raise ValueError(f"annotation {column!r} has {len(values)} values for {adata.n_obs} cells")
    return items
