from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

from dhaka import preprocess as pp


def test_detect_kind_counts_log_scaled_normalized(blobs_counts):
    X, _ = blobs_counts
    assert pp.detect_kind(X).kind == "counts"
    assert pp.detect_kind(sp.csr_matrix(X)).kind == "counts"
    assert pp.detect_kind(np.log2(X + 1)).kind == "log"
    assert pp.detect_kind(np.log2(X + 1) - 1.0).kind == "scaled"
    tpm = X / X.sum(1, keepdims=True) * 1e6 + 0.5
    k = pp.detect_kind(tpm)
    assert k.kind == "normalized" and k.log and not k.normalize
    assert pp.detect_kind(X, mode="cnv").kind == "cnv"
    assert "log2" in pp.detect_kind(X).describe()


def test_normalize_and_log_keep_sparse_and_match_dense(blobs_counts):
    X, _ = blobs_counts
    S = sp.csr_matrix(X)
    Nd, t = pp.normalize_total(X)
    Ns, t2 = pp.normalize_total(S)
    assert sp.issparse(Ns) and t == t2
    np.testing.assert_allclose(Ns.toarray(), Nd, rtol=1e-5)
    np.testing.assert_allclose(pp.library_size(Nd), t, rtol=1e-4)
    Ls = pp.log2p(Ns)
    assert sp.issparse(Ls)
    np.testing.assert_allclose(Ls.toarray(), pp.log2p(Nd), rtol=1e-5)
    np.testing.assert_allclose(pp.log2p(np.array([[0.0, 1.0, 3.0]])), [[0.0, 1.0, 2.0]])


def test_relative_expression_centres_each_gene_over_cells(blobs_counts):
    X, _ = blobs_counts
    R = pp.relative_expression(sp.csr_matrix(X))
    np.testing.assert_allclose(R.mean(0), 0.0, atol=1e-4)
    np.testing.assert_allclose(R, X - X.mean(0), rtol=1e-5, atol=1e-4)


def test_column_moments_sparse_equals_dense(blobs_counts):
    X, _ = blobs_counts
    m1, v1 = pp.column_moments(X)
    m2, v2 = pp.column_moments(sp.csr_matrix(X))
    np.testing.assert_allclose(m1, m2, rtol=1e-6)
    np.testing.assert_allclose(v1, v2, rtol=1e-5, atol=1e-8)


@pytest.mark.parametrize("method", ["cv", "entropy", "mean", "variance", "dispersion"])
def test_select_genes_methods(blobs_counts, method):
    X, _ = blobs_counts
    idx = pp.select_genes(X, n_genes=10, method=method)
    assert idx.shape == (10,) and np.all(np.diff(idx) > 0)
    np.testing.assert_array_equal(idx, pp.select_genes(sp.csr_matrix(X), n_genes=10, method=method))
    assert len(pp.select_genes(X, n_genes=None)) == X.shape[1]


def test_select_by_mean_picks_the_highest_mean_genes():
    X = np.tile(np.arange(1, 9, dtype=np.float32), (20, 1)) + np.random.default_rng(0).random((20, 8))
    np.testing.assert_array_equal(pp.select_genes(X, n_genes=3, method="mean"), [5, 6, 7])


def test_cv_skips_genes_seen_in_one_cell():
    rng = np.random.default_rng(1)
    X = rng.poisson(5, size=(50, 6)).astype(np.float32)
    X[:, 0] = 0
    X[3, 0] = 100  # maximal CV, but detected in a single cell
    assert 0 not in pp.select_genes(X, n_genes=3, method="cv")


def test_entropy_of_constant_gene_is_zero_and_uniform_is_high():
    X = np.zeros((100, 2))
    X[:, 1] = np.arange(100)
    ent = pp.gene_scores(X, method="entropy")
    assert ent[0] == 0 and ent[1] > 4


def test_inject_dropout_fraction_and_seed(blobs_counts):
    X, _ = blobs_counts
    nz_before = np.count_nonzero(X, axis=1)
    Y = pp.inject_dropout(X, fraction=0.3, seed=5)
    nz_after = np.count_nonzero(Y, axis=1)
    np.testing.assert_array_equal(nz_after, nz_before - np.round(0.3 * nz_before).astype(int))
    assert np.all((Y == 0) | (Y == X))
    np.testing.assert_array_equal(Y, pp.inject_dropout(X, fraction=0.3, seed=5))
    assert not np.array_equal(Y, pp.inject_dropout(X, fraction=0.3, seed=6))
    Ys = pp.inject_dropout(sp.csr_matrix(X), fraction=0.3, seed=5)
    assert sp.issparse(Ys) and Ys.nnz == nz_after.sum()
    with pytest.raises(ValueError, match="fraction"):
        pp.inject_dropout(X, fraction=1.5)


def test_dropout_fraction_counts_explicit_zeros():
    S = sp.csr_matrix(np.array([[1.0, 0.0], [0.0, 0.0], [2.0, 3.0], [4.0, 0.0]]))
    S.data[0] = 0.0  # an explicitly stored zero
    np.testing.assert_allclose(pp.dropout_fraction(S), [0.5, 0.75])
    np.testing.assert_allclose(pp.dropout_fraction(S.toarray()), [0.5, 0.75])


def _latent_driven(n=300, n_signal=20, n_noise=400, seed=0):
    rng = np.random.default_rng(seed)
    Z = rng.normal(size=(n, 3))
    W = rng.normal(size=(3, n_signal))
    X = np.hstack([Z @ W + 0.5 * rng.normal(size=(n, n_signal)), rng.normal(size=(n, n_noise))])
    return (X + 5.0).astype(np.float32), Z


def test_latent_r2_sparse_equals_dense_and_is_a_fraction():
    X, Z = _latent_driven()
    X[X < 4.5] = 0.0
    dense = pp.latent_r2(X, Z)
    sparse = pp.latent_r2(sp.csr_matrix(X), Z)
    np.testing.assert_allclose(dense, sparse, atol=1e-6)
    assert ((dense >= 0) & (dense <= 1)).all()
    assert dense[:20].min() > dense[20:].max()  # latent-driven genes explain more than any noise gene


def test_select_by_latent_finds_the_latent_driven_genes_and_few_others():
    X, Z = _latent_driven()
    sel = pp.select_by_latent(X, Z, alpha=0.01, min_genes=1)
    assert set(range(20)) <= set(sel.indices.tolist())
    assert sel.n_significant <= 22  # alpha = 0.01 family-wise: at most a stray noise gene or two
    assert np.all(np.diff(sel.indices) > 0)


def test_select_by_latent_limits_and_collapsed_latent():
    X, Z = _latent_driven()
    assert len(pp.select_by_latent(X, Z, min_genes=50).indices) == 50      # topped up by R^2
    assert len(pp.select_by_latent(X, Z, min_genes=1, max_genes=5).indices) == 5
    flat = pp.select_by_latent(X, np.zeros_like(Z), min_genes=10)
    assert flat.n_significant == 0 and flat.threshold == float("inf")
    with pytest.raises(ValueError, match="rows"):
        pp.latent_r2(X, Z[:10])


# ------------------------------------------------------------------ the Preprocessor
def test_preprocessor_fit_transform_matches_the_pure_steps(blobs_counts):
    X, _ = blobs_counts
    S = sp.csr_matrix(X)
    pre = pp.Preprocessor(n_genes=40, value_transform="log")
    out = pre.fit_transform(S)
    assert sp.issparse(out) and out.shape == (X.shape[0], 40)
    assert pre.kind_.kind == "counts" and pre.normalize_ and pre.log_
    assert pre.log_pseudocount_ == pp.COUNTS_PSEUDOCOUNT  # "auto" on raw counts: the shifted log
    P = pp.log2p(pp.normalize_total(S)[0], pseudocount=pp.COUNTS_PSEUDOCOUNT)
    idx = pp.select_genes(P, n_genes=40)
    np.testing.assert_array_equal(pre.gene_indices_, idx)
    np.testing.assert_allclose(out.toarray(), P[:, idx].toarray(), rtol=1e-6)
    mean, var = pp.column_moments(P[:, idx])
    np.testing.assert_allclose(pre.center_, mean, rtol=1e-5)
    np.testing.assert_allclose(pre.scale_, np.sqrt(var.mean()), rtol=1e-5)  # "global"
    # transform applies the fitted constants (training target sum), not new ones
    half = S[:40]
    np.testing.assert_allclose(pre.transform(half).toarray(), out[:40].toarray(), rtol=1e-6)
    with pytest.raises(ValueError, match="features"):
        pre.transform(S[:, :10])


def test_preprocessor_from_moments_equals_the_in_memory_fit(blobs_counts):
    """The out-of-core fit (value sample + library sizes + streamed moments) decides like fit(X)."""
    X, _ = blobs_counts
    for kw in (dict(n_genes=30), dict(n_genes=25, gene_selection="dispersion", scale="gene"),
               dict(n_genes=20, scale="minmax", relative=False)):
        kw = {**kw, "value_transform": "log"}  # what the streamed fit does to raw counts
        mem = pp.Preprocessor(**kw).fit(X)
        streamed = pp.Preprocessor(**kw).fit_steps(X[:60], vmin=float(X.min()), library_sizes=pp.library_size(X))
        P = streamed.apply_steps(X)
        mean, var = pp.column_moments(P)
        lo, hi = np.minimum(P.min(0), 0.0), np.maximum(P.max(0), 0.0)
        streamed.fit_moments(pp.ColumnMoments(X.shape[0], mean, var, pp.detected_cells(P), lo, hi))
        assert streamed.target_sum_ == mem.target_sum_
        np.testing.assert_array_equal(streamed.gene_indices_, mem.gene_indices_)
        np.testing.assert_allclose(streamed.center_, mem.center_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(streamed.scale_, mem.scale_, rtol=1e-5)
    with pytest.raises(ValueError, match="entropy"):
        pp.Preprocessor(gene_selection="entropy", n_genes=10).fit_steps(X).fit_moments(
            pp.ColumnMoments(X.shape[0], mean, var, pp.detected_cells(P), lo, hi))


def test_preprocessor_round_trips_through_json(blobs_counts):
    import json

    X, _ = blobs_counts
    pre = pp.Preprocessor(n_genes=30, scale="gene").fit(X)
    again = pp.Preprocessor.from_dict(json.loads(json.dumps(pre.to_dict())))
    assert again.settings() == pre.settings() and again.kind_ == pre.kind_
    np.testing.assert_array_equal(again.gene_indices_, pre.gene_indices_)
    np.testing.assert_array_equal(again.center_, pre.center_)
    np.testing.assert_array_equal(again.scale_, pre.scale_)
    np.testing.assert_array_equal(again.transform(X), pre.transform(X))
    with pytest.raises(ValueError, match="format"):
        pp.Preprocessor.from_dict({"settings": {}})


def test_preprocessor_refuses_bad_settings_and_negative_counts(blobs_counts):
    X, _ = blobs_counts
    with pytest.raises(ValueError, match="scale"):
        pp.Preprocessor(scale="zscore")
    with pytest.raises(ValueError, match="gene_selection"):
        pp.Preprocessor(gene_selection="random")
    with pytest.raises(ValueError, match="n_genes"):
        pp.Preprocessor(n_genes=0)
    with pytest.raises(ValueError, match="non-negative"):
        pp.Preprocessor(normalize=True).fit(X - 1.0)
    with pytest.raises(ValueError, match="negatives"):  # out of core: the whole matrix's minimum decides
        pp.Preprocessor(normalize=True).fit_steps(X, vmin=-1.0)
    assert pp.Preprocessor().fit_steps(X, vmin=-1.0).kind_.kind == "scaled"


def test_gene_count_rule():
    assert pp.n_selected("auto", 5000) == 2000 and pp.n_selected("auto", 300) == 300
    assert pp.n_selected("auto", 5000, mode="cnv") is None and pp.n_selected(None, 10) is None
    assert pp.n_selected(50, 10) == 10


def test_log_threshold_is_the_one_kind_rule_everywhere():
    """Non-integer values above LOG_MAX are 'normalized' for training and 'linear' for DE alike."""
    from dhaka.analysis.differential import _guess_scale

    rng = np.random.default_rng(0)
    below = rng.uniform(0, pp.LOG_MAX - 1, (20, 5)) + 0.25
    above = below + pp.LOG_MAX
    assert pp.detect_kind(below).kind == "log" and _guess_scale(below) == "log"
    assert pp.detect_kind(above).kind == "normalized" and _guess_scale(above) == "linear"
    counts = rng.poisson(3, (20, 5)).astype(float)
    assert pp.detect_kind(counts).kind == "counts" and _guess_scale(counts) == "linear"


def test_log_pseudocount_is_the_shifted_log_in_memory_sparse_and_streamed(tmp_path):
    """log2(1 + x / c): c = 1 is the old log2(x + 1) bit for bit; c = 4 the shifted log, the same
    through every path (dense, sparse, and the streamed rows' folded factors); it is saved with the model."""
    import anndata as ad

    from dhaka import Dhaka
    from dhaka.backed import BackedRows
    from dhaka.preprocess import Preprocessor, log2p

    rng = np.random.default_rng(0)
    X = rng.poisson(3.0, (40, 25)).astype(np.float32)
    np.testing.assert_array_equal(log2p(X, pseudocount=1.0), log2p(X))
    np.testing.assert_allclose(log2p(X, pseudocount=4.0), np.log2(X + 4) - 2, atol=1e-5)
    np.testing.assert_allclose(log2p(sp.csr_matrix(X), pseudocount=4.0).toarray(), log2p(X, pseudocount=4.0))
    pre = Preprocessor(value_transform="log", log_pseudocount=4.0, n_genes=None).fit(X)
    assert pre.normalize_ and pre.log_
    sizes = X.sum(1)
    want = pre.apply_steps(X)
    path = tmp_path / "x.h5ad"
    ad.AnnData(sp.csr_matrix(X)).write_h5ad(path)
    with BackedRows(path, row_scale=pre.stream_factors(pre.size_factors(sizes), 40), log=True) as rows:
        np.testing.assert_allclose(rows.take_rows(np.arange(40)), np.asarray(want), rtol=1e-5, atol=1e-6)
    assert pre.stream_factors(None, 3) is not None
    assert Preprocessor(value_transform="log", log_pseudocount=1.0).fit(X).stream_factors(None, 3) is None
    for bad in (0, -1.0, float("nan"), True, "4"):
        with pytest.raises(ValueError, match="log_pseudocount"):
            Preprocessor(value_transform="log", log_pseudocount=bad)
    est = Dhaka(value_transform="log", log_pseudocount=4.0, epochs=2, structure=(8,), refine=0, n_genes=20,
                seed=0).fit(X)
    again = Dhaka.load(est.save(tmp_path / "m"))
    assert again.preprocessor_.log_pseudocount == 4.0
    np.testing.assert_allclose(again.transform(X), est.transform(X), atol=1e-5)
    # a model saved before the setting existed (no log_pseudocount anywhere) is read as log2(x + 1), not "auto"
    import json

    plain = Dhaka(value_transform="log", log_pseudocount=1.0, epochs=2, structure=(8,), refine=0, n_genes=20,
                  seed=0).fit(X)
    d = plain.save(tmp_path / "old")
    for name, drop in (("config.json", lambda c: c["params"].pop("log_pseudocount")),
                       ("preprocess.json", lambda p: (p["settings"].pop("log_pseudocount"), p.pop("log_pseudocount")))):
        cfg = json.loads((d / name).read_text())
        drop(cfg)
        (d / name).write_text(json.dumps(cfg))
    old = Dhaka.load(d)
    assert old.log_pseudocount == 1.0 and old.preprocessor_.log_pseudocount_ == 1.0
    np.testing.assert_allclose(old.transform(X), plain.transform(X), atol=1e-5)


def test_auto_pseudocount_is_the_shifted_log_on_raw_counts_only(tmp_path):
    """"auto" (the default) resolves from the detected kind: 2 on raw counts, 1 on TPM/CPM-like values and
    in copy-number mode; the resolved value is what the transform uses and what a saved model keeps, and a
    model saved before "auto" existed (no fitted value stored) loads with its numeric setting."""
    from dhaka.preprocess import COUNTS_PSEUDOCOUNT, Preprocessor, log2p, normalize_total

    rng = np.random.default_rng(1)
    counts = rng.poisson(3.0, (40, 25)).astype(np.float32)
    tpm = counts * 137.3 + 0.01 * (counts > 0)  # non-integers up to ~1e3: TPM/CPM-like
    pre = Preprocessor(n_genes=None, value_transform="log").fit(counts)
    assert pre.log_pseudocount == "auto" and pre.log_pseudocount_ == COUNTS_PSEUDOCOUNT == 2.0
    np.testing.assert_allclose(pre.apply_steps(counts),
                               log2p(normalize_total(counts, target_sum=pre.target_sum_)[0], pseudocount=2.0),
                               rtol=1e-6)
    t = Preprocessor(n_genes=None).fit(tpm)
    assert t.kind_.kind == "normalized" and t.log_pseudocount_ == 1.0
    np.testing.assert_allclose(t.apply_steps(tpm), log2p(tpm), rtol=1e-6)
    assert Preprocessor(mode="cnv", log=True, n_genes=None).fit(counts).log_pseudocount_ == 1.0
    assert Preprocessor(value_transform="log", log_pseudocount=3.0, n_genes=None).fit(counts).log_pseudocount_ == 3.0
    d = pre.to_dict()
    assert d["settings"]["log_pseudocount"] == "auto" and d["log_pseudocount"] == 2.0
    assert Preprocessor.from_dict(d).log_pseudocount_ == 2.0
    old = Preprocessor(value_transform="log", log_pseudocount=1.0, n_genes=None).fit(counts).to_dict()
    del old["log_pseudocount"]  # as written before "auto"
    assert Preprocessor.from_dict(old).log_pseudocount_ == 1.0
    plan = Preprocessor(value_transform="log").plan(counts)
    assert plan["log_pseudocount"] == 2.0 and "log2(1 + x/2)" in plan["description"]
    assert Preprocessor().plan(tpm)["log_pseudocount"] == 1.0 and "log2(x+1)" in Preprocessor().plan(tpm)["description"]
    older = Preprocessor(value_transform="log", log_pseudocount=1.0, n_genes=None).fit(counts).to_dict()
    del older["log_pseudocount"], older["settings"]["log_pseudocount"]  # saved before the setting existed
    assert Preprocessor.from_dict(older).log_pseudocount_ == 1.0
    for bad in ("Auto", "2", None):
        with pytest.raises(ValueError, match="log_pseudocount"):
            Preprocessor(value_transform="log", log_pseudocount=bad)


def _clone_states(seed: int = 0, n: int = 100, bins: int = 30) -> np.ndarray:
    """Copy-number states of two clones (70 / 30 %, differing in bins 5-9), plus one cell with a private
    amplification (state 9 in bin 20) and one with a private homozygous loss (state 0 in bin 25)."""
    rng = np.random.default_rng(seed)
    X = np.full((n, bins), 2.0, dtype=np.float32)
    X[70:, 5:10] = 3.0
    X[rng.random(X.shape) < 0.01] += 1.0  # state-call noise
    X[3, 20] = 9.0
    X[50, 25] = 0.0
    return X


def test_copy_number_trim_removes_single_cell_events_and_keeps_clones():
    """winsorize="auto" trims each bin to its 2-98 % quantiles in copy-number mode only: a private event
    of one cell is set back to its bin's common state, a 30 % clone keeps its gain; new cells get the
    training bounds (a state of 12 is cut to the training maximum), not bounds of their own."""
    from dhaka.preprocess import CNV_WINSORIZE, Preprocessor, resolve_winsorize, trim_label

    X = _clone_states()
    assert resolve_winsorize("auto", "cnv") == CNV_WINSORIZE == 0.02
    assert resolve_winsorize("auto", "expression") is None and resolve_winsorize(0.0, "cnv") is None
    pre = Preprocessor(mode="cnv").fit(X)
    assert pre.winsorize_ == 0.02 and pre.clip_ is not None
    lo, hi = np.quantile(X.astype(np.float64), [0.02, 0.98], axis=0)
    np.testing.assert_allclose(pre.clip_[0], lo, rtol=1e-6)
    np.testing.assert_allclose(pre.clip_[1], hi, rtol=1e-6)
    S = np.asarray(pre.transform(X))
    assert S[3, 20] == 2.0 and S[50, 25] == 2.0  # the private events are gone
    np.testing.assert_array_equal(S[70:, 5:10] >= 3.0, True)  # the minor clone's gain is kept
    new = np.full((2, X.shape[1]), 2.0, dtype=np.float32)
    new[0, 7] = 12.0
    assert np.asarray(pre.transform(new))[0, 7] == pre.clip_[1][7] < 12.0
    off = Preprocessor(mode="cnv", winsorize=None).fit(X)
    assert off.clip_ is None and np.asarray(off.transform(X))[3, 20] == 9.0
    assert Preprocessor().fit(np.abs(X)).clip_ is None  # expression: no trim unless asked
    assert "2-98 %" in trim_label(0.02)
    plan = Preprocessor(mode="cnv").plan(X)
    assert plan["winsorize"] == 0.02 and "trim" in plan["description"]
    for bad in (-0.1, 0.5, True, "0.02", float("nan")):
        with pytest.raises(ValueError, match="winsorize"):
            Preprocessor(mode="cnv", winsorize=bad)


def test_copy_number_trim_is_the_same_in_memory_sparse_streamed_and_saved(tmp_path):
    """The trim goes wherever the values go: a sparse matrix (its zeros are trimmed too), the streamed
    rows of an .h5ad (prepare and transform_backed), a saved model, features matched by name in another
    order; a model saved before the setting existed loads without a trim."""
    import json

    import anndata as ad
    import pandas as pd

    from dhaka import Dhaka
    from dhaka.backed import BackedRows, prepare, transform_backed
    from dhaka.preprocess import Preprocessor

    X = _clone_states(1)
    pre = Preprocessor(mode="cnv").fit(X)
    want = np.asarray(pre.transform(X))
    np.testing.assert_array_equal(np.asarray(Preprocessor(mode="cnv").fit(sp.csr_matrix(X)).transform(
        sp.csr_matrix(X))), want)
    path = tmp_path / "cn.h5ad"
    names = [f"chr1:{i}" for i in range(X.shape[1])]
    adata = ad.AnnData(X, var=pd.DataFrame(index=names))
    adata.write_h5ad(path)
    prep = prepare(path, mode="cnv", cache_root=tmp_path / "cache")
    np.testing.assert_array_equal(prep.matrix.toarray() if sp.issparse(prep.matrix) else prep.matrix, want)
    np.testing.assert_array_equal(prep.preprocessor.clip_[1], pre.clip_[1])
    with BackedRows(path, clip=pre.clip_bounds()) as rows:
        np.testing.assert_array_equal(rows.take_rows(np.arange(X.shape[0])), want)
        np.testing.assert_array_equal(rows.read_csr(np.arange(5)).toarray(), want[:5])
    assert prepare(path, mode="cnv", winsorize=None, cache_root=tmp_path / "cache").key != prep.key

    est = Dhaka(mode="cnv", epochs=2, structure=(8,), seed=0).fit(adata)
    Z = est.transform(adata)
    np.testing.assert_allclose(transform_backed(est, path), Z, atol=1e-5)
    shuffled = adata[:, adata.var_names[::-1]].copy()
    np.testing.assert_allclose(est.transform(shuffled), Z, atol=1e-5)
    again = Dhaka.load(est.save(tmp_path / "m"))
    assert again.preprocessor_.winsorize_ == 0.02
    np.testing.assert_allclose(again.transform(adata), Z, atol=1e-5)
    d = Dhaka(mode="cnv", winsorize=None, epochs=2, structure=(8,), seed=0).fit(adata).save(tmp_path / "old")
    ref = Dhaka.load(d).transform(adata)
    for name, drop in (("config.json", lambda c: c["params"].pop("winsorize")),
                       ("preprocess.json", lambda p: (p["settings"].pop("winsorize"), p.pop("winsorize"),
                                                      p.pop("clip")))):
        cfg = json.loads((d / name).read_text())
        drop(cfg)
        (d / name).write_text(json.dumps(cfg))
    old = Dhaka.load(d)
    assert old.winsorize is None and old.preprocessor_.clip_ is None
    np.testing.assert_allclose(old.transform(adata), ref, atol=1e-5)


# ----------------------------------------------------------------------------- Pearson residuals
def _counts(n=80, g=60, seed=0):
    rng = np.random.default_rng(seed)
    mu = rng.lognormal(0.0, 1.0, g)[None, :] * rng.lognormal(0.0, 0.6, n)[:, None]
    return rng.poisson(mu).astype(np.float32)


def test_pearson_residuals_equal_scanpys():
    """The analytic residuals (Lause et al. 2021) as scanpy computes them: theta 100, clipped to sqrt(n)."""
    import anndata as ad
    import scanpy as sc

    X = _counts()
    want = sc.experimental.pp.normalize_pearson_residuals(ad.AnnData(X.copy()), theta=100, inplace=False)["X"]
    pre = pp.Preprocessor(n_genes=None).fit(sp.csr_matrix(X))
    assert pre.transform_ == "pearson" and pre.residual_clip_ == pytest.approx(np.sqrt(X.shape[0]))
    np.testing.assert_allclose(pre.transform(sp.csr_matrix(X)), want, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(pp.pearson_residuals(X, pp.library_size(X), pp.gene_shares(X), clip=np.sqrt(80),
                                                    block=7), want, rtol=1e-4, atol=1e-4)
    mean, var = pp.residual_moments(sp.csr_matrix(X), pp.library_size(X), pp.gene_shares(X), clip=np.sqrt(80),
                                    block=9)
    np.testing.assert_allclose(var, np.asarray(want, np.float64).var(0), rtol=1e-4)


def test_value_transform_auto_is_pearson_on_raw_counts_only():
    X = _counts()
    tpm = X * 137.3 + 0.01 * (X > 0)
    assert pp.Preprocessor().plan(X)["transform"] == "pearson"
    assert "Pearson residuals" in pp.Preprocessor().plan(X)["description"]
    for data, mode in ((tpm, "expression"), (np.log2(X + 1), "expression"), (X, "cnv")):
        pre = pp.Preprocessor(mode=mode, n_genes=None).fit(data)
        assert pre.transform_ == "log" and not pre.pearson and pre.shares_ is None
    assert pp.Preprocessor(value_transform="log").fit(X).log_  # raw counts on request: normalise + log
    with pytest.raises(ValueError, match="raw counts.*value_transform='log'"):
        pp.Preprocessor(value_transform="pearson").fit(tpm)
    with pytest.raises(ValueError, match="value_transform"):
        pp.Preprocessor(value_transform="residuals")
    # genes are ranked by residual variance whatever gene_selection says (CV of residuals means nothing)
    pre = pp.Preprocessor(n_genes=10, gene_selection="cv").fit(X)
    var = np.asarray(pre.transform(X)).var(0)
    full = pp.Preprocessor(n_genes=None).fit(X)
    top = np.sort(np.argsort(-np.asarray(full.transform(X)).var(0))[:10])
    np.testing.assert_array_equal(pre.gene_indices_, top)
    assert pre.selected_by == "variance" and var.min() > 0


def test_pearson_gene_pool_holds_the_top_genes_and_transform_matches(monkeypatch, tmp_path):
    """Residuals are dense: a fit holds those of the genes of highest residual variance only (twice the genes
    it keeps), never a gene seen in fewer than min_cells cells; the memory estimate counts them; new cells,
    saved models and genes matched by name agree."""
    import anndata as ad

    from dhaka import Dhaka
    from dhaka.resources import estimate_training_memory

    X = _counts(g=60)
    X[:, 5] = 0
    X[0, 5] = 400  # one cell: the largest residual variance, but detected once
    pre = pp.Preprocessor(n_genes=12)
    P, columns = pre.fit_values(X)
    assert pre.pool_size(60) == 24 == pre.plan(X)["pool"] and P.shape == (80, 24) and 5 not in columns
    _, var = pp.residual_moments(X, pp.library_size(X), pre.shares_, clip=pre.residual_clip_)
    var[5] = -1
    np.testing.assert_array_equal(columns, np.sort(np.argsort(-var)[:24]))
    assert pp.Preprocessor(n_genes=None).pool_size(60) == 60 and pp.Preprocessor(n_genes=40).pool_size(60) == 60
    kw = dict(hidden=(8,), latent_dim=3, batch_size=32, sparse=True, density=0.01, n_selected=2000)
    base = estimate_training_memory(50_000, 20_000, **kw)
    assert estimate_training_memory(50_000, 20_000, dense_pool=4000, **kw) - base >= 50_000 * 4000 * 4
    monkeypatch.setattr(pp, "PEARSON_POOL_FACTOR", 1)
    assert pp.Preprocessor(n_genes=12).pool_size(60) == 12
    fitted = pp.Preprocessor(n_genes=10)
    S = fitted.fit_transform(X)
    np.testing.assert_allclose(S, fitted.transform(X), rtol=1e-6)
    np.testing.assert_allclose(pp.Preprocessor.from_dict(fitted.to_dict()).transform(X), S, rtol=1e-6)
    names = [f"g{j}" for j in range(60)]
    a = ad.AnnData(X, var=dict(index=names))
    est = Dhaka(epochs=2, structure=(8,), n_genes=10, refine=1, seed=0).fit(a)
    assert est.preprocessor_.pearson and est.refinement_[0]["selected_by"] == "variance"
    Z = est.transform(a)
    shuffled = a[:, ::-1].copy()  # same genes, other order: matched by name, libraries read from all genes
    np.testing.assert_allclose(est.transform(shuffled), Z, atol=1e-5)
    again = Dhaka.load(est.save(tmp_path / "m"))
    assert again.preprocessor_.pearson
    np.testing.assert_allclose(again.transform(a), Z, atol=1e-5)


def test_models_saved_before_value_transform_load_with_the_log_steps(tmp_path):
    """A model saved before the setting existed was a normalise + log model: it loads as one, not as "auto"."""
    import json

    from dhaka import Dhaka

    X = _counts()
    est = Dhaka(epochs=2, structure=(8,), n_genes=20, refine=0, seed=0, value_transform="log").fit(X)
    d = est.save(tmp_path / "old")
    cfg = json.loads((d / "config.json").read_text())
    cfg["params"].pop("value_transform")
    (d / "config.json").write_text(json.dumps(cfg))
    pre = json.loads((d / "preprocess.json").read_text())
    pre["settings"].pop("value_transform")
    pre.pop("transform")
    (d / "preprocess.json").write_text(json.dumps(pre))
    old = Dhaka.load(d)
    assert old.value_transform == "log" and not old.preprocessor_.pearson and old.preprocessor_.log_
    np.testing.assert_allclose(old.transform(X), est.transform(X), atol=1e-5)
