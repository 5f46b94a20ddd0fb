"""Limits and refusals: what dhaka.io will not read, and the spreadsheet-formula guard for what it writes.

Every tunable limit of the package lives here (``dhaka.io.safety.NAME = value`` changes it; ``dhaka.io.NAME``
reads it).  Other modules read the limits as ``safety.NAME`` at call time.
"""
from __future__ import annotations

import os
import re
import stat
import zipfile
from typing import Any

import pandas as pd

#: The names below are the package's tunable limits (``dhaka.io.safety.NAME = value`` sets one).
LIMITS = (
    "MIN_CELLS", "MIN_FEATURES", "MAX_UNCOMPRESSED_BYTES", "MAX_COMPRESSION_RATIO", "BOMB_MIN_BYTES",
    "MAX_ZIP_ENTRIES", "MAX_DIM", "MAX_NNZ", "MAX_DENSE_ENTRIES", "MAX_EMPTY_NAMES", "MAX_H5AD_BYTES",
    "MAX_METADATA_ROWS_PER_CELL", "MAX_HDF5_LINKS", "MAX_LINE_BYTES", "MAX_HDF5_CHUNKS", "_BLOCK_VALUES", "_TEXT_BLOCK_CHARS", "_MTX_BLOCK_LINES",
)
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
#: Longest line of a text input (a table, a MatrixMarket file, barcodes or features), in bytes after
#: decompression: about a million values a line.  A longer line is refused when the reader reaches
#: it, before it is held in memory (one line with no newline in a gzip could otherwise decompress
#: into gigabytes of one string).
MAX_LINE_BYTES = 16 * 2**20
#: Most chunks an HDF5 dataset that is read (X or the layer, obs and var columns) may be split into
#: (its chunk grid, written or not).  Reading a dataset whole costs HDF5 about 3.7 KB of bookkeeping
#: per chunk that was never written, so an .h5ad of 2,000 x 2,000 1 x 1 chunks (a few KB on disk)
#: would take 15 GB; anndata's own files have a few thousand chunks at most.
MAX_HDF5_CHUNKS = 100_000
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

_NUM_RE = re.compile(r"^[+-]?(?:\d+(?:\.\d*)?|\.\d+)(?:[eE][+-]?\d+)?$")


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


def _check_names_budget(n_rows: int, n_cols: int, nnz: int, name: str) -> None:
    """Refuse a nearly empty sparse matrix whose declared shape alone would cost a fortune in names."""
    if n_rows + n_cols > 2 * nnz + MAX_EMPTY_NAMES:
        raise DataError(
            f"{name}: header declares a {n_rows:,} x {n_cols:,} matrix with only {_plural(nnz, 'stored entry')}"
            f"; every row and column gets a name in memory ({n_rows + n_cols:,} names), more than the "
            f"limit of 2 x entries + {MAX_EMPTY_NAMES:,} (MAX_EMPTY_NAMES); refusing a nearly empty "
            "matrix with an absurd declared shape"
        )


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
