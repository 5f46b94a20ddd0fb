from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dhaka.cli import main

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture
def counts_csv(tmp_path, blobs_counts):
    X, y = blobs_counts
    cells = [f"cell{i}" for i in range(X.shape[0])]
    path = tmp_path / "counts.csv"
    pd.DataFrame(X.astype(int), index=cells, columns=[f"G{j}" for j in range(X.shape[1])]).to_csv(path)
    pd.DataFrame({"group": y}, index=cells).to_csv(tmp_path / "meta.csv")
    return path


def test_embed_writes_latent_with_clusters_and_model(counts_csv, tmp_path):
    out, model, h5 = tmp_path / "latent.csv", tmp_path / "model", tmp_path / "out.h5ad"
    rc = main(["embed", str(counts_csv), "--out", str(out), "--save-model", str(model), "--epochs", "15",
               "--structure", "32", "--h5ad", str(h5), "--metadata", str(tmp_path / "meta.csv"), "--quiet"])
    assert rc == 0
    df = pd.read_csv(out, index_col=0)
    assert list(df.columns) == ["dhaka_1", "dhaka_2", "dhaka_3", "cluster"] and len(df) == 120
    assert df.index[0] == "cell0" and df["cluster"].nunique() >= 2
    assert (model / "weights.safetensors").exists()
    import anndata as ad

    a = ad.read_h5ad(h5)
    assert a.obsm["X_dhaka"].shape == (120, 3) and "dhaka_cluster" in a.obs and "group" in a.obs

    proj = tmp_path / "proj.csv"
    assert main(["project", str(model), str(counts_csv), "--out", str(proj)]) == 0
    np.testing.assert_allclose(pd.read_csv(proj, index_col=0)[["dhaka_1", "dhaka_2", "dhaka_3"]].to_numpy(),
                               df[["dhaka_1", "dhaka_2", "dhaka_3"]].to_numpy(), rtol=1e-4, atol=1e-5)


def test_bad_input_exits_2_with_a_message(tmp_path, capsys):
    bad = tmp_path / "bad.csv"
    bad.write_text("cell,g1,g2\nc1,1,x\nc2,3,4\n")
    assert main(["embed", str(bad), "--out", str(tmp_path / "o.csv")]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error:") and "bad.csv" in err and "Traceback" not in err
    assert main(["embed", str(bad), "--out", "o.csv", "--n-genes", "lots"]) == 2
    assert "--n-genes" in capsys.readouterr().err
    assert main(["embed", str(bad), "--out", "o.csv", "--refine", "-1"]) == 2
    assert "--refine" in capsys.readouterr().err


def test_embed_refine_setting_reaches_the_saved_model(counts_csv, tmp_path):
    import json

    model = tmp_path / "model"
    assert main(["embed", str(counts_csv), "--out", str(tmp_path / "l.csv"), "--save-model", str(model),
                 "--epochs", "3", "--structure", "32", "--refine", "0", "--quiet"]) == 0
    cfg = json.loads((model / "config.json").read_text())
    assert cfg["params"]["refine"] == 0 and len(cfg["refinement"]) == 1


def test_simulate_writes_matrix_and_truth(tmp_path):
    out = tmp_path / "traj.csv"
    assert main(["simulate", "trajectory", "--out", str(out)]) == 0
    truth = pd.read_csv(tmp_path / "traj.obs.csv", index_col=0)
    assert "time" in truth.columns
    assert len(pd.read_csv(out, index_col=0)) == len(truth)


@pytest.mark.parametrize("cmd", [[], ["embed"], ["project"], ["simulate"]])
def test_help_for_each_command(cmd):
    res = subprocess.run([sys.executable, "-m", "dhaka", *cmd, "--help"], cwd=ROOT, capture_output=True, text=True)
    assert res.returncode == 0 and "usage:" in res.stdout


def test_embed_distributed_under_torchrun(counts_csv, tmp_path):
    """Two gloo processes; rank 0 writes the latent CSV."""
    import shutil

    torchrun = shutil.which("torchrun")
    if torchrun is None:
        pytest.skip("torchrun is not on PATH")
    out = tmp_path / "latent.csv"
    env = {**__import__("os").environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    res = subprocess.run([torchrun, "--standalone", "--nproc_per_node=2", "-m", "dhaka", "embed", str(counts_csv),
                          "--out", str(out), "--distributed", "--epochs", "3", "--structure", "16", "--quiet"],
                         cwd=ROOT, capture_output=True, text=True, env=env, timeout=300)
    # a rank's own last words come before torchrun's long summary: show both ends
    assert res.returncode == 0, res.stderr[:3000] + "\n...\n" + res.stderr[-1500:]
    df = pd.read_csv(out, index_col=0)
    assert len(df) == 120 and {"dhaka_1", "cluster"} <= set(df.columns)


def test_settings_and_outputs_are_checked_before_the_input_is_read_and_named_by_flag(tmp_path, capsys):
    import torch

    from dhaka import cli

    missing_input = str(tmp_path / "not-there.csv")  # never read: each check below fails first
    out = str(tmp_path / "latent.csv")
    assert cli.main(["embed", missing_input, "--out", str(tmp_path / "no" / "x.csv")]) == 2
    assert "--out" in capsys.readouterr().err
    assert cli.main(["embed", missing_input, "--out", out, "--k-max", "0"]) == 2
    assert "--k-max must be at least 1" in capsys.readouterr().err
    if not torch.cuda.is_available():
        assert cli.main(["embed", missing_input, "--out", out, "--device", "cuda"]) == 2
        err = capsys.readouterr().err
        assert "--device cuda" in err and "device=" not in err
    taken = tmp_path / "model"
    taken.mkdir()
    (taken / "config.json").write_text("{}")
    assert cli.main(["embed", missing_input, "--out", out, "--save-model", str(taken)]) == 2
    assert "--save-model" in capsys.readouterr().err
