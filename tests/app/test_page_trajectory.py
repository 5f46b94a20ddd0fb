"""AppTest: the Trajectory page."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

from dhaka.ui import state

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "trajectory.py")


@pytest.fixture(scope="module")
def traj():
    from sklearn.decomposition import PCA

    from dhaka import simulate

    ad = simulate.trajectory(n_cells=300, n_genes=200, seed=0)
    X = ad.X.toarray()
    Z = PCA(3, random_state=0).fit_transform(np.log2(1 + X / X.sum(1, keepdims=True) * 1e4))
    clusters = np.digitize(ad.obs["time"].to_numpy(), [0.15, 0.5])
    return ad, Z, clusters


def _seed(at, ad, Z, clusters):
    at.session_state[state.DATASET] = ad
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "trajectory"}
    at.session_state[state.LATENT] = Z
    at.session_state[state.CLUSTERS] = clusters
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1"}


def test_guards():
    at = AppTest.from_file(PAGE, default_timeout=60).run()
    assert any("Load a dataset first" in i.value for i in at.info)


def test_guard_without_model(traj):
    at = AppTest.from_file(PAGE, default_timeout=60)
    at.session_state[state.DATASET] = traj[0]
    at.session_state[state.DATASET_INFO] = {"key": "k1"}
    at.run()
    assert any("Train a model" in i.value for i in at.info)


def test_cluster_root_recovers_time_and_cell_root_works(traj):
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, *traj)
    at.run()
    assert not at.exception
    rho = float(at.metric[0].value)
    assert rho > 0.8
    assert len(at.get("plotly_chart")) == 1
    at.radio(key="w.traj.kind").set_value("cell").run()
    assert not at.exception
    # the default root cell is the earliest by obs['time']
    assert at.selectbox(key="w.traj.cell").value == traj[0].obs_names[np.argmin(traj[0].obs["time"])]
    assert float(at.metric[0].value) > 0.8
    at.radio(key="w.traj.method").set_value("geodesic").run()
    assert not at.exception and float(at.metric[0].value) > 0.8


def test_root_follows_the_chosen_cluster(traj):
    ad, Z, clusters = traj
    at = AppTest.from_file(PAGE, default_timeout=60)
    _seed(at, *traj)
    at.run()
    names = [str(o) for o in ad.obs_names]
    for cl in sorted(np.unique(clusters).tolist()):
        at.selectbox(key="w.traj.cluster").set_value(cl).run()
        assert not at.exception
        cap = next(c.value for c in at.caption if c.value.startswith("Root: cell"))
        root = next(i for i, n in enumerate(names) if f"**{n.replace('_', chr(92) + '_')}**" in cap)
        assert clusters[root] == cl
        at.run()  # a rerun with the same settings keeps the same root (cached by latent digest and clusters)
        assert next(c.value for c in at.caption if c.value.startswith("Root: cell")) == cap
