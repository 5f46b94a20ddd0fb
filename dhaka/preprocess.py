"""Preprocessing: pure functions that never densify a sparse matrix.

The default expression pipeline is::

    counts --normalize_total--> counts per median library --log2(x+1)--> select_genes --> centre

* **What is detected** (:func:`detect_kind`): raw counts (non-negative integers),
  normalised values (non-negative, non-integer, large range: TPM / RPKM / CPM),
  log values (non-negative, max <= 30), scaled values (negatives present), or
  copy-number states (``mode="cnv"``). Normalisation and log are applied only
  where they are missing; the user can override both.
* **Relative expression** (the paper's Er = E - mean): each *gene* is centred
  over *cells* (the per-gene mean over the training cells is subtracted). It is
  applied inside the model (buffers ``center``/``scale``), so sparse inputs stay
  sparse and a projected second sample is centred with the first sample's means.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import numpy as np
import scipy.sparse as sp

Matrix = np.ndarray | sp.spmatrix
Kind = Literal["counts", "normalized", "log", "scaled", "cnv"]
GeneSelection = Literal["cv", "entropy", "mean", "variance", "dispersion"]


@dataclass(frozen=True)
class InputKind:
    """What the values look like, and what the default pipeline will do about it."""

    kind: Kind
    reason: str
    normalize: bool
    log: bool

    def describe(self) -> str:
        steps = [s for s, on in (("library-size normalisation", self.normalize), ("log2(x+1)", self.log)) if on]
        return f"{self.kind}: {self.reason}. Pipeline applies: {', '.join(steps) or 'no transformation'}."


def _values_sample(X: Matrix, max_values: int = 200_000, seed: int = 0) -> np.ndarray:
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size > max_values:
        data = np.random.default_rng(seed).choice(data, max_values, replace=False)
    return np.asarray(data, dtype=np.float64)


def detect_kind(X: Matrix, *, mode: Literal["expression", "cnv"] = "expression") -> InputKind:
    """Guess whether ``X`` holds raw counts, normalised values, log values or scaled values."""
    if mode == "cnv":
        return InputKind("cnv", "copy-number mode: states are used as given", False, False)
    if sp.issparse(X):
        vmin = min(float(X.data.min()), 0.0) if X.nnz else 0.0
        if X.nnz < X.shape[0] * X.shape[1]:
            vmin = min(vmin, 0.0)
    else:
        vmin = float(np.min(X)) if np.size(X) else 0.0
    v = _values_sample(X)
    v = v[np.isfinite(v)]
    vmax = float(v.max()) if v.size else 0.0
    if vmin < 0:
        return InputKind("scaled", f"negative values present (min {vmin:.3g}): already centred or scaled", False, False)
    nz = v[v != 0]
    integer = nz.size > 0 and bool(np.all(np.abs(nz - np.round(nz)) < 1e-6))
    if integer and vmax > 1:
        return InputKind("counts", f"non-negative integers up to {vmax:.0f}", True, True)
    if vmax > 30:
        return InputKind("normalized", f"non-negative non-integers up to {vmax:.3g} (TPM/CPM-like)", False, True)
    return InputKind("log", f"non-negative values up to {vmax:.3g}: already log-transformed", False, False)


def library_size(X: Matrix) -> np.ndarray:
    """Total of each row (cell)."""
    return np.asarray(X.sum(axis=1)).ravel().astype(np.float64)


def normalize_total(X: Matrix, *, target_sum: float | None = None) -> tuple[Matrix, float]:
    """Scale each cell to ``target_sum`` (default: the median library size). Returns (X, target_sum)."""
    sizes = library_size(X)
    if target_sum is None:
        positive = sizes[sizes > 0]
        target_sum = float(np.median(positive)) if positive.size else 1.0
    factors = np.divide(target_sum, sizes, out=np.zeros_like(sizes), where=sizes > 0)
    if sp.issparse(X):
        return sp.csr_matrix(sp.diags(factors.astype(np.float32)) @ X, dtype=np.float32), target_sum
    return (np.asarray(X, dtype=np.float32) * factors[:, None].astype(np.float32)), target_sum


def log2p(X: Matrix) -> Matrix:
    """log2(x + 1), keeping sparsity."""
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float32, copy=True)
        np.log1p(out.data, out=out.data)
        out.data /= np.float32(np.log(2.0))
        return out
    return (np.log1p(np.asarray(X, dtype=np.float32)) / np.float32(np.log(2.0))).astype(np.float32)


def column_moments(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) variance without densifying."""
    n = X.shape[0]
    if sp.issparse(X):
        sq = sp.csr_matrix(X, dtype=np.float64, copy=True)
        mean = np.asarray(sq.mean(axis=0)).ravel()
        sq.data **= 2
        var = np.asarray(sq.mean(axis=0)).ravel() - mean**2
    else:
        Xd = np.asarray(X, dtype=np.float64)
        mean, var = Xd.mean(0), Xd.var(0)
    return mean, np.maximum(var, 0.0) * (1.0 if n else 0.0)


def relative_expression(X: Matrix) -> np.ndarray:
    """The paper's relative expression Er = E - mean: each gene centred over cells (dense result)."""
    mean, _ = column_moments(X)
    dense = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    return (dense - mean).astype(np.float32)


def dropout_fraction(X: Matrix) -> np.ndarray:
    """Fraction of cells in which each gene is zero."""
    n = X.shape[0]
    if sp.issparse(X):
        csr = sp.csr_matrix(X)
        # explicitly stored zeros count as dropout too
        nz = np.bincount(csr.indices[csr.data != 0], minlength=X.shape[1])
    else:
        nz = np.count_nonzero(np.asarray(X), axis=0)
    return 1.0 - nz / max(n, 1)


def _entropy(X: Matrix, bins: int = 20, chunk: int = 512) -> np.ndarray:
    """Shannon entropy (bits) of each gene's histogram of values over cells, ``bins`` equal-width bins."""
    csc = sp.csc_matrix(X) if sp.issparse(X) else None
    n, g = X.shape
    out = np.zeros(g)
    for j0 in range(0, g, chunk):
        j1 = min(g, j0 + chunk)
        block = csc[:, j0:j1].toarray() if csc is not None else np.asarray(X[:, j0:j1], dtype=np.float64)
        lo, hi = block.min(0), block.max(0)
        width = np.where(hi > lo, hi - lo, 1.0)
        idx = np.minimum(((block - lo) / width * bins).astype(np.int64), bins - 1)
        counts = np.zeros((bins, j1 - j0))
        np.add.at(counts, (idx, np.broadcast_to(np.arange(j1 - j0), idx.shape)), 1)
        p = counts / max(n, 1)
        with np.errstate(divide="ignore", invalid="ignore"):
            out[j0:j1] = -np.nansum(np.where(p > 0, p * np.log2(p), 0.0), axis=0)
    return out


def gene_scores(X: Matrix, *, method: GeneSelection = "cv") -> np.ndarray:
    """Score every gene for selection: higher is kept first."""
    mean, var = column_moments(X)
    if method == "cv":
        sd = np.sqrt(var)
        return np.divide(sd, np.abs(mean), out=np.zeros_like(sd), where=np.abs(mean) > 1e-12)
    if method == "mean":
        return mean
    if method == "variance":
        return var
    if method == "entropy":
        return _entropy(X)
    if method == "dispersion":
        return _binned_dispersion(mean, var)
    raise ValueError(f"gene selection must be 'cv', 'entropy', 'mean', 'variance' or 'dispersion', got {method!r}")


def _binned_dispersion(mean: np.ndarray, var: np.ndarray, n_bins: int = 20) -> np.ndarray:
    """Dispersion (var / mean) z-scored within bins of mean expression (Satija et al. 2015).

    Unlike the raw coefficient of variation, it does not favour rarely detected genes whose
    high CV is sampling noise: each gene competes only with genes of similar mean.
    """
    disp = np.divide(var, mean, out=np.zeros_like(var), where=mean > 1e-12)
    edges = np.quantile(mean, np.linspace(0, 1, n_bins + 1))
    which = np.clip(np.searchsorted(edges, mean, side="right") - 1, 0, n_bins - 1)
    z = np.zeros_like(disp)
    for b in np.unique(which):
        m = which == b
        sd = disp[m].std()
        z[m] = (disp[m] - disp[m].mean()) / sd if sd > 0 else 0.0
    return z


def select_genes(
    X: Matrix,
    *,
    n_genes: int | None,
    method: GeneSelection = "cv",
    min_cells: int = 3,
) -> np.ndarray:
    """Column indices of the top ``n_genes`` genes by ``method`` (in original column order).

    Genes detected (non-zero) in fewer than ``min_cells`` cells and constant genes are never
    selected while enough other genes exist: the coefficient of variation of a gene seen in
    one cell is maximal and meaningless.
    """
    n, g = X.shape
    if n_genes is None or n_genes >= g:
        return np.arange(g)
    if n_genes < 1:
        raise ValueError(f"n_genes must be at least 1, got {n_genes}")
    scores = gene_scores(X, method=method).astype(np.float64)
    scores[~np.isfinite(scores)] = -np.inf
    _, var = column_moments(X)
    eligible = _eligible(X, var, min_cells=min_cells)
    if eligible.sum() >= n_genes:
        scores = np.where(eligible, scores, -np.inf)
    top = np.argsort(-scores, kind="stable")[:n_genes]
    return np.sort(top)


def _eligible(X: Matrix, var: np.ndarray, *, min_cells: int) -> np.ndarray:
    """Genes that may be selected: not constant, and detected in at least ``min_cells`` cells."""
    n = X.shape[0]
    return (var > 0) & (n - dropout_fraction(X) * n >= min(min_cells, n))


def inject_dropout(X: Matrix, *, fraction: float, seed: int = 0) -> Matrix:
    """Set ``fraction`` of each cell's non-zero values to zero (seeded), like paper Fig. 3."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"dropout fraction must be in [0, 1), got {fraction}")
    rng = np.random.default_rng(seed)
    if sp.issparse(X):
        out = sp.csr_matrix(X, copy=True)
        for i in range(out.shape[0]):
            a, b = out.indptr[i], out.indptr[i + 1]
            nzpos = a + np.flatnonzero(out.data[a:b])
            k = int(round(fraction * nzpos.size))
            if k:
                out.data[rng.choice(nzpos, k, replace=False)] = 0
        out.eliminate_zeros()
        return out
    out = np.array(X, copy=True)
    for i in range(out.shape[0]):
        nzpos = np.flatnonzero(out[i])
        k = int(round(fraction * nzpos.size))
        if k:
            out[i, rng.choice(nzpos, k, replace=False)] = 0
    return out


@dataclass(frozen=True)
class LatentSelection:
    """Genes a latent space explains (:func:`select_by_latent`)."""

    indices: np.ndarray      # kept column indices, in column order
    r2: np.ndarray           # per-column fraction of variance explained by the latent (0 where ineligible)
    threshold: float         # R^2 above which a gene is significant (Bonferroni over eligible genes)
    n_significant: int       # genes above the threshold (before min/max limits)


def _latent_basis(Z: np.ndarray, n: int) -> np.ndarray:
    """Orthonormal basis (cells x rank) of the centred latent coordinates; rank 0 if collapsed."""
    Z = np.asarray(Z, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[0] != n:
        raise ValueError(f"Z must be cells x latent with {n} rows, got shape {Z.shape}")
    Q, R = np.linalg.qr(Z - Z.mean(0))
    d = np.abs(np.diag(R))
    if d.size == 0 or float(d.max()) < 1e-10:
        return np.zeros((n, 0))
    return Q[:, d > 1e-6 * float(d.max())]


def latent_r2(X: Matrix, Z: np.ndarray) -> np.ndarray:
    """Per column of ``X``, the fraction of its variance explained by a linear fit on ``Z``.

    Sparse-safe: only ``X.T @ Q`` (genes x latent) is formed, ``Q`` an orthonormal basis of the
    centred latent coordinates; because ``Q`` is orthogonal to the constant vector, the
    column means of ``X`` need not be subtracted. Latent directions with (numerically) no
    spread are dropped; a fully collapsed latent explains nothing (all zeros).
    """
    _, var = column_moments(X)
    return _r2_on_basis(X, _latent_basis(Z, X.shape[0]), var)


def _r2_on_basis(X: Matrix, Q: np.ndarray, var: np.ndarray) -> np.ndarray:
    """R^2 of every column of ``X`` (population variances ``var``) on the orthonormal basis ``Q``."""
    if Q.shape[1] == 0:
        return np.zeros(X.shape[1])
    proj = np.asarray(X.T @ Q) if sp.issparse(X) else np.asarray(X, dtype=np.float64).T @ Q
    explained = (proj**2).sum(1)
    total = var * X.shape[0]
    return np.divide(explained, total, out=np.zeros_like(explained), where=total > 1e-12).clip(0.0, 1.0)


def select_by_latent(
    X: Matrix,
    Z: np.ndarray,
    *,
    alpha: float = 0.01,
    min_genes: int = 100,
    max_genes: int | None = None,
    min_cells: int = 3,
) -> LatentSelection:
    """Genes whose variance the latent space explains beyond chance (latent-guided selection).

    For every gene the R^2 of a linear fit on the latent coordinates ``Z`` is compared with
    its null distribution for a gene unrelated to the latent, Beta(p/2, (n-p-1)/2) (``p``
    latent dimensions, ``n`` cells), at level ``alpha`` Bonferroni-corrected over the eligible
    genes (detected in at least ``min_cells`` cells, not constant). The significant genes are
    kept, at least ``min_genes`` and at most ``max_genes`` of them (topped up or cut by R^2).

    Why: with weak group signal among many noise genes, variance-type scores (CV, dispersion)
    cannot tell the few informative genes from the noise, but a first latent space, even one
    whose clusters are poor, correlates with them; refitting on the genes it explains
    concentrates the signal (``Dhaka(refine=...)``; bench/RESULTS.md, section quality).
    """
    from scipy import stats

    if not 0 < alpha < 1:
        raise ValueError(f"alpha must be in (0, 1), got {alpha}")
    n, g = X.shape
    _, var = column_moments(X)
    Q = _latent_basis(Z, n)
    eligible = _eligible(X, var, min_cells=min_cells)
    r2 = np.where(eligible, _r2_on_basis(X, Q, var), 0.0)
    p = Q.shape[1]
    n_elig = int(eligible.sum())
    if p < 1 or n - p - 1 < 1 or n_elig == 0:
        threshold = float("inf")
    else:
        threshold = float(stats.beta.isf(alpha / n_elig, p / 2.0, (n - p - 1) / 2.0))
    significant = np.flatnonzero(r2 > threshold)
    hi = g if max_genes is None else min(int(max_genes), g)
    lo = min(int(min_genes), hi, n_elig if n_elig else g)
    n_keep = int(np.clip(len(significant), lo, hi))
    order = np.argsort(-r2, kind="stable")
    return LatentSelection(indices=np.sort(order[:n_keep]), r2=r2, threshold=threshold,
                           n_significant=int(len(significant)))
