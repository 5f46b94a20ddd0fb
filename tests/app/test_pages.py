"""AppTest coverage of every page: demo loaded, training, results, downloads, runs, bad uploads, isolation.

The app runs in fast demo mode (``DHAKA_DEMO_FAST=1``: 200 cells x 300 genes,
shallow network) with its run store in a temporary folder; trainings last a
few epochs.
"""
from __future__ import annotations

import io
import time
import zipfile

import numpy as np
import pandas as pd
import pytest

from streamlit.testing.v1 import AppTest

from pathlib import Path

APP = str(Path(__file__).resolve().parents[2] / "app.py")
TIMEOUT = 120


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DHAKA_DEMO_FAST", "1")
    mp.setenv("DHAKA_UMAP_WARMUP", "0")  # no minute of numba compilation competing with the tests
    mp.setenv("DHAKA_HOME", str(tmp_path_factory.mktemp("dhaka-home")))
    yield
    mp.undo()


def new_app(owner_token: str | None = None) -> AppTest:
    """A fresh session; with ``owner_token``, opened from an address carrying that person's ``?owner=``."""
    at = AppTest.from_file(APP, default_timeout=TIMEOUT)
    if owner_token is not None:
        at.query_params["owner"] = owner_token
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return at


def metric(at: AppTest, label: str) -> str:
    return next(m.value for m in at.metric if m.label == label)


def train(at: AppTest, *, epochs: int = 2) -> object:
    """Start a training on the Train page, wait for the job, rerun so the result is collected."""
    at.switch_page("pages/train.py").run()
    at.number_input(key="w.train.epochs").set_value(epochs).run()
    at.button(key="w.train.start").click().run()
    assert not at.error, [e.value for e in at.error]
    job = at.session_state["dhaka.job"]
    assert job.wait(120), "training did not finish"
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    return job


@pytest.fixture(scope="module")
def trained(env):
    """One app session with a finished 2-epoch training, shared by the result tests."""
    at = new_app()
    job = train(at, epochs=2)
    return at, job


# ---------------------------------------------------------------- Data page
def test_fresh_session_has_default_demo_ready_to_train(env):
    at = new_app()
    assert [t.value for t in at.title] == ["Data"]
    assert metric(at, "Cells") == "200" and metric(at, "Genes / bins") == "300"
    assert metric(at, "Detected kind") == "log"
    assert any("Training matrix" in s.value and "200 cells" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 2  # QC: library size, dropout histogram
    assert at.session_state["dhaka.truth_column"] == "group"


def test_data_form_offers_every_choice_the_estimator_accepts(env):
    from dhaka.params import PARAM

    at = new_app()
    for name in ("gene_selection", "value_transform"):
        box = at.selectbox(key=f"w.prep.{name}")
        assert list(box.options) == [box.format_func(v) for v in [*PARAM[name].special, *PARAM[name].choices]]
    assert "dispersion (binned by mean, as Seurat v1)" in at.selectbox(key="w.prep.gene_selection").options
    at.selectbox(key="w.prep.gene_selection").set_value("dispersion").run()
    assert at.session_state["dhaka.preprocess"]["gene_selection"] == "dispersion"
    assert not at.exception


def test_load_other_demo_and_preprocessing_changes_matrix_size(env):
    at = new_app()
    at.selectbox(key="w.data.demo").set_value("cnv_pair").run()
    at.button(key="w.data.load_demo").click().run()
    from dhaka import simulate

    first, second = simulate.cnv_pair(seed=0)
    assert metric(at, "Cells") == f"{first.n_obs:,}"  # the first sample; the second is kept for projection
    assert at.session_state["dhaka.second_dataset"].n_obs == second.n_obs
    assert at.radio(key="w.prep.mode").value == "cnv"
    at.checkbox(key="w.prep.all_genes").uncheck().run()
    at.number_input(key="w.prep.n_genes").set_value(100).run()
    assert any("× 100 bins" in s.value for s in at.success), [s.value for s in at.success]  # copy number
    assert at.session_state["dhaka.preprocess"]["n_genes"] == 100


def test_upload_with_metadata(env):
    at = new_app()
    rng = np.random.default_rng(0)
    counts = pd.DataFrame(rng.poisson(3, size=(30, 20)), index=[f"c{i}" for i in range(30)],
                          columns=[f"g{j}" for j in range(20)])
    meta = pd.DataFrame({"cell": counts.index, "kind": ["a", "b", "c"] * 10}).set_index("cell")
    at.file_uploader(key="w.data.file").set_value(("counts.csv", counts.to_csv().encode(), "text/csv"))
    at.file_uploader(key="w.data.meta").set_value(("meta.csv", meta.to_csv().encode(), "text/csv"))
    at.radio(key="w.data.orientation").set_value("cells_x_genes")
    at.run()
    at.button(key="w.data.load_file").click().run()
    assert not at.error, [e.value for e in at.error]
    assert metric(at, "Cells") == "30" and metric(at, "Detected kind") == "counts"
    assert "kind" in at.session_state["dhaka.dataset"].obs.columns


def test_bad_uploads_show_the_problem_and_keep_the_previous_dataset(env, tmp_path):
    from tests.badfiles import EXPECTED, LOADS_OK, make_bad_corpus, message_ok

    at = new_app()
    before = at.session_state["dhaka.dataset_info"]["key"]
    corpus = make_bad_corpus(tmp_path)
    checked = 0
    allowed = tuple(at.file_uploader(key="w.data.file").allowed_type)
    for name, path in corpus.items():
        keywords, kwargs = EXPECTED[name]
        if name in LOADS_OK or kwargs or not path.name.endswith(allowed):  # the UI passes no read() options
            continue
        at.file_uploader(key="w.data.file").set_value((path.name, path.read_bytes(), "application/octet-stream"))
        at.run()
        at.button(key="w.data.load_file").click().run()
        assert not at.exception, (name, [e.value for e in at.exception])
        errors = [e.value for e in at.error]
        assert len(errors) == 1 and errors[0].startswith("Could not read the file: "), (name, errors)
        assert path.name in errors[0], (name, errors[0])  # the message names the file
        assert message_ok(name, errors[0]), (name, errors[0])
        assert at.session_state["dhaka.dataset_info"]["key"] == before, name
        assert metric(at, "Cells") == "200"
        checked += 1
    assert checked >= 25


# --------------------------------------------------------------- Train page
def test_train_page_before_training_invites_to_start(env):
    at = new_app()
    at.switch_page("pages/train.py").run()
    assert not at.exception
    assert any("No training yet" in i.value for i in at.info)
    assert at.number_input(key="w.train.epochs").value == 15  # fast demo defaults
    assert at.selectbox(key="w.train.structure").value == "Paper shallow (1024)"


def test_training_finishes_and_is_collected(trained):
    at, job = trained
    snap = job.snapshot()
    n_fits = len(at.session_state["dhaka.estimator"].refinement_)  # refine="auto": up to 3 fits
    assert snap["status"] == "done" and len(snap["history"]) == 2 * n_fits
    assert [r["start"] for r in snap["history"]] == [i // 2 for i in range(2 * n_fits)]  # one pass after another
    assert {"loss", "reconstruction", "kl"} <= set(snap["history"][0])
    assert at.session_state["dhaka.latent"].shape == (200, 3)
    assert at.session_state["dhaka.clusters"].shape == (200,)
    assert at.session_state["dhaka.result_info"]["run_id"] == snap["progress"]["run_id"]
    assert any(f"Finished: {2 * n_fits} epochs" in s.value for s in at.success)
    assert len(at.get("plotly_chart")) == 1  # the loss curves


def test_train_page_corrects_for_a_chosen_batch_column(env):
    at = new_app()
    at.switch_page("pages/train.py").run()
    box = at.selectbox(key="w.train.batch_key")
    assert box.value == "(none)" and "group" in box.options  # the demo's categorical obs columns
    box.set_value("group").run()
    at.number_input(key="w.train.epochs").set_value(1).run()
    at.button(key="w.train.start").click().run()
    assert not at.error, [e.value for e in at.error]
    assert at.session_state["dhaka.job"].wait(120)
    at.run()
    assert not at.exception, [e.value for e in at.exception]
    est = at.session_state["dhaka.estimator"]
    assert est.batch_categories_ == sorted(set(at.session_state["dhaka.dataset"].obs["group"].astype(str)))


def test_paper_preset_fills_the_form(env):
    from dhaka.estimator import PRESETS

    at = new_app()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="w.train.preset").set_value("paper").run()
    at.button(key="w.train.apply_preset").click().run()
    assert not at.exception and not at.error
    params = at.session_state["dhaka.train_params"]
    for k in ("lr", "batch_size", "epochs", "likelihood", "scale", "kl_warmup", "patience", "batch_norm"):
        assert params[k] == PRESETS["paper"][k], k
    assert at.selectbox(key="w.train.structure").value == "Paper deep (1024-512-256)"
    assert at.session_state["dhaka.preprocess"]["relative"] is False


def test_custom_structure_is_validated(env):
    at = new_app()
    at.switch_page("pages/train.py").run()
    at.selectbox(key="w.train.structure").set_value("Custom layer list").run()
    at.text_input(key="w.train.custom").set_value("64, abc").run()
    assert any("Layer widths" in e.value for e in at.error)
    assert at.button(key="w.train.start").disabled
    at.text_input(key="w.train.custom").set_value("64,16").run()
    assert not at.error
    assert at.session_state["dhaka.train_params"]["structure"] == [64, 16]


def test_stop_ends_training_and_keeps_the_model(env):
    at = new_app()
    at.switch_page("pages/train.py").run()
    at.number_input(key="w.train.epochs").set_value(2000).run()
    at.button(key="w.train.start").click().run()
    job = at.session_state["dhaka.job"]
    deadline = time.time() + 300
    while time.time() < deadline and not job.snapshot()["history"]:
        time.sleep(0.2)
    assert job.snapshot()["history"], "no epoch reported within 300 s"
    at.run()
    assert any('role="progressbar"' in m.value for m in at.markdown), "progress bar while running"
    at.button(key="w.train.stop").click().run()
    assert job.wait(60)
    at.run()
    snap = job.snapshot()
    assert snap["status"] == "cancelled" and 0 < len(snap["history"]) < 2000
    assert job.result.status == "stopped"
    assert at.session_state["dhaka.estimator"] is not None
    assert any("Stopped after" in w.value for w in at.warning)
    assert at.number_input(key="w.train.epochs").value == 2000  # the form is back as it was set


def test_sessions_do_not_see_each_other(trained):
    other = new_app()
    assert other.session_state["dhaka.job"] is None
    assert other.session_state["dhaka.session_id"] != trained[0].session_state["dhaka.session_id"]
    other.switch_page("pages/train.py").run()
    assert any("No training yet" in i.value for i in other.info)


# ------------------------------------------------------------- Explore page
def test_explore_requires_a_model(env):
    at = new_app()
    at.switch_page("pages/explore.py").run()
    assert any("Train a model" in i.value for i in at.info)


def test_explore_shows_latent_clusters_scores_and_downloads(trained):
    at, _ = trained
    at.switch_page("pages/explore.py").run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    charts = at.get("plotly_chart")
    assert len(charts) >= 2  # latent 3-D + BIC curve
    scores = at.dataframe[0].value
    assert "Dhaka" in scores.index and {"silhouette", "ari", "nmi"} <= set(scores.columns)
    labels = {b.label for b in at.get("download_button")}
    assert {"Latent + clusters (CSV)", "AnnData (.h5ad)", "Model (.zip)", "Figure as HTML"} <= labels
    # colour by a metadata column and by a gene: no recomputation, no error
    at.selectbox(key="w.colour").set_value("obs: group").run()
    at.selectbox(key="w.colour").set_value("Gene expression").run()
    assert not at.exception and not at.error


def wait_for_views(at: AppTest, timeout: float = 240.0) -> None:
    """Wait for the background comparison views of the result in use, then rerun to show them."""
    views = at.session_state["dhaka.views_job"]
    assert views is not None, "no background views were started after training"
    assert views[0].wait(timeout), "the comparison views did not finish"
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_views_are_computed_in_the_background_and_scored(trained):
    at, _ = trained
    at.switch_page("pages/explore.py").run()
    wait_for_views(at)
    assert not at.error, [e.value for e in at.error]
    emb = at.session_state["dhaka.embeddings"]
    assert {k: v.shape for k, v in emb.items()} == {"pca_2d": (200, 2), "tsne_2d": (200, 2), "umap_2d": (200, 2)}
    assert {c.key for c in at.get("plotly_chart")} == {"fig_dhaka", "fig_pca_2d", "fig_tsne_2d", "fig_umap_2d",
                                                       "fig_bic", "w.ann.sel.chart"}  # + the annotation lasso view
    assert {"Dhaka", "PCA 2D", "t-SNE 2D", "UMAP 2D"} <= set(at.dataframe[0].value.index)
    # switching the colour keeps the embeddings (no recomputation needed)
    before = emb["pca_2d"]
    at.selectbox(key="w.colour").set_value("obs: group").run()
    assert at.session_state["dhaka.embeddings"]["pca_2d"] is before
    # 3-D views are computed on demand
    at.segmented_control(key="w.exp.dims").set_value(3).run()
    at.button(key="w.exp.compute.pca_3d").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["dhaka.embeddings"]["pca_3d"].shape == (200, 3)


def test_k_override_changes_the_clusters_in_use(trained):
    at, _ = trained
    at.switch_page("pages/explore.py").run()
    at.selectbox(key="w.exp.k").set_value(3).run()
    assert not at.exception
    assert at.session_state["dhaka.cluster_k"] <= 3
    assert len(np.unique(at.session_state["dhaka.clusters"])) == at.session_state["dhaka.cluster_k"]
    at.selectbox(key="w.exp.k").set_value("BIC").run()


def test_download_files_are_valid(trained, tmp_path):
    import anndata

    from dhaka.estimator import Dhaka
    from dhaka.ui import tasks

    at, _ = trained
    ss = at.session_state
    Z, labels, adata = ss["dhaka.latent"], ss["dhaka.clusters"], ss["dhaka.dataset"]
    names = [str(o) for o in adata.obs_names]
    df = pd.read_csv(io.BytesIO(tasks.latent_csv_bytes(Z, names, labels=labels)))
    assert len(df) == 200 and {"dhaka_1", "dhaka_2", "dhaka_3", "cluster"} <= set(df.columns)
    np.testing.assert_allclose(df[["dhaka_1", "dhaka_2", "dhaka_3"]].to_numpy(), Z, rtol=1e-5, atol=1e-6)

    pca = np.zeros((200, 2), dtype=np.float32)
    path = tmp_path / "out.h5ad"
    path.write_bytes(tasks.h5ad_bytes(adata, latent=Z, labels=labels, embeddings={"pca_2d": pca}))
    back = anndata.read_h5ad(path)
    assert back.obsm["X_dhaka"].shape == (200, 3) and back.obsm["X_pca"].shape == (200, 2)
    assert "dhaka_cluster" in back.obs and back.n_vars == adata.n_vars

    data = tasks.model_zip_bytes(ss["dhaka.estimator"])
    with zipfile.ZipFile(io.BytesIO(data)) as zf:
        assert {"config.json", "weights.safetensors"} <= set(zf.namelist())
        zf.extractall(tmp_path / "model")
    est = Dhaka.load(tmp_path / "model")
    np.testing.assert_allclose(est.transform(adata), Z, rtol=1e-4, atol=1e-4)


# ---------------------------------------------------------------- Runs page
def test_runs_page_lists_opens_compares_and_deletes(trained):
    at, job = trained
    run_id = job.snapshot()["progress"]["run_id"]
    at.switch_page("pages/runs.py").run()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert run_id in table.index and table.loc[run_id, "status"] == "done"

    # open the run into a fresh session: the demo is loaded and the latent space restored
    other = new_app(at.query_params["owner"])  # the same person in another tab (same address)
    other.switch_page("pages/runs.py").run()
    other.selectbox(key="w.runs.sel").set_value(run_id).run()
    other.button(key="w.runs.open").click().run()
    assert not other.exception, [e.value for e in other.exception]
    np.testing.assert_allclose(other.session_state["dhaka.latent"], at.session_state["dhaka.latent"], atol=1e-5)
    assert other.session_state["dhaka.result_info"]["run_id"] == run_id

    # a second run to compare with, then delete it with confirmation
    job2 = train(other, epochs=1)
    run2 = job2.snapshot()["progress"]["run_id"]
    other.switch_page("pages/runs.py").run()
    assert other.selectbox(key="w.runs.a").value != other.selectbox(key="w.runs.b").value
    assert len(other.get("plotly_chart")) >= 2  # two latent plots side by side
    other.selectbox(key="w.runs.sel").set_value(run2).run()
    other.button(key="w.runs.delete").click().run()
    assert any(f"Delete run {run2}" in w.value for w in other.warning)
    other.button(key="w.runs.confirm").click().run()
    from dhaka.runs import RunStore

    ids = [i.id for i in RunStore().list(admin=True)]
    assert run2 not in ids and run_id in ids


def test_interrupted_run_is_listed_and_its_checkpoint_opens(env):
    """A run whose writer died mid-training lists as interrupted; its checkpoint opens into Explore."""
    from dhaka.estimator import Dhaka
    from dhaka.runs import RunStore
    from dhaka.ui import demos, tasks

    adata, _ = demos.load("paper")
    est = Dhaka(structure="shallow", epochs=1, batch_size=64, kl_warmup=0, val_fraction=0.0, patience=None)
    est.fit(adata)
    from dhaka.ui import owner

    token = owner.new_token()
    run = RunStore().create(settings=est.get_params(), owner=owner.key_for_token(token),
                            data={"name": demos.get("paper").title, "fingerprint": tasks.data_fingerprint(adata)})
    run.write_checkpoint(est.save, 1)
    run.close()  # the writer goes away without finishing: what a server crash leaves behind

    at = new_app(token)
    at.switch_page("pages/runs.py").run()
    assert at.dataframe[0].value.loc[run.id, "status"] == "interrupted"
    at.selectbox(key="w.runs.sel").set_value(run.id).run()
    assert any("interrupted" in w.value and "checkpoint of epoch 1" in w.value for w in at.warning)
    at.button(key="w.runs.open").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    assert at.session_state["dhaka.result_info"]["run_id"] == run.id
    np.testing.assert_allclose(at.session_state["dhaka.latent"], est.transform(adata), atol=1e-4)


def test_failures_show_a_message_never_a_traceback(trained, monkeypatch):
    from dhaka import plots
    from dhaka.ui import color

    at, _ = trained
    at.switch_page("pages/explore.py").run()

    def boom(*args, **kwargs):
        raise ValueError("colour vector broken")

    monkeypatch.setattr(plots, "scatter", boom)  # a library call guarded by the page
    at.run()
    assert not at.exception
    assert any("Dhaka latent space: colour vector broken" in e.value for e in at.error)

    monkeypatch.undo()
    monkeypatch.setattr(color, "color_control", boom)  # anything else: the app-level guard
    monkeypatch.setenv("DHAKA_RAISE_ERRORS", "0")  # as served (the tests' default re-raises)
    at.run()
    assert not at.exception
    assert any("Something went wrong on this page: colour vector broken" in e.value for e in at.error)
    monkeypatch.undo()
    at.run()
    assert not at.exception and not at.error


@pytest.mark.parametrize("key,truth,log_step", [("oligodendroglioma", "cell_type", "log2(x+1)"),
                                                ("pbmc68k_reduced", "bulk_labels", None),
                                                ("trajectory", "branch", "Pearson residuals"),
                                                ("cnv_pair", "clone", None)])
def test_other_demos_load_with_their_truth(env, key, truth, log_step):
    """Each demo's truth column is picked, and the Data page names the value step its values get: Pearson
    residuals on raw counts (trajectory, no log), log2(x+1) on TPM-like values, none on log values or copy number,
    whose bins it says are trimmed."""
    from dhaka.ui import demos

    if not demos.get(key).is_available:
        pytest.skip(f"{key} is not shipped in assets/data")
    at = new_app()
    at.selectbox(key="w.data.demo").set_value(key).run()
    at.button(key="w.data.load_demo").click().run()
    assert not at.exception and not at.error, [e.value for e in at.error]
    adata = at.session_state["dhaka.dataset"]
    assert metric(at, "Cells") == f"{adata.n_obs:,}"
    assert at.session_state["dhaka.truth_column"] == truth
    summary = [s.value for s in at.success if "Training matrix" in s.value]
    assert summary, [s.value for s in at.success]
    if log_step is None or log_step.startswith("Pearson"):
        assert "log2" not in summary[0] and "normalise" not in summary[0], summary[0]
    if log_step is not None:
        assert log_step in summary[0]
    if key == "cnv_pair":  # copy number: bins, trimmed per bin (winsorize="auto"), not logged
        assert "bins" in summary[0] and "2-98 %" in summary[0], summary[0]
    else:
        assert "genes" in summary[0] and "trim" not in summary[0], summary[0]


def test_settings_summary_names_every_training_setting_and_special_values():
    from dhaka.params import PARAMS, defaults
    from dhaka.ui import forms

    line = forms.settings_summary({**defaults(), "structure": [512, 128], "clip_norm": None, "patience": 30})
    text = line.replace("\\", "")  # Markdown escapes
    assert "encoder: custom layer list (512-128)" in text
    assert "clip norm: no gradient clipping" in text and "patience (epochs): 30" in text
    for p in PARAMS:
        if p.group in ("network", "training") and p.name != "structure":
            assert p.label.lower() + ":" in text
    assert "optimizer" not in text  # an advanced setting at its default is left out
