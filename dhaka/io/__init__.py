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
  are refused anywhere in the file before anything is read; ``X`` (or the
  chosen ``layer``), ``obs``, ``var`` and what an analysis carries on
  (``obsm``, ``varm``, ``obsp``, ``varp``, the other ``layers``, ``uns``) are
  loaded, within the same limits (``MAX_H5AD_BYTES``, ``MAX_HDF5_CHUNKS``, and a
  member declaring far more than it stores is refused as a bomb); ``raw`` stays
  in the file, and ``extras=False`` leaves everything but X, obs and var there);
* a 10x Genomics folder or ``.zip`` (``matrix.mtx[.gz]`` + ``barcodes.tsv[.gz]``
  + ``features.tsv[.gz]`` or ``genes.tsv[.gz]``, optionally with a common
  prefix such as ``GSM123_``; in a Cell Ranger ``outs/`` folder the filtered
  matrix wins); a ``.zip`` holding a single matrix file is read as that file;
* a bare MatrixMarket ``.mtx[.gz]`` (10x convention: features x cells);
* ``.npz`` written by :func:`scipy.sparse.save_npz` (or :func:`numpy.savez` of
  one 2-D array, optionally with ``obs_names`` / ``var_names`` arrays) and
  ``.npy`` (one 2-D array); both loaded with ``allow_pickle=False``;
* copy number (:mod:`dhaka.io.copy_number`): long tables of one row per cell
  and bin (HMMcopy, signals), Ginkgo segment matrices (bins x cells after
  CHR / START / END), and any matrix whose features are named
  ``chr1:1-500000``; bins come in genome order with ``var`` coordinates.

Without a usable extension the format is sniffed from the first bytes (gzip,
zip, HDF5, ``.npy``, MatrixMarket, else text).  Python pickles are recognised
and refused everywhere, never unpickled.

The limits (``dhaka.io.safety``) guard against hostile or broken files; read them
on the package (``dhaka.io.MAX_DIM``) and change them where the readers look
(``dhaka.io.safety.MAX_UNCOMPRESSED_BYTES = ...``) if you need to.
Nothing is read with values moved, summed or turned round: every row's field
count is checked, a MatrixMarket coordinate listed twice is refused (naming the
first pair), a UTF-8 byte-order mark is dropped whatever the encoding; a line
longer than ``MAX_LINE_BYTES`` and an HDF5 dataset of more than
``MAX_HDF5_CHUNKS`` chunks are refused before they cost memory.

Untrusted bytes (a server's uploads) are read with
:func:`dhaka.io.sandbox.read_sandboxed`: the same :func:`read` in a child
process under a hard memory cap (``RLIMIT_DATA``) and a time limit, the matrix
coming back through a file, never a pickle.

Memory: text tables, MatrixMarket and 10x input are parsed as streams (straight
from the file, the upload's bytes or the gzip/zip stream, in blocks), never as
a whole decoded text; of an .h5ad, what is read is sized from its headers first.
Reading stays within 3x the resulting float32 matrix + 200 MB
(``bench/io_memory.py`` measures it per format).

Writing: every text table the library writes goes through
:func:`safe_text_frame`, which neutralises spreadsheet formulas (text cells
beginning with ``=``, ``+``, ``-``, ``@``, tab or carriage return get a leading
single quote, the OWASP rule); use it (or :func:`to_csv_safe`) for any CSV
offered for download.

Modules, one concern each: ``safety`` (limits, refusals, HDF5 checks, formula
guard), ``source`` (inputs and streams), ``reading`` (:func:`read` and format
dispatch), ``matrix`` (validation, orientation, AnnData assembly), ``text``,
``mtx`` (MatrixMarket and 10x), ``npz``, ``h5ad``, ``copy_number``, ``meta`` (metadata join),
``estimate`` (memory estimates), ``sandbox`` (a capped child process), ``writers`` and ``fingerprint``.
"""
from __future__ import annotations

from . import safety
from .estimate import estimate_read_memory
from .fingerprint import fingerprint
from .h5ad import h5ad_layers
from .meta import read_metadata
from .reading import METADATA_SUFFIXES, READABLE_SUFFIXES, read
from .safety import (
    DataError,
    check_hdf5_safety,
    neutralize_formula,
    safe_text_frame,
    to_csv_safe,
)
from .text import _line_blocks, _looks_numeric  # noqa: F401 - tests reach them as dhaka.io._name
from .writers import to_h5ad_bytes, unzip_safe, write_latent_csv, zip_dir

__all__ = [
    "DataError",
    "read",
    "READABLE_SUFFIXES",
    "METADATA_SUFFIXES",
    "h5ad_layers",
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
    "MIN_CELLS",  # noqa: F822 - served by __getattr__ from safety
    "MIN_FEATURES",  # noqa: F822
]


def __getattr__(name: str):
    """The limits (``dhaka.io.MAX_DIM``, ...) are read from :mod:`dhaka.io.safety`, where the readers look."""
    if name in safety.LIMITS:
        return getattr(safety, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(safety.LIMITS))
