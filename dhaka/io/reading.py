""":func:`read`: pick the format of an input and hand it to its reader.
"""
from __future__ import annotations

from pathlib import PurePosixPath
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # pragma: no cover
    import anndata

from .copy_number import CopyNumberFormat, order_named_bins, read_copy_number
from .h5ad import _read_h5ad
from .matrix import Expect, Orientation
from .mtx import (
    _MTX_RE,
    _assemble_10x,
    _find_10x,
    _read_10x_dir,
    _read_mtx_file,
    _usable_member,
)
from .npz import _read_npy, _read_npz
from .safety import (
    _GZIP_MAGIC,
    _HDF5_MAGIC,
    _MM_MAGIC,
    _NPY_MAGIC,
    _ZIP_MAGICS,
    DataError,
    _is_pickle,
)
from .source import Source, _Input, _open_source, _open_zip, _split_ext, _zip_input
from .text import _read_table

_TABLE_EXTS = {".csv", ".tsv", ".txt", ".tab", ".dat"}

#: How the names of the files :func:`read` takes end (without the dot; ``gz``: a gzipped table): the one list
#: the app's uploaders offer.
READABLE_SUFFIXES: tuple[str, ...] = (*sorted(e[1:] for e in _TABLE_EXTS), "gz", "h5ad", "zip", "npz", "npy", "mtx")
#: The same for per-cell metadata tables (:func:`dhaka.io.read_metadata`).
METADATA_SUFFIXES: tuple[str, ...] = (*sorted(e[1:] for e in _TABLE_EXTS), "gz")


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
    format: CopyNumberFormat = "auto",  # noqa: A002 - the word users know (pandas, anndata)
    value: str | None = None,
    extras: bool = True,
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

    format
        Text tables only: ``"long"`` for a copy-number long table (one row per
        cell and bin: ``cell_id, chr, start, end, state`` ..., as HMMcopy and
        signals write them), ``"ginkgo"`` for a Ginkgo segment matrix (bins x
        cells after ``CHR, START, END`` columns); ``"auto"`` recognises both
        from the header.  See :mod:`dhaka.io.copy_number`.
    value
        Long tables only: the column whose values fill the cells x bins matrix
        (default ``state``, else ``copy``).
    extras
        ``.h5ad`` only: also read what the file holds beside X, obs and var
        (``obsm``, ``varm``, ``obsp``, ``varp``, the other ``layers``, ``uns``;
        the default), or leave it in the file (``False``).  What is read counts
        toward the same limits as X (``MAX_H5AD_BYTES``, ``MAX_HDF5_CHUNKS``).

    Returns
    -------
    anndata.AnnData
        ``X`` is float32 (``csr_matrix`` for sparse input, ``ndarray`` for
        dense), ``obs_names`` are cell ids and ``var_names`` feature names.
        ``uns["dhaka_io"]`` records ``filename``, ``format``, ``orientation``
        (of the file), ``transposed`` and ``orientation_reason`` (and
        ``layer`` when one was read).  From an ``.h5ad``: ``X`` (or the layer),
        ``obs``, ``var`` and (``extras``) ``obsm``, ``varm``, ``obsp``, ``varp``,
        the other layers and ``uns``, kept in line with the cells and features
        (transposed with them; reordered with them when bins are put in genome
        order); ``raw``, X when a layer is read instead, and any member whose
        encoding anndata cannot read (logged) stay in the file, named in
        ``uns["dhaka_io"]["left_in_file"]``.

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
    if format not in ("auto", "long", "ginkgo"):
        raise ValueError(f"format must be 'auto', 'long' or 'ginkgo', not {format!r}")
    if value is not None and not isinstance(value, str):
        raise ValueError(f"value must be None or a column name (str), not {type(value).__name__}")
    if not isinstance(extras, bool):
        raise ValueError(f"extras must be True or False, not {extras!r}")
    inp = _open_source(source, filename, max_bytes)
    try:
        adata = _read(inp, orientation=orientation, expect=expect, layer=layer, fmt=format, value=value,
                      extras=extras)
        return order_named_bins(adata, inp.name)
    except DataError:
        raise
    except MemoryError:
        raise DataError(f"{inp.name}: not enough memory to load this file") from None
    except Exception as e:  # noqa: BLE001 - the promise is: input problems raise DataError
        raise DataError(f"{inp.name}: could not read file ({type(e).__name__}: {e})") from e


def _read(inp: _Input, *, orientation: Orientation, expect: Expect, layer: str | None = None,
          fmt: CopyNumberFormat = "auto", value: str | None = None, extras: bool = True):
    if inp.path is not None and inp.path.is_dir():
        _no_layer(inp.name, layer, "a 10x folder")
        _text_only(inp.name, fmt, value, "a 10x folder")
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
        _text_only(inp.name, fmt, value, "an .h5ad")
        return _read_h5ad(inp, orientation=orientation, expect=expect, layer=layer, extras=extras)
    _no_layer(inp.name, layer, "this format")
    if ext == ".zip":
        return _read_zip(inp, orientation=orientation, expect=expect, fmt=fmt, value=value, extras=extras)
    if ext in (".npz", ".npy", ".mtx", ".h5", ".hdf5", ".loom"):
        _text_only(inp.name, fmt, value, f"a {ext} file")
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
        return _read_text(inp, ext=ext, orientation=orientation, expect=expect, fmt=fmt, value=value)
    # unknown extension: sniff
    if head.startswith(_ZIP_MAGICS):
        return _read_zip(inp, orientation=orientation, expect=expect, fmt=fmt, value=value, extras=extras)
    if head.startswith(_NPY_MAGIC):
        _text_only(inp.name, fmt, value, "a .npy array")
        return _read_npy(inp.data, inp.name, orientation=orientation, expect=expect)
    if head.lower().startswith(_MM_MAGIC):
        _text_only(inp.name, fmt, value, "a MatrixMarket file")
        return _read_mtx_file(inp, orientation=orientation, expect=expect)
    # unknown or missing extension and not a known binary signature: try a text table
    return _read_text(inp, ext=ext, orientation=orientation, expect=expect, fmt=fmt, value=value)


def _read_text(inp: _Input, *, ext: str, orientation: Orientation, expect: Expect, fmt: CopyNumberFormat,
               value: str | None):
    """A copy-number long table or Ginkgo matrix when the header says so (or ``fmt``), else a matrix table."""
    adata = read_copy_number(inp, ext=ext, fmt=fmt, value=value, expect=expect)
    if adata is not None:
        return adata
    return _read_table(inp, ext=ext, orientation=orientation, expect=expect)


def _text_only(name: str, fmt: CopyNumberFormat, value: str | None, what: str) -> None:
    if fmt != "auto" or value is not None:
        given = f"format={fmt!r}" if fmt != "auto" else f"value={value!r}"
        raise DataError(f"{name}: {given} was given, but {what} is not a text table (copy-number long tables "
                        "and Ginkgo matrices are CSV/TSV)")


def _no_layer(name: str, layer: str | None, what: str) -> None:
    if layer is not None:
        raise DataError(f"{name}: layer={layer!r} was given, but {what} has no layers (only .h5ad files do)")


def _read_zip(inp: _Input, *, orientation: Orientation, expect: Expect, fmt: CopyNumberFormat = "auto",
              value: str | None = None, extras: bool = True):
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
                return _read(inner, orientation=orientation, expect=expect, fmt=fmt, value=value, extras=extras)
        _text_only(inp.name, fmt, value, "a 10x zip")
        m, bc, ft = _find_10x(names, inp.name)
        parts = [_zip_input(zf, n, inp.name) for n in (m, bc, ft)]
        return _assemble_10x(*parts, names=(m, bc, ft), label=inp.name, fmt="10x-zip",
                             orientation=orientation, expect=expect)
