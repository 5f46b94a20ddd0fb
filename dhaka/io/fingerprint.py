"""Content fingerprints of matrices.
"""
from __future__ import annotations

import hashlib

import numpy as np
import scipy.sparse as sp


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
