"""Background jobs: threads, a bounded number running at once, a FIFO queue.

A :class:`JobManager` runs long analyses (training, embeddings) in worker
threads so that the UI stays responsive.  At most ``max_running`` jobs run
at once; the rest wait in a first-in-first-out queue.  Every job belongs to
an *owner* (one browser session in the app) and the manager never hands one
owner's jobs to another.

The function a job runs receives a :class:`JobContext`.  It reports progress
with ``ctx.report(epoch=3, n_epochs=50, history_row={...})`` and should check
``ctx.stop_event`` between units of work (epochs, minibatches), returning its
partial result when the event is set.  The UI reads progress only through
:meth:`Job.snapshot`, which returns a fresh copy taken under a lock.

Admission.  A job may declare the memory it will need (``submit(...,
memory_bytes=...)``).  The manager checks it when the job is about to
*start*, not only when it is submitted: the job fits when it needs no more
than the memory available now (:func:`dhaka.resources.available_memory`,
which counts everything already in use) less what the other running jobs
declared (they may not have reached their peak yet).  A job that does not fit
waits at the head of the queue while other jobs run, and fails with a message
naming the numbers when nothing else runs (it cannot fit now) or when it
needs more than the whole limit (it can never fit; refused at submission).
:meth:`JobManager.submit` also refuses a job beyond the queue's cap
(:class:`QueueFullError`, ``DHAKA_MAX_QUEUED``) or beyond the owner's share
(:class:`OwnerLimitError`, ``DHAKA_MAX_JOBS_PER_OWNER`` queued or running).

Threads.  Every job runs with a share of the CPU budget (:func:`dhaka.cpu.budget`: affinity and
cgroup quota, never ``os.cpu_count()`` alone): :func:`plan` gives each job ``threads`` threads
(``DHAKA_THREADS_PER_JOB``, default :data:`THREADS_PER_JOB`, at most the budget) and runs at most
``budget // threads`` jobs at once (``DHAKA_MAX_JOBS`` overrides; then each job gets ``budget //
max_running`` threads, at least one).  The running jobs' threads never add up to more than the
budget, so no job's threads wait at a barrier for a core another job holds, and (a fit's speed grows
less than its thread count) running them side by side is never slower in all than queueing them.
The share does not depend on the load of the moment: the same settings, seed and share give the same
model, whoever else trains.  A job's function reads it as :attr:`JobContext.threads` and runs inside
:func:`dhaka.cpu.share`, so a fit in its thread, or the training process it starts, takes that many
threads; :meth:`Job.snapshot` shows it.  Views and analysis jobs take a slot and a share like any job.

Abandoned owners.  The app calls :meth:`JobManager.touch` (or
:meth:`Job.touch`) for its owner on every page run and poll.  An owner that
was seen once and then not for ``DHAKA_ABANDON_GRACE_S`` seconds (the person
closed every tab) has its unfinished jobs cancelled and its finished jobs'
results dropped (:meth:`JobManager.sweep_abandoned`, run every minute by a
daemon thread that the first :meth:`touch` starts).  Owners that never call
:meth:`touch` (a notebook, the CLI) are never swept.

Nothing here imports streamlit: the app keeps one manager per server process
(``st.cache_resource(get_manager)``), the library keeps its own singleton in
:func:`get_manager`.

Examples
--------
>>> manager = JobManager(max_running=1)
>>> def work(ctx):
...     for epoch in range(3):
...         if ctx.stop_event.is_set():
...             break
...         ctx.report(epoch=epoch + 1, n_epochs=3, history_row={"loss": 1.0 / (epoch + 1)})
...     return "model"
>>> job = manager.submit(work, owner="session-a", name="demo")
>>> job.wait(10)
True
>>> job.status, job.result
('done', 'model')
"""
from __future__ import annotations

import collections
import dataclasses
import itertools
import logging
import os
import threading
import time
import traceback as _traceback
import uuid
from collections.abc import Collection
from typing import Any, Callable, Literal

from dhaka import cpu, resources
from dhaka.resources import ResourceError, format_bytes

__all__ = [
    "AdmissionError",
    "Job",
    "JobContext",
    "JobManager",
    "JobStatus",
    "OwnerLimitError",
    "QueueFullError",
    "ResourceError",
    "ThreadPlan",
    "default_abandon_grace_s",
    "default_max_per_owner",
    "default_max_queued",
    "default_max_running",
    "get_manager",
    "plan",
]

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "cancelled", "failed"]
FINISHED: frozenset[str] = frozenset({"done", "cancelled", "failed"})

#: Default bound on the number of history rows a job keeps (one per epoch).
HISTORY_MAXLEN = 10_000
#: Jobs that may wait in the queue when ``DHAKA_MAX_QUEUED`` is not set.
MAX_QUEUED = 16
#: Jobs one owner may have queued or running when ``DHAKA_MAX_JOBS_PER_OWNER`` is not set.
MAX_JOBS_PER_OWNER = 2
#: Seconds an owner may be unseen before its jobs are cancelled (``DHAKA_ABANDON_GRACE_S``).
ABANDON_GRACE_S = 900.0
#: Seconds between two passes of the abandoned-owner sweeper.
SWEEP_INTERVAL_S = 60.0
#: Threads of one job when ``DHAKA_THREADS_PER_JOB`` is not set.  On the 2-core machine of
#: bench/contention.py a default fit took 37.4 s with 2 threads and 47.7 s with 1: two threads keep a
#: person training alone within 1.2x of a plain fit, and two trainings queue (the second is done at
#: about 2x one alone; ``DHAKA_THREADS_PER_JOB=1`` runs both at once, each done at about 1.3x).
THREADS_PER_JOB = 2


class AdmissionError(RuntimeError):
    """A job was refused at submission (queue full, owner's limit reached)."""


class QueueFullError(AdmissionError):
    """The queue holds ``max_queued`` waiting jobs already."""


class OwnerLimitError(AdmissionError):
    """The owner has ``max_per_owner`` jobs queued or running already."""


def _env_int(name: str, default: int, minimum: int) -> int:
    env = os.environ.get(name, "").strip()
    if not env:
        return default
    try:
        value = int(env)
    except ValueError:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {env!r}") from None
    if value < minimum:
        raise ValueError(f"{name} must be an integer of at least {minimum}, got {env!r}")
    return value


def default_max_queued() -> int:
    """Jobs allowed to wait in the queue: ``DHAKA_MAX_QUEUED`` (0 or more) or :data:`MAX_QUEUED`."""
    return _env_int("DHAKA_MAX_QUEUED", MAX_QUEUED, 0)


def default_max_per_owner() -> int:
    """Jobs one owner may have queued or running: ``DHAKA_MAX_JOBS_PER_OWNER`` or :data:`MAX_JOBS_PER_OWNER`."""
    return _env_int("DHAKA_MAX_JOBS_PER_OWNER", MAX_JOBS_PER_OWNER, 1)


def default_abandon_grace_s() -> float:
    """Seconds an owner may go unseen: ``DHAKA_ABANDON_GRACE_S`` (positive) or :data:`ABANDON_GRACE_S`."""
    value = resources.env_positive_float("DHAKA_ABANDON_GRACE_S", unit="seconds")
    return ABANDON_GRACE_S if value is None else value


@dataclasses.dataclass(frozen=True)
class ThreadPlan:
    """How the CPU budget is split between jobs (see :func:`plan`).

    Attributes
    ----------
    budget
        CPUs the server may use (:func:`dhaka.cpu.budget`); ``None`` when the budget is switched off.
    max_running
        Jobs run at once.
    threads
        Threads each job gets; ``None`` when the budget is switched off (libraries keep their defaults).
    """

    budget: int | None
    max_running: int
    threads: int | None

    def describe(self) -> str:
        """The plan in words, for a log line or the docs."""
        if self.threads is None:
            return f"{self.max_running} job(s) at once, threads left to the libraries (DHAKA_CPU_BUDGET=0)"
        return (f"{self.max_running} job(s) at once x {self.threads} thread(s) each, "
                f"of a budget of {self.budget} CPU(s)")


def plan(budget: int | None = None, *, max_running: int | None = None,
         threads_per_job: int | None = None) -> ThreadPlan:
    """How many jobs run at once and with how many threads each.

    Parameters
    ----------
    budget
        CPUs to share; default :func:`dhaka.cpu.budget` (affinity and cgroup quota, ``DHAKA_THREADS``).
    max_running
        Jobs at once; default ``DHAKA_MAX_JOBS``, else ``budget // threads_per_job`` (at least 1).
        When it is given, each job gets ``budget // max_running`` threads (at least 1).
    threads_per_job
        Threads of one job; default ``DHAKA_THREADS_PER_JOB``, else :data:`THREADS_PER_JOB`; at most
        the budget.

    Returns
    -------
    ThreadPlan
        With ``DHAKA_CPU_BUDGET=0``: one job per pair of cores as reported by ``os.cpu_count()``
        (the behaviour before the budget), threads ``None``.

    Examples
    --------
    >>> plan(2, threads_per_job=2)
    ThreadPlan(budget=2, max_running=1, threads=2)
    >>> plan(2, threads_per_job=1)
    ThreadPlan(budget=2, max_running=2, threads=1)
    >>> plan(16, threads_per_job=2)
    ThreadPlan(budget=16, max_running=8, threads=2)
    >>> plan(4, max_running=3, threads_per_job=2)
    ThreadPlan(budget=4, max_running=3, threads=1)
    """
    if max_running is None:
        max_running = _env_int("DHAKA_MAX_JOBS", 0, 1) or None
    if not cpu.enabled() and budget is None:
        return ThreadPlan(None, max_running or max(1, (os.cpu_count() or 1) // 2), None)
    b = max(1, int(budget if budget is not None else cpu.budget()))
    if max_running is not None:
        if int(max_running) < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        return ThreadPlan(b, int(max_running), max(1, b // int(max_running)))
    per = threads_per_job if threads_per_job is not None else _env_int(
        "DHAKA_THREADS_PER_JOB", THREADS_PER_JOB, 1)
    if int(per) < 1:
        raise ValueError(f"threads_per_job must be at least 1, got {per}")
    per = min(int(per), b)
    return ThreadPlan(b, max(1, b // per), per)


def default_max_running() -> int:
    """Number of jobs allowed to run at once when none is given.

    Reads ``DHAKA_MAX_JOBS`` (a positive integer); otherwise :func:`plan`'s: the CPU budget (affinity
    and cgroup quota) divided by the threads of one job, at least one.

    Returns
    -------
    int
        The limit, at least 1.

    Raises
    ------
    ValueError
        If ``DHAKA_MAX_JOBS`` is set but is not a positive integer.
    """
    return plan().max_running


class JobContext:
    """What a job function receives: its stop event, owner and a progress reporter.

    Parameters
    ----------
    job
        The job this context reports into.
    """

    def __init__(self, job: Job) -> None:
        self._job = job

    @property
    def stop_event(self) -> threading.Event:
        """Set when the job is cancelled; check it between epochs or minibatches."""
        return self._job._stop_event

    @property
    def owner(self) -> str:
        """The owner (session id) that submitted the job."""
        return self._job.owner

    @property
    def job_id(self) -> str:
        """The job's id."""
        return self._job.id

    @property
    def threads(self) -> int | None:
        """Threads this job may use (its share of the CPU budget; ``None`` when the budget is off).

        The job's function runs inside :func:`dhaka.cpu.share` of it already: a fit in this thread
        takes it by default; a process the job starts gets :func:`dhaka.cpu.worker_env` of it.
        """
        return self._job.threads

    @property
    def stopped(self) -> bool:
        """``True`` once cancellation was requested."""
        return self._job._stop_event.is_set()

    def report(self, *, history_row: dict[str, Any] | None = None, **fields: Any) -> None:
        """Update the job's progress snapshot.

        Parameters
        ----------
        history_row
            When given, appended (as a copy) to the job's bounded history, e.g.
            one row per epoch with losses for the live curves.
        **fields
            Progress fields merged into the snapshot's ``progress`` mapping,
            e.g. ``epoch=3, n_epochs=50, eta=12.5, message="training"``.
        """
        self._job._report(fields, history_row)


class Job:
    """One background job.  Created by :meth:`JobManager.submit`, not directly.

    Attributes
    ----------
    id, owner, name, kind : str
        Identity.  ``kind`` is free text such as ``"train"`` or ``"embed"``.
    status : {"queued", "running", "done", "cancelled", "failed"}
        ``"cancelled"`` means the function returned after cancellation was
        requested; its (partial) return value is kept in :attr:`result`.
    result : Any
        The function's return value (``None`` until it returns).
    error : str or None
        ``"ExceptionType: message"`` when the job failed.
    traceback : str or None
        The full traceback of a failure, for logs.
    created, started, finished : float or None
        Wall-clock times (``time.time()``).
    memory_bytes : int or None
        The memory the job declared it needs (admission at start counts it).
    waiting_for : str or None
        Why a queued job at the head of the queue has not started (memory).
    threads : int or None
        Its share of the CPU budget, set when it starts (see :func:`plan`).
    """

    def __init__(
        self,
        manager: JobManager,
        fn: Callable[[JobContext], Any],
        *,
        owner: str,
        name: str,
        kind: str,
        history_maxlen: int,
        memory_bytes: int | None = None,
    ) -> None:
        self.id: str = uuid.uuid4().hex[:12]
        self.owner = owner
        self.name = name
        self.kind = kind
        self.status: JobStatus = "queued"
        self.result: Any = None
        self.error: str | None = None
        self.traceback: str | None = None
        self.created: float = time.time()
        self.started: float | None = None
        self.finished: float | None = None
        self.memory_bytes = memory_bytes
        self.waiting_for: str | None = None
        self.threads: int | None = None
        self._manager = manager
        self._fn = fn
        self._seq = 0  # submission order, set by the manager
        self._stop_event = threading.Event()
        self._done = threading.Event()
        self._lock = threading.Lock()
        self._progress: dict[str, Any] = {}
        self._history: collections.deque[dict[str, Any]] = collections.deque(maxlen=history_maxlen)
        self._thread: threading.Thread | None = None

    def __repr__(self) -> str:
        return f"Job(id={self.id!r}, owner={self.owner!r}, name={self.name!r}, status={self.status!r})"

    # -- reading -----------------------------------------------------------
    @property
    def done(self) -> bool:
        """``True`` once the job is done, cancelled or failed."""
        return self._done.is_set()

    def snapshot(self, *, history: bool = True) -> dict[str, Any]:
        """A consistent copy of the job's state, safe to read from any thread.

        Parameters
        ----------
        history
            Copy the history rows too (``False`` leaves ``history`` empty: a page polling the
            progress every second need not copy every epoch's row each time).

        Returns
        -------
        dict
            A fresh dict (mutating it does not touch the job) with keys
            ``id, owner, name, kind, status, queue_position`` (1-based, or
            ``None`` when not queued), ``progress`` (dict of the reported
            fields), ``history`` (list of row dicts), ``n_history`` (its length), ``error``,
            ``created, started, finished`` (epoch seconds or ``None``),
            ``elapsed`` (seconds running so far, or ``None``),
            ``stop_requested``, ``memory_bytes`` (declared),
            ``waiting_for`` (why a queued job has not started, or ``None``) and
            ``threads`` (its share of the CPU budget once started).
        """
        status, position = self._manager._status_and_position(self)
        with self._lock:
            progress = dict(self._progress)
            rows = [dict(row) for row in self._history] if history else []
            n_history = len(self._history)
            started, finished = self.started, self.finished
        elapsed = None
        if started is not None:
            elapsed = (finished if finished is not None else time.time()) - started
        return {
            "id": self.id,
            "owner": self.owner,
            "name": self.name,
            "kind": self.kind,
            "status": status,
            "queue_position": position,
            "progress": progress,
            "history": rows,
            "n_history": n_history,
            "error": self.error,
            "created": self.created,
            "started": started,
            "finished": finished,
            "elapsed": elapsed,
            "stop_requested": self._stop_event.is_set(),
            "memory_bytes": self.memory_bytes,
            "waiting_for": self.waiting_for if status == "queued" else None,
            "threads": self.threads,
        }

    # -- control -----------------------------------------------------------
    def cancel(self) -> None:
        """Ask the job to stop.

        A queued job is taken out of the queue and marked ``"cancelled"`` at
        once.  A running job gets its stop event set; it becomes
        ``"cancelled"`` when its function returns.  Cancelling a finished job
        does nothing.
        """
        self._manager._cancel(self)

    def touch(self) -> None:
        """Say that the job's owner is still around (see :meth:`JobManager.touch`)."""
        self._manager.touch(self.owner)

    def wait(self, timeout: float | None = None) -> bool:
        """Block until the job has finished.

        Parameters
        ----------
        timeout
            Seconds to wait at most; ``None`` waits for ever.

        Returns
        -------
        bool
            ``True`` if the job finished within the timeout.
        """
        return self._done.wait(timeout)

    # -- internal ----------------------------------------------------------
    def _report(self, fields: dict[str, Any], history_row: dict[str, Any] | None) -> None:
        with self._lock:
            self._progress.update(fields)
            if history_row is not None:
                self._history.append(dict(history_row))


class JobManager:
    """Runs jobs in threads, at most ``max_running`` at once with ``threads`` each, FIFO beyond that.

    Parameters
    ----------
    max_running
        Jobs allowed to run at once.  ``None`` reads ``DHAKA_MAX_JOBS`` or
        divides the CPU budget by the threads of one job (see :func:`plan`).
    threads_per_job
        Threads of each job; ``None`` reads ``DHAKA_THREADS_PER_JOB`` or uses
        :data:`THREADS_PER_JOB` (with ``max_running`` given: the budget divided
        by it).  See :func:`plan`.
    cpu_budget
        The CPUs the jobs share; ``None``: :func:`dhaka.cpu.budget`.
    history_maxlen
        Bound on each job's history rows (oldest rows are dropped).
    keep_finished
        Finished jobs kept per owner; older finished jobs are forgotten so a
        long-running server does not hold every result for ever.
    max_queued
        Jobs allowed to wait; ``None`` reads ``DHAKA_MAX_QUEUED`` (default 16).
    max_per_owner
        Jobs one owner may have queued or running; ``None`` reads
        ``DHAKA_MAX_JOBS_PER_OWNER`` (default 2).
    separate_kinds
        Kinds of job counted on their own against ``max_per_owner``: the app
        starts them on the person's behalf (the comparison views after a
        training), so they must not use up the allowance for the jobs the
        person starts, nor the other way round.
    memory_limit
        The memory jobs may use in all, in bytes, or a function returning it
        (``None`` when unknown); a job declaring more is refused at
        submission.  Default :func:`dhaka.resources.memory_limit`.  ``None``:
        no such check.
    available_memory
        A function returning the bytes available *now* (``None`` when
        unknown), called when a job is about to start.  Default
        :func:`dhaka.resources.available_memory`.  ``None``: only the
        declared memory of running jobs is counted against ``memory_limit``.
    trim
        Called before a job is failed for want of memory, to hand freed heap
        back to the system first (default :func:`dhaka.resources.trim_heap`).
    clock
        The wall clock (``time.time``), for the abandoned-owner sweep.
    sweep_interval_s
        Seconds between two passes of the sweeper thread that :meth:`touch`
        starts; ``None``: no thread (call :meth:`sweep_abandoned` yourself).
    """

    def __init__(
        self,
        max_running: int | None = None,
        *,
        threads_per_job: int | None = None,
        cpu_budget: int | None = None,
        history_maxlen: int = HISTORY_MAXLEN,
        keep_finished: int = 50,
        max_queued: int | None = None,
        max_per_owner: int | None = None,
        separate_kinds: Collection[str] = ("views",),
        memory_limit: int | Callable[[], int | None] | None = resources.memory_limit,
        available_memory: Callable[[], int | None] | None = resources.available_memory,
        trim: Callable[[], Any] | None = resources.trim_heap,
        clock: Callable[[], float] = time.time,
        sweep_interval_s: float | None = SWEEP_INTERVAL_S,
    ) -> None:
        if max_running is not None and int(max_running) < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.plan = plan(cpu_budget, max_running=max_running, threads_per_job=threads_per_job)
        self.max_running = self.plan.max_running
        self.threads: int | None = self.plan.threads
        self.history_maxlen = int(history_maxlen)
        self.keep_finished = int(keep_finished)
        self.max_queued = default_max_queued() if max_queued is None else int(max_queued)
        if self.max_queued < 0:
            raise ValueError(f"max_queued must be 0 or more, got {max_queued}")
        self.max_per_owner = default_max_per_owner() if max_per_owner is None else int(max_per_owner)
        if self.max_per_owner < 1:
            raise ValueError(f"max_per_owner must be at least 1, got {max_per_owner}")
        self.separate_kinds = frozenset(separate_kinds)
        self._memory_limit = memory_limit
        self._available_memory = available_memory
        self._trim = trim
        self._clock = clock
        self.sweep_interval_s = sweep_interval_s
        self._lock = threading.Lock()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._jobs: dict[str, Job] = {}
        self._seen: dict[str, float] = {}
        self._counter = itertools.count()
        self._closed = False
        self._sweeper: threading.Thread | None = None
        self._stop_sweeper = threading.Event()

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"JobManager(max_running={self.max_running}, threads={self.threads}, running={len(self._running)}, "
                f"queued={len(self._queue)})"
            )

    # -- public ------------------------------------------------------------
    def submit(
        self,
        fn: Callable[[JobContext], Any],
        *,
        owner: str,
        name: str,
        kind: str = "train",
        memory_bytes: int | None = None,
    ) -> Job:
        """Queue ``fn`` to run in a background thread.

        Parameters
        ----------
        fn
            Called as ``fn(ctx)`` with a :class:`JobContext`; its return value
            becomes :attr:`Job.result`.  It must not call streamlit.
        owner
            Who the job belongs to (the person's owner key in the app).
        name
            A human-readable label.
        kind
            Free-text category, e.g. ``"train"``, ``"analysis"``, ``"read"``.
        memory_bytes
            The peak memory the job will need (e.g.
            :func:`dhaka.resources.estimate_training_memory`); checked
            against what is available when the job starts.  ``None``: the
            job is admitted only when memory is not already exhausted.

        Returns
        -------
        Job
            Already running, or queued when ``max_running`` jobs run (or the
            head of the queue waits for memory).

        Raises
        ------
        OwnerLimitError
            When ``owner`` already has ``max_per_owner`` jobs queued or running.
        QueueFullError
            When the job would wait and ``max_queued`` jobs wait already.
        ResourceError
            When ``memory_bytes`` exceeds the whole memory limit: it could never run.
        """
        if not owner:
            raise ValueError("a job needs a non-empty owner")
        if memory_bytes is not None:
            memory_bytes = int(memory_bytes)
            if memory_bytes < 0:
                raise ValueError(f"memory_bytes must be 0 or more, got {memory_bytes}")
            limit = self._limit()
            if limit is not None and memory_bytes > limit:
                raise ResourceError(
                    f"{name} would need about {format_bytes(memory_bytes)} but the server's memory limit is "
                    f"{format_bytes(limit)}, so it can never run here; select fewer genes, use a smaller batch "
                    "size or a shallower network, or subsample cells.")
        job = Job(self, fn, owner=str(owner), name=str(name), kind=str(kind),
                  history_maxlen=self.history_maxlen, memory_bytes=memory_bytes)
        with self._lock:
            if self._closed:
                raise RuntimeError("this JobManager has been shut down")
            group = self._quota_group(job.kind)
            active = sum(1 for j in self._jobs.values()
                         if j.owner == job.owner and j.status not in FINISHED and self._quota_group(j.kind) == group)
            if active >= self.max_per_owner:
                what = f"{job.kind} jobs" if job.kind in self.separate_kinds else "jobs"
                raise OwnerLimitError(
                    f"You already have {active} {what} queued or running; the limit is "
                    f"{self.max_per_owner} per person (DHAKA_MAX_JOBS_PER_OWNER). Wait for one to finish or "
                    "cancel it.")
            would_wait = bool(self._queue) or len(self._running) >= self.max_running
            if would_wait and len(self._queue) >= self.max_queued:
                raise QueueFullError(
                    f"The server is busy: {len(self._running)} job(s) running and {len(self._queue)} waiting, the "
                    f"most the queue takes (DHAKA_MAX_QUEUED={self.max_queued}). Try again when some have finished.")
            job._seq = next(self._counter)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._prune_locked(job.owner)
            self._start_next_locked()
        return job

    def _quota_group(self, kind: str) -> str:
        """The per-owner count a job of ``kind`` belongs to (its kind if separate, else the common one)."""
        return kind if kind in self.separate_kinds else ""

    def jobs(self, owner: str) -> list[Job]:
        """The jobs of one owner, oldest first (never another owner's)."""
        with self._lock:
            return sorted((j for j in self._jobs.values() if j.owner == owner), key=lambda j: j._seq)

    def get(self, job_id: str, owner: str) -> Job | None:
        """The job with this id if it belongs to ``owner``, else ``None``."""
        with self._lock:
            job = self._jobs.get(job_id)
        if job is None or job.owner != owner:
            return None
        return job

    def queue_position(self, job: Job) -> int | None:
        """1-based place of a queued job in the queue, ``None`` if not queued."""
        return self._status_and_position(job)[1]

    def touch(self, owner: str) -> None:
        """Record that ``owner`` is still around (call it on every page run and poll).

        The first call starts the daemon thread that sweeps abandoned owners
        (:meth:`sweep_abandoned`) every minute and retries a queue head that
        waits for memory.
        """
        if not owner:
            return
        with self._lock:
            self._seen[str(owner)] = self._clock()
        self._ensure_sweeper()

    def sweep_abandoned(self, grace_s: float | None = None) -> list[Job]:
        """Cancel the jobs of owners not seen for ``grace_s`` seconds and free their results.

        Only owners that called :meth:`touch` at least once are considered.
        Unfinished jobs are cancelled (a running one stops at its next check
        of the stop event; its partial result is dropped at the next sweep);
        finished ones lose their :attr:`Job.result` and are forgotten.

        Parameters
        ----------
        grace_s
            Seconds; default ``DHAKA_ABANDON_GRACE_S`` or 900.

        Returns
        -------
        list of Job
            The jobs cancelled or freed.
        """
        grace = default_abandon_grace_s() if grace_s is None else float(grace_s)
        now = self._clock()
        to_cancel: list[Job] = []
        freed: list[Job] = []
        with self._lock:
            gone = {o for o, seen in self._seen.items() if now - seen > grace}
            if not gone:
                return []
            for job in list(self._jobs.values()):
                if job.owner not in gone:
                    continue
                if job.status in FINISHED:
                    job.result = None
                    job._fn = None
                    del self._jobs[job.id]
                    freed.append(job)
                else:
                    to_cancel.append(job)
            for owner in gone:  # forget owners with nothing left; the rest are swept again
                if not any(j.owner == owner for j in self._jobs.values()):
                    del self._seen[owner]
        for job in to_cancel:
            log.info("cancelling job %s (%s): its owner has not been seen for %.0f s", job.id, job.name, grace)
            job.cancel()
        return to_cancel + freed

    def shutdown(self, *, cancel: bool = True, timeout: float | None = 10.0) -> bool:
        """Stop accepting jobs; optionally cancel the rest and wait for them.

        Returns
        -------
        bool
            ``True`` if every job finished within ``timeout``.
        """
        with self._lock:
            self._closed = True
            jobs = list(self._jobs.values())
        self._stop_sweeper.set()
        if cancel:
            for job in jobs:
                job.cancel()
        deadline = None if timeout is None else time.monotonic() + timeout
        for job in jobs:
            left = None if deadline is None else max(0.0, deadline - time.monotonic())
            if not job.wait(left):
                return False
        return True

    @property
    def n_running(self) -> int:
        """Number of jobs running now."""
        with self._lock:
            return len(self._running)

    @property
    def n_queued(self) -> int:
        """Number of jobs waiting in the queue."""
        with self._lock:
            return len(self._queue)

    def retry_queue(self) -> None:
        """Start queued jobs that fit now (the sweeper calls it every minute)."""
        with self._lock:
            if not self._closed:
                self._start_next_locked()

    # -- internal ----------------------------------------------------------
    def _limit(self) -> int | None:
        limit = self._memory_limit() if callable(self._memory_limit) else self._memory_limit
        return None if limit is None else int(limit)

    def _ensure_sweeper(self) -> None:
        with self._lock:
            if self._closed or self.sweep_interval_s is None \
                    or (self._sweeper is not None and self._sweeper.is_alive()):
                return
            self._sweeper = threading.Thread(target=self._sweep_loop, daemon=True, name="dhaka-job-sweeper")
            self._sweeper.start()

    def _sweep_loop(self) -> None:
        while not self._stop_sweeper.wait(self.sweep_interval_s):
            try:
                self.sweep_abandoned()
                self.retry_queue()
            except Exception:  # noqa: BLE001 - the sweeper must keep going
                log.exception("job sweeper pass failed")

    def _status_and_position(self, job: Job) -> tuple[str, int | None]:
        with self._lock:
            if job.status != "queued":
                return job.status, None
            for i, queued in enumerate(self._queue):
                if queued is job:
                    return job.status, i + 1
            return job.status, None

    def _prune_locked(self, owner: str) -> None:
        finished = sorted((j for j in self._jobs.values() if j.owner == owner and j.status in FINISHED),
                          key=lambda j: j._seq)
        for job in finished[: max(0, len(finished) - self.keep_finished)]:
            del self._jobs[job.id]

    def check_memory(self, estimate: int, *, what: str) -> None:
        """Refuse work done outside the queue (e.g. parsing an upload) that would not fit now.

        Counts what is free now and what running jobs declared, as admission does at a job's start.

        Raises
        ------
        dhaka.resources.ResourceError
            Naming ``what``, the need and the room left.
        """
        with self._lock:
            room, _available, reserved = self._headroom_locked()
        if room is not None and int(estimate) > room:
            raise ResourceError(
                f"{what} would need about {format_bytes(estimate)} but only {format_bytes(max(room, 0))} is free "
                f"now ({format_bytes(reserved)} held by {len(self._running)} running job(s)); try again when "
                "they have finished, or upload a smaller or sparse file (.h5ad, .mtx, 10x).")

    def _headroom_locked(self) -> tuple[int | None, int | None, int]:
        """(bytes a new job may take now or None if unknown, available now, declared by running jobs)."""
        reserved = sum(j.memory_bytes or 0 for j in self._running)
        room: list[int] = []
        limit = self._limit()
        if limit is not None:
            room.append(limit - reserved)
        available = None
        if self._available_memory is not None:
            try:
                available = self._available_memory()
            except Exception:  # noqa: BLE001 - an unreadable meter must not stop the queue
                log.exception("reading the available memory failed")
                available = None
            if available is not None:
                # running jobs may not have reached their peak: count what they declared on top
                room.append(int(available) - reserved)
        return (min(room) if room else None), available, reserved

    def _admit_locked(self, job: Job) -> tuple[Literal["start", "wait", "fail"], str | None]:
        need = job.memory_bytes or 0
        room, _available, reserved = self._headroom_locked()
        if room is None or need <= room:
            return "start", None
        if not self._running and self._trim is not None:
            try:
                self._trim()  # freed heap back to the system, then measure again
            except Exception:  # noqa: BLE001
                pass
            room, _available, reserved = self._headroom_locked()
            if room is None or need <= room:
                return "start", None
        what = f"about {format_bytes(need)}" if job.memory_bytes else "some memory"
        avail = f"{format_bytes(max(0, room))} is free now" if room is not None else "memory is short"
        if self._running:
            return "wait", (f"waiting for memory: needs {what}, {avail} "
                            f"({format_bytes(reserved)} held by {len(self._running)} running job(s)); "
                            "it starts when they finish")
        return "fail", (f"{job.name} would need {what} but only {avail} (the rest is in use by this server's "
                        "data and other programs on the machine); try again later, free memory (close "
                        "datasets you no longer need) or make the job smaller.")

    def _start_next_locked(self) -> None:
        while self._queue and len(self._running) < self.max_running:
            job = self._queue[0]
            verdict, why = self._admit_locked(job)
            if verdict == "wait":
                job.waiting_for = why
                return
            self._queue.popleft()
            job.waiting_for = None
            if verdict == "fail":
                job.status = "failed"
                job.error = f"ResourceError: {why}"
                job.finished = time.time()
                job._fn = None
                job._done.set()
                log.warning("job %s (%s, owner %s) refused at start: %s", job.id, job.name, job.owner, why)
                continue
            job.status = "running"
            job.started = time.time()
            job.threads = self.threads
            self._running.add(job)
            thread = threading.Thread(target=self._run, args=(job,), daemon=True,
                                      name=f"dhaka-job-{job.id}")
            job._thread = thread
            thread.start()

    def _cancel(self, job: Job) -> None:
        with self._lock:
            if job.status in FINISHED:
                return
            job._stop_event.set()
            if job.status == "queued":
                try:
                    self._queue.remove(job)
                except ValueError:  # pragma: no cover - status and queue move together
                    pass
                job.status = "cancelled"
                job.finished = time.time()
                job._fn = None
                job._done.set()
                self._start_next_locked()  # the head may have been the one waiting

    def _run(self, job: Job) -> None:
        ctx = JobContext(job)
        result: Any = None
        error: str | None = None
        tb: str | None = None
        try:
            with cpu.share(job.threads):  # a fit in this thread, or a process it starts, takes the job's share
                result = job._fn(ctx)
        except BaseException as exc:  # noqa: BLE001 - a job must never leave a stuck slot
            error = f"{type(exc).__name__}: {exc}" if str(exc) else type(exc).__name__
            tb = _traceback.format_exc()
            log.error("job %s (%s, owner %s) failed:\n%s", job.id, job.name, job.owner, tb)
        finally:
            with self._lock:
                job.result = result
                job.error = error
                job.traceback = tb
                if error is not None:
                    job.status = "failed"
                elif job._stop_event.is_set():
                    job.status = "cancelled"
                else:
                    job.status = "done"
                job.finished = time.time()
                job._fn = None  # release closures (data, models) held by the function
                self._running.discard(job)
                job._done.set()
                self._start_next_locked()


_MANAGER: JobManager | None = None
_MANAGER_LOCK = threading.Lock()


def get_manager() -> JobManager:
    """The process-wide :class:`JobManager`, created on first use.

    Its limits come from ``DHAKA_MAX_JOBS`` / ``DHAKA_THREADS_PER_JOB`` and the
    CPU budget (see :func:`plan`).
    """
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = JobManager()
        return _MANAGER
