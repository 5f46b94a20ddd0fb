"""The training process of the app (dhaka.ui.train_worker): same result as in a thread, stop, errors, death."""
from __future__ import annotations

import os
import signal
import threading
import time

import numpy as np
import pytest

from dhaka.ui import tasks, train_worker

PARAMS = {"epochs": 4, "seed": 0, "n_starts": 1, "refine": 0, "batch_size": 32, "patience": None}


@pytest.fixture(scope="module")
def adata():
    import anndata as ad

    rng = np.random.default_rng(0)
    X = rng.poisson(2.0, (120, 60)).astype(np.float32)
    X[:60, :10] += 6  # two groups
    return ad.AnnData(X)


def _request(adata, **params):
    return {"adata": tasks._lean(adata), "params": {**PARAMS, **params}, "truth": None, "k_max": 5,
            "checkpoint_every": 2}


def _run(request, stop_event=None, **callbacks):
    rows, checkpoints, phases = [], [], []
    kw = {"on_epoch": rows.append, "on_checkpoint": lambda save, epoch: checkpoints.append((save, epoch)),
          "on_phase": phases.append, **callbacks}
    result = train_worker.run_in_worker(request, stop_event=stop_event or threading.Event(), **kw)
    return result, rows, checkpoints, phases


def test_process_gives_what_the_thread_gives(adata, tmp_path):
    result, rows, checkpoints, phases = _run(_request(adata))
    same = tasks.fit_embed_cluster(adata, PARAMS, truth=None, k_max=5, on_epoch=lambda row: None,
                                   stop_event=threading.Event(), checkpoint=None, checkpoint_every=2)
    assert [r["epoch"] for r in rows] == [1, 2, 3, 4]
    assert phases == ["embedding"]
    np.testing.assert_allclose(result.latent, same.latent, atol=2e-3)  # float reduction order may differ
    np.testing.assert_allclose(result.estimator.transform(adata), result.latent, rtol=1e-4, atol=1e-5)
    assert result.metrics["k"] == same.metrics["k"]
    # checkpoints arrive as savers of a loadable model folder, which is deleted once saved
    assert [e for _, e in checkpoints] == [2, 4]
    save, _ = checkpoints[-1]
    with pytest.raises(FileNotFoundError):
        save(tmp_path / "late")  # the worker's folder is gone after the callback


def test_checkpoint_folder_is_a_model(adata, tmp_path):
    from dhaka import Dhaka

    saved = []

    def keep(save, epoch):
        save(tmp_path / f"e{epoch}")
        saved.append(epoch)

    _run(_request(adata), on_checkpoint=keep)
    assert Dhaka.load(tmp_path / "e4").transform(adata).shape == (adata.n_obs, 3)


def test_stop_ends_the_training_and_keeps_the_model(adata):
    stop = threading.Event()
    result, rows, _, _ = _run(_request(adata, epochs=500), stop_event=stop,
                              on_epoch=lambda row: stop.set() if row["epoch"] >= 2 else None)
    assert result.estimator.stopped_
    assert result.latent.shape == (adata.n_obs, 3)


def test_an_error_in_the_worker_is_raised_as_itself(adata):
    with pytest.raises(ValueError, match="latent_dim"):
        _run(_request(adata, latent_dim=0))


def test_a_killed_worker_is_reported(adata):
    def kill_self(row):
        # the worker is the child of this process that reports epochs: kill every such child
        for pid in _children():
            os.kill(pid, signal.SIGKILL)

    with pytest.raises(RuntimeError, match="killed by SIGKILL"):
        _run(_request(adata, epochs=500), on_epoch=kill_self)


def _children() -> list[int]:
    me = os.getpid()
    out = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/stat") as f:
                    fields = f.read().rsplit(")", 1)[1].split()
                if int(fields[1]) == me:
                    with open(f"/proc/{entry}/cmdline", "rb") as f:
                        if b"dhaka.ui.train_worker" in f.read():
                            out.append(int(entry))
            except OSError:
                continue
    return out


def teardown_module():
    train_worker.shutdown_spare()


def test_the_app_task_trains_in_a_process_and_stores_the_run(adata, tmp_path):
    from dhaka.jobs import JobManager
    from dhaka.runs import RunStore

    store = RunStore(tmp_path / "runs")
    task = tasks.make_train_task(adata, PARAMS, data_name="toy", store=store, checkpoint_every=2, in_thread=False)
    manager = JobManager()
    job = manager.submit(task, owner="me", name="train", kind="train")
    assert job.wait(600)
    snap = job.snapshot()
    assert snap["status"] == "done", snap.get("error")
    assert [row["epoch"] for row in snap["history"]] == [1, 2, 3, 4]
    outcome = job.result
    assert outcome.status == "done" and outcome.latent.shape == (adata.n_obs, 3)
    (run_dir,) = [p.parent for p in (tmp_path / "runs").rglob("run.json") if p.parent.name == outcome.run_id]
    assert (run_dir / "checkpoints").is_dir()
    assert not [p.name for p in run_dir.iterdir() if p.name.startswith(".incoming")]  # checkpoints moved in
    manager.shutdown()


def test_a_batch_key_goes_with_the_cells_to_the_training_process(adata, tmp_path):
    import json

    from dhaka.jobs import JobManager
    from dhaka.runs import RunStore

    batched = adata.copy()
    batched.obs["sample"] = np.where(np.arange(adata.n_obs) % 3 == 0, "s1", "s2")
    assert list(tasks._lean(batched, "sample").obs.columns) == ["sample"]
    with pytest.raises(ValueError, match="'donor' is not a column"):
        tasks.make_train_task(batched, PARAMS, data_name="toy", batch_key="donor")
    store = RunStore(tmp_path / "runs")
    task = tasks.make_train_task(batched, PARAMS, data_name="toy", store=store, batch_key="sample", in_thread=False)
    manager = JobManager()
    job = manager.submit(task, owner="me", name="train", kind="train")
    assert job.wait(600)
    assert job.snapshot()["status"] == "done", job.snapshot().get("error")
    assert job.result.estimator.batch_categories_ == ["s1", "s2"]
    (record,) = [p for p in (tmp_path / "runs").rglob("run.json") if p.parent.name == job.result.run_id]
    assert json.loads(record.read_text())["data"]["batch_key"] == "sample"
    manager.shutdown()


def _child_env(pid: int) -> dict[bytes, bytes]:
    deadline = time.time() + 30
    while time.time() < deadline:  # /proc shows the new environment once the child has exec-ed
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            if b"dhaka.ui.train_worker" in f.read():
                break
        time.sleep(0.05)
    with open(f"/proc/{pid}/environ", "rb") as f:
        return dict(item.split(b"=", 1) for item in f.read().split(b"\0") if b"=" in item)


def test_training_process_keeps_the_servers_thread_settings(monkeypatch):
    # libgomp's default wait measured faster beside a browser than PASSIVE (see train_worker's note):
    # the process adds no OpenMP setting of its own, and keeps an administrator's
    for value in (None, "ACTIVE"):
        if value is None:
            monkeypatch.delenv("OMP_WAIT_POLICY", raising=False)
        else:
            monkeypatch.setenv("OMP_WAIT_POLICY", value)
        train_worker.shutdown_spare()
        train_worker.prestart()
        env = _child_env(train_worker._spare.proc.pid)
        assert env.get(b"OMP_WAIT_POLICY") == (None if value is None else value.encode())
    train_worker.shutdown_spare()


def test_warm_up_runs_the_job_code_and_leaves_the_random_state_alone():
    # a spare worker runs one tiny fit before it connects; the training it then runs must not depend on it
    import torch

    np.random.seed(7)
    torch.manual_seed(7)
    before = (np.random.random(), torch.rand(1).item())
    np.random.seed(7)
    torch.manual_seed(7)
    seconds = train_worker.warm_up()
    assert seconds > 0
    assert (np.random.random(), torch.rand(1).item()) == before


# ---------------------------------------------------------------------------
# threads: the worker takes the job's share, or its own budget (affinity and cgroup quota)
# ---------------------------------------------------------------------------
def _one_cpu_quota(tmp_path):
    """A fake cgroup v2 mount allowing one CPU (dhaka.cpu reads DHAKA_CGROUP_ROOT)."""
    root = tmp_path / "cgroup"
    root.mkdir()
    (root / "cgroup.controllers").write_text("cpu\n")
    (root / "cpu.max").write_text("100000 100000\n")
    return root


def test_worker_threads_follow_the_jobs_share(adata, monkeypatch):
    monkeypatch.setenv("DHAKA_THREADS_ADAPT", "0")  # the share as it is, however busy this machine is
    train_worker.shutdown_spare()
    result, *_ = _run({**_request(adata), "threads": None}, threads=2)
    assert result.metrics["n_threads"] == 2  # recorded with the run (the job puts metrics in it)
    assert result.estimator.n_threads_ == 2


def test_worker_threads_follow_a_quota_and_the_affinity(adata, tmp_path, monkeypatch):
    monkeypatch.delenv("DHAKA_THREADS", raising=False)
    monkeypatch.setenv("DHAKA_CGROUP_ROOT", str(_one_cpu_quota(tmp_path)))
    train_worker.shutdown_spare()  # a new worker, started inside the (simulated) quota
    result, *_ = _run(_request(adata))
    assert result.metrics["n_threads"] == 1
    monkeypatch.delenv("DHAKA_CGROUP_ROOT")
    if len(os.sched_getaffinity(0)) >= 2:
        mine = os.sched_getaffinity(0)
        os.sched_setaffinity(0, {min(mine)})  # the worker inherits it at its start
        try:
            worker = train_worker._take(None)
        finally:
            os.sched_setaffinity(0, mine)
        with train_worker._spare_lock:
            train_worker._spare = worker
        result, *_ = _run(_request(adata))
        assert result.metrics["n_threads"] == 1


def test_a_job_hands_its_share_to_the_training_process(adata, tmp_path, monkeypatch):
    monkeypatch.setenv("DHAKA_THREADS_ADAPT", "0")
    train_worker.shutdown_spare()
    from dhaka.jobs import JobManager
    from dhaka.runs import RunStore

    store = RunStore(tmp_path / "runs")
    task = tasks.make_train_task(adata, PARAMS, data_name="toy", store=store, checkpoint_every=2, in_thread=False)
    manager = JobManager(cpu_budget=2, threads_per_job=1)
    job = manager.submit(task, owner="me", name="train", kind="train")
    assert job.wait(600)
    assert job.snapshot()["status"] == "done", job.snapshot().get("error")
    assert job.snapshot()["threads"] == 1 and job.result.metrics["n_threads"] == 1
    manager.shutdown()


def test_process_started_for_a_share_has_it_before_its_imports():
    train_worker.shutdown_spare()
    worker = train_worker._take(1)
    try:
        env = _child_env(worker.proc.pid)
        for name in (b"OMP_NUM_THREADS", b"MKL_NUM_THREADS", b"NUMBA_NUM_THREADS", b"DHAKA_THREADS"):
            assert env[name] == b"1"
    finally:
        worker.close(timeout=0)
