"""Scale behaviour: sparse input is densified one minibatch at a time, never whole.

The numbers (seconds, GB) are in bench/; these tests check the behaviour that makes
them possible, with tracemalloc (numpy buffers are traced; torch's are not, so the
figures below bound what numpy/scipy allocate: the only place a densified matrix
could come from).
"""
from __future__ import annotations

import importlib.util
import sys
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

N, G = 3000, 4000  # dense float32 would be 48 MB; float64 96 MB


@pytest.fixture(scope="module")
def sparse_counts():
    rng = np.random.default_rng(0)
    M = sp.random(N, G, density=0.01, format="csr", dtype=np.float32, random_state=rng,
                  data_rvs=lambda k: rng.integers(1, 20, k).astype(np.float32))
    return M


@pytest.fixture(scope="module", autouse=True)
def _warm_imports():
    """Run the code paths once so lazy imports (torch submodules on the first optimiser step:
    tens of MB of Python objects) are not counted as data allocations."""
    import torch

    from dhaka import Dhaka
    from dhaka.model import VAE
    from dhaka.train import encode, fit_vae

    X = sp.random(40, 30, density=0.3, format="csr", dtype=np.float32, random_state=0)
    m = VAE(30, hidden=(4,), latent_dim=2)
    fit_vae(X, model=m, epochs=1, batch_size=16, device="cpu", kl_warmup=1)
    encode(m, X)
    Dhaka(structure=(4,), latent_dim=2, epochs=1, n_genes=10, device="cpu").fit_transform(
        (X * 10).ceil() if hasattr(X, "ceil") else X)
    torch.manual_seed(0)


def _peak_mb(fn):
    tracemalloc.start()
    try:
        out = fn()
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    return out, peak / 1024**2


def test_fit_vae_and_encode_densify_only_batches(sparse_counts):
    import torch

    from dhaka.model import VAE
    from dhaka.train import encode, fit_vae

    torch.manual_seed(0)
    model = VAE(G, hidden=(16,), latent_dim=2)
    res, peak = _peak_mb(lambda: fit_vae(sparse_counts, model=model, epochs=1, batch_size=128, device="cpu",
                                         kl_warmup=1))
    assert len(res.history) == 1
    dense_mb = N * G * 4 / 1024**2
    assert peak < dense_mb / 4, f"fit_vae allocated {peak:.1f} MB through numpy; dense X is {dense_mb:.0f} MB"
    Z, peak = _peak_mb(lambda: encode(model, sparse_counts, batch_size=256))
    assert Z.shape == (N, 2)
    assert peak < dense_mb / 4


def test_estimator_keeps_sparse_input_sparse(sparse_counts):
    from dhaka import Dhaka

    kw = dict(structure=(16,), latent_dim=2, epochs=1, n_genes=500, batch_size=128, device="cpu", kl_warmup=1, n_starts=1)
    est = Dhaka(value_transform="log", **kw)
    Z, peak = _peak_mb(lambda: est.fit_transform(sparse_counts))
    assert Z.shape == (N, 2) and np.isfinite(Z).all()
    dense_mb = N * G * 4 / 1024**2
    assert peak < dense_mb / 2, f"the estimator allocated {peak:.1f} MB; dense X is {dense_mb:.0f} MB"
    # Pearson residuals (the default on raw counts) are dense by nature: a fit holds those of its gene pool
    # (2 x 500 genes, 11 MB) and dense selected rows, never the whole matrix (measured 42 MB)
    pearson = Dhaka(**kw)
    Z, peak = _peak_mb(lambda: pearson.fit_transform(sparse_counts))
    assert pearson.preprocessor_.pearson and np.isfinite(Z).all()
    assert peak < dense_mb, f"Pearson residuals allocated {peak:.1f} MB; dense X is {dense_mb:.0f} MB"


def test_backed_prepare_reads_in_bounded_chunks(sparse_counts, tmp_path):
    anndata = pytest.importorskip("anndata")
    from dhaka import backed

    ad = anndata.AnnData(sparse_counts)
    ad.write_h5ad(tmp_path / "x.h5ad")
    chunk = 20_000  # stored values per chunk; the whole matrix has ~120,000
    prep, peak = _peak_mb(lambda: backed.prepare(tmp_path / "x.h5ad", n_genes=500, cache=False, chunk_nnz=chunk))
    assert prep.shape == (N, 500)
    dense_mb = N * G * 4 / 1024**2
    # per-gene accumulators, one chunk, the kind-detection sample and the selected result: never dense
    assert peak < dense_mb / 4, f"prepare allocated {peak:.1f} MB; dense X is {dense_mb:.0f} MB"
    ref = backed.prepare(tmp_path / "x.h5ad", n_genes=500, cache=False)
    np.testing.assert_array_equal(prep.gene_indices, ref.gene_indices)
    np.testing.assert_allclose(prep.matrix.toarray(), ref.matrix.toarray())


def test_bench_h5ad_writer_is_valid_anndata(tmp_path):
    """bench/scale.py writes its 100k x 20k file chunk by chunk with h5py; it must be a real .h5ad."""
    anndata = pytest.importorskip("anndata")
    spec = importlib.util.spec_from_file_location("bench_scale", Path(__file__).parents[1] / "bench" / "scale.py")
    mod = importlib.util.module_from_spec(spec)
    sys.modules.setdefault("bench_scale", mod)
    spec.loader.exec_module(mod)
    info = mod.write_sparse_h5ad(tmp_path / "b.h5ad", 500, 300, density=0.05, chunk=128)
    ad = anndata.read_h5ad(tmp_path / "b.h5ad")
    assert ad.shape == (500, 300) and sp.issparse(ad.X) and ad.X.nnz == info["nnz"]
    assert list(ad.obs_names[:2]) == ["cell0", "cell1"] and ad.var_names[-1] == "gene299"
    assert 0.02 < info["density"] < 0.2
    X = ad.X.toarray()
    assert (X >= 0).all() and np.allclose(X, np.round(X))
    from dhaka.io import read

    again = read(tmp_path / "b.h5ad")
    assert again.shape == (500, 300)
