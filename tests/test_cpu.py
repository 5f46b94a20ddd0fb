"""dhaka.cpu: the CPU budget (affinity, cgroup quota v1 and v2, DHAKA_THREADS) and the threads a fit uses."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from dhaka import cpu

ROOT = Path(__file__).resolve().parents[1]



@pytest.fixture(autouse=True)
def _no_thread_override(monkeypatch):
    """The suite fixes DHAKA_THREADS=1 (tests/conftest.py); these tests read the budget from its sources."""
    monkeypatch.delenv("DHAKA_THREADS", raising=False)

def _v2(root: Path, path: str, limits: dict[str, str]) -> tuple[Path, Path]:
    """A fake cgroup v2 mount under ``root`` with ``cpu.max`` files; the process sits at ``path``."""
    (root / "cgroup.controllers").parent.mkdir(parents=True, exist_ok=True)
    (root / "cgroup.controllers").write_text("cpu memory\n")
    for folder, value in limits.items():
        d = root / folder.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.max").write_text(value + "\n")
    proc = root.parent / f"proc-cgroup-{root.name}"
    proc.write_text(f"0::{path}\n")
    return root, proc


def _v1(root: Path, path: str, limits: dict[str, tuple[int, int]]) -> tuple[Path, Path]:
    """A fake cgroup v1 ``cpu,cpuacct`` mount with cfs quota / period files."""
    mount = root / "cpu,cpuacct"
    mount.mkdir(parents=True, exist_ok=True)
    for folder, (quota, period) in limits.items():
        d = mount / folder.strip("/")
        d.mkdir(parents=True, exist_ok=True)
        (d / "cpu.cfs_quota_us").write_text(f"{quota}\n")
        (d / "cpu.cfs_period_us").write_text(f"{period}\n")
    proc = root.parent / f"proc-cgroup-{root.name}"
    proc.write_text(f"12:memory:/elsewhere\n4:cpu,cpuacct:{path}\n0::/\n")
    return root, proc


def test_cgroup_v2_quota_smallest_of_the_process_and_its_ancestors(tmp_path):
    root, proc = _v2(tmp_path / "v2", "/lab/alice", {"/": "max 100000", "/lab": "150000 100000",
                                                       "/lab/alice": "300000 100000"})
    assert cpu.quota_cpus(root, proc) == pytest.approx(1.5)
    assert cpu.budget(root=root, proc_cgroup=proc) == 1  # 1.5 CPUs: a second thread would be throttled


def test_cgroup_v2_unlimited_and_container_view(tmp_path):
    root, proc = _v2(tmp_path / "free", "/", {"/": "max 100000"})
    assert cpu.quota_cpus(root, proc) is None
    assert cpu.budget(root=root, proc_cgroup=proc) == cpu.affinity_count()
    # inside a container the path named in /proc/self/cgroup is not under the mount: its root counts
    root, proc = _v2(tmp_path / "docker", "/system.slice/docker-abc.scope", {"/": "100000 100000"})
    assert cpu.quota_cpus(root, proc) == pytest.approx(1.0)


def test_cgroup_v1_cfs_quota(tmp_path):
    root, proc = _v1(tmp_path / "v1", "/job", {"/": (-1, 100000), "/job": (200000, 100000)})
    assert cpu.quota_cpus(root, proc) == pytest.approx(2.0)
    root, proc = _v1(tmp_path / "v1b", "/job", {"/": (-1, 100000), "/job": (50000, 100000)})
    assert cpu.budget(root=root, proc_cgroup=proc) == 1  # half a CPU still runs one thread


def test_no_cgroup_files_means_no_quota(tmp_path):
    proc = tmp_path / "proc"
    proc.write_text("0::/\n")
    assert cpu.quota_cpus(tmp_path / "nothing", proc) is None


def test_environment_overrides_and_is_checked(monkeypatch, tmp_path):
    root, proc = _v2(tmp_path / "v2", "/", {"/": "100000 100000"})
    monkeypatch.setenv("DHAKA_THREADS", "3")
    monkeypatch.setenv("DHAKA_THREADS_ADAPT", "0")
    assert cpu.budget(root=root, proc_cgroup=proc) == 3
    assert cpu.choose_threads() == 3
    monkeypatch.setenv("DHAKA_THREADS", "none")
    with pytest.raises(ValueError, match="DHAKA_THREADS"):
        cpu.budget()
    monkeypatch.delenv("DHAKA_THREADS")
    monkeypatch.setenv("DHAKA_CGROUP_ROOT", str(root))
    assert cpu.quota_cpus(proc_cgroup=proc) == pytest.approx(1.0)


def test_choose_threads_prefers_the_asked_count_then_the_jobs_share(monkeypatch):
    monkeypatch.delenv("DHAKA_THREADS", raising=False)
    monkeypatch.setenv("DHAKA_THREADS_ADAPT", "0")
    assert cpu.choose_threads(5) == 5
    with pytest.raises(ValueError, match="n_threads"):
        cpu.choose_threads(0)
    with cpu.share(2):
        assert cpu.current_share() == 2
        assert cpu.choose_threads() == 2
        with cpu.limit_threads(None) as n:
            assert n == 2
            with cpu.limit_threads(None) as inner:  # a fit inside a block takes the block's count
                assert inner == 2
    assert cpu.current_share() is None
    assert cpu.choose_threads() == cpu.budget()


def test_a_busy_neighbour_takes_a_thread_off_the_share(monkeypatch):
    monkeypatch.delenv("DHAKA_THREADS_ADAPT", raising=False)
    cores = len(os.sched_getaffinity(0))
    if cores != 2:
        pytest.skip("needs exactly two usable CPUs to make one busy")
    busy = subprocess.Popen([sys.executable, "-c", "while True: pass"])
    try:
        import time

        time.sleep(0.3)
        assert cpu.busy_elsewhere() >= 0.5  # the neighbour (and whatever else runs)
        with cpu.share(2):
            assert cpu.choose_threads() == 1
            assert cpu.choose_threads(adapt=False) == 2
    finally:
        busy.kill()
        busy.wait()


def test_limit_threads_sets_torch_and_restores_it():
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(3)  # what another package left behind
    try:
        with cpu.limit_threads(1) as n:
            assert n == 1 and torch.get_num_threads() == 1
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_switched_off_nothing_is_set(monkeypatch):
    import torch

    monkeypatch.setenv("DHAKA_CPU_BUDGET", "0")
    before = torch.get_num_threads()
    with cpu.limit_threads(before + 1) as n:
        assert n == before and torch.get_num_threads() == before
    assert cpu.worker_env(2) == {}


def test_worker_env_names_every_pool():
    env = cpu.worker_env(2)
    for name in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS", "NUMBA_NUM_THREADS", "DHAKA_THREADS"):
        assert env[name] == "2"
    assert cpu.worker_env(None) == {}


def _budget_in_child(env: dict[str, str], affinity: set[int] | None = None) -> int:
    code = "from dhaka import cpu; print(cpu.budget())"
    full = {**os.environ, "PYTHONPATH": str(ROOT), **env}
    full.pop("DHAKA_THREADS", None)
    pre = (lambda: os.sched_setaffinity(0, affinity)) if affinity else None
    out = subprocess.run([sys.executable, "-c", code], env=full, capture_output=True, text=True, check=True,
                         preexec_fn=pre)
    return int(out.stdout.strip())


def test_a_process_budget_follows_a_quota_and_its_affinity(tmp_path):
    root, _ = _v2(tmp_path / "v2", "/", {"/": "100000 100000"})
    assert _budget_in_child({"DHAKA_CGROUP_ROOT": str(root)}) == 1
    if hasattr(os, "sched_setaffinity") and len(os.sched_getaffinity(0)) >= 2:
        free, _ = _v2(tmp_path / "free", "/", {"/": "max 100000"})
        assert _budget_in_child({"DHAKA_CGROUP_ROOT": str(free)}, affinity={min(os.sched_getaffinity(0))}) == 1
        assert _budget_in_child({"DHAKA_CGROUP_ROOT": str(free)}) == len(os.sched_getaffinity(0))


def _counts(seed=0):
    rng = np.random.default_rng(seed)
    X = rng.poisson(2.0, size=(150, 80)).astype(np.float32)
    X[:75, :12] += 5
    return X


@pytest.mark.parametrize("threads", [1, 2])
def test_same_seed_and_share_same_model_bit_for_bit(threads):
    import torch

    from dhaka import Dhaka

    X = _counts()
    torch.set_num_threads(1)
    kw = dict(epochs=2, refine=0, seed=3, n_threads=threads, batch_size=32)
    a = Dhaka(**kw).fit(X)
    torch.set_num_threads(2 if threads == 1 else 1)  # another package changed the process's setting
    b = Dhaka(**kw).fit(X)
    assert a.n_threads_ == b.n_threads_ == threads
    assert np.array_equal(a.transform(X), b.transform(X))
    assert torch.get_num_threads() == (2 if threads == 1 else 1)  # restored after the fit
    torch.set_num_threads(1)


def test_cpu_module_imports_nothing_heavy():
    code = "import sys, dhaka.cpu; print(sorted(m for m in ('torch', 'numba', 'numpy', 'threadpoolctl') if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], env={**os.environ, "PYTHONPATH": str(ROOT)},
                         capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_a_fit_in_a_fresh_process_uses_the_count_it_was_given():
    # dhaka.estimator does not import torch; the fit does, and must not start with every core
    code = ("import numpy as np, sys\n"
            "from dhaka import Dhaka\n"
            "assert 'torch' not in sys.modules\n"
            "X = np.random.default_rng(0).poisson(2.0, (80, 40)).astype('float32')\n"
            "seen = []\n"
            "import dhaka.cpu as cpu\n"
            "m = Dhaka(epochs=1, refine=0, n_threads=1).fit(X, callback=lambda r: seen.append("
            "sys.modules['torch'].get_num_threads()))\n"
            "print(m.n_threads_, set(seen))\n")
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    for name in ("OMP_NUM_THREADS", "DHAKA_THREADS", "MKL_NUM_THREADS"):
        env.pop(name, None)
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, check=True)
    assert out.stdout.strip().splitlines()[-1] == "1 {1}"
