"""Projecting a second sample; the copy-number pair end to end; the warm-start report."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dhaka.analysis.copy_number import call_clones, figure_heatmap
from dhaka.analysis.projection import ProjectionResult, assign_clusters, figure_projection, project
from dhaka.analysis.structures import warm_start_table


class _FakeEstimator:
    """Contract stand-in: named features, transform = first two selected columns."""

    def __init__(self, genes):
        self.genes_ = list(genes)
        self.feature_names_ = list(genes)

    def transform(self, df):
        cols = [df[g].to_numpy() if g in df.columns else np.zeros(len(df)) for g in self.genes_[:2]]
        return np.c_[cols[0], cols[1]]


def test_project_reports_missing_and_fractions():
    rng = np.random.default_rng(0)
    R = np.r_[rng.normal(0, 0.1, (30, 2)), rng.normal(5, 0.1, (10, 2))]
    lab = np.array(["a"] * 30 + ["b"] * 10)
    second = pd.DataFrame(rng.normal(5, 0.1, (20, 2)), columns=["g1", "g2"])
    second.iloc[:5] = rng.normal(0, 0.1, (5, 2))
    res = project(_FakeEstimator(["g1", "g2", "g3"]), second, reference_latent=R, reference_labels=lab)
    assert isinstance(res, ProjectionResult)
    assert res.missing == ["g3"] and res.n_matched == 2
    assert res.fractions["cluster"].tolist() == ["a", "b"]
    assert res.fraction_in("b") == pytest.approx(0.75) and res.fraction_in("a") == pytest.approx(0.25)
    assert res.fractions["fraction"].sum() == pytest.approx(1.0)
    assert res.fractions["reference_fraction"].tolist() == pytest.approx([0.75, 0.25])
    fig = figure_projection(R, lab, res)
    symbols = {t.marker.symbol for t in fig.data}
    assert symbols == {"circle", "diamond"}


def test_assign_modes_agree_on_separated_clusters():
    from sklearn.mixture import GaussianMixture

    rng = np.random.default_rng(1)
    R = np.r_[rng.normal(0, 0.2, (40, 3)), rng.normal(4, 0.2, (40, 3))]
    lab = np.repeat([7, 9], 40)
    Z = np.r_[rng.normal(0, 0.2, (5, 3)), rng.normal(4, 0.2, (3, 3))]
    want = np.repeat([7, 9], [5, 3])
    gmm = GaussianMixture(4, random_state=0).fit(R)  # more components than clusters: mapped back
    for method in ("centroid", "knn", "gmm"):
        got = assign_clusters(Z, R, lab, method=method, gmm=gmm)
        assert np.array_equal(got, want), method
    with pytest.raises(ValueError, match="gmm"):
        assign_clusters(Z, R, lab, method="gmm")
    with pytest.raises(ValueError, match="dimensions"):
        assign_clusters(Z[:, :2], R, lab)


@pytest.fixture(scope="module")
def cnv_fit():
    from dhaka import simulate
    from dhaka.estimator import Dhaka

    first, second = simulate.cnv_pair(n_cells=(200, 100), n_bins=300, seed=2)
    est = Dhaka(mode="cnv", structure=(64,), epochs=20, patience=None, seed=0).fit(first)
    return first, second, est, est.transform(first)


def test_cnv_pair_two_clones_and_second_sample_in_major(cnv_fit):
    from dhaka.cluster import ari

    first, second, est, Z = cnv_fit
    clone = first.obs["clone"].astype(str).to_numpy()
    res = call_clones(Z)
    assert len(np.unique(res.labels)) == 2
    assert ari(clone, res.labels) > 0.9
    major = np.bincount(res.labels[clone == "major"]).argmax()
    proj = project(est, second, reference_latent=Z, reference_labels=res.labels)
    assert proj.missing == []
    assert proj.fraction_in(major) >= 0.95
    fig = figure_heatmap(first.X, var=first.var, clusters=res.labels)
    assert fig.layout.xaxis2.ticktext[0] == "1"


def test_projection_with_missing_bins_is_reported(cnv_fit):
    first, second, est, Z = cnv_fit
    dropped = list(second.var_names[:7])
    sub = second[:, 7:].copy()
    res = call_clones(Z)
    proj = project(est, sub, reference_latent=Z, reference_labels=res.labels, assign="gmm", gmm=res)
    assert proj.missing == dropped
    assert proj.latent.shape == (second.n_obs, Z.shape[1])


def test_warm_start_table_from_estimator_records():
    class Est:
        start_scores_ = [{"start": 0, "seed": 0, "silhouette": 0.2, "k": 3, "kept": False},
                         {"start": 1, "seed": 1000, "silhouette": 0.5, "k": 4, "kept": True}]

    t = warm_start_table(Est())
    assert t.columns[:3].tolist() == ["start", "silhouette", "kept"]
    assert t["kept"].tolist() == [False, True] and "k" in t

    class Bare:
        start_scores_ = [0.1, 0.4, 0.3]

    assert warm_start_table(Bare())["kept"].tolist() == [False, True, False]
    with pytest.raises(ValueError, match="fit it first"):
        warm_start_table(object())


def test_warm_start_table_on_a_real_fit(small_paper):
    from dhaka.estimator import Dhaka

    from analysis_helpers import FAST

    est = Dhaka(**{**FAST, "epochs": 1, "n_starts": 2}).fit(small_paper)
    t = warm_start_table(est)
    assert len(t) == 2 and t["kept"].sum() == 1
    sil = t["silhouette"].to_numpy(dtype=float)
    # the best silhouette is kept; a start without defined silhouette never beats one with it
    best = int(np.nanargmax(sil)) if np.isfinite(sil).any() else 0
    assert t["kept"].to_numpy().nonzero()[0].tolist() == [best]


from analysis_helpers import small_paper  # noqa: E402,F401
