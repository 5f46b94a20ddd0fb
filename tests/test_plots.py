"""Tests for dhaka.plots and dhaka.figure_export: figures are built (never shown), WebGL traces, hover, colours,
subsampling; SVG / PNG / HTML files with their settings."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dhaka import figure_export, plots


@pytest.fixture
def coords():
    rng = np.random.default_rng(0)
    return rng.normal(size=(200, 3))


def test_scatter_3d_uses_webgl_scatter3d_and_hover_shows_id_and_value(coords):
    labels = np.repeat(["a", "b"], 100)
    ids = [f"cell{i}" for i in range(200)]
    fig = plots.scatter(coords, color=labels, color_name="group", cell_ids=ids)
    assert isinstance(fig, go.Figure)
    assert all(isinstance(t, go.Scatter3d) for t in fig.data)
    assert [t.name for t in fig.data] == ["a", "b"]
    assert sum(len(t.x) for t in fig.data) == 200
    t0 = fig.data[0]
    assert "group" in t0.hovertemplate and "%{text}" in t0.hovertemplate
    assert list(t0.text[:2]) == ["cell0", "cell1"]
    assert set(t0.customdata) == {"a"}


def test_scatter_2d_uses_scattergl(coords):
    fig = plots.scatter(coords[:, :2], color=np.arange(200) * 0.5, color_name="score")
    assert len(fig.data) == 1 and isinstance(fig.data[0], go.Scattergl)
    assert fig.data[0].marker.showscale is True  # continuous -> colour bar


def test_colour_kind_detection():
    assert plots.color_kind(np.array([0, 1, 2, 1])) == "categorical"
    assert plots.color_kind(np.linspace(0, 1, 50)) == "continuous"
    assert plots.color_kind(pd.Series(["x", "y"]).astype("category")) == "categorical"
    assert plots.color_kind(np.array([True, False])) == "categorical"
    assert plots.color_kind(np.arange(100)) == "continuous"


def test_categorical_colours_sorted_naturally_and_nan_labelled(coords):
    lab = np.array(["c10", "c2", "c1", None] * 50, dtype=object)
    fig = plots.scatter(coords, color=lab, color_type="categorical")
    assert [t.name for t in fig.data] == ["c1", "c2", "c10", "NA"]


def test_display_subsample_is_deterministic_and_annotated(coords):
    fig = plots.scatter(coords, color=np.arange(200) % 3, max_points=50, seed=1)
    assert sum(len(t.x) for t in fig.data) == 50
    assert "showing 50 of 200" in fig.layout.annotations[0].text
    a = plots.display_indices(200, max_points=50, seed=1)
    b = plots.display_indices(200, max_points=50, seed=1)
    np.testing.assert_array_equal(a, b)
    assert len(np.unique(a)) == 50
    np.testing.assert_array_equal(plots.display_indices(10, max_points=100), np.arange(10))


def test_symbol_marks_a_second_sample(coords):
    sample = np.repeat(["first", "second"], 100)
    fig = plots.scatter(coords, symbol=sample)
    assert {t.name for t in fig.data} == {"first", "second"}
    assert fig.data[0].marker.symbol != fig.data[1].marker.symbol


def test_scatter_rejects_bad_shapes():
    with pytest.raises(ValueError, match="shape"):
        plots.scatter(np.zeros(5))
    with pytest.raises(ValueError, match="color has 3 values"):
        plots.scatter(np.zeros((5, 3)), color=[1, 2, 3])


def test_loss_curves_from_dicts_and_objects():
    hist = [{"epoch": e, "loss": 10 - e, "reconstruction": 8 - e, "kl": 2.0, "val_loss": None} for e in range(1, 4)]
    fig = plots.loss_curves(hist)
    names = [t.name for t in fig.data]
    assert names == ["total", "reconstruction", "KL"]
    assert list(fig.data[0].y) == [9, 8, 7]

    class R:
        def __init__(self, e, s):
            self.epoch, self.loss, self.reconstruction, self.kl, self.val_loss, self.start = e, 1.0, 0.5, 0.1, 0.9, s

    fig = plots.loss_curves([R(1, 0), R(2, 0), R(1, 1), R(2, 1)])
    assert "total (start 2)" in [t.name for t in fig.data]
    assert "validation (start 1)" in [t.name for t in fig.data]
    assert len(plots.loss_curves([]).data) == 0


def test_bic_curve_marks_best_and_chosen_k():
    fig = plots.bic_curve([1, 2, 3, 4], [10.0, 5.0, np.nan, 7.0], best_k=2, chosen_k=4, skipped=[3])
    texts = [a.text for a in fig.layout.annotations]
    assert any("k=2" in t for t in texts) and any("k=4" in t for t in texts)
    assert any("skipped k: 3" in t for t in texts)


def test_qc_histograms_drop_non_finite_and_log():
    fig = plots.library_size_hist(np.array([0.0, 10.0, 100.0, np.inf]))
    np.testing.assert_allclose(fig.data[0].x, [1.0, 2.0])
    assert "log10" in fig.layout.xaxis.title.text
    fig = plots.dropout_hist(np.array([0.1, 0.5, np.nan]))
    assert len(fig.data[0].x) == 2


def test_figure_html_embeds_plotlyjs_for_offline_use(coords):
    html = plots.figure_html(plots.scatter(coords))
    assert "<html>" in html[:100] and "scatter3d" in html
    assert '<script src="https://cdn' not in html and len(html) > 1_000_000


# ----------------------------------------------------------------------------- static export
SETTINGS = {"k": 4, "seed": 0, "latent_dim": 3, "structure": "shallow"}


def _svg_root(data: bytes):
    import xml.etree.ElementTree as ET

    root = ET.fromstring(data)  # well-formed XML or it raises
    assert root.tag.endswith("svg")
    return root


def _png_text(data: bytes) -> dict:
    from io import BytesIO

    from PIL import Image

    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    img = Image.open(BytesIO(data))
    img.load()  # decodes every chunk (CRCs checked)
    return dict(img.text), img.size


def test_figure_filename_carries_the_settings():
    name = figure_export.figure_filename("dhaka latent", SETTINGS, "svg")
    assert name == "dhaka-latent_k-4_seed-0_latent_dim-3_structure-shallow.svg"
    odd = figure_export.figure_filename("a/b", {"path": "../x y", "lr": 0.001, "none": None}, "png")
    assert "/" not in odd and " " not in odd and "none" not in odd and odd.endswith(".png") and "lr-0.001" in odd
    assert len(figure_export.figure_filename("f", {f"s{i}": "v" * 30 for i in range(20)})) <= 160


def test_matplotlib_svg_of_a_3d_scatter_is_true_vectors_with_metadata(coords):
    fig = plots.scatter(coords, color=np.repeat(["a", "b"], 100), color_name="group", title="latent")
    assert figure_export.static_engine(fig) == "matplotlib"  # WebGL traces: kaleido would embed a bitmap
    meta = figure_export.figure_metadata("dhaka-latent", SETTINGS)
    data = figure_export.figure_bytes(fig, "svg", metadata=meta)
    root = _svg_root(data)
    ns = "{http://www.w3.org/2000/svg}"
    assert root.find(f".//{ns}image") is None  # no bitmap anywhere
    assert len(root.findall(f".//{ns}use")) >= 200  # every point a vector marker
    assert root.find(f"{ns}title").text == "dhaka-latent"
    assert '"k": 4' in root.find(f"{ns}desc").text
    assert b"group" in data and b"latent" in data  # legend title and figure title drawn


def test_png_is_valid_at_publication_size_with_settings(coords):
    fig = plots.scatter(coords[:, :2], color=coords[:, 2], color_name="score")
    data = figure_export.figure_bytes(fig, "png", width=350, height=300, scale=2,
                              metadata=figure_export.figure_metadata("umap", SETTINGS))
    text, size = _png_text(data)
    assert size == (700, 600)
    assert text["Title"] == "umap" and '"seed": 0' in text["Description"] and "Dhaka" in text["Software"]
    default = figure_export.figure_bytes(fig, "png")
    assert abs(_png_text(default)[1][0] - figure_export.PUBLICATION_SIZE["width"] * figure_export.PUBLICATION_SIZE["scale"]) <= 1


def test_every_app_figure_kind_renders_with_matplotlib():
    from dhaka.analysis import copy_number

    rng = np.random.default_rng(0)
    figs = [plots.loss_curves([{"epoch": i, "loss": 5.0 - i, "reconstruction": 4.0 - i, "kl": 0.5 + i}
                               for i in range(4)]),
            plots.bic_curve([1, 2, 3], [3.0, 1.0, float("nan")], best_k=2, chosen_k=3, skipped=[3]),
            plots.library_size_hist(rng.gamma(2.0, 100.0, 50)),
            copy_number.figure_heatmap(rng.integers(1, 5, size=(20, 12)).astype(float), clusters=np.arange(20) % 2),
            go.Figure(go.Bar(x=["a", "b"], y=[1, 2]))]
    for fig in figs:
        _svg_root(figure_export.figure_bytes(fig, "svg", engine="matplotlib"))


@pytest.mark.skipif(figure_export.browser_path() is None, reason="no Chrome/Chromium for kaleido")
def test_kaleido_renders_offline_with_the_system_chromium():
    fig = plots.bic_curve([1, 2, 3], [3.0, 1.0, 2.0], best_k=2)
    assert figure_export.static_engine(fig) == "kaleido"
    _svg_root(figure_export.figure_bytes(fig, "svg", metadata=figure_export.figure_metadata("bic", SETTINGS)))
    assert _png_text(figure_export.figure_bytes(fig, "png", width=300, height=200, scale=1))[1] == (300, 200)


def test_no_browser_gives_a_clear_message_not_a_traceback(monkeypatch, coords):
    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    bic = plots.bic_curve([1, 2], [2.0, 1.0])
    assert figure_export.static_engine(bic) == "matplotlib"  # auto falls back when no browser is found
    with pytest.raises(figure_export.FigureExportError, match="Chrome or Chromium.*BROWSER_PATH"):
        figure_export.figure_bytes(bic, "svg", engine="kaleido")
    pie = go.Figure(go.Pie(values=[1, 2]))
    with pytest.raises(figure_export.FigureExportError, match="Chrome or Chromium"):  # only kaleido draws it
        figure_export.figure_bytes(pie, "png")
    with pytest.raises(figure_export.FigureExportError, match="cannot draw pie"):
        figure_export.figure_bytes(pie, "png", engine="matplotlib")
    with pytest.raises(ValueError, match="fmt"):
        figure_export.figure_bytes(bic, "jpg")


def test_html_download_carries_the_settings():
    fig = plots.bic_curve([1, 2], [2.0, 1.0])
    html = figure_export.figure_bytes(fig, "html", metadata=figure_export.figure_metadata("bic", SETTINGS)).decode()
    assert "<title>bic</title>" in html and 'name="dhaka:description"' in html and "&quot;k&quot;: 4" in html


def _figures_page():
    import numpy as np
    import plotly.graph_objects as go

    from dhaka import plots
    from dhaka.ui import figures

    fig = plots.scatter(np.random.default_rng(0).normal(size=(30, 3)), title="latent")
    figures.chart(fig, "latent", {"k": 3}, key="f")
    figures.chart(go.Figure(go.Pie(values=[1, 2])), "pie", key="p")


def test_page_helper_draws_chart_and_lazy_downloads(monkeypatch):
    from streamlit.testing.v1 import AppTest

    monkeypatch.setenv("BROWSER_PATH", "/nonexistent/chromium")
    at = AppTest.from_function(_figures_page, default_timeout=60).run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 2
    buttons = at.get("download_button")
    assert [b.label for b in buttons] == ["Figure as SVG", "Figure as PNG", "Figure as HTML"] * 2
    latent, pie = buttons[:3], buttons[3:]
    assert all(b.proto.deferred_file_id for b in latent)  # built on click, not while the page draws
    assert not any(b.proto.disabled for b in latent) and "300 dpi" in latent[0].proto.help
    assert pie[0].proto.disabled and pie[1].proto.disabled and "Chrome or Chromium" in pie[0].proto.help
    assert not pie[2].proto.disabled  # the interactive HTML always works


def test_selection_scatter_with_legend_only_traces_exports():
    fig = plots.selection_scatter(np.random.default_rng(0).normal(size=(50, 2)),
                                  groups=np.where(np.arange(50) < 10, "A", None))
    _svg_root(figure_export.figure_bytes(fig, "svg"))
