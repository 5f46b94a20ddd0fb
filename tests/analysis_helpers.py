"""Shared bits of the analysis tests: tiny data, fast estimator settings, a reduce stand-in."""
from __future__ import annotations

import importlib.util
import sys
import types

import numpy as np
import pytest

FAST = dict(structure=(32,), epochs=3, batch_size=64, kl_warmup=0, patience=None, val_fraction=0.0)


def _standin_reduce() -> types.ModuleType:
    from sklearn.decomposition import PCA

    mod = types.ModuleType("dhaka.reduce")

    def pca(X, *, n_components=2, random_state=0):
        return PCA(n_components=n_components, random_state=random_state).fit_transform(np.asarray(X))

    mod.pca = pca
    mod.tsne = pca
    mod.umap = pca
    return mod


@pytest.fixture
def reduce_module(monkeypatch):
    """``dhaka.reduce`` if it exists, else a PCA-based stand-in with the contract's signatures."""
    if importlib.util.find_spec("dhaka.reduce") is None:
        mod = _standin_reduce()
        monkeypatch.setitem(sys.modules, "dhaka.reduce", mod)
        import dhaka

        monkeypatch.setattr(dhaka, "reduce", mod, raising=False)
        return mod
    return importlib.import_module("dhaka.reduce")


@pytest.fixture
def small_paper():
    from dhaka import simulate

    return simulate.paper(n_cells=120, n_groups=3, n_genes=150, n_noise=30, seed=0, effect=2.0)
