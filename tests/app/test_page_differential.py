"""AppTest: the Differential expression page."""
from __future__ import annotations

import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis_helpers import small_paper  # noqa: E402,F401

from streamlit.testing.v1 import AppTest  # noqa: E402

from dhaka.ui import state  # noqa: E402

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "differential.py")
RESULT = "dhaka.analysis.de.result"
JOB = "dhaka.analysis.de.job"


def run_test(at):
    """Click "Run test", wait for the background job, rerun: the page then shows the result."""
    at.button(key="w.de.run").click().run()
    assert not at.exception, [e.value for e in at.exception]
    job = at.session_state[JOB]
    assert job.wait(60) and job.error is None, job.error
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    key, res = at.session_state[RESULT]
    assert key == "k1"
    return res


def _seed(at, adata):
    from sklearn.decomposition import PCA

    X = np.asarray(adata.X)
    at.session_state[state.DATASET] = adata
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "tiny"}
    at.session_state[state.LATENT] = PCA(3, random_state=0).fit_transform(X - X.mean(0))
    at.session_state[state.CLUSTERS] = adata.obs["group"].cat.codes.to_numpy()
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1"}


def test_guards(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("Load a dataset first" in i.value for i in at.info)
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state[state.DATASET] = small_paper
    at.session_state[state.DATASET_INFO] = {"key": "k1"}
    at.run()
    assert any("Train a model" in i.value for i in at.info)


def test_two_clusters_full_table_volcano_downloads(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.run()
    assert not at.exception
    at.selectbox(key="w.de.cb").set_value(2)
    res = run_test(at)
    assert len(res["a"]) == 40 and len(res["b"]) == 40
    df = at.dataframe[0].value
    assert len(df) == small_paper.n_vars  # all genes, not a top list
    assert (df["padj"] < 0.05).sum() > 0
    assert at.get("plotly_chart")
    labels = [d.proto.label for d in at.get("download_button")]
    assert "All genes as CSV" in labels and "Cell ids of both groups (CSV)" in labels


def test_cluster_vs_rest_with_wilcoxon(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.run()
    at.radio(key="w.de.mode").set_value("rest")
    at.radio(key="w.de.method").set_value("wilcoxon")
    res = run_test(at)
    assert len(res["b"]) == 80 and res["label_b"] == "rest" and res["method"] == "wilcoxon"


def test_annotation_groups(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.run()
    at.radio(key="w.de.mode").set_value("obs").run()
    at.selectbox(key="w.de.obs").set_value("group").run()
    assert run_test(at)["label_a"] == "group=group_1"


def test_hand_picked_selections(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.session_state["dhaka.analysis.de.selection_a"] = np.arange(0, 10)
    at.session_state["dhaka.analysis.de.selection_b"] = np.arange(50, 70)
    at.run()
    at.radio(key="w.de.mode").set_value("select").run()
    assert not at.exception
    assert any("Group A: 10 cells · group B: 20 cells" in c.value for c in at.caption)
    res = run_test(at)
    assert res["a"].tolist() == list(range(10)) and res["b"].tolist() == list(range(50, 70))
    at.button(key="w.de.clear").click().run()
    assert any("Group A: 0 cells" in c.value for c in at.caption)
    assert at.button(key="w.de.run").disabled


def test_box_selection_goes_to_group_a(small_paper):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, small_paper)
    at.run()
    at.radio(key="w.de.mode").set_value("select").run()
    # what the browser sends after a lasso: points carry the cell position as customdata
    at.session_state["de_view"] = {"selection": {"points": [{"customdata": i} for i in (3, 4, 5)],
                                                 "point_indices": [3, 4, 5], "box": [], "lasso": []}}
    at.button(key="w.de.to_a").click().run()
    assert not at.exception
    assert at.session_state["dhaka.analysis.de.selection_a"].tolist() == [3, 4, 5]


def test_de_task_is_a_plain_job_function(small_paper):
    """The page's test runs as a background job: the task needs no Streamlit and reports its progress."""
    from dhaka.jobs import JobManager
    from dhaka.ui import tasks

    groups = small_paper.obs["group"].astype(str).to_numpy()
    a = groups == groups[0]
    manager = JobManager(1, sweep_interval_s=None)
    try:
        job = manager.submit(tasks.de_task(small_paper.X, a, None, genes=list(map(str, small_paper.var_names)),
                                           mode="expression", method="welch", label_a="first", label_b="rest"),
                             owner="someone", name="de", kind="analysis")
        assert job.wait(60) and job.error is None, job.error
    finally:
        manager.shutdown()
    res = job.result
    assert len(res["df"]) == small_paper.n_vars and (res["df"]["padj"] < 0.05).any()
    assert res["a"].tolist() == np.flatnonzero(a).tolist() and res["b"].tolist() == np.flatnonzero(~a).tolist()
    assert job.snapshot()["progress"]["done"] == 1
