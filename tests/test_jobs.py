"""Background jobs: FIFO limit, owner isolation, prompt cancellation, failures that free their slot."""
from __future__ import annotations

import threading

import pytest

from dhaka.jobs import JobManager, ResourceError, default_max_running, get_manager

WAIT = 30.0  # generous upper bound for a thread to react; tests never assert on timings


def _open_manager(max_running: int, **kwargs) -> JobManager:
    """A manager without admission limits (no memory meter, no queue cap, no per-owner cap)."""
    kwargs = {"max_queued": 1000, "max_per_owner": 1000, "memory_limit": None, "available_memory": None,
              **kwargs}
    return JobManager(max_running=max_running, **kwargs)


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
    manager = _open_manager(max_running=1)
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
    manager = _open_manager(max_running=1)
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
    manager = _open_manager(max_running=2)
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
    manager = _open_manager(max_running=1)
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
    manager = _open_manager(max_running=1)
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
    manager = _open_manager(max_running=1)

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
    manager = _open_manager(max_running=1)
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
    manager = _open_manager(max_running=1, history_maxlen=5)

    def fn(ctx):
        for i in range(20):
            ctx.report(epoch=i, history_row={"epoch": i})

    job = manager.submit(fn, owner="a", name="x")
    assert job.wait(WAIT)
    assert [r["epoch"] for r in job.snapshot()["history"]] == [15, 16, 17, 18, 19]


def test_finished_jobs_are_pruned_per_owner():
    manager = _open_manager(max_running=1, keep_finished=2)
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
    manager = _open_manager(max_running=1)
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


# ---------------------------------------------------------------------------
# admission: queue cap, per-owner limit, memory at start; abandoned owners
# ---------------------------------------------------------------------------
GB = 1024**3


def _held(gate: threading.Event, result="model"):
    """A job that holds its slot until ``gate`` is set (or it is cancelled)."""

    def fn(ctx):
        while not gate.wait(0.01):
            if ctx.stop_event.is_set():
                return "partial"
        return result

    return fn


def test_jobs_the_app_starts_for_a_person_have_their_own_allowance():
    """Two background view jobs (one per open tab) must not stop the person from training, nor the reverse."""
    from dhaka.jobs import OwnerLimitError

    manager = JobManager(max_running=4, max_queued=8, max_per_owner=2, memory_limit=None, available_memory=None)
    gate = threading.Event()
    views = [manager.submit(_held(gate), owner="alice", name=f"v{i}", kind="views") for i in range(2)]
    with pytest.raises(OwnerLimitError, match=r"2 views jobs queued or running"):
        manager.submit(_held(gate), owner="alice", name="v3", kind="views")
    trains = [manager.submit(_held(gate), owner="alice", name=f"t{i}") for i in range(2)]
    with pytest.raises(OwnerLimitError, match=r"2 jobs queued or running"):
        manager.submit(_held(gate), owner="alice", name="t3", kind="analysis")
    gate.set()
    for job in views + trains:
        assert job.wait(WAIT) and job.status == "done"


def test_per_owner_limit_and_queue_cap_refuse_with_clear_messages():
    from dhaka.jobs import AdmissionError, OwnerLimitError, QueueFullError

    manager = JobManager(max_running=1, max_queued=2, max_per_owner=2, memory_limit=None, available_memory=None)
    gate = threading.Event()
    a1 = manager.submit(_held(gate), owner="alice", name="a1")
    a2 = manager.submit(_held(gate), owner="alice", name="a2")
    with pytest.raises(OwnerLimitError, match=r"2 jobs queued or running.*2 per person.*DHAKA_MAX_JOBS_PER_OWNER"):
        manager.submit(_held(gate), owner="alice", name="a3")
    b1 = manager.submit(_held(gate), owner="bob", name="b1")
    assert [j.status for j in (a1, a2, b1)] == ["running", "queued", "queued"]
    with pytest.raises(QueueFullError, match=r"1 job\(s\) running and 2 waiting.*DHAKA_MAX_QUEUED=2"):
        manager.submit(_held(gate), owner="carol", name="c1")
    assert issubclass(QueueFullError, AdmissionError) and issubclass(OwnerLimitError, AdmissionError)
    assert manager.n_queued == 2  # refused jobs left no trace
    b1.cancel()
    c1 = manager.submit(_held(gate), owner="carol", name="c1")  # a place in the queue again
    gate.set()
    for job in (a1, a2, c1):
        assert job.wait(WAIT) and job.status == "done"
    # finished jobs no longer count against the owner
    a3 = manager.submit(lambda ctx: 3, owner="alice", name="a3")
    assert a3.wait(WAIT) and a3.result == 3


def test_limits_from_the_environment(monkeypatch):
    from dhaka.jobs import default_abandon_grace_s

    monkeypatch.setenv("DHAKA_MAX_QUEUED", "5")
    monkeypatch.setenv("DHAKA_MAX_JOBS_PER_OWNER", "3")
    monkeypatch.setenv("DHAKA_ABANDON_GRACE_S", "60")
    manager = JobManager(max_running=1)
    assert (manager.max_queued, manager.max_per_owner, default_abandon_grace_s()) == (5, 3, 60.0)
    monkeypatch.delenv("DHAKA_MAX_QUEUED")
    monkeypatch.delenv("DHAKA_MAX_JOBS_PER_OWNER")
    monkeypatch.delenv("DHAKA_ABANDON_GRACE_S")
    manager = JobManager(max_running=1)
    assert (manager.max_queued, manager.max_per_owner, default_abandon_grace_s()) == (16, 2, 900.0)
    for name, bad in (("DHAKA_MAX_QUEUED", "-1"), ("DHAKA_MAX_JOBS_PER_OWNER", "0"),
                      ("DHAKA_MAX_JOBS_PER_OWNER", "two")):
        monkeypatch.setenv(name, bad)
        with pytest.raises(ValueError, match=name):
            JobManager(max_running=1)
        monkeypatch.delenv(name)
    monkeypatch.setenv("DHAKA_ABANDON_GRACE_S", "soon")
    with pytest.raises(ValueError, match="DHAKA_ABANDON_GRACE_S"):
        default_abandon_grace_s()


def test_memory_admission_counts_what_running_jobs_declared():
    """Two jobs needing 70 % of the memory each: the second waits for the first instead of both passing."""
    available = {"now": 10 * GB}
    manager = JobManager(max_running=2, memory_limit=10 * GB, available_memory=lambda: available["now"],
                         max_per_owner=5)
    gate = threading.Event()
    first = manager.submit(_held(gate), owner="alice", name="first", memory_bytes=7 * GB)
    second = manager.submit(_held(gate), owner="bob", name="second", memory_bytes=7 * GB)
    assert first.status == "running"
    assert second.status == "queued"  # a slot is free, but not the memory
    snap = second.snapshot()
    assert snap["queue_position"] == 1 and snap["memory_bytes"] == 7 * GB
    assert "waiting for memory" in snap["waiting_for"] and "7.0 GB" in snap["waiting_for"]
    # a small job behind it waits too: the queue stays first-in-first-out
    small = manager.submit(_held(gate), owner="carol", name="small", memory_bytes=1 * GB)
    assert small.status == "queued"
    gate.set()
    for job in (first, second, small):
        assert job.wait(WAIT) and job.status == "done", job.error


def test_memory_is_checked_when_the_job_starts_not_only_at_submission():
    available = {"now": 10 * GB}
    trims: list[int] = []
    manager = JobManager(max_running=1, memory_limit=16 * GB, available_memory=lambda: available["now"],
                         trim=lambda: trims.append(1), max_per_owner=5)
    gate = threading.Event()
    holder = manager.submit(_held(gate), owner="alice", name="holder")  # declares nothing
    big = manager.submit(lambda ctx: "never", owner="bob", name="train on big.csv", memory_bytes=4 * GB)
    assert big.status == "queued"  # it fitted at submission
    available["now"] = 2 * GB  # meanwhile an upload (or another program) took the memory
    gate.set()
    assert holder.wait(WAIT) and big.wait(WAIT)
    assert big.status == "failed" and big.result is None
    assert big.error.startswith("ResourceError: train on big.csv would need about 4.0 GB but only 2.0 GB is free")
    assert trims, "freed heap is handed back before a job is refused"
    # the queue goes on: a job that fits starts
    ok = manager.submit(lambda ctx: "ok", owner="carol", name="small", memory_bytes=1 * GB)
    assert ok.wait(WAIT) and ok.result == "ok"


def test_job_that_can_never_fit_is_refused_at_submission():
    manager = JobManager(max_running=1, memory_limit=8 * GB, available_memory=lambda: 8 * GB)
    with pytest.raises(ResourceError, match=r"train would need about 20.0 GB but the server's memory limit is 8.0 GB"):
        manager.submit(lambda ctx: None, owner="alice", name="train", memory_bytes=20 * GB)
    assert manager.jobs("alice") == [] and manager.n_queued == 0


def test_every_job_waits_when_memory_is_already_exhausted():
    """A job without an estimate still goes through admission: nothing starts while memory is gone."""
    available = {"now": 10 * GB}
    manager = JobManager(max_running=2, memory_limit=None, available_memory=lambda: available["now"], trim=None,
                         max_per_owner=5)
    gate = threading.Event()
    first = manager.submit(_held(gate), owner="alice", name="first", memory_bytes=9 * GB)
    analysis = manager.submit(lambda ctx: "done", owner="bob", name="compare", kind="analysis")
    assert analysis.status == "running"  # 1 GB left: a job without estimate may start
    gate.set()
    assert first.wait(WAIT) and analysis.wait(WAIT)
    available["now"] = 0
    again = manager.submit(lambda ctx: "x", owner="bob", name="robustness", kind="analysis", memory_bytes=GB)
    assert again.wait(WAIT) and again.status == "failed" and "ResourceError" in again.error


def test_abandoned_owners_jobs_are_cancelled_and_results_freed():
    now = {"t": 1000.0}
    manager = JobManager(max_running=2, max_per_owner=5, memory_limit=None, available_memory=None,
                         clock=lambda: now["t"], sweep_interval_s=None)
    gate = threading.Event()
    manager.touch("alice")
    manager.touch("bob")
    finished = manager.submit(lambda ctx: "big model", owner="alice", name="done-job")
    assert finished.wait(WAIT) and finished.result == "big model"
    cli = manager.submit(lambda ctx: "cli result", owner="notebook", name="never touched")
    assert cli.wait(WAIT)
    running = manager.submit(_held(gate), owner="alice", name="running-job")
    bobs = manager.submit(_held(gate), owner="bob", name="bob-job")
    queued = manager.submit(_held(gate), owner="alice", name="queued-job")

    now["t"] += 600
    bobs.touch()  # the page's poll: bob is still there
    assert manager.sweep_abandoned(grace_s=900) == []
    now["t"] += 600  # alice unseen for 1200 s, bob for 600 s
    swept = manager.sweep_abandoned(grace_s=900)
    assert set(swept) == {finished, running, queued}
    assert finished.result is None and manager.get(finished.id, "alice") is None
    assert queued.status == "cancelled"
    assert running.wait(WAIT) and running.status == "cancelled"
    assert bobs.status == "running" and not bobs.snapshot()["stop_requested"]
    assert cli.result == "cli result"  # owners that never touch are never swept
    # the cancelled job's partial result is freed on the next pass, and alice is forgotten
    assert running.result == "partial"
    assert set(manager.sweep_abandoned(grace_s=900)) == {running, queued}
    assert running.result is None and manager.jobs("alice") == []
    assert manager.sweep_abandoned(grace_s=900) == []
    gate.set()
    assert bobs.wait(WAIT) and bobs.result == "model"


def test_touch_starts_one_sweeper_thread_that_stops_on_shutdown():
    manager = JobManager(max_running=1, memory_limit=None, available_memory=None, sweep_interval_s=0.01)
    manager.touch("alice")
    manager.touch("alice")
    sweepers = [t for t in threading.enumerate() if t.name == "dhaka-job-sweeper" and t is manager._sweeper]
    assert len(sweepers) == 1
    assert manager.shutdown()
    manager._sweeper.join(WAIT)
    assert not manager._sweeper.is_alive()


# ---------------------------------------------------------------------------
# threads: the CPU budget split between jobs (dhaka.jobs.plan)
# ---------------------------------------------------------------------------
def _two_trainings(manager: JobManager):
    """Submit two trainings at once; each records its share and whether the other ran beside it."""
    from dhaka import cpu

    started = {"a": threading.Event(), "b": threading.Event()}
    seen: dict[str, dict] = {}

    def training(name, other):
        def fn(ctx):
            started[name].set()
            beside = started[other].wait(1.0)  # the other started while this one runs
            seen[name] = {"threads": ctx.threads, "share": cpu.current_share(), "beside": beside}
            return name

        return fn

    a = manager.submit(training("a", "b"), owner="a", name="a")
    b = manager.submit(training("b", "a"), owner="b", name="b")
    assert a.wait(WAIT) and b.wait(WAIT)
    return seen, a, b


def test_budget_of_two_one_thread_per_job_runs_two_trainings_side_by_side():
    manager = _open_manager(max_running=None, cpu_budget=2, threads_per_job=1)
    assert (manager.max_running, manager.threads) == (2, 1)
    seen, a, b = _two_trainings(manager)
    assert seen["a"] == {"threads": 1, "share": 1, "beside": True}
    assert seen["b"] == {"threads": 1, "share": 1, "beside": True}
    assert a.snapshot()["threads"] == b.snapshot()["threads"] == 1
    manager.shutdown()


def test_budget_of_two_two_threads_per_job_queues_the_second_training():
    manager = _open_manager(max_running=None, cpu_budget=2, threads_per_job=2)
    assert (manager.max_running, manager.threads) == (1, 2)
    seen, a, b = _two_trainings(manager)
    assert seen["a"] == {"threads": 2, "share": 2, "beside": False}  # b waited in the queue
    assert seen["b"]["threads"] == 2 and seen["b"]["beside"] is True  # a had started before
    assert b.started >= a.finished
    manager.shutdown()


def test_running_jobs_never_hold_more_threads_than_the_budget():
    from dhaka.jobs import plan

    for budget in range(1, 33):
        for per in (1, 2, 3, 4):
            p = plan(budget, threads_per_job=per)
            assert p.max_running * p.threads <= budget and p.max_running >= 1 and p.threads >= 1
            assert p.threads == min(per, budget)
    # an administrator's DHAKA_MAX_JOBS splits the budget instead
    assert plan(8, max_running=3).threads == 2
    assert plan(2, max_running=4).threads == 1  # more jobs than CPUs: one thread each


def test_plan_reads_the_budget_and_the_environment(monkeypatch):
    from dhaka.jobs import THREADS_PER_JOB, plan

    monkeypatch.delenv("DHAKA_MAX_JOBS", raising=False)
    monkeypatch.delenv("DHAKA_THREADS_PER_JOB", raising=False)
    monkeypatch.setenv("DHAKA_THREADS", "8")  # the budget: what affinity and quota give, overridden
    assert plan().budget == 8 and plan().threads == THREADS_PER_JOB
    assert JobManager().max_running == 8 // THREADS_PER_JOB
    monkeypatch.setenv("DHAKA_THREADS_PER_JOB", "1")
    assert (plan().max_running, plan().threads) == (8, 1)
    monkeypatch.setenv("DHAKA_THREADS_PER_JOB", "0")
    with pytest.raises(ValueError, match="DHAKA_THREADS_PER_JOB"):
        plan()
    monkeypatch.delenv("DHAKA_THREADS_PER_JOB")
    monkeypatch.setenv("DHAKA_MAX_JOBS", "2")
    assert (plan().max_running, plan().threads) == (2, 4)
    monkeypatch.setenv("DHAKA_CPU_BUDGET", "0")  # switched off: threads left to the libraries
    assert plan().threads is None and JobManager().threads is None
