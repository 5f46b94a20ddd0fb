"""The run store: atomic writes, crash recovery, listing, deletion, safe model folders."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from dhaka.runs import record as record_mod
from dhaka.runs import (
    MODEL_FILES,
    ModelDirError,
    RunError,
    RunStore,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    check_model_dir,
)

REPO = Path(__file__).resolve().parents[1]
DATA = {"name": "blobs.csv", "fingerprint": {"shape": [120, 60], "nnz": 5000, "sha256": "ab" * 32}}
SETTINGS = {"mode": "expression", "latent_dim": 3, "structure": "deep", "epochs": 3, "seed": 7, "device": "cpu"}


def tiny_save(tag: str = "v1"):
    """A stand-in for ``Dhaka.save``: a json config and a bytes 'weights' file."""

    def save(path: Path) -> None:
        (Path(path) / "config.json").write_text(json.dumps({"tag": tag}))
        (Path(path) / "weights.safetensors").write_bytes(tag.encode() * 100)
        (Path(path) / "genes.txt").write_text("g1\ng2\n")

    return save


def _latent(n: int = 5) -> pd.DataFrame:
    return pd.DataFrame(np.arange(n * 3, dtype=float).reshape(n, 3),
                        index=[f"cell{i}" for i in range(n)], columns=["dhaka_1", "dhaka_2", "dhaka_3"])


def _no_temp_left(folder: Path) -> bool:
    return not [p for p in folder.rglob("*") if ".tmp-" in p.name or ".old-" in p.name]


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "home")


# ---------------------------------------------------------------------------
# atomic helpers
# ---------------------------------------------------------------------------
def test_atomic_write_bytes_replaces_whole_file(tmp_path):
    target = tmp_path / "f.bin"
    atomic_write_bytes(target, b"old")
    atomic_write_bytes(target, b"new contents")
    assert target.read_bytes() == b"new contents"
    assert _no_temp_left(tmp_path)


def test_atomic_write_bytes_crash_keeps_old_file(tmp_path, monkeypatch):
    target = tmp_path / "f.json"
    atomic_write_json(target, {"v": 1})

    def crash(*args, **kwargs):
        raise OSError("simulated crash before rename")

    monkeypatch.setattr(os, "replace", crash)
    with pytest.raises(OSError, match="simulated"):
        atomic_write_json(target, {"v": 2})
    monkeypatch.undo()
    assert json.loads(target.read_text()) == {"v": 1}
    assert _no_temp_left(tmp_path)


def test_atomic_write_json_handles_numpy_and_nan(tmp_path):
    target = tmp_path / "m.json"
    atomic_write_json(target, {"a": np.float32(1.5), "b": np.arange(3), "c": float("nan"), "d": np.int64(4)})
    back = json.loads(target.read_text())
    assert back["a"] == 1.5 and back["b"] == [0, 1, 2] and back["d"] == 4 and np.isnan(back["c"])


def test_atomic_write_dir_failure_leaves_nothing(tmp_path):
    target = tmp_path / "model"

    def fill(path):
        (path / "config.json").write_text("{}")
        raise RuntimeError("disk full halfway")

    with pytest.raises(RuntimeError, match="halfway"):
        atomic_write_dir(target, fill)
    assert not target.exists()
    assert list(tmp_path.iterdir()) == []


def test_atomic_write_dir_replace_and_failed_replace_keeps_old(tmp_path):
    target = tmp_path / "model"
    atomic_write_dir(target, tiny_save("v1"))
    atomic_write_dir(target, tiny_save("v2"))
    assert json.loads((target / "config.json").read_text()) == {"tag": "v2"}

    def bad(path):
        (path / "config.json").write_text('{"tag": "v3"}')
        raise RuntimeError("crash while saving v3")

    with pytest.raises(RuntimeError):
        atomic_write_dir(target, bad)
    assert json.loads((target / "config.json").read_text()) == {"tag": "v2"}
    real_replace = os.replace
    calls = {"n": 0}

    def fail_second_replace(src, dst):
        calls["n"] += 1
        if calls["n"] == 2:  # old folder already moved away, new one not yet in
            raise OSError("crash between the two renames")
        return real_replace(src, dst)

    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(os, "replace", fail_second_replace)
        with pytest.raises(OSError, match="between"):
            atomic_write_dir(target, tiny_save("v5"))
    assert json.loads((target / "config.json").read_text()) == {"tag": "v2"}
    with pytest.raises(FileExistsError):
        atomic_write_dir(target, tiny_save("v4"), replace=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["model"]


# ---------------------------------------------------------------------------
# create / checkpoint / finish / read
# ---------------------------------------------------------------------------
def test_create_writes_complete_record(store):
    run = store.create(settings=SETTINGS, data=DATA, owner="alice", genes=["g1", "g2"])
    record = json.loads((run.path / "run.json").read_text())
    assert record["id"] == run.id and run.path.parent == store.runs_dir
    assert record["status"] == "running"
    assert record["settings"] == SETTINGS
    assert record["seed"] == 7 and record["device"] == "cpu"
    assert record["data"] == DATA
    assert record["owner"] == "alice"
    assert record["process"]["pid"] == os.getpid() and record["process"]["hostname"]
    assert isinstance(record["heartbeat"], float)
    versions = record["versions"]
    assert set(versions) >= {"python", "torch", "numpy", "sklearn", "dhaka"}
    assert versions["numpy"] == np.__version__
    assert (run.path / "genes.txt").read_text().split() == ["g1", "g2"]
    assert run.status == "running"
    # another reader in this process sees it running (the lock is held)
    assert store.open(run.id, admin=True).status == "running"
    [info] = store.list(admin=True)
    assert info.status == "running" and info.data_name == "blobs.csv" and info.data_shape == (120, 60)
    run.close()
    assert store.open(run.id, admin=True).status == "interrupted"


def test_full_run_lifecycle(store):
    run = store.create(settings=SETTINGS, data=DATA)
    assert run.checkpoint_path() is None
    first = run.write_checkpoint(tiny_save("epoch1"), epoch=1)
    second = run.write_checkpoint(tiny_save("epoch2"), epoch=2)
    assert not first.exists(), "the previous checkpoint is removed once the new one is recorded"
    assert run.checkpoint_path() == second.resolve()
    assert run.record["last_checkpoint_epoch"] == 2
    history = [{"epoch": 1, "loss": 2.0}, {"epoch": 2, "loss": 1.25}]
    run.finish(status="done", save_fn=tiny_save("final"), latent=_latent(), history=history,
               metrics={"ari": np.float64(0.9)}, device="cuda:0")
    assert store.open(run.id, admin=True).record["device"] == "cuda:0"
    assert _no_temp_left(run.path)

    opened = store.open(run.id, admin=True)
    assert opened.status == "done"
    pd.testing.assert_frame_equal(opened.load_latent(), _latent())
    assert opened.load_history() == history
    assert opened.load_metrics() == {"ari": 0.9, "final_loss": 1.25}
    model = opened.model_dir()
    assert model == (run.path / "model").resolve()
    assert check_model_dir(model) == model
    assert json.loads((model / "config.json").read_text()) == {"tag": "final"}
    assert opened.checkpoint_path() is None  # final model saved: checkpoint dropped by default
    [info] = store.list(admin=True)
    assert (info.status, info.final_loss, info.ari) == ("done", 1.25, 0.9)
    assert "latent_dim=3" in info.settings_summary
    row = info.as_row()
    assert row["shape"] == "120x60" and row["final_loss"] == 1.25


def test_stopped_and_failed_runs(store):
    stopped = store.create(settings=SETTINGS, data=DATA)
    stopped.write_checkpoint(tiny_save("e1"), epoch=1)
    stopped.finish(status="stopped", save_fn=tiny_save("partial"), history=[{"loss": 3.0}])
    assert store.open(stopped.id, admin=True).status == "stopped"

    failed = store.create(settings=SETTINGS, data=DATA)
    failed.write_checkpoint(tiny_save("good"), epoch=4)
    failed.finish(status="failed", error="DivergenceError: loss is NaN at epoch 5")
    opened = store.open(failed.id, admin=True)
    assert opened.status == "failed"
    info = opened.info()
    assert info.error.startswith("DivergenceError") and info.last_checkpoint_epoch == 4
    # no final model: the last good checkpoint is what loads
    assert json.loads((opened.model_dir() / "config.json").read_text()) == {"tag": "good"}
    with pytest.raises(RunError, match="no complete latent"):
        opened.load_latent()
    with pytest.raises(ValueError):
        store.create(settings=SETTINGS, data=DATA).finish(status="finished")


def test_read_only_run_cannot_write(store):
    run = store.create(settings=SETTINGS, data=DATA)
    reader = store.open(run.id, admin=True)
    with pytest.raises(RunError, match="read-only"):
        reader.write_checkpoint(tiny_save(), epoch=1)
    with pytest.raises(RunError, match="read-only"):
        reader.finish(status="done")
    run.finish(status="done")


# ---------------------------------------------------------------------------
# crashes inside one process (simulated)
# ---------------------------------------------------------------------------
def test_crash_during_create_lists_nothing(store, monkeypatch):
    def crash(*args, **kwargs):
        raise OSError("power cut")

    monkeypatch.setattr(os, "rename", crash)
    with pytest.raises(OSError, match="power cut"):
        store.create(settings=SETTINGS, data=DATA)
    monkeypatch.undo()
    assert store.list(admin=True) == []
    assert list(store.runs_dir.iterdir()) == []


def test_crash_in_checkpoint_save_keeps_previous_checkpoint(store):
    run = store.create(settings=SETTINGS, data=DATA)
    good = run.write_checkpoint(tiny_save("good"), epoch=2)

    def broken(path):
        (path / "config.json").write_text('{"tag": "half"}')
        raise MemoryError("killed while writing weights")

    with pytest.raises(MemoryError):
        run.write_checkpoint(broken, epoch=3)
    assert run.checkpoint_path() == good.resolve()
    assert store.open(run.id, admin=True).record["last_checkpoint_epoch"] == 2
    assert sorted(p.name for p in run.checkpoint_dir.iterdir()) == [good.name]
    run.close()


def test_crash_between_checkpoint_rename_and_record_update(store, monkeypatch):
    run = store.create(settings=SETTINGS, data=DATA)
    good = run.write_checkpoint(tiny_save("good"), epoch=2)

    def crash(*args, **kwargs):
        raise OSError("died before run.json was updated")

    monkeypatch.setattr(record_mod, "atomic_write_json", crash)
    with pytest.raises(OSError):
        run.write_checkpoint(tiny_save("newer"), epoch=3)
    monkeypatch.undo()
    run.close()
    reader = store.open(run.id, admin=True)
    assert reader.status == "interrupted"
    # run.json still names the older, complete checkpoint (the orphan folder is ignored)
    assert reader.checkpoint_path() == good.resolve()
    assert json.loads((reader.model_dir() / "config.json").read_text()) == {"tag": "good"}
    assert len(list(run.checkpoint_dir.iterdir())) == 2  # the unrecorded orphan is still there


def test_orphan_checkpoints_are_cleaned_by_the_writer(store, monkeypatch):
    run = store.create(settings=SETTINGS, data=DATA)
    run.write_checkpoint(tiny_save("good"), epoch=2)
    real = record_mod.atomic_write_json
    calls = {"n": 0}

    def crash_once(*args, **kwargs):
        calls["n"] += 1
        if calls["n"] == 1:
            raise OSError("transient")
        return real(*args, **kwargs)

    monkeypatch.setattr(record_mod, "atomic_write_json", crash_once)
    with pytest.raises(OSError):
        run.write_checkpoint(tiny_save("orphan"), epoch=3)
    latest = run.write_checkpoint(tiny_save("latest"), epoch=4)
    assert [p.name for p in run.checkpoint_dir.iterdir()] == [latest.name]
    run.finish(status="stopped")
    assert run.checkpoint_path() == latest.resolve()


def test_crash_during_finish_does_not_look_complete(store):
    run = store.create(settings=SETTINGS, data=DATA)
    run.write_checkpoint(tiny_save("ckpt"), epoch=1)

    def dies(path):
        (path / "config.json").write_text("{}")
        raise KeyboardInterrupt("server stopped")

    with pytest.raises(KeyboardInterrupt):
        run.finish(status="done", save_fn=dies, latent=_latent(), history=[{"loss": 1.0}])
    run.close()  # what the kernel does when the process dies
    reader = store.open(run.id, admin=True)
    assert reader.status == "interrupted"
    with pytest.raises(RunError):
        reader.load_latent()
    assert not (run.path / "model").exists()
    assert json.loads((reader.model_dir() / "config.json").read_text()) == {"tag": "ckpt"}


# ---------------------------------------------------------------------------
# crashes of a real process (SIGKILL)
# ---------------------------------------------------------------------------
WRITER = textwrap.dedent(
    """
    import json, sys, time
    from pathlib import Path
    sys.path.insert(0, {repo!r})
    from dhaka.runs import RunStore

    def save(tag):
        def fn(path):
            (Path(path) / "config.json").write_text(json.dumps({{"tag": tag}}))
            (Path(path) / "weights.safetensors").write_bytes(b"w" * 1000)
        return fn

    def hang(path):
        (Path(path) / "config.json").write_text("{{}}")
        print("IN_FINISH", flush=True)
        time.sleep(600)

    store = RunStore({root!r})
    run = store.create(settings={{"epochs": 100, "seed": 1}}, data={{"name": "x", "fingerprint": {{"shape": [3, 4]}}}})
    for epoch in (1, 2):
        run.write_checkpoint(save(f"epoch{{epoch}}"), epoch=epoch)
    print(run.id, flush=True)
    if {during_finish!r}:
        run.finish(status="done", save_fn=hang, history=[{{"loss": 1.0}}])
    time.sleep(600)
    """
)


@pytest.mark.parametrize("during_finish", [False, True], ids=["mid-training", "mid-finish"])
def test_killed_worker_run_is_interrupted_with_usable_checkpoint(tmp_path, during_finish):
    root = tmp_path / "home"
    script = WRITER.format(repo=str(REPO), root=str(root), during_finish=during_finish)
    proc = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True)
    try:
        run_id = proc.stdout.readline().strip()
        assert run_id, "writer process did not start"
        if during_finish:
            assert proc.stdout.readline().strip() == "IN_FINISH"
        # alive: another process sees it running
        assert [i.status for i in RunStore(root).list(admin=True)] == ["running"]
        with pytest.raises(RunError, match="still running"):
            RunStore(root).delete(run_id, admin=True)
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(60)
        proc.stdout.close()

    restarted = RunStore(root)  # a new server process after the crash
    [info] = restarted.list(admin=True)
    assert info.id == run_id
    assert info.status == "interrupted"
    assert info.last_checkpoint_epoch == 2
    run = restarted.open(run_id, admin=True)
    ckpt = run.checkpoint_path()
    assert ckpt is not None and check_model_dir(ckpt) == ckpt
    assert json.loads((ckpt / "config.json").read_text()) == {"tag": "epoch2"}
    assert run.model_dir() == ckpt
    with pytest.raises(RunError):
        run.load_history()
    assert not (run.path / "model").exists()
    restarted.delete(run_id, admin=True)  # an interrupted run can be deleted
    assert restarted.list(admin=True) == []


def test_liveness_fallback_without_lock_file(store, monkeypatch):
    run = store.create(settings=SETTINGS, data=DATA)
    run.close()
    (run.path / ".lock").unlink()
    record = json.loads((run.path / "run.json").read_text())

    # same host, dead pid
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True, check=True)
    record["process"]["pid"] = int(dead.stdout)
    atomic_write_json(run.path / "run.json", record)
    assert store.open(run.id, admin=True).status == "interrupted"

    # same host, live pid (this process)
    record["process"]["pid"] = os.getpid()
    atomic_write_json(run.path / "run.json", record)
    assert store.open(run.id, admin=True).status == "running"

    # same pid number but a different process start time (pid reused after a restart)
    record["process"]["start_ticks"] = (record["process"]["start_ticks"] or 0) + 12345
    atomic_write_json(run.path / "run.json", record)
    assert store.open(run.id, admin=True).status == "interrupted"

    # another host: fresh heartbeat -> running; stale heartbeat -> interrupted
    record["process"]["hostname"] = "some-other-container"
    record["heartbeat"] = time.time()
    atomic_write_json(run.path / "run.json", record)
    assert store.open(run.id, admin=True).status == "running"
    record["heartbeat"] = time.time() - 3600
    atomic_write_json(run.path / "run.json", record)
    monkeypatch.setenv("DHAKA_HEARTBEAT_TIMEOUT", "600")
    assert store.open(run.id, admin=True).status == "interrupted"


# ---------------------------------------------------------------------------
# list / open / delete
# ---------------------------------------------------------------------------
def test_list_newest_first_and_owner_filter(store):
    ids = []
    for owner in ("a", "b", "a"):
        run = store.create(settings=SETTINGS, data=DATA, owner=owner)
        run.finish(status="done", history=[{"loss": 1.0}])
        ids.append(run.id)
    assert [i.id for i in store.list(admin=True)] == ids[::-1]
    assert [i.id for i in store.list(owner="a")] == [ids[2], ids[0]]
    created = [i.created for i in store.list(admin=True)]
    assert created == sorted(created, reverse=True)


def test_list_skips_broken_and_temporary_folders(store):
    good = store.create(settings=SETTINGS, data=DATA)
    good.finish(status="done")
    (store.runs_dir / ".20260101-000000-abcdef.tmp-1234").mkdir()
    (store.runs_dir / "20260101-000000-badbad").mkdir()  # no run.json
    broken = store.runs_dir / "20260101-000000-cccccc"
    broken.mkdir()
    (broken / "run.json").write_text("{not json")
    (store.runs_dir / "stray-file.txt").write_text("x")
    assert [i.id for i in store.list(admin=True)] == [good.id]
    with pytest.raises(RunError, match="cannot read"):
        store.open(broken.name, admin=True)
    assert RunStore(store.root / "missing").list(admin=True) == []


def test_delete(store, tmp_path):
    run = store.create(settings=SETTINGS, data=DATA)
    with pytest.raises(RunError, match="still running"):
        store.delete(run.id, admin=True)
    run.finish(status="done", save_fn=tiny_save())
    outside = tmp_path / "precious"
    outside.mkdir()
    (outside / "keep.txt").write_text("keep")
    for bad in ("../precious", "..", ".", "", "a/b", "/etc", f"{run.id}/model", "x\\y", ".hidden"):
        with pytest.raises(RunError):
            store.delete(bad, admin=True)
    (store.runs_dir / "escape").symlink_to(outside)
    with pytest.raises(RunError):
        store.delete("escape", admin=True)
    with pytest.raises(RunError, match="No run"):
        store.delete("20990101-000000-000000", admin=True)
    store.delete(run.id, admin=True)
    assert not run.path.exists()
    assert (outside / "keep.txt").read_text() == "keep"
    assert [p.name for p in store.runs_dir.iterdir()] == ["escape"]
    running = store.create(settings=SETTINGS, data=DATA)
    store.delete(running.id, force=True, admin=True)
    assert store.list(admin=True) == []


def test_default_root_from_env(monkeypatch, tmp_path):
    monkeypatch.setenv("DHAKA_HOME", str(tmp_path / "ws"))
    assert RunStore().root == tmp_path / "ws"
    monkeypatch.delenv("DHAKA_HOME")
    assert RunStore().root == Path("dhaka-runs")


# ---------------------------------------------------------------------------
# safe model folders
# ---------------------------------------------------------------------------
def _model(tmp_path: Path) -> Path:
    path = tmp_path / "m"
    path.mkdir()
    tiny_save()(path)
    return path


def test_check_model_dir_accepts_expected_files(tmp_path):
    path = _model(tmp_path)
    (path / "preprocess.json").write_text("{}")
    (path / "history.json").write_text("[]")
    assert check_model_dir(path) == path.resolve()
    assert MODEL_FILES == ("config.json", "weights.safetensors", "genes.txt", "preprocess.json", "history.json")


@pytest.mark.parametrize(
    "make, words",
    [
        (lambda p: (p / "model.pkl").write_bytes(b"\x80\x04."), "model.pkl"),
        (lambda p: (p / "weights.pt").write_bytes(b"PK"), "weights.pt"),
        (lambda p: (p / "sub").mkdir(), "sub/ (sub-folder)"),
        (lambda p: (p / "genes.txt").unlink() or (p / "genes.txt").symlink_to("/etc/passwd"), "symbolic link"),
        (lambda p: (p / "weights.safetensors").unlink(), "missing weights.safetensors"),
        (lambda p: os.mkfifo(p / "history.json"), "not a regular file"),
    ],
    ids=["pickle", "torch-pt", "subfolder", "symlink", "missing", "fifo"],
)
def test_check_model_dir_refuses(tmp_path, make, words):
    path = _model(tmp_path)
    make(path)
    with pytest.raises(ModelDirError) as err:
        check_model_dir(path)
    assert words in str(err.value)
    assert str(path) in str(err.value)


def test_check_model_dir_refuses_linked_or_missing_folder(tmp_path):
    real = _model(tmp_path)
    link = tmp_path / "link"
    link.symlink_to(real)
    with pytest.raises(ModelDirError, match="symbolic link"):
        check_model_dir(link)
    with pytest.raises(ModelDirError, match="does not exist"):
        check_model_dir(tmp_path / "nope")
    with pytest.raises(ModelDirError, match="unexpected"):
        check_model_dir(real, allowed=("config.json",))


def test_heartbeat_is_throttled_but_keeps_progress(store):
    run = store.create(settings=SETTINGS, data=DATA)
    assert run.heartbeat(epoch=1) is True
    first = json.loads((run.path / "run.json").read_text())
    assert first["progress"] == {"epoch": 1}
    assert run.heartbeat(epoch=2, min_interval=3600) is False  # too soon: not written yet
    assert json.loads((run.path / "run.json").read_text())["progress"] == {"epoch": 1}
    run.write_checkpoint(tiny_save(), epoch=2)  # the next write carries the pending progress
    record = json.loads((run.path / "run.json").read_text())
    assert record["progress"] == {"epoch": 2} and record["heartbeat"] >= first["heartbeat"]
    assert run.heartbeat(epoch=3, min_interval=0) is True
    assert json.loads((run.path / "run.json").read_text())["progress"] == {"epoch": 3}
    run.finish(status="done")
    with pytest.raises(RunError, match="read-only"):
        run.heartbeat()


def test_real_dhaka_model_through_the_store(store, blobs_counts):
    """The estimator's own save/load plugs into checkpoints and finish, and passes check_model_dir."""
    estimator = pytest.importorskip("dhaka.estimator")
    X, _y = blobs_counts
    est = estimator.Dhaka(epochs=2, n_genes=40, structure=(16,), batch_size=32, seed=0)
    run = store.create(settings=est.get_params(), data=DATA)
    est.fit(X, checkpoint=lambda save_fn, epoch: run.write_checkpoint(save_fn, epoch), checkpoint_every=1)
    assert run.record["last_checkpoint_epoch"] == 2
    assert check_model_dir(run.checkpoint_path())
    Z = est.transform(X)
    run.finish(status="done", save_fn=est.save, latent=_latent(len(Z)), history=[{"loss": 1.0}],
               keep_checkpoint=True)
    opened = store.open(run.id, admin=True)
    loaded = estimator.Dhaka.load(opened.model_dir())
    np.testing.assert_allclose(loaded.transform(X), Z, rtol=1e-5, atol=1e-5)
    from_ckpt = estimator.Dhaka.load(opened.checkpoint_path())
    assert from_ckpt.transform(X).shape == Z.shape
    assert _no_temp_left(run.path)
