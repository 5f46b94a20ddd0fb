"""Plotly figure builders for Dhaka Explorer.

Every function here *returns* a :class:`plotly.graph_objects.Figure` and never
shows it, so the same figures serve the Streamlit app, notebooks and reports.
Point clouds use WebGL traces (``Scatter3d`` for 3-D, ``Scattergl`` for 2-D),
which stay responsive with tens of thousands of cells.

Plotly is imported inside the functions so that ``import dhaka.plots`` is
cheap.  Files of these figures (SVG, PNG, HTML with the settings inside) come
from :mod:`dhaka.figure_export`.
"""
from __future__ import annotations

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
