"""The app's trainings run in a process of their own, reporting every epoch over a socket.

Why: a training in a thread of the server shares the server's GIL with every page's poll (each
Streamlit fragment rerun is a few milliseconds of pure Python). On the 2-core machine of
``bench/app_live.py`` that cost 22-41 % of a default training while the Train page was open, after
the larger causes (Streamlit's post-script ``gc.collect``, UMAP's compiler) were gone. In its own
process the training's Python loop never waits for the server, and the server's thread that relays
its progress is asleep in ``recv`` between epochs.

The protocol (parent = the job's thread in the server, see :func:`dhaka.ui.tasks.make_train_task`):

- parent -> worker: one request dict (``adata``: the matrix and names only, with the ``batch_key`` column
  when there is one, ``params``, ``truth``, ``batch_key``,
  ``k_max``, ``checkpoint_every``, ``checkpoint_seconds``, optionally ``scratch``: a folder on the run's file system for
  checkpoints), then possibly ``"stop"``;
- worker -> parent: ``("epoch", row)`` per epoch, ``("checkpoint", epoch, folder)`` (a model folder
  the parent moves into the run), ``("phase", "embedding")``, and at the end
  ``("done", PipelineResult)`` (:mod:`dhaka.pipeline`) or ``("error", exception, traceback_text)``.

Threads: the job's share of the CPU budget (:attr:`dhaka.jobs.JobContext.threads`, read in the job's
thread through :func:`dhaka.cpu.current_share`) goes with the request as ``threads``; the worker takes
it (:func:`dhaka.cpu.configure_process`: its budget from then on) and fits inside
:func:`dhaka.cpu.limit_threads` (the share, less a thread per core other programs keep busy), and the
count the fit used comes back in the result's ``metrics["n_threads"]``, which the run records. A
process started for a request has the share in its environment before it imports torch
(:func:`dhaka.cpu.worker_env`); the spare gets the job manager's share (:func:`dhaka.jobs.plan`).

A worker whose parent disappears stops its training within one epoch and exits. One spare worker is
kept started (:func:`prestart`), with torch and the estimator imported and one tiny fit run
(:func:`warm_up`), so a training starts at once and warm: one when the server starts, the next when
the finished training's comparison views are done, or when the Train page is shown with no views
being computed (not when a training ends: its imports and warm-up, 5 s of CPU, then competed with
the views; bench/app_live.py measures the CPU of every process from Finished to the views). Both ends
are this project's code on the same machine, connected over an authenticated socket, so pickled
messages are safe here.

Nothing here imports streamlit.
"""
from __future__ import annotations

import atexit
import os
import pickle
import shutil
import sys
import tempfile
import threading
import time
import traceback
from pathlib import Path
from multiprocessing.connection import Connection
from typing import Any, Callable

from dhaka import cpu
from dhaka.ui.worker_process import WorkerProcess, connect_to_parent

__all__ = ["run_in_worker", "prestart", "prestart_once", "shutdown_spare", "warm_up"]

MODULE = "dhaka.ui.train_worker"


# OpenMP threads: the process keeps the server's settings. libgomp's default (spin a little, then
# sleep) measured best with the page open (bench/app_live.py, default demo, 2 cores): Start -> Finished
# 37.3 s against 42.8 s with OMP_WAIT_POLICY=PASSIVE and 40.8 s with GOMP_SPINCOUNT=10000; PASSIVE is
# 20 % slower even on an idle machine (plain fit 33.7 vs 28.0 s). It only helped beside a process that
# holds a whole core, which the job queue avoids (one training per two cores).


_spare_lock = threading.Lock()
_spare: WorkerProcess | None = None
_spare_threads: int | None = None
_atexit_set = False
_started_once = False


def _plan_threads() -> int | None:
    """The threads of one job in the process-wide job manager's plan (``None``: budget switched off)."""
    from dhaka.jobs import plan

    return plan().threads


def _start(threads: int | None) -> WorkerProcess:
    return WorkerProcess(MODULE, env=cpu.worker_env(threads))


def prestart() -> None:
    """Start a spare worker (it imports torch and the estimator now) unless one is waiting.

    It starts with the job manager's share of threads in its environment (:func:`dhaka.jobs.plan`).
    """
    global _spare, _spare_threads, _atexit_set
    with _spare_lock:
        if _spare is None or not _spare.alive():
            _spare_threads = _plan_threads()
            _spare = _start(_spare_threads)
        if not _atexit_set:
            atexit.register(shutdown_spare)
            _atexit_set = True


def prestart_once() -> None:
    """:func:`prestart` the first time it is called in this process (the server's start), else nothing."""
    global _started_once
    if not _started_once:
        _started_once = True
        prestart()


def shutdown_spare() -> None:
    """End the spare worker, if any (tests, server shutdown)."""
    global _spare
    with _spare_lock:
        spare, _spare = _spare, None
    if spare is not None:
        spare.close(timeout=0)


def _take(threads: int | None) -> WorkerProcess:
    """The spare (it takes ``threads`` when the request comes), or a new worker with them from its start."""
    global _spare
    with _spare_lock:
        worker, _spare = _spare, None
    if worker is None or not worker.alive():
        worker = _start(threads)
    return worker


def _send(conn: Connection, msg: Any) -> None:
    # plain pickle, not the connection's: torch registers reducers with multiprocessing's pickler that
    # share tensors through file descriptors and a resource-sharer socket this protocol does not run
    conn.send_bytes(pickle.dumps(msg, protocol=pickle.HIGHEST_PROTOCOL))


def _recv(conn: Connection) -> Any:
    return pickle.loads(conn.recv_bytes())


def _move_folder(src: str) -> Callable[[Path], None]:
    """A ``save_fn`` that moves the worker's model folder into ``dst`` (renames on one file system)."""
    def save(dst: Path) -> None:
        Path(dst).mkdir(parents=True, exist_ok=True)
        for item in Path(src).iterdir():
            shutil.move(str(item), str(Path(dst) / item.name))

    return save


def run_in_worker(
    request: dict[str, Any],
    *,
    stop_event: threading.Event,
    on_epoch: Callable[[dict[str, Any]], None],
    on_checkpoint: Callable[[Callable[[Path], None], int], None],
    on_phase: Callable[[str], None],
    poll_s: float = 0.25,
    threads: int | None = None,
) -> Any:
    """Run :func:`dhaka.ui.training.fit_embed_cluster` on ``request`` in a worker; returns its result.

    ``threads``: the worker's share of the CPU budget; default the share of the job running in this
    thread (:func:`dhaka.cpu.current_share`), else the worker's own budget. The count used comes back
    as ``result.metrics["n_threads"]``. The callbacks run in the calling thread. A set ``stop_event`` is passed on to the worker (the
    training then ends within one epoch and its result comes back as usual). An exception in the
    worker is raised here as itself; a worker that dies raises ``RuntimeError`` saying how it ended.
    """
    if threads is None:
        threads = cpu.current_share()
    worker = _take(threads)
    stop_sent = False
    try:
        conn = worker.conn
        _send(conn, {**request, "threads": threads})
        while True:
            if stop_event.is_set() and not stop_sent:
                _send(conn, "stop")
                stop_sent = True
            if not conn.poll(poll_s):
                if not worker.alive():
                    raise EOFError
                continue
            msg = _recv(conn)
            kind = msg[0]
            if kind == "epoch":
                on_epoch(msg[1])
            elif kind == "checkpoint":
                _, epoch, folder = msg
                try:
                    on_checkpoint(_move_folder(folder), int(epoch))
                finally:
                    shutil.rmtree(folder, ignore_errors=True)
            elif kind == "phase":
                on_phase(msg[1])
            elif kind == "done":
                return msg[1]
            elif kind == "error":
                raise msg[1]
    except (EOFError, OSError, BrokenPipeError):
        worker.proc.wait(timeout=10) if worker.alive() else None
        raise RuntimeError(f"The training process stopped before the end: {worker.exit_message()}.") from None
    finally:
        worker.close()


def warm_up() -> float:
    """Run the training job's code once on a tiny matrix; returns the seconds it took.

    A fresh process spends its first fit on one-time work: importing anndata, scikit-learn's mixture,
    metrics and decomposition modules, the parts of torch the optimiser and gradient clipping load
    lazily (sympy among them), first allocations. On the default demo that is 2.4 s of a 3.6 s
    two-epoch fit (1.2 s once warm). A spare worker does it while the form is being set, before it
    connects, so a training starts warm. The random states of numpy and torch are put back.
    """
    import anndata as ad
    import numpy as np
    import torch

    from dhaka.ui.training import fit_embed_cluster

    from dhaka import settings

    t0 = time.perf_counter()
    np_state, torch_state = np.random.get_state(), torch.random.get_rng_state()
    verbosity = settings.verbosity
    settings.set_verbosity(min(verbosity, 1))  # a warm-up is not a fit to log in the server's output
    try:
        X = np.random.default_rng(0).poisson(2.0, size=(64, 40)).astype(np.float32)
        fit_embed_cluster(ad.AnnData(X), {"epochs": 2, "batch_size": 32}, truth=None, k_max=3,
                          on_epoch=lambda row: None, stop_event=threading.Event(), checkpoint=None,
                          checkpoint_every=0)
    finally:
        settings.set_verbosity(verbosity)
        np.random.set_state(np_state)
        torch.random.set_rng_state(torch_state)
    return time.perf_counter() - t0


def _serve(address: str) -> None:
    # the slow imports and one tiny fit first: a spare worker is warm when it connects
    from dhaka.ui.training import fit_embed_cluster

    if os.environ.get(cpu.ENV_THREADS):
        cpu.configure_process(cpu.budget())  # torch's inter-op threads too, while that is still allowed

    try:
        warm_up()
    except Exception:  # noqa: BLE001 - a warm-up is an optimisation: the real request reports real errors
        pass
    conn = connect_to_parent(address)
    if conn is None:
        return
    try:
        request = _recv(conn)
    except (EOFError, OSError):
        return  # the server ended (or never used this spare)
    send_lock = threading.Lock()
    stop = threading.Event()

    def send(msg: Any) -> None:
        with send_lock:
            _send(conn, msg)

    def listen() -> None:
        while True:
            try:
                msg = _recv(conn)
            except (EOFError, OSError):
                stop.set()  # the server went away: end the training
                return
            if msg == "stop":
                stop.set()

    threading.Thread(target=listen, daemon=True).start()

    def checkpoint(save_fn: Callable[[Any], None], epoch: int) -> None:
        # in the run's folder when the parent gives it, so the checkpoint is renamed into place, not copied
        folder = tempfile.mkdtemp(prefix=".incoming-checkpoint-", dir=request.get("scratch"))
        save_fn(folder)
        send(("checkpoint", epoch, folder))

    threads = request.get("threads")
    if threads is not None:
        cpu.configure_process(int(threads))  # this process's budget is the share from now on
    try:
        # the share, less the cores other programs keep busy now (dhaka.cpu.choose_threads)
        with cpu.limit_threads(None) as used:
            result = fit_embed_cluster(
                request["adata"], request["params"], truth=request.get("truth"), k_max=request["k_max"],
                batch_key=request.get("batch_key"),
                on_epoch=lambda row: send(("epoch", row)), stop_event=stop, checkpoint=checkpoint,
                checkpoint_every=request["checkpoint_every"], checkpoint_seconds=request.get("checkpoint_seconds", 0.0),
                on_phase=lambda phase: send(("phase", phase)))
        # recorded with the run (the job puts the metrics in it): the fit's own count, else the block's
        result.metrics.setdefault("n_threads", int(getattr(result.estimator, "n_threads_", used)))
        send(("done", result))
    except (BrokenPipeError, EOFError, OSError):
        return
    except BaseException as exc:  # noqa: BLE001 - reported to the job, which raises it
        tb = traceback.format_exc()
        try:
            send(("error", exc, tb))
        except Exception:  # noqa: BLE001 - an exception that does not pickle
            send(("error", RuntimeError(f"{type(exc).__name__}: {exc}"), tb))
    finally:
        conn.close()


if __name__ == "__main__":
    _serve(sys.argv[1])
