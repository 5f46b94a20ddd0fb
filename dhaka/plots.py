"""Plotly figure builders for Dhaka Explorer.

Every function here *returns* a :class:`plotly.graph_objects.Figure` and never
shows it, so the same figures serve the Streamlit app, notebooks and reports.
Point clouds use WebGL traces (``Scatter3d`` for 3-D, ``Scattergl`` for 2-D),
which stay responsive with tens of thousands of cells.

Plotly is imported inside the functions so that ``import dhaka.plots`` is
cheap.
"""
from __future__ import annotations

import threading
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Literal

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = [
    "color_kind",
    "display_indices",
    "default_point_size",
    "scatter",
    "loss_curves",
    "bic_curve",
    "histogram",
    "library_size_hist",
    "dropout_hist",
    "figure_html",
    "selection_scatter",
    "figure_bytes",
    "figure_filename",
    "figure_metadata",
    "static_engine",
    "browser_path",
    "FigureExportError",
    "PUBLICATION_SIZE",
]

#: Qualitative palette for categorical colours (Plotly's "Plotly" + "D3" + "Alphabet").
_CATEGORICAL_MAX_UNIQUE = 30


def _palette() -> list[str]:
    import plotly.express as px

    return list(px.colors.qualitative.Plotly) + list(px.colors.qualitative.D3) + list(
        px.colors.qualitative.Alphabet
    )


def color_kind(values: Any, *, max_categories: int = _CATEGORICAL_MAX_UNIQUE) -> Literal["categorical", "continuous"]:
    """Decide whether a colour vector is categorical or continuous.

    Parameters
    ----------
    values
        One value per cell (array-like, pandas Series or Categorical).
    max_categories
        Numeric vectors with at most this many distinct values *and* only
        integer values are treated as categories (e.g. cluster labels).

    Returns
    -------
    ``"categorical"`` or ``"continuous"``.
    """
    import pandas as pd

    s = pd.Series(values) if not isinstance(values, pd.Series) else values
    if isinstance(s.dtype, pd.CategoricalDtype) or s.dtype == bool or s.dtype == object:
        return "categorical"
    if pd.api.types.is_string_dtype(s.dtype):
        return "categorical"
    if pd.api.types.is_integer_dtype(s.dtype):
        return "categorical" if s.nunique(dropna=True) <= max_categories else "continuous"
    if pd.api.types.is_float_dtype(s.dtype):
        finite = s.dropna()
        if len(finite) and s.nunique(dropna=True) <= max_categories and np.all(np.mod(finite.to_numpy(), 1) == 0):
            return "categorical"
        return "continuous"
    return "categorical"


def display_indices(n: int, *, max_points: int | None = None, seed: int = 0) -> np.ndarray:
    """Indices of the cells to draw: all of them, or a seeded subsample.

    The same ``(n, max_points, seed)`` always gives the same sorted subset, so
    every view of the same cells shows the same points.

    Parameters
    ----------
    n
        Number of cells.
    max_points
        Draw at most this many cells; ``None`` or ``>= n`` draws all.
    seed
        Seed of the subsample.
    """
    if max_points is None or max_points >= n or max_points <= 0:
        return np.arange(n)
    rng = np.random.default_rng(seed)
    return np.sort(rng.choice(n, size=int(max_points), replace=False))


def default_point_size(n: int, *, dims: int = 3) -> float:
    """A marker size that keeps ``n`` points legible (smaller for large ``n``)."""
    if dims == 3:
        return 4.0 if n <= 1_000 else 3.0 if n <= 5_000 else 2.0 if n <= 20_000 else 1.5
    return 6.0 if n <= 1_000 else 4.0 if n <= 5_000 else 3.0 if n <= 20_000 else 2.0


def _fmt_value(v: Any) -> str:
    if isinstance(v, (float, np.floating)):
        return "nan" if not np.isfinite(v) else f"{v:.4g}"
    return str(v)


def scatter(
    coords: Any,
    *,
    color: Any = None,
    color_name: str = "colour",
    color_type: Literal["auto", "categorical", "continuous"] = "auto",
    cell_ids: Sequence[Any] | None = None,
    title: str | None = None,
    axis_prefix: str = "dim",
    point_size: float | None = None,
    max_points: int | None = None,
    seed: int = 0,
    colorscale: str = "Viridis",
    category_order: Sequence[Any] | None = None,
    symbol: Any = None,
    symbol_name: str = "sample",
    height: int | None = None,
) -> go.Figure:
    """2-D or 3-D scatter plot of cells (WebGL).

    Parameters
    ----------
    coords
        Array ``(n_cells, 2)`` or ``(n_cells, 3)``; 3 columns give a rotatable
        ``Scatter3d``, 2 columns a ``Scattergl``. Extra columns are ignored.
    color
        One value per cell, or ``None`` for a single colour.
    color_name
        Name of the colour variable (legend / colour bar title, hover label).
    color_type
        ``"auto"`` uses :func:`color_kind`.
    cell_ids
        Cell identifiers shown on hover (default: the row number).
    title
        Figure title.
    axis_prefix
        Axis titles are ``f"{axis_prefix}_1"`` and so on.
    point_size
        Marker size; default from :func:`default_point_size`.
    max_points
        Draw a seeded subsample of at most this many cells
        (see :func:`display_indices`).
    seed
        Seed of the display subsample.
    colorscale
        Plotly colour scale for continuous colours.
    category_order
        Order of the categories in the legend (default: sorted).
    symbol
        Optional second categorical per-cell variable drawn as the marker
        symbol (e.g. which sample a cell comes from).
    symbol_name
        Name of ``symbol`` for the legend.
    height
        Figure height in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import pandas as pd
    import plotly.graph_objects as go

    Z = np.asarray(coords, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] < 2:
        raise ValueError(f"coords must be an (n_cells, 2 or 3) array, got shape {Z.shape}")
    dims = 3 if Z.shape[1] >= 3 else 2
    n = Z.shape[0]
    idx = display_indices(n, max_points=max_points, seed=seed)
    Zs = Z[idx, :dims]
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(n)).astype(str)[idx]
    size = point_size if point_size is not None else default_point_size(len(idx), dims=dims)
    sym = None if symbol is None else np.asarray(pd.Series(symbol).astype(str))[idx]
    trace_type = "scatter3d" if dims == 3 else "scattergl"

    def trace_cls(**kw: Any) -> dict[str, Any]:
        # plain dicts: go.Figure deep-copies trace objects (0.5 s for 5000 string hover labels)
        return {"type": trace_type, **kw}

    def _xyz(mask: np.ndarray | slice) -> dict[str, Any]:
        d = {"x": Zs[mask, 0], "y": Zs[mask, 1]}
        if dims == 3:
            d["z"] = Zs[mask, 2]
        return d

    traces = []
    if color is None:
        hover = "<b>%{text}</b><extra></extra>"
        if sym is None:
            traces.append(trace_cls(**_xyz(slice(None)), mode="markers", text=ids, hovertemplate=hover,
                                    marker={"size": size, "opacity": 0.85}, name="cells", showlegend=False))
        else:
            for s_i, s in enumerate(pd.unique(sym)):
                m = sym == s
                traces.append(trace_cls(**_xyz(m), mode="markers", text=ids[m], hovertemplate=hover, name=str(s),
                                        marker={"size": size, "opacity": 0.85, "symbol": _symbol(s_i, dims)}))
    else:
        values = pd.Series(np.asarray(color) if not isinstance(color, pd.Series) else color.to_numpy())
        if len(values) != n:
            raise ValueError(f"color has {len(values)} values for {n} cells")
        kind = color_kind(values) if color_type == "auto" else color_type
        values = values.iloc[idx].reset_index(drop=True)
        if kind == "categorical":
            labels = np.asarray(values.astype(str).where(values.notna(), "NA").to_numpy(), dtype=str)
            if category_order is not None:
                cats = [str(c) for c in category_order if str(c) in set(labels)]
                cats += [c for c in _natural_sort(pd.unique(labels)) if c not in set(cats)]
            else:
                cats = _natural_sort(pd.unique(labels))
            pal = _palette()
            hover = f"<b>%{{text}}</b><br>{_escape(color_name)}: %{{customdata}}<extra></extra>"
            sym_groups = [None] if sym is None else list(pd.unique(sym))
            for c_i, c in enumerate(cats):
                for s_i, s in enumerate(sym_groups):
                    m = labels == c if s is None else (labels == c) & (sym == s)
                    if not m.any():
                        continue
                    marker = {"size": size, "color": pal[c_i % len(pal)], "opacity": 0.85}
                    name = str(c)
                    if s is not None:
                        marker["symbol"] = _symbol(s_i, dims)
                        name = f"{c} · {s}"
                    traces.append(trace_cls(**_xyz(m), mode="markers", name=name, legendgroup=str(c),
                                            text=ids[m], customdata=labels[m], hovertemplate=hover, marker=marker))
        else:
            v = pd.to_numeric(values, errors="coerce").to_numpy(dtype=np.float64)
            hover = f"<b>%{{text}}</b><br>{_escape(color_name)}: %{{customdata}}<extra></extra>"
            custom = np.char.mod("%.4g", v)  # vectorised; "nan" where missing
            marker = {"size": size, "color": v, "colorscale": colorscale, "opacity": 0.85,
                      "colorbar": {"title": {"text": color_name}, "thickness": 12}, "showscale": True}
            if sym is not None:
                marker["symbol"] = [_symbol(list(pd.unique(sym)).index(s), dims) for s in sym]
            traces.append(trace_cls(**_xyz(slice(None)), mode="markers", name=color_name, text=ids,
                                    customdata=custom, hovertemplate=hover, marker=marker, showlegend=False))

    fig = go.Figure(data=traces)
    axis_titles = [f"{axis_prefix}_{i + 1}" for i in range(dims)]
    layout: dict[str, Any] = {
        "margin": {"l": 0, "r": 0, "t": 40 if title else 10, "b": 0},
        "legend": {"itemsizing": "constant", "title": {"text": color_name if color is not None else symbol_name}},
        "uirevision": "keep",  # keeps the camera when only colours change
    }
    if title:
        layout["title"] = {"text": title, "x": 0.02, "xanchor": "left"}
    if height:
        layout["height"] = height
    if dims == 3:
        layout["scene"] = {"xaxis": {"title": {"text": axis_titles[0]}}, "yaxis": {"title": {"text": axis_titles[1]}},
                           "zaxis": {"title": {"text": axis_titles[2]}}, "aspectmode": "cube"}
    else:
        layout["xaxis"] = {"title": {"text": axis_titles[0]}}
        layout["yaxis"] = {"title": {"text": axis_titles[1]}}
    fig.update_layout(**layout)
    if len(idx) < n:
        fig.add_annotation(text=f"showing {len(idx):,} of {n:,} cells", xref="paper", yref="paper", x=1, y=0,
                           xanchor="right", yanchor="bottom", showarrow=False, font={"size": 10})
    return fig


def _symbol(i: int, dims: int) -> str:
    sym3 = ["circle", "diamond", "square", "cross", "x", "circle-open", "diamond-open", "square-open"]
    sym2 = ["circle", "diamond", "square", "triangle-up", "cross", "x", "star", "hexagon"]
    s = sym3 if dims == 3 else sym2
    return s[i % len(s)]


def _escape(s: str) -> str:
    return str(s).replace("%", "%%").replace("<", "&lt;").replace(">", "&gt;").replace("{", "(").replace("}", ")")


def _plain(s: str) -> str:
    """Text shown as text by plotly (legend entries render a few HTML tags)."""
    return str(s).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def _natural_sort(values: Any) -> list[str]:
    import re

    def key(v: str) -> list[Any]:
        return [(0, int(t), "") if t.isdigit() else (1, 0, t.lower()) for t in re.split(r"(\d+)", str(v)) if t]

    return sorted((str(v) for v in values), key=key)


def loss_curves(history: Any, *, title: str | None = "Training loss", height: int | None = 320) -> go.Figure:
    """Loss curves of a training run: total, reconstruction and KL per epoch.

    Parameters
    ----------
    history
        A list of per-epoch records (dicts or objects with attributes
        ``epoch``, ``loss``, ``reconstruction``, ``kl`` and optionally
        ``val_loss`` and ``start``), or a DataFrame with those columns.
        When several passes were trained (warm starts, gene-refinement fits), each is its own
        line, labelled by the record's ``stage`` when it has one.
    title
        Figure title.
    height
        Figure height in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
        Two panels: total (and validation) loss with reconstruction on the
        left, KL divergence on the right (its scale differs).
    """
    import plotly.graph_objects as go

    df = _history_frame(history)
    colors = {"loss": "#1f77b4", "reconstruction": "#ff7f0e", "val_loss": "#2ca02c", "kl": "#d62728"}
    names = {"loss": "total", "reconstruction": "reconstruction", "val_loss": "validation", "kl": "KL"}
    starts = sorted(df["start"].dropna().unique()) if "start" in df and df["start"].notna().any() else [None]
    traces: list[dict[str, Any]] = []
    for s in starts:
        part = df if s is None else df[df["start"] == s]
        stage = (str(part["stage"].iloc[0]) if "stage" in part and len(part) and isinstance(part["stage"].iloc[0], str)
                 else "")
        suffix = "" if s is None or len(starts) == 1 else f" ({stage or f'start {int(s) + 1}'})"
        for col, panel in (("loss", 1), ("reconstruction", 1), ("val_loss", 1), ("kl", 2)):
            if col not in part or not part[col].notna().any():
                continue
            axes = {"xaxis": "x", "yaxis": "y"} if panel == 1 else {"xaxis": "x2", "yaxis": "y2"}
            traces.append({"type": "scatter", "x": part["epoch"].to_numpy(), "y": part[col].to_numpy(),
                           "mode": "lines+markers", "marker": {"size": 4}, "name": names[col] + suffix,
                           "legendgroup": col, **axes,
                           "line": {"color": colors[col], "dash": "dot" if col == "val_loss" else "solid"}})
    panel_title = {"xref": "paper", "yref": "paper", "y": 1.0, "yanchor": "bottom", "showarrow": False,
                   "font": {"size": 14}}
    layout: dict[str, Any] = {
        "xaxis": {"domain": [0.0, 0.44], "anchor": "y", "title": {"text": "epoch"}},
        "yaxis": {"domain": [0.0, 1.0], "anchor": "x"},
        "xaxis2": {"domain": [0.56, 1.0], "anchor": "y2", "title": {"text": "epoch"}},
        "yaxis2": {"domain": [0.0, 1.0], "anchor": "x2"},
        "annotations": [{**panel_title, "text": "Total & reconstruction", "x": 0.22, "xanchor": "center"},
                        {**panel_title, "text": "KL divergence", "x": 0.78, "xanchor": "center"}],
        "margin": {"l": 10, "r": 10, "t": 60 if title else 30, "b": 10},
        "legend": {"orientation": "h", "y": -0.25}, "uirevision": "keep"}
    if title:
        layout["title"] = {"text": title, "x": 0.02, "xanchor": "left"}
    if height:
        layout["height"] = height
    # Built from plain dicts without plotly's validators: the Train page redraws this while a training runs,
    # and validating every point held the GIL ~150 ms per redraw (12 ms this way), stalling the training thread.
    return go.Figure(data=traces, layout=layout, _validate=False)


def _history_frame(history: Any) -> Any:
    import dataclasses

    import pandas as pd

    if isinstance(history, pd.DataFrame):
        df = history.copy()
    else:
        rows = []
        for r in history or []:
            if isinstance(r, Mapping):
                rows.append(dict(r))
            elif dataclasses.is_dataclass(r):
                rows.append(dataclasses.asdict(r))
            else:
                rows.append({k: getattr(r, k) for k in ("epoch", "loss", "reconstruction", "kl", "val_loss", "start",
                                                        "stage")
                             if hasattr(r, k)})
        df = pd.DataFrame(rows)
    if "epoch" not in df:
        df["epoch"] = np.arange(1, len(df) + 1)
    for col in ("loss", "reconstruction", "kl", "val_loss", "start"):
        if col in df:
            df[col] = pd.to_numeric(df[col], errors="coerce")
    return df


def bic_curve(
    ks: Sequence[int],
    bic: Sequence[float],
    *,
    chosen_k: int | None = None,
    best_k: int | None = None,
    skipped: Sequence[int] = (),
    title: str | None = "GMM model selection (BIC, lower is better)",
    height: int | None = 300,
) -> go.Figure:
    """BIC of Gaussian mixtures against the number of components.

    Parameters
    ----------
    ks
        Numbers of components tried.
    bic
        BIC per ``k`` (``nan`` where the fit was skipped).
    chosen_k
        The ``k`` in use (e.g. a user override), drawn as a solid line.
    best_k
        The ``k`` with the lowest BIC, drawn as a dashed line.
    skipped
        ``k`` values that could not be fitted; listed in a note.
    title
        Figure title.
    height
        Figure height in pixels.
    """
    import plotly.graph_objects as go

    ks = np.asarray(list(ks))
    b = np.asarray(list(bic), dtype=np.float64)
    fig = go.Figure(go.Scatter(x=ks, y=b, mode="lines+markers", name="BIC",
                               hovertemplate="k=%{x}<br>BIC=%{y:.1f}<extra></extra>"))
    if best_k is not None:
        fig.add_vline(x=best_k, line_dash="dash", line_color="grey",
                      annotation_text=f"lowest BIC: k={best_k}", annotation_position="top left")
    if chosen_k is not None and chosen_k != best_k:
        fig.add_vline(x=chosen_k, line_color="#d62728", annotation_text=f"in use: k={chosen_k}",
                      annotation_position="top right")
    if len(skipped):
        fig.add_annotation(text="skipped k: " + ", ".join(str(int(k)) for k in skipped), xref="paper",
                           yref="paper", x=1, y=1, xanchor="right", showarrow=False, font={"size": 10})
    x_max = int(ks.max()) if ks.size else 1
    layout: dict[str, Any] = {"xaxis": {"title": {"text": "number of clusters k"}, "dtick": 1,
                                        "range": [0.5, x_max + 0.5]},
                              "yaxis": {"title": {"text": "BIC"}}, "margin": {"l": 10, "r": 10, "t": 50, "b": 10},
                              "showlegend": False}
    if title:
        layout["title"] = {"text": title, "x": 0.02, "xanchor": "left"}
    if height:
        layout["height"] = height
    fig.update_layout(**layout)
    return fig


def histogram(
    values: Any,
    *,
    title: str | None = None,
    x_label: str = "value",
    y_label: str = "count",
    nbins: int = 50,
    log_x: bool = False,
    height: int | None = 280,
    name: str | None = None,
) -> go.Figure:
    """Histogram of one numeric vector (QC plots).

    Parameters
    ----------
    values
        Numbers; non-finite values are dropped.
    title, x_label, y_label
        Labels.
    nbins
        Number of bins.
    log_x
        Histogram of ``log10(values)`` (non-positive values dropped), with the
        axis labelled accordingly.
    height
        Figure height in pixels.
    name
        Trace name.
    """
    import plotly.graph_objects as go

    v = np.asarray(values, dtype=np.float64).ravel()
    v = v[np.isfinite(v)]
    if log_x:
        v = np.log10(v[v > 0])
        x_label = f"log10 {x_label}"
    fig = go.Figure(go.Histogram(x=v, nbinsx=nbins, name=name or x_label, marker={"line": {"width": 0}}))
    layout: dict[str, Any] = {"xaxis": {"title": {"text": x_label}}, "yaxis": {"title": {"text": y_label}},
                              "bargap": 0.02, "margin": {"l": 10, "r": 10, "t": 40 if title else 10, "b": 10},
                              "showlegend": False}
    if title:
        layout["title"] = {"text": title, "x": 0.02, "xanchor": "left"}
    if height:
        layout["height"] = height
    fig.update_layout(**layout)
    return fig


def library_size_hist(library_sizes: Any, *, log_x: bool = True, **kwargs: Any) -> go.Figure:
    """QC histogram of the library size (sum of values) per cell."""
    kwargs.setdefault("title", "Library size per cell")
    return histogram(library_sizes, x_label="library size", y_label="cells", log_x=log_x, **kwargs)


def dropout_hist(dropout: Any, **kwargs: Any) -> go.Figure:
    """QC histogram of the per-gene dropout fraction (fraction of cells with a zero)."""
    kwargs.setdefault("title", "Dropout fraction per gene")
    kwargs.setdefault("nbins", 40)
    return histogram(dropout, x_label="fraction of cells with zero", y_label="genes", **kwargs)


def figure_html(fig: go.Figure) -> str:
    """A standalone interactive HTML page for ``fig``.

    plotly.js is embedded (about 4.5 MB), so the file opens offline — lab
    deployments and their users may have no internet access.
    """
    return fig.to_html(include_plotlyjs=True, full_html=True, config={"displaylogo": False})


# ----------------------------------------------------------------------------- static export
#: Publication size: 700 x 560 CSS pixels (1/96 in) = 185 x 148 mm, a double-column figure; ``scale``
#: multiplies the pixels of a PNG (300/96 gives 300 dpi at that size). SVG is sized in the same units.
PUBLICATION_SIZE: dict[str, float] = {"width": 700, "height": 560, "scale": 300 / 96}
STATIC_FORMATS = ("svg", "png")
#: Trace types the matplotlib engine draws (everything the app's figures use except subplot grids of
#: other types is covered; anything else goes to kaleido).
_MPL_TRACES = {"scatter", "scattergl", "scatter3d", "heatmap", "histogram", "bar"}
_WEBGL_TRACES = {"scattergl", "scatter3d"}
_KALEIDO_LOCK = threading.Lock()
_BROWSER_NAMES = ("chromium", "chromium-browser", "google-chrome", "google-chrome-stable", "chrome")


class FigureExportError(RuntimeError):
    """A figure could not be exported as a static image (the message says why and what to do)."""


def figure_filename(name: str, settings: Mapping[str, Any] | None = None, fmt: str = "svg", *,
                    max_length: int = 150) -> str:
    """A file name carrying the figure's settings: ``dhaka-latent_k-4_seed-0_latent_dim-3.svg``.

    Parameters
    ----------
    name
        What the figure shows.
    settings
        ``{name: value}`` of the settings that made it, in order (``None`` values are left out).
    fmt
        Extension (``"svg"``, ``"png"``, ``"html"``).
    max_length
        Longest stem; further settings are dropped (all of them are in the file's metadata).
    """
    import re

    def slug(v: Any) -> str:
        return re.sub(r"[^A-Za-z0-9_.+-]+", "-", _fmt_value(v)).strip("-._") or "x"

    stem = slug(name)
    for key, value in (settings or {}).items():
        if value is None:
            continue
        part = f"_{slug(key)}-{slug(value)}"
        if len(stem) + len(part) > max_length:
            break
        stem += part
    return f"{stem}.{fmt.lstrip('.').lower()}"


def figure_metadata(name: str, settings: Mapping[str, Any] | None = None) -> dict[str, str]:
    """Metadata written into exported figures: ``Title``, ``Description`` (settings as JSON), ``Software``."""
    import json

    from dhaka import __version__

    return {"Title": str(name), "Description": json.dumps(dict(settings or {}), default=str, sort_keys=False),
            "Software": f"Dhaka Explorer {__version__}"}


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido would use: ``$BROWSER_PATH``, else the first of chromium/chrome on PATH."""
    import os
    import shutil

    env = os.environ.get("BROWSER_PATH")
    if env:
        return env if os.access(env, os.X_OK) else None
    for exe in _BROWSER_NAMES:
        path = shutil.which(exe)
        if path:
            return path
    return None


def _trace_types(fig: go.Figure) -> set[str]:
    return {str(getattr(t, "type", None) or "scatter") for t in fig.data}


def static_engine(fig: go.Figure, engine: Literal["auto", "matplotlib", "kaleido"] = "auto") -> str:
    """The engine :func:`figure_bytes` will use for ``fig``, or a :class:`FigureExportError` saying why none can.

    ``"auto"`` takes matplotlib for figures with WebGL traces (3-D and large 2-D point clouds: kaleido
    would embed them as a bitmap even in an SVG; matplotlib draws true vectors) and when no browser is
    found; kaleido (plotly's own renderer, through the system Chromium) for the rest.
    """
    types = _trace_types(fig)
    mpl_ok = types <= _MPL_TRACES
    have_browser = _kaleido_importable() and browser_path() is not None
    if engine == "matplotlib" or (engine == "auto" and mpl_ok and (types & _WEBGL_TRACES or not have_browser)):
        if not mpl_ok:
            raise FigureExportError(f"the matplotlib engine cannot draw {', '.join(sorted(types - _MPL_TRACES))} "
                                    "traces; use engine='kaleido' (needs Chrome or Chromium)")
        if not _module_available("matplotlib"):
            raise FigureExportError("static export needs matplotlib: pip install matplotlib")
        return "matplotlib"
    if engine not in ("auto", "kaleido"):
        raise ValueError(f"engine must be 'auto', 'matplotlib' or 'kaleido', got {engine!r}")
    if not _kaleido_importable():
        raise FigureExportError("this figure needs kaleido for SVG/PNG export, which is not installed "
                                "(pip install kaleido); the interactive HTML download works without it")
    if browser_path() is None:
        raise FigureExportError("this figure's SVG/PNG export needs Chrome or Chromium (used by kaleido), and none "
                                "was found: install chromium (apt-get install chromium) or set BROWSER_PATH; "
                                "the interactive HTML download works without it")
    return "kaleido"


def _module_available(name: str) -> bool:
    import importlib.util

    return importlib.util.find_spec(name) is not None


def _kaleido_importable() -> bool:
    return _module_available("kaleido")


def figure_bytes(
    fig: go.Figure,
    fmt: Literal["svg", "png", "html"],
    *,
    width: float | None = None,
    height: float | None = None,
    scale: float | None = None,
    engine: Literal["auto", "matplotlib", "kaleido"] = "auto",
    metadata: Mapping[str, str] | None = None,
) -> bytes:
    """The figure as an SVG, PNG or standalone HTML file, at publication size, with metadata.

    Parameters
    ----------
    fig
        A Plotly figure (any of this package's builders).
    fmt
        ``"svg"`` (vector), ``"png"`` or ``"html"`` (interactive, plotly.js embedded).
    width, height
        Size in CSS pixels (1/96 inch); default :data:`PUBLICATION_SIZE` (height: the figure's own
        aspect when it sets one).
    scale
        PNG pixels per CSS pixel (default 300/96: 300 dpi).
    engine
        See :func:`static_engine`. Works offline: matplotlib needs nothing else; kaleido uses the
        system's Chrome/Chromium, never a downloaded one.
    metadata
        ``{"Title", "Description", ...}`` (e.g. :func:`figure_metadata`) stored in the file: SVG
        ``<title>``/``<desc>``/``<metadata>``, PNG text chunks, HTML ``<meta>``.

    Raises
    ------
    FigureExportError
        With a message naming what is missing (no browser for kaleido, an unsupported trace).
    """
    meta = dict(metadata or {})
    if fmt == "html":
        return _html_with_meta(figure_html(fig), meta).encode("utf-8")
    if fmt not in STATIC_FORMATS:
        raise ValueError(f"fmt must be 'svg', 'png' or 'html', got {fmt!r}")
    w = float(width or PUBLICATION_SIZE["width"])
    fig_h, fig_w = getattr(fig.layout, "height", None), getattr(fig.layout, "width", None)
    h = float(height or (w * fig_h / fig_w if fig_h and fig_w else PUBLICATION_SIZE["height"]))
    s = float(scale or PUBLICATION_SIZE["scale"])
    if min(w, h, s) <= 0:
        raise ValueError(f"width, height and scale must be positive (got {w}, {h}, {s})")
    used = static_engine(fig, engine)
    try:
        data = _mpl_bytes(fig, fmt, w, h, s) if used == "matplotlib" else _kaleido_bytes(fig, fmt, w, h, s)
    except FigureExportError:
        raise
    except Exception as exc:  # the engines' own failures (browser crash, timeout) as one clear message
        raise FigureExportError(f"{fmt.upper()} export with {used} failed: {type(exc).__name__}: {exc}") from exc
    return _svg_with_meta(data, meta) if fmt == "svg" else _png_with_meta(data, meta)


# -- metadata
def _xml_escape(s: str) -> str:
    from xml.sax.saxutils import escape

    return escape(str(s), {'"': "&quot;"})


def _svg_with_meta(data: bytes, meta: Mapping[str, str]) -> bytes:
    if not meta:
        return data
    text = data.decode("utf-8")
    start = text.find("<svg")
    end = text.find(">", start)
    if start < 0 or end < 0:
        raise FigureExportError("the exporter returned something that is not an SVG")
    items = "".join(f'<dhaka:entry key="{_xml_escape(k)}">{_xml_escape(v)}</dhaka:entry>' for k, v in meta.items())
    block = (f"<title>{_xml_escape(meta.get('Title', ''))}</title><desc>{_xml_escape(meta.get('Description', ''))}"
             f'</desc><metadata><dhaka:settings xmlns:dhaka="https://github.com/dhaka-explorer">{items}'
             "</dhaka:settings></metadata>")
    return (text[:end + 1] + block + text[end + 1:]).encode("utf-8")


def _png_with_meta(data: bytes, meta: Mapping[str, str]) -> bytes:
    import struct
    import zlib

    if data[:8] != b"\x89PNG\r\n\x1a\n":
        raise FigureExportError("the exporter returned something that is not a PNG")
    chunks = b""
    for key, value in meta.items():
        body = key.encode("latin-1", "replace")[:79] + b"\x00\x00\x00\x00\x00" + str(value).encode("utf-8")
        chunks += struct.pack(">I", len(body)) + b"iTXt" + body + struct.pack(">I", zlib.crc32(b"iTXt" + body))
    ihdr_end = 8 + 4 + 4 + 13 + 4  # signature, then IHDR (length, type, 13 bytes, CRC)
    return data[:ihdr_end] + chunks + data[ihdr_end:]


def _html_with_meta(html: str, meta: Mapping[str, str]) -> str:
    if not meta:
        return html
    tags = "".join(f'<meta name="dhaka:{_xml_escape(k.lower())}" content="{_xml_escape(v)}">' for k, v in meta.items())
    title = f"<title>{_xml_escape(meta.get('Title', ''))}</title>" if "Title" in meta else ""
    return html.replace("<head>", "<head>" + title + tags, 1)


# -- kaleido
def _kaleido_bytes(fig: go.Figure, fmt: str, width: float, height: float, scale: float) -> bytes:
    import kaleido

    opts = {"format": fmt, "width": int(round(width)), "height": int(round(height)), "scale": scale}
    with _KALEIDO_LOCK:  # one browser at a time: each export starts a Chromium (~0.3 GB, seconds)
        return kaleido.calc_fig_sync(fig, opts=opts, kopts={"path": browser_path(), "mathjax": False,
                                                            "timeout": 120})


# -- matplotlib (true vectors for 3-D and WebGL point clouds; no browser)
_MPL_MARKERS = {"circle": "o", "diamond": "D", "square": "s", "cross": "P", "x": "X", "triangle-up": "^",
                "triangle-down": "v", "star": "*", "hexagon": "h"}
_MPL_DASH = {"solid": "-", "dot": ":", "dash": "--", "longdash": "--", "dashdot": "-.", "longdashdot": "-."}


def _plain_text(text: Any) -> str:
    import re

    s = re.sub(r"<br\s*/?>", "\n", str(text or ""))
    return re.sub(r"<[^>]+>", "", s)


def _mpl_color(c: Any) -> Any:
    """A plotly colour string as something matplotlib takes."""
    import re

    if c is None:
        return None
    if isinstance(c, str):
        m = re.fullmatch(r"\s*rgba?\(([^)]*)\)\s*", c)
        if m:
            parts = [float(p) for p in m.group(1).split(",")]
            rgb = [p / 255.0 for p in parts[:3]]
            return tuple(rgb + ([parts[3]] if len(parts) > 3 else []))
        return c
    return c


def _mpl_cmap(colorscale: Any) -> Any:
    from matplotlib.colors import LinearSegmentedColormap
    from plotly.colors import get_colorscale

    scale = get_colorscale(colorscale) if isinstance(colorscale, str) else [list(p) for p in (colorscale or [])]
    if not scale:
        scale = get_colorscale("Viridis")
    stops = [(float(p), _mpl_color(c)) for p, c in scale]
    stops = [(p, c if not isinstance(c, tuple) else c[:3]) for p, c in stops]
    return LinearSegmentedColormap.from_list("plotly", stops)


def _axis_key(ref: str, letter: str) -> str:
    """``"x2"`` -> ``"xaxis2"``; ``"x"`` -> ``"xaxis"``."""
    return f"{letter}axis{ref[1:]}"


def _layout_get(layout: Mapping[str, Any], key: str) -> dict[str, Any]:
    return dict(layout.get(key) or {})


def _mpl_bytes(fig: go.Figure, fmt: str, width: float, height: float, scale: float) -> bytes:
    import io

    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    layout = fig.layout.to_plotly_json()  # to_dict() would base64-encode the arrays; these keep numpy
    traces = [t.to_plotly_json() for t in fig.data]
    mfig = Figure(figsize=(width / 96.0, height / 96.0), dpi=96.0 * scale)
    FigureCanvasAgg(mfig)
    legend_items: list[tuple[Any, str]] = []
    has_legend = layout.get("showlegend", True) is not False and any(
        t.get("showlegend", True) is not False and t.get("name") and t.get("type") in
        {"scatter", "scattergl", "scatter3d", "bar"} for t in traces)
    has_scale = any((t.get("type") == "heatmap" and t.get("showscale", True) is not False)
                    or (t.get("marker") or {}).get("showscale") for t in traces)
    right = (0.70 if has_scale else 0.78) if has_legend else 0.88 if has_scale else 0.97
    box = (0.10, 0.12, right, 0.88 if layout.get("title") else 0.95)  # left, bottom, right, top
    axes: dict[str, Any] = {}

    def panel(t: Mapping[str, Any]) -> Any:
        if t.get("type") == "scatter3d":
            key = t.get("scene") or "scene"
            if key not in axes:
                dom = _layout_get(layout, key).get("domain") or {}
                xd, yd = dom.get("x") or [0, 1], dom.get("y") or [0, 1]
                axes[key] = mfig.add_axes(_rect(box, xd, yd), projection="3d")
            return axes[key]
        key = (t.get("xaxis") or "x", t.get("yaxis") or "y")
        if key not in axes:
            xd = _layout_get(layout, _axis_key(key[0], "x")).get("domain") or [0, 1]
            yd = _layout_get(layout, _axis_key(key[1], "y")).get("domain") or [0, 1]
            axes[key] = mfig.add_axes(_rect(box, xd, yd))
        return axes[key]

    colorway = _colorway(fig)
    bars = [i for i, t in enumerate(traces) if t.get("type") == "bar"]
    for i, t in enumerate(traces):
        ax = panel(t)
        ctx = {"color": colorway[i % len(colorway)],
               "bar": (bars.index(i), len(bars)) if i in bars and layout.get("barmode", "group") == "group"
               else (0, 1)}
        handle = _mpl_trace(mfig, ax, t, layout, ctx)
        if handle is not None and t.get("showlegend", True) is not False and t.get("name"):
            legend_items.append((handle, _plain_text(t["name"])))
    for key, ax in axes.items():
        _mpl_axes_style(ax, key, layout)
    _mpl_shapes_and_annotations(mfig, axes, layout, box)
    title = _plain_text((_layout_get(layout, "title") or {}).get("text"))
    if title:
        mfig.text(box[0], 0.985, title, ha="left", va="top", fontsize=12)
    if has_legend and legend_items:
        seen: dict[str, Any] = {}
        for handle, label in legend_items:
            seen.setdefault(label, handle)
        leg_title = _plain_text(((_layout_get(layout, "legend").get("title") or {}).get("text")))
        mfig.legend(list(seen.values()), list(seen.keys()), loc="center left",
                    bbox_to_anchor=(box[2] + (0.09 if has_scale else 0.01), 0.5),
                    frameon=False, fontsize=8, title=leg_title or None, markerscale=1.5)
    buf = io.BytesIO()
    mfig.savefig(buf, format=fmt, dpi=96.0 * scale,
                 metadata={"Software": None} if fmt == "png" else None)  # ours goes in by _png_with_meta
    return buf.getvalue()


def _colorway(fig: go.Figure) -> list[str]:
    """The colours plotly gives traces without their own (the template's colorway)."""
    way = getattr(getattr(getattr(fig.layout, "template", None), "layout", None), "colorway", None)
    if not way:
        import plotly.express as px

        way = px.colors.qualitative.Plotly
    return [str(c) for c in way]


def _rect(box: tuple[float, float, float, float], xd: Sequence[float], yd: Sequence[float]) -> list[float]:
    left, bottom, right, top = box
    w, h = right - left, top - bottom
    gap = 0.06 if (xd[0] > 0 or xd[1] < 1) else 0.0  # room for tick labels between side-by-side panels
    x0 = left + w * float(xd[0]) + (gap if xd[0] > 0 else 0)
    x1 = left + w * float(xd[1])
    return [x0, bottom + h * float(yd[0]), x1 - x0, h * (float(yd[1]) - float(yd[0]))]


def _marker_size(size: Any) -> Any:
    """Plotly marker diameter (px) as a matplotlib scatter area (pt^2)."""
    arr = np.asarray(6.0 if size is None else size, dtype=np.float64)
    return (arr * 0.75) ** 2


def _mpl_trace(mfig: Any, ax: Any, t: Mapping[str, Any], layout: Mapping[str, Any], ctx: Mapping[str, Any]) -> Any:
    kind = t.get("type") or "scatter"
    if kind in ("scatter", "scattergl", "scatter3d"):
        return _mpl_scatter(mfig, ax, t, default_color=ctx["color"])
    if kind == "heatmap":
        z = np.asarray(t.get("z"), dtype=np.float64)
        cmap = _mpl_cmap(t.get("colorscale"))
        zmin, zmax = t.get("zmin"), t.get("zmax")
        if t.get("zmid") is not None and zmin is None and zmax is None and np.isfinite(z).any():
            half = float(np.nanmax(np.abs(z - t["zmid"])))
            zmin, zmax = t["zmid"] - half, t["zmid"] + half
        x = t.get("x")
        numeric_x = x is not None and np.asarray(x).dtype.kind in "iuf"
        extent = None
        if numeric_x and len(x) == z.shape[1] and len(x) > 1:
            xs = np.asarray(x, dtype=float)
            extent = [xs[0] - 0.5, xs[-1] + 0.5, -0.5, z.shape[0] - 0.5]
        im = ax.imshow(z, aspect="auto", origin="lower", cmap=cmap, vmin=zmin, vmax=zmax, interpolation="nearest",
                       extent=extent)
        if x is not None and not numeric_x:
            ax.set_xticks(range(len(x)), [str(v) for v in x])
        if t.get("showscale", True) is not False:
            cb = mfig.colorbar(im, ax=ax, fraction=0.04, pad=0.02)
            cb.set_label(_plain_text(((t.get("colorbar") or {}).get("title") or {}).get("text")
                                     if isinstance((t.get("colorbar") or {}).get("title"), dict)
                                     else (t.get("colorbar") or {}).get("title")))
        return None
    if kind == "histogram":
        x = np.asarray(t.get("x"), dtype=np.float64)
        x = x[np.isfinite(x)]
        bins = int(t.get("nbinsx") or 0) or "auto"
        color = _mpl_color((t.get("marker") or {}).get("color")) or _mpl_color(ctx["color"])
        _, _, patches = ax.hist(x, bins=bins, color=color, rwidth=1 - float(layout.get("bargap") or 0))
        return patches[0] if len(patches) else None
    if kind == "bar":
        x, y = t.get("x"), t.get("y")
        color = (t.get("marker") or {}).get("color") or ctx["color"]
        color = [_mpl_color(c) for c in color] if isinstance(color, (list, tuple, np.ndarray)) else _mpl_color(color)
        slot, n_slots = ctx["bar"]
        width = 0.8 / n_slots
        horizontal = t.get("orientation") == "h"
        cats = [str(v) for v in (y if horizontal else x)]
        vals = np.asarray(x if horizontal else y, dtype=float)
        pos = np.arange(len(cats)) - 0.4 + width * (slot + 0.5)
        draw = ax.barh if horizontal else ax.bar
        handle = draw(pos, vals, width, color=color, label=t.get("name"))
        (ax.set_yticks if horizontal else ax.set_xticks)(np.arange(len(cats)), cats)
        return handle
    return None


def _numeric(values: Any) -> np.ndarray:
    """Coordinates as floats (``None`` -> NaN, as plotly treats gaps); category labels stay as they are."""
    try:
        return np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError):
        return np.asarray(values)


def _mpl_scatter(mfig: Any, ax: Any, t: Mapping[str, Any], *, default_color: str) -> Any:
    mode = str(t.get("mode") or ("lines" if t.get("type") == "scatter" else "markers"))
    y = _numeric(t.get("y"))
    x = _numeric(t.get("x")) if t.get("x") is not None else np.arange(len(y))
    xyz = [x, y] + ([_numeric(t.get("z"))] if t.get("type") == "scatter3d" else [])
    marker = dict(t.get("marker") or {})
    line = dict(t.get("line") or {})
    if "text" in mode and t.get("text") is not None and t.get("type") != "scatter3d":
        texts = np.broadcast_to(np.asarray(t["text"], dtype=object), x.shape)
        below = str(t.get("textposition") or "").startswith("bottom")
        for xi, yi, s in zip(x, y, texts):
            ax.annotate(_plain_text(s), (xi, yi), xytext=(0, -4 if below else 4), textcoords="offset points",
                        ha="center", va="top" if below else "bottom", fontsize=7)
    if "lines" in mode:
        mc = marker.get("color")
        color = _mpl_color(line.get("color") or (mc if isinstance(mc, str) else None) or default_color)
        (handle,) = ax.plot(*xyz, color=color, linestyle=_MPL_DASH.get(str(line.get("dash") or "solid"), "-"),
                            linewidth=float(line.get("width") or 2) * 0.75,
                            marker="o" if "markers" in mode else None,
                            markersize=float(marker.get("size") or 6) * 0.75 if "markers" in mode else None)
        return handle
    if "markers" not in mode:
        return None
    sym = str(marker.get("symbol") or "circle") if not isinstance(marker.get("symbol"), (list, np.ndarray)) \
        else "circle"
    hollow = sym.endswith("-open")
    m = _MPL_MARKERS.get(sym.replace("-open", ""), "o")
    color = marker.get("color")
    kw: dict[str, Any] = {"s": _marker_size(marker.get("size")), "marker": m, "alpha": marker.get("opacity"),
                          "linewidths": 0.8 if hollow else 0.0}
    colorbar = None
    if isinstance(color, (list, tuple, np.ndarray)) and np.asarray(color).dtype.kind in "iuf":
        kw.update(c=np.asarray(color, dtype=np.float64), cmap=_mpl_cmap(marker.get("colorscale")),
                  vmin=marker.get("cmin"), vmax=marker.get("cmax"), plotnonfinite=True)
        colorbar = marker.get("colorbar") if marker.get("showscale", False) else None
    else:
        c = _mpl_color(color) if not isinstance(color, (list, tuple, np.ndarray)) else [_mpl_color(v) for v in color]
        c = c if c is not None else _mpl_color(default_color)
        if hollow:
            kw.update(facecolors="none", edgecolors=c)
        else:
            kw.update(color=c)
    if t.get("type") == "scatter3d":
        kw["depthshade"] = False
    handle = ax.scatter(*xyz, **kw)
    if colorbar is not None:
        title = colorbar.get("title")
        title = title.get("text") if isinstance(title, dict) else title
        cb = mfig.colorbar(handle, ax=ax, fraction=0.04, pad=0.08 if t.get("type") == "scatter3d" else 0.02)
        cb.set_label(_plain_text(title))
    return handle


def _mpl_axes_style(ax: Any, key: Any, layout: Mapping[str, Any]) -> None:
    import math

    def title_of(axis: Mapping[str, Any]) -> str:
        title = axis.get("title")
        return _plain_text(title.get("text") if isinstance(title, dict) else title)

    if isinstance(key, str):  # a 3-D scene
        scene = _layout_get(layout, key)
        for letter in "xyz":
            axis = dict(scene.get(f"{letter}axis") or {})
            getattr(ax, f"set_{letter}label")(title_of(axis), fontsize=9)
        ax.tick_params(labelsize=7)
        eye = dict((scene.get("camera") or {}).get("eye") or {"x": 1.25, "y": 1.25, "z": 1.25})
        ex, ey, ez = (float(eye.get(k, 1.25)) for k in "xyz")
        ax.view_init(elev=math.degrees(math.atan2(ez, math.hypot(ex, ey))), azim=math.degrees(math.atan2(ey, ex)))
        if scene.get("aspectmode") == "cube":
            ax.set_box_aspect((1, 1, 1))
        return
    for letter, ref in zip("xy", key):
        axis = _layout_get(layout, _axis_key(ref, letter))
        getattr(ax, f"set_{letter}label")(title_of(axis), fontsize=9)
        if axis.get("type") == "log":
            getattr(ax, f"set_{letter}scale")("log")
        rng = axis.get("range")
        if rng and len(rng) == 2 and None not in rng:
            lo, hi = (10 ** float(v) for v in rng) if axis.get("type") == "log" else (float(v) for v in rng)
            getattr(ax, f"set_{letter}lim")(lo, hi)
        if axis.get("autorange") == "reversed":
            getattr(ax, f"invert_{letter}axis")()
        if axis.get("tickmode") == "array" and axis.get("tickvals") is not None:
            texts = axis.get("ticktext") or [str(v) for v in axis["tickvals"]]
            getattr(ax, f"set_{letter}ticks")(list(axis["tickvals"]), [str(s) for s in texts])
        if axis.get("showticklabels") is False:
            ax.tick_params(**{f"label{'bottom' if letter == 'x' else 'left'}": False})
    ax.tick_params(labelsize=8)
    for side in ("top", "right"):
        ax.spines[side].set_visible(False)


def _mpl_shapes_and_annotations(mfig: Any, axes: Mapping[Any, Any], layout: Mapping[str, Any],
                                box: tuple[float, float, float, float]) -> None:
    def ax_for(xref: str, yref: str) -> Any:
        xr, yr = xref.split(" ")[0], yref.split(" ")[0]
        return axes.get((xr if xr.startswith("x") and xr != "paper" else "x",
                         yr if yr.startswith("y") and yr != "paper" else "y"))

    for shape in layout.get("shapes") or []:
        if shape.get("type") != "line":
            continue
        xref, yref = str(shape.get("xref") or "x"), str(shape.get("yref") or "y")
        ax = ax_for(xref, yref)
        if ax is None:
            continue
        line = dict(shape.get("line") or {})
        style = {"color": _mpl_color(line.get("color")) or "grey", "linewidth": float(line.get("width") or 2) * 0.75,
                 "linestyle": _MPL_DASH.get(str(line.get("dash") or "solid"), "-")}
        if shape.get("x0") == shape.get("x1") and not xref.startswith("paper") and "domain" in yref:
            ax.axvline(float(shape["x0"]), **style)
        elif shape.get("y0") == shape.get("y1") and not yref.startswith("paper") and "domain" in xref:
            ax.axhline(float(shape["y0"]), **style)
        elif not xref.startswith("paper") and not yref.startswith("paper"):
            ax.plot([shape.get("x0"), shape.get("x1")], [shape.get("y0"), shape.get("y1")], **style)
    left, bottom, right, top = box
    for ann in layout.get("annotations") or []:
        text = _plain_text(ann.get("text"))
        if not text:
            continue
        xref, yref = str(ann.get("xref") or "x"), str(ann.get("yref") or "y")
        x, y = float(ann.get("x") or 0), float(ann.get("y") or 0)
        ha = {"left": "left", "right": "right"}.get(str(ann.get("xanchor")), "center")
        va = {"top": "top", "bottom": "bottom"}.get(str(ann.get("yanchor")), "center")
        size = float((ann.get("font") or {}).get("size") or 10) * 0.8
        if xref == "paper" and yref == "paper":
            mfig.text(left + x * (right - left), bottom + y * (top - bottom), text, ha=ha, va=va, fontsize=size)
            continue
        ax = ax_for(xref, yref)
        if ax is None or getattr(ax, "name", "") == "3d":
            continue
        trans = ax.get_xaxis_transform() if "domain" in yref or yref == "paper" else ax.transData
        ax.text(x, y, text, ha=ha, va=va, fontsize=size, transform=trans)


def selection_scatter(
    coords: Any,
    *,
    groups: Any = None,
    group_colors: Mapping[str, str] | None = None,
    group_name: str = "group",
    cell_ids: Sequence[Any] | None = None,
    title: str | None = None,
    axis_titles: tuple[str, str] = ("dim_1", "dim_2"),
    point_size: float | None = None,
    max_points: int | None = None,
    seed: int = 0,
    height: int | None = 520,
) -> go.Figure:
    """A 2-D scatter for picking cells with a box or a lasso (WebGL, one trace).

    Every drawn point carries its cell's row position as ``customdata``, so a selection maps back to
    cells whatever subsample is drawn (Streamlit's ``on_select`` returns the points' ``customdata``).
    Colours come from ``groups`` (one label per cell, missing values grey) and are listed in a legend
    made of empty traces, which hold no points and so never enter a selection.

    Parameters
    ----------
    coords
        ``(n_cells, >= 2)``; the first two columns are drawn.
    groups
        One label per cell (``None`` / NaN: unlabelled, grey), or ``None`` for one colour.
    group_colors
        Colour of some labels (e.g. ``{"A": "#d62728"}``); the rest take the categorical palette.
    group_name
        Legend title.
    cell_ids
        Cell identifiers shown on hover (default: the row number).
    title
        Figure title.
    axis_titles
        Titles of the x and y axes.
    point_size
        Marker size; default from :func:`default_point_size`.
    max_points
        Draw a seeded subsample of at most this many cells (see :func:`display_indices`).
    seed
        Seed of the display subsample.
    height
        Figure height in pixels.

    Returns
    -------
    plotly.graph_objects.Figure
    """
    import pandas as pd
    import plotly.graph_objects as go

    Z = np.asarray(coords, dtype=np.float64)
    if Z.ndim != 2 or Z.shape[1] < 2:
        raise ValueError(f"coords must be an (n_cells, 2 or more) array, got shape {Z.shape}")
    n = Z.shape[0]
    idx = display_indices(n, max_points=max_points, seed=seed)
    ids = np.asarray(cell_ids if cell_ids is not None else np.arange(n)).astype(str)
    grey = "#bbbbbb"
    if groups is None:
        colours = np.full(len(idx), "#1f77b4", dtype=object)
        legend: list[tuple[str, str]] = []
    else:
        g = pd.Series(np.asarray(groups, dtype=object))
        if len(g) != n:
            raise ValueError(f"groups has {len(g)} values for {n} cells")
        labels = g.where(g.notna(), None).to_numpy()
        cats = _natural_sort({str(v) for v in labels if v is not None})
        pal = _palette()
        fixed = {str(k): v for k, v in (group_colors or {}).items()}
        colour_of = {c: fixed.get(c, pal[i % len(pal)]) for i, c in enumerate(cats)}
        colours = np.array([grey if v is None else colour_of[str(v)] for v in labels[idx]], dtype=object)
        legend = [(c, colour_of[c]) for c in cats]
    traces: list[dict[str, Any]] = [{
        "type": "scattergl", "x": Z[idx, 0], "y": Z[idx, 1], "mode": "markers", "customdata": idx,
        "text": ids[idx], "hovertemplate": "%{text}<extra></extra>", "showlegend": False, "name": "cells",
        "marker": {"color": colours, "size": point_size or default_point_size(len(idx), dims=2)}}]
    for name, colour in legend:
        traces.append({"type": "scattergl", "x": [None], "y": [None], "mode": "markers", "name": _plain(name),
                       "marker": {"color": colour, "size": 8}, "hoverinfo": "skip"})
    fig = go.Figure(data=traces)
    layout: dict[str, Any] = {"dragmode": "lasso", "template": "plotly_white", "showlegend": bool(legend),
                              "legend": {"itemsizing": "constant", "title": {"text": _plain(group_name)}},
                              "xaxis": {"title": {"text": axis_titles[0]}},
                              "yaxis": {"title": {"text": axis_titles[1]}},
                              "margin": {"l": 0, "r": 0, "t": 40 if title else 10, "b": 0}}
    if title:
        layout["title"] = {"text": title, "x": 0.02, "xanchor": "left"}
    if height:
        layout["height"] = height
    fig.update_layout(**layout)
    if len(idx) < n:
        fig.add_annotation(text=f"showing {len(idx):,} of {n:,} cells", xref="paper", yref="paper", x=1, y=0,
                           xanchor="right", yanchor="bottom", showarrow=False, font={"size": 10})
    return fig
