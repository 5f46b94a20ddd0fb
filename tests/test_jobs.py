"""Background jobs: FIFO limit, owner isolation, prompt cancellation, failures that free their slot."""
from __future__ import annotations

import threading

import pytest

from dhaka.jobs import JobManager, default_max_running, get_manager

WAIT = 30.0  # generous upper bound for a thread to react; tests never assert on timings


def _training_like(start_log: list[str], gate: threading.Event | None = None, n_epochs: int = 3):
    """A fake training: reports epochs and a history row, honours the stop event."""

    def fn(ctx):
        start_log.append(ctx.owner)
        if gate is not None:
            assert gate.wait(WAIT)
        losses = []
        for epoch in range(1, n_epochs + 1):
            if ctx.stop_event.is_set():
                break
            loss = 1.0 / epoch
            losses.append(loss)
            ctx.report(epoch=epoch, n_epochs=n_epochs, history_row={"epoch": epoch, "loss": loss})
        return {"owner": ctx.owner, "losses": losses}

    return fn


def test_three_sessions_limit_one_fifo_isolated():
    manager = JobManager(max_running=1)
    start_log: list[str] = []
    gate = threading.Event()
    owners = ["alice", "bob", "carol"]
    jobs = [manager.submit(_training_like(start_log, gate), owner=o, name=f"train-{o}") for o in owners]

    # while the first runs (held at the gate), the others wait in order
    assert jobs[0].status == "running"
    assert [j.status for j in jobs[1:]] == ["queued", "queued"]
    assert manager.queue_position(jobs[0]) is None
    assert manager.queue_position(jobs[1]) == 1
    assert manager.queue_position(jobs[2]) == 2
    assert jobs[2].snapshot()["queue_position"] == 2
    assert manager.n_running == 1 and manager.n_queued == 2

    gate.set()
    for job in jobs:
        assert job.wait(WAIT)
    assert start_log == owners  # FIFO
    assert [j.status for j in jobs] == ["done", "done", "done"]
    for job, owner in zip(jobs, owners):
        assert job.result["owner"] == owner
        snap = job.snapshot()
        assert snap["status"] == "done" and snap["queue_position"] is None
        assert snap["progress"] == {"epoch": 3, "n_epochs": 3}
        assert [row["epoch"] for row in snap["history"]] == [1, 2, 3]
        # isolation: each owner sees only their own job, never another's by id
        assert manager.jobs(owner) == [job]
        for other in jobs:
            if other is not job:
                assert manager.get(other.id, owner) is None
        assert manager.get(job.id, owner) is job
    assert manager.jobs("mallory") == []


def test_concurrent_submission_from_threads_all_complete():
    manager = JobManager(max_running=1)
    start_log: list[str] = []
    barrier = threading.Barrier(3)
    submitted: dict[str, object] = {}

    def session(owner):
        barrier.wait()
        submitted[owner] = manager.submit(_training_like(start_log), owner=owner, name="t")

    threads = [threading.Thread(target=session, args=(o,)) for o in ("s1", "s2", "s3")]
    for t in threads:
        t.start()
    for t in threads:
        t.join(WAIT)
    for owner, job in submitted.items():
        assert job.wait(WAIT)
        assert job.status == "done"
        assert job.result["owner"] == owner
        assert manager.jobs(owner) == [job]
    # FIFO: start order equals submission order
    by_seq = sorted(submitted.values(), key=lambda j: j._seq)
    assert start_log == [j.owner for j in by_seq]


def test_never_more_than_max_running():
    manager = JobManager(max_running=2)
    lock = threading.Lock()
    state = {"now": 0, "peak": 0}
    gate = threading.Event()

    def fn(ctx):
        with lock:
            state["now"] += 1
            state["peak"] = max(state["peak"], state["now"])
        gate.wait(WAIT)
        with lock:
            state["now"] -= 1

    jobs = [manager.submit(fn, owner="o", name=str(i)) for i in range(5)]
    assert sum(j.status == "running" for j in jobs) == 2
    gate.set()
    assert all(j.wait(WAIT) for j in jobs)
    assert state["peak"] == 2
    assert all(j.status == "done" for j in jobs)


def test_cancel_stops_within_one_epoch_and_keeps_partial_result():
    manager = JobManager(max_running=1)
    epoch_started = threading.Event()
    cancel_seen_at: dict[str, int] = {}
    stop_wait = threading.Event()

    def fn(ctx):
        epochs_done = 0
        while True:
            if ctx.stop_event.is_set():
                break
            # one "epoch" of ~50 ms of work, in small steps like minibatches
            for _ in range(5):
                stop_wait.wait(0.01)
            epochs_done += 1
            ctx.report(epoch=epochs_done)
            if epochs_done == 3:
                epoch_started.set()
            if epochs_done > 10_000:  # safety net so a broken cancel cannot hang the test
                break
        return epochs_done

    job = manager.submit(fn, owner="a", name="loop")
    assert epoch_started.wait(WAIT)
    cancel_seen_at["before"] = job.snapshot()["progress"]["epoch"]
    job.cancel()
    snap = job.snapshot()
    cancel_seen_at["after"] = snap["progress"]["epoch"]
    assert snap["stop_requested"] is True
    assert job.wait(WAIT)
    assert job.status == "cancelled"
    # at cancel() the worker had reported at most `after` epochs; only the epoch in
    # flight may still finish, so at most one more epoch is run
    assert cancel_seen_at["before"] <= job.result <= cancel_seen_at["after"] + 1
    assert job.error is None


def test_cancel_queued_job_is_removed_immediately():
    manager = JobManager(max_running=1)
    gate = threading.Event()
    ran: list[str] = []
    first = manager.submit(lambda ctx: gate.wait(WAIT), owner="a", name="first")
    second = manager.submit(lambda ctx: ran.append("second"), owner="b", name="second")
    third = manager.submit(lambda ctx: ran.append("third"), owner="c", name="third")
    assert manager.queue_position(third) == 2
    second.cancel()
    assert second.status == "cancelled" and second.done
    assert manager.queue_position(third) == 1
    gate.set()
    assert first.wait(WAIT) and third.wait(WAIT)
    assert ran == ["third"]
    assert third.status == "done"
    second.cancel()  # cancelling a finished job is a no-op
    assert second.status == "cancelled"


def test_failure_reported_and_next_job_runs():
    manager = JobManager(max_running=1)

    def boom(ctx):
        ctx.report(epoch=1)
        raise ValueError("loss became NaN at epoch 2")

    bad = manager.submit(boom, owner="a", name="bad")
    good = manager.submit(lambda ctx: 42, owner="a", name="good")
    assert bad.wait(WAIT) and good.wait(WAIT)
    assert bad.status == "failed"
    assert bad.error == "ValueError: loss became NaN at epoch 2"
    assert "Traceback" in bad.traceback and "boom" in bad.traceback
    snap = bad.snapshot()
    assert snap["status"] == "failed" and snap["error"] == bad.error
    assert snap["progress"] == {"epoch": 1}
    assert good.status == "done" and good.result == 42
    assert manager.n_running == 0 and manager.n_queued == 0


def test_snapshot_is_a_copy():
    manager = JobManager(max_running=1)
    job = manager.submit(lambda ctx: ctx.report(epoch=1, history_row={"loss": 1.0}), owner="a", name="x")
    assert job.wait(WAIT)
    snap = job.snapshot()
    snap["progress"]["epoch"] = 99
    snap["history"][0]["loss"] = -1
    snap["history"].append({"loss": 0})
    again = job.snapshot()
    assert again["progress"]["epoch"] == 1
    assert again["history"] == [{"loss": 1.0}]


def test_history_is_bounded():
    manager = JobManager(max_running=1, history_maxlen=5)

    def fn(ctx):
        for i in range(20):
            ctx.report(epoch=i, history_row={"epoch": i})

    job = manager.submit(fn, owner="a", name="x")
    assert job.wait(WAIT)
    assert [r["epoch"] for r in job.snapshot()["history"]] == [15, 16, 17, 18, 19]


def test_finished_jobs_are_pruned_per_owner():
    manager = JobManager(max_running=1, keep_finished=2)
    for i in range(4):
        assert manager.submit(lambda ctx: None, owner="a", name=str(i)).wait(WAIT)
    other = manager.submit(lambda ctx: None, owner="b", name="b0")
    assert other.wait(WAIT)
    last = manager.submit(lambda ctx: None, owner="a", name="4")
    assert last.wait(WAIT)
    # pruning happens at submit time: the two newest finished jobs are kept, plus the new one
    assert [j.name for j in manager.jobs("a")] == ["2", "3", "4"]
    assert [j.name for j in manager.jobs("b")] == ["b0"]


def test_invalid_arguments(monkeypatch):
    with pytest.raises(ValueError):
        JobManager(max_running=0)
    with pytest.raises(ValueError):
        JobManager(max_running=1).submit(lambda ctx: None, owner="", name="x")
    monkeypatch.setenv("DHAKA_MAX_JOBS", "3")
    assert default_max_running() == 3
    assert JobManager().max_running == 3
    monkeypatch.setenv("DHAKA_MAX_JOBS", "zero")
    with pytest.raises(ValueError, match="DHAKA_MAX_JOBS"):
        default_max_running()
    monkeypatch.delenv("DHAKA_MAX_JOBS")
    assert default_max_running() >= 1


def test_shutdown_cancels_and_refuses_new_jobs():
    manager = JobManager(max_running=1)
    running = threading.Event()

    def fn(ctx):
        running.set()
        ctx.stop_event.wait(WAIT)
        return "partial"

    a = manager.submit(fn, owner="a", name="a")
    b = manager.submit(fn, owner="b", name="b")
    assert running.wait(WAIT)
    assert manager.shutdown(timeout=WAIT)
    assert a.status == "cancelled" and a.result == "partial"
    assert b.status == "cancelled" and b.result is None
    with pytest.raises(RuntimeError):
        manager.submit(fn, owner="a", name="late")


def test_get_manager_is_a_singleton():
    assert get_manager() is get_manager()


def test_jobs_module_does_not_import_streamlit():
    import subprocess
    import sys

    code = "import sys, dhaka.jobs, dhaka.runs, dhaka.resources; print('streamlit' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
