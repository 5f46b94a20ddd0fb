"""AppTest: the Data page reads a chosen layer of an uploaded .h5ad (issue 14)."""
from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import scipy.sparse as sp
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DHAKA_DEMO_FAST", "1")
    mp.setenv("DHAKA_UMAP_WARMUP", "0")
    mp.setenv("DHAKA_HOME", str(tmp_path_factory.mktemp("dhaka-home")))
    yield
    mp.undo()


def _scdna_h5ad_bytes() -> tuple[bytes, np.ndarray, np.ndarray]:
    import anndata

    from dhaka.io import to_h5ad_bytes

    rng = np.random.default_rng(0)
    counts = rng.poisson(30, size=(40, 25)).astype(np.float32)
    state = rng.integers(0, 6, size=(40, 25)).astype(np.int8)
    a = anndata.AnnData(X=counts, obs=pd.DataFrame(index=[f"cell{i}" for i in range(40)]),
                        var=pd.DataFrame(index=[f"1:{j * 500_000 + 1}-{(j + 1) * 500_000}" for j in range(25)]))
    a.layers["state"] = state
    a.layers["copy"] = sp.csr_matrix(state.astype(np.float32))
    return to_h5ad_bytes(a), counts, state


def _upload(at: AppTest, name: str, data: bytes) -> None:
    at.file_uploader(key="w.data.file").set_value((name, data, "application/octet-stream"))
    at.run()
    assert not at.exception, [e.value for e in at.exception]


def test_layers_of_an_uploaded_h5ad_are_offered_and_the_chosen_one_is_read(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    data, counts, state = _scdna_h5ad_bytes()
    _upload(at, "cells.h5ad", data)
    box = at.selectbox(key="w.data.layer")
    assert box.options == ["X (the main matrix)", "layer 'copy': 40 × 25 float32", "layer 'state': 40 × 25 int8"]
    assert box.value == "X"  # the default
    box.set_value("state").run()
    at.button(key="w.data.load_file").click().run()
    assert not at.error, [e.value for e in at.error]
    loaded = at.session_state["dhaka.dataset"]
    np.testing.assert_array_equal(np.asarray(loaded.X), state.astype(np.float32))
    assert loaded.uns["dhaka_io"]["layer"] == "state"
    assert at.session_state["dhaka.dataset_info"]["name"] == "cells.h5ad (layer state)"
    # X again: the main matrix, not the layer
    at.selectbox(key="w.data.layer").set_value("X").run()
    at.button(key="w.data.load_file").click().run()
    np.testing.assert_array_equal(np.asarray(at.session_state["dhaka.dataset"].X), counts)


def test_no_layer_picker_for_files_without_layers(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    buf = io.StringIO()
    pd.DataFrame(np.ones((5, 4)), index=[f"c{i}" for i in range(5)], columns=list("abcd")).to_csv(buf)
    _upload(at, "m.csv", buf.getvalue().encode())
    assert not [s for s in at.selectbox if s.key == "w.data.layer"]


def test_an_hmmcopy_long_table_upload_becomes_cells_by_genome_ordered_bins(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    rng = np.random.default_rng(1)
    bins = [(c, i * 1_000_000 + 1, (i + 1) * 1_000_000) for c in ("chrX", "chr2", "chr1") for i in range(4)]
    rows = [(f"cell{k}", c, s, e, int(rng.integers(0, 5))) for k in range(30) for c, s, e in bins]
    table = pd.DataFrame(rows, columns=["cell_id", "chr", "start", "end", "state"]).to_csv(index=False)
    _upload(at, "reads.csv", table.encode())
    at.button(key="w.data.load_file").click().run()
    assert not at.error, [e.value for e in at.error]
    loaded = at.session_state["dhaka.dataset"]
    assert loaded.shape == (30, 12)
    assert list(dict.fromkeys(loaded.var["chr"])) == ["1", "2", "X"]
