"""Who writes a run: the writer's lock and the liveness checks readers use when the lock cannot tell.

The writer holds an exclusive ``flock`` on the run's ``.lock`` for the run's life; the kernel drops it
when the process dies, even on SIGKILL, so a reader that can take the lock knows the writer is dead.
This works across containers sharing a volume on one host.  Where the lock cannot tell (no lock file,
no ``flock``), the writer's pid, boot id and process start time (same host) or the age of its
heartbeat (other host) decide.
"""
from __future__ import annotations

import contextlib
import errno
import os
import socket
import time
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any, Literal

try:  # POSIX; on Windows liveness falls back to pid / heartbeat checks
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

__all__ = ["HEARTBEAT_TIMEOUT", "LOCK_FILE", "hold_if_quiet", "process_identity", "release_writer_lock",
           "take_writer_lock", "writer_alive"]

LOCK_FILE = ".lock"
#: Seconds without a heartbeat after which a run written on another host is
#: reported as interrupted (``DHAKA_HEARTBEAT_TIMEOUT`` overrides).
HEARTBEAT_TIMEOUT = 600.0


def _boot_id() -> str | None:
    try:
        return Path("/proc/sys/kernel/random/boot_id").read_text().strip()
    except OSError:
        return None


def _proc_start(pid: int) -> int | None:
    """Start time of ``pid`` in clock ticks since boot (Linux), else ``None``."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # the command name (field 2) may contain spaces and parentheses
    rest = stat[stat.rfind(")") + 2:].split()
    try:
        return int(rest[19])  # field 22 overall
    except (IndexError, ValueError):  # pragma: no cover
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    except OSError:  # pragma: no cover
        return False
    return True


def process_identity() -> dict[str, Any]:
    """This process as a run's record names its writer: pid, host name, boot id and start time."""
    pid = os.getpid()
    return {"pid": pid, "hostname": socket.gethostname(), "boot_id": _boot_id(), "start_ticks": _proc_start(pid)}


def _lock_state(lock_path: Path) -> Literal["held", "free", "unknown"]:
    """Whether another open file description holds the run's lock."""
    if fcntl is None:  # pragma: no cover
        return "unknown"
    try:
        fd = os.open(lock_path, os.O_RDWR)
    except OSError:
        return "unknown"
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as exc:
        if exc.errno in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            return "held"
        return "unknown"
    else:
        fcntl.flock(fd, fcntl.LOCK_UN)
        return "free"
    finally:
        os.close(fd)


def _heartbeat_timeout() -> float:
    try:
        return float(os.environ.get("DHAKA_HEARTBEAT_TIMEOUT", HEARTBEAT_TIMEOUT))
    except ValueError:
        return HEARTBEAT_TIMEOUT


def writer_alive(run_dir: Path, record: Mapping[str, Any]) -> bool:
    """Whether the process writing the run in ``run_dir`` (described by its ``record``) is alive."""
    state = _lock_state(run_dir / LOCK_FILE)
    if state != "unknown":
        return state == "held"
    proc = record.get("process") or {}
    if proc.get("hostname") == socket.gethostname() and proc.get("boot_id") == _boot_id():
        pid = proc.get("pid")
        if not isinstance(pid, int) or not _pid_alive(pid):
            return False
        start = proc.get("start_ticks")
        return start is None or _proc_start(pid) in (None, start)
    heartbeat = record.get("heartbeat")
    if not isinstance(heartbeat, (int, float)):
        return False
    return time.time() - heartbeat < _heartbeat_timeout()


def take_writer_lock(run_dir: Path) -> int:
    """Create the run's lock file in ``run_dir`` and hold it; returns the descriptor to keep.

    Without ``flock`` the lock file is removed and ``-1`` returned: readers then use the pid and
    heartbeat checks of :func:`writer_alive`.
    """
    fd = os.open(run_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
    if fcntl is None:  # pragma: no cover - no flock: readers use pid / heartbeat
        os.close(fd)
        (run_dir / LOCK_FILE).unlink()
        return -1
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BaseException:
        os.close(fd)
        raise
    return fd


def release_writer_lock(fd: int | None) -> None:
    """Let go of a lock taken by :func:`take_writer_lock` (``None`` or ``-1``: nothing held)."""
    if fd is not None and fd >= 0:
        try:
            if fcntl is not None:
                fcntl.flock(fd, fcntl.LOCK_UN)
        finally:
            os.close(fd)


@contextlib.contextmanager
def hold_if_quiet(run_dir: Path, record: Mapping[str, Any]) -> Iterator[bool]:
    """Hold a run's lock while changing it; yields ``False`` (and holds nothing) when its writer is alive.

    The writer keeps an exclusive ``flock`` on ``.lock`` for the run's life,
    so taking it proves nobody writes the run, and keeps a new writer out
    while we change it.  Without a lock file, the pid / heartbeat checks of
    :func:`writer_alive` decide.
    """
    fd: int | None = None
    if fcntl is not None:
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
        except OSError:
            fd = None
    if fd is None:
        yield not (record.get("status") == "running" and writer_alive(run_dir, record))
        return
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError:
        os.close(fd)
        yield False
        return
    try:
        yield True
    finally:
        with contextlib.suppress(OSError):
            fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)
