"""Per-cell metadata tables joined into ``obs``.
"""
from __future__ import annotations

import numpy as np
import pandas as pd

from . import safety as _s
from .safety import DataError, _q
from .source import Source, _open_source, _split_ext
from .text import _first_lines, _open_text, _read_head, _sniff_delimiter, _text_encoding


# --------------------------------------------------------------------------- #
# metadata
# --------------------------------------------------------------------------- #
def read_metadata(source: Source, adata, *, filename: str | None = None):
    """Join a CSV/TSV of per-cell annotations into a copy of ``adata.obs``.

    The id column is the first column, unless another column matches more of
    the dataset's cell ids.  Cells without a metadata row get missing values.

    Parameters
    ----------
    source
        Path, bytes or binary file-like object (CSV/TSV/TXT, optionally .gz).
    adata
        The dataset (not modified).
    filename
        Name for messages and delimiter sniffing.

    Returns
    -------
    anndata.AnnData
        A copy with the new columns in ``obs`` and
        ``uns["dhaka_io"]["metadata"] = {"filename", "id_column", "columns",
        "matched", "unmatched_cells", "unmatched_ids"}``.

    Raises
    ------
    DataError
        Unreadable file, duplicate ids, or no id matching a cell.
    """
    inp = _open_source(source, filename, None)
    name = inp.name
    try:
        if not inp.head(1):
            raise DataError(f"{name}: file is empty")
        inp = inp.maybe_gunzipped()
        enc = _text_encoding(inp)  # binary data and blank files refused, streaming
        with _open_text(inp, enc) as fh:
            head = _read_head(fh)
        ext, _ = _split_ext(name)
        try:
            delim = _sniff_delimiter(_first_lines(head), ext)
        except DataError:
            delim = ","  # a one-column metadata file is just a list of ids; caught below
        # streamed from the file; rows far beyond the dataset's cells are refused, not parsed
        max_rows = _s.MAX_METADATA_ROWS_PER_CELL * adata.n_obs + 1000
        try:
            with _open_text(inp, enc) as fh:
                df = pd.read_csv(fh, sep=r"\s+" if delim is None else delim, dtype=str,
                                 keep_default_na=False, skipinitialspace=True, nrows=max_rows + 1)
        except DataError:
            raise
        except Exception as e:  # noqa: BLE001
            raise DataError(f"{name}: cannot parse metadata table ({e})") from None
        if len(df) > max_rows:
            raise DataError(
                f"{name}: metadata has more than {max_rows:,} rows for a dataset of {adata.n_obs:,} cells "
                f"(limit: {_s.MAX_METADATA_ROWS_PER_CELL} x cells + 1,000); refused"
            )
        if df.shape[1] < 2:
            raise DataError(f"{name}: metadata needs an id column and at least one annotation column")
        if df.shape[0] == 0:
            raise DataError(f"{name}: header only: metadata has no rows")
        df.columns = [str(c).strip() for c in df.columns]
        cells = pd.Index([str(s) for s in adata.obs_names])
        best_col, best_hits = df.columns[0], -1
        for c in df.columns:
            hits = int(cells.isin(df[c].str.strip()).sum())
            if hits > best_hits:
                best_col, best_hits = c, hits
        if best_hits <= 0:
            ex_meta = ", ".join(_q(s) for s in df.iloc[:3, 0])
            ex_cells = ", ".join(_q(s) for s in cells[:3])
            raise DataError(
                f"{name}: no metadata id matches a cell id (no column matches; first column has e.g. "
                f"{ex_meta}; dataset cells are e.g. {ex_cells})"
            )
        ids = df[best_col].str.strip()
        dup = ids[ids.duplicated()].unique()
        if len(dup):
            raise DataError(
                f"{name}: duplicate cell ids in column {_q(best_col)}: " + ", ".join(_q(s) for s in dup[:5])
            )
        meta = df.drop(columns=[best_col])
        meta.index = pd.Index(ids.to_numpy(), dtype=object)
        out = adata.copy()
        for c in meta.columns:
            col = _coerce_column(meta[c]).reindex(cells)
            out.obs[c] = col.to_numpy() if not isinstance(col.dtype, pd.CategoricalDtype) else col.values
        matched = int(cells.isin(meta.index).sum())
        info = dict(out.uns.get("dhaka_io", {}))
        info["metadata"] = {
            "filename": str(name),
            "id_column": str(best_col),
            "columns": [str(c) for c in meta.columns],
            "matched": matched,
            "unmatched_cells": int(len(cells) - matched),
            "unmatched_ids": int((~meta.index.isin(cells)).sum()),
        }
        out.uns["dhaka_io"] = info
        return out
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001
        raise DataError(f"{name}: could not read metadata ({type(e).__name__}: {e})") from e


def _coerce_column(col: pd.Series) -> pd.Series:
    """Numbers become float; other text becomes a categorical ('' -> missing)."""
    s = col.str.strip().replace("", np.nan)
    num = pd.to_numeric(s, errors="coerce")
    if num.notna().sum() == s.notna().sum():
        return num.astype(float)
    return s.astype("category")
