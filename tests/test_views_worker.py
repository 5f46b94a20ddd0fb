"""The views worker process (t-SNE / UMAP off the server's GIL) and the background views task."""
from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from dhaka.ui.tasks import ViewsTask
from dhaka.ui.views_worker import ViewsWorker


@pytest.fixture(scope="module")
def worker():
    w = ViewsWorker(warm=False)
    yield w
    w.shutdown()


def _blobs(n=90, d=12, seed=0):
    rng = np.random.default_rng(seed)
    centres = rng.normal(0, 8, size=(3, d))
    return (centres[np.arange(n) % 3] + rng.normal(size=(n, d))).astype(np.float32)


def test_worker_computes_the_same_embedding_as_the_library(worker):
    from dhaka import reduce

    X = _blobs()
    out = worker.run("pca", X, n_components=2, random_state=0)
    np.testing.assert_allclose(out, reduce.pca(X, n_components=2, random_state=0), rtol=1e-4, atol=1e-4)
    assert worker.run("tsne", X, n_components=2, random_state=0).shape == (90, 2)
    assert worker.warm


def test_worker_reports_errors_and_survives_a_crash(worker):
    with pytest.raises(RuntimeError, match="KeyError"):
        worker.run("nope", _blobs(), n_components=2)
    worker._worker.proc.kill()
    worker._worker.proc.wait()
    assert worker.run("pca", _blobs(), n_components=2).shape == (90, 2)  # started again


class _Ctx:
    def __init__(self):
        self.reports = []
        self.stopped = False
        self.threads = 1  # the job's CPU share (JobContext.threads)

    def report(self, **fields):
        self.reports.append(fields)


def test_views_task_fills_results_one_by_one_and_skips_known_views(worker):
    X = _blobs()
    task = ViewsTask(X, digest="x", n_components=2, seed=0, done=("pca_2d",), run=worker.run,
                     methods=("pca", "tsne"))
    assert task.methods == ("tsne",)
    ctx = _Ctx()
    out = task(ctx)
    assert set(out) == {"tsne_2d"} and out["tsne_2d"].shape == (90, 2)
    assert ctx.reports[0]["message"] == "Computing t-SNE (2-D)" and ctx.reports[-1]["done"] == 1


def test_views_task_stops_when_cancelled():
    task = ViewsTask(_blobs(), digest="x", methods=("pca", "tsne"))
    ctx = _Ctx()
    ctx.stopped = True
    assert task(ctx) == {}


def test_only_umap_goes_to_the_worker():
    # t-SNE in the worker waited for UMAP's compilation; only UMAP needs the compiled worker
    sent = []

    def run(method, X, *, n_components, random_state=0):
        sent.append(method)
        return np.zeros((X.shape[0], n_components), dtype=np.float32)

    out = ViewsTask(_blobs(), digest="x", run=run)(_Ctx())
    assert sent == ["umap"] and set(out) == {"pca_2d", "tsne_2d", "umap_2d"}


def test_umap_runs_beside_the_other_views_and_after_runs_once_all_are_done():
    # UMAP waits in the worker (its compile) while t-SNE runs here; `after` (the app starts the next
    # training's spare process) comes when all views are in, and not for a stopped job
    import threading

    umap_started, tsne_done = threading.Event(), threading.Event()
    calls = []

    def run(method, X, *, n_components, random_state=0):
        umap_started.set()
        assert tsne_done.wait(30), "UMAP waited for t-SNE"
        return np.zeros((X.shape[0], n_components), dtype=np.float32)

    task = ViewsTask(_blobs(), digest="x", methods=("tsne", "umap"), run=run, after=lambda: calls.append(1))
    from dhaka import reduce

    real = reduce.tsne

    def tsne(X, **kw):
        assert umap_started.wait(30), "t-SNE ran before UMAP was sent"
        out = real(X, **kw)
        tsne_done.set()
        return out

    import unittest.mock

    with unittest.mock.patch.object(reduce, "tsne", tsne):
        out = task(_Ctx())
    assert set(out) == {"tsne_2d", "umap_2d"} and calls == [1]
    stopped = _Ctx()
    stopped.stopped = True
    ViewsTask(_blobs(), digest="x", methods=("pca",), after=lambda: calls.append(2))(stopped)
    assert calls == [1]


def test_a_failed_umap_fails_the_views_job():
    def run(method, X, **kw):
        raise RuntimeError("worker said no")

    with pytest.raises(RuntimeError, match="worker said no"):
        ViewsTask(_blobs(), digest="x", methods=("pca", "umap"), run=run)(_Ctx())


def test_umap_compiles_as_soon_as_the_worker_starts():
    # the warm-up once waited for the server to accept the connection, which it did on the first UMAP
    # asked for (or the first look at `warm`): the worker now compiles first, then connects
    import time

    w = ViewsWorker(warm=True)
    try:
        deadline = time.time() + 180
        while not w._worker.connected() and time.time() < deadline:  # no request, no `warm` asked
            time.sleep(0.2)
        assert w._worker.connected(), "the worker did not connect"
        time.sleep(0.5)  # its ("warm", seconds) message follows the connection at once
        assert w.warm, "connected before UMAP was compiled"
        assert w.run("umap", _blobs(), n_components=2).shape == (90, 2)
    finally:
        w.shutdown()


def _state(pid: int) -> str:
    stat = Path(f"/proc/{pid}/stat").read_text()
    return stat[stat.rindex(")") + 2]


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads the process state from /proc")
def test_a_training_pauses_a_umap_warm_up_and_lets_it_finish_after():
    # the first training after launch had 4.8 s of its CPU taken by the compile (bench/app_live.py)
    import time

    from dhaka.ui.views_worker import trainings_first

    w = ViewsWorker(warm=True)
    try:
        with trainings_first():
            assert w.held
            time.sleep(0.3)
            assert _state(w._worker.proc.pid) == "T"  # stopped
            with trainings_first():  # a second training at once: still held when the first ends
                pass
            assert w.held
            with trainings_first() as release:  # released early (its embedding phase): the first still holds
                release()
                release()  # idempotent
                assert w.held
        assert not w.held
        assert w.run("umap", _blobs(), n_components=2).shape == (90, 2)  # it went on compiling
        with trainings_first():
            assert not w.held  # a compiled worker is never paused: it serves other sessions' views
        assert w.warm
    finally:
        w.shutdown()


def test_worker_takes_its_share_of_threads_before_numba_loads():
    w = ViewsWorker(warm=False, threads=1)
    try:
        X = _blobs()
        assert w.run("pca", X, n_components=2, random_state=0).shape == (90, 2)
        with open(f"/proc/{w._worker.proc.pid}/environ", "rb") as f:
            env = dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)
        assert env[b"NUMBA_NUM_THREADS"] == b"1" and env[b"DHAKA_THREADS"] == b"1"
        assert w.threads == 1
    finally:
        w.shutdown()


def test_worker_share_defaults_to_the_job_plan(monkeypatch):
    from dhaka.jobs import plan

    monkeypatch.setenv("DHAKA_THREADS", "4")
    monkeypatch.setenv("DHAKA_THREADS_PER_JOB", "2")
    w = ViewsWorker(warm=False)
    try:
        assert w.threads == plan().threads == 2
    finally:
        w.shutdown()
