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
import itertools
import logging
import os
import threading
import time
import traceback as _traceback
import uuid
from typing import Any, Callable, Literal

__all__ = [
    "Job",
    "JobContext",
    "JobManager",
    "JobStatus",
    "default_max_running",
    "get_manager",
]

log = logging.getLogger(__name__)

JobStatus = Literal["queued", "running", "done", "cancelled", "failed"]
FINISHED: frozenset[str] = frozenset({"done", "cancelled", "failed"})

#: Default bound on the number of history rows a job keeps (one per epoch).
HISTORY_MAXLEN = 10_000


def default_max_running() -> int:
    """Number of jobs allowed to run at once when none is given.

    Reads ``DHAKA_MAX_JOBS`` (a positive integer); otherwise one job per pair
    of CPU cores, at least one.

    Returns
    -------
    int
        The limit, at least 1.

    Raises
    ------
    ValueError
        If ``DHAKA_MAX_JOBS`` is set but is not a positive integer.
    """
    env = os.environ.get("DHAKA_MAX_JOBS", "").strip()
    if env:
        try:
            value = int(env)
        except ValueError:
            raise ValueError(f"DHAKA_MAX_JOBS must be a positive integer, got {env!r}") from None
        if value < 1:
            raise ValueError(f"DHAKA_MAX_JOBS must be a positive integer, got {env!r}")
        return value
    return max(1, (os.cpu_count() or 1) // 2)


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

    def snapshot(self) -> dict[str, Any]:
        """A consistent copy of the job's state, safe to read from any thread.

        Returns
        -------
        dict
            A fresh dict (mutating it does not touch the job) with keys
            ``id, owner, name, kind, status, queue_position`` (1-based, or
            ``None`` when not queued), ``progress`` (dict of the reported
            fields), ``history`` (list of row dicts), ``error``,
            ``created, started, finished`` (epoch seconds or ``None``),
            ``elapsed`` (seconds running so far, or ``None``) and
            ``stop_requested``.
        """
        status, position = self._manager._status_and_position(self)
        with self._lock:
            progress = dict(self._progress)
            history = [dict(row) for row in self._history]
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
            "history": history,
            "error": self.error,
            "created": self.created,
            "started": started,
            "finished": finished,
            "elapsed": elapsed,
            "stop_requested": self._stop_event.is_set(),
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
    """Runs jobs in threads, at most ``max_running`` at once, FIFO beyond that.

    Parameters
    ----------
    max_running
        Jobs allowed to run at once.  ``None`` reads ``DHAKA_MAX_JOBS`` or
        uses one per pair of CPU cores (see :func:`default_max_running`).
    history_maxlen
        Bound on each job's history rows (oldest rows are dropped).
    keep_finished
        Finished jobs kept per owner; older finished jobs are forgotten so a
        long-running server does not hold every result for ever.
    """

    def __init__(
        self,
        max_running: int | None = None,
        *,
        history_maxlen: int = HISTORY_MAXLEN,
        keep_finished: int = 50,
    ) -> None:
        if max_running is None:
            max_running = default_max_running()
        if int(max_running) < 1:
            raise ValueError(f"max_running must be at least 1, got {max_running}")
        self.max_running = int(max_running)
        self.history_maxlen = int(history_maxlen)
        self.keep_finished = int(keep_finished)
        self._lock = threading.Lock()
        self._queue: collections.deque[Job] = collections.deque()
        self._running: set[Job] = set()
        self._jobs: dict[str, Job] = {}
        self._counter = itertools.count()
        self._closed = False

    def __repr__(self) -> str:
        with self._lock:
            return (
                f"JobManager(max_running={self.max_running}, running={len(self._running)}, "
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
    ) -> Job:
        """Queue ``fn`` to run in a background thread.

        Parameters
        ----------
        fn
            Called as ``fn(ctx)`` with a :class:`JobContext`; its return value
            becomes :attr:`Job.result`.  It must not call streamlit.
        owner
            Who the job belongs to (the session id in the app).
        name
            A human-readable label.
        kind
            Free-text category, e.g. ``"train"`` or ``"embed"``.

        Returns
        -------
        Job
            Already running, or queued when ``max_running`` jobs run.
        """
        if not owner:
            raise ValueError("a job needs a non-empty owner")
        job = Job(self, fn, owner=str(owner), name=str(name), kind=str(kind),
                  history_maxlen=self.history_maxlen)
        with self._lock:
            if self._closed:
                raise RuntimeError("this JobManager has been shut down")
            job._seq = next(self._counter)
            self._jobs[job.id] = job
            self._queue.append(job)
            self._prune_locked(job.owner)
            self._start_next_locked()
        return job

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

    def forget(self, job_id: str, owner: str) -> bool:
        """Drop a finished job of ``owner`` from the registry.

        Returns
        -------
        bool
            ``True`` if a finished job was forgotten.
        """
        with self._lock:
            job = self._jobs.get(job_id)
            if job is None or job.owner != owner or job.status not in FINISHED:
                return False
            del self._jobs[job_id]
            return True

    def cancel_all(self, owner: str | None = None) -> None:
        """Cancel every unfinished job (of ``owner`` when given)."""
        with self._lock:
            targets = [j for j in self._jobs.values()
                       if j.status not in FINISHED and (owner is None or j.owner == owner)]
        for job in targets:
            job.cancel()

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

    # -- internal ----------------------------------------------------------
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

    def _start_next_locked(self) -> None:
        while self._queue and len(self._running) < self.max_running:
            job = self._queue.popleft()
            job.status = "running"
            job.started = time.time()
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
                job._done.set()

    def _run(self, job: Job) -> None:
        ctx = JobContext(job)
        result: Any = None
        error: str | None = None
        tb: str | None = None
        try:
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

    Its limit comes from ``DHAKA_MAX_JOBS`` or the CPU count (see
    :func:`default_max_running`).
    """
    global _MANAGER
    with _MANAGER_LOCK:
        if _MANAGER is None:
            _MANAGER = JobManager()
        return _MANAGER
