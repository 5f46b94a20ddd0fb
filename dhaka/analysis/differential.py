"""Differential expression between two groups of cells.

Welch's t-test or the Wilcoxon rank-sum (Mann-Whitney U) test for every gene,
with Benjamini-Hochberg adjusted p-values and a log2 fold change. Sparse input
is never densified as a whole: per-gene moments come from sparse operations and
the rank test densifies one block of gene columns (only the cells of the two
groups) at a time.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Literal, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp
from scipy import stats

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["differential_expression", "prepare_expression", "benjamini_hochberg", "group_mask", "figure_volcano"]

COLUMNS = ["gene", "mean_a", "mean_b", "log2fc", "statistic", "pvalue", "padj"]


def group_mask(group, n_cells: int, *, obs_names: Sequence[str] | None = None) -> np.ndarray:
    """Turn a group description into a boolean mask over cells.

    Parameters
    ----------
    group
        Boolean mask of length ``n_cells``, integer positions, or cell names
        (then ``obs_names`` is required).
    n_cells
        Number of cells.
    obs_names
        Cell names, used when ``group`` holds strings.

    Returns
    -------
    numpy.ndarray
        Boolean mask of shape ``(n_cells,)``.
    """
    arr = np.asarray(group)
    if arr.dtype == bool:
        if arr.shape != (n_cells,):
            raise ValueError(f"boolean group mask has length {arr.size}, expected {n_cells} cells")
        return arr.copy()
    mask = np.zeros(n_cells, dtype=bool)
    if arr.size == 0:
        return mask
    if arr.dtype.kind in "iu":
        if arr.min() < -n_cells or arr.max() >= n_cells:
            raise ValueError(f"group holds cell positions outside 0..{n_cells - 1}")
        mask[arr] = True
        return mask
    if obs_names is None:
        raise ValueError("group holds cell names; pass obs_names to resolve them")
    pos = pd.Index(obs_names).get_indexer(arr.astype(str))
    if (pos < 0).any():
        missing = arr[pos < 0][:5].tolist()
        raise ValueError(f"{int((pos < 0).sum())} cell names not found, e.g. {missing}")
    mask[pos] = True
    return mask


def prepare_expression(X, *, mode: Literal["expression", "cnv"] = "expression") -> tuple[object, str]:
    """Put expression on a log2 scale for testing, as the estimator would (sparse stays sparse).

    Counts are library-size normalised (to the median library size) and log2(x+1)-transformed,
    normalised values are log2(x+1)-transformed, log or scaled values and copy-number states are
    used as given (see :func:`dhaka.preprocess.detect_kind`).

    Parameters
    ----------
    X
        Cells x genes.
    mode
        ``"expression"`` or ``"cnv"``.

    Returns
    -------
    matrix, scale
        The matrix to test and the ``scale`` to pass to :func:`differential_expression`
        (``"log"``, or ``"linear"`` for copy-number states).
    """
    from dhaka.preprocess import Preprocessor

    if mode == "cnv":
        return X, "linear"
    pre = Preprocessor(mode=mode, value_transform="log").fit_steps(X)  # fold changes are read on the log scale
    return pre.apply_steps(X), "log"


def benjamini_hochberg(pvalues: np.ndarray) -> np.ndarray:
    """Benjamini-Hochberg adjusted p-values (NaN stays NaN and is not counted).

    Parameters
    ----------
    pvalues
        Raw p-values.

    Returns
    -------
    numpy.ndarray
        Adjusted p-values, monotone in the raw p-values and capped at 1.
    """
    p = np.asarray(pvalues, dtype=float)
    out = np.full(p.shape, np.nan)
    ok = np.isfinite(p)
    m = int(ok.sum())
    if m == 0:
        return out
    pv = p[ok]
    order = np.argsort(pv)
    ranked = pv[order] * m / np.arange(1, m + 1)
    adj = np.minimum.accumulate(ranked[::-1])[::-1]
    res = np.empty(m)
    res[order] = np.clip(adj, 0.0, 1.0)
    out[ok] = res
    return out


def _moments(X, mask: np.ndarray) -> tuple[np.ndarray, np.ndarray, int]:
    """Per-gene mean and unbiased variance of the rows in ``mask`` without densifying."""
    sub = X[mask]
    n = sub.shape[0]
    if sp.issparse(sub):
        sub = sp.csr_matrix(sub, dtype=np.float64)
        mean = np.asarray(sub.mean(axis=0)).ravel()
        sq = np.asarray(sub.multiply(sub).mean(axis=0)).ravel()
        var = np.maximum(sq - mean**2, 0.0)
    else:
        sub = np.asarray(sub, dtype=np.float64)
        mean = sub.mean(axis=0)
        var = sub.var(axis=0)
    if n > 1:
        var = var * n / (n - 1)
    else:
        var = np.full_like(mean, np.nan)
    return mean, var, n


def _welch(ma, va, na, mb, vb, nb) -> tuple[np.ndarray, np.ndarray]:
    with np.errstate(divide="ignore", invalid="ignore"):
        sa, sb = va / na, vb / nb
        se2 = sa + sb
        t = (ma - mb) / np.sqrt(se2)
        df = se2**2 / (sa**2 / (na - 1) + sb**2 / (nb - 1))
        p = 2.0 * stats.t.sf(np.abs(t), df)
    same = (se2 == 0) & (ma == mb)
    t[same] = 0.0
    p[same] = 1.0
    diff = (se2 == 0) & (ma != mb)
    t[diff] = np.sign(ma - mb)[diff] * np.inf
    p[diff] = 0.0
    return t, p


def _wilcoxon(X, mask_a, mask_b, *, chunk_cells: int) -> tuple[np.ndarray, np.ndarray]:
    n_genes = X.shape[1]
    rows = mask_a | mask_b
    in_a = mask_a[rows]
    sub = X[rows]
    if sp.issparse(sub):
        sub = sp.csc_matrix(sub)
    n = int(rows.sum())
    step = max(1, int(chunk_cells // max(n, 1)))
    U = np.empty(n_genes)
    P = np.empty(n_genes)
    for start in range(0, n_genes, step):
        stop = min(start + step, n_genes)
        block = sub[:, start:stop]
        block = block.toarray() if sp.issparse(block) else np.asarray(block)
        block = block.astype(np.float64, copy=False)
        with np.errstate(divide="ignore", invalid="ignore"):
            res = stats.mannwhitneyu(block[in_a], block[~in_a], axis=0, alternative="two-sided",
                                     method="asymptotic", use_continuity=True)
        U[start:stop] = res.statistic
        P[start:stop] = res.pvalue
    P[~np.isfinite(P)] = 1.0  # a gene constant over both groups carries no evidence
    return U, P


def _log2fc(ma, mb, *, scale: str, pseudocount: float) -> np.ndarray:
    if scale == "log":
        return ma - mb
    return np.log2((ma + pseudocount) / (mb + pseudocount))


def _guess_scale(X) -> Literal["linear", "log"]:
    """``"linear"`` for counts and normalised values, ``"log"`` for log or scaled values
    (:func:`dhaka.preprocess.detect_kind`, the estimator's rule)."""
    from dhaka.preprocess import detect_kind

    if (X.nnz if sp.issparse(X) else np.size(X)) == 0:
        return "linear"
    return "linear" if detect_kind(X).kind in ("counts", "normalized") else "log"


def differential_expression(
    X,
    group_a,
    group_b=None,
    *,
    genes: Sequence[str] | None = None,
    method: Literal["welch", "wilcoxon"] = "welch",
    scale: Literal["auto", "linear", "log"] = "auto",
    pseudocount: float = 1.0,
    obs_names: Sequence[str] | None = None,
    chunk_cells: int = 2_000_000,
) -> pd.DataFrame:
    """Test every gene for a difference between two groups of cells.

    Parameters
    ----------
    X
        Cells x genes matrix (numpy array or scipy.sparse). Never densified as a whole.
    group_a
        First group: boolean mask, integer positions or cell names.
    group_b
        Second group, same forms; ``None`` means every cell not in ``group_a`` (the rest).
    genes
        Gene names (length ``n_genes``); defaults to ``gene_0 ...``.
    method
        ``"welch"`` (Welch's unequal-variance t-test) or ``"wilcoxon"``
        (two-sided Mann-Whitney U, normal approximation with tie correction).
    scale
        How ``log2fc`` is computed. ``"linear"``: ``log2((mean_a + pseudocount) / (mean_b + pseudocount))``
        (counts or normalised values); ``"log"``: ``mean_a - mean_b`` (data already on a log2
        scale, or centred). ``"auto"``: ``"log"`` when there are negative values or the values
        are small non-integers, otherwise ``"linear"``.
    pseudocount
        Added to both means for the linear-scale fold change.
    obs_names
        Cell names, needed when the groups are given as names.
    chunk_cells
        Rough number of matrix entries densified at once by the rank test.

    Returns
    -------
    pandas.DataFrame
        One row per gene, in input order, with columns ``gene, mean_a, mean_b, log2fc,
        statistic, pvalue, padj`` (``statistic`` is t for Welch, U of group a for Wilcoxon;
        ``padj`` is Benjamini-Hochberg over all genes). ``df.attrs`` records
        ``method, scale, n_a, n_b``.

    Raises
    ------
    ValueError
        When a group has fewer than two cells, the groups overlap, or names do not match.
    """
    if not sp.issparse(X):
        X = np.asarray(X)
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (cells x genes), got shape {X.shape}")
    n_cells, n_genes = X.shape
    mask_a = group_mask(group_a, n_cells, obs_names=obs_names)
    mask_b = ~mask_a if group_b is None else group_mask(group_b, n_cells, obs_names=obs_names)
    if (mask_a & mask_b).any():
        raise ValueError(f"the two groups share {int((mask_a & mask_b).sum())} cells; they must be disjoint")
    na, nb = int(mask_a.sum()), int(mask_b.sum())
    if na < 2 or nb < 2:
        raise ValueError(f"each group needs at least 2 cells (group A has {na}, group B has {nb})")
    if genes is None:
        genes = [f"gene_{i}" for i in range(n_genes)]
    genes = np.asarray(genes, dtype=object)
    if genes.shape[0] != n_genes:
        raise ValueError(f"{genes.shape[0]} gene names for {n_genes} columns")
    if method not in ("welch", "wilcoxon"):
        raise ValueError(f"method must be 'welch' or 'wilcoxon', got {method!r}")
    if sp.issparse(X) and not sp.isspmatrix_csr(X):
        X = sp.csr_matrix(X)

    ma, va, _ = _moments(X, mask_a)
    mb, vb, _ = _moments(X, mask_b)
    if method == "welch":
        stat, p = _welch(ma, va, na, mb, vb, nb)
    else:
        stat, p = _wilcoxon(X, mask_a, mask_b, chunk_cells=chunk_cells)
    used_scale = _guess_scale(X) if scale == "auto" else scale
    df = pd.DataFrame({
        "gene": genes,
        "mean_a": ma,
        "mean_b": mb,
        "log2fc": _log2fc(ma, mb, scale=used_scale, pseudocount=pseudocount),
        "statistic": stat,
        "pvalue": p,
        "padj": benjamini_hochberg(p),
    }, columns=COLUMNS)
    df.attrs.update(method=method, scale=used_scale, n_a=na, n_b=nb)
    return df


def figure_volcano(
    df: pd.DataFrame,
    *,
    padj_threshold: float = 0.05,
    lfc_threshold: float = 1.0,
    n_labels: int = 10,
    title: str | None = None,
) -> "go.Figure":
    """Volcano plot: log2 fold change against -log10 adjusted p-value.

    Parameters
    ----------
    df
        Output of :func:`differential_expression`.
    padj_threshold, lfc_threshold
        Genes with ``padj < padj_threshold`` and ``|log2fc| >= lfc_threshold`` are
        coloured as up (red) or down (blue).
    n_labels
        Label this many of the most significant genes.
    title
        Figure title.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import plotly.graph_objects as go

    padj = df["padj"].to_numpy(dtype=float)
    y = -np.log10(np.clip(np.nan_to_num(padj, nan=1.0), 1e-300, 1.0))
    x = df["log2fc"].to_numpy(dtype=float)
    sig = (padj < padj_threshold) & (np.abs(x) >= lfc_threshold)
    cls = np.where(sig & (x > 0), "up", np.where(sig & (x < 0), "down", "not significant"))
    fig = go.Figure()
    colours = {"not significant": "#b0b0b0", "up": "#d62728", "down": "#1f77b4"}
    for name in ("not significant", "up", "down"):
        m = cls == name
        if not m.any():
            continue
        fig.add_trace(go.Scattergl(
            x=x[m], y=y[m], mode="markers", name=f"{name} ({int(m.sum())})",
            marker=dict(color=colours[name], size=5, opacity=0.75),
            text=df["gene"].to_numpy()[m],
            hovertemplate="%{text}<br>log2FC=%{x:.3f}<br>-log10 padj=%{y:.2f}<extra></extra>",
        ))
    if n_labels > 0 and len(df):
        top = np.argsort(-y, kind="stable")[:n_labels]
        fig.add_trace(go.Scatter(
            x=x[top], y=y[top], mode="text", text=df["gene"].to_numpy()[top].astype(str),
            textposition="top center", showlegend=False, hoverinfo="skip",
        ))
    fig.add_hline(y=-np.log10(padj_threshold), line_dash="dot", line_color="grey")
    for v in (-lfc_threshold, lfc_threshold):
        fig.add_vline(x=v, line_dash="dot", line_color="grey")
    fig.update_layout(
        title=title or "Volcano plot",
        xaxis_title="log2 fold change (A vs B)",
        yaxis_title="-log10 adjusted p-value",
        template="plotly_white",
    )
    return fig
