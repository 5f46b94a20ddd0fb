"""bench.generators: the independent simulators behave as their papers describe (issue 12)."""
from __future__ import annotations

import dataclasses

import numpy as np

from bench.generators.cnv_tree import CNVParams, clone_tree_cnv
from bench.generators.splatter import SplatParams, splat_groups


def test_splatter_groups_sizes_de_genes_and_dropout():
    p = SplatParams(n_cells=300, n_genes=400, group_prob=(0.7, 0.3), de_prob=0.2, de_fac_loc=1.0)
    a = splat_groups(p, seed=0)
    assert a.shape == (300, 400) and np.all(a.X == np.round(a.X)) and a.X.min() >= 0
    frac = (a.obs["group"] == "Group1").mean()
    assert 0.6 < frac < 0.8
    # a gene DE only in Group2 differs between the groups' normalised means more than non-DE genes
    X = a.X / a.X.sum(1, keepdims=True)
    g2 = (a.obs["group"] == "Group2").to_numpy()
    lfc = np.abs(np.log((X[g2].mean(0) + 1e-6) / (X[~g2].mean(0) + 1e-6)))
    de = (a.var["de_group"] == "Group2").to_numpy()
    assert np.median(lfc[de]) > 2 * np.median(lfc[a.var["de_group"] == ""])
    more = splat_groups(dataclasses.replace(p, dropout_mid=2.0), seed=0)
    assert (more.X == 0).mean() > (a.X == 0).mean()


def test_cnv_tree_clones_and_doubling():
    a = clone_tree_cnv(CNVParams(n_cells=200, wgd_fraction=0.5, wgd_clones=1, jitter=0.0, private_events=0.0,
                                 boundary_error=0.0), seed=1)
    assert set(a.obs["clone"]) <= {"clone1", "clone2", "clone3", "clone4"}
    wgd = a.obs["wgd"].to_numpy()
    assert wgd.any() and not wgd.all()
    # doubled cells have about twice the mean state of their clone's other cells
    c = a.obs["clone"][wgd].iloc[0]
    same = (a.obs["clone"] == c).to_numpy()
    ratio = a.X[same & wgd].mean() / a.X[same & ~wgd].mean()
    assert 1.7 < ratio < 2.1
    assert a.var_names[0].startswith("chr1:")
