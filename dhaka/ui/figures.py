"""Figures on pages: the chart plus its downloads (SVG, PNG at publication size, interactive HTML).

Pages call :func:`chart` where they called ``st.plotly_chart``::

    figures.chart(fig, "dhaka-latent", key="fig_dhaka")

The files are built only when a button is clicked (Streamlit runs the ``data``
callable then, in a worker thread), so drawing the page never waits for an export.
Their names and metadata carry the settings of the run in use (run id, dataset,
seed, k, the model's main settings); the full settings are in the SVG ``<desc>``,
the PNG text chunks and the HTML ``<meta>``.
"""
from __future__ import annotations

import contextlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from dhaka import figure_export
from dhaka.ui import state

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["chart", "figure_downloads", "figure_settings", "selected_points", "FILE_SETTINGS", "PLOTLY_CONFIG"]

#: Plotly config for every chart: PNG from the toolbar at twice the screen resolution, no logo.
PLOTLY_CONFIG = {"displaylogo": False, "toImageButtonOptions": {"format": "png", "scale": 2}}
#: Settings that go into file names (all settings go into the metadata).
FILE_SETTINGS = ("run", "dataset", "k", "seed", "latent_dim", "structure", "epochs")
_MIME = {"svg": "image/svg+xml", "png": "image/png", "html": "text/html"}
_LABEL = {"svg": "Figure as SVG", "png": "Figure as PNG", "html": "Figure as HTML"}


def figure_settings(extra: Mapping[str, Any] | None = None) -> dict[str, Any]:
    """The settings a figure of this session was made with: run, dataset, k, seed and the model's settings.

    ``extra`` (the page's own choices, e.g. ``{"metric": "ari"}``) comes first and wins.
    """
    out: dict[str, Any] = dict(extra or {})
    run = state.get_result_info().get("run_id")
    if run:
        out.setdefault("run", run)
    name = state.get_dataset_info().get("name")
    if name:
        out.setdefault("dataset", name)
    if state.get_cluster_k() is not None:
        out.setdefault("k", int(state.get_cluster_k()))
    get_params = getattr(state.get_estimator(), "get_params", None)
    params = get_params() if callable(get_params) else state.get_estimator_params()
    for key, value in params.items():
        out.setdefault(key, list(value) if isinstance(value, tuple) else value)
    return out


def _short(settings: Mapping[str, Any]) -> dict[str, Any]:
    return {k: settings[k] for k in FILE_SETTINGS if k in settings}


def figure_downloads(fig: go.Figure, name: str, settings: Mapping[str, Any] | None = None, *, key: str,
                     session: bool = True) -> None:
    """SVG, PNG and interactive HTML download buttons for ``fig``, built only when clicked.

    Parameters
    ----------
    fig
        The figure shown.
    name
        What it shows (start of the file name and its title).
    settings
        The page's own settings of the figure; the run's settings are added
        (:func:`figure_settings`).
    key
        Unique widget key prefix.
    session
        Add the settings of the session's result in use; ``False`` for a figure of another
        run (the Runs page), which passes that run's settings itself.
    """
    full = figure_settings(settings) if session else dict(settings or {})
    meta = figure_export.figure_metadata(name, full)
    try:
        engine = figure_export.static_engine(fig)
        problem = None
    except figure_export.FigureExportError as exc:
        engine, problem = None, str(exc)
    size = figure_export.PUBLICATION_SIZE
    static_help = (f"{int(size['width'])} x {int(size['height'])} px at {size['scale'] * 96:.0f} dpi "
                   f"(double-column figure); drawn by {engine}, with the settings in the file's metadata. "
                   "The default view: for the rotation on screen use the camera icon in the chart's toolbar."
                   if problem is None else problem)
    cols = st.columns(3, gap="small")
    for col, fmt in zip(cols, ("svg", "png", "html")):
        disabled = fmt != "html" and problem is not None
        col.download_button(
            _LABEL[fmt], data=_builder(fig, fmt, meta), file_name=figure_export.figure_filename(name, _short(full), fmt),
            mime=_MIME[fmt], key=f"{key}.{fmt}", on_click="ignore", icon=":material/download:", disabled=disabled,
            help=static_help if fmt != "html" else "A standalone interactive page (plotly.js embedded; opens offline).",
            width="stretch")


def _builder(fig: go.Figure, fmt: str, meta: dict[str, str]):
    """The deferred ``data`` callable of a download (runs on click in a worker thread: no ``st.*`` inside)."""
    def build() -> bytes:
        return figure_export.figure_bytes(fig, fmt, metadata=meta)  # type: ignore[arg-type]

    return build


def chart(fig: go.Figure, name: str, settings: Mapping[str, Any] | None = None, *, key: str,
          container: Any = None, session: bool = True, **kwargs: Any) -> Any:
    """``st.plotly_chart(fig)`` followed by its downloads; returns what ``st.plotly_chart`` returns.

    Parameters
    ----------
    fig
        The figure.
    name
        What it shows (file names and titles of the downloads).
    settings
        The page's own settings of the figure (see :func:`figure_downloads`).
    key
        The chart's widget key (the downloads use ``key + ".svg"`` and so on).
    container
        Where to draw (a column, ``st.sidebar``); default the current one.
    session
        See :func:`figure_downloads`.
    **kwargs
        Passed to ``st.plotly_chart`` (``on_select``, ``selection_mode``, ...).
    """
    kwargs.setdefault("config", PLOTLY_CONFIG)
    with container if container is not None else contextlib.nullcontext():
        event = st.plotly_chart(fig, key=key, **kwargs)
        figure_downloads(fig, name, settings, key=f"dl.{key}", session=session)
    return event


def selected_points(key: str) -> np.ndarray:
    """Cell positions of the box / lasso selection of the chart drawn with ``key`` (``on_select="rerun"``).

    The points' ``customdata`` is read (:func:`dhaka.plots.selection_scatter` puts each cell's row
    position there); the selection's ``point_indices`` are the fallback.
    """
    ev = st.session_state.get(key) or {}
    sel = (ev.get("selection") if isinstance(ev, dict) else getattr(ev, "selection", None)) or {}
    pts = sel.get("points") or []
    idx = [p["customdata"] for p in pts if isinstance(p, dict) and "customdata" in p]
    if not idx:
        idx = sel.get("point_indices") or []
    return np.unique(np.asarray(idx, dtype=int).ravel()) if len(idx) else np.array([], dtype=int)
