"""Plotly figures drawn by matplotlib: true vectors for 3-D and WebGL point clouds, and no browser needed.

:func:`render` reads a figure's traces and layout (the trace types in :data:`TRACES`, subplot domains,
axis titles, ranges and log scales, legends, colour bars, line shapes and annotations) and draws them
with matplotlib's Agg canvas.  :mod:`dhaka.figure_export` chooses between this renderer and kaleido.
"""
from __future__ import annotations

import io
import math
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:  # pragma: no cover
    import plotly.graph_objects as go

__all__ = ["TRACES", "render"]

#: Trace types this renderer draws (everything the app's figures use); anything else needs kaleido.
TRACES = frozenset({"scatter", "scattergl", "scatter3d", "heatmap", "histogram", "bar"})
_MPL_MARKERS = {"circle": "o", "diamond": "D", "square": "s", "cross": "P", "x": "X", "triangle-up": "^",
                "triangle-down": "v", "star": "*", "hexagon": "h"}
_MPL_DASH = {"solid": "-", "dot": ":", "dash": "--", "longdash": "--", "dashdot": "-.", "longdashdot": "-."}


def _plain_text(text: Any) -> str:
    s = re.sub(r"<br\s*/?>", "\n", str(text or ""))
    return re.sub(r"<[^>]+>", "", s)


def _mpl_color(c: Any) -> Any:
    """A plotly colour string as something matplotlib takes."""
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


def render(fig: go.Figure, fmt: str, width: float, height: float, scale: float) -> bytes:
    """``fig`` drawn by matplotlib as ``fmt`` (``"svg"`` or ``"png"``), ``width`` x ``height`` CSS pixels, PNG at
    ``scale`` pixels per CSS pixel; only the trace types in :data:`TRACES`."""
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
