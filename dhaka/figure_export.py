"""Figures as files: SVG and PNG at publication size, or standalone interactive HTML, with the settings inside.

:func:`figure_bytes` draws a Plotly figure with one of two engines (:func:`static_engine`): kaleido,
Plotly's own renderer, through the system's Chrome/Chromium; or :mod:`dhaka.figure_mpl`, which draws
WebGL point clouds (3-D and large 2-D views) as true vectors (kaleido embeds them as a bitmap even in an
SVG) and needs no browser.  The file's metadata (SVG ``<title>``/``<desc>``/``<metadata>``, PNG text
chunks, HTML ``<meta>``) carries what :func:`figure_metadata` gives; :func:`figure_filename` names it.
"""
from __future__ import annotations

import importlib.util
import json
import os
import re
import shutil
import struct
import threading
import zlib
from collections.abc import Mapping
from typing import TYPE_CHECKING, Any, Literal
from xml.sax.saxutils import escape

from dhaka import __version__, figure_mpl
from dhaka.plots import _fmt_value, figure_html

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["FigureExportError", "PUBLICATION_SIZE", "STATIC_FORMATS", "browser_path", "figure_bytes",
           "figure_filename", "figure_metadata", "static_engine"]

#: Publication size: 700 x 560 CSS pixels (1/96 in) = 185 x 148 mm, a double-column figure; ``scale``
#: multiplies the pixels of a PNG (300/96 gives 300 dpi at that size). SVG is sized in the same units.
PUBLICATION_SIZE: dict[str, float] = {"width": 700, "height": 560, "scale": 300 / 96}
STATIC_FORMATS = ("svg", "png")
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
    return {"Title": str(name), "Description": json.dumps(dict(settings or {}), default=str, sort_keys=False),
            "Software": f"Dhaka Explorer {__version__}"}


def browser_path() -> str | None:
    """The Chrome/Chromium kaleido would use: ``$BROWSER_PATH``, else the first of chromium/chrome on PATH."""
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
    mpl_ok = types <= figure_mpl.TRACES
    have_browser = _kaleido_importable() and browser_path() is not None
    if engine == "matplotlib" or (engine == "auto" and mpl_ok and (types & _WEBGL_TRACES or not have_browser)):
        if not mpl_ok:
            missing = ", ".join(sorted(types - figure_mpl.TRACES))
            raise FigureExportError(f"the matplotlib engine cannot draw {missing} traces; use engine='kaleido' "
                                    "(needs Chrome or Chromium)")
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
        data = figure_mpl.render(fig, fmt, w, h, s) if used == "matplotlib" else _kaleido_bytes(fig, fmt, w, h, s)
    except FigureExportError:
        raise
    except Exception as exc:  # the engines' own failures (browser crash, timeout) as one clear message
        raise FigureExportError(f"{fmt.upper()} export with {used} failed: {type(exc).__name__}: {exc}") from exc
    return _svg_with_meta(data, meta) if fmt == "svg" else _png_with_meta(data, meta)


def _xml_escape(s: str) -> str:
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


def _kaleido_bytes(fig: go.Figure, fmt: str, width: float, height: float, scale: float) -> bytes:
    import kaleido

    opts = {"format": fmt, "width": int(round(width)), "height": int(round(height)), "scale": scale}
    with _KALEIDO_LOCK:  # one browser at a time: each export starts a Chromium (~0.3 GB, seconds)
        return kaleido.calc_fig_sync(fig, opts=opts, kopts={"path": browser_path(), "mathjax": False,
                                                            "timeout": 120})
