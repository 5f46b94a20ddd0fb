"""dhaka.cluster: GMM-BIC finds what is there, survives degenerate input, merging finds clones."""
from __future__ import annotations

import numpy as np
import pytest

from dhaka import cluster, simulate


def _blobs(n_per=40, k=5, d=3, sep=10.0, seed=0):
    rng = np.random.default_rng(seed)
    corners = np.array([[0, 0, 0], [1, 0, 0], [0, 1, 0], [0, 0, 1], [1, 1, 1], [1, 1, 0]], dtype=float)
    centres = corners[:k, :d] * sep                                   # pairwise distances >= sep
    Z = np.vstack([c + rng.normal(size=(n_per, d)) for c in centres])
    y = np.repeat(np.arange(k), n_per)
    return Z, y


@pytest.fixture(scope="module")
def cnv_first_pca3():
    from sklearn.decomposition import PCA

    first, second = simulate.cnv_pair(seed=0)
    Z1 = PCA(3, random_state=0).fit_transform(first.X)
    Z2 = PCA(3, random_state=0).fit_transform(second.X)
    return Z1, first.obs["clone"].to_numpy(), Z2


# --------------------------------------------------------------------------- finding
@pytest.mark.parametrize("merge", [True, False])
def test_gmm_bic_finds_five_separated_groups(merge):
    Z, y = _blobs()
    r = cluster.gmm_bic(Z, k_max=8, seed=0, merge=merge, n_init=2)
    assert r.k == 5
    assert cluster.ari(y, r.labels) > 0.8
    assert r.labels.shape == (200,) and r.labels.dtype.kind == "i"
    assert set(np.unique(r.labels)) == set(range(5))
    assert r.bic.shape == (8,) and np.all(np.isfinite(r.bic))
    assert int(np.nanargmin(r.bic)) + 1 == r.n_components
    assert r.model is not None and r.ks == list(range(1, 9))
    # labels are ordered by size, largest first
    sizes = np.bincount(r.labels)
    assert np.all(np.diff(sizes) <= 0)


def test_gmm_bic_one_blob_is_one_cluster():
    rng = np.random.default_rng(1)
    r = cluster.gmm_bic(rng.normal(size=(150, 3)), k_max=6, seed=0, n_init=1)
    assert r.k == 1


def test_gmm_fixed_k_and_predict():
    Z, y = _blobs(k=3)
    r = cluster.gmm_fixed_k(Z, 3, seed=0)
    assert r.k == 3 and cluster.ari(y, r.labels) > 0.9
    assert np.array_equal(r.predict(Z), r.labels)
    assert np.isfinite(r.bic[2])


def test_gmm_fixed_k_infeasible_falls_back_and_says_why():
    Z = np.random.default_rng(0).normal(size=(12, 3))
    r = cluster.gmm_fixed_k(Z, 10, seed=0)
    assert r.k <= 3
    assert 10 in r.skipped and "too few cells" in r.skip_reasons[10]


# -------------------------------------------------------------------------- degenerate
def test_twenty_points_report_skipped_k_without_raising():
    Z = np.random.default_rng(0).normal(size=(20, 3))
    r = cluster.gmm_bic(Z, k_max=10, seed=0, n_init=1)
    assert r.skipped, "k that cannot be fitted on 20 points must be reported"
    assert all(k > 5 for k in r.skipped)                         # 20 cells / (3 + 1) = 5 components at most
    assert all(np.isnan(r.bic[k - 1]) for k in r.skipped)
    assert all(isinstance(r.skip_reasons[k], str) for k in r.skipped)
    assert r.labels.shape == (20,) and 1 <= r.k <= 5


def test_duplicate_points():
    rng = np.random.default_rng(0)
    Z = np.vstack([np.repeat(rng.normal(size=(1, 3)), 30, axis=0), rng.normal(size=(30, 3)) + 10])
    r = cluster.gmm_bic(Z, k_max=6, seed=0, n_init=1)
    assert r.labels.shape == (60,)
    assert len(set(r.labels[:30])) == 1                           # the identical points stay together
    only_three = np.repeat(np.eye(3) * 5, 10, axis=0)             # 3 distinct points
    r3 = cluster.gmm_bic(only_three, k_max=6, seed=0, n_init=1)
    assert r3.k == 3 and all("distinct" in r3.skip_reasons[k] for k in (4, 5, 6) if k in r3.skip_reasons)
    assert 4 in r3.skipped


def test_constant_columns_and_all_constant():
    Z, y = _blobs(k=3)
    Zc = np.column_stack([Z, np.full(len(Z), 7.0)])
    r = cluster.gmm_bic(Zc, k_max=5, seed=0, n_init=1)
    assert r.k == 3 and cluster.ari(y, r.labels) > 0.9
    flat = np.ones((25, 3))
    rf = cluster.gmm_bic(flat, k_max=5, seed=0, n_init=1)
    assert rf.k == 1 and np.all(rf.labels == 0)


def test_one_dimensional_input():
    rng = np.random.default_rng(0)
    z = np.r_[rng.normal(0, 1, 80), rng.normal(12, 1, 80)]
    r = cluster.gmm_bic(z, k_max=5, seed=0, n_init=1)
    assert r.k == 2
    assert cluster.ari(np.repeat([0, 1], 80), r.labels) > 0.95


def test_tiny_and_bad_input():
    r = cluster.gmm_bic(np.zeros((1, 3)), k_max=3)
    assert r.k == 1 and r.labels.tolist() == [0]
    r2 = cluster.gmm_bic(np.array([[0.0, 1.0], [2.0, 3.0]]), k_max=3)
    assert r2.labels.shape == (2,)
    with pytest.raises(ValueError, match="NaN"):
        cluster.gmm_bic(np.array([[0.0, np.nan], [1.0, 2.0]]))
    with pytest.raises(ValueError, match="empty"):
        cluster.gmm_bic(np.zeros((0, 3)))


def test_float32_small_scale_latent_does_not_fail():
    """Latents with tiny variance (float32) once raised 'ill-defined empirical covariance'."""
    Z, _ = _blobs(n_per=37, k=5, d=3)
    Z = (Z * 1e-4).astype(np.float32)
    r = cluster.gmm_bic(Z, k_max=10, seed=0, n_init=1)
    assert r.k >= 1 and r.labels.shape == (185,)


def test_subsampled_fit_labels_every_cell_and_parallel_sweep_agrees():
    Z, y = _blobs(n_per=100, k=3)
    r = cluster.gmm_bic(Z, k_max=5, seed=0, max_fit_cells=120, n_init=1)
    assert r.n_fit == 120 and r.labels.shape == (300,)
    assert cluster.ari(y, r.labels) > 0.9
    rp = cluster.gmm_bic(Z, k_max=5, seed=0, max_fit_cells=120, n_init=1, n_jobs=2)
    assert np.allclose(r.bic, rp.bic, equal_nan=True) and np.array_equal(r.labels, rp.labels)


@pytest.mark.parametrize("cov", ["tied", "diag", "spherical"])
def test_other_covariance_types(cov):
    Z, y = _blobs(k=3)
    r = cluster.gmm_bic(Z, k_max=4, seed=0, covariance_type=cov, n_init=1)
    assert r.k == 3 and cluster.ari(y, r.labels) > 0.9


def test_icl_criterion_runs():
    Z, y = _blobs(k=3)
    r = cluster.gmm_bic(Z, k_max=4, seed=0, criterion="icl", n_init=1)
    assert r.criterion == "icl" and r.k == 3 and np.all(r.icl[:4] >= r.bic[:4] - 1e-6)


# ----------------------------------------------------------------------------- merging
def test_merge_finds_the_two_clones_of_cnv_first_sample(cnv_first_pca3):
    Z1, clone, Z2 = cnv_first_pca3
    plain = cluster.gmm_bic(Z1, seed=0, merge=False, min_cluster_size=None, n_init=2)
    merged = cluster.gmm_bic(Z1, seed=0, merge=True, n_init=2)
    assert plain.k > 2                                            # heavy tails: BIC over-splits
    assert merged.k == 2
    assert cluster.ari(clone, merged.labels) > 0.9
    assert merged.merged is not None and merged.n_components == plain.n_components
    # the later sample holds the major clone only
    assert cluster.gmm_bic(Z2, seed=0, n_init=2).k == 1


def test_merge_keeps_separate_groups_of_expression_data():
    from sklearn.decomposition import PCA

    a = simulate.paper(n_cells=250, n_genes=400, n_noise=100, seed=0)
    Z = PCA(3, random_state=0).fit_transform(a.X)
    y = a.obs["group"].to_numpy()
    plain = cluster.gmm_bic(Z, k_max=8, seed=0, merge=False, min_cluster_size=None, n_init=2)
    merged = cluster.gmm_bic(Z, k_max=8, seed=0, n_init=2)
    assert merged.k >= 4
    assert cluster.ari(y, merged.labels) >= cluster.ari(y, plain.labels) - 0.02


def test_ridge_ratio_unimodal_vs_bimodal():
    I = np.eye(2)
    assert cluster.ridge_ratio(0.5, [0, 0], I, 0.5, [0.5, 0], 9 * I) == pytest.approx(1.0)   # core + tail
    assert cluster.ridge_ratio(0.5, [0, 0], I, 0.5, [6, 0], I) < 0.1                       # two groups


def test_min_cluster_size_folds_small_clusters():
    Z, y = _blobs(n_per=60, k=3)
    rng = np.random.default_rng(5)
    Z = np.vstack([Z, rng.normal(size=(4, 3)) * 0.1 + 40])        # 4 far outliers
    r_plain = cluster.gmm_bic(Z, k_max=6, seed=0, merge=False, min_cluster_size=None, n_init=1)
    r = cluster.gmm_bic(Z, k_max=6, seed=0, merge=False, min_cluster_size=10, n_init=1)
    assert r_plain.k == 4 and r.k == 3
    assert np.bincount(r.labels).min() >= 10


# ------------------------------------------------------------------------------ scores
def test_ari_nmi():
    a = [0, 0, 1, 1, 2, 2]
    assert cluster.ari(a, [5, 5, 3, 3, 9, 9]) == pytest.approx(1.0)
    assert cluster.nmi(a, ["x", "x", "y", "y", "z", "z"]) == pytest.approx(1.0)
    assert cluster.ari(a, [0, 1, 0, 1, 0, 1]) < 0.1
    with pytest.raises(ValueError, match="length"):
        cluster.ari([0, 1], [0, 1, 2])


def test_silhouette_defined_and_undefined():
    Z, y = _blobs(k=3)
    s = cluster.silhouette(Z, y)
    assert 0.5 < s <= 1.0
    assert np.isnan(cluster.silhouette(Z, np.zeros(len(Z))))             # one cluster
    assert np.isnan(cluster.silhouette(Z[:2], [0, 1]))                   # n < 3
    assert np.isnan(cluster.silhouette(Z[:5], np.arange(5)))             # every point alone
    assert np.isnan(cluster.silhouette(Z, y[:10]))                       # length mismatch
    bad = Z.copy()
    bad[0, 0] = np.nan
    assert np.isnan(cluster.silhouette(bad, y))
    s_sub = cluster.silhouette(Z, y, sample_size=50, seed=1)
    assert 0.4 < s_sub <= 1.0


def test_nesting_offset_tells_a_tail_from_a_side_by_side_group():
    I = np.eye(2)
    assert cluster.nesting_offset([0, 0], I, [0.5, 0], 9 * I) < 0.5        # wide tail around a core
    assert cluster.nesting_offset([0, 0], I, [3, 0], I) == pytest.approx(3.0)


def test_merge_offset_keeps_a_shoulder_group_that_unimodality_alone_would_join():
    rng = np.random.default_rng(0)
    big = rng.normal(size=(400, 2))
    small = rng.normal(size=(60, 2)) * 0.6 + [2.2, 0]                     # a shoulder: no density dip
    Z = np.vstack([big, small])
    plain = cluster.gmm_bic(Z, k_max=4, seed=0, merge=False, min_cluster_size=None)
    assert plain.n_components == 2
    cmap_uni, info = cluster.merge_components(plain.model, Z, tol=0.9)
    cmap_nest, _ = cluster.merge_components(plain.model, Z, tol=0.9, max_offset=1.0)
    off = np.array(info["offset"])[0, 1]
    assert off > 1.0
    assert cmap_uni.max() + 1 == (1 if np.array(info["ridge_ratio"])[0, 1] >= 0.9 else 2)
    assert cmap_nest.max() + 1 == 2
    r = cluster.gmm_bic(Z, k_max=4, seed=0, merge=True, merge_offset=1.0)
    assert r.k == 2 and r.params["merge_offset"] == 1.0


def test_dhaka_latents_are_clustered_with_the_data_driven_merge_rule():
    # one rule for the app, dhaka.tl, the estimator and the CLI: the clusterer every entry point resolves
    from dhaka.clusterers import resolve

    assert cluster.latent_merge("cnv") == cluster.latent_merge("expression") == "auto"
    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(0, 1, (60, 3)), rng.normal(6, 1, (60, 3))])
    for mode in ("expression", "cnv"):
        assert resolve(None, mode=mode, k_max=4).fit(Z, seed=0).params["merge"] == "auto"


def test_auto_merge_keeps_whichever_clusters_subsamples_reproduce_better(cnv_first_pca3, monkeypatch):
    Z1, clone, Z2 = cnv_first_pca3
    plain = cluster.gmm_bic(Z1, seed=0, merge=False, min_cluster_size=None, n_init=2)
    merged = cluster.gmm_bic(Z1, seed=0, merge=True, n_init=2)
    auto = cluster.gmm_bic(Z1, seed=0, n_init=2)                   # the default is "auto"
    mc = auto.merge_choice
    assert plain.k > merged.k == 2 and mc["chosen"] == "merge"   # heavy-tailed clones: BIC's split is not reproducible
    assert mc["stability_merged"] > mc["stability_plain"] and (mc["k_merged"], mc["k_plain"]) == (merged.k, plain.k)
    np.testing.assert_array_equal(auto.labels, merged.labels)
    assert cluster.ari(clone, auto.labels) > cluster.ari(clone, plain.labels)
    # the second sample holds the major clone only: one cluster (the paper's xenograft result)
    assert cluster.gmm_bic(Z2, seed=0, n_init=2).k == 1

    # where subsamples reproduce the plain clusters better, they stand
    monkeypatch.setattr(cluster, "merge_stability", lambda *a, **kw: (0.9, 0.8))
    kept = cluster.gmm_bic(Z1, seed=0, n_init=2)
    assert kept.merge_choice["chosen"] == "plain" and kept.k == plain.k
    np.testing.assert_array_equal(kept.labels, plain.labels)
    monkeypatch.undo()
    with pytest.raises(ValueError, match="merge"):
        cluster.gmm_bic(Z1, merge="sometimes")
    assert cluster.gmm_bic(Z1, seed=0, merge=True, n_init=2).merge_choice is None


def test_merge_stability_tells_a_split_blob_from_real_groups():
    """Two components on one Gaussian blob move between subsamples; two separated groups do not."""
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(0)
    blob = rng.normal(0, 1, (400, 2))
    gm = GaussianMixture(2, random_state=0).fit(blob)
    plain = gm.predict(blob)
    st_plain, st_merged = cluster.merge_stability(blob, gm, plain, np.zeros(400, dtype=int), merge_tol=0.0, seed=0)
    assert st_merged == 1.0 and st_plain < 0.9
    two = np.concatenate([rng.normal(0, 1, (200, 2)), rng.normal(8, 1, (200, 2))])
    gm = GaussianMixture(2, random_state=0).fit(two)
    st_plain, st_merged = cluster.merge_stability(two, gm, gm.predict(two), np.zeros(400, dtype=int), seed=0)
    assert st_plain > 0.99 and st_merged == 0.0  # merge_tol 0.9 keeps the groups apart: one cluster is never found


def test_explore_says_how_the_mixture_became_the_clusters(cnv_first_pca3):
    from dhaka.ui.views import merge_note

    Z1, _, Z2 = cnv_first_pca3
    merged = cluster.gmm_bic(Z1, seed=0, n_init=2)
    assert merge_note(merged).startswith(f"BIC chose {merged.n_components} mixture components; merged into 2 clusters")
    assert "one cluster" in merge_note(cluster.gmm_bic(Z2, seed=0, n_init=2))
    kept = cluster.GMMResult(k=5, labels=np.zeros(3, dtype=np.int64), bic=np.zeros(5), ks=[1, 2, 3, 4, 5], skipped=[],
                             skip_reasons={}, model=None, n_components=5,
                             merge_choice={"chosen": "plain", "k_merged": 3, "stability_plain": 0.91,
                                           "stability_merged": 0.80})
    assert merge_note(kept) == ("BIC chose 5 mixture components, kept as clusters: subsamples reproduce them better "
                                "than merging them into 3 (stability 0.91 vs 0.80).")
    assert merge_note(cluster.gmm_bic(Z1, seed=0, merge=False, n_init=2)) is None
