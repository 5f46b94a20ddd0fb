"""AppTest: the Compare structures page."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis_helpers import reduce_module, small_paper  # noqa: E402,F401

from streamlit.testing.v1 import AppTest  # noqa: E402

from dhaka.ui import state  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "compare.py")


def _seed(at, adata):
    at.session_state[state.DATASET] = adata
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "tiny paper"}
    at.session_state[state.TRUTH_COLUMN] = "group"
    at.session_state[state.TRAIN_PARAMS] = {"epochs": 2, "batch_size": 64, "kl_warmup": 0, "patience": None,
                                            "val_fraction": 0.0}


def test_guard_without_dataset():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("Load a dataset first" in i.value for i in at.info)


def test_comparison_job_with_custom_structure(small_paper, reduce_module):
    at = AppTest.from_file(PAGE, default_timeout=120)
    _seed(at, small_paper)
    at.run()
    at.multiselect(key="w.cmp.structures").set_value([])
    at.text_input(key="w.cmp.custom").set_value("16, 8")
    at.checkbox(key="w.cmp.tsne").set_value(False)
    at.checkbox(key="w.cmp.pca").set_value(True)
    at.button(key="w.cmp.start").click().run()
    job = at.session_state["dhaka.analysis.compare.job"]
    assert job.wait(120) and job.error is None, job.error
    at.run()
    assert not at.exception
    df = at.dataframe[0].value
    assert df["structure"].tolist() == ["dhaka 16-8", "pca"]
    assert len(at.get("plotly_chart")) == 1


def test_bad_custom_structure_is_explained(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.run()
    at.text_input(key="w.cmp.custom").set_value("10, x").run()
    assert any("layer widths" in e.value for e in at.error)


def test_warm_start_report_and_seeded_table(small_paper):
    class Est:
        start_scores_ = [{"start": 0, "silhouette": 0.2, "kept": False}, {"start": 1, "silhouette": 0.6, "kept": True}]

    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.session_state[state.ESTIMATOR] = Est()
    at.session_state[state.LATENT] = np.zeros((small_paper.n_obs, 3))
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1"}
    table = pd.DataFrame({"structure": ["dhaka deep", "tsne"], "ari": [0.9, 0.7], "silhouette": [0.5, 0.4],
                          "n_clusters": [3, 3], "seconds": [10.0, 2.0]})
    at.session_state["dhaka.analysis.compare.result"] = ("k1", table)
    at.run()
    assert not at.exception
    ws = at.dataframe[0].value
    assert ws["kept"].tolist() == [False, True]
    assert at.dataframe[1].value["structure"].tolist() == ["dhaka deep", "tsne"]
    assert len(at.get("plotly_chart")) == 1
