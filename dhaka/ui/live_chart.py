"""The loss curves drawn while a training runs: a small static SVG, not a Plotly figure.

Why: the Train page redraws the curves every few seconds while the training shares the CPU with the
browser. A Plotly redraw cost the browser about half a second of CPU each time, and with the page
open the default demo trained in 38.8 s against 35.5 s with no live redraws (``bench/app_live.py``,
2 cores). An SVG of a few polylines costs the browser next to nothing to draw and the server about a
millisecond to build. The interactive Plotly figure (hover, zoom, downloads) replaces it when the
training ends.

The progress line and bar are drawn the same way (:func:`progress_html`): Streamlit's own progress
bar cost the browser about 35 ms of CPU on every update (measured in headless Chromium: 0.93 s per 30 s
of polling every 2 s with ``st.progress``, 0.41 s with the same text as a caption), a fifth of what
the whole Train page cost the browser per poll.

Nothing here imports streamlit.
"""
from __future__ import annotations

import html
import math
from collections.abc import Mapping, Sequence
from typing import Any

__all__ = ["loss_svg", "progress_html"]

#: One colour per fit (gene-refinement fits, random starts), as in :func:`dhaka.plots.loss_curves`.
FIT_COLORS = ("#1f77b4", "#ff7f0e", "#2ca02c", "#d62728", "#9467bd", "#8c564b")


def _fmt(v: float) -> str:
    return f"{v:.4g}" if abs(v) < 1e5 else f"{v:.2e}"


def _panel(x0: float, y0: float, w: float, h: float, series: Sequence[tuple[list[float], list[float], str, str]],
           *, log: bool, title: str) -> list[str]:
    """One panel: ``series`` of (epochs, values, colour, dash); y on a log scale when ``log``."""
    f = (lambda v: math.log10(v)) if log else (lambda v: v)
    pts = [(e, f(v)) for xs, ys, _, _ in series for e, v in zip(xs, ys) if v == v and (v > 0 or not log)]
    out = [f'<text x="{x0 + w / 2:.0f}" y="{y0 - 6:.0f}" text-anchor="middle" font-size="13">{html.escape(title)}</text>',
           f'<rect x="{x0:.0f}" y="{y0:.0f}" width="{w:.0f}" height="{h:.0f}" fill="none" stroke="#bbb"/>']
    if not pts:
        return out
    xmin, xmax = min(p[0] for p in pts), max(p[0] for p in pts)
    ymin, ymax = min(p[1] for p in pts), max(p[1] for p in pts)
    xspan, yspan = (xmax - xmin) or 1.0, (ymax - ymin) or 1.0

    def sx(e: float) -> float:
        return x0 + (e - xmin) / xspan * w

    def sy(v: float) -> float:
        return y0 + h - (v - ymin) / yspan * h

    for xs, ys, color, dash in series:
        coords = " ".join(f"{sx(e):.1f},{sy(f(v)):.1f}" for e, v in zip(xs, ys) if v == v and (v > 0 or not log))
        if coords:
            extra = ' stroke-dasharray="4 3"' if dash else ""
            out.append(f'<polyline points="{coords}" fill="none" stroke="{color}" stroke-width="1.5"{extra}/>')
    back = (lambda v: 10 ** v) if log else (lambda v: v)
    out += [f'<text x="{x0 - 4:.0f}" y="{y0 + 10:.0f}" text-anchor="end" font-size="11">{_fmt(back(ymax))}</text>',
            f'<text x="{x0 - 4:.0f}" y="{y0 + h:.0f}" text-anchor="end" font-size="11">{_fmt(back(ymin))}</text>',
            f'<text x="{x0:.0f}" y="{y0 + h + 14:.0f}" font-size="11">{int(xmin)}</text>',
            f'<text x="{x0 + w:.0f}" y="{y0 + h + 14:.0f}" text-anchor="end" font-size="11">{int(xmax)}</text>',
            f'<text x="{x0 + w / 2:.0f}" y="{y0 + h + 14:.0f}" text-anchor="middle" font-size="11" fill="#666">'
            f'epoch{" · log scale" if log else ""}</text>']
    return out


def loss_svg(history: Sequence[Mapping[str, Any]], *, width: int = 760, height: int = 250,
             max_points: int = 300) -> str:
    """An SVG of the training loss (solid), validation loss (dashed) and KL divergence per epoch.

    ``history``: the per-epoch rows of a training (``epoch``, ``loss``, optionally ``val_loss``,
    ``kl``, ``start`` and ``stage``); each fit (``start``) is its own colour, labelled by its stage.
    A line of more than ``max_points`` epochs is drawn through every k-th of them and the last.
    Returns ``""`` when there is nothing to draw.
    """
    fits: dict[int, dict[str, Any]] = {}
    for row in history:
        fit = fits.setdefault(int(row.get("start") or 0), {"stage": row.get("stage") or "", "rows": []})
        fit["rows"].append(row)
    if not fits:
        return ""

    def col(rows: list[Mapping[str, Any]], key: str) -> tuple[list[float], list[float]]:
        pairs = [(float(r["epoch"]), float(r[key])) for r in rows if r.get(key) is not None and "epoch" in r]
        if len(pairs) > max_points:  # every k-th epoch and the last: the markup stays small on long trainings
            step = -(-len(pairs) // max_points)
            pairs = pairs[::step] + ([pairs[-1]] if (len(pairs) - 1) % step else [])
        return [p[0] for p in pairs], [p[1] for p in pairs]

    left, right, legend = [], [], []
    for i, (start, fit) in enumerate(sorted(fits.items())):
        color = FIT_COLORS[i % len(FIT_COLORS)]
        left.append((*col(fit["rows"], "loss"), color, ""))
        left.append((*col(fit["rows"], "val_loss"), color, "dash"))
        right.append((*col(fit["rows"], "kl"), color, ""))
        legend.append((color, str(fit["stage"]) or f"fit {start + 1}"))
    top, bottom, gap, margin = 44, 22, 70, 56
    pw = (width - 2 * margin - gap) / 2
    ph = height - top - bottom
    parts = [f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} {height}" width="100%" '
             f'style="max-width:{width}px;font-family:sans-serif" role="img" aria-label="Training loss curves">']
    parts += _panel(margin, top, pw, ph, left, log=True, title="Loss (solid: training, dashed: validation)")
    parts += _panel(margin + pw + gap, top, pw, ph, right, log=False, title="KL divergence")
    x = margin
    for color, label in legend:
        parts.append(f'<rect x="{x}" y="4" width="10" height="10" fill="{color}"/>'
                     f'<text x="{x + 14}" y="13" font-size="12">{html.escape(label)}</text>')
        x += 24 + 7 * len(label)
    parts.append("</svg>")
    return "".join(parts)


def progress_html(fraction: float, text: str, *, width: int = 760) -> str:
    """A progress line and a plain bar (no animation), as HTML for ``st.markdown(unsafe_allow_html=True)``.

    ``fraction`` is clipped to [0, 1]; ``text`` is escaped. The bar is an ARIA ``progressbar`` with
    the text as its label, so screen readers and browser tests find it as they would Streamlit's.
    """
    f = min(1.0, max(0.0, float(fraction))) if fraction == fraction else 0.0
    label = html.escape(str(text))
    return (f'<div role="progressbar" aria-valuemin="0" aria-valuemax="100" aria-valuenow="{100 * f:.0f}" '
            f'aria-label="{label}" style="max-width:{width}px">'
            f'<div style="font-size:0.9rem;margin-bottom:4px">{label}</div>'
            f'<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 {width} 8" width="100%" height="8" '
            f'preserveAspectRatio="none" aria-hidden="true">'
            f'<rect width="{width}" height="8" rx="4" fill="#e4ebf0"/>'
            f'<rect width="{width * f:.1f}" height="8" rx="4" fill="#1f6f8b"/></svg></div>')
