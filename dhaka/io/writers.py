"""Writers: the latent CSV, .h5ad bytes, zipping and safe unzipping of folders.
"""
from __future__ import annotations

import io
import os
import tempfile
import zipfile
import zlib
from pathlib import Path
from typing import Sequence

import numpy as np
import pandas as pd

from .safety import DataError, _q, safe_text_frame
from .source import _open_zip


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
