"""The path every new user takes, on the real defaults (no DHAKA_DEMO_FAST): the default demo, the Train
form as it comes, Start, live progress, Finished, Explore with all views side by side, the downloads.
Every training preset is applied once. Errors on any page fail the tests (DHAKA_RAISE_ERRORS, conftest).
"""
from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def real(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.delenv("DHAKA_DEMO_FAST", raising=False)
    mp.setenv("DHAKA_HOME", str(tmp_path_factory.mktemp("dhaka-home-real")))
    yield
    mp.undo()


def no_errors(at: AppTest) -> None:
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def open_app() -> AppTest:
    at = AppTest.from_file(APP, default_timeout=300).run()
    no_errors(at)
    return at


def test_default_demo_trains_from_the_form_as_it_comes_and_explore_shows_every_view(real):
    from dhaka.params import PARAMS, defaults

    at = open_app()
    assert [t.value for t in at.title] == ["Data"]
    assert at.session_state["dhaka.dataset"].shape == (500, 3000)

    # the Train form as it comes: the estimator's own defaults, "auto" and None included
    at.switch_page("pages/train.py").run()
    no_errors(at)
    train_keys = [p.name for p in PARAMS if p.group in ("network", "training", "advanced", "library")]
    assert at.session_state["dhaka.train_params"] == {k: defaults()[k] for k in train_keys}
    assert at.checkbox(key="w.train.batch_size.special").value is True  # batch size "auto"
    assert at.checkbox(key="w.train.refine.special").value is True
    assert at.number_input(key="w.train.lr").value == pytest.approx(1e-3)
    start = at.button(key="w.train.start")
    assert not start.disabled
    start.click().run()
    no_errors(at)
    job = at.session_state["dhaka.job"]

    # live progress while it runs
    deadline, seen = time.time() + 300, False
    while time.time() < deadline and not job.done and not seen:
        time.sleep(1.0)
        at.run()
        no_errors(at)
        seen = any('role="progressbar"' in m.value and "Epoch " in m.value for m in at.markdown)
    assert seen or job.done, "no progress bar with the epoch while training ran"
    if seen:  # the settings of the running training in place of the form
        assert not at.number_input and any("Settings of this training" in c.value for c in at.caption)
    assert job.wait(900), "training on the real defaults did not finish"
    at.run()
    no_errors(at)
    assert job.snapshot()["status"] == "done"
    assert any("Finished:" in s.value for s in at.success)

    # Explore: the 3-D view, then PCA, t-SNE and UMAP beside it without another click
    at.switch_page("pages/explore.py").run()
    no_errors(at)
    views = at.session_state["dhaka.views_job"]
    assert views is not None and views[0].wait(600), "the comparison views did not finish"
    at.run()
    no_errors(at)
    assert set(at.session_state["dhaka.embeddings"]) == {"pca_2d", "tsne_2d", "umap_2d"}
    assert {c.key for c in at.get("plotly_chart")} == {"fig_dhaka", "fig_pca_2d", "fig_tsne_2d", "fig_umap_2d",
                                                       "fig_bic", "w.ann.sel.chart"}  # + the annotation lasso view
    scores = at.dataframe[0].value
    assert {"Dhaka", "PCA 2D", "t-SNE 2D", "UMAP 2D"} <= set(scores.index)
    assert scores.loc["Dhaka", "ari"] >= 0.8  # the paper's five groups are found
    downloads = {b.label: b for b in at.get("download_button")}
    assert {"Latent + clusters (CSV)", "AnnData (.h5ad)", "Model (.zip)"} <= set(downloads)
    assert not any(b.proto.disabled for b in downloads.values())
    assert np.isfinite(at.session_state["dhaka.latent"]).all()


@pytest.mark.parametrize("preset", ["default", "paper", "fast"])
def test_every_preset_applies_and_can_start(real, preset):
    from dhaka.estimator import PRESETS
    from dhaka.params import PARAMS, defaults

    at = open_app()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="w.train.preset").set_value(preset).run()
    at.button(key="w.train.apply_preset").click().run()
    no_errors(at)
    want = {**defaults(), **PRESETS[preset]}
    train = at.session_state["dhaka.train_params"]
    assert set(train) == {p.name for p in PARAMS if p.group != "preprocess"}
    assert train == {k: want[k] for k in train}  # every training setting: the preset's, else the default
    prep = at.session_state["dhaka.preprocess"]
    assert all(prep[k] == v for k, v in PRESETS[preset].items() if k in prep)
    assert not at.button(key="w.train.start").disabled
    at.run()  # the form keeps the preset's values over reruns
    no_errors(at)
    assert at.session_state["dhaka.train_params"]["epochs"] == want["epochs"]
