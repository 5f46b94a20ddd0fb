"""Training speed when the CPU is shared, before and after the CPU budget (issue 24), in one command.

    flock /tmp/cpu.lock python -m bench.contention            # real defaults: about 20 minutes on 2 cores
    python -m bench.contention --quick                        # 20 epochs, no refinement: a few minutes

Every condition runs the default demo with ``Dhaka(seed=0)``'s defaults in fresh processes, once with
the budget switched off (``DHAKA_CPU_BUDGET=0``: every library takes the threads it wants, the job
manager runs one job per pair of ``os.cpu_count()``) and once with it (the shipped code):

- ``alone``: one fit, nothing else of ours running;
- ``busy``: beside ``python -c "while True: pass"`` at the same priority;
- ``suite``: beside test files of the suite run over and over (:data:`SUITE_FILES`);
- ``quota``: inside a 1-CPU cgroup quota (v2 ``cpu.max`` or v1 ``cpu.cfs_quota_us``, what
  ``docker run --cpus=1`` sets), against ``pinned``: the same fit under ``taskset`` to one core;
- ``jobs xN``: N trainings submitted at once to one :class:`dhaka.jobs.JobManager` (the app's training
  process, :func:`dhaka.ui.train_worker.run_in_worker`, worker start included), against ``jobs x1``;
  with the default plan and with ``DHAKA_THREADS_PER_JOB=1``.

``fit s`` is ``Dhaka.fit``'s wall time in the fitting process; for job rows the time from submission
to the last job's end. ``max epoch`` is the slowest epoch against the slowest epoch of ``alone``.
``--table rows.json`` prints the table of an earlier ``--json`` run again.
Targets (issue 24): busy <= 2.2x alone; two jobs both done within 2.2x of one alone; quota within
1.15x of pinned. The table is printed (and written as JSON with ``--json``); bench/RESULTS.md holds
the current one.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
QUICK = {"epochs": 20, "refine": 0}
CGROUP_NAME = "dhaka-bench-contention"


# ----------------------------------------------------------------------------- children
def _adata():
    from dhaka.ui import demos

    adata, _ = demos.load(demos.DEFAULT_DEMO)
    return adata


def child_fit(params: dict[str, Any]) -> dict[str, Any]:
    """One ``Dhaka(seed=0, **params).fit`` of the default demo; seconds, threads, epoch times."""
    from dhaka import Dhaka

    adata = _adata()
    epochs: list[float] = []
    t0 = time.perf_counter()
    est = Dhaka(seed=0, **params).fit(adata, callback=lambda r: epochs.append(float(r.seconds)))
    seconds = time.perf_counter() - t0
    import torch

    import resource

    return {"seconds": seconds, "n_threads": getattr(est, "n_threads_", torch.get_num_threads()),
            "epochs": epochs, "rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}


def child_jobs(n: int, params: dict[str, Any]) -> dict[str, Any]:
    """``n`` trainings submitted at once to a fresh JobManager (the app's training process each)."""

    from dhaka.jobs import JobManager
    from dhaka.ui import tasks, train_worker

    adata = tasks._lean(_adata())
    manager = JobManager(memory_limit=None, available_memory=None, max_per_owner=100)
    epochs: list[list[float]] = [[] for _ in range(n)]

    def job_fn(i: int):
        def fn(ctx):
            req = {"adata": adata, "params": {"seed": 0, **params}, "truth": None, "k_max": 10,
                   "checkpoint_every": 0}
            res = train_worker.run_in_worker(req, stop_event=ctx.stop_event,
                                             on_epoch=lambda row: epochs[i].append(float(row["seconds"])),
                                             on_checkpoint=lambda save, e: None, on_phase=lambda p: None)
            return res.metrics.get("n_threads")
        return fn

    t0 = time.time()
    jobs = [manager.submit(job_fn(i), owner=f"user{i}", name=f"train{i}") for i in range(n)]
    for j in jobs:
        j.wait()
    out = {"plan": manager.plan.describe(),
           "jobs": [{"start": j.started - t0, "end": j.finished - t0, "status": j.status, "error": j.error,
                     "n_threads": j.result} for j in jobs],
           "epochs": [e for es in epochs for e in es]}
    out["seconds"] = max(j["end"] for j in out["jobs"])
    manager.shutdown()
    train_worker.shutdown_spare()
    import resource

    out["rss_mb"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024  # the server-like parent
    out["worker_rss_mb"] = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024  # largest training process
    return out


# ----------------------------------------------------------------------------- conditions
def _run_child(args: list[str], env: dict[str, str], *, cgroup_procs: str | None = None,
               cpus: set[int] | None = None) -> dict[str, Any]:
    def pre() -> None:
        if cgroup_procs is not None:
            with open(cgroup_procs, "w") as f:
                f.write(str(os.getpid()))
        if cpus is not None:
            os.sched_setaffinity(0, cpus)

    full = {k: v for k, v in {**os.environ, "PYTHONPATH": str(ROOT), **env}.items() if v != ""}  # "": unset
    out = subprocess.run([sys.executable, "-m", "bench.contention", *args], env=full, cwd=str(ROOT),
                         capture_output=True, text=True, preexec_fn=pre)
    if out.returncode != 0:
        raise RuntimeError(f"child {args} failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def _fit(params: dict[str, Any], env: dict[str, str], **kw: Any) -> dict[str, Any]:
    return _run_child(["--child-fit", json.dumps(params)], env, **kw)


def _jobs(n: int, params: dict[str, Any], env: dict[str, str]) -> dict[str, Any]:
    return _run_child(["--child-jobs", str(n), json.dumps(params)], env)


def _busy() -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


#: What ``suite`` runs beside the fit, over and over: test files that train, cluster and read files (the
#: test suite as a developer or CI runs it next to a notebook).
SUITE_FILES = ["tests/test_train.py", "tests/test_cluster.py", "tests/test_io.py", "tests/test_estimator.py"]


def _suite() -> subprocess.Popen:
    loop = f"while true; do {sys.executable} -m pytest -q -x -p no:cacheprovider {' '.join(SUITE_FILES)} >/dev/null 2>&1; done"
    return subprocess.Popen(["bash", "-c", loop], cwd=str(ROOT), start_new_session=True)


def make_quota_group(cpus: float = 1.0) -> tuple[str | None, str]:
    """A cgroup with a ``cpus`` CPU quota; returns (its ``cgroup.procs`` file or None, what was used)."""
    period = 100000
    quota = int(cpus * period)
    v2 = Path("/sys/fs/cgroup")
    try:
        controllers = (v2 / "cgroup.controllers").read_text().split()
    except OSError:
        controllers = []
    try:
        if "cpu" in controllers:
            (v2 / "cgroup.subtree_control").write_text("+cpu")
            d = v2 / CGROUP_NAME
            d.mkdir(exist_ok=True)
            (d / "cpu.max").write_text(f"{quota} {period}")
            return str(d / "cgroup.procs"), f"cgroup v2 cpu.max {quota} {period}"
        v1 = Path("/sys/fs/cgroup/cpu")
        if v1.is_dir():
            d = v1 / CGROUP_NAME
            d.mkdir(exist_ok=True)
            (d / "cpu.cfs_period_us").write_text(str(period))
            (d / "cpu.cfs_quota_us").write_text(str(quota))
            return str(d / "cgroup.procs"), f"cgroup v1 cpu.cfs_quota_us {quota} / cpu.cfs_period_us {period}"
    except OSError as exc:
        return None, f"no quota: cannot create a cgroup here ({exc})"
    return None, "no quota: no cgroup cpu controller mounted"


def remove_quota_group(procs: str | None) -> None:
    if procs:
        try:
            os.rmdir(os.path.dirname(procs))
        except OSError:
            pass


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--quick", action="store_true", help="20 epochs, no refinement (development)")
    ap.add_argument("--only", default="", help="comma-separated conditions: alone,busy,suite,quota,pinned,jobs")
    ap.add_argument("--jobs", default="2,3", help="numbers of trainings submitted at once")
    ap.add_argument("--json", default=None, help="write the rows here as JSON")
    ap.add_argument("--table", default=None, help="print the table of rows written by --json, and stop")
    ap.add_argument("--child-fit", default=None, help=argparse.SUPPRESS)
    ap.add_argument("--child-jobs", nargs=2, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args(argv)
    if a.child_fit is not None:
        print(json.dumps(child_fit(json.loads(a.child_fit))))
        return 0
    if a.child_jobs is not None:
        print(json.dumps(child_jobs(int(a.child_jobs[0]), json.loads(a.child_jobs[1]))))
        return 0
    if a.table is not None:
        print(table(json.loads(Path(a.table).read_text())))
        return 0

    from bench.common import machine_description
    from dhaka import cpu

    params = dict(QUICK) if a.quick else {}
    only = set(filter(None, a.only.split(","))) or {"alone", "busy", "suite", "quota", "pinned", "jobs"}
    variants = {"before": {"DHAKA_CPU_BUDGET": "0"}, "after": {"DHAKA_CPU_BUDGET": "1"}}
    for env in variants.values():
        env.update({"DHAKA_THREADS": "", "OMP_NUM_THREADS": "", "DHAKA_THREADS_PER_JOB": "", "DHAKA_MAX_JOBS": ""})
    print(f"# {machine_description()}", flush=True)
    print(f"# budget {cpu.budget()} CPU(s); settings: Dhaka(seed=0{''.join(f', {k}={v}' for k, v in params.items())})",
          flush=True)
    rows: list[dict[str, Any]] = []

    def add(variant: str, condition: str, res: dict[str, Any], note: str = "") -> None:
        row = {"variant": variant, "condition": condition, "seconds": res["seconds"],
               "threads": res.get("n_threads") or ",".join(str(j["n_threads"]) for j in res.get("jobs", [])),
               "max_epoch": max(res.get("epochs") or [float("nan")]), "note": note, "raw": res}
        rows.append(row)
        rss = res.get("worker_rss_mb") or res.get("rss_mb") or float("nan")
        print(f"{variant:7s} {condition:22s} {row['seconds']:8.1f} s  threads {row['threads']}  "
              f"max epoch {row['max_epoch']:.3f} s  peak RSS {rss:.0f} MB  {note}", flush=True)

    procs, quota_note = (make_quota_group(1.0) if "quota" in only else (None, ""))
    cores = sorted(os.sched_getaffinity(0))
    try:
        for variant, env in variants.items():
            if "alone" in only:
                add(variant, "alone", _fit(params, env))
            if "busy" in only:
                busy = _busy()
                try:
                    add(variant, "busy", _fit(params, env), "beside while True: pass")
                finally:
                    busy.send_signal(signal.SIGKILL)
                    busy.wait()
            if "suite" in only:
                suite = _suite()
                time.sleep(5)  # the suite's imports are under way
                try:
                    add(variant, "suite", _fit(params, env), "beside the test suite: " + ", ".join(SUITE_FILES))
                finally:
                    os.killpg(suite.pid, signal.SIGKILL)
                    suite.wait()
            if "quota" in only and procs is not None:
                add(variant, "quota 1 CPU", _fit(params, env, cgroup_procs=procs), quota_note)
            if "pinned" in only:
                add(variant, "pinned 1 core", _fit(params, env, cpus={cores[0]}), f"taskset -c {cores[0]}")
            if "jobs" in only:
                add(variant, "jobs x1", _jobs(1, params, env))
                for n in [int(x) for x in a.jobs.split(",") if x]:
                    res = _jobs(n, params, env)
                    add(variant, f"jobs x{n}", res, res["plan"])
                    if variant == "after":
                        res = _jobs(n, params, {**env, "DHAKA_THREADS_PER_JOB": "1"})
                        add(variant, f"jobs x{n} 1 thread", res, res["plan"])
    finally:
        remove_quota_group(procs)
    if procs is None and "quota" in only:
        print(f"# quota rows skipped: {quota_note}")

    print()
    print(table(rows))
    if a.json:
        Path(a.json).write_text(json.dumps(rows, indent=1, default=str))
    return 0


def table(rows: list[dict[str, Any]]) -> str:
    """Markdown: one line per condition, before and after side by side, with the ratios the targets use."""
    by = {(r["variant"], r["condition"]): r for r in rows}
    conditions = list(dict.fromkeys(r["condition"] for r in rows))

    def ref(variant: str, condition: str) -> float | None:
        if condition.startswith("jobs"):
            base = by.get((variant, "jobs x1"))
        elif condition == "quota 1 CPU":
            base = by.get((variant, "pinned 1 core"))
        else:
            base = by.get((variant, "alone"))
        return base["seconds"] if base else None

    def epoch_ratio(variant: str, r: dict[str, Any]) -> str:
        # the slowest epoch against the slowest of the quiet fit (epochs of the refinement's fits differ in size)
        alone = by.get((variant, "alone"))
        if not alone or not alone["raw"].get("epochs"):
            return ""
        return f"{r['max_epoch'] / max(alone['raw']['epochs']):.1f}x"

    lines = ["| condition | before: s | threads | vs ref | max epoch vs quiet | after: s | threads | vs ref | "
             "max epoch vs quiet | reference |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for c in conditions:
        cells = [c]
        for variant in ("before", "after"):
            r = by.get((variant, c))
            if r is None:
                cells += ["", "", "", ""]
                continue
            base = ref(variant, c)
            cells += [f"{r['seconds']:.1f}", str(r["threads"]),
                      f"{r['seconds'] / base:.2f}x" if base else "", epoch_ratio(variant, r)]
        cells.append("jobs x1" if c.startswith("jobs") else "pinned 1 core" if c.startswith("quota") else "alone")
        lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines)


if __name__ == "__main__":
    raise SystemExit(main())
