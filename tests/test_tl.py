"""dhaka.tl against scanpy itself: obsm/obs/uns layout, copy semantics, h5ad round trip, the app's export."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

anndata = pytest.importorskip("anndata")
sc = pytest.importorskip("scanpy")

import dhaka  # noqa: E402
from dhaka import tl  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TINY = dict(epochs=2, structure=(16,), kl_warmup=0, patience=None, val_fraction=0.0, refine=0, encoder_pcs=None, n_starts=1)


@pytest.fixture
def adata(blobs_counts):
    X, y = blobs_counts
    a = anndata.AnnData(X=X, obs=pd.DataFrame({"group": pd.Categorical(y.astype(str))},
                                              index=[f"c{i}" for i in range(X.shape[0])]),
                        var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
    a.layers["counts"] = X.copy()
    return a


def test_writes_scanpy_layout_in_place(adata):
    assert tl.dhaka(adata, seed=1, **TINY) is None
    Z = adata.obsm["X_dhaka"]
    assert Z.shape == (adata.n_obs, 3) and Z.dtype == np.float32 and np.isfinite(Z).all()
    cl = adata.obs["dhaka_cluster"]
    assert isinstance(cl.dtype, pd.CategoricalDtype)
    assert all(isinstance(c, str) for c in cl.cat.categories)
    rec = adata.uns["dhaka"]
    assert rec["seed"] == 1 and rec["k"] == len(cl.cat.categories)
    assert len(rec["bic"]) == 10 and np.isfinite(rec["bic"][0])
    assert {"dhaka", "torch", "numpy", "python"} <= set(rec["versions"])
    assert rec["params"]["epochs"] == 2
    expected = dhaka.Dhaka(mode="expression", latent_dim=3, seed=1, **TINY).get_params()
    assert tl.params_from_uns(adata) == {**expected, "structure": [16]}  # JSON keeps a tuple as a list
    dhaka.Dhaka(**tl.params_from_uns(adata))  # the record rebuilds the estimator


def test_key_added_layer_and_latent_dim(adata):
    adata.X = np.zeros_like(adata.X)  # training on X would fail: the counts are only in the layer
    tl.dhaka(adata, key_added="dk", layer="counts", latent_dim=2, **TINY)
    assert adata.obsm["X_dk"].shape == (adata.n_obs, 2)
    assert "dk_cluster" in adata.obs and adata.uns["dk"]["layer"] == "counts"
    assert "X_dhaka" not in adata.obsm


def test_bad_inputs_name_the_problem(adata):
    with pytest.raises(KeyError, match="layer 'nope'.*counts"):
        tl.dhaka(adata, layer="nope", **TINY)
    with pytest.raises(ValueError, match="X_ prefix"):
        tl.dhaka(adata, key_added="X_dhaka", **TINY)
    with pytest.raises(TypeError, match="AnnData"):
        tl.dhaka(np.ones((5, 5)), **TINY)


def test_copy_leaves_input_untouched(adata):
    before = adata.copy()
    out = tl.dhaka(adata, copy=True, **TINY)
    assert out is not adata and "X_dhaka" in out.obsm
    assert "X_dhaka" not in adata.obsm and "dhaka" not in adata.uns and "dhaka_cluster" not in adata.obs
    np.testing.assert_array_equal(adata.X, before.X)
    assert list(adata.obs.columns) == list(before.obs.columns)


def test_scanpy_plots_and_neighbors(adata):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    tl.dhaka(adata, **TINY)
    axes = sc.pl.embedding(adata, basis="dhaka", projection="3d", color="dhaka_cluster", show=False)
    ax = axes[0] if isinstance(axes, list) else axes
    assert ax.name == "3d"
    plt.close("all")
    sc.pp.neighbors(adata, use_rep="X_dhaka", n_neighbors=10)
    assert adata.obsp["connectivities"].shape == (adata.n_obs, adata.n_obs)
    assert adata.uns["neighbors"]["params"]["use_rep"] == "X_dhaka"


def test_uns_round_trips_through_h5ad(adata, tmp_path):
    tl.dhaka(adata, **TINY)
    path = tmp_path / "a.h5ad"
    adata.write_h5ad(path)
    back = anndata.read_h5ad(path)
    np.testing.assert_array_equal(back.obsm["X_dhaka"], adata.obsm["X_dhaka"])
    assert list(back.obs["dhaka_cluster"]) == list(adata.obs["dhaka_cluster"])
    assert isinstance(back.obs["dhaka_cluster"].dtype, pd.CategoricalDtype)
    rec, orig = back.uns["dhaka"], adata.uns["dhaka"]
    assert rec["k"] == orig["k"] and rec["seed"] == orig["seed"]
    np.testing.assert_array_equal(rec["bic"], orig["bic"])
    assert dict(rec["versions"]) == dict(orig["versions"])
    assert tl.params_from_uns(back) == json.loads(orig["params_json"])
    assert rec["params"]["patience"] == "None"  # h5ad cannot store None; params_json keeps it exactly


def test_project_second_sample_aligns_genes_by_name(adata):
    model = dhaka.Dhaka(seed=0, **TINY).fit(adata)
    second = adata[:30, ::-1].copy()  # same cells' values, genes in reverse order
    tl.project(second, model, cluster=True)
    np.testing.assert_allclose(second.obsm["X_dhaka"], model.transform(adata[:30]), rtol=1e-5, atol=1e-5)
    assert second.uns["dhaka"]["projected"] and second.uns["dhaka"]["n_genes_missing"] == 0
    assert "dhaka_cluster" in second.obs

    partial = adata[:30, 5:].copy()
    with pytest.warns(UserWarning, match="missing"):
        out = tl.project(partial, model, key_added="proj", copy=True)
    assert out.uns["proj"]["n_genes_missing"] == 5 and "X_proj" not in partial.obsm
    assert "proj_cluster" not in out.obs


def test_project_needs_a_fitted_model(adata):
    from sklearn.exceptions import NotFittedError

    with pytest.raises(NotFittedError):
        tl.project(adata, dhaka.Dhaka())


def test_to_anndata_keeps_every_embedding_and_labels(adata, tmp_path):
    rng = np.random.default_rng(0)
    n = adata.n_obs
    emb = {"pca_2d": rng.normal(size=(n, 2)), "pca_3d": rng.normal(size=(n, 3)), "umap_3d": rng.normal(size=(n, 3)),
           "tsne_2d": rng.normal(size=(n, 2))}
    Z = rng.normal(size=(n, 3))
    labels = np.arange(n) % 12
    params = dhaka.Dhaka(seed=7).get_params()
    from dhaka.cluster import gmm_bic

    out = tl.to_anndata(adata, latent=Z, clusters=labels, embeddings=emb, params=params,
                        cluster_result=gmm_bic(Z, k_max=3, seed=0), annotations={"my_label": np.where(labels < 3, "T", "B")},
                        extra={"run_id": "r1"})
    assert "X_dhaka" not in adata.obsm and "my_label" not in adata.obs  # input untouched
    assert set(out.obsm) >= {"X_dhaka", "X_pca", "X_pca_3d", "X_umap", "X_tsne", "X_dhaka_dims13", "X_dhaka_dims23"}
    assert out.obsm["X_pca"].shape[1] == 2 and out.obsm["X_umap"].shape[1] == 3
    assert list(out.obs["dhaka_cluster"].cat.categories) == [str(i) for i in range(12)]  # natural order
    assert isinstance(out.obs["my_label"].dtype, pd.CategoricalDtype)
    path = tmp_path / "run.h5ad"
    out.write_h5ad(path)
    back = sc.read_h5ad(path)
    assert back.uns["dhaka"]["run_id"] == "r1" and back.uns["dhaka"]["seed"] == 7
    assert {"versions", "params", "bic", "k"} <= set(back.uns["dhaka"])
    assert list(back.obs["my_label"]) == list(out.obs["my_label"])
    sc.pl.embedding(back, basis="umap", color="my_label", show=False)
    with pytest.raises(ValueError, match="cells"):
        tl.to_anndata(adata, latent=Z[:5])


def test_app_export_uses_to_anndata(adata):
    from dhaka.ui import tasks

    Z = np.random.default_rng(0).normal(size=(adata.n_obs, 3))
    data = tasks.h5ad_bytes(adata, latent=Z, labels=np.zeros(adata.n_obs, int),
                            embeddings={"umap_2d": Z[:, :2]}, run_id="abc", params={"seed": 3, "patience": None},
                            annotations={"cell type": np.where(np.arange(adata.n_obs) < 5, "T cell", None)})
    import io

    import h5py

    with h5py.File(io.BytesIO(data), "r") as f:
        back = anndata.io.read_elem(f["uns"])["dhaka"]
        assert set(f["obsm"].keys()) >= {"X_dhaka", "X_umap"}
    assert back["run_id"] == "abc" and back["seed"] == 3 and "versions" in back
    labels = anndata.read_h5ad(io.BytesIO(data)).obs["cell type"]
    assert isinstance(labels.dtype, pd.CategoricalDtype) and list(labels.cat.categories) == ["T cell"]
    assert labels.isna().sum() == adata.n_obs - 5  # unlabelled cells stay missing, not the string "None"


def test_import_dhaka_tl_is_lazy():
    code = ("import sys, dhaka\nf = dhaka.tl.dhaka\n"
            "print(','.join(m for m in ('anndata', 'torch', 'streamlit', 'scanpy') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == ""


def test_cli_h5ad_carries_the_uns_record(adata, tmp_path):
    from dhaka.cli import main

    src = tmp_path / "counts.csv"
    pd.DataFrame(adata.X.astype(int), index=adata.obs_names, columns=adata.var_names).to_csv(src)
    h5 = tmp_path / "out.h5ad"
    assert main(["embed", str(src), "--out", str(tmp_path / "z.csv"), "--epochs", "2", "--structure", "16",
                 "--seed", "4", "--h5ad", str(h5), "--quiet"]) == 0
    back = anndata.read_h5ad(h5)
    rec = back.uns["dhaka"]
    assert rec["seed"] == 4 and tl.params_from_uns(back)["epochs"] == 2 and "torch" in rec["versions"]
    assert isinstance(back.obs["dhaka_cluster"].dtype, pd.CategoricalDtype) and "X_dhaka_dims23" in back.obsm


# ------------------------------------------------------------------ a notebook user's session (issue 28)
def test_progress_bar_and_log_lines_at_the_default_verbosity_and_none_at_zero(adata, capfd):
    from dhaka import settings

    assert settings.verbosity == 2  # the default
    sc.pp.normalize_total(adata.copy())  # scanpy in the same session
    tl.dhaka(adata, seed=0, **TINY)
    err = capfd.readouterr().err
    assert "Dhaka fit" in err and "100%" in err and "loss" in err  # the bar, with the loss
    assert "dhaka: fitting" in err and "clusters called by gmm_bic" in err  # log lines
    settings.set_verbosity(0)
    try:
        tl.dhaka(adata, seed=0, **TINY)
    finally:
        settings.set_verbosity(2)
    assert capfd.readouterr().err == ""


def test_fits_in_threads_draw_no_bar_and_leave_the_loggers_handlers_alone(adata):
    import logging
    import threading

    from dhaka.progress import fit_progress

    logger = logging.getLogger("dhaka")
    before = list(logger.handlers)
    seen = []

    def fit():
        with fit_progress(None) as cb:
            seen.append(cb)
        tl.dhaka(adata.copy(), seed=0, **TINY)

    threads = [threading.Thread(target=fit) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert seen == [None, None] and logger.handlers == before  # a bar's handler swap would race between them


def test_model_kept_saved_beside_the_h5ad_and_projected_with_label_transfer(adata, tmp_path):
    model_dir = tmp_path / "model"
    model = tl.dhaka(adata, seed=0, model_path=model_dir, return_model=True, **TINY)
    assert isinstance(model, dhaka.Dhaka) and adata.uns["dhaka"]["model_path"] == str(model_dir.resolve())
    adata.write_h5ad(tmp_path / "ref.h5ad")
    ref = anndata.read_h5ad(tmp_path / "ref.h5ad")

    second = adata[::2].copy()
    del second.obs["group"], second.obsm["X_dhaka"]
    tl.project(second, ref.uns["dhaka"]["model_path"], reference=ref, transfer="group")
    np.testing.assert_allclose(second.obsm["X_dhaka"], ref.obsm["X_dhaka"][::2], atol=1e-5)
    assert second.uns["dhaka"]["model_path"] == str(model_dir.resolve())
    truth = adata.obs["group"].astype(str).to_numpy()[::2]
    assert (second.obs["group"].astype(str).to_numpy() == truth).mean() > 0.9  # the same cells' own labels
    conf = second.obs["group_confidence"].to_numpy()
    assert conf.min() > 0 and conf.max() <= 1.0
    assert second.uns["dhaka"]["transfer"]["obs"] == "group"


def test_transfer_and_save_traps_are_named(adata, tmp_path):
    model = tl.dhaka(adata, seed=0, return_model=True, **TINY)
    with pytest.raises(ValueError, match="needs reference="):
        tl.project(adata.copy(), model, transfer="dhaka_cluster")
    with pytest.raises(ValueError, match=r"no obs\['cell_type'\]"):
        tl.project(adata.copy(), model, reference=adata, transfer="cell_type")
    taken = tmp_path / "taken"
    taken.mkdir()
    (taken / "notes.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="not an empty folder"):
        model.save(taken)
    with pytest.raises(FileExistsError, match="not an empty folder"):
        tl.dhaka(adata, seed=0, model_path=taken, **TINY)
    assert (taken / "notes.txt").read_text() == "mine"
    model.save(taken, overwrite=True)
    assert dhaka.Dhaka.load(taken).genes_ == model.genes_


def test_copy_number_is_a_name_of_the_cnv_mode(adata):
    tl.dhaka(adata, mode="copy_number", seed=0, **TINY)
    assert json.loads(adata.uns["dhaka"]["params_json"])["mode"] == "cnv"


def test_k_at_k_max_tries_a_larger_k_and_warns_only_when_still_at_the_edge():
    import warnings

    from dhaka.clusterers import GMMBIC, k_max_asked

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c * 10, 0.3, size=(40, 2)) for c in range(4)])
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # four clusters found within 2 x k_max: no warning
        res = GMMBIC(k_max=3, merge=False).fit(Z)
    assert res.k == 4 and len(res.bic) == 6 and k_max_asked(res) == 3
    with pytest.warns(UserWarning, match="k_max=3"):  # extension off: the edge is warned about
        assert GMMBIC(k_max=3, merge=False, extend=False).fit(Z).k == 3
    Z8 = np.concatenate([rng.normal(c * 10, 0.3, size=(40, 2)) for c in range(8)])
    with pytest.warns(UserWarning, match="k_max=4"):  # still at the edge of 2 x k_max
        assert GMMBIC(k_max=2, merge=False).fit(Z8).k == 4
