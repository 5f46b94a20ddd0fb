"""Out-of-core training and embedding from a backed .h5ad (dhaka.backed)."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp

anndata = pytest.importorskip("anndata")
h5py = pytest.importorskip("h5py")

from dhaka import backed  # noqa: E402


def _counts(n=150, g=80, seed=0):
    rng = np.random.default_rng(seed)
    groups = rng.integers(0, 3, n)
    mu = rng.gamma(0.8, 1.5, g)
    eff = np.ones((3, g))
    for k in range(3):
        eff[k, rng.choice(g, 10, replace=False)] = 6.0
    X = rng.poisson(mu * eff[groups] * rng.lognormal(0, 0.3, n)[:, None]).astype(np.float32)
    X[:, 0] = 0  # an undetected gene
    X[5, 1] = 7  # a gene seen in one cell only: never selected
    X[:, 1] = 0
    X[5, 1] = 7
    return X


def _write(path, X, *, sparse=True, fmt="csr"):
    M = sp.csr_matrix(X) if fmt == "csr" else sp.csc_matrix(X)
    ad = anndata.AnnData(M if sparse else np.asarray(X))
    ad.obs_names = [f"c{i}" for i in range(X.shape[0])]
    ad.var_names = [f"g{j}" for j in range(X.shape[1])]
    ad.write_h5ad(path)
    return path


@pytest.fixture
def h5(tmp_path):
    X = _counts()
    return _write(tmp_path / "x.h5ad", X), X


SMALL = dict(structure=(32,), latent_dim=2, epochs=2, n_genes=30, batch_size=32, kl_warmup=1, patience=None,
             device="cpu", seed=0)


def test_take_rows_any_order_with_columns_scale_and_log(h5):
    path, X = h5
    cols = np.array([7, 2, 40])
    scale = np.linspace(0.5, 2.0, X.shape[0]).astype(np.float32)
    idx = np.array([9, 3, 3, 120, 4, 5])
    with backed.BackedRows(path, columns=cols, row_scale=scale, log=True) as src:
        assert src.shape == (X.shape[0], 3)
        got = src.take_rows(idx)
    want = np.log1p(X[idx][:, cols] * scale[idx, None]) / np.log(2.0)
    np.testing.assert_allclose(got, want, rtol=1e-6, atol=1e-6)
    assert got.dtype == np.float32


def test_chunks_cover_all_rows_within_budget(h5):
    path, X = h5
    with backed.BackedRows(path) as src:
        bounds = src.chunk_bounds(chunk_nnz=200)
        assert bounds[0][0] == 0 and bounds[-1][1] == X.shape[0]
        assert all(b0 == a1 for (_, b0), (a1, _) in zip(bounds[:-1], bounds[1:]))
        nnz = [src.indptr[b] - src.indptr[a] for a, b in bounds]
        assert all(k <= 200 or b - a == 1 for k, (a, b) in zip(nnz, bounds))
        M = sp.vstack([m for _, _, m in src.chunks(chunk_nnz=200)])
    np.testing.assert_array_equal(M.toarray(), X)


def test_prepare_matches_in_memory_preprocessing(h5, tmp_path):
    from dhaka.preprocess import column_moments, log2p, normalize_total, select_genes

    path, X = h5
    prep = backed.prepare(path, n_genes=30, cache=False, chunk_nnz=300)
    P, target = normalize_total(sp.csr_matrix(X))
    P = log2p(P, pseudocount=2.0)  # "auto" on raw counts
    idx = select_genes(P, n_genes=30, method="cv")
    assert prep.input_kind.kind == "counts" and prep.normalize and prep.log
    assert prep.preprocessor.log_pseudocount_ == 2.0
    assert prep.target_sum == pytest.approx(target)
    np.testing.assert_array_equal(prep.gene_indices, idx)
    assert 1 not in prep.gene_indices and 0 not in prep.gene_indices
    assert prep.genes == [f"g{j}" for j in idx]
    np.testing.assert_allclose(prep.matrix.toarray(), P[:, idx].toarray(), rtol=1e-6, atol=1e-6)
    mean, var = column_moments(P[:, idx])
    np.testing.assert_allclose(prep.mean, mean, rtol=1e-5, atol=1e-6)
    np.testing.assert_allclose(prep.var, var, rtol=1e-5, atol=1e-6)


def test_prepare_honours_log_pseudocount_without_a_preprocessor(h5):
    from dhaka.preprocess import log2p, normalize_total, select_genes

    path, X = h5
    prep = backed.prepare(path, n_genes=30, log_pseudocount=4.0, cache=False, chunk_nnz=300)
    P, _ = normalize_total(sp.csr_matrix(X))
    P = log2p(P, pseudocount=4.0)
    idx = select_genes(P, n_genes=30, method="cv")
    np.testing.assert_array_equal(prep.gene_indices, idx)
    np.testing.assert_allclose(prep.matrix.toarray(), P[:, idx].toarray(), rtol=1e-6, atol=1e-6)
    plain = backed.prepare(path, n_genes=30, cache=False, chunk_nnz=300)
    assert not np.allclose(prep.matrix.toarray(), plain.matrix.toarray())


def test_cache_is_reused_and_keyed_by_content_and_settings(h5, tmp_path):
    path, X = h5
    root = tmp_path / "cache"
    a = backed.prepare(path, n_genes=30, cache_root=root)
    b = backed.prepare(path, n_genes=30, cache_root=root)
    assert not a.from_cache and b.from_cache and a.key == b.key
    assert len(list(root.glob("*.h5"))) == 1
    np.testing.assert_array_equal(a.matrix.toarray(), b.matrix.toarray())
    c = backed.prepare(path, n_genes=20, cache_root=root)  # other settings: other entry
    assert c.key != a.key and not c.from_cache
    X2 = X.copy()
    X2[3, 4] += 1  # other content: other entry
    p2 = _write(tmp_path / "y.h5ad", X2)
    d = backed.prepare(p2, n_genes=30, cache_root=root)
    assert d.key != a.key and not d.from_cache
    assert backed.clear_cache(root) == 3


def test_large_selected_matrix_is_streamed_from_the_cache_file(h5, tmp_path):
    path, _ = h5
    prep = backed.prepare(path, n_genes=30, cache_root=tmp_path / "c", max_memory_bytes=1)
    assert isinstance(prep.matrix, backed.BackedRows)
    ref = backed.prepare(path, n_genes=30, cache=False)
    np.testing.assert_allclose(prep.matrix.take_rows(np.arange(ref.shape[0])), ref.matrix.toarray())
    prep.matrix.close()


def test_fit_backed_equals_in_memory_fit_and_transform_backed(h5, tmp_path):
    from dhaka import Dhaka

    path, X = h5
    # without gene refinement: out of core it chooses among the prepared genes, in memory among all;
    # streamed raw counts take the log steps (Pearson residuals are computed in memory)
    mem = Dhaka(**SMALL, refine=0, value_transform="log").fit(sp.csr_matrix(X))
    est = backed.fit_backed(path, cache_root=tmp_path / "c", **SMALL, refine=0)
    assert est.genes_ == [f"g{j}" for j in mem.gene_indices_]
    np.testing.assert_allclose(est.model_.center.numpy(), mem.model_.center.numpy(), rtol=1e-5, atol=1e-6)
    Z_mem = mem.transform(sp.csr_matrix(X))
    Z = backed.transform_backed(est, path, chunk_nnz=250, batch_size=16)
    assert Z.shape == (X.shape[0], 2)
    # same data, same settings, same seed: equal up to float summation order
    np.testing.assert_allclose(Z, Z_mem, atol=1e-3)
    # the fitted estimator is a normal one: in-memory transform and save/load agree
    ad = anndata.read_h5ad(path)
    np.testing.assert_allclose(est.transform(ad), Z, atol=1e-5)
    est.save(tmp_path / "model")
    again = Dhaka.load(tmp_path / "model")
    np.testing.assert_allclose(backed.transform_backed(again, path), Z, atol=1e-5)


def test_pearson_model_transforms_a_file_on_disk_as_in_memory(h5, tmp_path):
    """A model fitted in memory on Pearson residuals embeds an .h5ad chunk by chunk with each cell's library
    read from the whole file row; streaming cannot fit them and says so."""
    from dhaka import Dhaka

    path, X = h5
    mem = Dhaka(**SMALL, refine=0).fit(sp.csr_matrix(X))
    assert mem.preprocessor_.pearson
    Z = backed.transform_backed(mem, path, chunk_nnz=250, batch_size=16)
    np.testing.assert_allclose(Z, mem.transform(sp.csr_matrix(X)), atol=1e-5)
    assert not backed.fit_backed(path, cache_root=tmp_path / "c", **SMALL, refine=0).preprocessor_.pearson
    with pytest.raises(ValueError, match="Pearson residuals are computed in memory"):
        backed.prepare(path, preprocessor=Dhaka(value_transform="pearson").make_preprocessor(),
                       cache_root=tmp_path / "c")


def test_training_streamed_from_the_cache_equals_training_in_memory(h5, tmp_path):
    """Above max_memory_bytes fit_vae reads each minibatch's rows from the cache file."""
    path, X = h5
    mem = backed.fit_backed(path, cache_root=tmp_path / "c", **SMALL)
    streamed = backed.fit_backed(path, cache_root=tmp_path / "c", max_memory_bytes=1, **SMALL)
    assert mem.prepared_["in_memory"] and not streamed.prepared_["in_memory"]
    assert streamed.prepared_["from_cache"]
    assert [h["loss"] for h in streamed.history_] == [h["loss"] for h in mem.history_]
    np.testing.assert_array_equal(backed.transform_backed(streamed, path), backed.transform_backed(mem, path))


def test_dense_h5ad_and_missing_genes(tmp_path):
    X = _counts(seed=1)
    path = _write(tmp_path / "d.h5ad", X, sparse=False)
    est = backed.fit_backed(path, cache=False, **SMALL)
    Z = backed.transform_backed(est, path)
    assert Z.shape == (X.shape[0], 2) and np.isfinite(Z).all()
    # a file lacking one selected gene: that gene is filled with the training mean
    keep = [j for j in range(X.shape[1]) if f"g{j}" != est.genes_[0]]
    ad = anndata.AnnData(sp.csr_matrix(X[:, keep]))
    ad.var_names = [f"g{j}" for j in keep]
    ad.write_h5ad(tmp_path / "m.h5ad")
    Z2 = backed.transform_backed(est, tmp_path / "m.h5ad")
    assert Z2.shape == Z.shape and np.isfinite(Z2).all()


def test_refusals_name_the_problem(tmp_path):
    X = _counts()
    csc = _write(tmp_path / "csc.h5ad", X, fmt="csc")
    with pytest.raises(ValueError, match="csc_matrix"):
        backed.prepare(csc, cache=False)
    bad = X.copy()
    bad[17, 3] = np.nan
    p = _write(tmp_path / "nan.h5ad", bad)
    with pytest.raises(ValueError, match="c17"):
        backed.prepare(p, cache=False)
    with pytest.raises(ValueError, match="entropy"):
        backed.fit_backed(_write(tmp_path / "ok.h5ad", X), cache=False, gene_selection="entropy", **SMALL)


def test_fit_backed_refines_among_the_prepared_genes(h5, tmp_path):
    path, X = h5
    est = backed.fit_backed(path, cache_root=tmp_path / "c", **{**SMALL, "refine": 1})
    prepared = backed.prepare(path, cache=False, n_genes=SMALL.get("n_genes", "auto"))
    assert est.refinement_[0]["genes"] == len(prepared.genes) and "n_significant" in est.refinement_[0]
    assert set(est.genes_) <= set(prepared.genes)
    assert [est.feature_names_[i] for i in est.gene_indices_] == est.genes_  # indices into all features
    assert backed.transform_backed(est, path).shape == (X.shape[0], est.model_.latent_dim)
    streamed = backed.fit_backed(path, cache_root=tmp_path / "s", max_memory_bytes=1, **{**SMALL, "refine": 1})
    assert len(streamed.refinement_) == 1 and "skipped" in streamed.refinement_[0]["note"]


def test_cached_entry_serves_other_input_scalings_with_their_own_affine(h5, tmp_path):
    """relative / scale are not part of the cache key: the entry's moments give each its affine,
    the same the in-memory Preprocessor fits."""
    from dhaka import Dhaka

    path, X = h5
    root = tmp_path / "c"
    backed.prepare(path, n_genes=30, cache_root=root)
    for kw in (dict(scale="gene"), dict(scale="minmax", relative=False), dict(scale="none")):
        pre = Dhaka(n_genes=30, **kw).make_preprocessor()
        prep = backed.prepare(path, preprocessor=pre, cache_root=root)
        assert prep.from_cache
        mem = Dhaka(n_genes=30, value_transform="log", **kw).make_preprocessor().fit(sp.csr_matrix(X))
        np.testing.assert_array_equal(prep.gene_indices, mem.gene_indices_)
        np.testing.assert_allclose(prep.preprocessor.center_, mem.center_, rtol=1e-5, atol=1e-6)
        np.testing.assert_allclose(prep.preprocessor.scale_, mem.scale_, rtol=1e-5, atol=1e-6)
