"""What :func:`dhaka.io.read` would build and the memory it would need, from headers only.
"""
from __future__ import annotations

from pathlib import PurePosixPath

import numpy as np

from .h5ad import _check_what_is_read, _extra_paths, _h5_declared_bytes, _matrix_path, _open_h5ad
from .mtx import _MTX_RE, _find_10x, _mtx_header, _usable_member
from .safety import (
    _GZIP_MAGIC,
    _HDF5_MAGIC,
    _MM_MAGIC,
    _ZIP_MAGICS,
    DataError,
)
from .source import Source, _Input, _lines_guarded, _open_source, _open_zip, _split_ext, _zip_input
from .text import _open_text, _read_head, _sniff_delimiter, _text_encoding

# --------------------------------------------------------------------------- #
# memory estimate (for admission before parsing)
# --------------------------------------------------------------------------- #
_PEAK_SLACK = 64 * 2**20  # one parsed block of text or entries, and the names


def estimate_read_memory(
    source: Source,
    *,
    filename: str | None = None,
    layer: str | None = None,
    extras: bool = True,
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
        ``_PEAK_SLACK``; for an .h5ad read with ``extras``, plus the bytes its
        obsm, varm, obsp, varp, other layers and uns declare); ``exact``
        (False when the shape is an estimate).
    """
    inp = _open_source(source, filename, None)
    try:
        return _estimate(inp, layer=layer, extras=extras)
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{inp.name}: could not inspect file ({type(e).__name__}: {e})") from e


def _sparse_estimate(fmt: str, n_rows: int, n_cols: int, nnz: int, *, factor: float) -> dict:
    matrix = nnz * 8 + (max(n_rows, n_cols) + 1) * 4  # the larger axis: rows after any transpose
    names = (n_rows + n_cols) * 100  # a Python string and its index entries, roughly
    return {"format": fmt, "shape": (n_rows, n_cols), "dense": False, "matrix_bytes": int(matrix),
            "peak_bytes": int(factor * matrix + names + _PEAK_SLACK), "exact": True}


def _estimate(inp: _Input, *, layer: str | None, extras: bool = True) -> dict:
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
        return _estimate_h5ad(inp, layer=layer, extras=extras)
    if ext == ".mtx" or head.lower().startswith(_MM_MAGIC):
        return _estimate_mtx(inp, "mtx")
    if ext == ".zip" or (head.startswith(_ZIP_MAGICS) and ext != ".npz"):
        with _open_zip(inp, inp.name) as zf:
            names = [i.filename for i in zf.infolist() if not i.is_dir()]
            usable = [n for n in names if _usable_member(n)]
            if len(usable) == 1 and not _MTX_RE.match(PurePosixPath(usable[0]).name):
                return _estimate(_zip_input(zf, usable[0], inp.name, display=f"{inp.name}/{usable[0]}"), layer=layer,
                                 extras=extras)
            m, _, _ = _find_10x(names, inp.name)
            return _estimate_mtx(_zip_input(zf, m, inp.name), "10x-zip")
    if ext in (".npz", ".npy"):
        size = inp.size()
        return {"format": ext[1:], "shape": None, "dense": True, "matrix_bytes": int(size),
                "peak_bytes": int(3 * size + _PEAK_SLACK), "exact": False}
    return _estimate_table(inp)


def _estimate_mtx(inp: _Input, fmt: str) -> dict:
    inp = inp.maybe_gunzipped()
    with _lines_guarded(inp.open(), inp.name) as fh:
        hdr = _mtx_header(fh, inp.name, inp.size())
    if hdr.layout == "array":
        matrix = hdr.nnz * 4
        return {"format": fmt, "shape": hdr.shape, "dense": True, "matrix_bytes": matrix,
                "peak_bytes": 3 * matrix + _PEAK_SLACK, "exact": True}
    nnz = hdr.nnz * (2 if hdr.symmetry == "symmetric" else 1)
    return _sparse_estimate(fmt, hdr.n_rows, hdr.n_cols, nnz, factor=3.0)


def _estimate_h5ad(inp: _Input, *, layer: str | None, extras: bool = True) -> dict:
    import h5py

    with _open_h5ad(inp) as f:
        path = _matrix_path(f, layer, inp.name)
        elem = f.get(path)
        if elem is None:
            raise DataError(f"{inp.name}: .h5ad has no X matrix (not an AnnData file?)")
        kept = _extra_paths(f, path)[0] if extras else []
        tables = [p for p in ("/obs", "/var") if isinstance(f.get(p), (h5py.Group, h5py.Dataset))]
        _check_what_is_read(f, [path, *tables], kept, inp.name)  # read() refuses these on the headers too
        more = sum(_h5_declared_bytes(f[p]) for p in kept)  # read as stored (the record's "extras_bytes")
        if isinstance(elem, h5py.Dataset):
            shape = tuple(int(v) for v in elem.shape)
            matrix = int(np.prod(shape, dtype=np.int64)) * 4
            return {"format": "h5ad", "shape": shape, "dense": True, "matrix_bytes": matrix,
                    "peak_bytes": int(1.5 * matrix + more + _PEAK_SLACK), "exact": True, "extras_bytes": more}
        shape = elem.attrs.get("shape", elem.attrs.get("h5sparse_shape", (0, 0)))
        n_rows, n_cols = (int(v) for v in np.asarray(shape).ravel()[:2])
        nnz = int(elem["data"].size) if "data" in elem else 0
        out = _sparse_estimate("h5ad", n_rows, n_cols, nnz, factor=1.5)
        out["peak_bytes"] += more
        out["extras_bytes"] = more
        return out


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
