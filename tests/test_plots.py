"""Tests for dhaka.plots: figures are built (never shown), WebGL traces, hover, colours, subsampling."""
from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
import pytest

from dhaka import plots


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
