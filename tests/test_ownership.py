"""Runs owned by a person: listing, opening, sharing and deleting; retention and crash clean-up."""
from __future__ import annotations

import json
import os
import time
from pathlib import Path

import pytest

from dhaka.runs import (
    Retention,
    RunError,
    RunPermissionError,
    RunStore,
    atomic_write_json,
    start_maintenance,
)

DATA = {"name": "blobs.csv", "fingerprint": {"shape": [120, 60], "nnz": 5000, "sha256": "ab" * 32}}
SETTINGS = {"latent_dim": 3, "epochs": 3, "seed": 7, "device": "cpu"}
DAY = 86400.0


def _save(path: Path, size: int = 1000) -> None:
    (Path(path) / "config.json").write_text("{}")
    (Path(path) / "weights.safetensors").write_bytes(b"w" * size)


def _done(store: RunStore, owner: str | None, *, size: int = 1000, name: str = "blobs.csv"):
    run = store.create(settings=SETTINGS, data={**DATA, "name": name}, owner=owner)
    run.finish(status="done", save_fn=lambda p: _save(p, size), history=[{"loss": 1.0}])
    return run


def _age(run, days_ago: float, now: float) -> None:
    """Make a finished run look as if it last ran ``days_ago`` days before ``now``."""
    record = json.loads((run.path / "run.json").read_text())
    t = now - days_ago * DAY
    iso = time.strftime("%Y-%m-%dT%H:%M:%S+00:00", time.gmtime(t))
    record.update(created=iso, finished=iso, heartbeat=t)
    atomic_write_json(run.path / "run.json", record)
    os.utime(run.path / "run.json", (t, t))


@pytest.fixture
def store(tmp_path) -> RunStore:
    return RunStore(tmp_path / "home")


# ---------------------------------------------------------------------------
# ownership
# ---------------------------------------------------------------------------
def test_each_person_lists_opens_and_deletes_only_their_runs(store):
    a = _done(store, "user:alice")
    b = _done(store, "user:bob")
    legacy = _done(store, None)  # made outside the app, before owners existed
    assert [i.id for i in store.list(owner="user:alice")] == [a.id]
    assert [i.id for i in store.list(owner="user:bob")] == [b.id]
    assert {i.id for i in store.list(admin=True)} == {a.id, b.id, legacy.id}

    assert store.open(a.id, owner="user:alice").id == a.id
    with pytest.raises(RunPermissionError, match=rf"Run {b.id} belongs to someone else and is not shared"):
        store.open(b.id, owner="user:alice")
    with pytest.raises(RunPermissionError, match="belongs to someone else"):
        store.open(legacy.id, owner="user:alice")
    with pytest.raises(RunPermissionError, match=rf"Run {b.id} belongs to someone else; only its owner or a lab "
                                                 "admin can delete it"):
        store.delete(b.id, owner="user:alice")
    assert isinstance(RunPermissionError("x"), PermissionError) and issubclass(RunPermissionError, RunError)
    assert b.path.is_dir()
    store.delete(a.id, owner="user:alice")
    assert not a.path.exists()
    store.delete(legacy.id, admin=True)
    assert [i.id for i in store.list(admin=True)] == [b.id]


def test_asking_as_nobody_is_an_error_not_everything(store):
    run = _done(store, "user:alice")
    for call in (lambda: store.list(), lambda: store.open(run.id), lambda: store.delete(run.id),
                 lambda: store.share(run.id), lambda: store.list(owner=""), lambda: store.view()):
        with pytest.raises(ValueError, match=r"say who asks: owner=.*admin=True"):
            call()
    assert run.path.is_dir()


def test_sharing_lets_others_list_and_open_but_not_delete(store):
    a = _done(store, "user:alice")
    with pytest.raises(RunPermissionError, match="only its owner or a lab admin can share it"):
        store.share(a.id, owner="user:bob")
    info = store.share(a.id, owner="user:alice")
    assert info.shared and info.as_row()["shared"] is True
    assert json.loads((a.path / "run.json").read_text())["shared"] is True
    [seen] = store.list(owner="user:bob")
    assert seen.id == a.id and seen.shared and seen.owner == "user:alice"
    assert store.list(owner="user:bob", include_shared=False) == []
    assert store.open(a.id, owner="user:bob").record["shared"] is True
    with pytest.raises(RunPermissionError, match="delete"):
        store.delete(a.id, owner="user:bob")
    store.share(a.id, owner="user:alice", shared=False)
    assert store.list(owner="user:bob") == []
    with pytest.raises(RunPermissionError):
        store.open(a.id, owner="user:bob")
    # an admin can share a run nobody owns
    legacy = _done(store, None)
    store.share(legacy.id, admin=True)
    assert [i.id for i in store.list(owner="user:bob")] == [legacy.id]


def test_a_running_run_cannot_be_shared_and_keeps_its_record(store):
    running = store.create(settings=SETTINGS, data=DATA, owner="user:alice")
    with pytest.raises(RunError, match="still running; share it once it has finished"):
        store.share(running.id, owner="user:alice")
    running.finish(status="done")
    assert store.share(running.id, owner="user:alice").shared


def test_view_binds_who_asks(store):
    a = _done(store, "user:alice")
    b = _done(store, "user:bob")
    alice = store.view("user:alice")
    assert [i.id for i in alice.list()] == [a.id]
    assert alice.open(a.id).id == a.id
    with pytest.raises(RunPermissionError):
        alice.open(b.id)
    with pytest.raises(RunPermissionError):
        alice.delete(b.id)
    assert alice.is_mine(alice.list()[0])
    admin = store.view(admin=True)
    assert {i.id for i in admin.list()} == {a.id, b.id}
    assert not admin.is_mine(admin.list()[0])
    admin.delete(b.id)
    assert [i.id for i in store.list(admin=True)] == [a.id]


# ---------------------------------------------------------------------------
# retention and crash clean-up
# ---------------------------------------------------------------------------
def test_retention_settings_from_env(monkeypatch):
    monkeypatch.delenv("DHAKA_RETENTION_DAYS", raising=False)
    monkeypatch.delenv("DHAKA_RETENTION_MAX_GB", raising=False)
    assert Retention.from_env() == Retention(None, None)
    monkeypatch.setenv("DHAKA_RETENTION_DAYS", "30")
    monkeypatch.setenv("DHAKA_RETENTION_MAX_GB", "0.5")
    assert Retention.from_env() == Retention(30.0, 512 * 1024**2)
    monkeypatch.setenv("DHAKA_RETENTION_DAYS", "forever")
    with pytest.raises(ValueError, match="DHAKA_RETENTION_DAYS must be a positive number"):
        Retention.from_env()


def test_cleanup_deletes_old_runs_but_never_a_live_one(store, tmp_path):
    now = time.time()
    old = _done(store, "user:alice")
    recent = _done(store, "user:bob")
    live = store.create(settings=SETTINGS, data=DATA, owner="user:carol")  # its writer (this process) is alive
    _age(old, 40, now)
    _age(recent, 5, now)
    record = json.loads((live.path / "run.json").read_text())  # started long ago, still training
    record.update(created="2020-01-01T00:00:00+00:00", heartbeat=now - 40 * DAY)
    atomic_write_json(live.path / "run.json", record)

    report = store.cleanup(Retention(max_age_days=30), now=now, temp_dir=tmp_path / "tmp")
    assert report.deleted_age == [old.id]
    assert not old.path.exists() and recent.path.is_dir() and live.path.is_dir()
    assert report.live == [live.id] and report.interrupted == []
    assert report.freed_bytes > 1000
    assert not [p for p in store.runs_dir.iterdir() if p.name.startswith(".")]
    live.finish(status="done")


def test_cleanup_deletes_least_recently_active_runs_beyond_the_size_limit(store, tmp_path):
    now = time.time()
    runs = [_done(store, f"user:{n}", size=100_000) for n in ("a", "b", "c", "d")]
    for days, run in zip((10, 1, 30, 3), runs):  # oldest activity: c, then a, d, b
        _age(run, days, now)
    sizes = {r.id: sum(f.stat().st_size for f in r.path.rglob("*") if f.is_file()) for r in runs}
    limit = sizes[runs[1].id] + sizes[runs[3].id] + 1000
    report = store.cleanup(Retention(max_bytes=limit), now=now, temp_dir=tmp_path / "tmp")
    assert report.deleted_size == [runs[2].id, runs[0].id]
    assert {i.id for i in store.list(admin=True)} == {runs[1].id, runs[3].id}
    assert report.total_bytes <= limit
    # no limits: nothing is deleted
    assert store.cleanup(Retention(), now=now, temp_dir=tmp_path / "tmp").deleted_size == []


def test_cleanup_marks_runs_of_dead_writers_interrupted_on_disk(store, tmp_path):
    crashed = store.create(settings=SETTINGS, data=DATA, owner="user:alice")
    crashed.write_checkpoint(_save, epoch=5)
    # what a crash mid-write leaves inside the run: a temp file, a half-written and an unrecorded checkpoint
    (crashed.path / ".run.json.tmp-dead").write_text("{")
    (crashed.checkpoint_dir / ".e00006-beef.tmp-0bad").mkdir()
    (crashed.checkpoint_dir / "e00006-beef").mkdir()
    crashed.close()  # the writer is gone without finishing
    assert json.loads((crashed.path / "run.json").read_text())["status"] == "running"

    report = store.cleanup(Retention(), temp_dir=tmp_path / "tmp")
    assert report.interrupted == [crashed.id]
    record = json.loads((crashed.path / "run.json").read_text())
    assert record["status"] == "interrupted" and record["interrupted"]
    assert record["checkpoint"] and (crashed.path / record["checkpoint"]).is_dir()  # still opens
    assert sorted(os.listdir(crashed.checkpoint_dir)) == [Path(record["checkpoint"]).name]
    assert not (crashed.path / ".run.json.tmp-dead").exists()
    info = store.open(crashed.id, owner="user:alice").info()
    assert info.status == "interrupted" and info.last_checkpoint_epoch == 5
    assert store.cleanup(Retention(), temp_dir=tmp_path / "tmp").interrupted == []  # once


def test_cleanup_sweeps_crash_leftovers(store, tmp_path):
    now = time.time()
    keep = _done(store, "user:alice")
    half_deleted = store.runs_dir / f".{keep.id[:-1]}0.deleted-1234"
    (half_deleted / "model").mkdir(parents=True)
    old_tmp = store.runs_dir / ".20260101-000000-abcdef.tmp-1111"
    old_tmp.mkdir()
    fresh_tmp = store.runs_dir / ".20260101-000000-fedcba.tmp-2222"  # a create in progress
    fresh_tmp.mkdir()
    os.utime(old_tmp, (now - 2 * 3600, now - 2 * 3600))
    cache = store.root / "cache"
    cache.mkdir()
    (cache / ".abc.h5ad.999.tmp").write_bytes(b"x")
    os.utime(cache / ".abc.h5ad.999.tmp", (now - 2 * 3600, now - 2 * 3600))
    (cache / "abc.h5ad").write_bytes(b"kept")
    temp = tmp_path / "tmp"
    temp.mkdir()
    for name, age in (("dhaka-tmp-old.h5ad", 2 * 3600), ("dhaka-tmp-new.h5ad", 0), ("other-app.h5ad", 9 * 3600)):
        (temp / name).write_bytes(b"x")
        os.utime(temp / name, (now - age, now - age))

    report = store.cleanup(Retention(), now=now, temp_dir=temp)
    assert not half_deleted.exists() and not old_tmp.exists() and fresh_tmp.exists()
    assert sorted(os.listdir(cache)) == ["abc.h5ad"]
    assert sorted(os.listdir(temp)) == ["dhaka-tmp-new.h5ad", "other-app.h5ad"]
    assert len(report.leftovers) == 4
    assert [i.id for i in store.list(admin=True)] == [keep.id]
    assert "removed 4 leftover(s)" in report.summary()


def test_start_maintenance_runs_once_then_waits_and_is_idempotent(store, tmp_path):
    crashed = store.create(settings=SETTINGS, data=DATA, owner="user:alice")
    crashed.close()
    m = start_maintenance(store, interval_s=3600)
    try:
        assert start_maintenance(RunStore(store.root)) is m  # one per process and folder
        assert m.first_pass.wait(30)
        assert m.passes == 1 and m.last_error is None
        assert m.last_report.interrupted == [crashed.id]
        assert json.loads((crashed.path / "run.json").read_text())["status"] == "interrupted"
    finally:
        m.stop()
    assert not m.alive
    again = start_maintenance(store, interval_s=3600)  # a stopped one is replaced
    assert again is not m
    again.stop()


# ---------------------------------------------------------------------------
# fair queues without a login (issue 25)
# ---------------------------------------------------------------------------
def _blocking_manager(**kw):
    import threading

    from dhaka.jobs import JobManager

    release = threading.Event()
    manager = JobManager(max_running=2, max_queued=16, max_per_owner=2, memory_limit=None,
                         available_memory=None, sweep_interval_s=None, **kw)
    return manager, release, lambda ctx: release.wait(30)


def test_fresh_anonymous_identities_share_one_quota():
    """Nine fresh identities (nine bare-address visits) cannot take both running slots and the whole queue."""
    from dhaka.ui import owner

    manager, release, work = _blocking_manager()
    try:
        keys = [owner.key_for_token(owner.new_token()) for _ in range(9)]
        submitted, refused = [], []
        for key in keys:
            for _ in range(2):
                try:
                    owner.check_quota(manager, key, owner.quota_key_for(key), kind="train")
                except owner.AnonymousQuotaError as exc:
                    refused.append(str(exc))
                    continue
                submitted.append(manager.submit(work, owner=key, name="fit"))
        assert len(submitted) == 2  # the pool's limit (DHAKA_MAX_ANON_JOBS defaults to the per-person one)
        assert refused and "without a login they share 2" in refused[0] and "login" in refused[0]
        # a person behind the login proxy is their own pool: the per-person limit, not the anonymous one
        for _ in range(2):
            owner.check_quota(manager, "user:alice", owner.quota_key_for("user:alice"), kind="train")
            manager.submit(work, owner="user:alice", name="fit")
        # the views the app starts after a training are not held back by the pool
        owner.check_quota(manager, keys[-1], owner.quota_key_for(keys[-1]), kind="views")
    finally:
        release.set()
        manager.shutdown(timeout=10)


def test_anonymous_pools_per_address_and_the_limit_setting(monkeypatch):
    from dhaka.ui import owner

    a, b = (owner.key_for_token(owner.new_token()) for _ in range(2))
    assert owner.quota_key_for(a) == owner.quota_key_for(b) == "anon-pool"
    pa = owner.quota_key_for(a, address="10.0.0.1", mode="address")
    pb = owner.quota_key_for(b, address="10.0.0.2", mode="address")
    assert pa != pb and pa.startswith("anon-pool:") and "10.0.0" not in pa
    assert owner.quota_key_for(a, address=None, mode="address") == "anon-pool"
    assert owner.quota_key_for("user:bob", address="10.0.0.1", mode="address") == "user:bob"
    monkeypatch.setenv("DHAKA_ANON_QUOTA", "address")
    assert owner.anon_quota_mode() == "address"
    monkeypatch.setenv("DHAKA_ANON_QUOTA", "per-tab")
    with pytest.raises(ValueError, match="DHAKA_ANON_QUOTA"):
        owner.anon_quota_mode()
    manager, release, work = _blocking_manager()
    try:
        monkeypatch.setenv("DHAKA_MAX_ANON_JOBS", "3")
        assert owner.anon_job_limit(manager) == 3
        monkeypatch.setenv("DHAKA_MAX_ANON_JOBS", "0")
        with pytest.raises(ValueError, match="DHAKA_MAX_ANON_JOBS"):
            owner.anon_job_limit(manager)
    finally:
        release.set()
        manager.shutdown(timeout=10)


def test_submit_checks_the_pool_then_submits_under_the_persons_own_key(monkeypatch):
    from dhaka.ui import owner

    manager, release, work = _blocking_manager()
    keys = iter([owner.key_for_token(owner.new_token()) for _ in range(3)])
    current = {}

    def fresh_key():
        return current["key"]

    monkeypatch.setattr(owner, "owner_key", fresh_key)
    try:
        jobs = []
        for _ in range(2):
            current["key"] = next(keys)
            jobs.append(owner.submit(work, name="fit", manager=manager))
        assert [j.owner for j in jobs] == [j.owner for j in jobs if j.owner.startswith("anon:")]
        assert len({j.owner for j in jobs}) == 2  # each job stays its person's
        current["key"] = next(keys)
        with pytest.raises(owner.AnonymousQuotaError):
            owner.submit(work, name="fit", manager=manager)
    finally:
        release.set()
        manager.shutdown(timeout=10)
