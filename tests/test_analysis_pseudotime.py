"""Diffusion pseudotime on a kNN graph of the latent space."""
from __future__ import annotations

import numpy as np
import pytest
from scipy.stats import spearmanr

from dhaka.analysis.pseudotime import diffusion_pseudotime, figure_pseudotime, root_from_cluster


def _curve(n=200, seed=0):
    rng = np.random.default_rng(seed)
    t = np.sort(rng.random(n))
    Z = np.c_[np.cos(3 * t), np.sin(3 * t), t] * 3 + rng.normal(0, 0.05, size=(n, 3))
    return Z, t


@pytest.mark.parametrize("method", ["diffusion", "geodesic"])
def test_recovers_time_on_a_curve(method):
    Z, t = _curve()
    pt = diffusion_pseudotime(Z, root=0, method=method)
    assert pt.shape == t.shape
    assert pt[0] == 0.0 and np.nanmax(pt) == pytest.approx(1.0)
    assert spearmanr(pt, t)[0] > 0.9


def test_recovers_time_of_the_simulated_trajectory_on_pca():
    simulate = pytest.importorskip("dhaka.simulate")
    from sklearn.decomposition import PCA

    ad = simulate.trajectory(n_cells=300, n_genes=200, seed=0)
    X = ad.X.toarray()
    X = np.log2(1 + X / X.sum(1, keepdims=True) * 1e4)
    t = ad.obs["time"].to_numpy()
    Z = PCA(5, random_state=0).fit_transform(X)
    root = root_from_cluster(Z, (t > 0.15).astype(int), 0)
    pt = diffusion_pseudotime(Z, root=root)
    assert spearmanr(pt, t)[0] > 0.8


def test_several_roots_take_the_nearest():
    Z, t = _curve()
    pt = diffusion_pseudotime(Z, root=np.array([0, len(t) - 1]), method="geodesic")
    mid = np.argmin(np.abs(t - 0.5))
    assert pt[0] == 0 and pt[-1] == 0
    assert pt[mid] > 0.8 * np.nanmax(pt)


def test_disconnected_component_without_root_is_nan():
    Z, _ = _curve(100)
    far = Z[:30] + 1000.0
    with pytest.warns(RuntimeWarning, match="without a root"):
        pt = diffusion_pseudotime(np.vstack([Z, far]), root=0, n_neighbors=5)
    assert np.isnan(pt[100:]).all() and np.isfinite(pt[:100]).all()


def test_bad_root_raises():
    Z, _ = _curve(20)
    with pytest.raises(ValueError, match="root"):
        diffusion_pseudotime(Z, root=99)


def test_root_from_cluster_picks_the_tip():
    Z, t = _curve()
    labels = np.digitize(t, [0.33, 0.66])
    r = root_from_cluster(Z, labels, 0)
    assert labels[r] == 0 and t[r] < 0.1
    e = root_from_cluster(Z, labels, 0, how="extreme")
    assert labels[e] == 0 and t[e] < 0.1
    m = root_from_cluster(Z, labels, 1, how="medoid")
    assert labels[m] == 1 and 0.4 < t[m] < 0.6
    with pytest.raises(ValueError, match="no cells"):
        root_from_cluster(Z, labels, 7)


def test_figure_marks_root():
    Z, t = _curve(50)
    fig = figure_pseudotime(Z, t, root=0)
    assert len(fig.data) == 2 and fig.data[1].name == "root"
    fig2 = figure_pseudotime(Z[:, :2], t)
    assert len(fig2.data) == 1


def test_tip_root_follows_the_manifold_where_straight_lines_mislead():
    # the path starts at the centre, runs out along a spoke and then around a circle: the start
    # cluster's cell farthest in straight lines from the other cells (the circle's centre) is the
    # spoke's outer end (t = 0.25), while along the manifold it is the true start (t = 0)
    t = np.linspace(0, 1, 400)
    spoke = t < 0.25
    a = 2 * np.pi * 0.9 * (t - 0.25) / 0.75
    Z = np.where(spoke[:, None], np.c_[12 * t, 0 * t], np.c_[3 * np.cos(a), 3 * np.sin(a)])
    Z = np.c_[Z, 0.01 * np.sin(7 * t)]
    labels = np.digitize(t, [0.25, 0.5, 0.75])
    assert t[root_from_cluster(Z, labels, 0, how="extreme")] > 0.2  # the straight-line pick misleads
    r = root_from_cluster(Z, labels, 0)
    assert labels[r] == 0 and t[r] < 0.02
    pt = diffusion_pseudotime(Z, root=r)
    assert np.corrcoef(np.argsort(np.argsort(pt)), np.argsort(np.argsort(t)))[0, 1] > 0.95
    with pytest.raises(ValueError, match="how"):
        root_from_cluster(Z, labels, 0, how="random")
