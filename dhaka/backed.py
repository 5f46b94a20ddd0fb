"""Out-of-core data: train and embed from a ``.h5ad`` that does not fit in memory.

The matrix is never loaded whole. Everything goes through :class:`BackedRows`, which
reads row ranges or row batches of an HDF5 CSR matrix (the layout ``anndata`` writes
for a sparse ``X``; a dense ``X`` works too) with h5py, sorted row indices per batch,
and densifies only those rows:

1. **Gene statistics in chunks** (:func:`prepare`). Pass 1 reads contiguous row chunks
   (bounded by a number of stored values, not of rows) for library sizes and the value
   range; a seeded sample of cells decides the input kind. Pass 2 accumulates per-gene
   sums, sums of squares, detection counts and value ranges of the normalised,
   log-transformed values, in float64. From these the estimator's own
   :class:`dhaka.preprocess.Preprocessor` is fitted (``fit_steps`` then ``fit_moments``):
   the same kind rule, normalisation target, gene-count rule, gene scores and eligibility
   and input affine as in memory (``entropy`` needs the values, not their moments, and is
   refused). This module only reads rows; the arithmetic of each step is the
   preprocessing module's.
2. **A disk cache of the preprocessed, selected matrix** as CSR in an HDF5 file under
   ``DHAKA_HOME/cache``, keyed by a content digest of the input (streamed over
   ``data``/``indices``/``indptr``) and the preprocessing settings, so a second fit
   with the same data and settings skips both passes. HDF5 rather than ``.npz``
   because a training batch can then read just its rows.
3. **Training** (:func:`fit_backed`) hands the prepared rows (:class:`Prepared`, a
   :class:`dhaka.preprocess.PreparedRows`) to ``Dhaka.fit``: in memory as CSR when they are
   smaller than ``max_memory_bytes``, otherwise a :class:`BackedRows` over the cache file
   that :func:`dhaka.train.fit_vae` reads batch by batch. It returns the fitted
   :class:`dhaka.Dhaka`, so ``save``/``load``/``transform`` work as usual.
4. **Embedding** (:func:`transform_backed`) streams contiguous row chunks of any
   ``.h5ad`` through the fitted estimator's preprocessing and encoder.

All settings of the in-memory estimator apply; the result equals the in-memory fit
up to float summation order (statistics are accumulated in float64 here; genes at a
near-tie of the selection score can differ).
"""
from __future__ import annotations

import hashlib
import json
import os
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal, Sequence

import numpy as np
import scipy.sparse as sp

from dhaka.preprocess import ColumnMoments, PreparedRows, Preprocessor, library_size

__all__ = ["BackedRows", "Prepared", "prepare", "fit_backed", "transform_backed", "cache_dir",
           "file_fingerprint", "clear_cache"]

CACHE_FORMAT = "dhaka-prep/2"
# Stored values per chunk in the sequential passes (~160 MB of data + indices).
DEFAULT_CHUNK_NNZ = 20_000_000


def cache_dir() -> Path:
    """``DHAKA_HOME/cache`` (``DHAKA_HOME`` defaults to ``./dhaka-runs``)."""
    return Path(os.environ.get("DHAKA_HOME") or "dhaka-runs") / "cache"


# --------------------------------------------------------------------------- reading
class BackedRows:
    """Row access to a matrix stored in an HDF5 file, without loading it.

    Parameters
    ----------
    path
        ``.h5ad`` (its ``X``) or a cache file written by :func:`prepare`.
    group
        Name of the matrix inside the file (``"X"``).
    columns
        Keep only these columns, in this order (e.g. the selected genes).
    row_scale
        Multiply row ``i`` by ``row_scale[i]`` before anything else (library-size
        normalisation); ``None`` leaves values as stored.
    log
        Apply ``log2(x + 1)`` after the row scaling.
    clip
        ``(lower, upper)`` per output column: values are clipped to them after the log (the
        trim of :class:`dhaka.preprocess.Preprocessor`); rows are then read dense.

    Notes
    -----
    ``take_rows(idx)`` returns the rows ``idx`` (any order, repeats allowed) as a dense
    float32 array: the rows are read in sorted order, one contiguous read per run of
    consecutive rows, as h5py wants. An object with ``shape`` and ``take_rows`` is a
    *row source* for :func:`dhaka.train.fit_vae` and :func:`dhaka.train.encode`.
    """

    def __init__(self, path: str | os.PathLike, *, group: str = "X", columns: Sequence[int] | None = None,
                 row_scale: np.ndarray | None = None, log: bool = False,
                 clip: tuple[np.ndarray, np.ndarray] | None = None) -> None:
        import h5py

        self.path = Path(path)
        self._file = h5py.File(self.path, "r")
        if group not in self._file:
            self._file.close()
            raise ValueError(f"{self.path}: no matrix {group!r} in the file")
        node = self._file[group]
        self.sparse = isinstance(node, h5py.Group)
        if self.sparse:
            enc = node.attrs.get("encoding-type", "csr_matrix")
            enc = enc.decode() if isinstance(enc, bytes) else str(enc)
            if enc != "csr_matrix":
                self._file.close()
                raise ValueError(
                    f"{self.path}: {group} is stored as {enc}; reading cells in batches needs CSR "
                    "(rows = cells). Convert once, e.g. adata.X = adata.X.tocsr(); adata.write_h5ad(...)"
                )
            self.file_shape = tuple(int(s) for s in node.attrs["shape"])
            self._data, self._indices = node["data"], node["indices"]
            self.indptr = np.asarray(node["indptr"][...], dtype=np.int64)
        else:
            if node.ndim != 2:
                self._file.close()
                raise ValueError(f"{self.path}: {group} must be 2-D, got shape {node.shape}")
            self.file_shape = tuple(int(s) for s in node.shape)
            self._dense = node
            self.indptr = None
        n, g = self.file_shape
        self.columns = None if columns is None else np.asarray(columns, dtype=np.int64)
        if self.columns is not None and self.columns.size and (self.columns.min() < 0 or self.columns.max() >= g):
            raise ValueError(f"column indices out of range for {g} columns")
        self._colmap = None
        if self.columns is not None:
            self._colmap = np.full(g, -1, dtype=np.int64)
            self._colmap[self.columns] = np.arange(self.columns.size)
        self.row_scale = None if row_scale is None else np.asarray(row_scale, dtype=np.float32)
        if self.row_scale is not None and self.row_scale.shape != (n,):
            raise ValueError(f"row_scale must have one factor per row ({n}), got {self.row_scale.shape}")
        self.log = bool(log)
        self.clip = None
        if clip is not None:
            self.clip = tuple(np.asarray(b, dtype=np.float32) for b in clip)
            if any(b.shape != (self.shape[1],) for b in self.clip):
                self._file.close()
                raise ValueError(f"clip bounds must have one value per column ({self.shape[1]})")

    # -- basic properties
    @property
    def shape(self) -> tuple[int, int]:
        return (self.file_shape[0], self.file_shape[1] if self.columns is None else int(self.columns.size))

    @property
    def nnz(self) -> int:
        return int(self.indptr[-1]) if self.sparse else self.file_shape[0] * self.file_shape[1]

    def close(self) -> None:
        try:
            self._file.close()
        except Exception:  # noqa: BLE001 - already closed
            pass

    def __enter__(self) -> "BackedRows":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def __getstate__(self) -> dict:  # for DataLoader workers / multiprocessing: reopen by path
        return {"path": str(self.path), "columns": self.columns, "row_scale": self.row_scale, "log": self.log,
                "clip": self.clip}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["path"], columns=state["columns"], row_scale=state["row_scale"], log=state["log"],
                      clip=state.get("clip"))

    # -- values
    def _finish_values(self, data: np.ndarray, rows_local: np.ndarray, rows_global: np.ndarray) -> np.ndarray:
        from dhaka.preprocess import scale_and_log

        factors = None if self.row_scale is None else self.row_scale[rows_global][rows_local]
        return scale_and_log(data, factors=factors, log=self.log)

    def _read_csr(self, rows_sorted: np.ndarray) -> sp.csr_matrix:
        """Raw CSR of the given sorted rows (all file columns), one read per run of consecutive rows."""
        ip = self.indptr
        if rows_sorted.size == 0:
            return sp.csr_matrix((0, self.file_shape[1]), dtype=np.float32)
        breaks = np.flatnonzero(np.diff(rows_sorted) != 1) + 1
        starts = np.concatenate([[0], breaks])
        ends = np.concatenate([breaks, [rows_sorted.size]])
        data_parts, ind_parts = [], []
        for s, e in zip(starts, ends):
            a, b = ip[rows_sorted[s]], ip[rows_sorted[e - 1] + 1]
            if b > a:
                data_parts.append(self._data[a:b])
                ind_parts.append(self._indices[a:b])
        lengths = ip[rows_sorted + 1] - ip[rows_sorted]
        indptr = np.concatenate([[0], np.cumsum(lengths)])
        data = np.concatenate(data_parts) if data_parts else np.zeros(0, np.float32)
        indices = np.concatenate(ind_parts) if ind_parts else np.zeros(0, np.int64)
        return sp.csr_matrix((data, indices, indptr), shape=(rows_sorted.size, self.file_shape[1]))

    def read_csr(self, rows: np.ndarray | slice) -> sp.csr_matrix:
        """Rows (sorted indices or a slice) as CSR with columns, scaling and log applied."""
        if isinstance(rows, slice):
            rows = np.arange(*rows.indices(self.file_shape[0]))
        rows = np.asarray(rows, dtype=np.int64)
        if self.clip is not None:  # a bound above zero changes implicit zeros: go through dense rows
            return sp.csr_matrix(self.take_rows(rows))
        if self.sparse:
            M = self._read_csr(rows)
        else:
            M = sp.csr_matrix(np.asarray(self._dense[rows[0]:rows[-1] + 1] if _is_range(rows)
                                         else self._dense[rows], dtype=np.float32)) if rows.size else \
                sp.csr_matrix((0, self.file_shape[1]), dtype=np.float32)
        local = np.repeat(np.arange(rows.size), np.diff(M.indptr))
        data = self._finish_values(M.data, local, rows)
        M = sp.csr_matrix((data, M.indices, M.indptr), shape=M.shape)
        if self.columns is not None:
            M = M[:, self.columns]
        return M

    def take_rows(self, idx: np.ndarray) -> np.ndarray:
        """Dense float32 rows ``idx`` (in the order given) with columns, scaling and log applied."""
        idx = np.asarray(idx, dtype=np.int64)
        uniq, inverse = np.unique(idx, return_inverse=True)
        n_cols = self.shape[1]
        if not self.sparse:
            from dhaka.preprocess import scale_and_log

            block = np.asarray(self._dense[uniq], dtype=np.float32) if uniq.size else np.zeros((0, self.file_shape[1]))
            block = scale_and_log(block, factors=None if self.row_scale is None else self.row_scale[uniq][:, None],
                                  log=self.log)
            if self.columns is not None:
                block = block[:, self.columns]
            return self._clipped(np.ascontiguousarray(block[inverse], dtype=np.float32))
        M = self._read_csr(uniq)
        local = np.repeat(np.arange(uniq.size), np.diff(M.indptr))
        cols = M.indices.astype(np.int64, copy=False)
        data = self._finish_values(M.data, local, uniq)
        if self._colmap is not None:
            cols = self._colmap[cols]
            keep = cols >= 0
            local, cols, data = local[keep], cols[keep], data[keep]
        out = np.zeros((uniq.size, n_cols), dtype=np.float32)
        out[local, cols] = data
        return self._clipped(out if uniq.size == idx.size and np.array_equal(uniq, idx) else out[inverse])

    def _clipped(self, block: np.ndarray) -> np.ndarray:
        return block if self.clip is None else np.clip(block, self.clip[0], self.clip[1], out=block)

    def chunks(self, *, chunk_nnz: int = DEFAULT_CHUNK_NNZ, max_rows: int = 50_000) -> Iterator[tuple[int, int, sp.csr_matrix]]:
        """Contiguous row chunks ``(start, stop, CSR)`` of at most ``chunk_nnz`` stored values each."""
        for a, b in self.chunk_bounds(chunk_nnz=chunk_nnz, max_rows=max_rows):
            yield a, b, self.read_csr(slice(a, b))

    def chunk_bounds(self, *, chunk_nnz: int = DEFAULT_CHUNK_NNZ, max_rows: int = 50_000) -> list[tuple[int, int]]:
        n, g = self.file_shape
        out, a = [], 0
        while a < n:
            if self.sparse:
                target = self.indptr[a] + max(int(chunk_nnz), 1)
                b = int(np.searchsorted(self.indptr, target, side="right")) - 1
                b = min(max(b, a + 1), n, a + max_rows)
            else:
                b = min(n, a + max(1, min(max_rows, int(chunk_nnz) // max(g, 1))))
            out.append((a, b))
            a = b
        return out


def _is_range(rows: np.ndarray) -> bool:
    return rows.size > 0 and rows[-1] - rows[0] + 1 == rows.size


# ------------------------------------------------------------------ fingerprint
def file_fingerprint(path: str | os.PathLike, *, group: str = "X", block: int = 8 << 20) -> str:
    """SHA-256 of the matrix's content (shape, dtype, CSR arrays or dense values), streamed in blocks.

    The ``sha256`` of :func:`dhaka.io.fingerprint` of the file.
    """
    from dhaka.io import fingerprint

    return fingerprint(path, group=group, block=block)["sha256"]


def _names(path: Path) -> tuple[list[str], list[str]]:
    """obs_names and var_names of an .h5ad (reads only the two indices)."""
    import anndata

    ad = anndata.read_h5ad(path, backed="r")
    try:
        return [str(s) for s in ad.obs_names], [str(s) for s in ad.var_names]
    finally:
        ad.file.close()


# --------------------------------------------------------------------- prepare
@dataclass
class Prepared(PreparedRows):
    """The preprocessed, selected matrix of an ``.h5ad`` and the fitted preprocessor that made it.

    ``matrix`` is a CSR matrix in memory or a :class:`BackedRows` over the cache file (cells x
    selected genes, normalised and log-transformed as decided); ``Dhaka.fit`` takes it as is.
    """

    obs_names: list[str]
    moments: ColumnMoments      # of the selected genes' preprocessed values
    key: str
    cache_path: Path | None
    from_cache: bool
    seconds: dict = field(default_factory=dict)

    def describe(self) -> dict[str, Any]:
        return {"key": self.key, "cache_path": str(self.cache_path) if self.cache_path else None,
                "from_cache": self.from_cache, "seconds": dict(self.seconds)}

    # what the preprocessor decided, by the names this object has always had
    gene_indices = property(lambda self: self.preprocessor.gene_indices_)
    input_kind = property(lambda self: self.preprocessor.kind_)
    normalize = property(lambda self: self.preprocessor.normalize_)
    log = property(lambda self: self.preprocessor.log_)
    target_sum = property(lambda self: self.preprocessor.target_sum_)
    var_names = property(lambda self: self.feature_names)
    genes = property(lambda self: [self.feature_names[i] for i in self.preprocessor.gene_indices_])
    mean = property(lambda self: self.moments.mean)
    var = property(lambda self: self.moments.var)


def _prep_key(fp: str, params: dict) -> str:
    blob = json.dumps({"format": CACHE_FORMAT, "data": fp, **params}, sort_keys=True, default=str)
    return hashlib.sha256(blob.encode()).hexdigest()[:32]


def prepare(
    path: str | os.PathLike,
    *,
    mode: Literal["expression", "cnv"] = "expression",
    n_genes: int | Literal["auto"] | None = "auto",
    gene_selection: Literal["cv", "mean", "variance", "dispersion"] = "cv",
    normalize: bool | Literal["auto"] = "auto",
    log: bool | Literal["auto"] = "auto",
    log_pseudocount: float | Literal["auto"] = "auto",
    winsorize: float | Literal["auto"] | None = "auto",
    preprocessor: Preprocessor | None = None,
    cache: bool = True,
    cache_root: str | os.PathLike | None = None,
    max_memory_bytes: int = 2 * 1024**3,
    chunk_nnz: int = DEFAULT_CHUNK_NNZ,
    sample_cells: int = 20_000,
    seed: int = 0,
) -> Prepared:
    """Preprocess a (possibly huge) ``.h5ad`` in chunks and select genes, with a disk cache.

    Parameters
    ----------
    path
        An ``.h5ad`` with a CSR (or dense) ``X``, cells in rows.
    mode, n_genes, gene_selection, normalize, log, log_pseudocount, winsorize
        As in :class:`dhaka.Dhaka`; ignored when ``preprocessor`` is given (the trim's bounds are
        the quantiles of the value sample, ``sample_cells``).
    preprocessor
        An unfitted :class:`dhaka.preprocess.Preprocessor` (e.g. ``Dhaka.make_preprocessor()``);
        it is fitted here from a value sample, the library sizes and streamed column moments.
    cache
        Read/write the preprocessed selected matrix in ``cache_root`` (default
        :func:`cache_dir`), keyed by the content of ``X`` and these settings.
    max_memory_bytes
        The selected matrix is returned in memory (CSR) when its CSR arrays are smaller
        than this; otherwise as a :class:`BackedRows` over the cache file (``cache`` must
        then be on).
    chunk_nnz
        Stored values per chunk in the passes over the file (memory ~ 8 bytes each).
    sample_cells
        Cells (random, seeded) whose values decide the input kind (counts / normalised /
        log / scaled), as :func:`dhaka.preprocess.detect_kind` does with a value sample.
    """
    pre = preprocessor if preprocessor is not None else Preprocessor(
        mode=mode, n_genes=n_genes, gene_selection=gene_selection, normalize=normalize, log=log,
        log_pseudocount=log_pseudocount, winsorize=winsorize)
    if pre.gene_selection == "entropy":
        raise ValueError("gene_selection='entropy' is not available out of core; use 'cv', 'mean', 'variance' "
                         "or 'dispersion', or read the data into memory")
    path = Path(path)
    t0 = time.perf_counter()
    timings: dict[str, float] = {}
    # the key: every setting of the value steps and the gene choice (the affine is refitted from the moments)
    params = {k: v for k, v in pre.settings().items() if k not in ("relative", "scale")}
    root = Path(cache_root) if cache_root is not None else cache_dir()
    key, cpath = "", None
    if cache:
        key = _prep_key(file_fingerprint(path), params)
        timings["fingerprint"] = time.perf_counter() - t0
        cpath = root / f"{key}.h5"
        if cpath.exists():
            try:
                return _load_cached(cpath, key, pre, max_memory_bytes, timings)
            except Exception:  # noqa: BLE001 - a damaged cache entry is rebuilt
                cpath.unlink(missing_ok=True)
    obs_names, var_names = _names(path)
    raw = BackedRows(path)
    try:
        n, g = raw.file_shape
        if n < 2:
            raise ValueError(f"{path}: need at least 2 cells, got {n}")
        # ---- pass 1: library sizes, value range, finiteness -> kind, steps, normalisation target
        t = time.perf_counter()
        lib, vmin = _library_sizes(raw, path, obs_names, chunk_nnz=chunk_nnz)
        rng = np.random.default_rng(seed)
        sample_rows = np.sort(rng.choice(n, min(n, sample_cells), replace=False))
        try:
            pre.fit_steps(raw.read_csr(sample_rows), vmin=vmin, library_sizes=lib)
        except ValueError as exc:
            raise ValueError(f"{path}: {exc}") from None
        scale = pre.stream_factors(pre.size_factors(lib), len(lib))
        timings["pass1"] = time.perf_counter() - t
        # ---- pass 2: per-gene moments of the preprocessed values -> genes and input affine
        t = time.perf_counter()
        with BackedRows(path, row_scale=scale, log=pre.log_, clip=pre.clip_bounds()) as values:
            moments = _column_moments(values, chunk_nnz=chunk_nnz)
        pre.fit_moments(moments)
        idx = pre.gene_indices_
        timings["pass2"] = time.perf_counter() - t
        # ---- pass 3: write the selected preprocessed matrix (cache) or keep it in memory
        t = time.perf_counter()
        with BackedRows(path, columns=idx, row_scale=scale, log=pre.log_, clip=pre.clip_bounds(idx)) as sel:
            if cache:
                _write_cache(cpath, sel, chunk_nnz=chunk_nnz, meta={
                    "format": CACHE_FORMAT, "key": key, "params": params, "source": str(path),
                    "var_names": var_names, "obs_names": obs_names, "preprocessor": pre.to_dict(),
                    "moments": _moments_dict(moments.take(idx)), "created": time.time(),
                })
            else:
                parts = [M for _a, _b, M in sel.chunks(chunk_nnz=chunk_nnz)]
                matrix = sp.vstack(parts, format="csr").astype(np.float32) if parts else sp.csr_matrix((0, idx.size))
        timings["pass3"] = time.perf_counter() - t
    finally:
        raw.close()
    if cache:
        return _load_cached(cpath, key, pre, max_memory_bytes, timings, from_cache=False)
    timings["total"] = time.perf_counter() - t0
    return Prepared(matrix=matrix, preprocessor=pre, feature_names=var_names, obs_names=obs_names,
                    moments=moments.take(idx), key=key, cache_path=None, from_cache=False, seconds=timings)


def _library_sizes(raw: BackedRows, path: Path, obs_names: list[str], *, chunk_nnz: int) -> tuple[np.ndarray, float]:
    """Every cell's total and the smallest value (implicit zeros included); refuses non-finite values."""
    n, g = raw.file_shape
    lib = np.zeros(n, dtype=np.float64)
    vmin = np.inf
    for a, b, M in raw.chunks(chunk_nnz=chunk_nnz):
        if M.nnz:
            if not np.all(np.isfinite(M.data)):
                bad = np.flatnonzero(~np.isfinite(M.data))[0]
                row = a + int(np.searchsorted(M.indptr, bad, side="right")) - 1
                raise ValueError(f"{path}: X has a non-finite value in cell {obs_names[row]!r} (row {row})")
            vmin = min(vmin, float(M.data.min()))
        lib[a:b] = library_size(M)
    if raw.nnz < n * g:
        vmin = min(vmin, 0.0)
    return lib, (0.0 if vmin == np.inf else vmin)


def _column_moments(values: BackedRows, *, chunk_nnz: int) -> ColumnMoments:
    """Per-gene moments of the (preprocessed) values, accumulated chunk by chunk in float64."""
    n, g = values.shape
    s1, s2 = np.zeros(g), np.zeros(g)
    det = np.zeros(g, dtype=np.int64)
    lo, hi = np.zeros(g), np.zeros(g)  # implicit zeros count, as in a sparse matrix's value range
    for _a, _b, M in values.chunks(chunk_nnz=chunk_nnz):
        cols = M.indices
        d = M.data.astype(np.float64)
        s1 += np.bincount(cols, weights=d, minlength=g)
        s2 += np.bincount(cols, weights=d * d, minlength=g)
        det += np.bincount(cols[M.data != 0], minlength=g)
        np.minimum.at(lo, cols, d)
        np.maximum.at(hi, cols, d)
    mean = s1 / n
    return ColumnMoments(n_cells=n, mean=mean, var=np.maximum(s2 / n - mean**2, 0.0), detected=det, lo=lo, hi=hi)


def _moments_dict(m: ColumnMoments) -> dict[str, Any]:
    return {"n_cells": int(m.n_cells), "mean": m.mean.tolist(), "var": m.var.tolist(),
            "detected": m.detected.tolist(), "lo": m.lo.tolist(), "hi": m.hi.tolist()}


def _moments_from_dict(d: dict[str, Any]) -> ColumnMoments:
    return ColumnMoments(n_cells=int(d["n_cells"]), mean=np.asarray(d["mean"]), var=np.asarray(d["var"]),
                         detected=np.asarray(d["detected"], dtype=np.int64), lo=np.asarray(d["lo"]),
                         hi=np.asarray(d["hi"]))


def _write_cache(cpath: Path, sel: BackedRows, *, chunk_nnz: int, meta: dict) -> None:
    """Write ``sel`` (all rows) as CSR into ``cpath`` atomically."""
    import h5py

    cpath.parent.mkdir(parents=True, exist_ok=True)
    tmp = cpath.with_name(f".{cpath.name}.{os.getpid()}.tmp")
    n, g = sel.shape
    try:
        with h5py.File(tmp, "w") as f:
            grp = f.create_group("X")
            grp.attrs["encoding-type"] = "csr_matrix"
            grp.attrs["encoding-version"] = "0.1.0"
            grp.attrs["shape"] = np.array([n, g])
            data = grp.create_dataset("data", shape=(0,), maxshape=(None,), dtype=np.float32, chunks=(1 << 16,))
            indices = grp.create_dataset("indices", shape=(0,), maxshape=(None,), dtype=np.int32, chunks=(1 << 16,))
            indptr = np.zeros(n + 1, dtype=np.int64)
            pos = 0
            for a, b, M in sel.chunks(chunk_nnz=chunk_nnz):
                M.sort_indices()
                k = M.nnz
                if k:
                    data.resize((pos + k,))
                    indices.resize((pos + k,))
                    data[pos:pos + k] = M.data.astype(np.float32, copy=False)
                    indices[pos:pos + k] = M.indices.astype(np.int32, copy=False)
                indptr[a + 1:b + 1] = pos + M.indptr[1:]
                pos += k
            grp.create_dataset("indptr", data=indptr)
            f.attrs["meta"] = json.dumps(meta)
        os.replace(tmp, cpath)
    finally:
        if tmp.exists():
            tmp.unlink()


def _load_cached(cpath: Path, key: str, pre: Preprocessor, max_memory_bytes: int, timings: dict, *,
                 from_cache: bool = True) -> Prepared:
    """The cache entry as :class:`Prepared`; its preprocessor gets ``pre``'s input-affine settings
    (``relative``, ``scale``: not part of the key) fitted on the cached moments of the genes."""
    import h5py

    t = time.perf_counter()
    with h5py.File(cpath, "r") as f:
        meta = json.loads(f.attrs["meta"])
        if meta.get("format") != CACHE_FORMAT or meta.get("key") != key:
            raise ValueError("stale cache entry")
        shape = tuple(int(s) for s in f["X"].attrs["shape"])
        nnz = int(f["X/indptr"][-1])
        in_memory = nnz * 8 + (shape[0] + 1) * 8 < max_memory_bytes
        if in_memory:
            matrix = sp.csr_matrix((f["X/data"][...], f["X/indices"][...], f["X/indptr"][...]), shape=shape)
    if not in_memory:
        matrix = BackedRows(cpath)
    timings["load_cache" if from_cache else "reopen"] = time.perf_counter() - t
    stored = meta["preprocessor"]
    fitted = Preprocessor.from_dict({**stored, "settings": {**stored["settings"], "relative": pre.relative,
                                                            "scale": pre.scale}})
    moments = _moments_from_dict(meta["moments"])
    fitted.fit_moments(moments, select=False, columns=fitted.gene_indices_)
    return Prepared(matrix=matrix, preprocessor=fitted, feature_names=meta["var_names"], obs_names=meta["obs_names"],
                    moments=moments, key=key, cache_path=cpath, from_cache=from_cache, seconds=timings)


def clear_cache(cache_root: str | os.PathLike | None = None) -> int:
    """Delete every cached preprocessed matrix; returns how many files were removed."""
    root = Path(cache_root) if cache_root is not None else cache_dir()
    n = 0
    for p in root.glob("*.h5"):
        p.unlink(missing_ok=True)
        n += 1
    return n


# ------------------------------------------------------------------------- fit
def fit_backed(
    path: str | os.PathLike,
    *,
    estimator: Any = None,
    cache: bool = True,
    cache_root: str | os.PathLike | None = None,
    max_memory_bytes: int = 2 * 1024**3,
    chunk_nnz: int = DEFAULT_CHUNK_NNZ,
    callback: Any = None,
    stop_event: Any = None,
    seams: Any = None,
    clusterer: Any = None,
    **params: Any,
) -> Any:
    """Fit a :class:`dhaka.Dhaka` on an ``.h5ad`` without loading its matrix.

    The file is prepared out of core (:func:`prepare`, with the estimator's preprocessor) and the
    prepared rows are handed to ``Dhaka.fit``, which trains on them as on any matrix.

    Parameters
    ----------
    path
        ``.h5ad`` with cells in rows (CSR or dense ``X``).
    estimator
        An unfitted :class:`dhaka.Dhaka` whose settings to use; or give them as ``**params``.
    cache, cache_root, max_memory_bytes, chunk_nnz
        See :func:`prepare`.
    callback, stop_event, seams, clusterer
        As in :meth:`dhaka.Dhaka.fit`.

    Returns
    -------
    Dhaka
        Fitted like :meth:`Dhaka.fit` would (``genes_``, ``model_``, ``history_``, ...),
        with ``prepared_`` (cache key, timings) in addition; ``save``/``transform`` work.
    """
    from dhaka.estimator import Dhaka

    est = estimator if estimator is not None else Dhaka(**params)
    if estimator is not None and params:
        est.set_params(**params)
    est.validate_params()  # fail before the passes over the file
    prep = prepare(path, preprocessor=est.make_preprocessor(), cache=cache, cache_root=cache_root,
                   max_memory_bytes=max_memory_bytes, chunk_nnz=chunk_nnz, seed=int(est.seed))
    try:
        return est.fit(prep, callback=callback, stop_event=stop_event, seams=seams, clusterer=clusterer)
    finally:
        if isinstance(prep.matrix, BackedRows):
            prep.matrix.close()


# ------------------------------------------------------------------- transform
def transform_backed(est: Any, path: str | os.PathLike, *, chunk_nnz: int = DEFAULT_CHUNK_NNZ,
                     batch_size: int = 4096) -> np.ndarray:
    """Latent coordinates of every cell of an ``.h5ad``, read in contiguous row chunks.

    Applies the fitted estimator's preprocessing (its normalisation target, log, selected
    genes matched by name; genes missing from the file get the training mean) chunk by chunk.
    """
    import torch

    from dhaka.train import encode

    from sklearn.utils.validation import check_is_fitted

    check_is_fitted(est, "model_")
    path = Path(path)
    obs_names, var_names = _names(path)
    pre = est.preprocessor_
    try:  # the columns of the model's genes, matched as in memory (Preprocessor.match)
        cols, _ = pre.match(var_names if est.feature_names_ is not None else None, len(var_names))
    except ValueError as exc:
        raise ValueError(f"{path}: {exc}") from None
    have = cols >= 0
    raw = BackedRows(path)
    try:
        scale = lib = None
        if pre.normalize_ or pre.pearson:
            lib = _library_sizes(raw, path, obs_names, chunk_nnz=chunk_nnz)[0]
        if pre.normalize_:
            scale = pre.size_factors(lib)
        scale = pre.stream_factors(scale, raw.file_shape[0])
        bounds = raw.chunk_bounds(chunk_nnz=chunk_nnz)
    finally:
        raw.close()
    fill = est.model_.center.numpy()
    out = []
    pearson = pre.pearson  # residuals from the raw counts of each block and every cell's library
    with BackedRows(path, columns=np.where(have, cols, 0), row_scale=scale, log=bool(pre.log_),
                    clip=None if pearson else pre.clip_bounds(est.gene_indices_)) as src:
        with torch.no_grad():
            for a, b in bounds:
                for s in range(a, b, batch_size):
                    rows = np.arange(s, min(b, s + batch_size))
                    block = src.take_rows(rows)
                    if pearson:
                        block = pre.residuals(block, lib[rows], est.gene_indices_)
                    if not have.all():
                        block[:, ~have] = fill[~have]
                    out.append(encode(est.model_, block, device="cpu"))
    return np.concatenate(out) if out else np.zeros((0, est.model_.latent_dim), np.float32)
