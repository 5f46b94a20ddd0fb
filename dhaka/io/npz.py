"""NumPy ``.npy`` and ``.npz`` (scipy sparse or one 2-D array), never unpickled.
"""
from __future__ import annotations

import io
import zipfile

import numpy as np
import scipy.sparse as sp

from . import safety as _s
from .matrix import Expect, Orientation, _decide_orientation, _finish, _transpose
from .safety import _NPY_MAGIC, _ZIP_MAGICS, DataError, _describe_magic, _q
from .source import _Input, _open_zip


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
        if n_rows > _s.MAX_DIM or n_cols > _s.MAX_DIM:
            raise DataError(
                f"{name}: declares a {n_rows:,} x {n_cols:,} matrix; the limit is {_s.MAX_DIM:,} rows or columns"
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
