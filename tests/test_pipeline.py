"""The one fit -> embed -> cluster -> record chain (dhaka.pipeline) and the clusterer protocol (dhaka.clusterers).

A new clusterer is one class and one registration (below, ``ToyClusterer``); every entry point then accepts
it by name: the pipeline, ``tl.dhaka``, ``tl.project`` and the CLI's ``--clusterer``.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

import numpy as np
import pandas as pd
import pytest

anndata = pytest.importorskip("anndata")

from dhaka import Dhaka, clusterers, tl  # noqa: E402
from dhaka.cluster import GMMResult  # noqa: E402
from dhaka.pipeline import embed_cluster, run  # noqa: E402

TINY = dict(epochs=2, structure=(16,), kl_warmup=0, patience=None, val_fraction=0.0, refine=0, encoder_pcs=None, n_starts=1)


@dataclass
class ToyResult:
    labels: np.ndarray
    k: int

    @property
    def record(self) -> dict:
        return {"method": "toy_sign", "k": self.k}

    def predict(self, Z) -> np.ndarray:
        return (np.asarray(Z)[:, 0] > 0).astype(np.int64)


@clusterers.register("toy_sign")
@dataclass
class ToyClusterer:
    """Two clusters by the sign of the first latent axis; counts its calls."""

    k_max: int = 10
    name: str = "toy_sign"
    calls: int = 0

    def fit(self, Z, *, seed: int = 0) -> ToyResult:
        self.calls += 1
        labels = (np.asarray(Z)[:, 0] > 0).astype(np.int64)
        return ToyResult(labels=labels, k=int(len(np.unique(labels))))


@pytest.fixture
def adata(blobs_counts):
    X, y = blobs_counts
    return anndata.AnnData(X=X, obs=pd.DataFrame({"group": y.astype(str)}, index=[f"c{i}" for i in range(len(X))]),
                           var=pd.DataFrame(index=[f"g{j}" for j in range(X.shape[1])]))


def test_run_fits_embeds_clusters_and_records(adata):
    res = run(adata, estimator=dict(seed=0, **TINY), truth=adata.obs["group"], k_max=4)
    assert res.latent.shape == (adata.n_obs, 3)
    assert isinstance(res.clusters, GMMResult) and res.labels.shape == (adata.n_obs,)
    assert res.metrics["k"] == res.clusters.k and -1.0 <= res.metrics["ari"] <= 1.0
    rec = res.record
    assert rec["cluster_method"] == "gmm_bic" and rec["k"] == res.clusters.k and len(rec["bic"]) == 4
    assert json.loads(rec["params_json"]) == json.loads(json.dumps(res.estimator.get_params(), default=str))
    assert rec["n_genes_used"] == len(res.estimator.genes_)
    assert rec["n_threads"] == res.estimator.n_threads_ >= 1  # the CPU share, kept with the result
    assert res.model_input.shape == (adata.n_obs, len(res.estimator.genes_))  # the encoder's input, preprocessed once


def test_a_registered_clusterer_reaches_every_entry_point(adata, tmp_path):
    assert "toy_sign" in clusterers.available()
    res = run(adata, estimator=dict(seed=0, **TINY), clusterer="toy_sign")
    assert isinstance(res.clusters, ToyResult) and res.record["cluster_method"] == "toy_sign"
    np.testing.assert_array_equal(res.labels, (res.latent[:, 0] > 0).astype(int))

    tl.dhaka(adata, seed=0, clusterer="toy_sign", **TINY)
    assert adata.uns["dhaka"]["cluster_method"] == "toy_sign"
    assert set(adata.obs["dhaka_cluster"].cat.categories) <= {"0", "1"}

    from dhaka import cli

    src = tmp_path / "x.csv"
    adata.to_df().to_csv(src)
    out = tmp_path / "latent.csv"
    code = cli.main(["embed", str(src), "--out", str(out), "--clusterer", "toy_sign", "--epochs", "2",
                     "--structure", "16", "--refine", "0", "--quiet"])
    assert code == 0
    assert set(pd.read_csv(out)["cluster"]) <= {0, 1}


def test_the_estimator_scores_its_starts_with_the_pipelines_clusterer(adata):
    toy = ToyClusterer()
    res = run(adata, estimator={**TINY, "seed": 0, "n_starts": 2}, clusterer=toy)
    assert toy.calls == 3  # each of the two starts, then the final latent
    assert len(res.estimator.start_scores_) == 2
    assert all(s["k"] in (1, 2) for s in res.estimator.start_scores_)  # the toy's k, not a GMM's


def test_an_unclusterable_latent_is_still_a_result(adata):
    @dataclass
    class Broken:
        k_max: int = 10
        name: str = "broken"

        def fit(self, Z, *, seed=0):
            raise np.linalg.LinAlgError("singular")

    with pytest.warns(UserWarning, match="could not be clustered"):
        res = run(adata, estimator=dict(seed=0, **TINY), clusterer=Broken())
    assert res.clusters is None and res.labels is None and "singular" in res.metrics["cluster_error"]
    assert res.latent.shape[0] == adata.n_obs and "k" not in res.record


def test_embed_cluster_matches_by_name_and_counts_missing(adata):
    model = Dhaka(seed=0, **TINY).fit(adata)
    other = adata[:, adata.var_names[::-1]].copy()
    dropped = other[:, [g for g in other.var_names if g != model.genes_[0]]].copy()
    same = embed_cluster(model, other, cluster=False)
    np.testing.assert_allclose(same.latent, model.transform(adata), rtol=1e-5, atol=1e-5)
    res = embed_cluster(model, dropped, k_max=3)
    assert res.missing == [model.genes_[0]] and res.record["n_genes_missing"] == 1
    assert res.clusters is not None and res.record["cluster_params"]["k_max_asked"] == 3


def test_unknown_clusterer_is_named():
    with pytest.raises(ValueError, match="unknown clusterer 'nope'.*gmm_bic"):
        clusterers.resolve("nope")
    with pytest.raises(TypeError, match="fit"):
        clusterers.resolve(object())


def test_register_refuses_a_second_clusterer_of_the_same_name():
    with pytest.raises(ValueError, match="registered already"):
        clusterers.register("gmm_bic")(ToyClusterer)
