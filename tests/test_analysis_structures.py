"""Structure comparison (paper Table 1) on tiny data."""
from __future__ import annotations

import threading

import numpy as np

from dhaka.analysis.structures import compare_structures, figure_structures

from analysis_helpers import FAST, reduce_module, small_paper  # noqa: F401


def test_table_has_one_row_per_structure_and_tsne(small_paper, reduce_module):
    emb = {}
    events = []
    params = {k: v for k, v in FAST.items() if k != "structure"}
    df = compare_structures(small_paper, structures=((32,), (16, 8)), labels="group",
                            estimator_params=params, k_max=4, embeddings=emb, progress=events.append)
    assert list(df.columns) == ["structure", "ari", "silhouette", "n_clusters", "seconds"]
    assert df["structure"].tolist() == ["dhaka 32", "dhaka 16-8", "tsne"]
    assert df["ari"].between(-1, 1).all() and (df["n_clusters"] >= 1).all()
    assert emb["dhaka 32"].shape == (small_paper.n_obs, 3) and emb["tsne"].shape == (small_paper.n_obs, 2)
    assert [e["done"] for e in events] == [1, 2, 3]
    assert df.attrs["stopped"] is False
    assert len(figure_structures(df).data) == 2


def test_stop_before_start_returns_empty(small_paper):
    stop = threading.Event()
    stop.set()
    df = compare_structures(small_paper, structures=("shallow",), stop_event=stop)
    assert df.empty and df.attrs["stopped"] is True


def test_without_labels_ari_is_nan(small_paper, reduce_module):
    df = compare_structures(small_paper, structures=(), include_tsne=False, include_pca=True, k_max=4)
    assert df["structure"].tolist() == ["pca"]
    assert np.isnan(df.loc[0, "ari"]) and np.isfinite(df.loc[0, "silhouette"])
