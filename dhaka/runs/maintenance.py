"""The run store's maintenance thread: :meth:`RunStore.cleanup` at start-up, then once per interval."""
from __future__ import annotations

import logging
import os
import threading
from pathlib import Path

from dhaka.runs.retention import CleanupReport, Retention
from dhaka.runs.store import RunStore

__all__ = ["MAINTENANCE_INTERVAL_S", "Maintenance", "start_maintenance"]

log = logging.getLogger(__name__)

#: Seconds between two maintenance passes.
MAINTENANCE_INTERVAL_S = 86400.0


class Maintenance:
    """The daemon thread of :func:`start_maintenance`: a pass at once, then one per interval."""

    def __init__(self, store: RunStore, *, interval_s: float, retention: Retention | None) -> None:
        self.store = store
        self.interval_s = float(interval_s)
        self.retention = retention
        self.passes = 0
        self.last_report: CleanupReport | None = None
        self.last_error: str | None = None
        self.first_pass = threading.Event()
        self._stop = threading.Event()
        self.thread = threading.Thread(target=self._loop, daemon=True, name="dhaka-run-maintenance")

    def _loop(self) -> None:
        while True:
            try:
                self.last_report = self.store.cleanup(self.retention)
                self.last_error = None
                log.info("run store maintenance (%s): %s", self.store.root, self.last_report.summary())
            except Exception as exc:  # noqa: BLE001 - keep the daily pass alive
                self.last_error = f"{type(exc).__name__}: {exc}"
                log.exception("run store maintenance failed (%s)", self.store.root)
            self.passes += 1
            self.first_pass.set()
            if self._stop.wait(self.interval_s):
                return

    @property
    def alive(self) -> bool:
        """``True`` while the thread runs."""
        return self.thread.is_alive()

    def stop(self, timeout: float | None = 10.0) -> None:
        """End the thread after the pass in progress."""
        self._stop.set()
        self.thread.join(timeout)


_MAINTENANCE: dict[Path, Maintenance] = {}
_MAINTENANCE_LOCK = threading.Lock()


def start_maintenance(
    store: RunStore | None = None,
    *,
    interval_s: float = MAINTENANCE_INTERVAL_S,
    retention: Retention | None = None,
) -> Maintenance:
    """Run :meth:`RunStore.cleanup` now and then every ``interval_s`` seconds, in a daemon thread.

    Idempotent per process and store folder: a second call returns the
    running :class:`Maintenance`, so a server may call it on every page run.

    Parameters
    ----------
    store
        The store (default: the one under ``DHAKA_HOME``).
    interval_s
        Seconds between passes (default one day).
    retention
        Limits; default: read ``DHAKA_RETENTION_DAYS`` / ``DHAKA_RETENTION_MAX_GB`` at every pass.
    """
    store = store if store is not None else RunStore()
    key = Path(os.path.abspath(store.root))
    with _MAINTENANCE_LOCK:
        current = _MAINTENANCE.get(key)
        if current is not None and current.alive:
            return current
        m = Maintenance(store, interval_s=interval_s, retention=retention)
        _MAINTENANCE[key] = m
        m.thread.start()
        return m
