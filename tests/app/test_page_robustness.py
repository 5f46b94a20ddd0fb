"""AppTest: the Robustness page (guard, a real background study, rendering of a finished one)."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis_helpers import reduce_module, small_paper  # noqa: E402,F401

from streamlit.testing.v1 import AppTest  # noqa: E402

from dhaka.ui import state  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "robustness.py")


def _seed(at, adata):
    at.session_state[state.DATASET] = adata
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "tiny paper"}
    at.session_state[state.TRUTH_COLUMN] = "group"
    at.session_state[state.TRAIN_PARAMS] = {"structure": (16,), "epochs": 2, "batch_size": 64, "kl_warmup": 0,
                                            "patience": None, "val_fraction": 0.0}


def test_guard_without_dataset():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("Load a dataset first" in i.value for i in at.info)


def test_background_study_runs_and_renders(small_paper, reduce_module):
    at = AppTest.from_file(PAGE, default_timeout=120)
    _seed(at, small_paper)
    at.run()
    assert not at.exception
    at.multiselect(key="w.rob.methods").set_value(["pca"])
    at.multiselect(key="w.rob.levels").set_value([0, 30])
    at.button(key="w.rob.start").click().run()
    job = at.session_state["dhaka.analysis.robustness.job"]
    assert job.wait(120), "study did not finish"
    assert job.error is None, job.error
    at.run()
    assert not at.exception
    key, study = at.session_state["dhaka.analysis.robustness.result"]
    assert key == "k1" and len(study.table) == 2
    df = at.dataframe[0].value
    assert set(df["method"]) == {"PCA"} and df["ari"].notna().all()
    assert len(at.get("plotly_chart")) >= 3


def test_finished_study_is_rendered_without_labels(small_paper):
    import pandas as pd

    from dhaka.analysis.robustness import DropoutStudy

    table = pd.DataFrame({"level": [0.0, 0.2], "method": ["dhaka", "dhaka"], "ari": [np.nan, np.nan],
                          "n_clusters": [3, 2], "silhouette": [0.5, 0.4], "seconds": [1.0, 1.0]})
    rng = np.random.default_rng(0)
    study = DropoutStudy(table=table, dropout_fractions={0.0: rng.random(150), 0.2: rng.random(150)},
                         embeddings={(0.2, "dhaka"): rng.normal(size=(120, 3))},
                         clusters={(0.2, "dhaka"): rng.integers(0, 2, 120)})
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.session_state["dhaka.analysis.robustness.result"] = ("old", study)
    at.run()
    assert not at.exception
    assert any("previously loaded dataset" in c.value for c in at.caption)
    assert len(at.get("plotly_chart")) == 4
