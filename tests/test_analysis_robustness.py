"""Dropout robustness study (paper Fig. 3 / 6) on tiny data."""
from __future__ import annotations

import threading

import numpy as np
import pytest

from dhaka.analysis.robustness import (
    dropout_curve,
    dropout_study,
    figure_curve,
    figure_dropout_histograms,
    resolve_labels,
)

from analysis_helpers import FAST, reduce_module, small_paper  # noqa: F401


def test_study_table_histograms_and_embeddings(small_paper, reduce_module):
    events = []
    study = dropout_study(small_paper, levels=(0.0, 0.3), methods=("dhaka", "pca"), labels="group",
                          estimator_params=FAST, k_max=5, progress=events.append)
    t = study.table
    assert list(t.columns) == ["level", "method", "ari", "n_clusters", "silhouette", "seconds"]
    assert len(t) == 4 and set(t["method"]) == {"dhaka", "pca"}
    assert study.metric == "ari"
    pca0 = t[(t.level == 0) & (t.method == "pca")].iloc[0]
    assert pca0.ari > 0.8 and pca0.n_clusters >= 2  # easy data: PCA recovers the 3 groups
    assert t["ari"].between(-1, 1).all() and (t["seconds"] >= 0).all()
    # injecting 30% of the non-zeros raises every gene's dropout fraction on average
    f0, f3 = study.dropout_fractions[0.0], study.dropout_fractions[0.3]
    assert f0.shape == (small_paper.n_vars,) and f3.mean() > f0.mean() + 0.15
    assert study.embeddings[(0.3, "dhaka")].shape == (120, 3)
    assert study.clusters[(0.0, "pca")].shape == (120,)
    assert events[-1]["done"] == events[-1]["total"] == 6
    assert sum(e["row"] is not None for e in events) == 4
    assert len(figure_curve(t).data) == 2
    assert len(figure_dropout_histograms(study).data) == 2


def test_without_labels_scores_silhouette(small_paper, reduce_module):
    t = dropout_curve(small_paper.X, levels=(0.0, 0.1), methods=("pca",), k_max=4)
    assert t["ari"].isna().all()
    assert t["silhouette"].notna().all()


def test_stop_event_returns_partial_study(small_paper, reduce_module):
    stop = threading.Event()

    def progress(info):
        if info["row"] is not None:
            stop.set()

    study = dropout_study(small_paper, levels=(0.0, 0.1, 0.2), methods=("pca", "tsne"), labels="group",
                          k_max=4, progress=progress, stop_event=stop)
    assert study.stopped
    assert len(study.table) == 1


def test_bad_arguments_raise(small_paper):
    with pytest.raises(ValueError, match="unknown method"):
        dropout_study(small_paper, methods=("nope",))
    with pytest.raises(ValueError, match="levels"):
        dropout_study(small_paper, levels=(1.5,), methods=("pca",))
    with pytest.raises(ValueError, match="no obs column"):
        resolve_labels(small_paper, "missing")
    with pytest.raises(ValueError, match="labels for"):
        resolve_labels(small_paper, np.zeros(3))
