"""Shared bits of the analysis tests: tiny data, fast estimator settings, the reductions."""
from __future__ import annotations

import pytest

FAST = dict(structure=(32,), epochs=3, batch_size=64, kl_warmup=0, patience=None, val_fraction=0.0, n_starts=1)


@pytest.fixture
def reduce_module():
    """The real :mod:`dhaka.reduce` (PCA, t-SNE, UMAP) the analyses embed with."""
    from dhaka import reduce

    return reduce


@pytest.fixture
def small_paper():
    from dhaka import simulate

    return simulate.paper(n_cells=120, n_groups=3, n_genes=150, n_noise=30, seed=0, effect=2.0)
