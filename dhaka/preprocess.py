"""Preprocessing: pure functions that never densify a sparse matrix (except the Pearson residuals, dense by
nature and computed for a gene pool only), and the one :class:`Preprocessor`.

The default expression pipeline is::

    raw counts      --Pearson residuals (theta 100, clip sqrt(n))--> top 2000 genes by residual variance --> centre
    other values    --normalize_total (TPM-like)--> log2(1 + x) --> select_genes (CV) --> centre

(``value_transform="log"`` gives raw counts the second line, with log2(1 + x/2).)

:class:`Preprocessor` is the only place that runs it: the estimator, the out-of-core path
(:mod:`dhaka.backed`, which fits it from streamed column moments), the analyses and the
benchmarks all call it, and a saved model carries it (:meth:`Preprocessor.to_dict`).

* **What is detected** (:func:`detect_kind`): raw counts (non-negative integers),
  normalised values (non-negative, non-integer, max above :data:`LOG_MAX`: TPM / RPKM / CPM),
  log values (non-negative, max <= :data:`LOG_MAX`), scaled values (negatives present), or
  copy-number states (``mode="cnv"``). Normalisation and log are applied only
  where they are missing; the user can override both.
* **Relative expression** (the paper's Er = E - mean): each *gene* is centred
  over *cells* (the per-gene mean over the training cells is subtracted). It is
  applied inside the model (buffers ``center``/``scale``), so sparse inputs stay
  sparse and a projected second sample is centred with the first sample's means.
"""
from __future__ import annotations

import dataclasses
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any, Literal, Sequence

import numpy as np
import scipy.sparse as sp

Matrix = np.ndarray | sp.spmatrix
Kind = Literal["counts", "normalized", "log", "scaled", "cnv"]
GeneSelection = Literal["cv", "entropy", "mean", "variance", "dispersion"]
Scale = Literal["global", "gene", "none", "minmax"]
GENE_SELECTIONS: tuple[str, ...] = ("cv", "entropy", "mean", "variance", "dispersion")
SCALES: tuple[str, ...] = ("global", "gene", "none", "minmax")
#: Largest value still read as log-transformed: log2(x + 1) stays below 30 unless x exceeds 1e9,
#: while TPM / CPM / RPKM matrices reach thousands. (``analysis.differential`` once used 50 for the
#: same question; one threshold now answers it everywhere, and 30 is the one trained models used.)
LOG_MAX = 30.0


@dataclass(frozen=True)
class InputKind:
    """What the values look like, and what the default pipeline will do about it."""

    kind: Kind
    reason: str
    normalize: bool
    log: bool

    def describe(self, pseudocount: float = 1.0, winsorize: float | None = None, transform: str = "log") -> str:
        pearson = transform == "pearson"
        steps = [s for s, on in (("library-size normalisation", self.normalize and not pearson),
                                 (log_label(pseudocount), self.log and not pearson),
                                 (transform_label(transform), pearson),
                                 (trim_label(winsorize), winsorize is not None)) if on]
        return f"{self.kind}: {self.reason}. Pipeline applies: {', '.join(steps) or 'no transformation'}."


def _values_sample(X: Matrix, max_values: int = 200_000, seed: int = 0) -> np.ndarray:
    data = X.data if sp.issparse(X) else np.asarray(X).ravel()
    if data.size > max_values:
        data = np.random.default_rng(seed).choice(data, max_values, replace=False)
    return np.asarray(data, dtype=np.float64)


def detect_kind(X: Matrix, *, mode: Literal["expression", "cnv"] = "expression") -> InputKind:
    """Guess whether ``X`` holds raw counts, normalised values, log values or scaled values."""
    if mode == "cnv":
        return InputKind("cnv", "copy-number mode: states are not normalised or logged", False, False)
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
    if vmax > LOG_MAX:
        return InputKind("normalized", f"non-negative non-integers up to {vmax:.3g} (TPM/CPM-like)", False, True)
    return InputKind("log", f"non-negative values up to {vmax:.3g}: already log-transformed", False, False)


def library_size(X: Matrix) -> np.ndarray:
    """Total of each row (cell)."""
    return np.asarray(X.sum(axis=1)).ravel().astype(np.float64)


def median_library_size(sizes: np.ndarray) -> float:
    """The default normalisation target: the median of the positive library sizes (1 if none)."""
    sizes = np.asarray(sizes)
    positive = sizes[sizes > 0]
    return float(np.median(positive)) if positive.size else 1.0


def size_factors(sizes: np.ndarray, target_sum: float) -> np.ndarray:
    """Per-cell float32 factors that scale each library to ``target_sum`` (0 for empty cells)."""
    sizes = np.asarray(sizes, dtype=np.float64)
    return np.divide(target_sum, sizes, out=np.zeros_like(sizes), where=sizes > 0).astype(np.float32)


def normalize_total(X: Matrix, *, target_sum: float | None = None) -> tuple[Matrix, float]:
    """Scale each cell to ``target_sum`` (default: the median library size). Returns (X, target_sum)."""
    sizes = library_size(X)
    if target_sum is None:
        target_sum = median_library_size(sizes)
    factors = size_factors(sizes, target_sum)
    if sp.issparse(X):
        return sp.csr_matrix(sp.diags(factors) @ X, dtype=np.float32), target_sum
    return (np.asarray(X, dtype=np.float32) * factors[:, None]), target_sum


#: The pseudocount ``log_pseudocount="auto"`` uses on raw counts (expression mode): the shifted logarithm
#: log2(1 + x / 2). On 21 Splatter data sets (7 kinds x 3 seeds, bench/RESULTS.md) it raised the default
#: latent's mean ARI from 0.66 to 0.77 (held-out seed 2: 0.59 -> 0.74); other input keeps log2(x + 1).
COUNTS_PSEUDOCOUNT = 2.0


#: Analytic Pearson residuals (Lause, Berens & Kobak 2021, Genome Biology; scanpy's
#: ``normalize_pearson_residuals``): r = (x - mu) / sqrt(mu + mu^2 / theta) with mu = n_cell * p_gene,
#: clipped to +-sqrt(n_training_cells). ``value_transform="auto"`` uses them on raw counts in expression mode:
#: on 21 Splatter data sets (bench/RESULTS.md) they took the default latent's mean ARI from 0.77 to 0.96
#: (library-size spread 0.74-0.79 -> 0.99-1.00, heavy dropout 0.40-0.60 -> 0.98-1.00, nine groups 0.76-0.86 ->
#: 0.90-1.00), where the shifted log lost groups.
PEARSON_THETA = 100.0
#: Genes whose residuals a fit holds, in multiples of the genes it keeps (the top ones by residual variance
#: among the eligible): residuals are dense, so a 30,000-gene matrix is not expanded whole; gene choice and
#: refinement choose among these (with ``n_genes=None`` all genes are held).
PEARSON_POOL_FACTOR = 2
TRANSFORMS: tuple[str, ...] = ("auto", "log", "pearson")


def resolve_transform(setting: str, kind: "InputKind", mode: str = "expression", *, in_memory: bool = True) -> str:
    """``"pearson"`` or ``"log"`` (the normalise / log steps): ``"auto"`` is Pearson residuals on raw counts in
    expression mode, held in memory; ``"pearson"`` asks for them and names what stands in the way."""
    counts = mode == "expression" and kind.kind == "counts"
    if setting == "auto":
        return "pearson" if counts and in_memory else "log"
    if setting == "pearson":
        if not counts:
            raise ValueError(f"Pearson residuals need raw counts (non-negative integers) in expression mode; "
                             f"this data is {kind.kind} ({kind.reason}): set value_transform='log'")
        if not in_memory:
            raise ValueError("Pearson residuals are computed in memory; for data streamed from disk set "
                             "value_transform='log'")
    return setting


def gene_shares(X: Matrix) -> np.ndarray:
    """Each gene's share of all counts (p_gene of the Pearson residuals' mean n_cell * p_gene), float64."""
    totals = np.asarray(X.sum(axis=0), dtype=np.float64).ravel()
    s = totals.sum()
    return totals / s if s > 0 else np.full(totals.size, 1.0 / max(totals.size, 1))


#: Values per row block of the dense float64 temporaries (2 MB each) of the residuals, dense column moments
#: and latent R^2: float64 accuracy without a float64 copy of the matrix.
ROW_BLOCK_VALUES = 2**18


def _block_rows(n_cols: int, block: int | None = None) -> int:
    """Rows per block of a matrix with ``n_cols`` columns: ``block``, or :data:`ROW_BLOCK_VALUES` values' worth."""
    return int(block) if block else max(1, ROW_BLOCK_VALUES // max(int(n_cols), 1))


def pearson_residuals(C: Matrix, library: np.ndarray, shares: np.ndarray, *, theta: float = PEARSON_THETA,
                      clip: float, block: int | None = None) -> np.ndarray:
    """Dense float32 residuals of the counts ``C`` (cells x genes) given each cell's total ``library`` (over
    all its genes) and these genes' ``shares``; computed in row blocks (default: :data:`ROW_BLOCK_VALUES`
    values), so the one full-size array is the result."""
    n, g = C.shape
    block = _block_rows(g, block)
    out = np.empty((n, g), dtype=np.float32)
    share = np.asarray(shares, dtype=np.float64)[None, :]
    lib = np.asarray(library, dtype=np.float64)
    for a in range(0, n, block):
        b = min(a + block, n)
        x = C[a:b]
        x = x.toarray() if sp.issparse(x) else np.asarray(x)
        mu = lib[a:b, None] * share
        sd = np.sqrt(mu + mu * mu / theta)
        r = np.divide(x - mu, sd, out=np.zeros_like(mu), where=sd > 0)
        out[a:b] = np.clip(r, -clip, clip)
    return out


def residual_moments(C: Matrix, library: np.ndarray, shares: np.ndarray, *, theta: float = PEARSON_THETA,
                     clip: float, block: int | None = None) -> tuple[np.ndarray, np.ndarray]:
    """(mean, variance) of each gene's clipped residuals over the cells, without holding them all."""
    n, g = C.shape
    block = _block_rows(g, block)
    s1 = np.zeros(g)
    s2 = np.zeros(g)
    for a in range(0, n, block):
        r = pearson_residuals(C[a:a + block], library[a:a + block], shares, theta=theta, clip=clip,
                              block=block).astype(np.float64)
        s1 += r.sum(0)
        s2 += (r * r).sum(0)
    mean = s1 / max(n, 1)
    return mean, np.maximum(s2 / max(n, 1) - mean * mean, 0.0)


def transform_label(transform: str, theta: float = PEARSON_THETA) -> str:
    return f"Pearson residuals (theta {theta:g})" if transform == "pearson" else "log"


#: The per-bin trim ``winsorize="auto"`` uses in copy-number mode: values beyond a bin's 2nd / 98th percentile
#: are set to it, so events carried by fewer than ~2 % of the cells (private events, state-call errors,
#: single-cell amplifications) stop dominating the input while any clone of more than 2 % keeps its states.
#: On 14 copy-number data sets of two independent simulators (bench/RESULTS.md) it raised the default latent's
#: mean ARI from 0.66 to 0.80, and left the clone-tree grid's doubling and many-clone cells unchanged.
CNV_WINSORIZE = 0.02


def resolve_winsorize(setting: float | str | None, mode: str = "expression") -> float | None:
    """The per-feature trim quantile q: ``setting`` itself (``None``: none), or for ``"auto"``
    :data:`CNV_WINSORIZE` in copy-number mode and none in expression mode."""
    if isinstance(setting, str):
        return CNV_WINSORIZE if mode == "cnv" else None
    return None if setting is None or float(setting) == 0.0 else float(setting)


#: Cells the trim's quantiles are estimated from (a seeded sample when there are more).
WINSOR_MAX_CELLS = 5_000

#: Saved settings that predate a setting: what the code did before it existed (log2(x + 1), no trim), not
#: today's "auto". ``Preprocessor.from_dict`` and ``Dhaka.load`` both fill them in.
LEGACY_SETTINGS: dict[str, Any] = {"log_pseudocount": 1.0, "winsorize": None, "value_transform": "log"}


def _sample_rows(X: Matrix, max_cells: int, seed: int = 0) -> Matrix:
    """At most ``max_cells`` rows of ``X`` (a seeded sample, in order), or ``X`` itself."""
    n = X.shape[0]
    return X if n <= max_cells else X[np.sort(np.random.default_rng(seed).choice(n, max_cells, replace=False))]


def winsor_bounds(X: Matrix, q: float, *, max_cells: int = WINSOR_MAX_CELLS, block: int = 1_000,
                  seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """Each column's q and 1 - q quantiles (float32), from at most ``max_cells`` rows (a seeded sample),
    ``block`` columns at a time (memory ~ 8 x max_cells x block bytes)."""
    X = _sample_rows(X, max_cells, seed)
    g = X.shape[1]
    lo, hi = np.empty(g, np.float32), np.empty(g, np.float32)
    for a in range(0, g, block):
        part = X[:, a:a + block]
        D = np.asarray(part.toarray() if sp.issparse(part) else part, dtype=np.float64)
        lo[a:a + block], hi[a:a + block] = np.quantile(D, [q, 1.0 - q], axis=0)
    return lo, hi


def clip_columns(S: Matrix, lower: np.ndarray, upper: np.ndarray) -> np.ndarray:
    """Dense float32 copy of ``S`` with column j clipped to [lower[j], upper[j]] (a sparse ``S`` is
    densified: a bound above zero changes its zeros; copy-number states are dense anyway)."""
    D = np.array(S.toarray() if sp.issparse(S) else S, dtype=np.float32, copy=True)
    return np.clip(D, lower, upper, out=D)


def trim_label(winsorize: float | None) -> str:
    """How the UI names the trim: "trim each feature to its 2-98 % quantiles"."""
    if winsorize is None:
        return "no trim"
    return f"trim each feature to its {100 * winsorize:g}-{100 * (1 - winsorize):g} % quantiles"


def log_label(pseudocount: float = 1.0) -> str:
    """How the UI names the log step: "log2(x+1)", or "log2(1 + x/2)" for the shifted log."""
    return "log2(x+1)" if float(pseudocount) == 1.0 else f"log2(1 + x/{float(pseudocount):g})"


def resolve_pseudocount(setting: float | str, kind: "InputKind", mode: str = "expression") -> float:
    """The pseudocount the log step uses: ``setting`` itself, or for ``"auto"``
    :data:`COUNTS_PSEUDOCOUNT` on raw counts in expression mode and 1 otherwise.

    The shifted logarithm is a variance-stabilising transform of gamma-Poisson counts (Ahlmann-Eltze &
    Huber 2023); TPM/CPM-like values have no count scale for it to refer to, so they keep log2(x + 1).
    """
    if isinstance(setting, str):
        return COUNTS_PSEUDOCOUNT if (mode == "expression" and kind.kind == "counts") else 1.0
    return float(setting)


def log2p(X: Matrix, *, pseudocount: float = 1.0) -> Matrix:
    """log2(1 + x / pseudocount), keeping sparsity (any array shape when dense, e.g. a CSR ``data`` vector).

    With ``pseudocount=1`` this is log2(x + 1); a larger one is the shifted logarithm log(x + y0) of
    Ahlmann-Eltze & Huber (2023) less its constant log(y0), so zeros stay zeros.
    """
    pc = np.float32(pseudocount)
    if sp.issparse(X):
        out = sp.csr_matrix(X, dtype=np.float32, copy=True)
        if pc != 1:
            out.data /= pc
        np.log1p(out.data, out=out.data)
        out.data /= np.float32(np.log(2.0))
        return out
    M = np.asarray(X, dtype=np.float32)
    if pc != 1:
        M = M / pc
    return (np.log1p(M) / np.float32(np.log(2.0))).astype(np.float32)


def scale_and_log(values: np.ndarray, *, factors: np.ndarray | None = None, log: bool = False) -> np.ndarray:
    """The value steps on raw values already in memory (a row block or CSR ``data``): multiply by
    the cells' size ``factors`` (broadcast as given), then log2(x + 1). Same arithmetic as
    :func:`normalize_total` and :func:`log2p`, for readers that stream rows (:mod:`dhaka.backed`)."""
    out = np.asarray(values, dtype=np.float32)
    if factors is not None:
        out = out * np.asarray(factors, dtype=np.float32)
    if log:
        out = log2p(out)
    return out.astype(np.float32, copy=False)


def column_moments(X: Matrix) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and (population) variance without densifying."""
    n = X.shape[0]
    if sp.issparse(X):
        sq = sp.csr_matrix(X, dtype=np.float64, copy=True)
        mean = np.asarray(sq.mean(axis=0)).ravel()
        sq.data **= 2
        var = np.asarray(sq.mean(axis=0)).ravel() - mean**2
    else:  # two passes over row blocks: float64 accuracy without a float64 copy of the matrix
        Xd = np.asarray(X)
        rows = _block_rows(Xd.shape[1])
        total = np.zeros(Xd.shape[1])
        for a in range(0, n, rows):
            total += Xd[a:a + rows].sum(0, dtype=np.float64)
        mean = total / max(n, 1)
        sq = np.zeros(Xd.shape[1])
        for a in range(0, n, rows):
            d = Xd[a:a + rows].astype(np.float64) - mean
            sq += (d * d).sum(0)
        var = sq / max(n, 1)
    return mean, np.maximum(var, 0.0) * (1.0 if n else 0.0)


def relative_expression(X: Matrix) -> np.ndarray:
    """The paper's relative expression Er = E - mean: each gene centred over cells (dense result)."""
    mean, _ = column_moments(X)
    dense = X.toarray() if sp.issparse(X) else np.asarray(X, dtype=np.float64)
    return (dense - mean).astype(np.float32)


def detected_cells(X: Matrix) -> np.ndarray:
    """Number of cells in which each gene is non-zero (explicitly stored zeros do not count)."""
    if sp.issparse(X):
        csr = sp.csr_matrix(X)
        return np.bincount(csr.indices[csr.data != 0], minlength=X.shape[1])
    return np.count_nonzero(np.asarray(X), axis=0)


def dropout_fraction(X: Matrix) -> np.ndarray:
    """Fraction of cells in which each gene is zero."""
    return 1.0 - detected_cells(X) / max(X.shape[0], 1)


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
    if method == "entropy":
        return _entropy(X)
    mean, var = column_moments(X)
    return scores_from_moments(mean, var, method=method)


def scores_from_moments(mean: np.ndarray, var: np.ndarray, *, method: GeneSelection = "cv") -> np.ndarray:
    """:func:`gene_scores` from per-gene means and population variances (all but ``"entropy"``)."""
    if method == "cv":
        sd = np.sqrt(var)
        return np.divide(sd, np.abs(mean), out=np.zeros_like(sd), where=np.abs(mean) > 1e-12)
    if method == "mean":
        return mean
    if method == "variance":
        return var
    if method == "dispersion":
        return _binned_dispersion(mean, var)
    if method == "entropy":
        raise ValueError("gene_selection='entropy' needs the values, not only their moments (it is not "
                         "available out of core); use 'cv', 'mean', 'variance' or 'dispersion'")
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
    _, var = column_moments(X)
    return top_genes(gene_scores(X, method=method), eligible_genes(var, detected_cells(X), X.shape[0],
                                                                   min_cells=min_cells), n_genes)


def top_genes(scores: np.ndarray, eligible: np.ndarray, n_genes: int) -> np.ndarray:
    """Indices (sorted) of the ``n_genes`` best ``scores``, among the ``eligible`` genes while enough are."""
    scores = np.asarray(scores, dtype=np.float64).copy()
    scores[~np.isfinite(scores)] = -np.inf
    if eligible.sum() >= n_genes:
        scores = np.where(eligible, scores, -np.inf)
    return np.sort(np.argsort(-scores, kind="stable")[:n_genes])


def eligible_genes(var: np.ndarray, detected: np.ndarray, n_cells: int, *, min_cells: int = 3) -> np.ndarray:
    """Genes that may be selected: not constant, and detected in at least ``min_cells`` cells."""
    return (np.asarray(var) > 0) & (np.asarray(detected) >= min(min_cells, n_cells))


def _eligible(X: Matrix, var: np.ndarray, *, min_cells: int) -> np.ndarray:
    return eligible_genes(var, detected_cells(X), X.shape[0], min_cells=min_cells)


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
    if sp.issparse(X):
        proj = np.asarray(X.T @ Q)
    else:  # float64 over row blocks, not a float64 copy of the matrix
        Xd = np.asarray(X)
        rows = _block_rows(Xd.shape[1])
        proj = np.zeros((Xd.shape[1], Q.shape[1]))
        for a in range(0, Xd.shape[0], rows):
            proj += Xd[a:a + rows].astype(np.float64).T @ Q[a:a + rows]
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


# ----------------------------------------------------------------------------- the pipeline
PREPROCESSOR_FORMAT = "dhaka-preprocessor/1"


def n_selected(n_genes: int | Literal["auto"] | None, n_features: int, *,
               mode: Literal["expression", "cnv"] = "expression") -> int | None:
    """The gene-count rule: ``"auto"`` = 2000 (or all if fewer) in expression mode, all bins in
    copy-number mode; ``None`` = all; a number is capped at ``n_features``. ``None`` means all."""
    if n_genes == "auto":
        return None if mode == "cnv" else min(2000, n_features)
    if n_genes is None:
        return None
    if isinstance(n_genes, bool) or int(n_genes) < 1:
        raise ValueError(f"n_genes must be at least 1 (or 'auto' / None), got {n_genes}")
    return min(int(n_genes), n_features)


@dataclass(frozen=True)
class ColumnMoments:
    """Per-column statistics of preprocessed values, as a streamed pass accumulates them.

    ``lo`` / ``hi`` are each column's smallest and largest value, implicit zeros included.
    """

    n_cells: int
    mean: np.ndarray
    var: np.ndarray            # population variance
    detected: np.ndarray       # cells with a non-zero value
    lo: np.ndarray
    hi: np.ndarray

    def take(self, idx: np.ndarray) -> "ColumnMoments":
        idx = np.asarray(idx, dtype=np.int64)
        return ColumnMoments(self.n_cells, self.mean[idx], self.var[idx], self.detected[idx], self.lo[idx],
                             self.hi[idx])


def input_affine(mean: np.ndarray, var: np.ndarray, lo: float, hi: float, *, relative: bool,
                 scale: Scale) -> tuple[np.ndarray, np.ndarray]:
    """Per-gene (centre, scale), float32, that the model subtracts and divides by.

    ``relative`` centres each gene on its mean (the paper's relative expression); ``scale``:
    ``"global"`` one overall standard deviation, ``"gene"`` each gene's, ``"none"``, or
    ``"minmax"`` maps the value range [lo, hi] onto [0, 1] (for the Bernoulli likelihood).
    """
    g = np.asarray(mean).size
    if scale == "minmax":
        return (np.full(g, lo, dtype=np.float32),
                np.full(g, hi - lo if hi > lo else 1.0, dtype=np.float32))
    center = np.asarray(mean, dtype=np.float64) if relative else np.zeros(g)
    if scale == "gene":
        sd = np.sqrt(np.asarray(var, dtype=np.float64))
        sd[sd < 1e-8] = 1.0
    elif scale == "global":
        total = float(np.sqrt(np.mean(var))) if g else 1.0
        sd = np.full(g, total if total > 1e-8 else 1.0)
    else:
        sd = np.ones(g)
    return center.astype(np.float32), sd.astype(np.float32)


def _value_range(S: Matrix) -> tuple[float, float]:
    """(min, max) of a matrix's values; a sparse matrix's implicit zeros count."""
    if sp.issparse(S):
        return (min(0.0, float(S.data.min()) if S.nnz else 0.0), max(0.0, float(S.data.max()) if S.nnz else 0.0))
    return float(np.min(S)), float(np.max(S))


def _min_value(M: Matrix) -> float:
    if sp.issparse(M):
        return float(M.data.min()) if M.nnz else 0.0
    return float(np.min(M)) if np.size(M) else 0.0


class Preprocessor:
    """The expression pipeline, fitted once and applied to any matrix with the same features.

    Steps: kind detection (:func:`detect_kind`) -> library-size normalisation and log2(1 + x / c)
    where the kind asks for them (or as forced), or instead analytic Pearson residuals of raw counts
    (``value_transform``; dense, held for the :meth:`pool_size` genes of highest residual variance)
    -> gene choice (``n_genes`` by ``gene_selection``, residual variance under the residuals, among
    eligible genes: detected in ``min_cells`` cells, not constant)
    -> the input affine (centring and scaling, :func:`input_affine`), which the model applies
    so sparse matrices stay sparse. With ``winsorize`` (copy-number mode by default) each feature's
    values are also trimmed to its q and 1 - q quantiles of the training cells, after the value steps.

    Fit it from a matrix (:meth:`fit`), or out of core from a value sample, the library sizes
    and streamed column moments (:meth:`fit_steps` then :meth:`fit_moments`). Learned
    attributes end in ``_``: ``kind_``, ``normalize_``, ``log_``, ``log_pseudocount_``, ``target_sum_``,
    ``winsorize_``, ``clip_`` (per-feature bounds or ``None``), ``transform_`` (``"log"`` or ``"pearson"``),
    ``shares_`` (the residuals' gene shares or ``None``), ``n_features_in_``, ``gene_indices_``,
    ``center_``, ``scale_``.

    Parameters
    ----------
    mode
        ``"expression"`` or ``"cnv"`` (copy-number states: nothing is normalised or logged
        unless forced, all bins kept by default).
    value_transform
        ``"auto"``: Pearson residuals (:func:`pearson_residuals`, genes ranked by residual variance) on raw
        counts in expression mode held in memory, else the normalise / log steps; ``"log"``: always those;
        ``"pearson"``: the residuals, refused (naming why) where the data are not raw counts or streamed.
    normalize, log
        ``"auto"`` follows the detected kind; ``True`` / ``False`` force (ignored under Pearson residuals).
    log_pseudocount
        c of the log step log2(1 + x / c); ``"auto"``: :func:`resolve_pseudocount` (2 on raw counts,
        1 otherwise).
    winsorize
        Trim quantile q per feature (``None``: off); ``"auto"``: :func:`resolve_winsorize` (0.02 in
        copy-number mode, off for expression).
    n_genes
        See :func:`n_selected`.
    gene_selection
        Score that ranks the genes (:func:`gene_scores`).
    relative, scale
        The input affine (:func:`input_affine`).
    min_cells
        Genes detected in fewer cells are not selected while enough others exist.
    """

    SETTINGS = ("mode", "value_transform", "normalize", "log", "log_pseudocount", "winsorize", "n_genes",
                "gene_selection", "relative", "scale", "min_cells")

    def __init__(self, *, mode: Literal["expression", "cnv"] = "expression",
                 value_transform: Literal["auto", "log", "pearson"] = "auto",
                 normalize: bool | Literal["auto"] = "auto", log: bool | Literal["auto"] = "auto",
                 log_pseudocount: float | Literal["auto"] = "auto",
                 winsorize: float | Literal["auto"] | None = "auto",
                 n_genes: int | Literal["auto"] | None = "auto", gene_selection: GeneSelection = "cv",
                 relative: bool = True, scale: Scale = "global", min_cells: int = 3) -> None:
        self.mode = mode
        self.value_transform = value_transform
        self.normalize = normalize
        self.log = log
        self.log_pseudocount = log_pseudocount
        self.winsorize = winsorize
        self.n_genes = n_genes
        self.gene_selection = gene_selection
        self.relative = relative
        self.scale = scale
        self.min_cells = min_cells
        self.check()

    @classmethod
    def from_params(cls, params: Mapping[str, Any]) -> "Preprocessor":
        """A preprocessor with the settings found in ``params`` (e.g. ``Dhaka.get_params()``)."""
        return cls(**{k: params[k] for k in cls.SETTINGS if k in params})

    def settings(self) -> dict[str, Any]:
        return {k: getattr(self, k) for k in self.SETTINGS}

    def check(self) -> None:
        """Refuse settings the pipeline does not know, naming the setting."""
        if self.mode not in ("expression", "cnv"):
            raise ValueError(f"mode must be 'expression' or 'cnv', got {self.mode!r}")
        if self.value_transform not in TRANSFORMS:
            raise ValueError(f"value_transform must be 'auto', 'log' or 'pearson', got {self.value_transform!r}")
        if self.scale not in SCALES:
            raise ValueError(f"scale must be 'global', 'gene', 'none' or 'minmax', got {self.scale!r}")
        if self.gene_selection not in GENE_SELECTIONS:
            raise ValueError("gene_selection must be 'cv', 'entropy', 'mean', 'variance' or 'dispersion', "
                             f"got {self.gene_selection!r}")
        for name in ("normalize", "log"):
            if getattr(self, name) not in ("auto", True, False):
                raise ValueError(f"{name} must be 'auto', True or False, got {getattr(self, name)!r}")
        def number(v: Any) -> bool:
            return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, bool)

        pc = self.log_pseudocount
        if not (pc == "auto" if isinstance(pc, str) else number(pc) and np.isfinite(pc) and pc > 0):
            raise ValueError(f"log_pseudocount must be 'auto' or a positive number, got {pc!r}")
        w = self.winsorize
        if not (w is None or (w == "auto" if isinstance(w, str) else number(w) and 0 <= w < 0.5)):
            raise ValueError(f"winsorize must be 'auto', None or a quantile in [0, 0.5), got {w!r}")
        n_selected(self.n_genes, 1, mode=self.mode)

    def __repr__(self) -> str:
        return f"Preprocessor({', '.join(f'{k}={v!r}' for k, v in self.settings().items())})"

    # ---------------------------------------------------------------- value steps
    def n_select(self, n_features: int) -> int | None:
        """How many genes a matrix of ``n_features`` features keeps (``None`` = all)."""
        return n_selected(self.n_genes, n_features, mode=self.mode)

    def steps(self, kind: InputKind, transform: str = "log") -> tuple[bool, bool]:
        """(normalise, log) for data of this ``kind`` under these settings (none under Pearson residuals)."""
        if transform == "pearson":
            return False, False
        if self.mode == "cnv":
            return self.normalize is True, self.log is True
        norm = kind.normalize if self.normalize == "auto" else bool(self.normalize)
        lg = kind.log if self.log == "auto" else bool(self.log)
        return norm, lg

    def plan(self, X: Matrix) -> dict[str, Any]:
        """What :meth:`fit` would do to ``X`` (detected kind, steps, genes kept), without doing it."""
        kind = detect_kind(X, mode=self.mode)
        tr = resolve_transform(self.value_transform, kind, self.mode)
        norm, lg = self.steps(kind, tr)
        pc = resolve_pseudocount(self.log_pseudocount, kind, self.mode)
        n_sel = self.n_select(X.shape[1])
        q = resolve_winsorize(self.winsorize, self.mode)
        return {"n_cells": X.shape[0], "n_features": X.shape[1], "n_selected": X.shape[1] if n_sel is None else n_sel,
                "input_kind": kind.kind, "reason": kind.reason, "transform": tr,
                "pool": self.pool_size(X.shape[1]) if tr == "pearson" else 0, "normalize": norm, "log": lg,
                "log_pseudocount": pc, "winsorize": q, "description": kind.describe(pc, q, tr)}

    def fit_steps(self, X: Matrix, *, vmin: float | None = None,
                  library_sizes: np.ndarray | None = None) -> "Preprocessor":
        """Decide the value steps: detect the kind of ``X`` and fix the normalisation target, or the
        Pearson residuals' gene shares (``value_transform``).

        Out of core, ``X`` is a sample of cells, ``vmin`` the smallest value of the whole matrix
        (negatives anywhere make it "scaled") and ``library_sizes`` every cell's total; there the
        residuals are not available (``"auto"`` takes the log). With a trim (``winsorize``) its
        per-feature bounds are the quantiles of ``X`` after the value steps.
        """
        kind = detect_kind(X, mode=self.mode)
        if vmin is not None and self.mode != "cnv" and vmin < 0 and kind.kind != "scaled":
            kind = InputKind("scaled", f"negative values present (min {vmin:.3g}): already centred or scaled",
                             False, False)
        self.kind_ = kind
        self.transform_ = resolve_transform(self.value_transform, kind, self.mode, in_memory=vmin is None)
        self.shares_ = None
        if self.transform_ == "pearson":
            self.shares_ = gene_shares(X)
            self.theta_ = PEARSON_THETA
            self.residual_clip_ = float(np.sqrt(X.shape[0]))
        self.normalize_, self.log_ = self.steps(kind, self.transform_)
        self.log_pseudocount_ = resolve_pseudocount(self.log_pseudocount, kind, self.mode)
        if vmin is not None and (self.normalize_ or self.log_) and vmin < 0:
            raise ValueError(f"library-size normalisation and log2(x+1) need non-negative values, but the data "
                             f"has negatives (min {vmin:.3g}); set normalize=False, log=False")
        self.target_sum_ = None
        if self.normalize_:
            self.target_sum_ = median_library_size(library_size(X) if library_sizes is None else library_sizes)
        self.n_features_in_ = int(X.shape[1])
        self.winsorize_ = resolve_winsorize(self.winsorize, self.mode)
        self.clip_ = None
        if self.winsorize_ is not None:  # the value steps are per cell: apply them to the sampled cells only
            self.clip_ = winsor_bounds(self.apply_steps(_sample_rows(X, WINSOR_MAX_CELLS)), self.winsorize_,
                                       max_cells=WINSOR_MAX_CELLS)
        return self

    def size_factors(self, library_sizes: np.ndarray) -> np.ndarray | None:
        """Per-cell normalisation factors for these library sizes (``None`` when not normalising)."""
        return size_factors(library_sizes, self.target_sum_) if self.normalize_ else None

    def apply_steps(self, X: Matrix, *, clip: bool = True, features: np.ndarray | None = None) -> Matrix:
        """Normalise, log and trim ``X`` (every feature, in the training order) as fitted; sparse stays
        sparse unless trimmed. Under Pearson residuals the result is dense and holds only ``features``
        (default: all), each cell's library read from all of ``X``'s features.

        The size factors and the log's pseudocount are one per-cell factor (:meth:`stream_factors`), as
        the streamed readers apply them, so in memory and out of core give the same float32 values
        (a model applied to an ``.h5ad`` on disk gives what it gives in memory). ``clip=False`` leaves
        the trim to the caller (:meth:`clip_features`, for columns matched by name)."""
        if self.pearson:
            f = np.arange(X.shape[1]) if features is None else np.asarray(features, dtype=np.int64)
            if X.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {X.shape[1]} features, but the preprocessor was fitted on "
                                 f"{self.n_features_in_}")
            return self.residuals(X if features is None else X[:, f], library_size(X), f, trim=clip)
        if features is not None:
            raise ValueError("features= selects residuals; the log steps keep every feature")
        M = self._value_steps(X)
        bounds = self.clip_bounds() if clip else None
        if bounds is not None:
            if M.shape[1] != self.n_features_in_:
                raise ValueError(f"X has {M.shape[1]} features, but the preprocessor was fitted on "
                                 f"{self.n_features_in_}")
            M = clip_columns(M, *bounds)
        return M

    @property
    def pearson(self) -> bool:
        """Whether the fitted value step is Pearson residuals (``False`` before fitting and for older models)."""
        return getattr(self, "transform_", "log") == "pearson"

    def residuals(self, C: Matrix, library: np.ndarray, features: np.ndarray, *, trim: bool = True) -> np.ndarray:
        """Pearson residuals of counts ``C`` whose columns are these training ``features``, given each cell's
        ``library`` (its total over all its genes), with the training gene shares, theta and clip; then the
        features' trim (:meth:`clip_features`) unless ``trim=False``."""
        f = np.asarray(features, dtype=np.int64)
        R = pearson_residuals(C, library, self.shares_[f], theta=self.theta_, clip=self.residual_clip_)
        return self.clip_features(R, f) if trim else R

    def pool_size(self, n_features: int) -> int:
        """How many genes' residuals a fit on ``n_features`` features holds (:data:`PEARSON_POOL_FACTOR`)."""
        n_sel = self.n_select(n_features)
        return n_features if n_sel is None else min(n_features, PEARSON_POOL_FACTOR * n_sel)

    def residual_pool(self, X: Matrix) -> np.ndarray | None:
        """Under Pearson residuals, the features whose residuals the fit holds: the top :meth:`pool_size` by
        residual variance among those detected in ``min_cells`` cells (while enough are); ``None`` when that is
        every feature, or without the residuals."""
        g = X.shape[1]
        size = self.pool_size(g)
        if not self.pearson or size >= g:
            return None
        _, var = residual_moments(X, library_size(X), self.shares_, theta=self.theta_, clip=self.residual_clip_)
        return top_genes(var, eligible_genes(var, detected_cells(X), X.shape[0], min_cells=self.min_cells), size)

    @property
    def selected_by(self) -> str:
        """The gene score in use: residual variance under Pearson residuals, else ``gene_selection``."""
        return "variance" if self.pearson else self.gene_selection

    def clip_features(self, S: Matrix, features: np.ndarray) -> Matrix:
        """``S`` (columns = these training features) trimmed to their fitted bounds; as is without a trim."""
        bounds = self.clip_bounds(features)
        return S if bounds is None else clip_columns(S, *bounds)

    def clip_bounds(self, features: np.ndarray | None = None) -> tuple[np.ndarray, np.ndarray] | None:
        """The trim's (lower, upper) bounds of these training features (all: ``None``), or ``None`` without a trim
        (also for a preprocessor fitted or pickled before the trim existed)."""
        if getattr(self, "clip_", None) is None:
            return None
        if features is None:
            return self.clip_
        f = np.asarray(features, dtype=np.int64)
        return self.clip_[0][f], self.clip_[1][f]

    def _value_steps(self, X: Matrix) -> Matrix:
        M = X
        factors = None
        if self.normalize_ or self.log_:
            if _min_value(M) < 0:
                step = "library-size normalisation" if self.normalize_ else "log2(x+1)"
                flag = "normalize=False" if self.normalize_ else "log=False"
                raise ValueError(f"{step} needs non-negative values, but the data has negatives; set {flag} "
                                 "for centred or scaled input")
        if self.normalize_:
            factors = size_factors(library_size(M), self.target_sum_)
        factors = self.stream_factors(factors, M.shape[0])
        if factors is None and not self.log_:
            return M
        if sp.issparse(M):
            out = sp.csr_matrix(M, dtype=np.float32, copy=True)
            rows = None if factors is None else np.repeat(factors, np.diff(out.indptr))
            out.data = scale_and_log(out.data, factors=rows, log=self.log_)
            return out
        return scale_and_log(M, factors=None if factors is None else factors[:, None], log=self.log_)

    def stream_factors(self, size_factors: np.ndarray | None, n_cells: int) -> np.ndarray | None:
        """Per-cell factors for readers that stream rows (:func:`scale_and_log`): the size factors, with
        the log's pseudocount folded in (log2(1 + f x / c) = log2(1 + (f / c) x)); ``None``: none."""
        pc = float(self.log_pseudocount_)
        if not self.log_ or pc == 1.0:
            return size_factors
        base = np.ones(n_cells, dtype=np.float32) if size_factors is None else np.asarray(size_factors, np.float32)
        return (base / np.float32(pc)).astype(np.float32)

    # ------------------------------------------------------------ genes and affine
    def fit_genes(self, P: Matrix, *, indices: np.ndarray | None = None,
                  columns: np.ndarray | None = None) -> "Preprocessor":
        """Choose the genes of ``P`` (value steps applied) and fit the input affine on them.

        ``indices`` keeps these columns of ``P`` instead of choosing by score (e.g. the genes a
        latent space explains); ``columns`` gives the feature index of each column of ``P`` when
        it holds only some features (default: all, in order).
        """
        g = P.shape[1]
        if indices is None:
            indices = select_genes(P, n_genes=self.n_select(self.n_features_in_ if columns is not None else g),
                                   method=self.selected_by, min_cells=self.min_cells)
        indices = np.asarray(indices, dtype=np.int64)
        self.gene_indices_ = indices if columns is None else np.asarray(columns, dtype=np.int64)[indices]
        if columns is None:
            self.n_features_in_ = int(g)
        S = P if np.array_equal(indices, np.arange(g)) else P[:, indices]
        return self.fit_affine(S)

    def fit_affine(self, S: Matrix) -> "Preprocessor":
        """Fit the input affine (``center_``, ``scale_``) on the selected matrix ``S``."""
        mean, var = column_moments(S)
        lo, hi = _value_range(S) if self.scale == "minmax" else (0.0, 1.0)
        self.center_, self.scale_ = input_affine(mean, var, lo, hi, relative=bool(self.relative), scale=self.scale)
        return self

    def fit_moments(self, moments: ColumnMoments, *, select: bool = True,
                    columns: np.ndarray | None = None) -> "Preprocessor":
        """:meth:`fit_genes` from streamed column moments of the preprocessed values.

        With ``select=False`` the moments are those of genes already chosen (``columns``, their
        feature indices) and only the affine is fitted.
        """
        g = moments.mean.size
        if select:
            n_sel = self.n_select(g)
            if n_sel is None or n_sel >= g:
                idx = np.arange(g)
            else:
                scores = scores_from_moments(moments.mean, moments.var, method=self.gene_selection)
                elig = eligible_genes(moments.var, moments.detected, moments.n_cells, min_cells=self.min_cells)
                idx = top_genes(scores, elig, n_sel)
            self.n_features_in_ = int(g)
            self.gene_indices_ = idx
            moments = moments.take(idx)
        else:
            self.gene_indices_ = np.arange(g) if columns is None else np.asarray(columns, dtype=np.int64)
        lo = float(moments.lo.min()) if moments.lo.size else 0.0
        hi = float(moments.hi.max()) if moments.hi.size else 0.0
        self.center_, self.scale_ = input_affine(moments.mean, moments.var, lo, hi, relative=bool(self.relative),
                                                 scale=self.scale)
        return self

    def select(self, P: Matrix) -> Matrix:
        """The chosen genes of a matrix with every feature (value steps applied)."""
        idx = self.gene_indices_
        return P if np.array_equal(idx, np.arange(P.shape[1])) else P[:, idx]

    # --------------------------------------------------------------------- whole
    def fit_values(self, X: Matrix) -> tuple[Matrix, np.ndarray | None]:
        """Fit the value steps on ``X`` and return (values, columns): every feature after the log steps
        (columns ``None``), or the residuals of :meth:`residual_pool`'s features (columns = those)."""
        self.fit_steps(X)
        pool = self.residual_pool(X)
        return self.apply_steps(X, features=pool), pool

    def fit(self, X: Matrix) -> "Preprocessor":
        """Fit every step on ``X`` (cells x features)."""
        P, columns = self.fit_values(X)
        return self.fit_genes(P, columns=columns)

    def match(self, names: Sequence[str] | None, n_features: int) -> tuple[np.ndarray, list[str]]:
        """Where each chosen gene is among the ``n_features`` columns of new cells, and the chosen genes absent.

        By name when the new cells have ``names`` and the preprocessor knows its genes' names (``genes_``):
        column ``-1`` marks a gene the new cells lack. Otherwise by position, which needs the training's
        number of features.
        """
        genes = getattr(self, "genes_", None)
        if names is not None and genes is not None:
            pos = {str(n): i for i, n in enumerate(names)}
            cols = np.array([pos.get(str(g), -1) for g in genes], dtype=np.int64)
            missing = [g for g, c in zip(genes, cols) if c < 0]
            if len(missing) == len(genes):
                raise ValueError("none of the model's selected features are in the new data "
                                 f"(e.g. {', '.join(map(str, genes[:3]))}); are these the same kind of data?")
            return cols, missing
        if n_features != self.n_features_in_:
            raise ValueError(f"X has {n_features} features, but the model was trained on {self.n_features_in_}"
                             + (" (and names are not available to align them)" if genes is not None or names is None
                                else ""))
        return np.asarray(self.gene_indices_, dtype=np.int64), []

    def transform(self, X: Matrix, *, names: Sequence[str] | None = None,
                  fill: np.ndarray | None = None) -> Matrix:
        """The chosen genes of new cells ``X`` after the value steps (not centred: the model applies the affine).

        Genes are matched by :meth:`match` (by ``names`` where both sides have them); a chosen gene the
        cells lack gets ``fill`` (per chosen gene; default the training centre ``center_``, so it
        contributes nothing). Each cell's library (normalisation, residuals) is read from all of its own
        features. :meth:`align` also returns the names of the chosen genes the cells lack.
        """
        return self.align(X, names=names, fill=fill)[0]

    def align(self, X: Matrix, *, names: Sequence[str] | None = None,
              fill: np.ndarray | None = None) -> tuple[Matrix, list[str]]:
        """:meth:`transform`'s matrix and the names of the chosen genes ``X`` lacks (filled), matched once."""
        cols, missing = self.match(names, X.shape[1])
        have = cols >= 0
        take = np.where(have, cols, 0)
        if self.pearson:
            S = self.residuals(X[:, take], library_size(X), self.gene_indices_)
        else:
            S = self.clip_features(self.apply_steps(X, clip=False)[:, take], self.gene_indices_)
        if missing:
            fill = np.asarray(self.center_ if fill is None else fill, dtype=np.float32)
            if sp.issparse(S):
                S = S.tolil()
                for j in np.flatnonzero(~have):
                    S[:, j] = fill[j]
                S = S.tocsr()
            else:
                S = np.array(S, dtype=np.float32)
                S[:, ~have] = fill[~have]
        return S, missing

    def fit_transform(self, X: Matrix) -> Matrix:
        P, columns = self.fit_values(X)
        self.fit_genes(P, columns=columns)
        if columns is None:
            return self.select(P)
        return P[:, np.searchsorted(columns, self.gene_indices_)]

    def standardize(self, S: Matrix, *, dtype: Any = np.float32) -> np.ndarray:
        """Dense ``(S - center_) / scale_`` of a transformed matrix: what the model's encoder reads."""
        dense = S.toarray() if sp.issparse(S) else np.asarray(S)
        return ((dense.astype(dtype, copy=False) - self.center_.astype(dtype)) / self.scale_.astype(dtype))

    # ------------------------------------------------------------------ storage
    def to_dict(self) -> dict[str, Any]:
        """Settings and fitted state as JSON-ready values (what a saved model carries)."""
        d: dict[str, Any] = {"format": PREPROCESSOR_FORMAT, "settings": self.settings()}
        if hasattr(self, "kind_"):
            d.update(input_kind=dataclasses.asdict(self.kind_), normalize=bool(self.normalize_), log=bool(self.log_),
                     log_pseudocount=float(self.log_pseudocount_), target_sum=self.target_sum_,
                     n_features_in=int(self.n_features_in_), winsorize=self.winsorize_,
                     clip=None if self.clip_ is None else [[float(v) for v in b] for b in self.clip_],
                     transform=self.transform_)
            if self.pearson:
                d.update(shares=[float(v) for v in self.shares_], theta=float(self.theta_),
                         residual_clip=float(self.residual_clip_))
        if hasattr(self, "gene_indices_"):
            d["gene_indices"] = [int(i) for i in self.gene_indices_]
        if hasattr(self, "center_"):
            d.update(center=[float(v) for v in self.center_], scale=[float(v) for v in self.scale_])
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> "Preprocessor":
        """Rebuild a preprocessor written by :meth:`to_dict`."""
        if d.get("format") != PREPROCESSOR_FORMAT:
            raise ValueError(f"not a Dhaka preprocessor (format {d.get('format')!r})")
        pre = cls(**{**LEGACY_SETTINGS, **d["settings"]})
        if "input_kind" in d:
            pre.kind_ = InputKind(**d["input_kind"])
            pre.normalize_, pre.log_ = bool(d["normalize"]), bool(d["log"])
            # models saved before "auto" existed carry only the (numeric) setting
            pre.log_pseudocount_ = resolve_pseudocount(d.get("log_pseudocount", pre.log_pseudocount), pre.kind_,
                                                       pre.mode)
            pre.target_sum_ = None if d.get("target_sum") is None else float(d["target_sum"])
            pre.n_features_in_ = int(d["n_features_in"])
            pre.winsorize_ = d.get("winsorize")
            pre.transform_ = d.get("transform", "log")
            pre.shares_ = None
            if pre.transform_ == "pearson":
                pre.shares_ = np.asarray(d["shares"], dtype=np.float64)
                pre.theta_, pre.residual_clip_ = float(d["theta"]), float(d["residual_clip"])
            clip = d.get("clip")
            pre.clip_ = None if clip is None else tuple(np.asarray(b, dtype=np.float32) for b in clip)
        if "gene_indices" in d:
            pre.gene_indices_ = np.asarray(d["gene_indices"], dtype=np.int64)
        if "center" in d:
            pre.center_ = np.asarray(d["center"], dtype=np.float32)
            pre.scale_ = np.asarray(d["scale"], dtype=np.float32)
        return pre


@dataclass
class PreparedRows:
    """Cells already through a fitted :class:`Preprocessor`: what ``Dhaka.fit`` takes instead of a matrix.

    ``matrix`` holds the chosen genes (value steps applied, not centred): a CSR matrix, an array,
    or a row source (``shape`` and ``take_rows(idx)``, e.g. :class:`dhaka.backed.BackedRows`).
    """

    matrix: Any
    preprocessor: Preprocessor
    feature_names: list[str] | None

    @property
    def shape(self) -> tuple[int, int]:
        return tuple(self.matrix.shape)

    def describe(self) -> dict[str, Any]:
        """Facts about where the rows came from, recorded by the estimator as ``prepared_``."""
        return {}
