"""AppTest: the Copy number page."""
from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis_helpers import small_paper  # noqa: E402,F401

from streamlit.testing.v1 import AppTest  # noqa: E402

from dhaka.ui import state  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "copy_number.py")


@pytest.fixture(scope="module")
def cnv_result():
    from dhaka import simulate
    from dhaka.estimator import Dhaka

    first, second = simulate.cnv_pair(n_cells=(120, 60), n_bins=200, seed=2)
    est = Dhaka(mode="cnv", structure=(32,), epochs=5, patience=None, val_fraction=0.0, seed=0).fit(first)
    return first, second, est, est.transform(first)


def _seed_cnv(at, cnv_result, *, second=True):
    first, sec, est, Z = cnv_result
    at.session_state[state.DATASET] = first
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "cnv", "mode": "cnv"}
    at.session_state[state.PREPROCESS] = {"mode": "cnv"}
    at.session_state[state.SECOND_DATASET] = sec if second is True else second
    at.session_state[state.TRUTH_COLUMN] = "clone"
    at.session_state[state.ESTIMATOR] = est
    at.session_state[state.LATENT] = Z
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1"}


def test_guard_without_dataset():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("Load a dataset first" in i.value for i in at.info)


def test_expression_data_offers_the_demo_and_asks_for_a_model(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=120)
    at.session_state[state.DATASET] = small_paper
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "tiny"}
    at.run()
    assert not at.exception
    texts = " ".join(i.value for i in at.info)
    assert "copy-number profiles" in texts and "Train a model" in texts
    assert any("file order" in c.value for c in at.caption)
    at.button(key="w.cnv.demo").click().run()
    assert not at.exception
    ad = at.session_state[state.DATASET]
    assert ad.var_names[0].startswith("chr1:") and at.session_state[state.SECOND_DATASET] is not None
    assert at.session_state[state.PREPROCESS]["mode"] == "cnv"


def test_trained_cnv_shows_calls_heatmap_latent_and_projection(cnv_result):
    at = AppTest.from_file(PAGE, default_timeout=120)
    _seed_cnv(at, cnv_result)
    at.run()
    assert not at.exception
    assert len(at.get("plotly_chart")) == 3  # heatmap, latent, projection
    fr = at.dataframe[1].value
    assert list(fr.columns[:3]) == ["cluster", "n_cells", "fraction"]
    assert fr["fraction"].sum() == pytest.approx(1.0) and fr["n_cells"].sum() == 60
    assert not at.warning  # every bin matched
    at.button(key="w.cnv.use").click().run()
    assert at.session_state[state.CLUSTERS] is not None
    at.radio(key="w.cnv.assign").set_value("gmm").run()
    assert not at.exception


def test_missing_bins_are_reported(cnv_result):
    first, sec, est, Z = cnv_result
    at = AppTest.from_file(PAGE, default_timeout=120)
    _seed_cnv(at, cnv_result, second=sec[:, 5:].copy())
    at.run()
    assert not at.exception
    assert any("5 bins of the model are missing" in w.value for w in at.warning)


def test_an_uploaded_second_sample_is_parsed_outside_the_server(cnv_result, monkeypatch, tmp_path):
    """The second sample's upload goes through the capped child process too (issue 25): every reader of dhaka.io
    fails in this (the server's) process, and the uploaded sample is still projected."""
    import dhaka.io

    def boom(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("an upload was parsed in the server process")

    monkeypatch.setenv("DHAKA_HOME", str(tmp_path / "home"))
    for name in ("read", "read_metadata", "h5ad_layers", "estimate_read_memory"):
        monkeypatch.setattr(dhaka.io, name, boom)
    first, sec, est, Z = cnv_result
    at = AppTest.from_file(PAGE, default_timeout=120)
    _seed_cnv(at, cnv_result, second=None)
    at.run()
    at.file_uploader(key="w.cnv.upload").set_value(("second.h5ad", dhaka.io.to_h5ad_bytes(sec),
                                                    "application/octet-stream"))
    at.run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    fr = at.dataframe[1].value
    assert fr["n_cells"].sum() == sec.n_obs  # the uploaded sample, projected
