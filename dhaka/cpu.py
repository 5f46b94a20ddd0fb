"""The CPUs this process may really use, and the thread counts that follow from them.

``os.cpu_count()`` is the machine's count: inside ``docker run --cpus=4`` on a 64-core host it says
64, under ``taskset -c 0`` it says every core, and on a lab server it ignores the other people's
work. torch, OpenMP/MKL, numba (UMAP) and openTSNE each start that many threads by default; on a
shared CPU their threads then wait for each other at every parallel region (measured on 2 cores:
a default fit 2.9x slower beside one busy process, two fits at once 3.9x each, 1.48x slower inside a
1-CPU quota than pinned to one core; bench/contention.py). So:

- :func:`budget` is what this process may use: its affinity (``os.sched_getaffinity``) and its
  cgroup's CPU quota (v2 ``cpu.max``, v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us``, every
  ancestor counted), rounded down and at least 1; ``DHAKA_THREADS`` overrides it.
- :func:`choose_threads` is the count a fit uses when none is given: the job's share when the
  job manager gave one (:func:`share`), else the budget; less the cores other programs keep busy
  right now (sampled from ``/proc/stat`` over 0.1 s; ``DHAKA_THREADS_ADAPT=0`` turns this off):
  beside a busy process one thread beats two that wait for each other at every parallel region
  (measured 1.2x against 2.4-2.9x alone). The count used is recorded (``Dhaka.n_threads_``, the
  run's ``n_threads``); the same seed and count give the same model bit for bit.
- :func:`limit_threads` sets torch (intra-op), OpenMP, BLAS/MKL (threadpoolctl) and numba to ``n``
  threads for the duration of a block, in the calling thread, and puts them back after.
- :func:`worker_env` is the environment a worker process gets *before* its heavy imports
  (``OMP_NUM_THREADS`` and friends are read once, when a library loads).

``DHAKA_CPU_BUDGET=0`` switches all of it off (no thread count is set; the job manager plans as
before this module): for benchmarks that compare before and after.

Nothing heavy is imported here at module level: a worker calls this before torch or numba load.

Examples
--------
>>> from dhaka import cpu
>>> n = cpu.budget()                       # CPUs this process may use (affinity + cgroup quota)
>>> with cpu.limit_threads(1) as used:     # torch / OpenMP / BLAS / numba at 1 thread in this block
...     pass
>>> used
1
>>> sorted(cpu.worker_env(2))[:2]          # for a subprocess, before it imports torch
['DHAKA_THREADS', 'MKL_NUM_THREADS']
"""
from __future__ import annotations

import contextlib
import contextvars
import math
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

__all__ = [
    "budget",
    "affinity_count",
    "quota_cpus",
    "busy_elsewhere",
    "choose_threads",
    "limit_threads",
    "worker_env",
    "share",
    "current_share",
    "enabled",
    "adapting",
    "configure_process",
    "ENV_THREADS",
    "ENV_CGROUP_ROOT",
    "ENV_SWITCH",
]

#: Environment variable: the CPUs this process may use (a positive integer), over affinity and quota.
ENV_THREADS = "DHAKA_THREADS"
#: Environment variable: where the cgroup file systems are mounted (default ``/sys/fs/cgroup``).
ENV_CGROUP_ROOT = "DHAKA_CGROUP_ROOT"
#: Environment variable: ``0`` switches the budget off (benchmarks of before and after).
ENV_SWITCH = "DHAKA_CPU_BUDGET"
#: Environment variable: ``0`` keeps the share or budget as it is, whatever else keeps the CPUs busy.
ENV_ADAPT = "DHAKA_THREADS_ADAPT"

#: Seconds over which :func:`busy_elsewhere` samples ``/proc/stat``.
SAMPLE_S = 0.1
#: Cores busy elsewhere from which a thread is given up (0.5: a half-busy core already stalls barriers).
BUSY_THRESHOLD = 0.5

_share: contextvars.ContextVar[int | None] = contextvars.ContextVar("dhaka_cpu_share", default=None)
# the count a limit_threads block decided: a fit inside it (nested) takes the same, without sampling again
_decided: contextvars.ContextVar[int | None] = contextvars.ContextVar("dhaka_cpu_decided", default=None)


def enabled() -> bool:
    """``False`` when ``DHAKA_CPU_BUDGET`` is ``0``/``off``/``false``/``no`` (the budget is not applied)."""
    return os.environ.get(ENV_SWITCH, "1").strip().lower() not in ("0", "off", "false", "no")


def _env_threads() -> int | None:
    value = os.environ.get(ENV_THREADS, "").strip()
    if not value:
        return None
    try:
        n = int(value)
    except ValueError:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}") from None
    if n < 1:
        raise ValueError(f"{ENV_THREADS} must be a positive integer, got {value!r}")
    return n


def affinity_count() -> int:
    """CPUs this process may be scheduled on (``os.sched_getaffinity``; ``os.cpu_count()`` where absent)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except (AttributeError, OSError):  # pragma: no cover - macOS, Windows
        return max(1, os.cpu_count() or 1)


def _cgroup_paths(proc_cgroup: str | os.PathLike) -> tuple[str | None, dict[str, str]]:
    """(the v2 path, {v1 controller: path}) of this process, from ``/proc/self/cgroup``."""
    v2: str | None = None
    v1: dict[str, str] = {}
    try:
        lines = Path(proc_cgroup).read_text().splitlines()
    except OSError:
        return None, {}
    for line in lines:
        parts = line.strip().split(":", 2)
        if len(parts) != 3:
            continue
        _hid, controllers, path = parts
        if controllers == "":
            v2 = path
        else:
            for c in controllers.split(","):
                v1[c] = path
    return v2, v1


def _ancestors(base: Path, path: str | None) -> list[Path]:
    """``base/path`` and every folder above it up to ``base`` (limits of every ancestor apply).

    Inside a container the path in ``/proc/self/cgroup`` may not exist under the mount (no cgroup
    namespace): then only the mount's own folder is read.
    """
    out: list[Path] = []
    parts = [p for p in (path or "").split("/") if p and p not in (".", "..")]
    for i in range(len(parts), 0, -1):
        d = base.joinpath(*parts[:i])
        if d.is_dir():
            out.append(d)
    out.append(base)
    return out


def _read_v2(folder: Path) -> float | None:
    try:
        text = (folder / "cpu.max").read_text().split()
    except OSError:
        return None
    if len(text) < 1 or text[0] == "max":
        return None
    try:
        quota = float(text[0])
        period = float(text[1]) if len(text) > 1 else 100000.0
    except ValueError:
        return None
    return quota / period if quota > 0 and period > 0 else None


def _read_v1(folder: Path) -> float | None:
    try:
        quota = float((folder / "cpu.cfs_quota_us").read_text().strip())
        period = float((folder / "cpu.cfs_period_us").read_text().strip())
    except (OSError, ValueError):
        return None
    return quota / period if quota > 0 and period > 0 else None


def quota_cpus(root: str | os.PathLike | None = None, proc_cgroup: str | os.PathLike = "/proc/self/cgroup",
               ) -> float | None:
    """The CPUs the cgroup quota allows (``1.5`` for ``--cpus=1.5``), or ``None`` when unlimited.

    Reads cgroup v2 ``cpu.max`` and v1 ``cpu.cfs_quota_us`` / ``cpu.cfs_period_us`` of this process's
    cgroup and of every ancestor; the smallest quota wins.

    Parameters
    ----------
    root
        Where the cgroup file systems are mounted: ``DHAKA_CGROUP_ROOT`` or ``/sys/fs/cgroup``
        (a test points it at a folder of fake files). v1 controllers are looked for under
        ``root/cpu``, ``root/cpu,cpuacct`` and ``root/cpuacct,cpu``; v2 under ``root`` and
        ``root/unified``.
    proc_cgroup
        The file naming this process's cgroups.
    """
    base = Path(root if root is not None else os.environ.get(ENV_CGROUP_ROOT) or "/sys/fs/cgroup")
    v2, v1 = _cgroup_paths(proc_cgroup)
    found: list[float] = []
    if v2 is not None or not v1:
        for mount in (base, base / "unified"):
            if (mount / "cgroup.controllers").exists() or (mount / "cpu.max").exists():
                found += [q for d in _ancestors(mount, v2) if (q := _read_v2(d)) is not None]
    v1_path = v1.get("cpu")
    for name in ("cpu", "cpu,cpuacct", "cpuacct,cpu"):
        mount = base / name
        if mount.is_dir():
            found += [q for d in _ancestors(mount, v1_path) if (q := _read_v1(d)) is not None]
            break
    return min(found) if found else None


def budget(*, root: str | os.PathLike | None = None, proc_cgroup: str | os.PathLike = "/proc/self/cgroup") -> int:
    """The CPUs this process may use: ``DHAKA_THREADS``, else min(affinity, cgroup quota), at least 1.

    A fractional quota is rounded down (``--cpus=1.5`` gives 1: a second thread would be throttled
    for half of every period, and its barriers would wait for it). Never ``os.cpu_count()`` alone.

    Raises
    ------
    ValueError
        If ``DHAKA_THREADS`` is set but is not a positive integer.
    """
    env = _env_threads()
    if env is not None:
        return env
    n = affinity_count()
    q = quota_cpus(root, proc_cgroup)
    if q is not None:
        n = min(n, max(1, int(math.floor(q + 1e-9))))
    return max(1, n)


def _stat_times(cpus: set[int] | None) -> tuple[float, float] | None:
    """(busy, total) jiffies of the given CPUs (all when ``None``) from ``/proc/stat``; nice time is idle.

    Niced work (the app's views worker runs at niceness 10) yields to a training, so it does not count.
    """
    try:
        lines = Path("/proc/stat").read_text().splitlines()
    except OSError:
        return None
    busy = total = 0.0
    for line in lines:
        if not line.startswith("cpu") or line.startswith("cpu "):
            continue
        name, *vals = line.split()
        try:
            idx = int(name[3:])
            v = [float(x) for x in vals[:8]]
        except ValueError:
            continue
        if cpus is not None and idx not in cpus:
            continue
        v += [0.0] * (8 - len(v))
        user, nice, system, idle, iowait, irq, softirq, steal = v
        busy += user + system + irq + softirq + steal
        total += user + nice + system + idle + iowait + irq + softirq + steal
    return (busy, total) if total > 0 else None


def busy_elsewhere(interval: float = SAMPLE_S) -> float | None:
    """Cores of this process's CPUs that *other* programs keep busy now (not niced), or ``None`` if unknown.

    Samples ``/proc/stat`` (the CPUs of this process's affinity) over ``interval`` seconds and takes
    this process's own CPU time off.
    """
    try:
        cpus: set[int] | None = set(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # pragma: no cover
        cpus = None
    first = _stat_times(cpus)
    if first is None:
        return None
    own0, t0 = time.process_time(), time.monotonic()
    time.sleep(interval)
    second = _stat_times(cpus)
    own1, t1 = time.process_time(), time.monotonic()
    if second is None or second[1] <= first[1]:
        return None
    n_cpus = len(cpus) if cpus is not None else (os.cpu_count() or 1)
    busy_cores = (second[0] - first[0]) / (second[1] - first[1]) * n_cpus
    own_cores = (own1 - own0) / max(t1 - t0, 1e-6)
    return max(0.0, busy_cores - own_cores)


@contextlib.contextmanager
def share(n: int | None) -> Iterator[int | None]:
    """Within the block (this thread and what it calls), fits default to ``n`` threads.

    The job manager runs each job inside ``share(job.threads)``; :func:`choose_threads` and the
    app's training process read it (:func:`current_share`). ``None`` leaves the default alone.
    """
    token = _share.set(None if n is None else max(1, int(n)))
    try:
        yield _share.get()
    finally:
        _share.reset(token)


def current_share() -> int | None:
    """The share of the job running in this thread (see :func:`share`), or ``None``."""
    return _share.get()


def adapting() -> bool:
    """``False`` when ``DHAKA_THREADS_ADAPT`` is ``0``/``off``/``false``/``no``."""
    return os.environ.get(ENV_ADAPT, "1").strip().lower() not in ("0", "off", "false", "no")


def choose_threads(n_threads: int | None = None, *, adapt: bool | None = None) -> int:
    """The thread count a fit uses.

    Parameters
    ----------
    n_threads
        Asked for explicitly (``Dhaka(n_threads=...)``): used as given.
    adapt
        When nothing was asked for: give up a thread for each core other programs keep busy now
        (:func:`busy_elsewhere`; more than half a core counts), at least 1. ``None``:
        ``DHAKA_THREADS_ADAPT`` (default on).

    Returns
    -------
    int
        ``n_threads``; inside a :func:`limit_threads` block, its count; else the job's
        :func:`share`, or else the :func:`budget` (``DHAKA_THREADS`` included), less the cores busy
        elsewhere.
    """
    if n_threads is not None:
        n = int(n_threads)
        if n < 1:
            raise ValueError(f"n_threads must be a positive integer or None, got {n_threads!r}")
        return n
    decided = _decided.get()
    if decided is not None:
        return decided
    n = current_share()
    if n is None:
        n = budget()
    if (adapting() if adapt is None else adapt) and n > 1:
        busy = busy_elsewhere()
        if busy is not None:
            free = affinity_count() - busy
            n = max(1, min(n, int(math.floor(free + (1.0 - BUSY_THRESHOLD)))))
    return n


def _set_torch(n: int, *, load: bool = False) -> int | None:
    torch = sys.modules.get("torch")
    if torch is None and load:
        try:
            import torch  # a fit imports it later: it must start with the count, not with every core
        except ImportError:  # pragma: no cover - torch is a dependency
            return None
    if torch is None:
        return None
    before = int(torch.get_num_threads())
    torch.set_num_threads(int(n))
    return before


def _set_numba(n: int) -> int | None:
    numba = sys.modules.get("numba")
    if numba is None:
        return None
    try:
        before = int(numba.get_num_threads())
        numba.set_num_threads(max(1, min(int(n), int(numba.config.NUMBA_NUM_THREADS))))
        return before
    except Exception:  # noqa: BLE001 - numba without a threading layer: leave it
        return None


@contextlib.contextmanager
def limit_threads(n: int | None = None, *, torch: bool = True) -> Iterator[int]:
    """Run the block with ``n`` threads in torch, OpenMP, BLAS/MKL and numba; restore them after.

    Applies to the calling thread (OpenMP's count is per thread) and to torch's process-wide setting.
    torch is imported here when ``torch`` is true (a fit imports it lazily, and would otherwise start
    with every core); numba and the native pools (threadpoolctl) only when already loaded. With the
    same seed and the same ``n``, a fit gives the same result bit for bit.

    Parameters
    ----------
    n
        Threads; ``None``: :func:`choose_threads` (the job's share or the
        budget less the cores busy elsewhere).
    torch
        Import torch to set its threads when it is not loaded yet (``False``: only if loaded; for
        work that never uses it, such as the views worker's UMAP).

    Yields
    ------
    int
        The count applied (with ``DHAKA_CPU_BUDGET=0``: torch's current count, nothing is changed).
    """
    if not enabled():
        loaded = sys.modules.get("torch")
        yield int(loaded.get_num_threads()) if loaded is not None else (n or budget())
        return
    n = choose_threads(n)
    token = _decided.set(n)
    torch_before = _set_torch(n, load=torch)
    numba_before = _set_numba(n)
    pools = None
    try:
        if any(m in sys.modules for m in ("numpy", "torch", "numba", "sklearn")):
            from threadpoolctl import threadpool_limits

            pools = threadpool_limits(limits=n)
        yield n
    finally:
        if pools is not None:
            pools.restore_original_limits()
        if numba_before is not None:
            _set_numba(numba_before)
        if torch_before is not None:
            _set_torch(torch_before)
        _decided.reset(token)


def worker_env(n: int | None) -> dict[str, str]:
    """Environment variables that give a new process ``n`` threads before its heavy imports.

    ``OMP_NUM_THREADS``, ``MKL_NUM_THREADS``, ``OPENBLAS_NUM_THREADS``, ``NUMBA_NUM_THREADS`` (numba
    refuses more threads later than it had at import) and ``DHAKA_THREADS`` (so the process's own
    :func:`budget`, and every fit in it, is ``n``). Empty when ``n`` is ``None`` or the budget is
    switched off.
    """
    if n is None or not enabled():
        return {}
    s = str(max(1, int(n)))
    return {"OMP_NUM_THREADS": s, "MKL_NUM_THREADS": s, "OPENBLAS_NUM_THREADS": s,
            "NUMBA_NUM_THREADS": s, ENV_THREADS: s}


def configure_process(n: int) -> None:
    """In a worker that has just started: take ``n`` threads (environment and, where legal, torch).

    Sets :func:`worker_env` in ``os.environ`` (read by libraries imported after) and, if torch is
    loaded, its intra-op threads and, while that is still allowed (before any inter-op work), its
    inter-op threads.
    """
    if not enabled():
        return
    os.environ.update(worker_env(n))
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(int(n))
        try:
            torch.set_num_interop_threads(int(n))
        except RuntimeError:  # inter-op work already ran: it can no longer change
            pass

