"""``.h5ad`` files: X or one layer, obs and var, and what else the file holds for an analysis
(obsm, varm, obsp, varp, the other layers, uns), after the HDF5 safety checks.
"""
from __future__ import annotations

import io
import logging
from contextlib import contextmanager
from typing import Any, Iterator

import numpy as np
import pandas as pd
import scipy.sparse as sp

from . import safety as _s
from .matrix import Expect, Orientation, _finish, _transpose
from .safety import (
    DataError,
    _check_hdf5_links,
    _check_names_budget,
    _describe_magic,
    _hdf5_signature_ok,
)
from .source import Source, _Input, _open_source

_log = logging.getLogger(__name__)

#: The members of an AnnData file read beside X, obs and var (``raw`` is left in the file).
EXTRA_MEMBERS = ("obsm", "varm", "obsp", "varp", "layers", "uns")


# --------------------------------------------------------------------------- #
# h5ad
# --------------------------------------------------------------------------- #
def h5ad_layers(source: Source, *, filename: str | None = None) -> dict[str, dict]:
    """The layers of an ``.h5ad``, described from the file's headers (no matrix is loaded).

    The file passes the same checks as :func:`dhaka.io.read` first (HDF5
    signature; no external links, external storage or virtual datasets).

    Parameters
    ----------
    source
        Path, bytes or binary file-like object (an upload).
    filename
        Name for messages.

    Returns
    -------
    dict
        Layer name -> ``{"kind": "dense" | "csr" | "csc" | "other", "shape":
        (n_cells, n_features) or None, "dtype": str or None, "nnz": int or
        None}``, in name order; ``{}`` for a file without layers.  Any layer of
        kind dense, csr or csc can be read with ``read(source, layer=name)``.

    Raises
    ------
    DataError
        Not an HDF5 file, or one that reaches outside itself.
    """
    import h5py

    inp = _open_source(source, filename, None).maybe_gunzipped()
    try:
        with _open_h5ad(inp) as f:
            layers = f.get("layers")
            if not isinstance(layers, h5py.Group):
                return {}
            return {key: _describe_matrix(layers.get(key)) for key in sorted(layers.keys())}
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - input problems raise DataError
        raise DataError(f"{inp.name}: could not list the layers ({type(e).__name__}: {e})") from e


def _describe_matrix(elem) -> dict:
    """Kind, shape, dtype and stored entries of a dense dataset or a csr/csc group, from its headers."""
    import h5py

    if isinstance(elem, h5py.Dataset) and elem.ndim == 2:
        return {"kind": "dense", "shape": tuple(int(v) for v in elem.shape), "dtype": str(elem.dtype), "nnz": None}
    if isinstance(elem, h5py.Group):
        attrs = elem.attrs
        enc = attrs.get("encoding-type", attrs.get("h5sparse_format", ""))
        enc = enc.decode() if isinstance(enc, bytes) else str(enc)
        kind = {"csr_matrix": "csr", "csc_matrix": "csc", "csr": "csr", "csc": "csc"}.get(enc)
        data = elem.get("data")
        if kind is not None and isinstance(data, h5py.Dataset):
            shape = attrs.get("shape", attrs.get("h5sparse_shape"))
            try:
                shape = tuple(int(v) for v in np.asarray(shape).ravel())
            except Exception:  # noqa: BLE001 - described as it is; read() refuses it with the reason
                shape = None
            return {"kind": kind, "shape": shape, "dtype": str(data.dtype), "nnz": int(data.size)}
    return {"kind": "other", "shape": None, "dtype": None, "nnz": None}


@contextmanager
def _open_h5ad(inp: _Input) -> Iterator[Any]:
    """The ``.h5ad`` open for reading (an ``h5py.File``), after its signature and every link are checked."""
    import h5py

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
        yield f


def _matrix_path(f, layer: str | None, name: str) -> str:
    """``"/X"``, or ``"/layers/<layer>"`` after checking the file has that layer (naming those it has)."""
    import h5py

    if layer is None:
        return "/X"
    layers = f.get("layers")
    keys = sorted(layers.keys()) if isinstance(layers, h5py.Group) else []
    if layer not in keys:
        raise DataError(
            f"{name}: .h5ad has no layer {layer!r} (layers: {', '.join(map(repr, keys)) or 'none'}; "
            "leave the layer out to read X)"
        )
    return f"/layers/{layer}"


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


def _check_chunks(obj, name: str) -> None:
    """Refuse a dataset under ``obj`` split into more than ``MAX_HDF5_CHUNKS`` chunks, naming it.

    The chunk grid is counted from the headers (written chunks or not): reading a
    dataset whole costs HDF5 a few KB of bookkeeping for each chunk never written,
    so a file of a few KB in 1 x 1 chunks would take gigabytes.
    """
    import h5py

    def check(path: str, ds) -> None:
        chunks = ds.chunks
        if not chunks or not ds.shape:
            return
        grid = 1
        for n, c in zip(ds.shape, chunks):
            grid *= -(-int(n) // max(int(c), 1))
        if grid > _s.MAX_HDF5_CHUNKS:
            raise DataError(
                f"{name}: HDF5 dataset {path!r} ({' x '.join(f'{int(n):,}' for n in ds.shape)}) is stored in "
                f"{grid:,} chunks of {' x '.join(str(int(c)) for c in chunks)}, above the limit of "
                f"{_s.MAX_HDF5_CHUNKS:,} chunks (MAX_HDF5_CHUNKS): reading it would cost HDF5 gigabytes of "
                "bookkeeping; write the file again with larger chunks (anndata's write_h5ad does)")

    if isinstance(obj, h5py.Dataset):
        check(obj.name, obj)
    else:
        obj.visititems(lambda _n, o: check(o.name, o) if isinstance(o, h5py.Dataset) else None)


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
        if n > _s.MAX_DENSE_ENTRIES:
            raise DataError(
                f"{name}: {path} declares a dense {elem.shape[0]:,} x {elem.shape[1]:,} matrix ({n:,} values), "
                f"above the limit of {_s.MAX_DENSE_ENTRIES:,}"
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
    if n_rows < 0 or n_cols < 0 or n_rows > _s.MAX_DIM or n_cols > _s.MAX_DIM:
        raise DataError(
            f"{name}: {path} declares a {n_rows:,} x {n_cols:,} matrix; the limit is {_s.MAX_DIM:,} rows or columns"
        )
    if nnz > _s.MAX_NNZ or indices.size != nnz or data.ndim != 1 or indices.ndim != 1:
        raise DataError(f"{name}: {path} declares {nnz:,} stored entries with {indices.size:,} indices "
                        f"(they must agree, and at most {_s.MAX_NNZ:,})")
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


def _extra_paths(f, matrix_path: str) -> tuple[list[str], list[str]]:
    """(paths of the members kept beside X, obs and var; what is left in the file, for the record).

    Every key of obsm, varm, obsp, varp, layers and uns, less the layer read as X; ``raw`` and any
    other top-level member are left in the file, and so is X when a layer is read in its place.
    """
    import h5py

    keep: list[str] = []
    for part in EXTRA_MEMBERS:
        grp = f.get(part)
        if not isinstance(grp, h5py.Group):
            continue
        keep += [f"/{part}/{key}" for key in sorted(grp.keys()) if f"/{part}/{key}" != matrix_path]
    left = sorted(k for k in f.keys() if k not in {"X", "obs", "var", *EXTRA_MEMBERS})
    if matrix_path != "/X" and "X" in f:
        left.insert(0, "X")
    return keep, left


def _check_member_ratio(obj, name: str) -> None:
    """Refuse a kept member whose datasets declare far more bytes than they store (a decompression bomb).

    The rule of gzip and zip input: above ``BOMB_MIN_BYTES`` declared, at most ``MAX_COMPRESSION_RATIO``
    times the bytes on disk (chunks never written and fill values count as nothing stored).
    """
    import h5py

    def check(ds) -> None:
        declared = _h5_declared_bytes(ds)
        stored = int(ds.id.get_storage_size())
        if declared > _s.BOMB_MIN_BYTES and declared > _s.MAX_COMPRESSION_RATIO * max(stored, 1):
            raise DataError(
                f"{name}: HDF5 dataset {ds.name!r} declares {declared:,} bytes but stores {stored:,} "
                f"(ratio {declared / max(stored, 1):,.0f}:1, above {_s.MAX_COMPRESSION_RATIO}:1); refusing a "
                "possible decompression bomb (read the file with extras=False to leave everything but X, obs "
                "and var in the file)")

    if isinstance(obj, h5py.Dataset):
        check(obj)
    else:
        obj.visititems(lambda _n, o: check(o) if isinstance(o, h5py.Dataset) else None)


def _check_budget(f, paths: list[str], extras: list[str], name: str) -> None:
    """Refuse the file when what would be read declares more than ``MAX_H5AD_BYTES``, naming the biggest parts."""
    sizes = {p: _h5_declared_bytes(f[p]) for p in [*paths, *extras]}
    declared = sum(sizes.values())
    if declared <= _s.MAX_H5AD_BYTES:
        return
    what = "X, obs and var" if not extras else "X, obs, var and the members kept beside them"
    biggest = sorted(sizes.items(), key=lambda kv: -kv[1])[:3]
    shown = ", ".join(f"{p.lstrip('/')} {b:,}" for p, b in biggest)
    hint = ("; read it with extras=False to leave obsm, obsp, layers, uns ... in the file"
            if extras and declared - sum(sizes[e] for e in extras) <= _s.MAX_H5AD_BYTES else "")
    raise DataError(
        f"{name}: {what} declare {declared:,} bytes (largest: {shown}), above the limit of "
        f"{_s.MAX_H5AD_BYTES:,} bytes (MAX_H5AD_BYTES); refusing before reading{hint}"
    )


def _check_what_is_read(f, paths: list[str], kept: list[str], name: str) -> None:
    """The checks of everything that will be read (X or the layer, obs, var: ``paths``; the kept members:
    ``kept``) before any of it is: chunk grids, the declared bytes against ``MAX_H5AD_BYTES``, and (for the
    kept members) the declared bytes against the stored ones."""
    for p in (*paths, *kept):
        _check_chunks(f[p], name)
    _check_budget(f, paths, kept, name)
    for p in kept:
        _check_member_ratio(f[p], name)


def _read_extras(f, paths: list[str], name: str) -> tuple[dict[str, dict], list[str]]:
    """Each kept member read with anndata's own reader: ``{"obsm": {key: value}, ...}`` and the members
    left out because their encoding cannot be read (each logged), e.g. an awkward array without awkward."""
    from anndata.io import read_elem

    out: dict[str, dict] = {part: {} for part in EXTRA_MEMBERS}
    skipped: list[str] = []
    for path in paths:
        part, key = path.lstrip("/").split("/", 1)
        try:
            out[part][key] = read_elem(f[path])
        except MemoryError:
            raise
        except Exception as e:  # noqa: BLE001 - one unreadable member does not cost the user the matrix
            _log.warning("%s: %s left in the file: it could not be read (%s: %s)", name, path.lstrip("/"),
                         type(e).__name__, e)
            skipped.append(path.lstrip("/"))
    return out, skipped


def _read_h5ad(inp: _Input, *, orientation: Orientation, expect: Expect, layer: str | None = None,
               extras: bool = True):
    """Read X (or ``layer``), obs and var of an .h5ad, and (``extras``) obsm, varm, obsp, varp, the other
    layers and uns, after the HDF5 safety checks.

    Everything read counts toward ``MAX_H5AD_BYTES`` and ``MAX_HDF5_CHUNKS``; ``raw`` (and X when a layer
    is read in its place) is left in the file, and named in ``uns["dhaka_io"]["left_in_file"]``.
    """
    import h5py
    from anndata.io import read_elem

    name = inp.name
    with _open_h5ad(inp) as f:
        path = _matrix_path(f, layer, name)
        elem = f.get(path)
        if elem is None:
            raise DataError(f"{name}: .h5ad has no X matrix (not an AnnData file?)")
        for part in ("obs", "var"):
            if not isinstance(f.get(part), (h5py.Group, h5py.Dataset)):
                raise DataError(f"{name}: .h5ad has no {part} table (not an AnnData file?)")
        kept, left = _extra_paths(f, path)
        if not extras:
            left = sorted({*left, *(p.lstrip("/").split("/", 1)[0] for p in kept)})
            kept = []
        _check_what_is_read(f, [path, "/obs", "/var"], kept, name)
        X = _h5_matrix(elem, path.lstrip("/"), name)
        tables = {}
        for part in ("obs", "var"):
            try:
                tables[part] = read_elem(f[part])
            except Exception as e:  # noqa: BLE001
                raise DataError(f"{name}: cannot read {part} of the .h5ad ({type(e).__name__}: {e})") from None
            if not isinstance(tables[part], pd.DataFrame):
                raise DataError(f"{name}: {part} of the .h5ad is not a table")
        members, skipped = _read_extras(f, kept, name)
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
        members["obsm"], members["varm"] = members["varm"], members["obsm"]
        members["obsp"], members["varp"] = members["varp"], members["obsp"]
        members["layers"] = {k: v.T for k, v in members["layers"].items()}
    extra: dict[str, Any] = {"layer": layer} if layer is not None else {}
    if left or skipped:
        extra["left_in_file"] = sorted({*left, *skipped})
    adata = _finish(
        X, list(obs.index), list(var.index), name=name, fmt="h5ad", file_orientation=file_orient,
        transposed=transposed, expect=expect, reason=reason, obs=obs, var=var, uns=members["uns"],
        extra=extra or None,
    )
    _attach(adata, members, name)
    return adata


def _attach(adata, members: dict[str, dict], name: str) -> None:
    """Put obsm, varm, obsp, varp and layers on ``adata``; one whose shape does not fit the matrix is refused."""
    for part in ("obsm", "varm", "obsp", "varp", "layers"):
        mapping = getattr(adata, part)
        for key, value in members[part].items():
            try:
                mapping[key] = value
            except (ValueError, IndexError, TypeError) as e:
                shape = getattr(value, "shape", None)
                raise DataError(
                    f"{name}: {part}[{key!r}] does not fit the {adata.n_obs:,} x {adata.n_vars:,} matrix"
                    + (f" (its shape: {' x '.join(f'{int(n):,}' for n in shape)})" if shape else "")
                    + f"; the file is inconsistent ({e})") from None
