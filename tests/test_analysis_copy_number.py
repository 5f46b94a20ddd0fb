"""Copy-number helpers: genome order, hierarchical order, heatmap."""
from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from dhaka.analysis.copy_number import cluster_order, figure_heatmap, genome_order, parse_bins


def test_genome_order_from_names_puts_sex_chromosomes_last():
    names = ["chrX:1-100", "chr2:1-100", "chr10:1-100", "chr1:200-300", "chr1:1-100", "chrY:5-10"]
    order = genome_order(names)
    assert [names[i] for i in order] == ["chr1:1-100", "chr1:200-300", "chr2:1-100",
                                         "chr10:1-100", "chrX:1-100", "chrY:5-10"]


def test_genome_order_without_chr_prefix_and_unplaced_at_end():
    names = ["3:5-9", "weird", "1:10-20", "other", "1:1-5"]
    order = genome_order(names)
    assert [names[i] for i in order] == ["1:1-5", "1:10-20", "3:5-9", "weird", "other"]


def test_genome_order_falls_back_to_file_order():
    assert genome_order(["a", "b", "c"]).tolist() == [0, 1, 2]


def test_genome_order_from_var_columns():
    var = pd.DataFrame({"chrom": ["chr2", "X", "1", "1"], "start": [5, 1, 50, 10], "end": [9, 2, 60, 20]},
                       index=list("abcd"))
    assert genome_order(var).tolist() == [3, 2, 0, 1]
    info = parse_bins(var)
    assert info["chrom"].tolist() == ["2", "X", "1", "1"]


def test_cluster_order_groups_similar_cells():
    rng = np.random.default_rng(0)
    a = rng.normal(0, 0.1, size=(20, 10))
    b = rng.normal(3, 0.1, size=(20, 10))
    X = np.vstack([a, b])[rng.permutation(40)]
    grp = (X.mean(1) > 1.5).astype(int)
    order = cluster_order(X)
    assert sorted(order.tolist()) == list(range(40))
    assert np.count_nonzero(np.diff(grp[order])) == 1  # one switch between the two blocks


def test_cluster_order_large_uses_groups():
    rng = np.random.default_rng(0)
    X = np.vstack([rng.normal(0, 0.1, (150, 5)), rng.normal(5, 0.1, (150, 5))])
    order = cluster_order(X, max_cells=40)
    assert sorted(order.tolist()) == list(range(300))
    grp = (X.mean(1) > 2.5).astype(int)
    assert np.count_nonzero(np.diff(grp[order])) == 1


def test_heatmap_is_genome_ordered_with_cluster_bar():
    rng = np.random.default_rng(0)
    names = [f"chr{c}:{s}-{s + 9}" for c in (2, 1) for s in range(1, 101, 10)]
    X = np.full((30, 20), 2.0) + rng.integers(-1, 2, size=(30, 20)) * 0.1
    X[:10, 10:15] = 3.0  # a gain on chr1 in the first 10 cells
    clusters = np.array([0] * 10 + [1] * 20)
    fig = figure_heatmap(X, var=names, clusters=clusters)
    assert len(fig.data) == 2
    col_order = fig.layout.meta["col_order"]
    assert [names[i] for i in col_order[:2]] == ["chr1:1-10", "chr1:11-20"]
    assert list(fig.layout.xaxis2.ticktext) == ["1", "2"]
    rows = fig.layout.meta["row_order"]
    bar = np.asarray(fig.data[0].z).ravel()
    assert np.count_nonzero(np.diff(bar)) == 1  # hierarchical order keeps the clone together
    assert np.array_equal(bar, clusters[rows])
    assert len(fig.layout.shapes) == 1  # one boundary between chr1 and chr2


def test_heatmap_subsamples_and_averages_bins():
    rng = np.random.default_rng(0)
    X = rng.normal(2, 0.2, size=(300, 400))
    fig = figure_heatmap(X, var=[f"{1 + i // 200}:{i * 10}-{i * 10 + 9}" for i in range(400)],
                         clusters=rng.integers(0, 3, 300), max_cells=100, max_bins=100, order="cluster")
    z = np.asarray(fig.data[1].z)
    assert z.shape[0] == len(fig.layout.meta["row_order"]) <= 102
    assert z.shape[1] == 100
    with pytest.raises(ValueError, match="cluster labels"):
        figure_heatmap(X, clusters=[0, 1])


# ----------------------------------------------------------------------------- ploidy (issue 12)
def _two_clones_half_doubled(seed=0, n=120, bins=200):
    rng = np.random.default_rng(seed)
    a = np.full(bins, 2.0)
    a[20:60] = 3
    b = np.full(bins, 2.0)
    b[120:170] = 1
    clone = rng.integers(0, 2, size=n)
    X = np.stack([a if c == 0 else b for c in clone])
    doubled = (clone == 0) & (rng.random(n) < 0.5)
    X[doubled] *= 2
    noise = rng.random(X.shape) < 0.02
    X[noise] = np.maximum(X[noise] + rng.choice([-1, 1], size=int(noise.sum())), 0)
    return X, clone, doubled


@pytest.mark.parametrize("method", ["mean", "modal"])
def test_relative_ploidy_puts_doubled_cells_with_their_clone_and_calls_the_doubling(method):
    from dhaka.analysis.copy_number import relative_ploidy

    X, clone, doubled = _two_clones_half_doubled()
    res = relative_ploidy(X, method=method)
    assert np.array_equal(res.doubled, doubled)
    assert res.ratio[doubled].min() > 1.8 and res.ratio[~doubled].max() < 1.4
    # in relative states a doubled cell is nearer its own clone's undoubled cells than the other clone's
    a_plain = res.relative[(clone == 0) & ~doubled].mean(0)
    b_plain = res.relative[clone == 1].mean(0)
    for row in res.relative[doubled]:
        assert np.linalg.norm(row - a_plain) < np.linalg.norm(row - b_plain)
    # and raw states do not: a doubled cell is far from every undoubled cell
    raw_a = X[(clone == 0) & ~doubled].mean(0)
    assert np.linalg.norm(X[doubled][0] - raw_a) > np.linalg.norm(res.relative[doubled][0] - a_plain) * 3


def test_relative_ploidy_without_doubling_calls_none_and_keeps_a_diploid_scale():
    from dhaka.analysis.copy_number import relative_ploidy

    X, clone, _ = _two_clones_half_doubled()
    X = X.copy()
    X[X > 3] = X[X > 3] / 2  # undo the doubling
    res = relative_ploidy(X, method="modal")
    assert not res.doubled.any()
    assert res.reference == 2.0
    assert np.allclose(res.relative, X)  # modal ploidy 2 everywhere: states unchanged


def test_relative_ploidy_bad_input_says_why():
    from dhaka.analysis.copy_number import cell_ploidy, relative_ploidy

    with pytest.raises(ValueError, match="negative"):
        relative_ploidy(np.array([[1.0, -0.5], [2.0, 2.0]]))
    with pytest.raises(ValueError, match="method"):
        cell_ploidy(np.ones((3, 4)), method="median")
    with pytest.raises(ValueError, match="doubling_ratio"):
        relative_ploidy(np.ones((3, 4)), doubling_ratio=1.0)
    # a cell with every bin lost does not divide by zero
    out = relative_ploidy(np.array([[0.0, 0.0], [2.0, 2.0], [2.0, 3.0]]))
    assert np.all(np.isfinite(out.relative))
