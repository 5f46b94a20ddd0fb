"""Copy-number views: bins in genome order, cells in hierarchical order, heatmap.

Bins are placed in chromosome order when their names carry chromosome and
position (``"chr1:100-200"``, ``"1:100-200"``, ``"chr1_100_200"``) or when
``var`` has ``chrom``/``start`` columns; autosomes come first in numeric order,
then X, Y and mitochondrial, then other contigs. Bins that cannot be placed keep
their file order, after the placed ones.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import pandas as pd

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["parse_bins", "genome_order", "cluster_order", "call_clones", "figure_heatmap", "PloidyResult",
           "cell_ploidy", "relative_ploidy"]

_BIN_RE = re.compile(
    r"^(?:chr)?(?P<chrom>[0-9]{1,2}|X|Y|M|MT)[:_\-](?P<start>\d+)(?:[\-_](?P<end>\d+))?$",
    re.IGNORECASE,
)
_CHROM_COLS = ("chrom", "chr", "chromosome", "seqnames", "seqname")
_START_COLS = ("start", "begin", "pos", "position")
_END_COLS = ("end", "stop")


def _chrom_rank(chrom: str) -> float:
    c = str(chrom).strip()
    c = c[3:] if c.lower().startswith("chr") else c
    if c.isdigit():
        return float(int(c))
    u = c.upper()
    if u == "X":
        return 1000.0
    if u == "Y":
        return 1001.0
    if u in ("M", "MT"):
        return 1002.0
    return np.nan


def _chrom_label(chrom: str) -> str:
    c = str(chrom).strip()
    c = c[3:] if c.lower().startswith("chr") else c
    return c.upper() if c.upper() in ("X", "Y", "M", "MT") else c


def parse_bins(var) -> pd.DataFrame:
    """Chromosome and position of each bin.

    Parameters
    ----------
    var
        ``adata.var`` (a DataFrame, whose columns ``chrom``/``start``/``end`` are used when
        present, else its index), or a sequence of bin names.

    Returns
    -------
    pandas.DataFrame
        One row per bin in input order: ``chrom`` (label such as ``"1"``, ``"X"``; ``None``
        when unknown), ``rank`` (sort key of the chromosome, NaN when unknown), ``start``,
        ``end`` (NaN when unknown).
    """
    if isinstance(var, pd.DataFrame):
        names = var.index.astype(str)
        cols = {c.lower(): c for c in var.columns}
        ccol = next((cols[c] for c in _CHROM_COLS if c in cols), None)
        scol = next((cols[c] for c in _START_COLS if c in cols), None)
    else:
        names = pd.Index([str(v) for v in var])
        ccol = scol = None
        cols = {}
    n = len(names)
    chrom = np.full(n, None, dtype=object)
    start = np.full(n, np.nan)
    end = np.full(n, np.nan)
    if ccol is not None and scol is not None:
        chrom = np.array([_chrom_label(c) for c in var[ccol].astype(str)], dtype=object)
        start = pd.to_numeric(var[scol], errors="coerce").to_numpy(dtype=float)
        ecol = next((cols[c] for c in _END_COLS if c in cols), None)
        if ecol is not None:
            end = pd.to_numeric(var[ecol], errors="coerce").to_numpy(dtype=float)
    else:
        for i, name in enumerate(names):
            m = _BIN_RE.match(name.strip())
            if m:
                chrom[i] = _chrom_label(m["chrom"])
                start[i] = float(m["start"])
                end[i] = float(m["end"]) if m["end"] else np.nan
    rank = np.array([_chrom_rank(c) if c is not None else np.nan for c in chrom])
    # named contigs that are not 1-22/X/Y/M go after, in order of first appearance
    other = [c for c in dict.fromkeys(chrom[np.isnan(rank)]) if c is not None]
    for j, c in enumerate(other):
        rank[chrom == c] = 2000.0 + j
    rank[np.isnan(start)] = np.nan
    return pd.DataFrame({"chrom": chrom, "rank": rank, "start": start, "end": end}, index=names)


def genome_order(var) -> np.ndarray:
    """Column order that puts bins in genome order.

    Parameters
    ----------
    var
        ``adata.var`` or a sequence of bin names (see :func:`parse_bins`).

    Returns
    -------
    numpy.ndarray
        Integer positions; placed bins sorted by (chromosome, start), then unplaced bins in
        file order. When no bin can be placed this is ``arange(n_bins)`` (file order).
    """
    info = parse_bins(var)
    n = len(info)
    rank = info["rank"].to_numpy()
    placed = np.isfinite(rank)
    pos = np.arange(n)
    unplaced_key = np.where(placed, 0, 1)
    return np.lexsort((pos, np.nan_to_num(info["start"].to_numpy(), nan=0.0),
                       np.nan_to_num(rank, nan=0.0), unplaced_key))


def cluster_order(
    profiles,
    *,
    method: Literal["ward", "average", "complete", "single"] = "ward",
    metric: str = "euclidean",
    max_cells: int = 4000,
    seed: int = 0,
) -> np.ndarray:
    """Leaf order of a hierarchical clustering of the cells.

    Parameters
    ----------
    profiles
        Cells x bins (dense or sparse).
    method
        Linkage method (``scipy.cluster.hierarchy.linkage``).
    metric
        Distance metric (``"euclidean"`` for ward).
    max_cells
        Above this many cells, cells are first grouped with k-means into ``max_cells // 4``
        groups; the groups are ordered hierarchically and cells within a group by their
        distance along the group's first principal direction (memory stays O(max_cells^2)).
    seed
        Seed for the k-means step.

    Returns
    -------
    numpy.ndarray
        Permutation of ``range(n_cells)``.
    """
    import scipy.sparse as sp
    from scipy.cluster.hierarchy import leaves_list, linkage

    X = profiles.toarray() if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float64)
    n = X.shape[0]
    if n <= 2:
        return np.arange(n)
    if n <= max_cells:
        return leaves_list(linkage(X, method=method, metric=metric)).astype(int)
    from sklearn.cluster import MiniBatchKMeans

    k = max(2, max_cells // 4)
    km = MiniBatchKMeans(n_clusters=k, random_state=seed, n_init=3).fit(X)
    centres = km.cluster_centers_
    group_order = leaves_list(linkage(centres, method=method, metric=metric))
    out = []
    for g in group_order:
        members = np.flatnonzero(km.labels_ == g)
        if members.size > 2:
            sub = X[members] - X[members].mean(0)
            _, _, vt = np.linalg.svd(sub, full_matrices=False)
            members = members[np.argsort(sub @ vt[0])]
        out.append(members)
    return np.concatenate(out).astype(int)


def call_clones(
    Z: np.ndarray,
    *,
    k_max: int = 10,
    seed: int = 0,
    min_cluster_size: int | float | Literal["auto"] | None = "auto",
    merge_tol: float | None = None,
):
    """GMM clusters of a copy-number latent space, robust to private events and state noise.

    Plain GMM-BIC over-splits the heavy-tailed clouds that per-cell private events make
    (5-10 clusters for two clones). This calls :func:`dhaka.cluster.gmm_bic` with
    ``merge=True``: mixture components whose union is unimodal along the ridgeline are
    joined, and clusters smaller than ``min_cluster_size`` (outlier cells) are folded into
    the cluster they fit best.

    Parameters
    ----------
    Z
        Latent coordinates of the cells.
    k_max
        Largest number of mixture components tried.
    seed
        Random state.
    min_cluster_size
        Smallest clone kept: a count, a fraction of the cells when below 1, ``"auto"``
        (the cluster module's default, ``max(10 cells, 1%)``) or ``None`` (off).
    merge_tol
        Ridgeline ratio from which two components are one cluster; ``None`` keeps
        :func:`dhaka.cluster.gmm_bic`'s default.

    Returns
    -------
    dhaka.cluster.GMMResult
        ``.labels`` the clone calls, ``.k`` their number, ``.n_components`` BIC's choice.
    """
    from dhaka.cluster import gmm_bic

    kw = {} if merge_tol is None else {"merge_tol": float(merge_tol)}
    return gmm_bic(np.asarray(Z, dtype=np.float64), k_max=k_max, seed=seed, merge=True,
                   min_cluster_size=min_cluster_size, **kw)


# ----------------------------------------------------------------------------- ploidy
@dataclass
class PloidyResult:
    """Outcome of :func:`relative_ploidy`.

    Attributes
    ----------
    relative
        The profiles rescaled to the common ``baseline`` ploidy: ``profiles * baseline / ploidy``
        (float64, cells x bins). A doubled cell and its undoubled sister get the same profile.
    ploidy
        Each cell's ploidy: its mean or modal state (see ``method``).
    ratio
        ``ploidy`` relative to the sample's reference ploidy (the median ploidy of the cells not
        called doubled); about 2 for a whole-genome-doubled cell.
    doubled
        Cells called whole-genome doubled (bool).
    reference
        The reference ploidy.
    method
        ``"mean"`` or ``"modal"``.
    """

    relative: np.ndarray
    ploidy: np.ndarray
    ratio: np.ndarray
    doubled: np.ndarray
    reference: float
    method: str


def cell_ploidy(profiles, *, method: Literal["mean", "modal"] = "mean") -> np.ndarray:
    """Ploidy of every cell: the mean state over bins, or the most common (rounded) state.

    ``"modal"`` is the usual definition for integer state calls; ``"mean"`` varies smoothly with
    the events a cell carries and never jumps between two near-equal modes. A cell whose ploidy is
    0 (every bin lost: a failed cell) gets the smallest positive ploidy of the sample, so it is
    not divided by zero.
    """
    import scipy.sparse as sp

    X = profiles.toarray() if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float64)
    if X.ndim != 2 or X.shape[1] == 0:
        raise ValueError(f"profiles must be cells x bins with at least one bin, got shape {X.shape}")
    if not np.all(np.isfinite(X)):
        raise ValueError("profiles contain NaN or infinite states")
    if np.any(X < 0):
        raise ValueError("copy-number states cannot be negative; relative ploidy needs absolute states, "
                         "not log ratios")
    if method == "mean":
        pl = X.mean(axis=1)
    elif method == "modal":
        R = np.rint(X).astype(np.int64)
        top = int(R.max()) + 1 if R.size else 1
        counts = np.apply_along_axis(lambda r: np.bincount(r, minlength=top), 1, R)
        counts[:, 0] = 0  # a cell is never "mostly nullisomic"; ignore 0 when a positive state exists
        pl = np.where(counts.max(axis=1) > 0, counts.argmax(axis=1), 0).astype(np.float64)
    else:
        raise ValueError(f"method must be 'mean' or 'modal', got {method!r}")
    positive = pl[pl > 0]
    floor = float(positive.min()) if positive.size else 1.0
    return np.where(pl > 0, pl, floor)


def relative_ploidy(
    profiles,
    *,
    method: Literal["mean", "modal"] = "mean",
    baseline: float = 2.0,
    doubling_ratio: float = 1.5,
) -> PloidyResult:
    """Copy-number states relative to each cell's ploidy, and whole-genome doubling as its own call.

    A whole-genome doubling multiplies every state of a cell by two, which moves the cell far from
    its clone in any embedding of the raw states: a clone caller then reports "doubled cells" and
    "undoubled cells" as two clones, or mixes doubled cells of different clones. Dividing each
    profile by the cell's ploidy (and multiplying by ``baseline``) removes that shift while keeping
    every relative gain and loss; the doubling is reported separately (``doubled``, ``ratio``).

    Doubling call: cells whose ploidy exceeds ``doubling_ratio`` x the reference ploidy, where
    the reference is found from the data: the log2 ploidies are split at their widest gap; when
    that gap exceeds ``log2(doubling_ratio) / 2`` and the upper side is at least
    ``doubling_ratio`` x the lower side's median, the reference is the lower side's median, else
    the median of all cells (nobody doubled unless far above it).

    Parameters
    ----------
    profiles
        Cells x bins absolute copy-number states (non-negative; dense or sparse).
    method
        Ploidy of a cell: ``"mean"`` state (default) or ``"modal"`` state (:func:`cell_ploidy`).
    baseline
        Ploidy the relative profiles are expressed in (2: a diploid scale).
    doubling_ratio
        Ploidy ratio from which a cell is called doubled.

    Returns
    -------
    PloidyResult
    """
    import scipy.sparse as sp

    if not baseline > 0:
        raise ValueError(f"baseline must be positive, got {baseline}")
    if not doubling_ratio > 1:
        raise ValueError(f"doubling_ratio must be above 1, got {doubling_ratio}")
    X = profiles.toarray() if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float64)
    pl = cell_ploidy(X, method=method)
    lp = np.log2(pl)
    ref = float(np.median(pl))
    if pl.size >= 2:
        order = np.sort(lp)
        gaps = np.diff(order)
        i = int(np.argmax(gaps))
        lower = order[: i + 1]
        if gaps[i] > np.log2(doubling_ratio) / 2 and order[i + 1] - np.median(lower) >= np.log2(doubling_ratio):
            ref = float(2.0 ** np.median(lower))
    ratio = pl / ref
    doubled = ratio >= doubling_ratio
    relative = X * (baseline / pl)[:, None]
    return PloidyResult(relative=relative, ploidy=pl, ratio=ratio, doubled=doubled, reference=ref,
                        method=method)


def _subsample(n: int, clusters: np.ndarray | None, max_cells: int, seed: int) -> np.ndarray:
    if n <= max_cells:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    if clusters is None:
        return np.sort(rng.choice(n, max_cells, replace=False))
    keep = []
    for c in pd.unique(clusters):
        idx = np.flatnonzero(clusters == c)
        m = max(1, int(round(max_cells * idx.size / n)))
        keep.append(rng.choice(idx, min(m, idx.size), replace=False))
    return np.sort(np.concatenate(keep))


def figure_heatmap(
    profiles,
    *,
    var=None,
    clusters: Sequence | None = None,
    order: Literal["hierarchical", "cluster", "none"] = "hierarchical",
    max_cells: int = 1500,
    max_bins: int = 3000,
    zmid: float | None = None,
    colorscale: str = "RdBu_r",
    seed: int = 0,
    title: str | None = None,
) -> "go.Figure":
    """Genome-ordered copy-number heatmap with chromosome boundaries and a cluster colour bar.

    Parameters
    ----------
    profiles
        Cells x bins copy-number values.
    var
        ``adata.var`` or bin names, for genome order and chromosome labels (``None``: file order).
    clusters
        Cluster label per cell (e.g. GMM calls), drawn as a colour bar left of the heatmap.
    order
        Row order: ``"hierarchical"`` (Ward leaf order over all cells), ``"cluster"`` (grouped
        by cluster, hierarchical within each), or ``"none"`` (input order).
    max_cells
        Draw at most this many cells (a stratified random subset by cluster).
    max_bins
        Average adjacent bins (within a chromosome run) down to about this many columns.
    zmid
        Colour midpoint; default the median value (the ploidy baseline).
    colorscale
        Plotly colour scale for the profiles.
    seed
        Seed of the subsample.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
        Two heatmaps side by side (cluster bar, profiles); ``layout.meta`` holds
        ``row_order`` (cell positions drawn, top to bottom) and ``col_order`` (bin positions).
    """
    import plotly.graph_objects as go
    import scipy.sparse as sp
    from plotly.subplots import make_subplots

    X = profiles.toarray() if sp.issparse(profiles) else np.asarray(profiles, dtype=np.float64)
    n, nb = X.shape
    cl = None if clusters is None else np.asarray(clusters)
    if cl is not None and cl.shape[0] != n:
        raise ValueError(f"{cl.shape[0]} cluster labels for {n} cells")
    names = var if var is not None else [f"bin_{i}" for i in range(nb)]
    info = parse_bins(names)
    if len(info) != nb:
        raise ValueError(f"{len(info)} bin names for {nb} columns")
    cols = genome_order(names) if var is not None else np.arange(nb)

    rows = _subsample(n, cl, max_cells, seed)
    Xs = X[rows][:, cols]
    if order == "hierarchical":
        rows = rows[cluster_order(Xs)]
    elif order == "cluster" and cl is not None:
        parts = []
        for c in sorted(pd.unique(cl[rows]), key=str):
            r = rows[cl[rows] == c]
            parts.append(r[cluster_order(X[r][:, cols])])
        rows = np.concatenate(parts)
    Xs = X[rows][:, cols]

    chrom = info["chrom"].to_numpy()[cols]
    chrom = np.array(["?" if c is None else str(c) for c in chrom])
    # bin averaging within chromosome runs
    step = int(np.ceil(nb / max_bins)) if nb > max_bins else 1
    run_id = np.cumsum(np.r_[True, chrom[1:] != chrom[:-1]])
    if step > 1:
        grp = np.zeros(nb, dtype=int)
        g = 0
        for r in np.unique(run_id):
            idx = np.flatnonzero(run_id == r)
            grp[idx] = g + np.arange(idx.size) // step
            g = grp[idx].max() + 1
        Xs = np.stack([Xs[:, grp == j].mean(1) for j in range(g)], axis=1)
        chrom = np.array([chrom[grp == j][0] for j in range(g)])
        run_id = np.cumsum(np.r_[True, chrom[1:] != chrom[:-1]])
    ncol = Xs.shape[1]
    xs = np.arange(ncol)

    fig = make_subplots(rows=1, cols=2, column_widths=[0.03, 0.97], shared_yaxes=True,
                        horizontal_spacing=0.005)
    if cl is not None:
        cats = sorted(pd.unique(cl), key=str)
        code = {c: i for i, c in enumerate(cats)}
        from plotly.colors import qualitative

        pal = qualitative.Plotly + qualitative.D3 + qualitative.Set3
        nc = max(len(cats), 1)
        scale = []
        for i in range(nc):
            colour = pal[i % len(pal)]
            scale += [(i / nc, colour), ((i + 1) / nc, colour)]
        z = np.array([[code[c]] for c in cl[rows]], dtype=float)
        fig.add_trace(go.Heatmap(
            z=z, x=["cluster"], y=np.arange(len(rows)), colorscale=scale, zmin=-0.5, zmax=nc - 0.5,
            showscale=False, customdata=np.array([[str(c)] for c in cl[rows]]),
            hovertemplate="cell %{y}<br>cluster %{customdata}<extra></extra>",
        ), row=1, col=1)
    fig.add_trace(go.Heatmap(
        z=Xs, x=xs, y=np.arange(len(rows)), colorscale=colorscale,
        zmid=float(np.median(Xs)) if zmid is None else zmid,
        colorbar=dict(title="copy number"),
        customdata=np.broadcast_to(chrom[None, :], Xs.shape),
        hovertemplate="cell %{y}<br>chr%{customdata} col %{x}<br>value %{z:.2f}<extra></extra>",
    ), row=1, col=2)
    # chromosome boundaries and labels
    starts = np.flatnonzero(np.r_[True, run_id[1:] != run_id[:-1]])
    ends = np.r_[starts[1:], ncol]
    for s in starts[1:]:
        fig.add_vline(x=s - 0.5, line_width=1, line_color="black", row=1, col=2)
    fig.update_xaxes(tickmode="array", tickvals=((starts + ends - 1) / 2.0).tolist(),
                     ticktext=[chrom[s] for s in starts], tickangle=0, row=1, col=2)
    fig.update_xaxes(showticklabels=False, row=1, col=1)
    fig.update_yaxes(autorange="reversed", showticklabels=False, title_text="cells", row=1, col=1)
    fig.update_layout(title=title or "Copy-number profiles (genome order)", template="plotly_white",
                      meta=dict(row_order=rows.tolist(), col_order=cols.tolist()),
                      height=max(350, min(900, 2 * len(rows) + 150)))
    return fig
