"""A lab server under hostile uploads: while one person trains, another uploads memory bombs and files that
reach outside themselves. The server (this process) stays up, the upload is refused or read within its memory
bound, nothing of the server's other files reaches the uploader, and the training's run is stored intact.
"""
from __future__ import annotations

import gzip
import resource
from pathlib import Path

import numpy as np
import pytest
from streamlit.testing.v1 import AppTest

APP = str(Path(__file__).resolve().parents[2] / "app.py")


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    mp = pytest.MonkeyPatch()
    mp.setenv("DHAKA_DEMO_FAST", "1")
    mp.setenv("DHAKA_UMAP_WARMUP", "0")
    mp.setenv("DHAKA_HOME", str(tmp_path_factory.mktemp("dhaka-home-hostile")))
    yield
    mp.undo()


def _peak_mb() -> float:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def _upload(at: AppTest, filename: str, data: bytes) -> list[str]:
    at.file_uploader(key="w.data.file").set_value((filename, data, "application/octet-stream"))
    at.run()
    at.button(key="w.data.load_file").click().run()
    assert not at.exception, [e.value for e in at.exception]
    return [e.value for e in at.error]


def test_memory_bombs_and_escapes_while_another_person_trains(env, tmp_path):
    from dhaka.runs import RunStore
    from tests.badfiles import _hostile_h5ads

    trainer = AppTest.from_file(APP, default_timeout=120).run()
    trainer.switch_page("pages/train.py").run()
    trainer.number_input(key="w.train.epochs").set_value(30).run()
    trainer.button(key="w.train.start").click().run()
    job = trainer.session_state["dhaka.job"]

    attacker = AppTest.from_file(APP, default_timeout=120).run()

    # 1. a 3000 x 10000 table of zeros in ~100 KB of gzip: read within 3x the float32 matrix + 200 MB
    text = ",".join(f"g{j}" for j in range(10_000)) + "\n"
    text += "".join(f"c{i}," + ",".join(["0"] * 10_000) + "\n" for i in range(3_000))
    bomb = gzip.compress(text.encode(), compresslevel=9)
    assert len(bomb) < 200_000
    del text
    peak0 = _peak_mb()
    errors = _upload(attacker, "zeros.csv.gz", bomb)
    growth = _peak_mb() - peak0
    matrix_mb = 3_000 * 10_000 * 4 / 2**20
    assert growth <= 3 * matrix_mb + 200, f"reading the bomb grew the peak by {growth:.0f} MB"
    assert errors or attacker.session_state["dhaka.dataset"].shape in ((3_000, 10_000), (10_000, 3_000))

    # 2. a 73-byte MatrixMarket header declaring 2,000,000 x 2,000,000: refused before any allocation
    peak0 = _peak_mb()
    errors = _upload(attacker, "huge.mtx",
                     b"%%MatrixMarket matrix coordinate integer general\n2000000 2000000 1\n1 1 1\n")
    assert len(errors) == 1 and "huge.mtx" in errors[0] and "declares" in errors[0], errors
    assert _peak_mb() - peak0 < 100

    # 3. .h5ad files whose X points at other files of the server: refused, the server's bytes never read
    for name, (filename, data) in _hostile_h5ads(tmp_path / "server").items():
        errors = _upload(attacker, filename, data)
        assert len(errors) == 1 and filename in errors[0], (name, errors)
        shown = attacker.session_state["dhaka.dataset"]
        assert shown is None or b"root:x" not in np.asarray(shown.X.toarray() if hasattr(shown.X, "toarray")
                                                            else shown.X).tobytes()
    assert attacker.session_state["dhaka.dataset"] is not None  # what the person had is kept

    # the other person's training finished and its run is stored intact
    assert job.wait(300), "the training did not finish while the uploads were refused"
    trainer.run()
    assert not trainer.exception, [e.value for e in trainer.exception]
    snap = job.snapshot(history=False)
    assert snap["status"] == "done"
    run = RunStore().open(snap["progress"]["run_id"], admin=True)
    assert run.status == "done" and run.record["files"].get("model")
    latent = run.load_latent()
    assert latent.shape[0] == trainer.session_state["dhaka.dataset"].n_obs
    assert np.isfinite(latent.filter(like="dhaka_").to_numpy()).all()


def _reset_peak() -> bool:
    """Reset this process's peak resident size (VmHWM) to its current size; False where Linux does not allow it."""
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


def _status_mb(key: str) -> float:
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) / 1024
    raise RuntimeError(key)


def test_the_issue_25_uploads_leave_the_server_memory_where_it_was(env, tmp_path):
    """Each hostile upload of issue 25 is refused with its reason (or read right) while the server's peak
    resident memory (VmHWM from /proc, reset before each upload) stays within a small margin."""
    from tests.badfiles import EXPECTED, READS_AS, make_bad_corpus, message_ok

    if not _reset_peak():
        pytest.skip("/proc/self/clear_refs cannot reset the peak resident size here")
    corpus = make_bad_corpus(tmp_path / "corpus")
    at = AppTest.from_file(APP, default_timeout=120).run()
    names = ["ragged_rows_cancel", "long_line_gz", "tenx_long_barcode_line", "mtx_duplicate_entry",
             "h5ad_many_chunks", "cn_long_no_shared_bins"]
    for name in names:
        path = corpus[name]
        data = path.read_bytes()
        _reset_peak()
        base = _status_mb("VmRSS")
        errors = _upload(at, path.name, data)
        growth = _status_mb("VmHWM") - base
        assert len(errors) == 1 and path.name in errors[0] and message_ok(name, errors[0]), (name, errors)
        assert growth < 150, f"{name}: the server's peak grew by {growth:.0f} MB"
        assert EXPECTED[name][0]  # every one of these is a refusal
    # the BOM file is read the right way round
    errors = _upload(at, "bom_latin1.csv", corpus["bom_latin1_corner"].read_bytes())
    assert not errors, errors
    obs, var, X = READS_AS["bom_latin1_corner"]
    shown = at.session_state["dhaka.dataset"]
    assert list(shown.obs_names) == obs and list(shown.var_names) == var and shown.X.tolist() == X
