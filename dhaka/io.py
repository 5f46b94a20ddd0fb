"""Reading, validating and writing Dhaka Explorer data.

Every problem with *input* data raises :class:`DataError` (a ``ValueError``)
whose message names the file, the problem and, where known, the line and
column.  Problems with the *arguments* (an unknown ``orientation``, say) raise a
plain ``ValueError``.

Readers return an :class:`anndata.AnnData` with cells as rows and genes (or
CNV bins, or any other features) as columns.  Sparse input stays sparse
(:class:`scipy.sparse.csr_matrix`, float32) and is never densified; dense input
becomes a float32 :class:`numpy.ndarray`.

Supported formats
-----------------
* delimited text: ``.csv``, ``.tsv``, ``.txt``, ``.tab`` (optionally ``.gz``),
  delimiter sniffed (comma, tab, semicolon, pipe or runs of spaces), either
  orientation (auto-detected, or forced with ``orientation=``);
* ``.h5ad`` (the HDF5 signature is checked first; nothing is ever unpickled;
  external storage, external links, soft links that dangle and virtual datasets
  are refused anywhere in the file before anything is read; only ``X`` (or the
  chosen ``layer``) and the ``obs`` / ``var`` tables are loaded, never ``uns``,
  ``obsm``, ``varm``, ``obsp``, ``raw`` ...);
* a 10x Genomics folder or ``.zip`` (``matrix.mtx[.gz]`` + ``barcodes.tsv[.gz]``
  + ``features.tsv[.gz]`` or ``genes.tsv[.gz]``, optionally with a common
  prefix such as ``GSM123_``; in a Cell Ranger ``outs/`` folder the filtered
  matrix wins); a ``.zip`` holding a single matrix file is read as that file;
* a bare MatrixMarket ``.mtx[.gz]`` (10x convention: features x cells);
* ``.npz`` written by :func:`scipy.sparse.save_npz` (or :func:`numpy.savez` of
  one 2-D array, optionally with ``obs_names`` / ``var_names`` arrays) and
  ``.npy`` (one 2-D array); both loaded with ``allow_pickle=False``.

Without a usable extension the format is sniffed from the first bytes (gzip,
zip, HDF5, ``.npy``, MatrixMarket, else text).  Python pickles are recognised
and refused everywhere, never unpickled.

The limits below guard against hostile or broken files; change them on the
module (``dhaka.io.MAX_UNCOMPRESSED_BYTES = ...``) if you need to.

Memory: text tables, MatrixMarket and 10x input are parsed as streams (straight
from the file, the upload's bytes or the gzip/zip stream, in blocks), never as
a whole decoded text; only X (or a layer), obs and var of an .h5ad are read.
Reading stays within 3x the resulting float32 matrix + 200 MB
(``bench/io_memory.py`` measures it per format).

Writing: every text table the library writes goes through
:func:`safe_text_frame`, which neutralises spreadsheet formulas (text cells
beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading
single quote, the OWASP rule); use it (or :func:`to_csv_safe`) for any CSV
offered for download.
"""
from __future__ import annotations

import codecs
import csv
import gzip
import hashlib
import io
import math
import os
import re
import stat
import tempfile
import warnings
import zipfile
import zlib
from collections import Counter
from pathlib import Path, PurePosixPath
from typing import IO, TYPE_CHECKING, Any, Callable, Iterable, Iterator, Literal, Sequence, Union

import numpy as np
import pandas as pd
import scipy.sparse as sp

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = [
    "DataError",
    "read",
    "read_metadata",
    "write_latent_csv",
    "safe_text_frame",
    "neutralize_formula",
    "to_csv_safe",
    "to_h5ad_bytes",
    "zip_dir",
    "unzip_safe",
    "fingerprint",
    "check_hdf5_safety",
    "estimate_read_memory",
    "MIN_CELLS",
    "MIN_FEATURES",
]

Orientation = Literal["auto", "cells_x_genes", "genes_x_cells"]
Expect = Literal["any", "counts", "nonnegative"]
Source = Union[str, os.PathLike, bytes, bytearray, memoryview, IO[bytes]]

#: Smallest accepted matrix: 2 cells x 2 features.
MIN_CELLS = 2
MIN_FEATURES = 2
#: Largest total size of decompressed data (gzip stream or all zip members).
MAX_UNCOMPRESSED_BYTES = 4 * 2**30
#: A member or stream that decompresses to more than ``BOMB_MIN_BYTES`` at a
#: ratio above ``MAX_COMPRESSION_RATIO`` is treated as a decompression bomb.
MAX_COMPRESSION_RATIO = 250
BOMB_MIN_BYTES = 64 * 2**20
#: Most members a zip archive may hold.
MAX_ZIP_ENTRIES = 10_000
#: Largest number of rows or columns a sparse matrix header may declare.
MAX_DIM = 20_000_000
#: Largest number of stored entries a sparse matrix may declare.
MAX_NNZ = 2**31 - 1
#: Largest number of values a dense matrix may declare (rows * cols).
MAX_DENSE_ENTRIES = 500_000_000
#: Every row and column of a matrix gets a name in memory, so a sparse matrix may
#: declare at most this many more rows + columns than twice its stored entries:
#: a 73-byte file declaring a 2,000,000 x 2,000,000 matrix with one entry is
#: refused rather than costing half a gigabyte of names.
MAX_EMPTY_NAMES = 1_000_000
#: Largest total of declared bytes of what is loaded from an .h5ad (X or the
#: layer, obs and var); variable-length strings count 64 bytes each.
MAX_H5AD_BYTES = 4 * 2**30
#: A metadata table may have at most this many rows per cell of the dataset (+ 1,000).
MAX_METADATA_ROWS_PER_CELL = 10
#: Most links (groups, datasets, soft and external links) an HDF5 file may hold.
MAX_HDF5_LINKS = 100_000
#: Values per block when checking dense matrices; characters per block of text
#: and lines per block of MatrixMarket entries when streaming.
_BLOCK_VALUES = 1 << 22
_TEXT_BLOCK_CHARS = 1 << 22
_MTX_BLOCK_LINES = 1 << 20

_HDF5_MAGIC = b"\x89HDF\r\n\x1a\n"
_GZIP_MAGIC = b"\x1f\x8b"
_ZIP_MAGICS = (b"PK\x03\x04", b"PK\x05\x06")
_NPY_MAGIC = b"\x93NUMPY"
_MM_MAGIC = b"%%matrixmarket"

_TABLE_EXTS = {".csv", ".tsv", ".txt", ".tab", ".dat"}
_NUM_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")
_NAN_TOKENS = {"nan", "-nan", "+nan", "na", "n/a", "#n/a", "null", "none", "nat", "."}
_INF_TOKENS = {"inf", "+inf", "-inf", "infinity", "+infinity", "-infinity"}
_F32_MAX = float(np.finfo(np.float32).max)


class DataError(ValueError):
    """Input data that cannot be read or fails validation.

    The message names the problem and the file (and line/column where known),
    and is meant to be shown to the user as is.
    """


# --------------------------------------------------------------------------- #
# small helpers
# --------------------------------------------------------------------------- #
def _q(name: Any, limit: int = 40) -> str:
    """Quote a value for an error message, shortened to ``limit`` characters."""
    s = str(name)
    if len(s) > limit:
        s = s[: limit - 3] + "..."
    return repr(s)


def _plural(n: int, word: str) -> str:
    return f"{n} {word}" if n == 1 else f"{n} {word}s"


def _is_number(token: str) -> bool:
    return bool(_NUM_RE.match(token))


def _looks_numeric(token: str) -> bool:
    """Number, NaN or infinity spelled out (used to tell a header from data)."""
    t = token.strip().lower()
    return _is_number(t) or t in _INF_TOKENS or (t in _NAN_TOKENS and t != "")


class _GzipStream(io.RawIOBase):
    """A gzip stream decompressed on the fly, refusing bombs, truncation and corruption.

    Errors are raised as :class:`DataError` from ``readinto`` and remembered in
    ``error`` (a parser that swallows the exception cannot hide it).
    """

    def __init__(self, raw: IO[bytes], name: str, compressed_size: int):
        self._raw = raw
        self._g = gzip.GzipFile(fileobj=raw, mode="rb")
        self._name = name
        self._compressed = max(int(compressed_size), 1)
        self._limit = MAX_UNCOMPRESSED_BYTES
        self.total = 0
        self.error: DataError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error is not None:
            raise self.error
        name = self._name
        try:
            n = self._g.readinto(b)
        except EOFError:
            err = DataError(
                f"{name}: gzip stream is truncated (ended before the end-of-stream marker); "
                "the file was probably cut short during download or upload"
            )
        except DataError as e:  # from a guarded inner stream (a zip member)
            err = e
        except (OSError, zlib.error) as e:
            err = DataError(f"{name}: corrupt gzip data ({e})")
        else:
            self.total += n
            if self.total > self._limit:
                err = DataError(
                    f"{name}: decompresses to more than {self._limit:,} bytes (limit); "
                    "refusing a possible gzip bomb"
                )
            else:
                try:
                    _check_ratio(name, self._compressed, self.total)
                    return n
                except DataError as e:
                    err = e
        self.error = err
        raise err

    def close(self) -> None:
        try:
            self._g.close()
            self._raw.close()
        finally:
            super().close()


class _GuardedStream(io.RawIOBase):
    """A stream whose read errors (a corrupt zip member, say) become one :class:`DataError`."""

    def __init__(self, fh: IO[bytes], describe: Callable[[Exception], str]):
        self._fh = fh
        self._describe = describe
        self.error: DataError | None = None

    def readable(self) -> bool:
        return True

    def readinto(self, b) -> int:
        if self.error is not None:
            raise self.error
        try:
            data = self._fh.read(len(b))
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001 - any failure of the underlying stream
            self.error = DataError(self._describe(e))
            raise self.error from None
        n = len(data)
        b[:n] = data
        return n

    def close(self) -> None:
        try:
            self._fh.close()
        finally:
            super().close()


class _Input:
    """Raw input: a name and a way to stream its bytes (again) from the start.

    Backed by a path, by bytes already in memory, or by an ``opener`` (a gzip
    stream, a zip member) that returns a fresh raw stream each time.  ``data``
    loads everything at once and is only used by the formats that need it
    (.npy, .npz, an .h5ad given as bytes).
    """

    def __init__(self, *, name: str, data: bytes | None = None, path: Path | None = None,
                 max_bytes: int | None = None, opener: Callable[[], IO[bytes]] | None = None,
                 size: int | None = None):
        self.name = name
        self.max_bytes = max_bytes
        self.path = path
        self._data = data
        self._opener = opener
        self._size = size

    @property
    def on_disk(self) -> bool:
        """True for a plain file on disk (not a gzip or zip stream, not bytes)."""
        return self.path is not None and self._data is None and self._opener is None

    def _cannot(self, e: OSError) -> DataError:
        return DataError(f"{self.name}: cannot read file ({e.strerror or e})")

    def open(self) -> IO[bytes]:
        """A fresh buffered binary stream positioned at the start."""
        if self._data is not None:
            return io.BytesIO(self._data)
        if self._opener is not None:
            return io.BufferedReader(self._opener(), 1 << 20)
        assert self.path is not None
        try:
            return open(self.path, "rb")
        except OSError as e:
            raise self._cannot(e) from None

    @property
    def data(self) -> bytes:
        if self._data is None:
            if self.on_disk:
                try:
                    self._data = self.path.read_bytes()
                except OSError as e:
                    raise self._cannot(e) from None
            else:
                with self.open() as fh:
                    self._data = fh.read()
            self._size = len(self._data)
        return self._data

    def head(self, n: int = 4096) -> bytes:
        if self._data is not None:
            return self._data[:n]
        with self.open() as fh:
            try:
                return fh.read(n)
            except OSError as e:
                raise self._cannot(e) from None

    def size(self) -> int:
        """Size in bytes (for a gzip stream: decompressed, counted by one streaming pass)."""
        if self._size is None:
            if self._data is not None:
                self._size = len(self._data)
            elif self.on_disk:
                self._size = self.path.stat().st_size
            else:
                total = 0
                with self.open() as fh:
                    while chunk := fh.read(1 << 20):
                        total += len(chunk)
                self._size = total
        return self._size

    def gunzipped(self) -> "_Input":
        """The decompressed stream of this (gzip) input, with the bomb limits."""
        compressed = self.size()
        return _Input(name=self.name, opener=lambda: _GzipStream(self.open(), self.name, compressed))

    def maybe_gunzipped(self) -> "_Input":
        return self.gunzipped() if self.head(2) == _GZIP_MAGIC else self


def _open_source(source: Source, filename: str | None, max_bytes: int | None) -> _Input:
    if max_bytes is not None and max_bytes < 0:
        raise ValueError("max_bytes must be None or >= 0")
    if isinstance(source, (str, os.PathLike)):
        path = Path(source)
        name = filename or path.name or str(path)
        if not path.exists():
            raise DataError(f"{name}: file or folder not found ({path})")
        if path.is_dir():
            return _Input(name=name, path=path, max_bytes=max_bytes)
        size = path.stat().st_size
        if max_bytes is not None and size > max_bytes:
            raise DataError(
                f"{name}: file is {size:,} bytes, above the size limit of {max_bytes:,} bytes (max_bytes)"
            )
        return _Input(name=name, path=path)
    if isinstance(source, (bytes, bytearray, memoryview)):
        data = bytes(source)
        name = filename or "<bytes>"
    elif hasattr(source, "read"):
        name = filename or os.path.basename(str(getattr(source, "name", "") or "")) or "<upload>"
        try:
            if hasattr(source, "seek"):
                try:
                    source.seek(0)
                except (OSError, ValueError):
                    pass
            data = source.read() if max_bytes is None else source.read(max_bytes + 1)
        except Exception as e:  # noqa: BLE001 - any read failure is an input problem
            raise DataError(f"{name}: cannot read upload ({e})") from None
        if isinstance(data, str):
            data = data.encode("utf-8")
        data = bytes(data)
    else:
        raise TypeError(
            f"source must be a path, bytes or a binary file-like object, not {type(source).__name__}"
        )
    if max_bytes is not None and len(data) > max_bytes:
        raise DataError(
            f"{name}: input is more than {max_bytes:,} bytes, above the size limit (max_bytes)"
        )
    return _Input(name=name, data=data)


def _split_ext(name: str) -> tuple[str, bool]:
    """Return (extension of the inner file, gzip-compressed?) from a file name."""
    lower = name.lower()
    gz = lower.endswith(".gz")
    if gz:
        lower = lower[:-3]
    return os.path.splitext(lower)[1], gz


def _is_pickle(head: bytes) -> bool:
    # protocol 2+ starts with PROTO (0x80) then the protocol number
    return len(head) >= 2 and head[0] == 0x80 and 2 <= head[1] <= 5


def _describe_magic(head: bytes) -> str | None:
    if _is_pickle(head):
        return "a Python pickle"
    if head.startswith(_HDF5_MAGIC):
        return "an HDF5 file"
    if head.startswith(_ZIP_MAGICS):
        return "a zip archive"
    if head.startswith(_GZIP_MAGIC):
        return "gzip-compressed data"
    if head.startswith(_NPY_MAGIC):
        return "a NumPy .npy array"
    if head.lower().startswith(_MM_MAGIC):
        return "a MatrixMarket file"
    return None


def _check_ratio(name: str, compressed: int, uncompressed: int) -> None:
    if uncompressed > BOMB_MIN_BYTES and uncompressed > MAX_COMPRESSION_RATIO * max(compressed, 1):
        raise DataError(
            f"{name}: compression ratio {uncompressed / max(compressed, 1):,.0f}:1 is implausible "
            f"for a data matrix; refusing a possible decompression (zip/gzip) bomb"
        )


def _gunzip(data: bytes, name: str, *, limit: int | None = None) -> bytes:
    """Decompress gzip ``data``, refusing truncated streams and bombs."""
    limit = MAX_UNCOMPRESSED_BYTES if limit is None else limit
    out = bytearray()
    try:
        with gzip.GzipFile(fileobj=io.BytesIO(data)) as g:
            while True:
                chunk = g.read(1 << 20)
                if not chunk:
                    break
                out += chunk
                if len(out) > limit:
                    raise DataError(
                        f"{name}: decompresses to more than {limit:,} bytes (limit); "
                        "refusing a possible gzip bomb"
                    )
                _check_ratio(name, len(data), len(out))
    except EOFError:
        raise DataError(
            f"{name}: gzip stream is truncated (ended before the end-of-stream marker); "
            "the file was probably cut short during download or upload"
        ) from None
    except (OSError, zlib.error) as e:
        raise DataError(f"{name}: corrupt gzip data ({e})") from None
    return bytes(out)


def _decode_text(data: bytes, name: str) -> str:
    """Decode a text table, refusing binary data."""
    if data.startswith((b"\xff\xfe", b"\xfe\xff")):
        try:
            return data.decode("utf-16")
        except UnicodeDecodeError:
            raise DataError(f"{name}: invalid UTF-16 text") from None
    sample = data[:65536]
    what = _describe_magic(sample)
    if what is not None and what != "a MatrixMarket file":
        raise DataError(f"{name}: this is {what}, not a text table (binary data)")
    if b"\x00" in sample:
        raise DataError(f"{name}: binary data (contains NUL bytes), not a text table")
    try:
        return data.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        ctrl = sum(1 for b in sample if b < 9 or 13 < b < 32 or b == 127)
        if ctrl > 0.01 * max(len(sample), 1) or ctrl > 20:
            raise DataError(
                f"{name}: binary data, not a text table (invalid UTF-8 at byte {e.start})"
            ) from None
        return data.decode("latin-1")


def _normalize_newlines(text: str) -> str:
    """CRLF and old-Mac CR line ends become LF (so line numbers agree everywhere)."""
    if "\r" in text:
        text = text.replace("\r\n", "\n").replace("\r", "\n")
    return text


# --------------------------------------------------------------------------- #
# read()
# --------------------------------------------------------------------------- #
def read(
    source: Source,
    *,
    filename: str | None = None,
    orientation: Orientation = "auto",
    expect: Expect = "any",
    max_bytes: int | None = None,
    layer: str | None = None,
) -> "anndata.AnnData":
    """Read a matrix file into a validated cells x features AnnData.

    Parameters
    ----------
    source
        A path (file or 10x folder), ``bytes``, or a binary file-like object
        such as Streamlit's ``UploadedFile``.
    filename
        Name used to pick the format and in messages; defaults to the path's
        name or ``source.name``.  Without a usable extension the format is
        sniffed from the content.
    orientation
        Orientation of the matrix *in the file*.  ``"auto"`` decides from the
        header corner (``gene``, ``cell``, ...), from which axis' names look
        like genes or barcodes, and finally assumes there are more genes than
        cells.  ``.h5ad`` and ``.npz``/``.npy`` default to cells x genes, a bare
        ``.mtx`` to genes x cells (10x convention); 10x folders/zips are matched
        by their barcode and feature counts.
    expect
        ``"counts"`` requires non-negative integers, ``"nonnegative"``
        non-negative values, ``"any"`` only finite values.
    max_bytes
        Refuse inputs larger than this many bytes (as stored, before
        decompression).
    layer
        ``.h5ad`` only: read this entry of ``layers`` (``"counts"``,
        ``"state"``, ...) as the matrix instead of ``X``.  Other formats have no
        layers and refuse it.

    Returns
    -------
    anndata.AnnData
        ``X`` is float32 (``csr_matrix`` for sparse input, ``ndarray`` for
        dense), ``obs_names`` are cell ids and ``var_names`` feature names.
        ``uns["dhaka_io"]`` records ``filename``, ``format``, ``orientation``
        (of the file), ``transposed`` and ``orientation_reason`` (and
        ``layer`` when one was read).  From an ``.h5ad`` only ``X`` (or the
        layer) and ``obs`` / ``var`` are read: ``uns``, ``obsm``, ``varm``,
        ``obsp``, ``raw`` and other layers are left in the file.

    Raises
    ------
    DataError
        For every problem with the input.
    """
    if orientation not in ("auto", "cells_x_genes", "genes_x_cells"):
        raise ValueError(f"orientation must be 'auto', 'cells_x_genes' or 'genes_x_cells', not {orientation!r}")
    if expect not in ("any", "counts", "nonnegative"):
        raise ValueError(f"expect must be 'any', 'counts' or 'nonnegative', not {expect!r}")
    if layer is not None and not isinstance(layer, str):
        raise ValueError(f"layer must be None or a layer name (str), not {type(layer).__name__}")
    inp = _open_source(source, filename, max_bytes)
    try:
        return _read(inp, orientation=orientation, expect=expect, layer=layer)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{inp.name}: not enough memory to load this file") from None
    except Exception as e:  # noqa: BLE001 - the promise is: input problems raise DataError
        raise DataError(f"{inp.name}: could not read file ({type(e).__name__}: {e})") from e


def _read(inp: _Input, *, orientation: Orientation, expect: Expect, layer: str | None = None):
    if inp.path is not None and inp.path.is_dir():
        _no_layer(inp.name, layer, "a 10x folder")
        return _read_10x_dir(inp, orientation=orientation, expect=expect)
    ext, _ = _split_ext(inp.name)
    head = inp.head(64)
    if not head:
        raise DataError(f"{inp.name}: file is empty")
    if head.startswith(_GZIP_MAGIC) and ext not in (".zip", ".npz"):
        inp = inp.gunzipped()
        head = inp.head(64)
        if not head:
            raise DataError(f"{inp.name}: file is empty (after decompression)")
    if _is_pickle(head):
        raise DataError(
            f"{inp.name}: this is a Python pickle; pickles can run arbitrary code, so they are "
            "refused (never unpickled). Save the matrix as .h5ad, .npz (scipy.sparse.save_npz) or CSV"
        )
    if ext == ".h5ad" or (ext not in _TABLE_EXTS | {".zip", ".npz", ".npy", ".mtx", ".h5", ".hdf5", ".loom"}
                          and head.startswith(_HDF5_MAGIC)):
        return _read_h5ad(inp, orientation=orientation, expect=expect, layer=layer)
    _no_layer(inp.name, layer, "this format")
    if ext == ".zip":
        return _read_zip(inp, orientation=orientation, expect=expect)
    if ext == ".npz":
        return _read_npz(inp, orientation=orientation, expect=expect)
    if ext == ".npy":
        return _read_npy(inp.data, inp.name, orientation=orientation, expect=expect)
    if ext == ".mtx":
        return _read_mtx_file(inp, orientation=orientation, expect=expect)
    if ext in (".h5", ".hdf5", ".loom"):
        raise DataError(
            f"{inp.name}: {ext} files are not supported; use .h5ad, a 10x matrix.mtx folder/zip, .npz or CSV"
        )
    if ext in _TABLE_EXTS:
        return _read_table(inp, ext=ext, orientation=orientation, expect=expect)
    # unknown extension: sniff
    if head.startswith(_ZIP_MAGICS):
        return _read_zip(inp, orientation=orientation, expect=expect)
    if head.startswith(_NPY_MAGIC):
        return _read_npy(inp.data, inp.name, orientation=orientation, expect=expect)
    if head.lower().startswith(_MM_MAGIC):
        return _read_mtx_file(inp, orientation=orientation, expect=expect)
    # unknown or missing extension and not a known binary signature: try a text table
    return _read_table(inp, ext=ext, orientation=orientation, expect=expect)


def _no_layer(name: str, layer: str | None, what: str) -> None:
    if layer is not None:
        raise DataError(f"{name}: layer={layer!r} was given, but {what} has no layers (only .h5ad files do)")


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
    """(first row, block) over a dense matrix, about ``_BLOCK_VALUES`` values a block.

    Checks over blocks need temporaries (masks, rounded copies) the size of a
    block, not of the matrix.
    """
    step = max(1, _BLOCK_VALUES // max(X.shape[1], 1))
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
    if n_obs < MIN_CELLS or n_var < MIN_FEATURES:
        raise DataError(
            f"{name}: matrix has {_plural(n_obs, 'cell')} x {_plural(n_var, 'feature')} "
            f"(read as {file_orientation.replace('_x_', ' x ')}); at least {MIN_CELLS} cells and "
            f"{MIN_FEATURES} genes/features are needed (the minimum is {MIN_CELLS}x{MIN_FEATURES})"
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


# --------------------------------------------------------------------------- #
# delimited text
# --------------------------------------------------------------------------- #
def _first_lines(text: str, n: int = 30) -> list[str]:
    out = []
    for line in text[: 1 << 20].split("\n"):
        if line.strip():
            out.append(line.rstrip("\r"))
            if len(out) >= n:
                break
    return out


def _sniff_delimiter(lines: list[str], ext: str) -> str | None:
    """Return the delimiter (``None`` for runs of whitespace)."""
    preferred = {".csv": ",", ".tsv": "\t", ".tab": "\t"}.get(ext)
    best, best_score = None, (0.0, 0)
    for d in (",", "\t", ";", "|"):
        counts = [len(next(csv.reader([ln], delimiter=d))) for ln in lines]
        if counts[0] < 2 and (len(counts) < 2 or counts[1] < 2):
            continue
        mode, freq = Counter(counts).most_common(1)[0]
        if mode < 2:
            continue
        score = (freq / len(counts), mode)
        if d == preferred and freq / len(counts) >= 0.8:
            return d
        if score > best_score:
            best, best_score = d, score
    if best is not None:
        return best
    if any(len(ln.split()) >= 2 for ln in lines[:2]):
        return None
    raise DataError(
        "has only one column (no delimiter found: expected comma, tab, semicolon or spaces); "
        "a matrix file needs an id column and at least 2 value columns"
    )


def _iter_rows(text: str, delim: str | None):
    """Yield (line number, stripped fields) for non-blank lines."""
    if delim is None:
        for i, line in enumerate(text.split("\n"), 1):
            fields = [f.strip('"') for f in line.split()]
            if fields:
                yield i, fields
        return
    reader = csv.reader(io.StringIO(text, newline=""), delimiter=delim)
    try:
        for fields in reader:
            if not fields or (len(fields) == 1 and not fields[0].strip()):
                continue
            yield reader.line_num, [f.strip() for f in fields]
    except csv.Error as e:
        raise DataError(f"malformed text at line {reader.line_num + 1} ({e})") from None


_NUM_PAT = r"[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?"


def _diagnose_table(
    lines: Iterable[str], delim: str | None, *, start_line: int, n_fields: int, has_index: bool,
    col_names: Sequence[str] | None, name: str,
) -> None:
    """Walk the data rows and raise a DataError at the first problem found.

    A compiled regular expression accepts well-formed lines at C speed; only a
    line it rejects is split and checked field by field.
    """
    n_rest = n_fields - 1
    if delim is None:
        first = r"\s*\S+" if has_index else rf"\s*{_NUM_PAT}"
        pat = first + rf"(?:\s+{_NUM_PAT}){{{n_rest}}}\s*"
    else:
        d = re.escape(delim)
        first = rf"[^{d}\"]*" if has_index else rf"\s*{_NUM_PAT}\s*"
        pat = first + rf"(?:{d}\s*{_NUM_PAT}\s*){{{n_rest}}}"
    well_formed = re.compile(pat).fullmatch
    for line_no, line in enumerate(lines, 1):
        if line_no <= start_line or not line.strip() or well_formed(line):
            continue
        if delim is None:
            fields = [f.strip('"') for f in line.split()]
        else:
            try:
                fields = [f.strip() for f in next(csv.reader([line], delimiter=delim))]
            except (csv.Error, StopIteration):
                raise DataError(f"{name}: malformed text (quotes) at line {line_no}") from None
        _check_fields(fields, line_no, n_fields=n_fields, has_index=has_index, col_names=col_names, name=name)


def _check_fields(
    fields: list[str], line_no: int, *, n_fields: int, has_index: bool,
    col_names: Sequence[str] | None, name: str,
) -> None:
    """Raise a DataError for the first bad field of one data line."""
    if len(fields) != n_fields:
        raise DataError(
            f"{name}: ragged rows: line {line_no} has {len(fields)} fields but "
            f"{n_fields} were expected (from the header/first row)"
        )
    offset = 1 if has_index else 0
    row_id = fields[0] if has_index else None
    for j in range(offset, n_fields):
        tok = fields[j]
        low = tok.lower()
        col = f"column {j + 1}"
        if col_names is not None:
            col += f" ({_q(col_names[j - offset])})"
        at = f"line {line_no}, {col}" + (f", row {_q(row_id)}" if row_id is not None else "")
        if tok == "":
            raise DataError(f"{name}: missing (empty) value at {at}; NaN/missing values are not allowed")
        if low in _NAN_TOKENS:
            raise DataError(f"{name}: NaN (missing value {_q(tok)}) at {at}; NaN/missing values are not allowed")
        if low in _INF_TOKENS:
            raise DataError(f"{name}: infinite value {_q(tok)} at {at}; inf is not allowed")
        if not _is_number(tok):
            hint = ""
            if re.match(r"^[+-]?\d+,\d+$", tok):
                hint = " (decimal comma? use a dot as the decimal separator)"
            raise DataError(f"{name}: non-numeric value {_q(tok)} at {at}{hint}")
        if abs(float(tok)) > _F32_MAX:
            raise DataError(f"{name}: value {tok} at {at} is too large (beyond float32 range, infinite)")


def _text_encoding(inp: _Input) -> str:
    """Refuse binary data and pick the encoding of a text input, in one streaming pass.

    UTF-16 (with a byte-order mark) and UTF-8 (BOM optional) are decoded as such;
    text that is not valid UTF-8 but has few control characters is read as
    latin-1; anything else is binary data.  Also refuses text that is only blanks.
    """
    name = inp.name
    sample = inp.head(65536)
    if sample.startswith((b"\xff\xfe", b"\xfe\xff")):
        enc = "utf-16"
    else:
        what = _describe_magic(sample)
        if what is not None and what != "a MatrixMarket file":
            raise DataError(f"{name}: this is {what}, not a text table (binary data)")
        if b"\x00" in sample:
            raise DataError(f"{name}: binary data (contains NUL bytes), not a text table")
        enc = "utf-8-sig"
    dec = codecs.getincrementaldecoder(enc)()
    offset, blank = 0, True
    with inp.open() as fh:
        while True:
            chunk = fh.read(1 << 20)
            try:
                text = dec.decode(chunk, final=not chunk)
            except UnicodeDecodeError as e:
                if enc == "utf-16":
                    raise DataError(f"{name}: invalid UTF-16 text") from None
                ctrl = sum(1 for b in sample if b < 9 or 13 < b < 32 or b == 127)
                if ctrl > 0.01 * max(len(sample), 1) or ctrl > 20:
                    at = offset - (len(e.object) - len(chunk)) + e.start
                    raise DataError(
                        f"{name}: binary data, not a text table (invalid UTF-8 at byte {at})"
                    ) from None
                enc = "latin-1"
                blank = blank and not chunk.strip()
                while blank and (chunk := fh.read(1 << 20)):
                    blank = not chunk.strip()
                break
            blank = blank and not text.strip()
            offset += len(chunk)
            if not chunk:
                break
    if blank:
        raise DataError(f"{name}: file is empty (no text)")
    return enc


def _open_text(inp: _Input, enc: str) -> IO[str]:
    """The input as text with universal newlines (CRLF and CR become LF)."""
    return io.TextIOWrapper(inp.open(), encoding=enc, newline=None)


def _text_lines(inp: _Input, enc: str) -> Iterator[str]:
    """Every line of the text (without its line end), streamed."""
    with _open_text(inp, enc) as fh:
        for line in fh:
            yield line[:-1] if line.endswith("\n") else line


def _read_head(fh: IO[str], *, max_chars: int = 1 << 20, want: int = 30) -> str:
    """The first lines of a text stream: ``want`` non-blank lines, or about
    ``max_chars`` characters once at least 4 non-blank lines are in."""
    parts, n_chars, n_lines = [], 0, 0
    while True:
        line = fh.readline()
        if not line:
            break
        parts.append(line)
        n_chars += len(line)
        if line.strip():
            n_lines += 1
            if n_lines >= want or (n_chars >= max_chars and n_lines >= 4):
                break
    return "".join(parts)


def _read_table(inp: _Input, *, ext: str, orientation: Orientation, expect: Expect):
    """Read a delimited text table as a stream, in blocks of rows, into float32."""
    name = inp.name
    enc = _text_encoding(inp)
    with _open_text(inp, enc) as fh:
        text = _read_head(fh)
    lines = _first_lines(text)
    try:
        delim = _sniff_delimiter(lines, ext)
    except DataError as e:
        raise DataError(f"{name}: {e}") from None
    rows = _iter_rows(text, delim)
    head_row = next(rows, None)
    if head_row is None:
        raise DataError(f"{name}: file is empty (only blank lines)")
    first_line, first = head_row
    second = next(rows, None)
    third = next(rows, None)
    corner = first[0]
    has_header = (
        corner == ""
        or any(not _looks_numeric(f) for f in first[1:])
        or _corner_hint(corner) is not None
    )
    if not has_header:
        data_rows = [first] + [t[1] for t in (second, third) if t is not None]
        header_end_line = first_line - 1
        n_fields = len(first)
        has_index = any(not _looks_numeric(r[0]) for r in data_rows)
        col_names = None
    else:
        header_end_line = first_line
        if second is None:
            raise DataError(
                f"{name}: header only: line {first_line} looks like a header "
                f"({_plural(len(first), 'field')}) but there are no data rows"
            )
        header = first
        data_first = second[1]
        if len(header) == len(data_first) - 1:  # R write.table style: no corner cell
            n_fields = len(data_first)
            has_index = True
            col_names = header
            corner = None
        else:
            n_fields = len(header)
            has_index = (
                header[0] == ""
                or _corner_hint(header[0]) is not None
                or not _looks_numeric(data_first[0])
            )
            col_names = header[1:] if has_index else header
    del text, rows, lines
    n_values = n_fields - (1 if has_index else 0)
    if n_values < 1:
        raise DataError(
            f"{name}: has only one column (an id column and no values); a matrix file needs an "
            "id column and at least 2 value columns"
        )
    dtypes = {i: np.float32 for i in range(1 if has_index else 0, n_fields)}
    if has_index:
        dtypes[0] = str
    kwargs: dict[str, Any] = dict(
        header=None, names=list(range(n_fields)), index_col=0 if has_index else None,
        dtype=dtypes, na_filter=False, engine="c", skipinitialspace=True,
        sep=r"\s+" if delim is None else delim,
    )
    diag = dict(start_line=header_end_line, n_fields=n_fields, has_index=has_index,
                col_names=col_names, name=name)

    def diagnose() -> None:
        _diagnose_table(_text_lines(inp, enc), delim, **diag)

    # the text is streamed in blocks of lines: only one block of text and its float32
    # values are in memory at a time; a block pandas cannot parse is diagnosed
    blocks: list[np.ndarray] = []
    row_names: list[str] | None = [] if has_index else None
    with _open_text(inp, enc) as fh:
        for _ in range(header_end_line):
            fh.readline()
        for lines in _line_blocks(fh):
            got = _parse_block_fast(lines, delim, has_index=has_index, n_values=n_values)
            if got is None:
                got = _parse_block(lines, kwargs, n_values=n_values, diagnose=diagnose, name=name)
            block, names = got
            if not np.isfinite(block).all():
                diagnose()
            blocks.append(block)
            if row_names is not None:
                row_names.extend(names)
            del block, names, got, lines
    n_rows = sum(b.shape[0] for b in blocks)
    if n_rows == 0:
        raise DataError(f"{name}: header only: no data rows after line {header_end_line}")
    col_names = [str(s).strip().strip('"') for s in col_names] if col_names is not None else None
    file_orient, reason = _decide_orientation(
        orientation, row_names=row_names, col_names=col_names, shape=(n_rows, n_values),
        corner=corner if (has_header and has_index) else None,
    )
    transposed = file_orient == "genes_x_cells"
    obs_names, var_names = (col_names, row_names) if transposed else (row_names, col_names)
    X = _stack_blocks(blocks, n_rows, n_values, transpose=transposed)
    fmt = {".tsv": "tsv", ".tab": "tsv", ".txt": "txt", ".csv": "csv"}.get(ext, "text")
    return _finish(
        X, obs_names, var_names, name=name, fmt=fmt, file_orientation=file_orient,
        transposed=transposed, expect=expect, reason=reason,
        extra={"delimiter": "whitespace" if delim is None else delim},
    )


def _line_blocks(fh: IO[str], size: int | None = None) -> Iterator[list[str]]:
    """Non-blank lines of a text stream in blocks of about ``size`` characters."""
    size = _TEXT_BLOCK_CHARS if size is None else size
    carry: list[str] = []
    while True:
        chunk = fh.read(size)
        if not chunk:
            tail = "".join(carry)
            if tail.strip():
                yield [ln for ln in tail.split("\n") if ln.strip()]
            return
        cut = chunk.rfind("\n")
        if cut < 0:  # a line longer than the block: keep reading
            carry.append(chunk)
            continue
        text = "".join(carry) + chunk[:cut]
        carry = [chunk[cut + 1:]]
        lines = [ln for ln in text.split("\n") if ln.strip()]
        del text
        if lines:
            yield lines


_ONE_FIELD_SEP = "\x1f"  # ASCII unit separator: never in a table we accept the fast way


def _parse_block_fast(lines: list[str], delim: str | None, *, has_index: bool, n_values: int):
    """(float32 block, row names) of well-formed lines, or None to take the careful path.

    Every value goes on its own line and pandas' C parser reads one float32
    column: no per-column cost (a DataFrame of 100,000 columns a block would
    take minutes).  Any oddity (quotes around a delimiter, a missing or extra
    field, a non-number) returns None.
    """
    if not lines:
        return np.empty((0, n_values), dtype=np.float32), []
    text = "\n".join(lines)
    if _ONE_FIELD_SEP in text or '""' in text:  # (doubled quotes: an escaped quote in a name)
        return None
    names: list[str] = []
    if has_index:
        rest = []
        for ln in lines:
            parts = ln.split(delim, 1) if delim is not None else ln.split(None, 1)
            if len(parts) != 2:
                return None
            names.append(parts[0].strip().strip('"'))
            rest.append(parts[1])
        text = "\n".join(rest)
        del rest
    if delim is None:
        text = text.replace(" ", "\n").replace("\t", "\n")
    else:
        text = text.replace(delim, "\n")
    try:
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore")
            col = pd.read_csv(
                io.BytesIO(text.encode("utf-8")), header=None, names=[0], sep=_ONE_FIELD_SEP,
                dtype=np.float32, na_filter=False, engine="c", skipinitialspace=True,
            )[0].to_numpy()
    except Exception:  # noqa: BLE001 - the careful path says what is wrong
        return None
    if col.size != len(lines) * n_values or col.dtype != np.float32:
        return None
    return col.reshape(len(lines), n_values), names


def _parse_block(lines: list[str], kwargs: dict, *, n_values: int, diagnose: Callable[[], None], name: str):
    """(float32 block, row names) through pandas' full CSV parser (quotes and all)."""
    try:
        with np.errstate(over="ignore", invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            df = pd.read_csv(io.StringIO("\n".join(lines)), **kwargs)
    except Exception as e:  # noqa: BLE001
        diagnose()
        raise DataError(f"{name}: could not parse as a numeric table ({e})") from None
    if df.shape[1] != n_values:
        diagnose()
        raise DataError(f"{name}: expected {n_values} value columns, parsed {df.shape[1]}")
    names = [str(s).strip().strip('"') for s in df.index] if kwargs.get("index_col") == 0 else []
    return df.to_numpy(dtype=np.float32), names


def _stack_blocks(blocks: list[np.ndarray], n_rows: int, n_cols: int, *, transpose: bool) -> np.ndarray:
    """One C-contiguous float32 matrix (transposed if asked) from row blocks.

    Blocks are released as they are copied, so the peak is one matrix plus the
    blocks (about twice the matrix), never three copies.
    """
    if len(blocks) == 1 and not transpose:
        return np.ascontiguousarray(blocks.pop(), dtype=np.float32)
    out = np.empty((n_cols, n_rows) if transpose else (n_rows, n_cols), dtype=np.float32)
    pos = 0
    blocks.reverse()
    while blocks:
        b = blocks.pop()
        k = b.shape[0]
        if transpose:
            out[:, pos:pos + k] = b.T
        else:
            out[pos:pos + k] = b
        pos += k
        del b
    return out


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
    if n_rows > MAX_DIM or n_cols > MAX_DIM:
        raise DataError(
            f"{name}: header declares a {n_rows:,} x {n_cols:,} matrix; the limit is {MAX_DIM:,} "
            "rows or columns (refusing before allocating anything)"
        )
    hdr = dict(layout=layout, field=field, symmetry=symmetry, n_rows=n_rows, n_cols=n_cols,
               line_no=line_no, header_bytes=pos)
    if layout == "array":
        total = n_rows * n_cols
        if total > MAX_DENSE_ENTRIES:
            raise DataError(
                f"{name}: header declares a dense {n_rows:,} x {n_cols:,} matrix ({total:,} values), "
                f"above the limit of {MAX_DENSE_ENTRIES:,}"
            )
        if total * 2 > body + 1:
            raise DataError(
                f"{name}: header declares {total:,} values but the file holds only {body:,} bytes "
                "after the header (truncated or wrong size line)"
            )
        return _MtxHeader(nnz=total, **hdr)
    nnz = int(parts[2])
    if nnz > MAX_NNZ or nnz > n_rows * n_cols:
        raise DataError(
            f"{name}: header declares {nnz:,} entries for a {n_rows:,} x {n_cols:,} matrix "
            f"(more than fit, or above the limit of {MAX_NNZ:,})"
        )
    min_bytes = 4 if field == "pattern" else 6  # "1 1\n" / "1 1 1\n"
    if nnz * min_bytes > body + 1:
        raise DataError(
            f"{name}: header declares {nnz:,} entries but the file holds only {body:,} bytes of "
            "entries (truncated file or wrong size line)"
        )
    _check_names_budget(n_rows, n_cols, nnz, name)
    return _MtxHeader(nnz=nnz, **hdr)


def _check_names_budget(n_rows: int, n_cols: int, nnz: int, name: str) -> None:
    """Refuse a nearly empty sparse matrix whose declared shape alone would cost a fortune in names."""
    if n_rows + n_cols > 2 * nnz + MAX_EMPTY_NAMES:
        raise DataError(
            f"{name}: header declares a {n_rows:,} x {n_cols:,} matrix with only {_plural(nnz, 'stored entry')}"
            f"; every row and column gets a name in memory ({n_rows + n_cols:,} names), more than the "
            f"limit of 2 x entries + {MAX_EMPTY_NAMES:,} (MAX_EMPTY_NAMES); refusing a nearly empty "
            "matrix with an absurd declared shape"
        )


def _mtx_blocks(inp: _Input, hdr: _MtxHeader, name: str, ncol: int) -> Iterator[np.ndarray]:
    """The numbers after the size line as float64 blocks of shape (k, ncol), streamed."""
    with inp.open() as fh:
        _skip_bytes(fh, hdr.header_bytes)
        reader = None
        try:
            reader = pd.read_csv(
                fh, sep=r"\s+", header=None, comment="%", names=list(range(ncol)),
                dtype=np.float64, engine="c", na_filter=False, chunksize=_MTX_BLOCK_LINES,
            )
            for df in reader:
                arr = df.to_numpy(dtype=np.float64)
                if not np.isfinite(arr).all():
                    break
                yield arr
            else:
                return
        except DataError:
            raise
        except pd.errors.EmptyDataError:
            return
        except Exception:  # noqa: BLE001 - locate the problem below
            raw = getattr(fh, "raw", None)
            if isinstance(getattr(raw, "error", None), DataError):
                raise raw.error from None
    _diagnose_mtx(inp, hdr, name, ncol)


def _skip_bytes(fh: IO[bytes], n: int) -> None:
    while n > 0:
        chunk = fh.read(min(n, 1 << 20))
        if not chunk:
            break
        n -= len(chunk)


def _diagnose_mtx(inp: _Input, hdr: _MtxHeader, name: str, ncol: int) -> None:
    """Walk the entry lines and raise a DataError at the first bad one."""
    with inp.open() as fh:
        _skip_bytes(fh, hdr.header_bytes)
        for i, raw in enumerate(fh, hdr.line_no + 1):
            s = raw.decode("latin-1").strip()
            if not s or s.startswith("%"):
                continue
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
    raise DataError(f"{name}: could not parse MatrixMarket entries")


def _mtx_body(inp: _Input, hdr: _MtxHeader, name: str, *, transpose: bool):
    """Stream the entries into a csr_matrix (or an ndarray for the array layout).

    Entries go straight into preallocated int32 / float32 arrays (the count is
    known from the header, checked against the file size), so parsing costs
    about 12 bytes an entry plus one block; the result is transposed on the way
    when ``transpose`` (10x files are features x cells).
    """
    n_rows, n_cols, nnz = hdr.n_rows, hdr.n_cols, hdr.nnz
    if hdr.layout == "array":
        vals = np.empty(nnz, dtype=np.float32)
        k = 0
        for arr in _mtx_blocks(inp, hdr, name, 1):
            m = arr.shape[0]
            if k + m <= nnz:
                vals[k:k + m] = arr[:, 0]
            k += m
        if k != nnz:
            raise DataError(f"{name}: header declares {nnz:,} values, the file has {k:,}")
        cols_major = vals.reshape((n_cols, n_rows))  # column-major values: row j is column j
        return cols_major if transpose else cols_major.T
    pattern = hdr.field == "pattern"
    ncol = 2 if pattern else 3
    rows = np.empty(nnz, dtype=np.int32)
    cols = np.empty(nnz, dtype=np.int32)
    vals = np.ones(nnz, dtype=np.float32) if pattern else np.empty(nnz, dtype=np.float32)
    k = 0
    for arr in _mtx_blocks(inp, hdr, name, ncol):
        m = arr.shape[0]
        if k + m > nnz:
            k += m
            continue  # keep counting for the message
        r, c = arr[:, 0], arr[:, 1]
        if not np.array_equal(r, np.round(r)) or not np.array_equal(c, np.round(c)):
            raise DataError(f"{name}: MatrixMarket row/column indices must be integers")
        bad = np.flatnonzero((r < 1) | (r > n_rows) | (c < 1) | (c > n_cols))
        if bad.size:
            j = int(bad[0])
            raise DataError(
                f"{name}: entry {k + j + 1} ({int(r[j])}, {int(c[j])}) is outside the declared "
                f"{n_rows} x {n_cols} shape (indices are 1-based)"
            )
        rows[k:k + m] = r - 1
        cols[k:k + m] = c - 1
        if not pattern:
            with np.errstate(over="ignore"):
                vals[k:k + m] = arr[:, 2]
        k += m
    if k != nnz:
        raise DataError(
            f"{name}: header declares {nnz:,} entries but the file has {k:,} "
            "(truncated file or wrong size line)"
        )
    if hdr.symmetry == "symmetric":
        off = rows != cols
        rows, cols, vals = (
            np.concatenate([rows, cols[off]]),
            np.concatenate([cols, rows[off]]),
            np.concatenate([vals, vals[off]]),
        )
    if transpose:
        rows, cols, shape = cols, rows, (n_cols, n_rows)
    else:
        shape = (n_rows, n_cols)
    X = sp.csr_matrix((vals, (rows, cols)), shape=shape)
    del rows, cols, vals
    return X


def _read_mtx_file(inp: _Input, *, orientation: Orientation, expect: Expect):
    name = inp.name
    with inp.open() as fh:
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
    with io.TextIOWrapper(inp.open(), encoding=enc, newline="\n") as fh:
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
    with mtx.open() as fh:
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
    if total > MAX_UNCOMPRESSED_BYTES:
        raise DataError(f"{inp.name}: 10x files total {total:,} bytes, above the limit")
    parts = [_Input(name=n, path=root / n) for n in (m, bc, ft)]
    return _assemble_10x(*parts, names=(m, bc, ft), label=inp.name, fmt="10x",
                         orientation=orientation, expect=expect)


def _check_member_name(info: zipfile.ZipInfo, label: str) -> None:
    n = info.filename
    mode = info.external_attr >> 16
    if stat.S_ISLNK(mode):
        raise DataError(f"{label}: zip member {_q(n)} is a symbolic link; archives with symlinks are refused")
    if "\x00" in n:
        raise DataError(f"{label}: zip member name contains a NUL byte; refused")
    norm = n.replace("\\", "/")
    if norm.startswith("/") or re.match(r"^[A-Za-z]:", norm):
        raise DataError(f"{label}: zip member {_q(n)} has an absolute path; refused (path traversal)")
    if ".." in norm.split("/"):
        raise DataError(f"{label}: zip member {_q(n)} contains '..'; refused (path traversal)")
    if info.flag_bits & 0x1:
        raise DataError(f"{label}: zip member {_q(n)} is encrypted; not supported")


def _open_zip(source: "bytes | _Input", label: str, *, max_total_bytes: int | None = None) -> zipfile.ZipFile:
    """Open and vet a zip archive: names, symlinks, entry count, sizes.

    ``source`` is the archive's bytes or an input; a file on disk is read in
    place (members are streamed from it, the archive is never loaded whole).
    """
    limit = MAX_UNCOMPRESSED_BYTES if max_total_bytes is None else max_total_bytes
    if isinstance(source, _Input):
        head = source.head(16)
        fileobj: Any = source.path if source.on_disk else io.BytesIO(source.data)
    else:
        head = source[:16]
        fileobj = io.BytesIO(source)
    if not head:
        raise DataError(f"{label}: zip file is empty")
    if not head.startswith(_ZIP_MAGICS):
        what = _describe_magic(head)
        raise DataError(
            f"{label}: not a zip archive (bad signature" + (f"; this is {what})" if what else ")")
        )
    try:
        zf = zipfile.ZipFile(fileobj)
        infos = zf.infolist()
    except (zipfile.BadZipFile, zipfile.LargeZipFile, OSError, ValueError, EOFError) as e:
        raise DataError(f"{label}: corrupt or invalid zip archive ({e})") from None
    if len(infos) > MAX_ZIP_ENTRIES:
        zf.close()
        raise DataError(f"{label}: zip has {len(infos):,} members, above the limit of {MAX_ZIP_ENTRIES:,}")
    total = 0
    try:
        for info in infos:
            _check_member_name(info, label)
            total += info.file_size
            if not info.is_dir():
                _check_ratio(f"{label}: {info.filename}", info.compress_size, info.file_size)
        if total > limit:
            raise DataError(
                f"{label}: zip members total {total:,} bytes uncompressed, above the limit of {limit:,} "
                "bytes; refusing a possible zip bomb"
            )
    except DataError:
        zf.close()
        raise
    return zf


def _zip_input(zf: zipfile.ZipFile, name: str, label: str, *, display: str | None = None) -> _Input:
    """A zip member as an input streamed from the archive (decompressed on the fly)."""
    info = zf.getinfo(name)

    def describe(e: Exception) -> str:
        return f"{label}: corrupt zip member {_q(name)} ({e})"

    def opener() -> IO[bytes]:
        try:
            fh = zf.open(info)
        except (zipfile.BadZipFile, OSError, zlib.error, EOFError, NotImplementedError, RuntimeError) as e:
            raise DataError(describe(e)) from None
        return _GuardedStream(fh, describe)

    return _Input(name=display or name, opener=opener, size=info.file_size)


def _read_zip(inp: _Input, *, orientation: Orientation, expect: Expect):
    zf = _open_zip(inp, inp.name)
    with zf:
        names = [i.filename for i in zf.infolist() if not i.is_dir()]
        usable = [n for n in names if _usable_member(n)]
        if len(usable) == 1 and not any(_MTX_RE.match(PurePosixPath(n).name) for n in usable):
            # a zip holding one matrix file (e.g. data.csv zipped for upload): read that file
            member = usable[0]
            ext, _ = _split_ext(member)
            if ext in _TABLE_EXTS | {".h5ad", ".npz", ".npy", ".mtx"}:
                inner = _zip_input(zf, member, inp.name, display=f"{inp.name}/{member}")
                return _read(inner, orientation=orientation, expect=expect)
        m, bc, ft = _find_10x(names, inp.name)
        parts = [_zip_input(zf, n, inp.name) for n in (m, bc, ft)]
        return _assemble_10x(*parts, names=(m, bc, ft), label=inp.name, fmt="10x-zip",
                             orientation=orientation, expect=expect)


# --------------------------------------------------------------------------- #
# NumPy / scipy
# --------------------------------------------------------------------------- #
def _npy_from_bytes(data: bytes, name: str) -> np.ndarray:
    """Load .npy bytes, checking the declared shape before allocating."""
    from numpy.lib import format as npf

    if not data.startswith(_NPY_MAGIC):
        raise DataError(f"{name}: not a NumPy .npy array (bad signature)")
    fh = io.BytesIO(data)
    try:
        version = npf.read_magic(fh)
        if version == (1, 0):
            shape, fortran, dtype = npf.read_array_header_1_0(fh)
        else:
            shape, fortran, dtype = npf.read_array_header_2_0(fh)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: malformed .npy header ({e})") from None
    if dtype.hasobject:
        raise DataError(f"{name}: .npy holds Python objects (pickled data); refused")
    n = int(np.prod(shape, dtype=object)) if shape else 1
    if n * dtype.itemsize > len(data) - fh.tell():
        raise DataError(
            f"{name}: .npy header declares shape {tuple(shape)} ({n:,} values) but the file holds only "
            f"{len(data) - fh.tell():,} bytes of data (truncated or forged header)"
        )
    try:
        return np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: cannot load .npy ({e})") from None


def _check_npy_member(zf: zipfile.ZipFile, info: zipfile.ZipInfo, name: str) -> None:
    """Check an .npz member's .npy header (dtype, declared size) before numpy allocates."""
    from numpy.lib import format as npf

    try:
        with zf.open(info) as fh:
            version = npf.read_magic(fh)
            if version == (1, 0):
                shape, _, dtype = npf.read_array_header_1_0(fh)
            else:
                shape, _, dtype = npf.read_array_header_2_0(fh)
            header_len = fh.tell()
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: member {_q(info.filename)} is not a valid .npy array ({e})") from None
    if dtype.hasobject:
        raise DataError(
            f"{name}: member {_q(info.filename)} holds Python objects (pickled data); refused (never unpickled)"
        )
    n = int(np.prod(shape, dtype=object)) if shape else 1
    if n * dtype.itemsize > info.file_size - header_len:
        raise DataError(
            f"{name}: member {_q(info.filename)} declares shape {tuple(shape)} but holds only "
            f"{info.file_size - header_len:,} bytes (truncated or forged header)"
        )


def _read_npy(data: bytes, name: str, *, orientation: Orientation, expect: Expect):
    arr = _npy_from_bytes(data, name)
    return _dense_result(arr, None, None, name=name, fmt="npy", orientation=orientation, expect=expect)


def _dense_result(arr, row_names, col_names, *, name, fmt, orientation, expect):
    if arr.ndim != 2:
        raise DataError(f"{name}: expected a 2-D matrix, got an array of shape {arr.shape}")
    if arr.dtype.kind not in "biuf":
        raise DataError(f"{name}: matrix has non-numeric dtype {arr.dtype}")
    file_orient, reason = _decide_orientation(
        orientation, row_names=None, col_names=None, shape=arr.shape, default="cells_x_genes"
    )
    transposed = file_orient == "genes_x_cells"
    X = _transpose(arr) if transposed else arr
    obs_names, var_names = (col_names, row_names) if transposed else (row_names, col_names)
    return _finish(X, obs_names, var_names, name=name, fmt=fmt, file_orientation=file_orient,
                   transposed=transposed, expect=expect, reason=reason)


def _read_npz(inp: _Input, *, orientation: Orientation, expect: Expect):
    name = inp.name
    data = inp.data
    if not data.startswith(_ZIP_MAGICS):
        what = _describe_magic(data[:16])
        raise DataError(
            f"{name}: not a valid .npz archive (an .npz is a zip file"
            + (f"; this is {what})" if what else ")")
        )
    zf = _open_zip(inp, name)
    with zf:
        members = {i.filename for i in zf.infolist()}
        for info in zf.infolist():
            if not info.is_dir():
                _check_npy_member(zf, info, name)
    try:
        loaded = np.load(io.BytesIO(data), allow_pickle=False)
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: cannot open .npz ({e})") from None

    def get(key: str) -> np.ndarray:
        if key not in loaded.files:
            raise DataError(f"{name}: .npz is missing array {key!r}")
        try:
            arr = loaded[key]
        except ValueError as e:
            if "pickle" in str(e).lower():
                raise DataError(f"{name}: array {key!r} holds pickled Python objects; refused (never unpickled)") from None
            raise DataError(f"{name}: cannot load array {key!r} ({e})") from None
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name}: cannot load array {key!r} ({e})") from None
        return arr

    with loaded:
        if not loaded.files:
            raise DataError(f"{name}: .npz archive holds no arrays ({len(members)} members)")
        names = {}
        for k in ("obs_names", "var_names"):
            if k in loaded.files:
                a = get(k)
                if a.ndim != 1 or a.dtype.kind not in "USiu":
                    raise DataError(f"{name}: {k!r} must be a 1-D array of strings")
                names[k] = [str(s) for s in a.tolist()]
        if "format" not in loaded.files:
            arrays = [k for k in loaded.files if k not in names]
            if len(arrays) != 1:
                raise DataError(
                    f"{name}: .npz is neither a scipy sparse matrix (scipy.sparse.save_npz: keys "
                    f"data/indices/indptr/format/shape) nor a single 2-D array; it holds {sorted(loaded.files)[:8]}"
                )
            arr = get(arrays[0])
            return _dense_result(arr, names.get("obs_names"), names.get("var_names"), name=name,
                                 fmt="npz", orientation=orientation, expect=expect)
        fmt = get("format")
        fmt = fmt.item() if fmt.size == 1 else None
        if isinstance(fmt, bytes):
            fmt = fmt.decode("ascii", "replace")
        shape = get("shape")
        if shape.shape != (2,) or shape.dtype.kind not in "iu" or (shape < 0).any():
            raise DataError(f"{name}: .npz 'shape' must hold two non-negative integers, got {shape!r}")
        n_rows, n_cols = (int(s) for s in shape)
        if n_rows > MAX_DIM or n_cols > MAX_DIM:
            raise DataError(
                f"{name}: declares a {n_rows:,} x {n_cols:,} matrix; the limit is {MAX_DIM:,} rows or columns"
            )
        try:
            if fmt in ("csr", "csc"):
                cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
                X = cls((get("data"), get("indices"), get("indptr")), shape=(n_rows, n_cols))
                X.check_format(full_check=True)
            elif fmt == "coo":
                dat = get("data")
                if "coords" in loaded.files:
                    coords = get("coords")
                    row, col = coords[0], coords[1]
                else:
                    row, col = get("row"), get("col")
                if row.size and (row.min() < 0 or col.min() < 0 or row.max() >= n_rows or col.max() >= n_cols):
                    raise DataError(f"{name}: coordinates outside the declared {n_rows} x {n_cols} shape")
                X = sp.coo_matrix((dat, (row, col)), shape=(n_rows, n_cols))
            else:
                raise DataError(
                    f"{name}: sparse format {fmt!r} is not supported (csr, csc or coo)"
                )
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name}: inconsistent sparse matrix arrays ({e})") from None
    if X.dtype.kind not in "biuf":
        raise DataError(f"{name}: sparse matrix has non-numeric dtype {X.dtype}")
    X = sp.csr_matrix(X)
    file_orient, reason = _decide_orientation(
        orientation, row_names=None, col_names=None, shape=X.shape, default="cells_x_genes"
    )
    transposed = file_orient == "genes_x_cells"
    rn, cn = names.get("obs_names"), names.get("var_names")
    if transposed:
        X = _transpose(X)
        rn, cn = cn, rn
    return _finish(X, rn, cn, name=name, fmt="npz", file_orientation=file_orient,
                   transposed=transposed, expect=expect, reason=reason)


# --------------------------------------------------------------------------- #
# h5ad
# --------------------------------------------------------------------------- #
def _hdf5_signature_ok(head: bytes, size: int) -> bool:
    # the superblock sits at 0, 512, 1024, 2048, ... (after an optional user block)
    if head.startswith(_HDF5_MAGIC):
        return True
    off = 512
    while off + 8 <= min(len(head), size):
        if head[off: off + 8] == _HDF5_MAGIC:
            return True
        off *= 2
    return False


def _h5_path(parent: str, key: str) -> str:
    return f"{parent.rstrip('/')}/{key}"


def check_hdf5_safety(source: Any, *, name: str | None = None) -> None:
    """Refuse an HDF5 file that reaches outside itself, before anything is read.

    Walks every link of every group (``h5py`` ``visititems_links``, which sees
    links without following them) and raises :class:`DataError`, naming the
    problem and the object path, for

    * an external link (``h5py.ExternalLink``) to another file;
    * a soft link whose target does not resolve inside the file (dangling or
      looping);
    * a dataset with external storage (``create_dataset(..., external=[...])``:
      its bytes live in another file, such as ``/etc/passwd``);
    * a virtual dataset (it maps data from other files).

    Parameters
    ----------
    source
        An open ``h5py.File`` (or group), a path or a binary file-like object.
    name
        File name for messages.
    """
    import h5py

    if isinstance(source, (h5py.File, h5py.Group)):
        _check_hdf5_links(source, name or os.path.basename(source.file.filename) or "<hdf5>")
        return
    name = name or os.path.basename(str(getattr(source, "name", source))) or "<hdf5>"
    try:
        f = h5py.File(source, "r")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: cannot open as HDF5 ({type(e).__name__}: {e})") from None
    with f:
        _check_hdf5_links(f, name)


def _check_hdf5_links(f, name: str) -> None:
    import h5py

    links: list[tuple[str, Any]] = []

    def collect(path: str, link: Any):
        links.append(("/" + path, link))
        return True if len(links) > MAX_HDF5_LINKS else None  # anything but None stops the walk

    if hasattr(f, "visititems_links"):  # h5py >= 3.11: every link, none followed
        f.visititems_links(collect)
    else:  # pragma: no cover - older h5py: the links of every group reached by hard links
        groups = [""]
        f.visititems(lambda path, obj: groups.append(path) if isinstance(obj, h5py.Group) else None)
        for g in groups:
            grp = f[g] if g else f
            links += [(f"/{g}/{k}" if g else f"/{k}", grp.get(k, getlink=True)) for k in grp.keys()]
    if len(links) > MAX_HDF5_LINKS:
        raise DataError(
            f"{name}: HDF5 file holds more than {MAX_HDF5_LINKS:,} objects/links (MAX_HDF5_LINKS); "
            "an .h5ad has a few hundred at most; refused"
        )
    # external links first: nothing below may resolve a path through one
    for path, link in links:
        if isinstance(link, h5py.ExternalLink):
            raise DataError(
                f"{name}: HDF5 external link at {path!r} points to {link.path!r} in another file "
                f"({link.filename!r}); links to other files are refused (they could read any file "
                "on the server)"
            )
    for path, link in links:
        if isinstance(link, h5py.SoftLink):
            target = link.path if link.path.startswith("/") else _h5_path(path.rsplit("/", 1)[0] or "/", link.path)
            try:
                ok = f.get(target) is not None
            except Exception:  # noqa: BLE001 - loops and broken paths alike
                ok = False
            if not ok:
                raise DataError(
                    f"{name}: HDF5 soft link at {path!r} points to {link.path!r}, which does not resolve "
                    "inside the file (dangling or looping link); refused"
                )
        elif not isinstance(link, h5py.HardLink):
            raise DataError(f"{name}: HDF5 link at {path!r} is of an unsupported kind ({type(link).__name__}); refused")
    for path, link in links:
        if not isinstance(link, h5py.HardLink):
            continue
        obj = f.get(path)
        if not isinstance(obj, h5py.Dataset):
            continue
        if obj.is_virtual:
            try:
                sources = sorted({m.file_name for m in obj.virtual_sources()})
            except Exception:  # noqa: BLE001
                sources = []
            shown = ", ".join(repr(x) for x in sources[:3]) or "other files"
            raise DataError(
                f"{name}: HDF5 dataset {path!r} is a virtual dataset mapping data from {shown}; "
                "virtual datasets are refused (they could read any file on the server)"
            )
        ext = obj.external
        if ext:
            files = ", ".join(repr(e[0] if isinstance(e[0], str) else e[0].decode("utf-8", "replace"))
                              for e in ext[:3])
            raise DataError(
                f"{name}: HDF5 dataset {path!r} keeps its data in an external file ({files}); "
                "external storage is refused (it could read any file on the server)"
            )


def _h5_declared_bytes(obj) -> int:
    """Bytes the datasets under ``obj`` declare (variable-length strings count 64 bytes each)."""
    import h5py

    total = 0

    def add(ds) -> None:
        nonlocal total
        item = ds.dtype.itemsize
        sd = h5py.check_string_dtype(ds.dtype)
        if ds.dtype.kind == "O" or (sd is not None and sd.length is None):
            item = max(item, 64)
        total += int(ds.size) * item

    if isinstance(obj, h5py.Dataset):
        add(obj)
    else:
        obj.visititems(lambda _n, o: add(o) if isinstance(o, h5py.Dataset) else None)
    return total


def _h5_matrix(elem, path: str, name: str):
    """Read X (or a layer) from the h5ad: dense dataset or csr/csc group, straight to float32.

    Declared shapes and sizes are checked against the limits first.
    """
    import h5py

    if isinstance(elem, h5py.Dataset):
        if elem.ndim != 2:
            raise DataError(f"{name}: {path} must be 2-D, got shape {elem.shape}")
        if elem.dtype.kind not in "biuf":
            raise DataError(f"{name}: {path} has non-numeric dtype {elem.dtype}")
        n = int(elem.shape[0]) * int(elem.shape[1])
        if n > MAX_DENSE_ENTRIES:
            raise DataError(
                f"{name}: {path} declares a dense {elem.shape[0]:,} x {elem.shape[1]:,} matrix ({n:,} values), "
                f"above the limit of {MAX_DENSE_ENTRIES:,}"
            )
        return elem.astype(np.float32)[()]
    if not isinstance(elem, h5py.Group):
        raise DataError(f"{name}: {path} is not a matrix")
    attrs = elem.attrs
    enc = attrs.get("encoding-type", attrs.get("h5sparse_format", ""))
    enc = enc.decode() if isinstance(enc, bytes) else str(enc)
    fmt = {"csr_matrix": "csr", "csc_matrix": "csc", "csr": "csr", "csc": "csc"}.get(enc)
    if fmt is None or not all(k in elem and isinstance(elem[k], h5py.Dataset) for k in ("data", "indices", "indptr")):
        raise DataError(
            f"{name}: {path} is not a dense or csr/csc sparse matrix (encoding {enc or 'unknown'!r}); "
            "not supported"
        )
    shape = attrs.get("shape", attrs.get("h5sparse_shape"))
    try:
        n_rows, n_cols = (int(v) for v in np.asarray(shape).ravel())
    except Exception:  # noqa: BLE001
        raise DataError(f"{name}: {path} has no valid 'shape' attribute") from None
    data, indices, indptr = elem["data"], elem["indices"], elem["indptr"]
    nnz = int(data.size)
    if n_rows < 0 or n_cols < 0 or n_rows > MAX_DIM or n_cols > MAX_DIM:
        raise DataError(
            f"{name}: {path} declares a {n_rows:,} x {n_cols:,} matrix; the limit is {MAX_DIM:,} rows or columns"
        )
    if nnz > MAX_NNZ or indices.size != nnz or data.ndim != 1 or indices.ndim != 1:
        raise DataError(f"{name}: {path} declares {nnz:,} stored entries with {indices.size:,} indices "
                        f"(they must agree, and at most {MAX_NNZ:,})")
    n_major = n_rows if fmt == "csr" else n_cols
    if indptr.ndim != 1 or indptr.size != n_major + 1:
        raise DataError(f"{name}: {path}/indptr has {indptr.size:,} entries for {n_major:,} {fmt} rows/columns")
    _check_names_budget(n_rows, n_cols, nnz, f"{name}: {path}")
    if data.dtype.kind not in "biuf":
        raise DataError(f"{name}: {path}/data has non-numeric dtype {data.dtype}")
    # straight to the result's dtypes (HDF5 converts while reading: no second copy); an
    # index beyond int32 is clamped by the conversion, and check_format refuses it
    idx = np.int32 if max(n_rows, n_cols, nnz) < 2**31 - 1 else np.int64
    try:
        arrays = (data.astype(np.float32)[()], indices.astype(idx)[()], indptr.astype(idx)[()])
        cls = sp.csr_matrix if fmt == "csr" else sp.csc_matrix
        X = cls(arrays, shape=(n_rows, n_cols))
        X.check_format(full_check=True)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: {path} is an inconsistent sparse matrix ({e})") from None
    return X


def _read_h5ad(inp: _Input, *, orientation: Orientation, expect: Expect, layer: str | None = None):
    """Read X (or ``layer``), obs and var of an .h5ad, after the HDF5 safety checks.

    Nothing else (uns, obsm, varm, obsp, raw, other layers) is read, whatever its size.
    """
    import h5py
    from anndata.io import read_elem

    name = inp.name
    head = inp.head(1 << 16)
    if not _hdf5_signature_ok(head, inp.size()):
        what = _describe_magic(head[:16])
        raise DataError(
            f"{name}: not an HDF5 file (bad signature), so not a valid .h5ad"
            + (f"; this is {what}" if what else "")
        )
    src: Any = str(inp.path) if inp.on_disk else io.BytesIO(inp.data)
    try:
        f = h5py.File(src, "r")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: cannot read .h5ad ({type(e).__name__}: {e})") from None
    with f:
        _check_hdf5_links(f, name)
        if layer is None:
            path = "/X"
        else:
            layers = f.get("layers")
            keys = sorted(layers.keys()) if isinstance(layers, h5py.Group) else []
            if layer not in keys:
                raise DataError(
                    f"{name}: .h5ad has no layer {layer!r} (layers: {', '.join(map(repr, keys)) or 'none'})"
                )
            path = f"/layers/{layer}"
        elem = f.get(path)
        if elem is None:
            raise DataError(f"{name}: .h5ad has no X matrix (not an AnnData file?)")
        for part in ("obs", "var"):
            if not isinstance(f.get(part), (h5py.Group, h5py.Dataset)):
                raise DataError(f"{name}: .h5ad has no {part} table (not an AnnData file?)")
        declared = sum(_h5_declared_bytes(f[p]) for p in (path, "obs", "var"))
        if declared > MAX_H5AD_BYTES:
            raise DataError(
                f"{name}: X, obs and var declare {declared:,} bytes, above the limit of "
                f"{MAX_H5AD_BYTES:,} bytes (MAX_H5AD_BYTES); refusing before reading"
            )
        X = _h5_matrix(elem, path.lstrip("/"), name)
        tables = {}
        for part in ("obs", "var"):
            try:
                tables[part] = read_elem(f[part])
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{name}: cannot read {part} of the .h5ad ({type(e).__name__}: {e})") from None
            if not isinstance(tables[part], pd.DataFrame):
                raise DataError(f"{name}: {part} of the .h5ad is not a table")
    obs, var = tables["obs"], tables["var"]
    if X.shape != (len(obs), len(var)):
        raise DataError(
            f"{name}: {path.lstrip('/')} is {X.shape[0]:,} x {X.shape[1]:,} but obs has {len(obs):,} "
            f"rows and var {len(var):,}"
        )
    file_orient = "cells_x_genes" if orientation == "auto" else orientation
    reason = "AnnData convention (cells x genes)" if orientation == "auto" else "given"
    transposed = file_orient == "genes_x_cells"
    if transposed:
        X = _transpose(X)
        obs, var = var, obs
    extra = {"layer": layer} if layer is not None else None
    return _finish(
        X, list(obs.index), list(var.index), name=name, fmt="h5ad", file_orientation=file_orient,
        transposed=transposed, expect=expect, reason=reason, obs=obs, var=var, extra=extra,
    )


# --------------------------------------------------------------------------- #
# memory estimate (for admission before parsing)
# --------------------------------------------------------------------------- #
_PEAK_SLACK = 64 * 2**20  # one parsed block of text or entries, and the names


def estimate_read_memory(
    source: Source,
    *,
    filename: str | None = None,
    layer: str | None = None,
) -> dict:
    """What :func:`read` would build from ``source`` and the memory it would need, from headers.

    Nothing but headers (and, for text tables, the first lines; for gzip, one
    streaming pass to learn the decompressed size) is read, so a job queue can
    admit or refuse a big upload before parsing it.  Files that :func:`read`
    refuses on their header (an .h5ad reaching outside itself, an absurd
    MatrixMarket shape) raise the same :class:`DataError` here.

    Returns
    -------
    dict
        ``format``; ``shape`` (file orientation; rows estimated for text
        tables) or None; ``dense`` (the result is a dense array);
        ``matrix_bytes`` (the float32 result: dense size, or CSR data + indices
        + indptr); ``peak_bytes`` (what reading is expected to need at most:
        measured by ``bench/io_memory.py`` at 2x the dense result for text
        tables, about 3x the CSR for mtx/10x, 1.5x for .h5ad, plus
        ``_PEAK_SLACK``); ``exact`` (False when the shape is an estimate).
    """
    inp = _open_source(source, filename, None)
    try:
        return _estimate(inp, layer=layer)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{inp.name}: could not inspect file ({type(e).__name__}: {e})") from e


def _sparse_estimate(fmt: str, n_rows: int, n_cols: int, nnz: int, *, factor: float) -> dict:
    matrix = nnz * 8 + (max(n_rows, n_cols) + 1) * 4  # the larger axis: rows after any transpose
    names = (n_rows + n_cols) * 100  # a Python string and its index entries, roughly
    return {"format": fmt, "shape": (n_rows, n_cols), "dense": False, "matrix_bytes": int(matrix),
            "peak_bytes": int(factor * matrix + names + _PEAK_SLACK), "exact": True}


def _estimate(inp: _Input, *, layer: str | None) -> dict:
    if inp.path is not None and inp.path.is_dir():
        names = [str(p.relative_to(inp.path).as_posix()) for p in inp.path.rglob("*") if p.is_file()]
        m, _, _ = _find_10x(names, inp.name)
        return _estimate_mtx(_Input(name=m, path=inp.path / m), "10x")
    ext, _ = _split_ext(inp.name)
    head = inp.head(64)
    if not head:
        raise DataError(f"{inp.name}: file is empty")
    if head.startswith(_GZIP_MAGIC) and ext not in (".zip", ".npz"):
        inp = inp.gunzipped()
        head = inp.head(64)
    if ext == ".h5ad" or head.startswith(_HDF5_MAGIC):
        return _estimate_h5ad(inp, layer=layer)
    if ext == ".mtx" or head.lower().startswith(_MM_MAGIC):
        return _estimate_mtx(inp, "mtx")
    if ext == ".zip" or (head.startswith(_ZIP_MAGICS) and ext != ".npz"):
        with _open_zip(inp, inp.name) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            usable = [n for n in names if _usable_member(n)]
            if len(usable) == 1 and not _MTX_RE.match(PurePosixPath(usable[0]).name):
                return _estimate(_zip_input(zf, usable[0], inp.name, display=f"{inp.name}/{usable[0]}"), layer=layer)
            m, _, _ = _find_10x(names, inp.name)
            return _estimate_mtx(_zip_input(zf, m, inp.name), "10x-zip")
    if ext in (".npz", ".npy"):
        size = inp.size()
        return {"format": ext[1:], "shape": None, "dense": True, "matrix_bytes": int(size),
                "peak_bytes": int(3 * size + _PEAK_SLACK), "exact": False}
    return _estimate_table(inp)


def _estimate_mtx(inp: _Input, fmt: str) -> dict:
    inp = inp.maybe_gunzipped()
    with inp.open() as fh:
        hdr = _mtx_header(fh, inp.name, inp.size())
    if hdr.layout == "array":
        matrix = hdr.nnz * 4
        return {"format": fmt, "shape": hdr.shape, "dense": True, "matrix_bytes": matrix,
                "peak_bytes": 3 * matrix + _PEAK_SLACK, "exact": True}
    nnz = hdr.nnz * (2 if hdr.symmetry == "symmetric" else 1)
    return _sparse_estimate(fmt, hdr.n_rows, hdr.n_cols, nnz, factor=3.0)


def _estimate_h5ad(inp: _Input, *, layer: str | None) -> dict:
    import h5py

    src: Any = str(inp.path) if inp.on_disk else io.BytesIO(inp.data)
    try:
        f = h5py.File(src, "r")
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{inp.name}: cannot read .h5ad ({type(e).__name__}: {e})") from None
    with f:
        _check_hdf5_links(f, inp.name)
        elem = f.get("/X" if layer is None else f"/layers/{layer}")
        if elem is None:
            raise DataError(f"{inp.name}: .h5ad has no {'X matrix' if layer is None else f'layer {layer!r}'}")
        if isinstance(elem, h5py.Dataset):
            shape = tuple(int(v) for v in elem.shape)
            matrix = int(np.prod(shape, dtype=np.int64)) * 4
            return {"format": "h5ad", "shape": shape, "dense": True, "matrix_bytes": matrix,
                    "peak_bytes": int(1.5 * matrix + _PEAK_SLACK), "exact": True}
        shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape", (0, 0)))
        n_rows, n_cols = (int(v) for v in np.asarray(shape).ravel()[:2])
        nnz = int(elem["data"].size) if "data" in elem else 0
        return _sparse_estimate("h5ad", n_rows, n_cols, nnz, factor=1.5)


def _estimate_table(inp: _Input) -> dict:
    """Rows estimated from the size and the mean length of the first lines."""
    size = inp.size()
    enc = _text_encoding(inp)
    with _open_text(inp, enc) as fh:
        head = _read_head(fh, want=200)
    lines = [ln for ln in head.split("\n") if ln.strip()]
    if len(lines) < 2:
        raise DataError(f"{inp.name}: header only or empty")
    try:
        delim = _sniff_delimiter(lines[:30], _split_ext(inp.name)[0])
    except DataError as e:
        raise DataError(f"{inp.name}: {e}") from None
    n_fields = max(len(ln.split(delim)) if delim else len(ln.split()) for ln in lines[:30])
    body = lines[1:]
    mean_len = max(sum(len(ln.encode(enc if enc != "utf-8-sig" else "utf-8", "replace")) + 1 for ln in body) / len(body), 2)
    rows = max(1, int(round(size / mean_len)))
    matrix = rows * max(n_fields - 1, 1) * 4
    return {"format": "text", "shape": (rows, n_fields - 1), "dense": True, "matrix_bytes": int(matrix),
            "peak_bytes": int(2 * matrix + _PEAK_SLACK), "exact": False}


# --------------------------------------------------------------------------- #
# metadata
# --------------------------------------------------------------------------- #
def read_metadata(source: Source, adata, *, filename: str | None = None):
    """Join a CSV/TSV of per-cell annotations into a copy of ``adata.obs``.

    The id column is the first column, unless another column matches more of
    the dataset's cell ids.  Cells without a metadata row get missing values.

    Parameters
    ----------
    source
        Path, bytes or binary file-like object (CSV/TSV/TXT, optionally .gz).
    adata
        The dataset (not modified).
    filename
        Name for messages and delimiter sniffing.

    Returns
    -------
    anndata.AnnData
        A copy with the new columns in ``obs`` and
        ``uns["dhaka_io"]["metadata"] = {"filename", "id_column", "columns",
        "matched", "unmatched_cells", "unmatched_ids"}``.

    Raises
    ------
    DataError
        Unreadable file, duplicate ids, or no id matching a cell.
    """
    inp = _open_source(source, filename, None)
    name = inp.name
    try:
        if not inp.head(1):
            raise DataError(f"{name}: file is empty")
        inp = inp.maybe_gunzipped()
        enc = _text_encoding(inp)  # binary data and blank files refused, streaming
        with _open_text(inp, enc) as fh:
            head = _read_head(fh)
        ext, _ = _split_ext(name)
        try:
            delim = _sniff_delimiter(_first_lines(head), ext)
        except DataError:
            delim = ","  # a one-column metadata file is just a list of ids; caught below
        # streamed from the file; rows far beyond the dataset's cells are refused, not parsed
        max_rows = MAX_METADATA_ROWS_PER_CELL * adata.n_obs + 1000
        try:
            with _open_text(inp, enc) as fh:
                df = pd.read_csv(fh, sep=r"\s+" if delim is None else delim, dtype=str,
                                 keep_default_na=False, skipinitialspace=True, nrows=max_rows + 1)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name}: cannot parse metadata table ({e})") from None
        if len(df) > max_rows:
            raise DataError(
                f"{name}: metadata has more than {max_rows:,} rows for a dataset of {adata.n_obs:,} cells "
                f"(limit: {MAX_METADATA_ROWS_PER_CELL} x cells + 1,000); refused"
            )
        if df.shape[1] < 2:
            raise DataError(f"{name}: metadata needs an id column and at least one annotation column")
        if df.shape[0] == 0:
            raise DataError(f"{name}: header only: metadata has no rows")
        df.columns = [str(c).strip() for c in df.columns]
        cells = pd.Index([str(s) for s in adata.obs_names])
        best_col, best_hits = df.columns[0], -1
        for c in df.columns:
            hits = int(cells.isin(df[c].str.strip()).sum())
            if hits > best_hits:
                best_col, best_hits = c, hits
        if best_hits <= 0:
            ex_meta = ", ".join(_q(s) for s in df.iloc[:3, 0])
            ex_cells = ", ".join(_q(s) for s in cells[:3])
            raise DataError(
                f"{name}: no metadata id matches a cell id (no column matches; first column has e.g. "
                f"{ex_meta}; dataset cells are e.g. {ex_cells})"
            )
        ids = df[best_col].str.strip()
        dup = ids[ids.duplicated()].unique()
        if len(dup):
            raise DataError(
                f"{name}: duplicate cell ids in column {_q(best_col)}: " + ", ".join(_q(s) for s in dup[:5])
            )
        meta = df.drop(columns=[best_col])
        meta.index = pd.Index(ids.to_numpy(), dtype=object)
        out = adata.copy()
        for c in meta.columns:
            col = _coerce_column(meta[c]).reindex(cells)
            out.obs[c] = col.to_numpy() if not isinstance(col.dtype, pd.CategoricalDtype) else col.values
        matched = int(cells.isin(meta.index).sum())
        info = dict(out.uns.get("dhaka_io", {}))
        info["metadata"] = {
            "filename": str(name),
            "id_column": str(best_col),
            "columns": [str(c) for c in meta.columns],
            "matched": matched,
            "unmatched_cells": int(len(cells) - matched),
            "unmatched_ids": int((~meta.index.isin(cells)).sum()),
        }
        out.uns["dhaka_io"] = info
        return out
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: could not read metadata ({type(e).__name__}: {e})") from e


def _coerce_column(col: pd.Series) -> pd.Series:
    """Numbers become float; other text becomes a categorical ('' -> missing)."""
    s = col.str.strip().replace("", np.nan)
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().sum() == s.notna().sum():
        return num.astype(float)
    return s.astype("category")


# --------------------------------------------------------------------------- #
# writers and utilities
# --------------------------------------------------------------------------- #
_FORMULA_START = ("=", "+", "-", "@", "\t", "\r")


def neutralize_formula(value: Any) -> Any:
    """One cell made safe for spreadsheets (the OWASP CSV-injection rule).

    Text beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return gets
    a leading single quote, so Excel, LibreOffice or Google Sheets show it as
    text instead of running it as a formula (``=HYPERLINK(...)``).  Text that is
    a plain number (``-1.5``, ``+3``) and every non-text value are returned
    unchanged.
    """
    if isinstance(value, bytes):
        value = value.decode("utf-8", "replace")
    if isinstance(value, str) and value.startswith(_FORMULA_START) and not _NUM_RE.match(value.strip()):
        return "'" + value
    return value


def _neutralize_index(index: pd.Index) -> pd.Index:
    if isinstance(index, pd.MultiIndex):
        return pd.MultiIndex.from_arrays(
            [_neutralize_index(index.get_level_values(i)) for i in range(index.nlevels)], names=index.names
        )
    if index.dtype.kind in "biufcmM":
        return index
    return pd.Index([neutralize_formula(v) for v in index], dtype=object, name=neutralize_formula(index.name))


def safe_text_frame(df: pd.DataFrame) -> pd.DataFrame:
    """A copy of ``df`` that is safe to write as CSV/TSV for a spreadsheet.

    Every text cell (object, string or categorical columns), the row index
    (cell names, say) and the column labels (gene names) go through
    :func:`neutralize_formula`: text beginning with ``=``, ``+``, ``-``, ``@``,
    tab or carriage return gets a leading ``'``.  Numeric, boolean and date
    columns are untouched (numbers stay numbers).  Call it on every table offered
    for download: ``safe_text_frame(df).to_csv(...)`` (or :func:`to_csv_safe`).
    """
    out = df.copy(deep=False)
    for j in range(out.shape[1]):
        col = out.iloc[:, j]
        if col.dtype.kind in "biufcmM" or pd.api.types.is_bool_dtype(col.dtype):
            continue
        out.isetitem(j, col.astype(object).map(neutralize_formula))
    out.index = _neutralize_index(out.index)
    out.columns = _neutralize_index(out.columns)
    return out


def to_csv_safe(df: pd.DataFrame, path_or_buf=None, **kwargs) -> str | None:
    """``df.to_csv(path_or_buf, **kwargs)`` after :func:`safe_text_frame`.

    For downloads: ``to_csv_safe(table, index=False).encode()``.
    """
    return safe_text_frame(df).to_csv(path_or_buf, **kwargs)


def write_latent_csv(
    path_or_buf,
    Z,
    *,
    obs_names: Sequence[str],
    labels: Sequence | None = None,
    extra: dict[str, Sequence] | pd.DataFrame | None = None,
) -> str | None:
    """Write a latent embedding as CSV: ``cell, dhaka_1..dhaka_d[, cluster][, extra...]``.

    Text cells (cell ids, text labels, text extra columns) are neutralised
    against spreadsheet formulas (:func:`safe_text_frame`).

    Parameters
    ----------
    path_or_buf
        Path, text or binary buffer; ``None`` returns the CSV as a string.
    Z
        ``(n_cells, d)`` array.
    obs_names
        Cell ids (written as the first column, ``cell``).
    labels
        Optional cluster labels (column ``cluster``).
    extra
        Optional further columns (mapping name -> values, or a DataFrame).

    Returns
    -------
    str or None
        The CSV text when ``path_or_buf`` is ``None``.
    """
    Z = np.asarray(Z)
    if Z.ndim != 2:
        raise ValueError(f"Z must be 2-D (n_cells, d), got shape {Z.shape}")
    n = Z.shape[0]
    if len(obs_names) != n:
        raise ValueError(f"obs_names has {len(obs_names)} entries for {n} rows of Z")
    df = pd.DataFrame(Z, columns=[f"dhaka_{i + 1}" for i in range(Z.shape[1])],
                      index=pd.Index([str(s) for s in obs_names], name="cell"))
    if labels is not None:
        labels = np.asarray(labels)
        if len(labels) != n:
            raise ValueError(f"labels has {len(labels)} entries for {n} cells")
        df["cluster"] = labels
    if extra is not None:
        items = extra.items() if isinstance(extra, dict) else ((c, extra[c]) for c in extra.columns)
        for k, v in items:
            v = np.asarray(v)
            if len(v) != n:
                raise ValueError(f"extra column {k!r} has {len(v)} entries for {n} cells")
            if k in df.columns:
                raise ValueError(f"extra column {k!r} clashes with an existing column")
            df[str(k)] = v
    df = safe_text_frame(df)  # cell names, labels and text columns: no live formulas
    if path_or_buf is None:
        return df.to_csv()
    if isinstance(path_or_buf, (str, os.PathLike)):
        df.to_csv(path_or_buf)
        return None
    if isinstance(path_or_buf, (io.RawIOBase, io.BufferedIOBase)) or "b" in getattr(path_or_buf, "mode", ""):
        path_or_buf.write(df.to_csv().encode("utf-8"))
        return None
    df.to_csv(path_or_buf)
    return None


def to_h5ad_bytes(adata) -> bytes:
    """Serialise an AnnData to ``.h5ad`` bytes (through a temporary file)."""
    fd, tmp = tempfile.mkstemp(suffix=".h5ad")
    os.close(fd)
    try:
        adata.write_h5ad(tmp)
        return Path(tmp).read_bytes()
    finally:
        try:
            os.unlink(tmp)
        except OSError:
            pass


def zip_dir(path: str | os.PathLike) -> bytes:
    """Zip a folder's regular files (recursively, sorted, symlinks skipped) into bytes.

    Member names are relative POSIX paths, so :func:`unzip_safe` accepts them.
    """
    root = Path(path)
    if not root.is_dir():
        raise ValueError(f"{root} is not a folder")
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        for dirpath, dirnames, filenames in os.walk(root, followlinks=False):
            dirnames.sort()
            for f in sorted(filenames):
                p = Path(dirpath) / f
                if p.is_symlink() or not p.is_file():
                    continue
                zf.write(p, p.relative_to(root).as_posix())
    return buf.getvalue()


def unzip_safe(
    data: bytes,
    dest: str | os.PathLike,
    *,
    max_total_bytes: int = 2 * 2**30,
) -> Path:
    """Extract a zip archive into ``dest``, refusing anything unsafe.

    Every member is checked before anything is written: absolute names and
    ``..`` components (path traversal), symbolic links, encrypted members, too
    many members, implausible compression ratios and a total uncompressed size
    above ``max_total_bytes`` all raise :class:`DataError`.

    Returns
    -------
    pathlib.Path
        ``dest`` (created if needed).
    """
    dest = Path(dest)
    label = "zip archive"
    zf = _open_zip(bytes(data), label, max_total_bytes=max_total_bytes)
    root = dest.resolve()
    with zf:
        for info in zf.infolist():
            target = (root / info.filename.replace("\\", "/")).resolve()
            if target != root and root not in target.parents:
                raise DataError(f"{label}: member {_q(info.filename)} escapes the destination (path traversal)")
        dest.mkdir(parents=True, exist_ok=True)
        written = 0
        for info in zf.infolist():
            target = root / info.filename.replace("\\", "/")
            if info.is_dir():
                target.mkdir(parents=True, exist_ok=True)
                continue
            target.parent.mkdir(parents=True, exist_ok=True)
            try:
                with zf.open(info) as src, open(target, "wb") as out:
                    while True:
                        chunk = src.read(1 << 20)
                        if not chunk:
                            break
                        written += len(chunk)
                        if written > max_total_bytes:
                            raise DataError(f"{label}: extracted data exceeds {max_total_bytes:,} bytes; refused")
                        out.write(chunk)
            except DataError:
                raise
            except (zipfile.BadZipFile, OSError, zlib.error, EOFError) as e:
                raise DataError(f"{label}: corrupt member {_q(info.filename)} ({e})") from None
    return dest


def fingerprint(X) -> dict:
    """Content digest of a matrix, without densifying sparse input.

    Sparse matrices are hashed in canonical CSR form (``data``, ``indices``,
    ``indptr``), dense ones as C-contiguous bytes.  The digest also covers
    shape, dtype and storage kind.

    Parameters
    ----------
    X
        ndarray, scipy sparse matrix/array, or an AnnData (its ``X``).

    Returns
    -------
    dict
        ``{"shape": (n, m), "nnz": int, "dtype": str, "sha256": hex str}``.
    """
    if hasattr(X, "obs_names") and hasattr(X, "X"):
        X = X.X
    h = hashlib.sha256()
    if sp.issparse(X):
        C = sp.csr_matrix(X)
        if not C.has_canonical_format:
            C = C.copy()
            C.sum_duplicates()
        shape = tuple(int(s) for s in C.shape)
        h.update(f"csr|{shape}|{C.data.dtype.str}|".encode())
        for part in (C.data, C.indices.astype(np.int64, copy=False), C.indptr.astype(np.int64, copy=False)):
            h.update(np.ascontiguousarray(part).view(np.uint8))
            h.update(b"|")
        nnz, dtype = int(C.nnz), str(C.dtype)
    else:
        A = np.ascontiguousarray(np.asarray(X))
        shape = tuple(int(s) for s in A.shape)
        h.update(f"dense|{shape}|{A.dtype.str}|".encode())
        if A.dtype.hasobject:
            raise ValueError("cannot fingerprint an object array")
        h.update(A.reshape(-1).view(np.uint8) if A.size else b"")
        nnz, dtype = int(np.count_nonzero(A)), str(A.dtype)
    return {"shape": shape, "nnz": nnz, "dtype": dtype, "sha256": h.hexdigest()}
