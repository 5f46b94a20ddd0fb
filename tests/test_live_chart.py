"""The static loss curves the Train page draws while a training runs."""
from __future__ import annotations

import xml.etree.ElementTree as ET

from dhaka.ui.live_chart import loss_svg

NS = "{http://www.w3.org/2000/svg}"


def _history(n_fits=2, n=30):
    return [{"epoch": e + 1, "loss": 1000.0 / (e + 1) + f, "val_loss": 1100.0 / (e + 1) + f, "kl": 5.0 + e / 10,
             "start": f, "stage": f"fit {f + 1}/{n_fits} <{500 * (f + 1)} genes>"}
            for f in range(n_fits) for e in range(n)]


def test_one_line_per_series_and_fit_with_escaped_labels():
    svg = loss_svg(_history())
    root = ET.fromstring(svg)  # well-formed: stage labels with < and > are escaped
    lines = root.findall(f"{NS}polyline")
    assert len(lines) == 6  # (training, validation, KL) x 2 fits
    assert len({line.get("stroke") for line in lines}) == 2  # a colour per fit
    assert sum(1 for line in lines if line.get("stroke-dasharray")) == 2  # validation dashed
    texts = [t.text for t in root.iter(f"{NS}text")]
    assert "fit 2/2 <1000 genes>" in texts  # legend
    assert "1101" in texts and "33.33" in texts  # the loss range: highest validation, lowest training
    for line in lines:  # every point inside the drawing
        for pair in line.get("points").split():
            x, y = map(float, pair.split(","))
            assert 0 <= x <= 760 and 0 <= y <= 250


def test_log_scale_skips_non_positive_and_missing_values():
    hist = [{"epoch": 1, "loss": 0.0, "kl": 1.0}, {"epoch": 2, "loss": 10.0, "kl": None},
            {"epoch": 3, "loss": float("nan"), "kl": 2.0}, {"epoch": 4, "loss": 5.0, "kl": 3.0}]
    root = ET.fromstring(loss_svg(hist))
    loss_line, kl_line = root.findall(f"{NS}polyline")
    assert len(loss_line.get("points").split()) == 2 and len(kl_line.get("points").split()) == 3


def test_nothing_to_draw():
    assert loss_svg([]) == ""


def test_long_trainings_are_thinned_to_a_bounded_line_that_keeps_the_last_epoch():
    hist = [{"epoch": e, "loss": 1000.0 / e, "kl": 1.0} for e in range(1, 3001)]
    root = ET.fromstring(loss_svg(hist, max_points=300))
    loss_line = root.findall(f"{NS}polyline")[0]
    points = loss_line.get("points").split()
    assert 300 <= len(points) <= 301
    assert float(points[-1].split(",")[0]) == max(float(p.split(",")[0]) for p in points)  # the last epoch drawn
    assert "3000" in [t.text for t in root.iter(f"{NS}text")]


def test_progress_bar_is_escaped_bounded_and_labelled():
    from dhaka.ui.live_chart import progress_html

    root = ET.fromstring(progress_html(0.25, "Epoch 5/20 · fit <1/3>"))  # well-formed: the text is escaped
    assert root.get("role") == "progressbar" and root.get("aria-valuenow") == "25"
    assert root.get("aria-label") == "Epoch 5/20 · fit <1/3>"
    bar = root.findall(f".//{NS}rect")
    assert float(bar[1].get("width")) == 0.25 * float(bar[0].get("width"))
    for fraction, now in ((1.7, "100"), (-1.0, "0"), (float("nan"), "0")):
        assert ET.fromstring(progress_html(fraction, "x")).get("aria-valuenow") == now
