"""Batch correction (dhaka.batch): codes travel with their rows, the model is conditioned on them, the
fitted estimator keeps the categories, and tl / pipeline / CLI take a batch_key."""
from __future__ import annotations

import contextlib
import json

import numpy as np
import pandas as pd
import pytest
import torch

anndata = pytest.importorskip("anndata")

from dhaka import Dhaka  # noqa: E402
from dhaka.batch import candidate_columns, codes_for, fit_codes, mixing_entropy  # noqa: E402
from dhaka.model import VAE  # noqa: E402
from dhaka.train import encode, fit_vae  # noqa: E402

FAST = dict(epochs=100, refine=0, n_threads=1, seed=0, structure=(64,), kl_warmup=5, n_starts=1)


def _batched(seed=0, n=240, g=120):
    """Two groups (20 genes differ) x two batches (every gene scaled by its own log-normal factor in batch b)."""
    rng = np.random.default_rng(seed)
    group, batch = rng.integers(0, 2, n), rng.integers(0, 2, n)
    fc = np.ones((2, g))
    de = rng.choice(g, 20, replace=False)
    fc[1, de] = rng.choice([0.2, 5.0], 20)
    effect = np.ones((2, g))
    effect[1] = rng.lognormal(0.0, 1.0, g)
    mu = rng.lognormal(0.5, 1.0, g) * fc[group] * effect[batch] * rng.lognormal(0.0, 0.2, n)[:, None]
    obs = pd.DataFrame({"group": group.astype(str), "sample": np.array(["a", "b"])[batch]},
                       index=[f"c{i}" for i in range(n)])
    return anndata.AnnData(rng.poisson(mu).astype(np.float32), obs=obs,
                           var=pd.DataFrame(index=[f"g{j}" for j in range(g)]))


@pytest.fixture(scope="module")
def batched():
    return _batched()


@pytest.fixture(scope="module")
def fitted(batched):
    return Dhaka(**FAST).fit(batched, batch=batched.obs["sample"])


# ----------------------------------------------------------------- model and loop
def test_codes_travel_with_their_rows_through_minibatches_and_validation():
    """Row i holds its own code in column 0: every training step and the validation see matching pairs."""
    rng = np.random.default_rng(0)
    codes = rng.integers(0, 3, 150)
    X = np.column_stack([codes, rng.normal(size=(150, 7))]).astype(np.float32)
    seen = []

    class Spy(torch.nn.Module):
        def __init__(self, vae):
            super().__init__()
            self.vae = vae

        def loss(self, x, **kw):
            seen.append((x[:, 0].clone(), kw["batch"].clone()))
            return self.vae.loss(x, **kw)

    torch.manual_seed(0)
    model = VAE(8, hidden=(16,), latent_dim=2, n_batch=3)
    fit_vae(X, model=model, epochs=2, batch_size=32, val_fraction=0.2, patience=None, batch=codes,
            wrap_model=lambda m: contextlib.nullcontext(Spy(m)))
    assert len(seen) >= 2 * (120 // 32)
    for x0, b in seen:
        assert torch.equal(x0.long(), b)
    assert sum(len(b) for _, b in seen) == 2 * 120  # the 30 validation rows never trained
    Z = encode(model, X, batch=codes)
    assert Z.shape == (150, 2) and np.isfinite(Z).all()


def test_model_refuses_a_missing_or_unwanted_batch():
    X = np.random.default_rng(0).normal(size=(20, 5)).astype(np.float32)
    with pytest.raises(ValueError, match="pass batch"):
        fit_vae(X, model=VAE(5, hidden=(8,), latent_dim=2, n_batch=2), epochs=1)
    with pytest.raises(ValueError, match="no batch categories"):
        fit_vae(X, model=VAE(5, hidden=(8,), latent_dim=2), epochs=1, batch=np.zeros(20, int))
    with pytest.raises(ValueError, match=r"\[0, 2\)"):
        encode(VAE(5, hidden=(8,), latent_dim=2, n_batch=2), X, batch=np.full(20, 2))


def test_without_batches_the_model_has_the_same_parameters_as_before():
    a, b = VAE(30, hidden=(16,), latent_dim=3), VAE(30, hidden=(16,), latent_dim=3, n_batch=0)
    assert {k: v.shape for k, v in a.state_dict().items()} == {k: v.shape for k, v in b.state_dict().items()}
    c = VAE(30, hidden=(16,), latent_dim=3, n_batch=2)
    assert c.encoder[0].in_features == 32 and c.decoder[0].in_features == 5


# ----------------------------------------------------------------- behaviour
def test_a_strong_batch_effect_is_mixed_with_batch_and_groups_are_kept(batched, fitted):
    from dhaka.cluster import ari, gmm_bic

    plain = Dhaka(**FAST).fit_transform(batched)
    corrected = fitted.transform(batched, batch=batched.obs["sample"])
    mix_plain = mixing_entropy(plain, batched.obs["sample"])
    mix_corr = mixing_entropy(corrected, batched.obs["sample"])
    assert mix_plain < 0.2 and mix_corr > mix_plain + 0.4, (mix_plain, mix_corr)
    ari_corr = ari(batched.obs["group"], gmm_bic(corrected, k_max=4, seed=0).labels)
    ari_plain = ari(batched.obs["group"], gmm_bic(plain, k_max=4, seed=0).labels)
    assert ari_corr > 0.8 and ari_corr > ari_plain + 0.2, (ari_plain, ari_corr)


def test_mixing_entropy_is_one_for_random_labels_and_zero_for_separated_batches():
    rng = np.random.default_rng(0)
    Z = rng.normal(size=(400, 2))
    assert mixing_entropy(Z, rng.integers(0, 2, 400)) > 0.9
    Z[:200] += 100.0
    assert mixing_entropy(Z, np.repeat(["x", "y"], 200)) == 0.0


# ----------------------------------------------------------------- estimator
def test_fitted_estimator_keeps_categories_and_needs_the_batch_to_embed(batched, fitted):
    assert fitted.batch_categories_ == ["a", "b"] and fitted.model_.n_batch == 2
    with pytest.raises(ValueError, match="pass batch="):
        fitted.transform(batched)
    bad = batched.obs["sample"].replace({"b": "c"}).to_numpy()
    with pytest.raises(ValueError, match="unknown to the model: 'c'"):
        fitted.transform(batched, batch=bad)
    # one label for every cell: the cells read as that batch
    Z_a = fitted.transform(batched[:10], batch="a")
    np.testing.assert_array_equal(Z_a, fitted.transform(batched[:10], batch=["a"] * 10))
    plain = Dhaka(epochs=1, refine=0, n_threads=1).fit(batched)
    assert plain.batch_categories_ is None
    with pytest.raises(ValueError, match="without batch correction"):
        plain.transform(batched, batch=batched.obs["sample"])


def test_save_and_load_keep_the_categories_and_the_latent(batched, fitted, tmp_path):
    fitted.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert cfg["batch_categories"] == ["a", "b"] and cfg["model"]["n_batch"] == 2
    back = Dhaka.load(tmp_path / "m")
    assert back.batch_categories_ == ["a", "b"]
    b = batched.obs["sample"]
    np.testing.assert_allclose(back.transform(batched, batch=b), fitted.transform(batched, batch=b), atol=1e-6)


def test_a_model_without_batch_saves_as_before(batched, tmp_path):
    est = Dhaka(epochs=1, refine=0, n_threads=1).fit(batched)
    est.save(tmp_path / "m")
    cfg = json.loads((tmp_path / "m" / "config.json").read_text())
    assert "batch_categories" not in cfg and "n_batch" not in cfg["model"]
    assert Dhaka.load(tmp_path / "m").batch_categories_ is None


def test_labels_are_checked():
    assert fit_codes(None, 5) == (None, None)
    cats, codes = fit_codes(np.array([2, 1, 2, 1]), 4)
    assert cats == ["1", "2"] and codes.tolist() == [1, 0, 1, 0]
    with pytest.raises(ValueError, match="3 labels for 4 cells"):
        fit_codes(["a", "b", "a"], 4)
    with pytest.raises(ValueError, match="1 missing"):
        fit_codes(["a", None, "b", "a"], 4)
    with pytest.raises(ValueError, match="not a label per cell"):
        fit_codes([f"c{i}" for i in range(10)], 10)
    with pytest.raises(ValueError, match="one label per cell"):
        fit_codes("a", 4)
    assert codes_for(["1", "2"], [2, 1], 2).tolist() == [1, 0]


def test_candidate_columns_are_the_categorical_ones(batched):
    obs = batched.obs.assign(score=np.linspace(0, 1, batched.n_obs), cell=batched.obs_names,
                             flag=np.arange(batched.n_obs) % 2 == 0)
    assert candidate_columns(obs) == ["group", "sample", "flag"]


# ----------------------------------------------------------------- tl, pipeline, CLI
def test_tl_dhaka_and_project_take_a_batch_key(batched):
    import dhaka

    ad = batched.copy()
    model = dhaka.tl.dhaka(ad, batch_key="sample", return_model=True, epochs=3, refine=0, n_threads=1)
    rec = ad.uns["dhaka"]
    assert rec["batch_key"] == "sample" and list(rec["batch_categories"]) == ["a", "b"]
    assert model.batch_categories_ == ["a", "b"]
    second = batched[:50].copy()
    dhaka.tl.project(second, model, batch_key="sample")
    np.testing.assert_allclose(second.obsm["X_dhaka"], ad.obsm["X_dhaka"][:50], atol=1e-5)
    with pytest.raises(ValueError, match="pass batch"):
        dhaka.tl.project(batched[:50].copy(), model)
    with pytest.raises(ValueError, match="batch_key 'donor' is not a column of obs.*'sample'"):
        dhaka.tl.dhaka(batched.copy(), batch_key="donor", epochs=1)


def test_tl_dhaka_with_a_layer_keeps_the_batch_column(batched):
    import dhaka

    ad = batched.copy()
    ad.layers["counts"] = ad.X.copy()
    dhaka.tl.dhaka(ad, layer="counts", batch_key="sample", epochs=2, refine=0, n_threads=1)
    assert ad.uns["dhaka"]["batch_key"] == "sample"


def test_pipeline_records_the_batch_and_refuses_backed_batch(batched):
    from dhaka.pipeline import run

    res = run(batched, estimator=dict(epochs=2, refine=0, n_threads=1), batch_key="sample", k_max=3)
    assert res.record["batch_key"] == "sample" and res.latent.shape == (batched.n_obs, 3)
    plain = run(batched, estimator=dict(epochs=2, refine=0, n_threads=1), k_max=3)
    assert "batch_key" not in plain.record
    with pytest.raises(ValueError, match="out-of-core"):
        run("x.h5ad", backed=True, batch_key="sample")


def test_cli_batch_key(batched, tmp_path, capsys):
    from dhaka.cli import main

    path = tmp_path / "x.h5ad"
    batched.write_h5ad(path)
    rc = main(["embed", str(path), "--out", str(tmp_path / "z.csv"), "--batch-key", "sample", "--epochs", "2",
               "--refine", "0", "--quiet", "--save-model", str(tmp_path / "m"), "--h5ad", str(tmp_path / "o.h5ad")])
    assert rc == 0
    assert Dhaka.load(tmp_path / "m").batch_categories_ == ["a", "b"]
    assert anndata.read_h5ad(tmp_path / "o.h5ad").uns["dhaka"]["batch_key"] == "sample"
    assert main(["project", str(tmp_path / "m"), str(path), "--out", str(tmp_path / "p.csv"),
                 "--batch-key", "sample"]) == 0
    capsys.readouterr()
    rc = main(["embed", str(path), "--out", str(tmp_path / "y.csv"), "--batch-key", "donor", "--epochs", "1"])
    err = capsys.readouterr().err
    assert rc == 2 and "--batch-key donor is not a column of obs" in err and "'sample'" in err
    assert not (tmp_path / "y.csv").exists()
