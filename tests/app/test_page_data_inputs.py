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


# ------------------------------------------------------------ uploads parsed outside the server (issue 25)
def test_the_server_never_parses_an_upload_itself(env, monkeypatch):
    """Every reader of dhaka.io fails in this (the server's) process; the upload, its metadata and an
    .h5ad's layer list still load, since they are parsed in a capped child process."""
    import dhaka.io

    def boom(*args, **kwargs):  # pragma: no cover - reaching it is the failure
        raise AssertionError("an upload was parsed in the server process")

    for name in ("read", "read_metadata", "h5ad_layers", "estimate_read_memory"):
        monkeypatch.setattr(dhaka.io, name, boom)
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    data, counts, state = _scdna_h5ad_bytes()
    _upload(at, "cells.h5ad", data)
    assert at.selectbox(key="w.data.layer").options[0] == "X (the main matrix)"
    meta = "cell,kind\n" + "".join(f"cell{i},{'ab'[i % 2]}\n" for i in range(40))
    at.file_uploader(key="w.data.meta").set_value(("meta.csv", meta.encode(), "text/csv"))
    at.run()
    at.button(key="w.data.load_file").click().run()
    assert not at.error and not at.exception, [e.value for e in at.error]
    loaded = at.session_state["dhaka.dataset"]
    np.testing.assert_array_equal(np.asarray(loaded.X), counts)
    assert list(loaded.obs["kind"][:2]) == ["a", "b"]


def test_an_upload_over_the_cap_is_refused_with_the_cap_named(env, monkeypatch):
    monkeypatch.setenv("DHAKA_UPLOAD_MEMORY", "1M")
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    before = at.session_state["dhaka.dataset_info"]["key"]
    buf = io.StringIO()
    pd.DataFrame(np.ones((2000, 100)), index=[f"c{i}" for i in range(2000)],
                 columns=[f"g{j}" for j in range(100)]).to_csv(buf)
    _upload(at, "big.csv", buf.getvalue().encode())
    at.button(key="w.data.load_file").click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Could not read the file: big.csv: "), errors
    assert "1.0 MB memory cap" in errors[0], errors
    assert at.session_state["dhaka.dataset_info"]["key"] == before


def test_a_bad_metadata_table_is_named_as_the_metadata(env):
    at = AppTest.from_file(APP, default_timeout=120)
    at.run()
    buf = io.StringIO()
    pd.DataFrame(np.ones((5, 4)), index=[f"c{i}" for i in range(5)], columns=list("abcd")).to_csv(buf)
    at.file_uploader(key="w.data.meta").set_value(("meta.csv", b"cell,kind\nx1,p\nx2,q\n", "text/csv"))
    _upload(at, "m.csv", buf.getvalue().encode())
    at.button(key="w.data.load_file").click().run()
    errors = [e.value for e in at.error]
    assert len(errors) == 1 and errors[0].startswith("Could not read the metadata: meta.csv"), errors
