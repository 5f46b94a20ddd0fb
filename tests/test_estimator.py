from __future__ import annotations

import json
import threading
import warnings

import anndata as ad
import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from sklearn.base import clone
from sklearn.metrics import adjusted_rand_score
from sklearn.mixture import GaussianMixture
from sklearn.utils.estimator_checks import parametrize_with_checks

from dhaka import Dhaka

FAST = dict(epochs=30, structure=(32,), seed=0, kl_warmup=5, patience=10, n_starts=1)


def _adata(X, y=None):
    a = ad.AnnData(X, obs=pd.DataFrame(index=[f"c{i}" for i in range(X.shape[0])]),
                   var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))
    if y is not None:
        a.obs["group"] = pd.Categorical(y)
    return a


@parametrize_with_checks([Dhaka(epochs=1, structure=(8,), n_genes=None, device="cpu", n_starts=1)])
def test_sklearn_contract(estimator, check):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        check(estimator)


@pytest.mark.parametrize("kind", ["dense", "sparse", "anndata"])
def test_fit_transform_finds_known_groups(blobs_counts, kind):
    X, y = blobs_counts
    data = {"dense": X, "sparse": sp.csr_matrix(X), "anndata": _adata(sp.csr_matrix(X), y)}[kind]
    est = Dhaka(**FAST)
    Z = est.fit_transform(data)
    assert Z.shape == (X.shape[0], 3) and np.isfinite(Z).all()
    # raw counts take Pearson residuals by default (no normalise / log steps)
    assert est.input_kind_.kind == "counts" and est.preprocessor_.pearson and not (est.normalize_ or est.log_)
    labels = GaussianMixture(3, random_state=0, n_init=3).fit_predict(Z)
    assert adjusted_rand_score(y, labels) > 0.8
    assert len(est.history_) >= 1 and {"loss", "reconstruction", "kl"} <= set(est.history_[0])


def test_transform_aligns_genes_by_name(blobs_counts):
    X, y = blobs_counts
    a = _adata(X, y)
    est = Dhaka(**{**FAST, "epochs": 3, "n_genes": 40}).fit(a)
    assert len(est.genes_) == 40 and all(g.startswith("g") for g in est.genes_)
    Z = est.transform(a)
    shuffled = a[:, np.random.default_rng(0).permutation(a.n_vars)].copy()
    np.testing.assert_allclose(est.transform(shuffled), Z, rtol=1e-4, atol=1e-5)
    dropped = a[:, [g for g in a.var_names if g != est.genes_[0]]].copy()
    S, missing = est.align(dropped)
    assert missing == [est.genes_[0]] and S.shape == (a.n_obs, 40)
    with pytest.warns(UserWarning, match="1 of 40 selected features are missing"):
        est.transform(dropped)
    other = _adata(X)
    other.var_names = [f"x{j}" for j in range(X.shape[1])]
    with pytest.raises(ValueError, match="none of the model's selected features"):
        est.transform(other)


def test_transform_without_names_checks_width(blobs_counts):
    X, _ = blobs_counts
    est = Dhaka(**{**FAST, "epochs": 2}).fit(X)
    with pytest.raises(ValueError, match="features"):
        est.transform(X[:, :10])


def test_save_load_round_trip_and_safe_format(blobs_counts, tmp_path):
    X, y = blobs_counts
    a = _adata(X, y)
    est = Dhaka(**{**FAST, "epochs": 3}).fit(a)
    path = est.save(tmp_path / "model")
    assert sorted(p.name for p in path.iterdir()) == sorted(
        ["config.json", "weights.safetensors", "genes.txt", "preprocess.json", "history.json"])
    cfg = json.loads((path / "config.json").read_text())
    assert cfg["params"]["seed"] == 0 and cfg["params"]["epochs"] == 3 and "torch_version" in cfg
    est2 = Dhaka.load(path)
    np.testing.assert_allclose(est2.transform(a), est.transform(a), rtol=1e-5, atol=1e-6)
    assert est2.get_params() == est.get_params() and est2.genes_ == est.genes_
    with pytest.raises(FileExistsError, match="overwrite=True"):  # never silently replaced
        est.save(path)
    est.save(path, overwrite=True)  # replacing an existing model directory when asked works
    (path / "evil.pkl").write_bytes(b"cos\nsystem\n")
    with pytest.raises(ValueError, match="evil.pkl"):
        Dhaka.load(path)


def test_warm_starts_keep_the_best_silhouette(blobs_counts):
    X, _ = blobs_counts
    est = Dhaka(**{**FAST, "epochs": 4, "n_starts": 2, "start_criterion": "silhouette"}).fit(X)
    scores = est.start_scores_
    assert [s["start"] for s in scores] == [0, 1] and sum(s["kept"] for s in scores) == 1
    kept = scores[est.best_start_]
    assert kept["kept"] and all(kept["silhouette"] >= s["silhouette"] for s in scores if np.isfinite(s["silhouette"]))


def test_warm_starts_keep_the_call_the_others_agree_with(blobs_counts):
    X, _ = blobs_counts
    est = Dhaka(**{**FAST, "epochs": 4, "n_starts": 3}).fit(X)
    scores = est.start_scores_
    assert est.start_criterion == "agreement" and len(est.start_calls_) == 3
    agree = [s["agreement"] for s in scores]
    assert all(a is not None and -1 <= a <= 1 for a in agree)
    assert scores[est.best_start_]["kept"] and agree[est.best_start_] == max(agree)


def test_choose_start_is_the_medoid_of_the_calls():
    from dhaka.clusterers import agreement, choose_start

    a, b = np.repeat([0, 1, 2], 10), np.repeat([0, 1], 15)
    calls = [b, a, a.copy(), None]  # start 0 disagrees, start 3 has no call
    scores = [{"silhouette": 0.9}, {"silhouette": 0.1}, {"silhouette": 0.2}, {"silhouette": float("nan")}]
    assert np.isnan(agreement(calls)[3]) and agreement(calls)[1] == agreement(calls)[2] > agreement(calls)[0]
    assert choose_start(scores, calls, "agreement") == 2  # tie between 1 and 2: the better silhouette
    assert choose_start(scores, calls, "silhouette") == 0
    assert choose_start(scores[:2], calls[:2], "agreement") == 0  # two starts agree equally: silhouette decides
    with pytest.raises(ValueError, match="start_criterion"):
        choose_start(scores, calls, "loss")


def test_callback_and_stop_event_through_fit(blobs_counts):
    X, _ = blobs_counts
    stop = threading.Event()
    seen = []

    def cb(r):
        seen.append(r)
        if r.epoch == 2:
            stop.set()

    est = Dhaka(**{**FAST, "epochs": 50, "n_starts": 3}).fit(X, callback=cb, stop_event=stop)
    assert est.stopped_ and len(seen) == 2 and len(est.start_scores_) == 1
    # passes of the whole fit: 2 gene-refinement fits (refine="auto") + the 3 warm starts
    assert seen[0].n_starts == 5 and seen[0].start == 0 and seen[0].stage.startswith("fit 1/3")
    assert seen[0].eta > seen[0].elapsed / seen[0].epoch * (seen[0].n_epochs - seen[0].epoch)  # ETA of all passes
    assert len(est.refinement_) == 1  # stopped during the first fit: no refinement happened
    assert est.transform(X).shape == (X.shape[0], 3)


def test_checkpoints_are_loadable_models(blobs_counts, tmp_path):
    X, _ = blobs_counts
    saved = []

    def checkpoint(save_fn, epoch):
        d = tmp_path / f"ck{epoch}"
        save_fn(d)
        saved.append(d)

    est = Dhaka(**{**FAST, "epochs": 4, "patience": None}).fit(X, checkpoint=checkpoint, checkpoint_every=2)
    assert [d.name for d in saved] == ["ck2", "ck4"]
    assert Dhaka.load(saved[-1]).transform(X).shape == (X.shape[0], 3)
    assert est.get_params()["epochs"] == 4


def test_cnv_mode_uses_states_as_given():
    rng = np.random.default_rng(0)
    X = np.repeat(rng.integers(1, 4, size=(2, 50)), 30, axis=0).astype(np.float32)
    X += rng.integers(-1, 2, size=X.shape) * (rng.random(X.shape) < 0.05)
    est = Dhaka(mode="cnv", **{**FAST, "epochs": 5}).fit(X)
    assert not est.normalize_ and not est.log_ and len(est.genes_) == 50


def test_bad_parameters_and_inputs_name_the_problem(blobs_counts):
    X, _ = blobs_counts
    with pytest.raises(ValueError, match="mode"):
        Dhaka(mode="protein").fit(X)
    with pytest.raises(ValueError, match="structure"):
        Dhaka(structure="huge").fit(X)
    with pytest.raises(ValueError, match="n_starts"):
        Dhaka(n_starts=0).fit(X)
    bad = X.copy()
    bad[0, 0] = np.nan
    with pytest.raises(ValueError, match="NaN"):
        Dhaka(**FAST).fit(bad)
    neg = np.log2(X + 1) - 3
    with pytest.raises(ValueError, match="non-negative"):
        Dhaka(**{**FAST, "normalize": True}).fit(neg)


def test_presets_and_clone():
    paper = Dhaka.from_preset("paper")
    assert paper.likelihood == "bernoulli" and paper.structure == "deep" and paper.kl_warmup == 0
    assert Dhaka.from_preset("paper", lr=1e-3).lr == 1e-3
    with pytest.raises(ValueError, match="unknown preset"):
        Dhaka.from_preset("magic")
    assert clone(Dhaka(seed=7)).get_params()["seed"] == 7


def test_preview_reports_matrix_size(blobs_counts):
    X, _ = blobs_counts
    p = Dhaka(n_genes=25).preview(X)
    assert p["n_cells"] == 120 and p["n_selected"] == 25 and p["input_kind"] == "counts"


def test_auto_batch_size():
    est = Dhaka()
    assert est.resolved_batch_size(500) == 64 and est.resolved_batch_size(4347) == 512
    assert est.resolved_batch_size(100) == 32
    assert Dhaka(batch_size=100).resolved_batch_size(10) == 100


def test_encoder_reads_through_principal_axes_sparse_and_dense(blobs_counts):
    X, _ = blobs_counts
    dense = Dhaka(**{**FAST, "epochs": 1, "encoder_pcs": 10}).fit(X)
    sparse = Dhaka(**{**FAST, "epochs": 1, "encoder_pcs": 10}).fit(sp.csr_matrix(X))
    A, B = dense.model_.projection.numpy(), sparse.model_.projection.numpy()
    assert A.shape == (60, 10)
    np.testing.assert_allclose(A.T @ A, np.eye(10), atol=1e-4)  # orthonormal axes
    np.testing.assert_allclose(np.abs((A * B).sum(0)), 1.0, atol=1e-3)  # same axes up to sign
    # the first axis is the direction of largest variance of the model's centred, scaled input
    S, _ = dense.align(X)
    C = (S - dense.model_.center.numpy()) / dense.model_.scale.numpy()
    var = np.var(C @ A, axis=0)
    assert np.all(np.diff(var) <= 1e-6 * var[0])
    assert Dhaka(**{**FAST, "epochs": 1, "encoder_pcs": None}).fit(X).model_.n_pcs is None


def test_gene_refinement_keeps_the_genes_the_latent_explains(tmp_path):
    from dhaka import simulate

    a = simulate.paper(n_cells=200, n_groups=4, n_genes=800, n_noise=600, effect=1.5, seed=0)
    informative = set(a.var_names[a.var["informative"].to_numpy()])  # 200 of the 800
    est = Dhaka(**{**FAST, "epochs": 40}).fit(a)
    first, *rest = est.refinement_
    assert first["genes"] == 800 and first["n_significant"] > 0 and rest  # refined at least once
    precision = np.mean([g in informative for g in est.genes_])
    assert precision > 0.6, f"only {precision:.0%} of the refined genes are informative (25% of all are)"
    assert len(est.genes_) == est.refinement_[-1]["genes"] < 800
    Z = est.transform(a)
    again = Dhaka.load(est.save(tmp_path / "m"))
    assert again.refinement_ == json.loads(json.dumps(est.refinement_, default=float))
    np.testing.assert_allclose(again.transform(a), Z, atol=1e-5)
    plain = Dhaka(**{**FAST, "epochs": 40, "refine": 0}).fit(a)
    assert len(plain.refinement_) == 1 and len(plain.genes_) == 800


def _epochs_per_stage(est, X):
    seen: dict[str, int] = {}
    est.fit(X, callback=lambda r: seen.__setitem__(r.stage, max(seen.get(r.stage, 0), r.epoch)))
    return seen


def test_refine_epochs_shortens_the_gene_choosing_fits_only(blobs_counts, monkeypatch):
    X, _ = blobs_counts
    kw = {**FAST, "epochs": 6, "patience": None, "refine": 2, "refine_epochs": 2}
    picks = iter([np.arange(40), np.arange(30)])  # each round a new selection: three fits
    with monkeypatch.context() as m:
        m.setattr(Dhaka, "_refined_genes", lambda self, P, S, n, batch=None: {
            "n_significant": 1, "r2_threshold": 0.1, "indices": next(picks)})
        seen = _epochs_per_stage(Dhaka(**kw), X)
    assert [seen[k] for k in sorted(seen)] == [2, 2, 6], seen  # fit 1/3, fit 2/3: 2 epochs; the last: all 6
    assert set(_epochs_per_stage(Dhaka(**{**kw, "refine_epochs": None}), X).values()) == {6}
    # a shortened fit whose selection is final (nothing significant) is not the model kept: the last fit
    # runs in full on the same genes
    monkeypatch.setattr(Dhaka, "_refined_genes", lambda self, P, S, n, batch=None: {
        "n_significant": 0, "r2_threshold": 1.0, "indices": None})
    est = Dhaka(**kw)
    seen = _epochs_per_stage(est, X)
    assert [seen[k] for k in sorted(seen)] == [2, 6], seen
    assert est.refinement_[0]["converged"] and est.refinement_[1]["selected_by"] == "unchanged"
    assert len(est.history_) == 6


@pytest.mark.parametrize("bad", [0, -3, 2.5, True, "auto"])
def test_refine_epochs_must_be_none_or_positive(bad, blobs_counts):
    X, _ = blobs_counts
    with pytest.raises(ValueError, match="refine_epochs"):
        Dhaka(**{**FAST, "refine_epochs": bad}).fit(X)


@pytest.mark.parametrize("bad", [-1, 1.5, "always", True])
def test_refine_must_be_auto_or_rounds(bad, blobs_counts):
    X, _ = blobs_counts
    with pytest.raises(ValueError, match="refine"):
        Dhaka(**{**FAST, "refine": bad}).fit(X)


def test_models_saved_before_the_preprocessor_still_load(blobs_counts, tmp_path):
    """A preprocess.json of the first format (steps only) is rebuilt from config.json and the weights."""
    X, y = blobs_counts
    a = _adata(sp.csr_matrix(X), y)
    est = Dhaka(**{**FAST, "epochs": 2, "n_genes": 30, "refine": 0, "value_transform": "log"}).fit(a)
    path = est.save(tmp_path / "model")
    pre = json.loads((path / "preprocess.json").read_text())
    assert pre["format"] == "dhaka-preprocessor/1" and len(pre["gene_indices"]) == 30
    old = {k: pre[k] for k in ("input_kind", "normalize", "log", "target_sum")}
    (path / "preprocess.json").write_text(json.dumps(old))
    again = Dhaka.load(path)
    np.testing.assert_allclose(again.transform(a), est.transform(a), rtol=1e-5, atol=1e-6)
    p0, p1 = est.preprocessor_, again.preprocessor_
    assert p1.settings() == p0.settings() and p1.target_sum_ == p0.target_sum_
    np.testing.assert_array_equal(p1.gene_indices_, p0.gene_indices_)
    np.testing.assert_array_equal(p1.center_, p0.center_)
    assert again.input_kind_ == est.input_kind_ and list(again.gene_indices_) == list(est.gene_indices_)


def test_fit_on_prepared_rows_equals_fit_on_the_matrix(blobs_counts):
    """Dhaka.fit takes rows a fitted Preprocessor produced (the out-of-core path's entry)."""
    from dhaka.preprocess import PreparedRows

    X, _ = blobs_counts
    params = {**FAST, "epochs": 2, "n_genes": 30, "refine": 1}
    mem = Dhaka(**params).fit(X)
    pre = Dhaka(**params).make_preprocessor().fit(X)
    prepared = PreparedRows(matrix=pre.transform(X), preprocessor=pre, feature_names=None)
    est = Dhaka(**params).fit(prepared)
    assert est.prepared_ == {"in_memory": True} and est.n_features_in_ == X.shape[1]
    # refinement chooses among the prepared genes only; here they are the first fit's genes
    first = set(pre.gene_indices_.tolist())
    assert set(est.gene_indices_.tolist()) <= first
    assert est.refinement_[0]["genes"] == mem.refinement_[0]["genes"] == 30
    assert est.transform(X).shape == (X.shape[0], mem.latent_dim)
    # the prepared rows themselves transform too (the refined genes are among them)
    np.testing.assert_allclose(est.transform(prepared), est.transform(X), rtol=1e-5, atol=1e-5)


def test_the_core_estimator_does_not_import_the_run_store():
    import subprocess
    import sys
    from pathlib import Path

    code = "import sys, dhaka.estimator, dhaka.backed, dhaka.distributed; print('dhaka.runs' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         cwd=Path(__file__).resolve().parents[1])
    assert out.stdout.strip() == "False"


def _depth_counts(seed: int = 0, n: int = 300, g: int = 200, k: int = 3) -> tuple[np.ndarray, np.ndarray]:
    """Poisson counts of ``k`` groups with a 20-fold library-size spread and Splatter's depth-dependent
    dropout (a count of mean mu is zeroed with probability 1 / (1 + mu)); returns (X, log library size)."""
    rng = np.random.default_rng(seed)
    group = rng.integers(0, k, n)
    fac = np.ones((k, g))
    de = rng.random((k, g)) < 0.1
    fac[de] = np.exp(rng.normal(0.7, 0.3, de.sum()))
    props = rng.gamma(0.6, 1 / 0.3, g) * fac
    props /= props.sum(1, keepdims=True)
    mu = rng.lognormal(8.0, 0.8, n)[:, None] * props[group]
    X = rng.poisson(mu).astype(np.float32)
    X[rng.random((n, g)) < 1 / (1 + mu)] = 0
    return X, np.log(X.sum(1))


def test_library_axis_auto_keeps_library_size_out_of_the_latent():
    from dhaka.preprocess import latent_r2

    X, loglib = _depth_counts()
    kept = Dhaka(**FAST, library_axis="keep", value_transform="log").fit(X)
    assert latent_r2(loglib[:, None], kept.transform(X))[0] > 0.5  # normalise + log leaves depth in the latent
    est = Dhaka(**FAST, value_transform="log").fit(X)
    assert est.refinement_[0]["library_r2"] > 0.5
    assert est.refinement_[1]["selected_by"] == "repeated without the library axis"
    assert all(r["library_axis"] == "removed" for r in est.refinement_[1:])
    assert latent_r2(loglib[:, None], est.transform(X))[0] < 0.1
    # the default on raw counts, Pearson residuals, takes depth out of the values themselves: no axis to remove
    res = Dhaka(**FAST).fit(X)
    assert res.preprocessor_.pearson and not any("library_r2" in r for r in res.refinement_)
    assert latent_r2(loglib[:, None], res.transform(X))[0] < 0.1


def test_library_axis_auto_keeps_groups_that_differ_in_library_size():
    rng = np.random.default_rng(0)
    base = rng.gamma(2.0, 2.0, size=200)
    up = base.copy()
    up[:15] *= 6.0  # the second group has more RNA: its libraries are ~1.8x larger
    X = np.vstack([rng.poisson(base, (100, 200)), rng.poisson(up, (100, 200))]).astype(np.float32)
    y = np.repeat([0, 1], 100)
    est = Dhaka(**FAST, value_transform="log").fit(X)
    assert est.refinement_[0]["library_r2"] > 0.5 > est.refinement_[0]["library_r2_within"]
    assert not any("library_axis" in r for r in est.refinement_)
    labels = GaussianMixture(2, random_state=0).fit_predict(est.transform(X))
    assert adjusted_rand_score(y, labels) > 0.95


def test_removed_library_axis_is_left_out_of_encoder_and_decoder_and_saved(tmp_path):
    import torch

    X, loglib = _depth_counts(n=120, g=60)
    est = Dhaka(**{**FAST, "epochs": 2, "encoder_pcs": 10, "refine": 0, "library_axis": "remove",
                   "value_transform": "log"}).fit(X)
    w, V = est.model_.nuisance.numpy(), est.model_.projection.numpy()
    assert abs(np.linalg.norm(w) - 1.0) < 1e-5
    np.testing.assert_allclose(V.T @ w, 0.0, atol=1e-5)  # the encoder's axes avoid it
    S, _ = est.align(X)
    prepared = est.model_.prepare(torch.from_numpy(np.asarray(S, dtype=np.float32))).numpy()
    np.testing.assert_allclose(prepared @ w, 0.0, atol=1e-4)  # and the decoder's target has nothing along it
    C = (S - est.model_.center.numpy()) / est.model_.scale.numpy()
    # it is the library-size axis of the input: 0.78 here (0.81 under log2(x+1), whose small counts carry more of
    # the depth; the shifted log damps them), against ~0.13 for a random direction of 60 genes
    assert abs(np.corrcoef(C @ w, loglib)[0, 1]) > 0.7
    np.testing.assert_allclose(Dhaka.load(est.save(tmp_path / "m")).transform(X), est.transform(X), atol=1e-5)
    logged = Dhaka(**{**FAST, "epochs": 2, "refine": 0, "library_axis": "remove"}).fit(np.log2(X + 1))
    assert not logged.model_.nuisance_axis  # no library size to read in log input
    with pytest.raises(ValueError, match="library_axis must be"):
        Dhaka(library_axis="off").fit(X)
