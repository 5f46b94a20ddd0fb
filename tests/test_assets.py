"""The shipped real data sets load through dhaka.io.read with the documented shape, labels and kind."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp

from dhaka import io
from dhaka.preprocess import detect_kind

DATA = Path(__file__).resolve().parent.parent / "assets" / "data"

TUMOURS = {"malignant_93": 40, "malignant_97": 35, "malignant_MGH53": 34, "malignant_MGH36": 33}
NORMAL = {"Oligodendrocytes (non-malignant)": 23, "Microglia/Macrophage": 19}


@pytest.fixture(scope="module")
def oligo():
    return io.read(DATA / "oligodendroglioma.h5ad")


@pytest.fixture(scope="module")
def pbmc():
    return io.read(DATA / "pbmc68k_reduced.h5ad")


def test_oligodendroglioma_shape_and_labels(oligo):
    assert oligo.shape == (184, 9450)
    assert sp.issparse(oligo.X) and oligo.X.dtype == np.float32
    counts = oligo.obs["cell_type"].astype(str).value_counts().to_dict()
    assert counts == {**TUMOURS, **NORMAL}
    malignant = oligo.obs["malignant"].astype(str)
    assert (malignant == "malignant").sum() == sum(TUMOURS.values())
    assert set(oligo.obs.loc[malignant == "non-malignant", "cell_type"].astype(str)) == set(NORMAL)
    assert oligo.obs_names.is_unique and oligo.var_names.is_unique


def test_oligodendroglioma_positions_and_kind(oligo):
    var = oligo.var
    assert {"chromosome", "start", "end"} <= set(var.columns)
    assert var["chromosome"].astype(str).str.startswith("chr").all()
    assert (var["end"].to_numpy() >= var["start"].to_numpy()).all()
    X = oligo.X
    assert X.data.min() >= 0 and np.isfinite(X.data).all()
    # TPM-like, not logged: the default pipeline must log it and not renormalise it
    kind = detect_kind(X)
    assert kind.kind == "normalized" and kind.log and not kind.normalize


def test_pbmc68k_reduced_shape_and_labels(pbmc):
    assert pbmc.shape == (700, 765)
    assert sp.issparse(pbmc.X)
    assert pbmc.obs["bulk_labels"].astype(str).nunique() == 10
    assert pbmc.obs["louvain"].astype(str).nunique() == 11
    assert pbmc.obs["bulk_labels"].notna().all()
    kind = detect_kind(pbmc.X)
    assert kind.kind == "log" and not kind.log and not kind.normalize


def test_no_pickled_objects_in_uns(oligo, pbmc):
    import h5py

    for name in ("oligodendroglioma.h5ad", "pbmc68k_reduced.h5ad"):
        with h5py.File(DATA / name, "r") as f:
            if "uns" in f:
                assert len(f["uns"].keys()) == 0
            for key in ("obsm", "varm", "obsp", "layers"):
                assert key not in f or len(f[key].keys()) == 0


def test_licences_name_the_sources():
    text = (DATA / "LICENSES.md").read_text()
    for needle in ("BSD-3", "Tirosh", "Zheng", "infercnvpy", "scanpy"):
        assert needle in text
