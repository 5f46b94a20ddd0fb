"""Copy-number inputs: long tables (HMMcopy, signals), Ginkgo segment matrices, bins named ``chr:start-end``.

Single-cell DNA pipelines write copy number in shapes a cells x features reader
does not expect:

* a **long table**, one row per cell and bin (``cell_id, chr, start, end,
  state`` and often ``copy``, ``reads`` ...), as HMMcopy and signals write it:
  pivoted to cells x bins on the ``state`` column (or the one chosen with
  ``value=``), streamed in blocks of rows (about 12 bytes a row are kept);
* a **Ginkgo segment matrix**, bins x cells with ``CHR``, ``START`` and ``END``
  leading columns: transposed to cells x bins;
* a matrix whose features are **bins named** ``chr1:1-500000`` (or
  ``1:1-500000``, ``chr1_1_500000``).

In every case the bins end up in genome order (1..22, X, Y, then other contigs;
with or without a ``chr`` prefix), with their coordinates in ``var["chr"]``,
``var["start"]`` and ``var["end"]`` so a heatmap can draw chromosome boundaries.
Overlapping bins, a cell and bin given twice and missing columns are refused with
a message naming them.  A bin with no value for some cell (no row, or NA) is
dropped (the count is recorded in ``uns["dhaka_io"]["bins"]``), as a model needs
every bin of every cell.
"""
from __future__ import annotations

import csv
import warnings
from typing import IO, Any, Literal, Sequence

import numpy as np
import pandas as pd

from . import safety as _s
from .matrix import Expect, _finish
from .safety import DataError, _q
from .source import _Input
from .text import _first_lines, _open_text, _sniff_delimiter, _text_encoding

CopyNumberFormat = Literal["auto", "long", "ginkgo"]

_CELL_COLS = ("cell_id", "cell", "cellid", "cell_name", "barcode", "single_cell_id")
_CHR_COLS = ("chr", "chrom", "chromosome", "seqnames")
_START_COLS = ("start", "chromstart", "bin_start")
_END_COLS = ("end", "chromend", "stop", "bin_end")
_VALUE_DEFAULTS = ("state", "copy")
#: Rows of a long table parsed at a time.
_LONG_BLOCK_ROWS = 1 << 19


def _find(columns: Sequence[str], aliases: Sequence[str]) -> str | None:
    lower = {str(c).strip().lower(): c for c in columns}
    return next((lower[a] for a in aliases if a in lower), None)


def sniff(inp: _Input, ext: str) -> tuple[str | None, dict]:
    """``("long" | "ginkgo" | None, how)`` from the header line of a text input.

    Only the first 64 KB are looked at, so a plain matrix table costs nothing more;
    for a copy-number table ``how`` holds the encoding (one streaming pass, as for
    any text table), the delimiter and the header fields.
    """
    head = inp.head(1 << 16)
    text = head.decode("utf-16", "replace") if head.startswith((b"\xff\xfe", b"\xfe\xff")) else (
        head.decode("utf-8", "replace").lstrip("\ufeff"))
    text = (text if len(head) < 1 << 16 else text[: text.rfind("\n") + 1]).replace("\r\n", "\n").replace("\r", "\n")
    lines = _first_lines(text, n=5)
    if not lines:
        return None, {}
    try:
        delim = _sniff_delimiter(lines, ext)
    except (DataError, csv.Error):  # not a table at all: the matrix reader says what is wrong
        return None, {}
    header = [f.strip().strip('"') for f in (lines[0].split(delim) if delim else lines[0].split())]
    how = {"delim": delim, "header": header}
    has = {k: _find(header, a) for k, a in (("chr", _CHR_COLS), ("start", _START_COLS), ("end", _END_COLS))}
    kind = None
    if all(has.values()) and _find(header, _CELL_COLS):
        kind = "long"
    elif len(header) >= 4 and [h.lower() for h in header[:3]] in (
            [c, s, e] for c in _CHR_COLS for s in _START_COLS for e in _END_COLS):
        kind = "ginkgo"
    if kind is not None:
        how["enc"] = _text_encoding(inp)
    return kind, how


def read_copy_number(inp: _Input, *, ext: str, fmt: CopyNumberFormat, value: str | None, expect: Expect):
    """Read a long table or a Ginkgo matrix (``fmt`` given or sniffed); None when it is neither (auto)."""
    kind, how = sniff(inp, ext)
    if fmt != "auto" and kind != fmt:
        _explain_missing(inp.name, fmt, how.get("header") or [])
    if kind is None:
        if value is not None:
            raise DataError(f"{inp.name}: value={value!r} applies to long copy-number tables "
                            "(cell_id, chr, start, end, value columns), and this is not one")
        return None
    if kind == "long":
        return _read_long(inp, how, value=value, expect=expect)
    if value is not None:
        raise DataError(f"{inp.name}: value={value!r} applies to long copy-number tables, not to a Ginkgo matrix")
    return _read_ginkgo(inp, how, expect=expect)


def _explain_missing(name: str, fmt: str, header: list[str]) -> None:
    shown = ", ".join(_q(h, 20) for h in header[:12]) + (" ..." if len(header) > 12 else "")
    if fmt == "long":
        need = {"cell id": _CELL_COLS, "chromosome": _CHR_COLS, "start": _START_COLS, "end": _END_COLS}
        missing = [f"{what} ({' / '.join(a[:3])})" for what, a in need.items() if not _find(header, a)]
        raise DataError(
            f"{name}: not a long copy-number table: missing column{'s' if len(missing) > 1 else ''} "
            f"{', '.join(missing)}; the header has {shown or 'nothing'}"
        )
    raise DataError(
        f"{name}: not a Ginkgo segment matrix: the first three columns must be CHR, START and END "
        f"(bins x cells); the header has {shown or 'nothing'}"
    )


# --------------------------------------------------------------------------- #
# long tables
# --------------------------------------------------------------------------- #
def _read_long(inp: _Input, how: dict, *, value: str | None, expect: Expect):
    name, header = inp.name, how["header"]
    cols = {"cell": _find(header, _CELL_COLS), "chr": _find(header, _CHR_COLS),
            "start": _find(header, _START_COLS), "end": _find(header, _END_COLS)}
    if value is None:
        cols["value"] = _find(header, _VALUE_DEFAULTS)
        if cols["value"] is None:
            raise DataError(
                f"{name}: long copy-number table without a 'state' or 'copy' column; name the column "
                f"to use with value= (columns: {', '.join(_q(h, 20) for h in header[:20])})"
            )
    else:
        cols["value"] = _find(header, (value.lower(),))
        if cols["value"] is None:
            raise DataError(
                f"{name}: no column {value!r} to take the values from "
                f"(columns: {', '.join(_q(h, 20) for h in header[:20])})"
            )
    cells: dict[str, int] = {}
    bins: dict[tuple[str, int, int], int] = {}
    parts: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
    with _open_text(inp, how["enc"]) as fh:
        for block in _long_blocks(fh, how, cols, name):
            parts.append(_encode_block(block, cols, cells, bins, name))
    if not parts:
        raise DataError(f"{name}: header only: the long table has no rows")
    cell_codes, bin_codes, values = (np.concatenate(p) for p in zip(*parts))
    del parts
    n_cells, n_bins = len(cells), len(bins)
    cell_names = list(cells)
    bin_keys = list(bins)
    flat = cell_codes.astype(np.int64) * n_bins + bin_codes
    _refuse_duplicate_rows(flat, cell_names, bin_keys, name)
    del flat
    # a bin is kept when every cell has a value for it; found from the rows, so the cells x bins
    # matrix is built over the kept bins only (cells that share no bin cost nothing)
    has_value = ~np.isnan(values)
    complete = np.bincount(bin_codes[has_value], minlength=n_bins) == n_cells
    del has_value
    n_keep = int(complete.sum())
    if n_keep == 0:
        raise DataError(
            f"{name}: every bin lacks a value for at least one cell (no row, or NA): the {n_cells:,} cells "
            f"share none of their {n_bins:,} bins; nothing is left to read"
        )
    if n_cells * n_keep > _s.MAX_DENSE_ENTRIES:
        raise DataError(
            f"{name}: {n_cells:,} cells x {n_keep:,} bins is {n_cells * n_keep:,} values, above the limit of "
            f"{_s.MAX_DENSE_ENTRIES:,}"
        )
    column = np.full(n_bins, -1, dtype=np.int64)
    column[complete] = np.arange(n_keep)
    rows = complete[bin_codes]
    M = np.empty((n_cells, n_keep), dtype=np.float32)
    M.reshape(-1)[cell_codes[rows].astype(np.int64) * n_keep + column[bin_codes[rows]]] = values[rows]
    del rows, cell_codes, bin_codes, values
    coords = pd.DataFrame(bin_keys, columns=["chr", "start", "end"])
    return _assemble(M, cell_names, coords, name=name, fmt="copy-number long table", expect=expect,
                     reason="long table: one row per cell and bin", transposed=False,
                     extra={"value_column": str(cols["value"])}, kept=complete)


def _long_blocks(fh: IO[str], how: dict, cols: dict, name: str):
    """DataFrames of the five columns, ``_LONG_BLOCK_ROWS`` rows at a time."""
    dtype = {cols["cell"]: str, cols["chr"]: str, cols["start"]: np.float64, cols["end"]: np.float64,
             cols["value"]: np.float32}
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            reader = pd.read_csv(fh, sep=r"\s+" if how["delim"] is None else how["delim"],
                                 usecols=list(dict.fromkeys(cols.values())), dtype=dtype,
                                 chunksize=_LONG_BLOCK_ROWS, skipinitialspace=True, keep_default_na=True)
            yield from reader
    except DataError:
        raise
    except ValueError as e:
        raise DataError(
            f"{name}: the long table's start / end / {cols['value']} columns must hold numbers ({e})"
        ) from None


def _encode_block(df: pd.DataFrame, cols: dict, cells: dict, bins: dict, name: str):
    """(cell codes, bin codes, values) of one block, growing the cell and bin dictionaries."""
    cell = df[cols["cell"]]
    if cell.isna().any():
        raise DataError(f"{name}: a row of the long table has no cell id (row {int(np.argmax(cell.isna())) + 1} "
                        "of its block)")
    start, end = df[cols["start"]].to_numpy(), df[cols["end"]].to_numpy()
    chrom = df[cols["chr"]]
    if chrom.isna().any() or not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise DataError(f"{name}: a row of the long table has no chromosome, start or end")
    if (start != np.round(start)).any() or (end != np.round(end)).any():
        raise DataError(f"{name}: bin start and end must be whole positions")
    c_codes, c_uniques = pd.factorize(cell.str.strip())
    c_map = np.array([cells.setdefault(str(c), len(cells)) for c in c_uniques], dtype=np.int32)
    keys = pd.MultiIndex.from_arrays([chrom.str.strip(), start.astype(np.int64), end.astype(np.int64)])
    b_codes, b_uniques = keys.factorize()
    b_map = np.array([bins.setdefault((str(ch), int(s), int(e)), len(bins)) for ch, s, e in b_uniques],
                     dtype=np.int32)
    return c_map[c_codes], b_map[b_codes], df[cols["value"]].to_numpy(dtype=np.float32)


def _refuse_duplicate_rows(flat: np.ndarray, cells: list[str], bins: list[tuple], name: str) -> None:
    s = np.sort(flat)
    dup = np.flatnonzero(s[1:] == s[:-1])
    if dup.size:
        n_bins = len(bins)
        c, b = divmod(int(s[dup[0]]), n_bins)
        raise DataError(
            f"{name}: cell {_q(cells[c])} has more than one row for bin {_bin_name(*bins[b])} "
            f"({dup.size:,} duplicate cell/bin rows in all); each cell needs one row per bin"
        )


def _bin_name(chrom: str, start: int, end: int) -> str:
    return f"{chrom}:{start}-{end}"


# --------------------------------------------------------------------------- #
# Ginkgo
# --------------------------------------------------------------------------- #
def _read_ginkgo(inp: _Input, how: dict, *, expect: Expect):
    name, header = inp.name, how["header"]
    if len(header) - 3 < 1:
        raise DataError(f"{name}: Ginkgo matrix with no cell columns after CHR, START, END")
    dtype: dict[Any, Any] = {i: np.float32 for i in range(3, len(header))}
    dtype.update({0: str, 1: np.float64, 2: np.float64})
    try:
        with _open_text(inp, how["enc"]) as fh, warnings.catch_warnings():
            warnings.simplefilter("ignore")
            df = pd.read_csv(fh, sep=r"\s+" if how["delim"] is None else how["delim"], header=0,
                             names=list(range(len(header))), dtype=dtype, skipinitialspace=True)
    except ValueError as e:
        raise DataError(f"{name}: Ginkgo matrix values and START / END must be numbers ({e})") from None
    if df.empty:
        raise DataError(f"{name}: header only: the Ginkgo matrix has no bins")
    start, end = df[1].to_numpy(), df[2].to_numpy()
    if df[0].isna().any() or not (np.isfinite(start).all() and np.isfinite(end).all()):
        raise DataError(f"{name}: a bin of the Ginkgo matrix has no CHR, START or END")
    coords = pd.DataFrame({"chr": df[0].str.strip().to_numpy(), "start": start.astype(np.int64),
                           "end": end.astype(np.int64)})
    dup = coords.duplicated()
    if dup.any():
        ch, s, e = coords[dup].iloc[0]
        raise DataError(f"{name}: bin {_bin_name(ch, s, e)} is listed twice; each bin needs one row")
    M = np.ascontiguousarray(df.iloc[:, 3:].to_numpy(dtype=np.float32).T)
    del df
    cells = [h.strip() for h in header[3:]]
    return _assemble(M, cells, coords, name=name, fmt="ginkgo", expect=expect,
                     reason="Ginkgo segment matrix (bins x cells)", transposed=True)


# --------------------------------------------------------------------------- #
# genome order
# --------------------------------------------------------------------------- #
def genome_bins(coords: pd.DataFrame, name: str) -> tuple[np.ndarray, pd.DataFrame]:
    """Genome order of bins given as ``chr``, ``start``, ``end`` columns, and their ``var`` table.

    Returns the column order and ``var`` in that order: index ``chr:start-end`` (the
    chromosome as the file spells it), ``chr`` (the label without a ``chr`` prefix:
    ``"1"`` .. ``"22"``, ``"X"``, ``"Y"``, or the contig's name), ``start`` and ``end``.
    Raises a DataError for a bin that ends before it starts or two bins that overlap.
    """
    from dhaka.analysis.copy_number import genome_order, parse_bins

    bad = np.flatnonzero(coords["end"].to_numpy() < coords["start"].to_numpy())
    if bad.size:
        ch, s, e = coords.iloc[int(bad[0])][["chr", "start", "end"]]
        raise DataError(f"{name}: bin {_bin_name(ch, s, e)} ends before it starts")
    order = genome_order(coords)
    label = parse_bins(coords)["chrom"].to_numpy()[order]
    ordered = coords.iloc[order]
    s, e = ordered["start"].to_numpy(), ordered["end"].to_numpy()
    names = [_bin_name(*row) for row in ordered[["chr", "start", "end"]].itertuples(index=False)]
    clash = np.flatnonzero((label[1:] == label[:-1]) & (s[1:] < e[:-1]))
    if clash.size:
        j = int(clash[0])
        raise DataError(
            f"{name}: bins {names[j]} and {names[j + 1]} overlap ({clash.size:,} overlapping pairs in all); "
            "copy-number bins must not overlap"
        )
    var = pd.DataFrame({"chr": label.astype(str), "start": s.astype(np.int64), "end": e.astype(np.int64)},
                       index=pd.Index(names, dtype=object))
    return order, var


def _assemble(M: np.ndarray, cells: list[str], coords: pd.DataFrame, *, name: str, fmt: str, expect: Expect,
              reason: str, transposed: bool, extra: dict | None = None, kept: np.ndarray | None = None):
    """Cells x bins in genome order, incomplete bins dropped, coordinates in var; then the usual checks.

    ``kept`` (a mask over ``coords``) says that ``M`` holds only those bins, every one complete, in
    ``coords`` order; the bins are still ordered and checked (overlaps) with all of ``coords``.
    """
    order, var = genome_bins(coords, name)
    if kept is not None:
        position = np.cumsum(kept) - 1  # column of each kept bin in M
        in_order = order[kept[order]]
        M = M[:, position[in_order]]
        var = var[kept[order]]
        n_dropped = int((~kept).sum())
    else:
        M = M[:, order]
        complete = ~np.isnan(M).any(axis=0)
        n_dropped = int((~complete).sum())
        if not complete.any():
            raise DataError(
                f"{name}: every bin lacks a value for at least one cell (no row, or NA); nothing is left to read"
            )
        if n_dropped:
            M, var = M[:, complete], var[complete]
    info = {"bins": {"n_bins": int(M.shape[1]), "dropped_incomplete": n_dropped, "genome_ordered": True}}
    return _finish(M, cells, list(var.index), name=name, fmt=fmt,
                   file_orientation="genes_x_cells" if transposed else "cells_x_genes", transposed=transposed,
                   expect=expect, reason=reason, var=var, extra={**info, **(extra or {})})


def order_named_bins(adata, name: str):
    """``adata`` with bins in genome order and ``var`` coordinates, when every feature is named like a bin.

    Features named ``chr1:1-500000``, ``1:1-500000`` or ``chr1_1_500000`` are copy-number
    bins: their coordinates go to ``var["chr"]``, ``["start"]``, ``["end"]`` and the columns are
    put in genome order (overlapping bins are refused).  Any other dataset is returned as is.
    """
    from dhaka.analysis.copy_number import parse_bins

    info = adata.uns.get("dhaka_io", {})
    if adata.n_vars == 0 or "bins" in info or not _looks_like_a_bin(str(adata.var_names[0])):
        return adata
    parsed = parse_bins([str(v) for v in adata.var_names])
    if not (np.isfinite(parsed["rank"]).all() and np.isfinite(parsed["end"]).all()):
        return adata
    coords = pd.DataFrame({"chr": parsed["chrom"].to_numpy(), "start": parsed["start"].to_numpy(np.int64),
                           "end": parsed["end"].to_numpy(np.int64)})
    order, var = genome_bins(coords, name)
    if not np.array_equal(order, np.arange(len(order))):
        adata = adata[:, order].copy()
    for col in ("chr", "start", "end"):
        adata.var[col] = var[col].to_numpy()
    adata.uns["dhaka_io"] = {**info, "bins": {"n_bins": int(adata.n_vars), "dropped_incomplete": 0,
                                              "genome_ordered": True}}
    return adata


def _looks_like_a_bin(feature: str) -> bool:
    """Cheap first test (a digit after ``:`` or ``_``) before every name is parsed."""
    head, sep, tail = feature.replace("_", ":", 1).partition(":")
    return bool(sep) and tail[:1].isdigit()
