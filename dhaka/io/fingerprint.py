"""The one content fingerprint of a matrix: in memory (dense, sparse, AnnData) or in an HDF5 file.

Every cache key and run record that names data by content uses :func:`fingerprint`
(``dhaka.ui.tasks.digest`` and ``dhaka.backed.file_fingerprint`` return its
``sha256``), so the same matrix gets the same key wherever it is hashed.
"""
from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import scipy.sparse as sp

#: Bytes hashed at a time when a matrix is streamed from a file.
_FILE_BLOCK_BYTES = 8 << 20


def fingerprint(X: Any, *, group: str = "X", block: int = _FILE_BLOCK_BYTES) -> dict:
    """Content digest of a matrix, without densifying sparse input or loading a file.

    Sparse matrices are hashed in canonical CSR form (``data``, ``indices`` and
    ``indptr``, indices as int64), dense ones as C-contiguous bytes, object
    arrays (labels, say) by their values' ``repr``.  The digest also covers
    shape, dtype and storage kind.  A path to an HDF5 file (``.h5ad``) is
    hashed by streaming ``group`` (a CSR group or a dense dataset) in blocks,
    with the same layout: a canonical CSR matrix in a file has the fingerprint
    it has in memory (same dtype).

    Parameters
    ----------
    X
        ndarray (or anything :func:`numpy.asarray` takes), scipy sparse
        matrix/array, an AnnData (its ``X``), or a path to an HDF5 file.
    group
        For a path: the dataset or group of the matrix (``"X"``,
        ``"layers/counts"``).
    block
        For a path: bytes read and hashed at a time.

    Returns
    -------
    dict
        ``{"shape": (n, m), "nnz": int, "dtype": str, "sha256": hex str}``.

    Raises
    ------
    dhaka.io.DataError
        A file that is not HDF5, reaches outside itself (see
        :func:`dhaka.io.check_hdf5_safety`) or has no matrix at ``group``.
    """
    if isinstance(X, (str, os.PathLike)):
        return _file_fingerprint(Path(X), group=group, block=block)
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
        if A.dtype.hasobject:
            h.update(f"object|{shape}|".encode())
            h.update(repr(A.tolist()).encode())
        else:
            h.update(f"dense|{shape}|{A.dtype.str}|".encode())
            h.update(A.reshape(-1).view(np.uint8) if A.size else b"")
        nnz, dtype = int(np.count_nonzero(A)), str(A.dtype)
    return {"shape": shape, "nnz": nnz, "dtype": dtype, "sha256": h.hexdigest()}


def _file_fingerprint(path: Path, *, group: str, block: int) -> dict:
    """:func:`fingerprint` of the matrix at ``group`` of an HDF5 file, streamed."""
    import h5py

    from .safety import DataError, check_hdf5_safety

    name = path.name or str(path)
    if block < 1:
        raise ValueError(f"block must be a positive number of bytes, not {block}")
    if not path.is_file():
        raise DataError(f"{name}: file not found ({path})")
    check_hdf5_safety(path, name=name)  # nothing is read through a link to another file
    h = hashlib.sha256()
    with h5py.File(path, "r") as f:
        node = f.get(group)
        if isinstance(node, h5py.Group):
            attrs = node.attrs
            enc = attrs.get("encoding-type", attrs.get("h5sparse_format", "csr_matrix"))
            kind = "csc" if "csc" in (enc.decode() if isinstance(enc, bytes) else str(enc)) else "csr"
            if not all(isinstance(node.get(k), h5py.Dataset) for k in ("data", "indices", "indptr")):
                raise DataError(f"{name}: {group!r} is not a sparse matrix (no data / indices / indptr)")
            shape = tuple(int(s) for s in np.asarray(attrs.get("shape", attrs.get("h5sparse_shape"))).ravel())
            data = node["data"]
            h.update(f"{kind}|{shape}|{data.dtype.str}|".encode())
            nnz = 0
            for part, as_int64 in ((data, False), (node["indices"], True), (node["indptr"], True)):
                for chunk in _blocks(part, block):
                    if as_int64:
                        chunk = chunk.astype(np.int64, copy=False)
                    elif part is data:
                        nnz += chunk.size
                    h.update(np.ascontiguousarray(chunk).view(np.uint8))
                h.update(b"|")
            return {"shape": shape, "nnz": int(nnz), "dtype": str(data.dtype), "sha256": h.hexdigest()}
        if not isinstance(node, h5py.Dataset) or node.dtype.kind not in "biuf":
            raise DataError(f"{name}: no numeric matrix at {group!r} to fingerprint")
        shape = tuple(int(s) for s in node.shape)
        h.update(f"dense|{shape}|{node.dtype.str}|".encode())
        nnz = 0
        for chunk in _blocks(node, block):
            nnz += int(np.count_nonzero(chunk))
            h.update(np.ascontiguousarray(chunk).reshape(-1).view(np.uint8))
        return {"shape": shape, "nnz": nnz, "dtype": str(node.dtype), "sha256": h.hexdigest()}


def _blocks(ds, block: int) -> Iterator[np.ndarray]:
    """The dataset in C order, about ``block`` bytes at a time (whole rows for 2-D data)."""
    if ds.ndim == 0:
        yield np.asarray(ds[()])
        return
    row_bytes = max(1, int(np.prod(ds.shape[1:], dtype=np.int64)) * ds.dtype.itemsize)
    step = max(1, block // row_bytes)
    for a in range(0, ds.shape[0], step):
        yield ds[a:a + step]
