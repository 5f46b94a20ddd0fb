"""MatrixMarket files and 10x Genomics folders / zips (matrix.mtx + barcodes + features).
"""
from __future__ import annotations

import io
import itertools
import os
import re
from pathlib import Path, PurePosixPath
from typing import IO, Sequence

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import safety as _s
from .matrix import Expect, Orientation, _decide_orientation, _finish
from .safety import DataError, _check_names_budget, _q
from .source import _Input, _lines_guarded
from .text import _INF_TOKENS, _NAN_TOKENS, _is_number, _open_text, _text_encoding


# --------------------------------------------------------------------------- #
# MatrixMarket
# --------------------------------------------------------------------------- #
class _MtxHeader:
    """What a MatrixMarket banner and size line declare (checked against the limits)."""

    def __init__(self, *, layout: str, field: str, symmetry: str, n_rows: int, n_cols: int,
                 nnz: int, line_no: int, header_bytes: int):
        self.layout, self.field, self.symmetry = layout, field, symmetry
        self.n_rows, self.n_cols, self.nnz = n_rows, n_cols, nnz
        self.line_no, self.header_bytes = line_no, header_bytes

    @property
    def shape(self) -> tuple[int, int]:
        return self.n_rows, self.n_cols


def _mtx_header(fh: IO[bytes], name: str, size: int) -> _MtxHeader:
    """Read and check the banner and size line of a MatrixMarket stream.

    The declared shape and entry count are checked against the limits and the
    stream's size before anything is allocated.
    """
    first = fh.readline()
    banner = first.decode("latin-1").strip().split()
    if not banner or banner[0].lower() != "%%matrixmarket":
        raise DataError(f"{name}: not a MatrixMarket file (first line must start with %%MatrixMarket)")
    if len(banner) != 5 or banner[1].lower() != "matrix":
        raise DataError(f"{name}: malformed MatrixMarket header line {' '.join(banner)!r}")
    layout, field, symmetry = (b.lower() for b in banner[2:])
    if layout not in ("coordinate", "array"):
        raise DataError(f"{name}: unknown MatrixMarket layout {layout!r} (expected coordinate or array)")
    if field not in ("integer", "real", "double", "pattern"):
        raise DataError(f"{name}: MatrixMarket field {field!r} is not supported (integer, real or pattern)")
    if symmetry not in ("general", "symmetric"):
        raise DataError(f"{name}: MatrixMarket symmetry {symmetry!r} is not supported (general or symmetric)")
    if layout == "array" and (field == "pattern" or symmetry != "general"):
        raise DataError(f"{name}: MatrixMarket array layout must be 'real/integer general'")
    # skip comments to the size line
    pos, line_no = len(first), 1
    size_line = None
    while True:
        raw = fh.readline()
        if not raw:
            break
        line_no += 1
        pos += len(raw)
        line = raw.strip()
        if line and not line.startswith(b"%"):
            size_line = line.decode("latin-1")
            break
    if size_line is None:
        raise DataError(f"{name}: MatrixMarket file has a header but no size line (truncated?)")
    parts = size_line.split()
    want = 3 if layout == "coordinate" else 2
    if len(parts) != want or not all(p.isdigit() for p in parts):
        raise DataError(
            f"{name}: malformed MatrixMarket size line {line_no}: {size_line!r} "
            f"(expected {want} non-negative integers)"
        )
    n_rows, n_cols = int(parts[0]), int(parts[1])
    body = max(size - pos, 0)
    if n_rows > _s.MAX_DIM or n_cols > _s.MAX_DIM:
        raise DataError(
            f"{name}: header declares a {n_rows:,} x {n_cols:,} matrix; the limit is {_s.MAX_DIM:,} "
            "rows or columns (refusing before allocating anything)"
        )
    hdr = dict(layout=layout, field=field, symmetry=symmetry, n_rows=n_rows, n_cols=n_cols,
               line_no=line_no, header_bytes=pos)
    if layout == "array":
        total = n_rows * n_cols
        if total > _s.MAX_DENSE_ENTRIES:
            raise DataError(
                f"{name}: header declares a dense {n_rows:,} x {n_cols:,} matrix ({total:,} values), "
                f"above the limit of {_s.MAX_DENSE_ENTRIES:,}"
            )
        if total * 2 > body + 1:
            raise DataError(
                f"{name}: header declares {total:,} values but the file holds only {body:,} bytes "
                "after the header (truncated or wrong size line)"
            )
        return _MtxHeader(nnz=total, **hdr)
    nnz = int(parts[2])
    if nnz > _s.MAX_NNZ or nnz > n_rows * n_cols:
        raise DataError(
            f"{name}: header declares {nnz:,} entries for a {n_rows:,} x {n_cols:,} matrix "
            f"(more than fit, or above the limit of {_s.MAX_NNZ:,})"
        )
    min_bytes = 4 if field == "pattern" else 6  # "1 1\n" / "1 1 1\n"
    if nnz * min_bytes > body + 1:
        raise DataError(
            f"{name}: header declares {nnz:,} entries but the file holds only {body:,} bytes of "
            "entries (truncated file or wrong size line)"
        )
    _check_names_budget(n_rows, n_cols, nnz, name)
    return _MtxHeader(nnz=nnz, **hdr)


#: Bytes a number of each MatrixMarket field may be written with (besides whitespace):
#: anything else in the entries (a letter of NaN / inf / 0x1A, a comment) is looked at line by line.
_FIELD_BYTES = {
    "integer": b"0123456789+-",
    "pattern": b"0123456789+-",
    "real": b"0123456789+-.eE",
    "double": b"0123456789+-.eE",
}
_GUARD_BLOCK = 4 << 20


class _EntryGuard(io.RawIOBase):
    """The entries of a MatrixMarket stream, checked in blocks as ``scipy.io.mmread`` reads them.

    ``mmread`` (fast_matrix_market) is lenient where this reader refuses: it reads
    ``0x1A`` as 0, ``1.5`` in an integer file as 1 and ignores a fourth field.  So
    every block of entries (after the ``skip`` bytes of header) is checked for a
    byte no number of the declared field holds, and its whitespace-separated
    tokens are counted (``tokens``); ``suspect`` is set on the first odd byte.
    Both checks run at C speed (``bytes.translate``, one numpy comparison).
    """

    def __init__(self, fh: IO[bytes], *, skip: int, field: str):
        self._fh = fh
        self._skip = skip
        self._drop = _FIELD_BYTES[field] + b" \t\r\n"
        self._buf = memoryview(b"")
        self._pos = 0
        self._after_space = True
        self.tokens = 0
        self.suspect = False

    def readable(self) -> bool:
        return True

    def _check(self, data: bytes) -> None:
        if self._skip:
            cut = min(self._skip, len(data))
            data, self._skip = data[cut:], self._skip - cut
        if not data:
            return
        if data.translate(None, self._drop):
            self.suspect = True
        space = np.frombuffer(data, dtype=np.uint8) <= 32  # only digits, signs, . e E and blanks are left
        self.tokens += int(np.count_nonzero(space[:-1] > space[1:])) + int(self._after_space and not space[0])
        self._after_space = bool(space[-1])

    def _fill(self) -> bool:
        data = self._fh.read(_GUARD_BLOCK)
        if not data:
            return False
        self._check(data)
        self._buf, self._pos = memoryview(data), 0
        return True

    def readinto(self, b) -> int:
        if self._pos >= len(self._buf) and not self._fill():
            return 0
        n = min(len(b), len(self._buf) - self._pos)
        b[:n] = self._buf[self._pos:self._pos + n]
        self._pos += n
        return n

    def drain(self) -> None:
        """Check whatever the parser left unread (all of it, when it read the file itself)."""
        self._buf, self._pos = memoryview(b""), 0
        while self._fill():
            pass


def _mmread(inp: _Input, hdr: _MtxHeader, name: str):
    """``scipy.io.mmread`` of the whole input, its entries checked on the way (see :class:`_EntryGuard`).

    A plain file on disk is parsed by mmread straight from the path (in parallel)
    after one checking pass over its bytes; any other input (upload, gzip stream,
    zip member) is checked as mmread reads it.  Returns mmread's result, or None
    when the entries need the careful look of :func:`_diagnose_mtx`.
    """
    import scipy.io

    ncol = 1 if hdr.layout == "array" else (2 if hdr.field == "pattern" else 3)
    with _lines_guarded(inp.open(), name) as fh:
        guard = _EntryGuard(fh, skip=hdr.header_bytes, field=hdr.field)
        direct = inp.on_disk and not str(inp.path).lower().endswith((".gz", ".bz2"))
        try:
            if direct:
                guard.drain()
                if guard.suspect or guard.tokens != hdr.nnz * ncol:
                    return None
                out = scipy.io.mmread(str(inp.path))
            else:
                out = scipy.io.mmread(guard)
                guard.drain()
        except DataError:
            raise
        except Exception:  # noqa: BLE001 - located by the careful pass
            for stream in (fh, getattr(fh, "raw", None)):
                if isinstance(getattr(stream, "error", None), DataError):
                    raise stream.error from None
            return None
    if guard.suspect or guard.tokens != hdr.nnz * ncol:
        return None
    return out


def _skip_bytes(fh: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


def _diagnose_mtx(inp: _Input, hdr: _MtxHeader, name: str) -> None:
    """Walk the entry lines (``_MTX_BLOCK_LINES`` at a time) and raise a DataError at the first bad one."""
    array = hdr.layout == "array"
    ncol = 1 if array else (2 if hdr.field == "pattern" else 3)
    k = 0
    with _lines_guarded(inp.open(), name) as fh:
        _skip_bytes(fh, hdr.header_bytes)
        line_no = hdr.line_no
        while block := list(itertools.islice(fh, _s._MTX_BLOCK_LINES)):
            for raw in block:
                line_no += 1
                _check_entry_line(raw.decode("latin-1").strip(), line_no, k, hdr, name, ncol)
                k += bool(raw.strip())
    if k != hdr.nnz:
        if array:
            raise DataError(f"{name}: header declares {hdr.nnz:,} values, the file has {k:,}")
        raise DataError(
            f"{name}: header declares {hdr.nnz:,} entries but the file has {k:,} "
            "(truncated file or wrong size line)"
        )
    raise DataError(f"{name}: could not parse MatrixMarket entries")


def _check_entry_line(s: str, i: int, k: int, hdr: _MtxHeader, name: str, ncol: int) -> None:
    """Raise a DataError if line ``i`` (entry ``k + 1``) is not a valid entry of the declared matrix."""
    if not s:
        return
    if s.startswith("%"):
        raise DataError(
            f"{name}: line {i} is a comment among the entries; MatrixMarket comments belong before the size line"
        )
    fields = s.split()
    if len(fields) != ncol:
        raise DataError(f"{name}: line {i} has {len(fields)} fields, expected {ncol} ({s[:60]!r})")
    for f in fields:
        if f.lower() in _NAN_TOKENS:
            raise DataError(f"{name}: NaN at line {i}")
        if f.lower() in _INF_TOKENS:
            raise DataError(f"{name}: infinite value at line {i}")
        if not _is_number(f):
            raise DataError(f"{name}: non-numeric value {_q(f)} at line {i}")
    if hdr.field == "integer" and float(fields[-1]) != round(float(fields[-1])):
        raise DataError(
            f"{name}: non-integer value {_q(fields[-1])} at line {i}, but the header declares an 'integer' "
            "matrix (a file of real values says 'real')"
        )
    if hdr.layout == "array":
        return
    r, c = float(fields[0]), float(fields[1])
    if r != round(r) or c != round(c):
        raise DataError(f"{name}: MatrixMarket row/column indices must be integers (line {i})")
    if not (1 <= r <= hdr.n_rows and 1 <= c <= hdr.n_cols):
        raise DataError(
            f"{name}: entry {k + 1} ({int(r)}, {int(c)}) is outside the declared "
            f"{hdr.n_rows} x {hdr.n_cols} shape (indices are 1-based)"
        )


def _mtx_body(inp: _Input, hdr: _MtxHeader, name: str, *, transpose: bool):
    """The entries as a float32 csr_matrix (an ndarray for the array layout), by ``scipy.io.mmread``.

    The header has been checked against the limits and the file size before;
    mmread (fast_matrix_market) allocates the declared entries once (int32
    indices, 64-bit values), the values become float32 before the CSR is built
    (about 20 bytes an entry at the peak), transposed on the way when
    ``transpose`` (10x files are features x cells).  A file mmread refuses, or
    whose entries the guard finds odd, is walked line by line for a message
    that names the line.
    """
    out = _mmread(inp, hdr, name)
    if out is None:
        _diagnose_mtx(inp, hdr, name)
    if isinstance(out, np.ndarray):
        return out.T if transpose else out
    shape = out.shape
    rows, cols = out.row, out.col
    with np.errstate(over="ignore"):
        vals = out.data.astype(np.float32)  # beyond float32: inf, refused by the value check
    del out
    n_entries = vals.size
    X = sp.csr_matrix((vals, (cols, rows) if transpose else (rows, cols)), shape=shape[::-1] if transpose else shape)
    del vals
    if X.nnz != n_entries:  # building the CSR summed entries listed twice
        _refuse_duplicate_entries(rows, cols, shape, name, symmetric=hdr.symmetry == "symmetric")
    del rows, cols
    return X


def _refuse_duplicate_entries(rows: np.ndarray, cols: np.ndarray, shape: tuple[int, int], name: str, *,
                              symmetric: bool) -> None:
    """Refuse a coordinate listed twice, naming the first repeated pair (1-based, as in the file).

    Building the CSR sums the two values without a word; the caller sees it (fewer
    stored entries than read) and this finds the first pair, on one int64 key an entry.
    """
    if rows.size < 2:
        return
    keys = rows.astype(np.int64) * int(shape[1]) + cols
    order = np.argsort(keys, kind="stable")
    sorted_keys = keys[order]
    dup = np.flatnonzero(sorted_keys[1:] == sorted_keys[:-1])
    if not dup.size:
        return
    del sorted_keys
    # the repeat that comes first in the file, and the entry it repeats
    second = order[dup + 1]
    k = int(np.argmin(second))
    j, i = int(second[k]), int(order[dup[k]])
    r, c = int(rows[j]) + 1, int(cols[j]) + 1
    where = (f"entries {i + 1:,} and {j + 1:,}" if not symmetric
             else "a symmetric file lists it and its mirror (or twice)")
    raise DataError(
        f"{name}: duplicate MatrixMarket coordinate ({r}, {c}): {where}; "
        f"{dup.size:,} repeated coordinate(s) in all. Each (row, column) may appear once; "
        "repeated entries would be summed, so the file is refused")


def _read_mtx_file(inp: _Input, *, orientation: Orientation, expect: Expect):
    name = inp.name
    with _lines_guarded(inp.open(), name) as fh:
        hdr = _mtx_header(fh, name, inp.size())
    file_orient, reason = _decide_orientation(
        orientation, row_names=None, col_names=None, shape=hdr.shape, default="genes_x_cells"
    )
    if orientation == "auto":
        reason = "MatrixMarket 10x convention (features x cells)"
    transposed = file_orient == "genes_x_cells"
    X = _mtx_body(inp, hdr, name, transpose=transposed)
    return _finish(X, None, None, name=name, fmt="mtx", file_orientation=file_orient,
                   transposed=transposed, expect=expect, reason=reason)


# --------------------------------------------------------------------------- #
# 10x folder / zip
# --------------------------------------------------------------------------- #
_MTX_RE = re.compile(r"^(.*?)matrix\.mtx(\.gz)?$", re.IGNORECASE)


def _tsv_lines(inp: _Input, *, max_lines: int) -> list[list[str]]:
    """Tab-separated non-blank lines of a (possibly gzipped) barcodes/features file.

    Stops after ``max_lines`` lines: the caller knows how many the matrix allows,
    so a huge names file costs no more than that.
    """
    inp = inp.maybe_gunzipped()
    enc = _text_encoding(inp)
    out: list[list[str]] = []
    with _open_text(inp, enc, newline="\n") as fh:
        for line in fh:
            line = line.rstrip("\n").rstrip("\r")
            if line.strip():
                out.append(line.split("\t"))
                if len(out) >= max_lines:
                    break
    return out


def _assemble_10x(
    mtx: _Input, barcodes: _Input, features: _Input, *, names: tuple[str, str, str], label: str,
    fmt: str, orientation: Orientation, expect: Expect,
):
    mtx_name, bc_name, ft_name = names
    mtx_label = f"{label}: {mtx_name}"
    mtx = _Input(name=mtx_label, opener=mtx.open, size=mtx.size() if mtx.on_disk else mtx._size)
    mtx = mtx.maybe_gunzipped()
    with _lines_guarded(mtx.open(), mtx_label) as fh:
        hdr = _mtx_header(fh, mtx_label, mtx.size())
    n_rows, n_cols = hdr.shape
    cap = max(n_rows, n_cols) + 1  # one more than any match needs: enough to report a mismatch
    bc = [r[0].strip() for r in _tsv_lines(_renamed(barcodes, f"{label}: {bc_name}"), max_lines=cap)]
    ft = _tsv_lines(_renamed(features, f"{label}: {ft_name}"), max_lines=cap)

    def count(lst):
        return f"more than {len(lst) - 1:,}" if len(lst) >= cap else f"{len(lst):,}"

    if orientation == "auto":
        if len(ft) == n_rows and len(bc) == n_cols:
            file_orient = "genes_x_cells"
        elif len(bc) == n_rows and len(ft) == n_cols:
            file_orient = "cells_x_genes"
        else:
            raise DataError(
                f"{label}: {mtx_name} is {n_rows:,} x {n_cols:,} but {bc_name} lists "
                f"{count(bc)} barcodes and {ft_name} {count(ft)} features; they must match "
                "(features x barcodes)"
            )
        reason = "matched barcode/feature counts"
    else:
        file_orient, reason = orientation, "given"
        n_cells, n_feat = (n_cols, n_rows) if file_orient == "genes_x_cells" else (n_rows, n_cols)
        if len(bc) != n_cells or len(ft) != n_feat:
            raise DataError(
                f"{label}: {mtx_name} read as {file_orient} has {n_cells:,} cells x {n_feat:,} features "
                f"but {bc_name} lists {count(bc)} and {ft_name} {count(ft)}"
            )
    ids = [r[0].strip() for r in ft]
    symbols = [(r[1] if len(r) > 1 else r[0]).strip() for r in ft]
    var_names = symbols if len(set(symbols)) == len(symbols) else ids
    var = pd.DataFrame({"gene_ids": ids}, index=pd.Index(var_names, dtype=object))
    if any(len(r) > 2 for r in ft):
        var["feature_types"] = [r[2].strip() if len(r) > 2 else "" for r in ft]
    del ft
    transposed = file_orient == "genes_x_cells"
    X = _mtx_body(mtx, hdr, mtx_label, transpose=transposed)
    return _finish(
        X, bc, var_names, name=label, fmt=fmt, file_orientation=file_orient, transposed=transposed,
        expect=expect, reason=reason, var=var,
        extra={"var_names_from": "symbols" if var_names is symbols else "gene_ids"},
    )


def _renamed(inp: _Input, name: str) -> _Input:
    return _Input(name=name, opener=inp.open, size=inp._size)


def _usable_member(n: str) -> bool:
    """False for macOS resource forks and folders (``__MACOSX/``, ``._name``)."""
    parts = PurePosixPath(n).parts
    return bool(parts) and not parts[-1].startswith("._") and "__MACOSX" not in parts


def _find_10x(names: Sequence[str], label: str) -> tuple[str, str, str]:
    """Pick matrix, barcodes and features members from a list of relative names."""
    mtxs = [n for n in names if _usable_member(n) and _MTX_RE.match(PurePosixPath(n).name)]
    if len(mtxs) > 1:  # Cell Ranger's outs/ holds raw_ and filtered_feature_bc_matrix: take filtered
        filtered = [n for n in mtxs if "filtered" in n.lower()]
        if len(filtered) == 1:
            mtxs = filtered
    if not mtxs:
        raise DataError(
            f"{label}: no matrix.mtx or matrix.mtx.gz found; a 10x folder/zip needs matrix.mtx(.gz), "
            "barcodes.tsv(.gz) and features.tsv(.gz) (or genes.tsv(.gz))"
        )
    if len(mtxs) > 1:
        raise DataError(f"{label}: several matrices found ({', '.join(sorted(mtxs)[:4])}); provide one sample")
    m = mtxs[0]
    p = PurePosixPath(m)
    prefix = _MTX_RE.match(p.name).group(1)
    parent = "" if str(p.parent) == "." else str(p.parent) + "/"
    lookup = {n.lower(): n for n in names}

    def find(stems: Sequence[str]) -> str | None:
        for stem in stems:
            for ext in (".tsv.gz", ".tsv", ".txt.gz", ".txt"):
                hit = lookup.get(f"{parent}{prefix}{stem}{ext}".lower())
                if hit:
                    return hit
        return None

    bc = find(["barcodes"])
    ft = find(["features", "genes"])
    if bc is None:
        raise DataError(f"{label}: found {m} but no {parent}{prefix}barcodes.tsv(.gz) next to it")
    if ft is None:
        raise DataError(f"{label}: found {m} but no {parent}{prefix}features.tsv(.gz) or genes.tsv(.gz) next to it")
    return m, bc, ft


def _read_10x_dir(inp: _Input, *, orientation: Orientation, expect: Expect):
    root = inp.path
    assert root is not None
    names = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel = os.path.relpath(dirpath, root)
        depth = 0 if rel == "." else rel.count(os.sep) + 1
        if depth >= 2:
            dirnames[:] = []
        for f in filenames:
            names.append(f if rel == "." else PurePosixPath(*Path(rel).parts, f).as_posix())
    m, bc, ft = _find_10x(names, inp.name)
    total = sum((root / n).stat().st_size for n in (m, bc, ft))
    if inp.max_bytes is not None and total > inp.max_bytes:
        raise DataError(
            f"{inp.name}: 10x files total {total:,} bytes, above the size limit of {inp.max_bytes:,} bytes (max_bytes)"
        )
    if total > _s.MAX_UNCOMPRESSED_BYTES:
        raise DataError(f"{inp.name}: 10x files total {total:,} bytes, above the limit")
    parts = [_Input(name=n, path=root / n) for n in (m, bc, ft)]
    return _assemble_10x(*parts, names=(m, bc, ft), label=inp.name, fmt="10x",
                         orientation=orientation, expect=expect)
