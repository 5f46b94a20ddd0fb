"""Validation of a parsed matrix (names, values), its orientation and the AnnData it becomes.
"""
from __future__ import annotations

import math
import re
from collections import Counter
from typing import Iterator, Literal, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import safety as _s
from .safety import DataError, _plural, _q

Orientation = Literal["auto", "cells_x_genes", "genes_x_cells"]
Expect = Literal["any", "counts", "nonnegative"]


# --------------------------------------------------------------------------- #
# validation and AnnData assembly
# --------------------------------------------------------------------------- #
def _check_names(names: Sequence[str], what: str, name: str) -> None:
    for i, n in enumerate(names):
        if n == "":
            raise DataError(f"{name}: empty {what} name (position {i + 1})")
    counts = Counter(names)
    dups = [(k, c) for k, c in counts.items() if c > 1]
    if dups:
        shown = ", ".join(f"{_q(k)} ({c}x)" for k, c in dups[:5])
        more = f" and {len(dups) - 5} more" if len(dups) > 5 else ""
        raise DataError(f"{name}: duplicate {what} ids: {shown}{more}; {what} ids must be unique")


def _first_where(X, mask_fn) -> tuple[int, int, float] | None:
    """Row, column and value of the first entry where ``mask_fn(values)``."""
    if sp.issparse(X):
        Xc = X.tocsr()
        bad = np.flatnonzero(mask_fn(Xc.data))
        if bad.size == 0:
            return None
        k = int(bad[0])
        r = int(np.searchsorted(Xc.indptr, k, side="right") - 1)
        return r, int(Xc.indices[k]), float(Xc.data[k])
    for start, block in _row_blocks(X):
        bad = np.argwhere(mask_fn(block))
        if bad.size:
            r, c = (int(v) for v in bad[0])
            return start + r, c, float(block[r, c])
    return None


def _row_blocks(X: np.ndarray) -> Iterator[tuple[int, np.ndarray]]:
    """(first row, block) over a dense matrix, about ``_s._BLOCK_VALUES`` values a block.

    Checks over blocks need temporaries (masks, rounded copies) the size of a
    block, not of the matrix.
    """
    step = max(1, _s._BLOCK_VALUES // max(X.shape[1], 1))
    for start in range(0, X.shape[0], step):
        yield start, X[start:start + step]


def _count(X, mask_fn) -> int:
    if sp.issparse(X):
        return int(mask_fn(X.data).sum())
    return sum(int(mask_fn(b).sum()) for _, b in _row_blocks(X))


def _validate_values(X, obs_names, var_names, *, expect: Expect, name: str) -> None:
    def where(hit):
        r, c, v = hit
        return f"cell {_q(obs_names[r])}, feature {_q(var_names[c])} (row {r + 1}, column {c + 1})"

    blocks = [X.data] if sp.issparse(X) else [b for _, b in _row_blocks(X)]
    if not all(np.isfinite(b).all() for b in blocks):
        not_finite = lambda a: ~np.isfinite(a)  # noqa: E731
        hit = _first_where(X, not_finite)
        kind = "NaN (missing value)" if math.isnan(hit[2]) else "infinite value (or beyond float32 range)"
        n_bad = _count(X, not_finite)
        raise DataError(
            f"{name}: {kind} at {where(hit)}; {_plural(n_bad, 'non-finite value')} in total "
            "(NaN/inf are not allowed)"
        )
    if expect in ("counts", "nonnegative") and any(b.size and b.min() < 0 for b in blocks):
        negative = lambda a: a < 0  # noqa: E731
        hit = _first_where(X, negative)
        n_bad = _count(X, negative)
        raise DataError(
            f"{name}: negative value {hit[2]:g} at {where(hit)}; {_plural(n_bad, 'negative value')} "
            f"in total, but expect={expect!r} requires non-negative values"
        )
    if expect == "counts" and not all(np.array_equal(b, np.round(b)) for b in blocks):
        hit = _first_where(X, lambda a: a != np.round(a))
        raise DataError(
            f"{name}: non-integer value {hit[2]:g} at {where(hit)}, but expect='counts' requires "
            "integer counts (use expect='any' for normalised or log data)"
        )


def _to_float32(X, name: str):
    if sp.issparse(X):
        X = sp.csr_matrix(X)
        if X.dtype != np.float32:
            with np.errstate(over="ignore", invalid="ignore"):
                X = X.astype(np.float32)
        X.sum_duplicates()
        return X
    X = np.asarray(X)
    if X.dtype.kind not in "biuf":
        raise DataError(f"{name}: matrix has non-numeric dtype {X.dtype}")
    with np.errstate(over="ignore", invalid="ignore"):
        return np.ascontiguousarray(X, dtype=np.float32)


def _finish(
    X,
    obs_names: Sequence[str] | None,
    var_names: Sequence[str] | None,
    *,
    name: str,
    fmt: str,
    file_orientation: str,
    transposed: bool,
    expect: Expect,
    reason: str,
    obs: pd.DataFrame | None = None,
    var: pd.DataFrame | None = None,
    uns: dict | None = None,
    extra: dict | None = None,
):
    """Check shape, names and values; build the AnnData (X already cells x features)."""
    import anndata

    n_obs, n_var = X.shape
    if n_obs < _s.MIN_CELLS or n_var < _s.MIN_FEATURES:
        raise DataError(
            f"{name}: matrix has {_plural(n_obs, 'cell')} x {_plural(n_var, 'feature')} "
            f"(read as {file_orientation.replace('_x_', ' x ')}); at least {_s.MIN_CELLS} cells and "
            f"{_s.MIN_FEATURES} genes/features are needed (the minimum is {_s.MIN_CELLS}x{_s.MIN_FEATURES})"
        )
    given = obs_names is not None, var_names is not None
    # generated names are unique by construction: no need to check them
    obs_names = [f"cell_{i}" for i in range(n_obs)] if obs_names is None else [str(s) for s in obs_names]
    var_names = [f"gene_{j}" for j in range(n_var)] if var_names is None else [str(s) for s in var_names]
    if len(obs_names) != n_obs or len(var_names) != n_var:
        raise DataError(
            f"{name}: {len(obs_names)} cell ids and {len(var_names)} feature names for a "
            f"{n_obs} x {n_var} matrix"
        )
    if given[0]:
        _check_names(obs_names, "cell", name)
    if given[1]:
        _check_names(var_names, "gene", name)
    X = _to_float32(X, name)
    _validate_values(X, obs_names, var_names, expect=expect, name=name)
    obs = pd.DataFrame(index=pd.Index(obs_names, dtype=object)) if obs is None else obs
    var = pd.DataFrame(index=pd.Index(var_names, dtype=object)) if var is None else var
    obs.index = pd.Index(obs_names, dtype=object)
    var.index = pd.Index(var_names, dtype=object)
    adata = anndata.AnnData(X=X, obs=obs, var=var, uns=dict(uns or {}))
    info = {
        "filename": str(name),
        "format": fmt,
        "orientation": file_orientation,
        "transposed": bool(transposed),
        "orientation_reason": reason,
    }
    info.update(extra or {})
    adata.uns["dhaka_io"] = info
    return adata


def _transpose(X):
    if sp.issparse(X):
        return sp.csr_matrix(X.T)
    return np.ascontiguousarray(np.asarray(X).T)


# --------------------------------------------------------------------------- #
# orientation heuristics
# --------------------------------------------------------------------------- #
_CELL_WORDS = {
    "cell", "cells", "cell_id", "cellid", "cell_ids", "cell_name", "cellname", "cell_barcode",
    "barcode", "barcodes", "obs", "obs_names", "sample", "samples", "sample_id", "cell id",
}
_GENE_WORDS = {
    "gene", "genes", "gene_id", "gene_ids", "geneid", "gene_name", "gene_names", "genename",
    "gene_symbol", "symbol", "symbols", "feature", "features", "feature_id", "var", "var_names",
    "bin", "bins", "region", "regions", "ensembl", "ensembl_id", "probe", "probe_id", "gene id",
    "gene name", "chrom_bin",
}
_CELL_RES = [
    re.compile(r"^[ACGTN]{6,}(?:[-_.][0-9A-Za-z]+)?$"),  # 10x barcodes
    re.compile(r"[ACGT]{10,}"),
    re.compile(r"(?i)cell"),
    re.compile(r"(?i)^(?:bc|barcode)"),
    re.compile(r"(?i)^(?:SRR|ERR|DRR|GSM|SAMN)\d+"),
]
_GENE_STRONG_RES = [
    re.compile(r"^ENS[A-Z]*[GT]\d{5,}"),
    re.compile(r"(?i)^gene"),
    re.compile(r"(?i)^(?:chr)?(?:\d{1,2}|X|Y|M|MT)[:_-]\d+"),
    re.compile(r"(?i)^(?:bin|feature|probe)"),
]
_GENE_WEAK_RE = re.compile(r"^[A-Za-z][A-Za-z0-9]{1,11}(?:[-.][A-Za-z0-9]{1,8}){0,2}$")


def _gene_score(names: Sequence[str]) -> float:
    """Mean evidence that names are genes (+) rather than cells (-)."""
    sample = list(names[:300])
    if not sample:
        return 0.0
    total = 0.0
    for n in sample:
        if any(r.search(n) for r in _CELL_RES):
            total -= 1.0
        elif any(r.search(n) for r in _GENE_STRONG_RES):
            total += 1.0
        elif _GENE_WEAK_RE.match(n):
            total += 0.5
    return total / len(sample)


def _corner_hint(corner: str | None) -> str | None:
    if not corner:
        return None
    c = corner.strip().strip('"').lower()
    if c in _CELL_WORDS:
        return "cells_x_genes"
    if c in _GENE_WORDS:
        return "genes_x_cells"
    return None


def _decide_orientation(
    orientation: Orientation,
    *,
    row_names: Sequence[str] | None,
    col_names: Sequence[str] | None,
    shape: tuple[int, int],
    corner: str | None = None,
    default: str | None = None,
) -> tuple[str, str]:
    """Orientation of the file and a short reason."""
    if orientation != "auto":
        return orientation, "given"
    hint = _corner_hint(corner)
    if hint:
        return hint, f"header corner {_q(corner)}"
    if row_names is not None and col_names is not None:
        diff = _gene_score(row_names) - _gene_score(col_names)
        if diff >= 0.3:
            return "genes_x_cells", "row names look like genes"
        if diff <= -0.3:
            return "cells_x_genes", "column names look like genes"
    elif default is None:
        names, is_rows = (row_names, True) if row_names is not None else (col_names, False)
        if names is not None:
            s = _gene_score(names)
            if abs(s) >= 0.3:
                genes_on_rows = (s > 0) == is_rows
                return (
                    ("genes_x_cells", "row names look like genes")
                    if genes_on_rows
                    else ("cells_x_genes", "column names look like genes")
                )
    if default is not None:
        return default, "format convention"
    n_rows, n_cols = shape
    if n_rows > n_cols:
        return "genes_x_cells", "more rows than columns (assumed more genes than cells)"
    return "cells_x_genes", "more columns than rows (assumed more genes than cells)"
