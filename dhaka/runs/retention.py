"""Retention: one maintenance pass over the store: crash leftovers, interrupted runs, then age and size limits.

Settings ``DHAKA_RETENTION_DAYS`` and ``DHAKA_RETENTION_MAX_GB`` (:meth:`Retention.from_env`).  A run whose
writer is alive is never touched: each step takes the run's lock first
(:func:`dhaka.runs.locks.hold_if_quiet`).
:mod:`dhaka.runs.maintenance` runs the pass at start-up and daily.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import math
import os
import shutil
import tempfile
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from dhaka.resources import env_positive_float
from dhaka.runs.folders import remove_run_dir, tree_size
from dhaka.runs.locks import hold_if_quiet
from dhaka.runs.record import RUN_FILE, RunError, now_iso, read_record
from dhaka.store import atomic_write_json

__all__ = ["CleanupReport", "Retention", "cleanup_pass"]


@dataclasses.dataclass(frozen=True)
class Retention:
    """How long runs are kept and how much disk they may take (``None``: no limit).

    Attributes
    ----------
    max_age_days
        Runs last active longer ago than this are deleted.
    max_bytes
        Beyond this total, the least recently active runs are deleted.
    """

    max_age_days: float | None = None
    max_bytes: int | None = None

    @classmethod
    def from_env(cls) -> Retention:
        """``DHAKA_RETENTION_DAYS`` and ``DHAKA_RETENTION_MAX_GB`` (unset or empty: no limit).

        Raises
        ------
        ValueError
            If a setting is not a positive number; the message names it.
        """
        days = env_positive_float("DHAKA_RETENTION_DAYS")
        gb = env_positive_float("DHAKA_RETENTION_MAX_GB")
        return cls(max_age_days=days, max_bytes=None if gb is None else int(gb * 1024**3))


@dataclasses.dataclass
class CleanupReport:
    """What one :meth:`RunStore.cleanup` pass did (run ids, leftover paths, bytes)."""

    deleted_age: list[str] = dataclasses.field(default_factory=list)
    deleted_size: list[str] = dataclasses.field(default_factory=list)
    interrupted: list[str] = dataclasses.field(default_factory=list)
    leftovers: list[str] = dataclasses.field(default_factory=list)
    live: list[str] = dataclasses.field(default_factory=list)
    errors: list[str] = dataclasses.field(default_factory=list)
    freed_bytes: int = 0
    total_bytes: int = 0

    def summary(self) -> str:
        """One line for the log."""
        return (f"deleted {len(self.deleted_age)} run(s) by age and {len(self.deleted_size)} by size "
                f"({self.freed_bytes / 1024**2:.1f} MB), marked {len(self.interrupted)} interrupted, removed "
                f"{len(self.leftovers)} leftover(s); {len(self.live)} run(s) being written left alone; "
                f"{self.total_bytes / 1024**2:.1f} MB kept" + (f"; {len(self.errors)} error(s)" if self.errors else ""))


def cleanup_pass(
    root: Path,
    runs_dir: Path,
    retention: Retention | None = None,
    *,
    now: float | None = None,
    leftover_grace_s: float = 3600.0,
    temp_dir: str | os.PathLike[str] | None = None,
) -> CleanupReport:
    """One maintenance pass over the store under ``root`` (runs in ``runs_dir``): see :meth:`RunStore.cleanup`."""
    retention = Retention.from_env() if retention is None else retention
    now = time.time() if now is None else float(now)
    report = CleanupReport()
    _sweep_temporaries(root, runs_dir, report, now, leftover_grace_s, temp_dir)
    if not runs_dir.is_dir():
        return report
    candidates: list[tuple[float, str, int]] = []  # (last active, id, bytes) of runs nobody writes
    total = 0
    for entry in sorted(runs_dir.iterdir()):
        if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
            continue
        try:
            record = read_record(entry)
        except RunError:
            continue
        size = tree_size(entry)
        total += size
        try:
            with hold_if_quiet(entry, record) as quiet:
                if not quiet:
                    report.live.append(entry.name)
                    continue
                record = read_record(entry)  # re-read under the lock
                if record.get("status") == "running":
                    record["status"] = "interrupted"
                    record["interrupted"] = now_iso()
                    atomic_write_json(entry / RUN_FILE, record)
                    report.interrupted.append(entry.name)
                report.leftovers.extend(f"{entry.name}/{n}" for n in _sweep_run_leftovers(entry, record))
        except (OSError, RunError) as exc:
            report.errors.append(f"{entry.name}: {exc}")
            continue
        candidates.append((_last_active(entry, record), entry.name, size))
    candidates.sort()
    if retention.max_age_days is not None:
        cutoff = now - retention.max_age_days * 86400.0
        for last, run_id, size in list(candidates):
            if last < cutoff and _remove_if_quiet(runs_dir, run_id, report):
                report.deleted_age.append(run_id)
                report.freed_bytes += size
                total -= size
                candidates.remove((last, run_id, size))
    if retention.max_bytes is not None:
        for last, run_id, size in list(candidates):
            if total <= retention.max_bytes:
                break
            if _remove_if_quiet(runs_dir, run_id, report):
                report.deleted_size.append(run_id)
                report.freed_bytes += size
                total -= size
    report.total_bytes = total
    return report

def _remove_if_quiet(runs_dir: Path, run_id: str, report: CleanupReport) -> bool:
    path = runs_dir / run_id
    try:
        record = read_record(path)
        with hold_if_quiet(path, record) as quiet:
            if not quiet:  # a writer appeared? (cannot happen for a finished run) keep it
                report.live.append(run_id)
                return False
            remove_run_dir(runs_dir, path)
            return True
    except (OSError, RunError) as exc:
        report.errors.append(f"{run_id}: {exc}")
        return False

def _sweep_temporaries(root: Path, runs_dir: Path, report: CleanupReport, now: float, grace: float,
                       temp_dir: str | os.PathLike[str] | None) -> None:
    def stale(p: Path) -> bool:
        try:
            return now - p.lstat().st_mtime > grace
        except OSError:
            return False

    def remove(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        report.leftovers.append(str(p))

    if runs_dir.is_dir():
        for entry in runs_dir.iterdir():
            if not entry.name.startswith("."):
                continue
            if ".deleted-" in entry.name or (".tmp-" in entry.name and stale(entry)):
                remove(entry)
    cache = root / "cache"
    if cache.is_dir():
        for entry in cache.iterdir():
            if entry.name.startswith(".") and entry.name.endswith(".tmp") and stale(entry):
                remove(entry)
    tmp = Path(temp_dir) if temp_dir is not None else Path(tempfile.gettempdir())
    with contextlib.suppress(OSError):
        for entry in tmp.glob("dhaka-tmp-*"):
            if stale(entry):
                with contextlib.suppress(OSError):
                    remove(entry)


def _timestamp(value: Any) -> float | None:
    if isinstance(value, (int, float)) and math.isfinite(value):
        return float(value)
    if isinstance(value, str):
        try:
            t = _dt.datetime.fromisoformat(value)
        except ValueError:
            return None
        if t.tzinfo is None:
            t = t.replace(tzinfo=_dt.timezone.utc)
        return t.timestamp()
    return None


def _last_active(run_dir: Path, record: Mapping[str, Any]) -> float:
    """When the run was last written to: finished, last heartbeat or created (else run.json's mtime)."""
    times = [t for t in (_timestamp(record.get(k)) for k in ("finished", "heartbeat", "created")) if t is not None]
    if times:
        return max(times)
    try:
        return (run_dir / RUN_FILE).stat().st_mtime
    except OSError:
        return 0.0


def _sweep_run_leftovers(run_dir: Path, record: Mapping[str, Any]) -> list[str]:
    """What a dead writer left in its run: temporaries, replaced folders, unrecorded checkpoints."""
    removed: list[str] = []
    current = Path(record.get("checkpoint") or "").name
    ckpts = run_dir / "checkpoints"

    def rm(p: Path) -> None:
        if p.is_dir() and not p.is_symlink():
            shutil.rmtree(p, ignore_errors=True)
        else:
            p.unlink(missing_ok=True)
        removed.append(str(p.relative_to(run_dir)))

    if ckpts.is_dir() and not ckpts.is_symlink():
        for entry in ckpts.iterdir():
            if entry.name.startswith("."):
                if ".tmp-" in entry.name or ".old-" in entry.name:
                    rm(entry)
            elif entry.name != current:
                rm(entry)
    for entry in run_dir.iterdir():
        if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
            rm(entry)
    return removed
