"""A worker process for the Explore page's UMAP views, compiled ahead and run at low priority.

Why a process and not a thread of the server: UMAP's first call in a process compiles numba code
(6-11 s of CPU for the small-data path on this project's 2-core machine, 70 s with the large-data
path). Numba's compiler is pure Python and holds the GIL all along, so a warm-up *thread* in the
server stalled every training thread behind it (py-spy --gil: half of the GIL samples in
``warmup_umap`` while a training was watched). The process compiles as soon as it starts (with the
server, at the server's priority: a fresh server has no training yet, and a warm-up at niceness 10
beside the first training took 31 s and still slowed it), then serves at niceness :data:`NICE`, so
later views use only CPU time that trainings and pages leave idle. While a training runs
(:func:`trainings_first`), a worker still compiling is paused (SIGSTOP, SIGCONT after): a training
started in the first seconds after launch had 4.8 s of its CPU taken by the compile (bench/app_live.py,
the views worker's CPU between Start and Finished). It compiles *before* it connects,
and the server accepts in a thread: the warm-up once came after a connection the server accepted only
when it first needed the worker, so it began with the first UMAP (15 s after the default demo's
training, measured).

Threads: the worker takes one job's share of the CPU budget (:func:`dhaka.jobs.plan`), in its
environment before numba, numpy and openTSNE load (:func:`dhaka.cpu.worker_env`; numba sizes its pool
once, at import) and around every embedding (:func:`dhaka.cpu.limit_threads`); :attr:`ViewsWorker.threads`
says how many.

The process is started and reached through :mod:`dhaka.ui.worker_process` (why not
``multiprocessing`` is said there).

Nothing here imports streamlit; :func:`dhaka.ui.cached.views_worker` keeps one per server.
"""
from __future__ import annotations

import contextlib
import os
import signal
import sys
import threading
import time
import weakref
from collections.abc import Callable, Iterator
from typing import Any

import numpy as np

from dhaka import cpu
from dhaka.ui.worker_process import WorkerProcess, connect_to_parent

__all__ = ["ViewsWorker", "NICE", "trainings_first"]

#: Niceness of the worker process (0 = as the server, 19 = only idle CPU).
NICE = 10

_trainings = 0
_trainings_lock = threading.Lock()
_workers: "weakref.WeakSet[ViewsWorker]" = weakref.WeakSet()


@contextlib.contextmanager
def trainings_first() -> Iterator[Callable[[], None]]:
    """Pause the UMAP warm-up of every views worker still compiling while the block (a training) runs.

    Yields ``release``: call it to end this block's hold early (when the training's epochs are over
    and only its embedding is left, the views that follow need the compiler). Re-entrant across
    threads: the warm-ups go on when the last hold has ended. A worker that has compiled (it connects
    right after) is never paused.
    """
    global _trainings
    released = False

    def release() -> None:
        global _trainings
        nonlocal released
        with _trainings_lock:
            if released:
                return
            released = True
            _trainings -= 1
            if _trainings == 0:
                for w in list(_workers):
                    w._hold(False)

    with _trainings_lock:
        _trainings += 1
        for w in list(_workers):
            w._hold(True)
    try:
        yield release
    finally:
        release()


def _warm() -> float:
    """Compile UMAP's small-data path (exact neighbours, below 4096 cells)."""
    from dhaka.reduce import umap

    t0 = time.perf_counter()
    X = np.random.default_rng(0).standard_normal((300, 20)).astype(np.float32)
    umap(X, n_components=2, random_state=0)
    return time.perf_counter() - t0


def _embed(method: str, X: Any, n_components: int, random_state: int) -> np.ndarray:
    from dhaka import reduce

    fn = {"pca": reduce.pca, "tsne": reduce.tsne, "umap": reduce.umap}[method]
    return np.asarray(fn(X, n_components=n_components, random_state=random_state), dtype=np.float32)


class ViewsWorker:
    """One ``nice``-d worker process computing embeddings (:meth:`run`), UMAP compiled ahead.

    Parameters
    ----------
    warm
        Compile UMAP as the worker's first task (``False`` in tests: it compiles on first use).
    nice
        Niceness of the worker.
    threads
        Threads of its embeddings; default one job's share of the CPU budget (:func:`dhaka.jobs.plan`;
        ``None`` when the budget is switched off).
    """

    def __init__(self, *, warm: bool = True, nice: int = NICE, threads: int | None = None) -> None:
        self.started = time.time()
        if threads is None:
            from dhaka.jobs import plan

            threads = plan().threads
        self.threads = threads
        self._warm_wanted = bool(warm)
        self._nice = int(nice)
        self._lock = threading.Lock()  # one request at a time on the connection
        self._warm_done = not warm
        self._held = False
        self._start()

    def _start(self) -> None:
        self._worker = WorkerProcess("dhaka.ui.views_worker", str(self._nice),
                                     "1" if self._warm_wanted and not self._warm_done else "0",
                                     env=cpu.worker_env(self.threads))
        with _trainings_lock:
            _workers.add(self)
            if _trainings:
                self._hold(True)

    def _hold(self, on: bool) -> None:
        """Stop (``on``) a worker that is still compiling, or continue a stopped one (under _trainings_lock)."""
        stop, cont = getattr(signal, "SIGSTOP", None), getattr(signal, "SIGCONT", None)
        if stop is None or cont is None or on == self._held:
            return
        if on and (self._worker.connected() or not self._worker.alive()):
            return  # compiled (or gone): nothing to hold back
        try:
            os.kill(self._worker.proc.pid, stop if on else cont)
            self._held = on
        except ProcessLookupError:
            self._held = False

    @property
    def held(self) -> bool:
        """``True`` while the worker's warm-up is paused for a training."""
        return self._held

    def _connection(self):
        return self._worker.conn

    @property
    def warm(self) -> bool:
        """``True`` once UMAP is compiled in the worker (or no warm-up was asked for); never blocks."""
        if self._warm_done or not self._worker.connected() or not self._lock.acquire(blocking=False):
            return self._warm_done
        try:
            conn = self._connection()
            if conn.poll(0):
                conn.recv()  # ("warm", seconds)
                self._warm_done = True
        except (EOFError, OSError):
            pass
        finally:
            self._lock.release()
        return self._warm_done

    def run(self, method: str, X: Any, *, n_components: int, random_state: int = 0) -> np.ndarray:
        """``method`` ("pca", "tsne", "umap") of ``X`` computed in the worker; blocks until done.

        A worker that died is started again once; errors in the computation are raised here as
        ``RuntimeError`` with the worker's message.
        """
        with self._lock:
            for attempt in (1, 2):
                try:
                    conn = self._connection()
                    if not self._warm_done:
                        conn.recv()  # the warm-up's ("warm", seconds): UMAP is compiled
                        self._warm_done = True
                    conn.send((method, X, int(n_components), int(random_state)))
                    status, value = conn.recv()
                    break
                except (EOFError, OSError, BrokenPipeError):
                    if attempt == 2:
                        raise RuntimeError("the views worker process stopped; see the server log") from None
                    self.shutdown()
                    self._warm_done = True  # a restarted worker compiles on first use
                    self._start()
        if status != "ok":
            raise RuntimeError(value)
        return value

    def shutdown(self) -> None:
        """Stop the worker process."""
        with _trainings_lock:
            self._hold(False)  # a stopped process would not act on SIGTERM
            _workers.discard(self)
        self._worker.close(timeout=0)


def _serve(address: str, nice: int, warm: bool) -> None:
    # compile first, then connect: the parent accepts the connection only when it first needs the
    # worker, and a warm-up after the connection waited for that (it began with the first UMAP)
    seconds = None
    if warm:
        try:
            seconds = _warm()
        except Exception:  # noqa: BLE001 - the first real UMAP then compiles
            seconds = float("nan")
    if nice:
        try:
            os.nice(nice)
        except OSError:  # pragma: no cover - not permitted: run at normal priority
            pass
    conn = connect_to_parent(address)
    if conn is None:
        return  # the server ended before it took the connection
    if warm:
        conn.send(("warm", seconds))
    while True:
        try:
            method, X, n_components, random_state = conn.recv()
        except (EOFError, OSError):
            return  # the server went away
        try:
            with cpu.limit_threads(None, torch=False):  # DHAKA_THREADS from worker_env: the share, else the budget
                coords = _embed(method, X, n_components, random_state)
            conn.send(("ok", coords))
        except Exception as exc:  # noqa: BLE001 - reported to the page, the worker keeps serving
            conn.send(("error", f"{type(exc).__name__}: {exc}"))


if __name__ == "__main__":
    _serve(sys.argv[1], int(sys.argv[2]), sys.argv[3] == "1")
