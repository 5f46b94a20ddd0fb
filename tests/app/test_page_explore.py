"""AppTest: the Explore page on its own (seeded result), annotations and their round trip through the run store."""
from __future__ import annotations

import io
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from analysis_helpers import small_paper  # noqa: E402,F401

from streamlit.testing.v1 import AppTest  # noqa: E402

from dhaka.runs import RunStore  # noqa: E402
from dhaka.ui import annotate, owner, state, tasks  # noqa: E402

ROOT = Path(__file__).resolve().parents[2]
EXPLORE = str(ROOT / "pages" / "explore.py")
DE = str(ROOT / "pages" / "differential.py")
TOKEN = "A" * 16 + "b-_" + "c" * 13
NAME = "tiny paper"


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DHAKA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DHAKA_UMAP_WARMUP", "0")
    for name in ("DHAKA_OWNER_HEADER", "DHAKA_ADMIN_TOKEN", "DHAKA_ADMIN_USERS"):
        monkeypatch.delenv(name, raising=False)
    return RunStore(tmp_path / "home")


def _latent(adata):
    from sklearn.decomposition import PCA

    X = np.asarray(adata.X)
    return PCA(3, random_state=0).fit_transform(X - X.mean(0)).astype(np.float32)


def _run(store, adata, Z, *, who=TOKEN, est=None):
    """A finished run of ``adata`` owned by ``who`` (a browser token)."""
    run = store.create(settings={"epochs": 1, "seed": 0}, data={"name": NAME}, owner=owner.key_for_token(who))
    run.finish(status="done", save_fn=None if est is None else est.save,
               latent=tasks.latent_frame(Z, [str(o) for o in adata.obs_names]), history=[{"loss": 1.0}])
    return run.id


def _explore(adata, Z, *, run_id=None, page=EXPLORE):
    at = AppTest.from_file(page, default_timeout=120)
    at.query_params[owner.OWNER_PARAM] = TOKEN
    at.session_state[state.DATASET] = adata
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": NAME}
    at.session_state[state.LATENT] = Z
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1", "run_id": run_id,
                                           "obs_names": [str(o) for o in adata.obs_names]}
    return at


def _ok(at):
    assert not at.exception, [e.value for e in at.exception]
    assert not at.error, [e.value for e in at.error]


def test_explore_shows_clusters_scores_and_annotation_tools(small_paper, home):
    at = _explore(small_paper, _latent(small_paper)).run()
    _ok(at)
    labels = at.session_state[state.CLUSTERS]
    assert len(labels) == small_paper.n_obs and at.session_state[state.CLUSTER_K] == len(np.unique(labels))
    assert "Dhaka" in at.dataframe[0].value.index
    assert any("Needs the data the model was trained on" in c.value for c in at.caption)  # no estimator here
    assert at.text_input(key="w.ann.clusters.name").value == "cell_type"
    at.selectbox(key="w.exp.k").set_value(2).run()
    _ok(at)
    assert at.session_state[state.CLUSTER_K] == 2


def test_cluster_names_merge_and_are_kept_with_the_run(small_paper, home):
    Z = _latent(small_paper)
    run_id = _run(home, small_paper, Z)
    at = _explore(small_paper, Z, run_id=run_id).run()
    at.selectbox(key="w.exp.k").set_value(3).run()
    clusters = at.session_state[state.CLUSTERS]
    ks = sorted(np.unique(clusters).tolist())
    at.text_input(key=f"w.ann.clusters.c{ks[0]}").set_value("T cells")
    at.text_input(key=f"w.ann.clusters.c{ks[1]}").set_value("T cells")  # merged with the first
    at.text_input(key="w.ann.clusters.name").set_value("cell type")
    at.button(key="w.ann.clusters.save").click().run()
    _ok(at)
    ann = at.session_state[state.ANNOTATIONS]["cell type"]
    assert set(ann) == {"T cells", str(ks[2])}
    assert (ann == "T cells").sum() == np.isin(clusters, ks[:2]).sum()
    # kept with the run, cell by cell
    back = home.open(run_id, admin=True).load_annotations()
    assert back.loc[[str(o) for o in small_paper.obs_names], "cell type"].tolist() == list(ann)
    # colour by it, and find it among the DE groups
    at.selectbox(key="w.colour").set_value("annotation: cell type").run()
    _ok(at)


def test_lasso_selection_becomes_a_label_and_goes_out_with_the_csv(small_paper, home):
    Z = _latent(small_paper)
    run_id = _run(home, small_paper, Z)
    at = _explore(small_paper, Z, run_id=run_id).run()
    # what the browser sends after a lasso: points carry the cell position as customdata
    at.session_state["w.ann.sel.chart"] = {"selection": {"points": [{"customdata": i} for i in (3, 4, 5, 40)],
                                                         "point_indices": [3, 4, 5, 40], "box": [], "lasso": []}}
    at.run()  # the browser reruns on a selection: the Label button is enabled
    assert any("4 cells selected" in c.value for c in at.caption)
    at.text_input(key="w.ann.sel.name").set_value("niche")
    at.text_input(key="w.ann.sel.label").set_value("=HYPERLINK(\"http://evil.example\")")
    at.button(key="w.ann.sel.apply").click().run()
    _ok(at)
    ann = at.session_state[state.ANNOTATIONS]["niche"]
    assert np.flatnonzero(ann != None).tolist() == [3, 4, 5, 40]  # noqa: E711 - object array of labels / None
    assert at.selectbox(key="w.ann.sel.target").value == "niche"  # the next lasso adds to the same annotation
    # the CSV download carries the label, neutralised against spreadsheet formulas; unlabelled cells are empty
    names = [str(o) for o in small_paper.obs_names]
    df = pd.read_csv(io.BytesIO(tasks.latent_csv_bytes(Z, names, labels=at.session_state[state.CLUSTERS],
                                                       annotations=at.session_state[state.ANNOTATIONS])))
    assert df["niche"].iloc[3].startswith("'=") and df["niche"].isna().sum() == len(names) - 4
    # unlabel two of them
    at.session_state["w.ann.sel.chart"] = {"selection": {"points": [{"customdata": 3}, {"customdata": 4}]}}
    at.run()
    at.button(key="w.ann.sel.clear").click().run()
    _ok(at)
    assert np.flatnonzero(at.session_state[state.ANNOTATIONS]["niche"] != None).tolist() == [5, 40]  # noqa: E711
    assert home.open(run_id, admin=True).load_annotations()["niche"].notna().sum() == 2
    # delete it: gone from the session and from the run
    at.selectbox(key="w.ann.manage.del_name").set_value("niche")
    at.button(key="w.ann.manage.delete").click().run()
    _ok(at)
    assert at.session_state[state.ANNOTATIONS] == {}
    assert home.open(run_id, admin=True).load_annotations().columns.tolist() == []


@pytest.mark.parametrize("name,label,problem", [
    ("ok", "<b>bold</b>", "cannot contain < or >"),
    ("group", "fine", "already a column of the dataset"),
    ("dhaka_1", "fine", "reserved"),
    ("ok", "line\u202ebreak", "control characters"),
])
def test_untrusted_names_are_refused_with_the_reason(small_paper, home, name, label, problem):
    at = _explore(small_paper, _latent(small_paper)).run()
    at.session_state["w.ann.sel.chart"] = {"selection": {"points": [{"customdata": 1}]}}
    at.run()
    at.text_input(key="w.ann.sel.name").set_value(name)
    at.text_input(key="w.ann.sel.label").set_value(label)
    at.button(key="w.ann.sel.apply").click().run()
    assert not at.exception
    assert any(problem in e.value.replace("\\", "") for e in at.error), [e.value for e in at.error]  # Markdown-escaped
    assert state.ANNOTATIONS not in at.session_state or not at.session_state[state.ANNOTATIONS]


def test_name_checks_cap_length_and_count():
    with pytest.raises(annotate.AnnotationError, match="the limit is 40"):
        annotate.check_new_name("x" * 41)  # the text box caps it too; a run's file is checked here
    with pytest.raises(annotate.AnnotationError, match="the limit is 60"):
        annotate.check_text("y" * 61)
    full = {f"a{i}": None for i in range(annotate.MAX_ANNOTATIONS)}
    with pytest.raises(annotate.AnnotationError, match="delete one first"):
        annotate.check_new_name("one more", existing=full)
    assert annotate.check_new_name("a0", existing=full) == "a0"  # replacing one is fine
    assert annotate.check_text("  CD4+   T cells ") == "CD4+ T cells"


def test_annotations_of_someone_elses_run_stay_in_the_session(small_paper, home):
    Z = _latent(small_paper)
    run_id = _run(home, small_paper, Z, who="B" * 16 + "b-_" + "c" * 13)
    home.share(run_id, admin=True)
    at = _explore(small_paper, Z, run_id=run_id).run()
    at.session_state["w.ann.sel.chart"] = {"selection": {"points": [{"customdata": 1}, {"customdata": 2}]}}
    at.run()
    at.text_input(key="w.ann.sel.label").set_value("mine")
    at.button(key="w.ann.sel.apply").click().run()
    assert not at.exception
    assert "selection" in at.session_state[state.ANNOTATIONS]
    notices = at.session_state[state.NOTICE]
    assert any(level == "warning" and "this session only" in text for level, text in notices)
    assert home.open(run_id, admin=True).load_annotations().columns.tolist() == []


def test_differential_expression_between_annotation_groups(small_paper, home):
    Z = _latent(small_paper)
    at = _explore(small_paper, Z, page=DE)
    labels = np.full(small_paper.n_obs, None, dtype=object)
    labels[:20], labels[60:90] = "left", "right"
    at.session_state[state.CLUSTERS] = small_paper.obs["group"].cat.codes.to_numpy()
    at.session_state[state.ANNOTATIONS] = {"mine": labels}
    at.run()
    at.radio(key="w.de.mode").set_value("obs").run()
    at.selectbox(key="w.de.obs").set_value("mine").run()
    at.selectbox(key="w.de.oa").set_value("left").run()
    at.selectbox(key="w.de.ob").set_value("right").run()
    at.button(key="w.de.run").click().run()
    job = at.session_state["dhaka.analysis.de.job"]
    assert job.wait(60) and job.error is None, job.error
    at.run()
    _ok(at)
    res = at.session_state["dhaka.analysis.de.result"][1]
    assert res["a"].tolist() == list(range(20)) and res["b"].tolist() == list(range(60, 90))
    assert res["label_a"] == "mine=left"


def test_opening_a_run_brings_its_annotations_back(small_paper, home, tmp_path):
    from dhaka.estimator import Dhaka

    est = Dhaka(structure=(16,), epochs=1, batch_size=64, kl_warmup=0, patience=None, val_fraction=0.0)
    est.fit(small_paper)
    Z = np.asarray(est.transform(small_paper))
    run_id = _run(home, small_paper, Z, est=est)
    names = [str(o) for o in small_paper.obs_names]
    labels = np.where(np.arange(len(names)) < 10, "early", None).astype(object)
    home.save_annotations(run_id, annotate.to_frame({"phase": labels, "bad<name>": labels}, names), admin=True)

    def open_it():  # what the Runs page's Open button calls (the page then switches to Explore)
        import streamlit as st

        from dhaka.ui import runs_open

        st.session_state["opened"] = runs_open.open_run(st.session_state["run_to_open"])

    at = AppTest.from_function(open_it, default_timeout=120)
    at.query_params[owner.OWNER_PARAM] = TOKEN
    at.session_state[state.DATASET] = small_paper
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": NAME}
    at.session_state["run_to_open"] = run_id
    at.run()
    _ok(at)
    assert at.session_state["opened"]
    ann = at.session_state[state.ANNOTATIONS]
    assert list(ann) == ["phase"]  # the column a person could not have made is left out, with a notice
    assert list(ann["phase"]) == list(labels)
    assert any("bad" in text and "left out" in text for _level, text in at.session_state[state.NOTICE])
    views = at.session_state[state.VIEWS_JOB]  # opening a run starts the comparison views: not needed here
    if views is not None:
        views[0].cancel()
        assert views[0].wait(300)  # the job slot is free for the next test


def test_run_store_keeps_annotations_only_for_the_owner_of_a_finished_run(home):
    from dhaka.runs import RunError, RunPermissionError

    me, other = owner.key_for_token(TOKEN), owner.key_for_user("bob")
    running = home.create(settings={}, data={"name": NAME}, owner=me)
    table = annotate.to_frame({"kind": np.array(["a", None, "b"], dtype=object)}, ["c1", "c2", "c3"])
    with pytest.raises(RunError, match="still running"):
        home.save_annotations(running.id, table, owner=me)
    running.finish(status="done")
    with pytest.raises(RunPermissionError, match="only its owner"):
        home.save_annotations(running.id, table, owner=other)
    home.view(me).save_annotations(running.id, table)
    back = home.open(running.id, owner=me).load_annotations()
    assert back.index.tolist() == ["c1", "c2", "c3"] and back["kind"].isna().tolist() == [False, True, False]
    home.view(me).save_annotations(running.id, table.iloc[:, :0])  # no columns: the annotations are removed
    assert home.open(running.id, owner=me).load_annotations().empty
    assert not (home.runs_dir / running.id / "annotations.csv").exists()


def test_a_reloaded_explore_offers_the_latest_run_of_this_dataset(small_paper, home):
    # a reload starts a new session (no model in it); the person's runs are kept and one click brings the newest back
    from dhaka.estimator import Dhaka

    est = Dhaka(structure=(16,), epochs=1, batch_size=64, kl_warmup=0, patience=None, val_fraction=0.0)
    est.fit(small_paper)
    Z = np.asarray(est.transform(small_paper))
    _run(home, small_paper, Z, est=est)
    newest = _run(home, small_paper, Z, est=est)
    _run(home, small_paper, Z, est=est, who="Z" * 32)               # someone else's run is not offered
    at = AppTest.from_file(EXPLORE, default_timeout=120)
    at.query_params[owner.OWNER_PARAM] = TOKEN
    at.session_state[state.DATASET] = small_paper
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": NAME}
    at.run()
    _ok(at)
    button = at.button(key="w.exp.open_latest")
    assert newest in button.label and "Train a model on this dataset first" in " ".join(i.value for i in at.info)
    button.click().run()
    _ok(at)
    assert at.session_state[state.RESULT_INFO]["run_id"] == newest
    assert [c for c in at.get("plotly_chart") if c.key == "fig_dhaka"]      # the run's latent space is drawn
    assert not any("Train a model" in i.value for i in at.info)
    views = at.session_state[state.VIEWS_JOB]
    if views is not None:
        views[0].cancel()
        assert views[0].wait(300)
