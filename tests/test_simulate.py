"""dhaka.simulate: shapes, dtypes, truth columns, reproducibility, and the structure each set promises."""
from __future__ import annotations

import numpy as np
import pytest
from scipy import sparse

from dhaka import simulate


def _dense(X):
    return X.toarray() if sparse.issparse(X) else np.asarray(X)


# ----------------------------------------------------------------------------- paper
def test_paper_shape_truth_and_noise_genes():
    a = simulate.paper(n_cells=100, n_groups=5, n_genes=300, n_noise=100, seed=0)
    assert a.shape == (100, 300)
    assert a.X.dtype == np.float32 and isinstance(a.X, np.ndarray)
    assert str(a.obs["group"].dtype) == "category"
    assert a.obs["group"].value_counts().tolist() == [20] * 5
    assert np.all(a.X >= 0) and (a.X == 0).mean() > 0.05          # log2 expression with dropout zeros
    assert a.var["informative"].sum() == 200
    assert a.uns["simulation"]["n_noise"] == 100
    # noise genes carry no group effect: their group means differ much less than informative genes'
    y = a.obs["group"].cat.codes.to_numpy()
    means = np.stack([a.X[y == g].mean(axis=0) for g in range(5)])
    spread = means.std(axis=0)
    inf = a.var["informative"].to_numpy()
    assert np.quantile(spread[inf], 0.95) > 2 * np.quantile(spread[~inf], 0.95)


def test_paper_defaults_are_the_papers_setup():
    a = simulate.paper(n_noise=2500, seed=1)
    assert a.shape == (500, 3000)
    assert a.obs["group"].value_counts().tolist() == [100] * 5
    assert (~a.var["informative"]).sum() == 2500


def test_paper_reproducible_and_seed_dependent():
    a = simulate.paper(n_cells=50, n_genes=80, n_noise=20, seed=3)
    b = simulate.paper(n_cells=50, n_genes=80, n_noise=20, seed=3)
    c = simulate.paper(n_cells=50, n_genes=80, n_noise=20, seed=4)
    assert np.array_equal(a.X, b.X)
    assert not np.array_equal(a.X, c.X)


def test_paper_rejects_bad_sizes():
    with pytest.raises(ValueError, match="n_noise"):
        simulate.paper(n_genes=100, n_noise=100)


# ---------------------------------------------------------------------------- counts
def test_counts_sparse_integer_with_library_sizes():
    a = simulate.counts(n_cells=300, n_genes=150, seed=0)
    assert a.shape == (300, 150)
    assert sparse.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    X = _dense(a.X)
    assert np.all(X >= 0) and np.array_equal(X, np.round(X))
    assert np.allclose(a.obs["library_size"].to_numpy(), X.sum(axis=1))
    assert a.obs["library_size"].std() > 0.2 * a.obs["library_size"].mean()   # size-factor variation
    assert (X == 0).mean() > 0.3                                               # sparse like real data
    sizes = a.obs["group"].value_counts(normalize=True).sort_values(ascending=False).to_numpy()
    assert np.allclose(sizes, [0.4, 0.25, 0.15, 0.12, 0.08], atol=0.01)
    # over-dispersed: variance above the Poisson mean for well expressed genes
    m, v = X.mean(axis=0), X.var(axis=0)
    high = m > 2
    assert high.any() and np.median(v[high] / m[high]) > 1.5


def test_counts_reproducible_and_seed_dependent():
    a = simulate.counts(n_cells=60, n_genes=40, seed=1)
    b = simulate.counts(n_cells=60, n_genes=40, seed=1)
    c = simulate.counts(n_cells=60, n_genes=40, seed=2)
    assert (a.X != b.X).nnz == 0
    assert (a.X != c.X).nnz > 0


# ------------------------------------------------------------------------ trajectory
def test_trajectory_time_branches_and_smooth_programmes():
    a = simulate.trajectory(n_cells=300, n_genes=120, seed=0)
    assert a.shape == (300, 120)
    assert sparse.isspmatrix_csr(a.X) and a.X.dtype == np.float32
    t = a.obs["time"].to_numpy()
    assert t.min() >= 0 and t.max() <= 1
    assert set(a.obs["branch"].cat.categories) == {"root", "arm_a", "arm_b"}
    br = a.obs["branch"].to_numpy()
    bt = a.uns["simulation"]["branch_time"]
    assert np.all(t[br == "root"] < bt) and np.all(t[br != "root"] >= bt)
    assert min((br == "arm_a").sum(), (br == "arm_b").sum()) > 50
    # some gene follows time: a strong rank correlation with pseudotime
    from scipy.stats import spearmanr

    X = _dense(a.X)
    rho = np.array([abs(spearmanr(X[:, j], t)[0]) if X[:, j].std() > 0 else 0 for j in range(X.shape[1])])
    assert np.nanmax(rho) > 0.6
    # arms differ late in time
    late = t > 0.8
    da = X[late & (br == "arm_a")].mean(axis=0)
    db = X[late & (br == "arm_b")].mean(axis=0)
    assert np.max(np.abs(np.log1p(da) - np.log1p(db))) > 1.0


def test_trajectory_reproducible():
    a = simulate.trajectory(n_cells=50, n_genes=30, seed=5)
    b = simulate.trajectory(n_cells=50, n_genes=30, seed=5)
    c = simulate.trajectory(n_cells=50, n_genes=30, seed=6)
    assert (a.X != b.X).nnz == 0 and (a.X != c.X).nnz > 0


# -------------------------------------------------------------------------- cnv_pair
@pytest.fixture(scope="module")
def cnv():
    return simulate.cnv_pair(n_cells=(120, 80), n_bins=300, seed=0)


def test_cnv_pair_layout_and_states(cnv):
    first, second = cnv
    assert first.shape[0] == 120 and second.shape[0] == 80
    assert first.shape[1] == second.shape[1]
    assert 250 <= first.shape[1] <= 350
    assert list(first.var_names) == list(second.var_names)
    assert first.var_names[0].startswith("chr1:1-")
    assert {"chrom", "start", "end"} <= set(first.var.columns)
    assert first.var["chrom"].nunique() == 22
    assert np.all(first.var["end"] > first.var["start"])
    for ad in (first, second):
        X = ad.X
        assert X.dtype == np.float32 and np.array_equal(X, np.round(X))
        assert X.min() >= 0 and X.max() <= 8
        assert np.median(X) == 2                                           # diploid baseline


def test_cnv_second_sample_has_only_the_major_clone(cnv):
    first, second = cnv
    assert set(second.obs["clone"]) == {"major"}
    assert set(first.obs["clone"]) == {"major", "minor"}
    assert abs((first.obs["clone"] == "minor").mean() - 0.3) < 0.02
    assert set(first.obs["sample"]) == {"first"} and set(second.obs["sample"]) == {"second"}


def test_cnv_cells_carry_private_events_and_noise(cnv):
    first, _ = cnv
    prof = first.uns["simulation"]["clone_profiles"]
    clone = first.obs["clone"].to_numpy()
    ref = np.array([prof[c] for c in clone])
    diff = first.X != ref
    # every cell departs from its clone profile somewhere, but only in a small part of the genome
    assert diff.any(axis=1).mean() > 0.95
    assert diff.mean() < 0.2
    # the clones differ in a clonal segment shared by all their cells
    major, minor = np.array(prof["major"]), np.array(prof["minor"])
    assert (major != minor).sum() >= 10


def test_cnv_reproducible():
    a1, a2 = simulate.cnv_pair(n_cells=(20, 10), n_bins=100, seed=2)
    b1, b2 = simulate.cnv_pair(n_cells=(20, 10), n_bins=100, seed=2)
    c1, _ = simulate.cnv_pair(n_cells=(20, 10), n_bins=100, seed=3)
    assert np.array_equal(a1.X, b1.X) and np.array_equal(a2.X, b2.X)
    assert not np.array_equal(a1.X, c1.X)


# ------------------------------------------------------------------------------ load
@pytest.mark.parametrize("kind", ["paper", "counts", "trajectory", "cnv_pair"])
def test_load_dispatches(kind):
    a = simulate.load(kind, seed=0)
    assert a.n_obs > 0 and a.uns["simulation"]["kind"] == kind
    if kind == "cnv_pair":
        assert set(a.obs["sample"]) == {"first", "second"}
        assert "chrom" in a.var.columns


def test_load_unknown_kind_names_the_choices():
    with pytest.raises(ValueError, match="paper_2500"):
        simulate.load("nope")  # type: ignore[arg-type]
