"""The run store: every training kept on disk, written so a crash cannot corrupt it.

Layout under the workspace root (``DHAKA_HOME``, default ``./dhaka-runs``)::

    runs/
      20261125-153012-a1b2c3/
        run.json            # the record; the ONLY file readers trust first
        .lock               # held (flock) by the process writing the run
        checkpoints/
          e0005-1f2e/       # the checkpoint named in run.json (a model folder)
        model/              # final model (a model folder, see MODEL_FILES)
        latent.csv          # cells x dhaka_1..dhaka_d (+ cluster)
        history.json        # one row per epoch
        metrics.json        # final loss, ARI if known, ...

Rules that make it crash-safe:

* every file is written to a temporary name in the same folder, flushed,
  ``fsync``-ed and moved into place with :func:`os.replace`; folders are
  filled under a temporary name and renamed in (:func:`atomic_write_dir`);
* a new run folder is built under a hidden temporary name and renamed into
  ``runs/`` only once ``run.json`` is complete, so a half-created run never
  lists;
* ``run.json`` names the files that are complete (``files``) and the current
  checkpoint (``checkpoint``); readers use nothing else.  It is rewritten
  *after* the things it names are in place, so it never points at a
  half-written file.

A run whose ``run.json`` still says ``"running"`` but whose writer is gone
lists as ``"interrupted"``.  The writer holds an exclusive ``flock`` on
``.lock`` for the run's life; the kernel drops it when the process dies, even
on SIGKILL, so a reader that can take the lock knows the writer is dead.  This
works across containers sharing a volume on one host.  Where the lock cannot
tell (no lock file), the writer's pid, boot id and process start time (same
host) or the age of its heartbeat (other host) decide.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import errno
import io
import json
import math
import os
import platform
import re
import secrets
import shutil
import socket
import sys
import threading
import time
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

try:  # POSIX; on Windows liveness falls back to pid / heartbeat checks
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = [
    "MODEL_FILES",
    "MODEL_REQUIRED",
    "ModelDirError",
    "Run",
    "RunError",
    "RunInfo",
    "RunStore",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_json",
    "check_model_dir",
    "default_root",
]

#: Files a model folder may contain; anything else (``*.pkl``, ``*.pt``,
#: sub-folders, symlinks) is refused by :func:`check_model_dir`.
MODEL_FILES: tuple[str, ...] = (
    "config.json",
    "weights.safetensors",
    "genes.txt",
    "preprocess.json",
    "history.json",
)
#: Files a model folder must contain.
MODEL_REQUIRED: tuple[str, ...] = ("config.json", "weights.safetensors")

RUN_FILE = "run.json"
LOCK_FILE = ".lock"
SCHEMA_VERSION = 1
#: Seconds without a heartbeat after which a run written on another host is
#: reported as interrupted (``DHAKA_HEARTBEAT_TIMEOUT`` overrides).
HEARTBEAT_TIMEOUT = 600.0

RunStatus = Literal["running", "done", "stopped", "failed", "interrupted"]
FinalStatus = Literal["done", "stopped", "failed"]

_RUN_ID_RE = re.compile(r"^[0-9]{8}-[0-9]{6}-[0-9a-f]{6}$")


class RunError(RuntimeError):
    """A run cannot be created, opened, read or deleted."""


class ModelDirError(ValueError):
    """A model folder holds something other than the expected safe files."""


# ---------------------------------------------------------------------------
# atomic writes
# ---------------------------------------------------------------------------
def _tmp_name(path: Path) -> Path:
    return path.with_name(f".{path.name}.tmp-{secrets.token_hex(4)}")


def _fsync_dir(path: Path) -> None:
    try:
        fd = os.open(path, os.O_RDONLY | getattr(os, "O_DIRECTORY", 0))
    except OSError:  # pragma: no cover - platforms without directory fds
        return
    try:
        os.fsync(fd)
    except OSError:  # pragma: no cover - some filesystems refuse
        pass
    finally:
        os.close(fd)


def atomic_write_bytes(path: str | os.PathLike[str], data: bytes) -> Path:
    """Write ``data`` to ``path`` so that readers see the old file or the whole new one.

    The bytes go to a temporary name in the same folder, are flushed and
    fsync-ed, then :func:`os.replace` moves them over ``path``.

    Parameters
    ----------
    path
        Destination file.  Its folder must exist.
    data
        The full contents.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    tmp = _tmp_name(path)
    try:
        with open(tmp, "xb") as fh:
            fh.write(data)
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _fsync_dir(path.parent)
    return path


def _json_default(obj: Any) -> Any:
    if dataclasses.is_dataclass(obj) and not isinstance(obj, type):
        return dataclasses.asdict(obj)
    if isinstance(obj, Path):
        return str(obj)
    if isinstance(obj, (_dt.datetime, _dt.date)):
        return obj.isoformat()
    if isinstance(obj, (set, frozenset)):
        return sorted(obj)
    item = getattr(obj, "item", None)  # numpy scalars
    if callable(item) and getattr(obj, "shape", None) == ():
        return item()
    tolist = getattr(obj, "tolist", None)  # numpy arrays
    if callable(tolist):
        return tolist()
    raise TypeError(f"Object of type {type(obj).__name__} is not JSON serialisable")


def _to_json_bytes(obj: Any) -> bytes:
    return json.dumps(obj, indent=2, default=_json_default, allow_nan=True).encode("utf-8")


def atomic_write_json(path: str | os.PathLike[str], obj: Any) -> Path:
    """Write ``obj`` as indented JSON with :func:`atomic_write_bytes`.

    numpy scalars and arrays, dataclasses, paths and datetimes are converted;
    NaN and infinity are written as ``NaN`` / ``Infinity`` (Python reads them).
    """
    return atomic_write_bytes(path, _to_json_bytes(obj))


def _fsync_tree(root: Path) -> None:
    for dirpath, _dirnames, filenames in os.walk(root):
        for name in filenames:
            p = Path(dirpath, name)
            if p.is_symlink():
                continue
            try:
                with open(p, "rb") as fh:
                    os.fsync(fh.fileno())
            except OSError:  # pragma: no cover
                pass
        _fsync_dir(Path(dirpath))


def atomic_write_dir(
    path: str | os.PathLike[str],
    fill_fn: Callable[[Path], Any],
    *,
    replace: bool = True,
) -> Path:
    """Create the folder ``path`` in one step: fill a temporary folder, then rename it in.

    Parameters
    ----------
    path
        The folder to create.  Its parent must exist.
    fill_fn
        Called as ``fill_fn(tmp_dir)`` with an empty temporary folder next to
        ``path``; it writes the contents there (e.g. ``model.save``).  If it
        raises, the temporary folder is removed and ``path`` is untouched.
    replace
        If ``path`` exists: with ``True`` the old folder is renamed away,
        the new one renamed in and the old one deleted; with ``False``
        :class:`FileExistsError` is raised.

    Returns
    -------
    Path
        ``path``.
    """
    path = Path(path)
    if path.exists() and not replace:
        raise FileExistsError(f"{path} already exists")
    tmp = _tmp_name(path)
    tmp.mkdir()
    old: Path | None = None
    try:
        fill_fn(tmp)
        _fsync_tree(tmp)
        if path.exists() or path.is_symlink():
            old = path.with_name(f".{path.name}.old-{secrets.token_hex(4)}")
            os.replace(path, old)
        os.replace(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        if old is not None and not path.exists():
            os.replace(old, path)  # put the previous folder back
        raise
    _fsync_dir(path.parent)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
    return path


# ---------------------------------------------------------------------------
# model folders
# ---------------------------------------------------------------------------
def check_model_dir(
    path: str | os.PathLike[str],
    allowed: Iterable[str] = MODEL_FILES,
    *,
    required: Iterable[str] = MODEL_REQUIRED,
) -> Path:
    """Refuse a model folder that holds anything but the expected safe files.

    Parameters
    ----------
    path
        The folder to check.
    allowed
        Names that may appear (default :data:`MODEL_FILES`).
    required
        Names that must appear (default :data:`MODEL_REQUIRED`).

    Returns
    -------
    Path
        The folder, resolved.

    Raises
    ------
    ModelDirError
        If ``path`` is not a folder or is a symlink, or holds a sub-folder, a
        symlink, a special file or a file not in ``allowed`` (such as a
        pickle), or misses a required file.  The message names what was found.
    """
    p = Path(path)
    allowed = tuple(allowed)
    if p.is_symlink():
        raise ModelDirError(f"Model folder {p} is a symbolic link; refusing to load it.")
    if not p.is_dir():
        raise ModelDirError(f"Model folder {p} does not exist or is not a folder.")
    problems: list[str] = []
    names: set[str] = set()
    for entry in sorted(os.scandir(p), key=lambda e: e.name):
        names.add(entry.name)
        if entry.is_symlink():
            problems.append(f"{entry.name} (symbolic link)")
        elif entry.is_dir(follow_symlinks=False):
            problems.append(f"{entry.name}/ (sub-folder)")
        elif not entry.is_file(follow_symlinks=False):
            problems.append(f"{entry.name} (not a regular file)")
        elif entry.name not in allowed:
            problems.append(entry.name)
    if problems:
        raise ModelDirError(
            f"Model folder {p} contains unexpected entries: {', '.join(problems)}. "
            f"A Dhaka model folder may only contain {', '.join(allowed)}; "
            "other files (pickles, torch .pt files, folders, links) are refused because "
            "loading them could run code."
        )
    missing = [name for name in required if name not in names]
    if missing:
        raise ModelDirError(f"Model folder {p} is incomplete: missing {', '.join(missing)}.")
    return p.resolve()


# ---------------------------------------------------------------------------
# process liveness
# ---------------------------------------------------------------------------
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


def _writer_alive(run_dir: Path, record: Mapping[str, Any]) -> bool:
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


# ---------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------
def default_root() -> Path:
    """The workspace root: ``DHAKA_HOME`` or ``./dhaka-runs``."""
    return Path(os.environ.get("DHAKA_HOME") or "dhaka-runs")


def _versions() -> dict[str, str | None]:
    from importlib import metadata

    out: dict[str, str | None] = {"python": platform.python_version()}
    for key, dist in (("torch", "torch"), ("numpy", "numpy"), ("sklearn", "scikit-learn"),
                      ("scipy", "scipy"), ("pandas", "pandas"), ("dhaka", "dhaka")):
        try:
            out[key] = metadata.version(dist)
        except metadata.PackageNotFoundError:
            out[key] = None
    if out["dhaka"] is None:
        mod = sys.modules.get("dhaka")
        out["dhaka"] = getattr(mod, "__version__", None)
    return out


def _now_iso() -> str:
    return _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds")


def _finite_or_none(value: Any) -> float | None:
    try:
        f = float(value)
    except (TypeError, ValueError):
        return None
    return f if math.isfinite(f) else None


def _summarize_settings(settings: Mapping[str, Any]) -> str:
    keys = ("mode", "structure", "latent_dim", "n_genes", "epochs", "batch_size", "lr", "seed")
    parts = [f"{k}={settings[k]}" for k in keys if k in settings]
    if not parts:
        parts = [f"{k}={v}" for k, v in list(settings.items())[:6]]
    return ", ".join(str(p) for p in parts)


@dataclasses.dataclass(frozen=True)
class RunInfo:
    """One line of :meth:`RunStore.list`.

    ``status`` is the effective status: ``"interrupted"`` for a run whose
    writer died while it said ``"running"``.
    """

    id: str
    path: Path
    created: _dt.datetime | None
    status: RunStatus
    data_name: str | None
    data_shape: tuple[int, ...] | None
    settings: dict[str, Any]
    settings_summary: str
    final_loss: float | None
    ari: float | None
    owner: str | None
    last_checkpoint_epoch: int | None
    error: str | None

    @property
    def has_checkpoint(self) -> bool:
        """``True`` when the run names a checkpoint."""
        return self.last_checkpoint_epoch is not None

    def as_row(self) -> dict[str, Any]:
        """A flat dict for a table (e.g. ``pandas.DataFrame([i.as_row() for i in infos])``)."""
        return {
            "id": self.id,
            "date": self.created.strftime("%Y-%m-%d %H:%M") if self.created else None,
            "status": self.status,
            "data": self.data_name,
            "shape": "x".join(str(s) for s in self.data_shape) if self.data_shape else None,
            "settings": self.settings_summary,
            "final_loss": self.final_loss,
            "ari": self.ari,
            "checkpoint_epoch": self.last_checkpoint_epoch,
        }


class Run:
    """One run folder.  Get one from :meth:`RunStore.create` or :meth:`RunStore.open`.

    A run created in this process holds the folder's lock until
    :meth:`finish` or :meth:`close`; its methods that write are meant to be
    called from one thread (the job's).
    """

    def __init__(self, path: Path, *, lock_fd: int | None = None) -> None:
        self.path = Path(path)
        self.id = self.path.name
        self._lock_fd = lock_fd
        self._mutex = threading.RLock()
        self._record: dict[str, Any] = self._read_record()
        self._last_heartbeat = 0.0
        self._pending_progress: dict[str, Any] = {}

    def __repr__(self) -> str:
        return f"Run({self.id!r}, status={self.status!r})"

    def __del__(self) -> None:  # pragma: no cover - best effort
        try:
            self.close()
        except Exception:
            pass

    # -- record -------------------------------------------------------------
    def _read_record(self) -> dict[str, Any]:
        try:
            with open(self.path / RUN_FILE, "rb") as fh:
                record = json.load(fh)
        except FileNotFoundError:
            raise RunError(f"Run {self.id} has no {RUN_FILE}; it is not a run folder.") from None
        except (OSError, ValueError) as exc:
            raise RunError(f"Run {self.id}: cannot read {RUN_FILE} ({exc}).") from None
        if not isinstance(record, dict):
            raise RunError(f"Run {self.id}: {RUN_FILE} is not a JSON object.")
        return record

    def refresh(self) -> dict[str, Any]:
        """Re-read ``run.json`` from disk and return (a copy of) it."""
        with self._mutex:
            self._record = self._read_record()
            return json.loads(_to_json_bytes(self._record))

    @property
    def record(self) -> dict[str, Any]:
        """A copy of ``run.json`` as last read or written by this object."""
        with self._mutex:
            return json.loads(_to_json_bytes(self._record))

    def _update(self, **fields: Any) -> None:
        with self._mutex:
            record = dict(self._record)
            if self._pending_progress:
                progress = dict(record.get("progress") or {})
                progress.update(self._pending_progress)
                record["progress"] = progress
            record.update(fields)
            atomic_write_json(self.path / RUN_FILE, record)
            self._record = record
            self._pending_progress = {}

    @property
    def settings(self) -> dict[str, Any]:
        """The settings the run was created with."""
        return dict(self._record.get("settings") or {})

    @property
    def recorded_status(self) -> str:
        """The status written in ``run.json`` (``"running"`` even if the writer died)."""
        return str(self._record.get("status"))

    @property
    def status(self) -> RunStatus:
        """The effective status: ``"interrupted"`` if it says running but its writer is gone."""
        status = self._record.get("status")
        if status == "running":
            if self._lock_fd is not None:
                return "running"
            return "running" if _writer_alive(self.path, self._record) else "interrupted"
        return status  # type: ignore[return-value]

    # -- writing ------------------------------------------------------------
    @property
    def checkpoint_dir(self) -> Path:
        """The folder holding the run's checkpoints (one complete model folder at a time)."""
        return self.path / "checkpoints"

    def _require_writer(self) -> None:
        if self._lock_fd is None:
            raise RunError(f"Run {self.id} was not created by this process (or is closed); it is read-only here.")

    def heartbeat(self, *, min_interval: float = 5.0, **fields: Any) -> bool:
        """Record that the writer is alive, with optional progress fields.

        Called every epoch by the trainer; ``run.json`` is rewritten at most
        once per ``min_interval`` seconds (fields given in between are kept
        and written with the next heartbeat, checkpoint or finish).

        Parameters
        ----------
        min_interval
            Seconds between two writes of ``run.json``.
        **fields
            Progress values (e.g. ``epoch=12``) stored under ``progress``.

        Returns
        -------
        bool
            ``True`` if ``run.json`` was written.
        """
        self._require_writer()
        with self._mutex:
            if fields:
                self._pending_progress.update(fields)
            now = time.time()
            if now - self._last_heartbeat < min_interval:
                return False
            self._update(heartbeat=now)
            self._last_heartbeat = now
            return True

    def write_checkpoint(self, save_fn: Callable[[Path], Any], epoch: int) -> Path:
        """Save a checkpoint and make it the run's current one, atomically.

        ``save_fn(tmp_dir)`` writes a model folder (e.g. ``model.save``) into
        a temporary folder, which is fsync-ed and renamed to
        ``checkpoints/e<epoch>-<hex>``; then ``run.json`` is updated to name it
        (``checkpoint``, ``last_checkpoint_epoch``, ``heartbeat``), and only
        then is the previous checkpoint deleted.  Whatever moment the process
        dies, ``run.json`` names a complete checkpoint or none.

        Parameters
        ----------
        save_fn
            Writes the model into the folder it is given.
        epoch
            The epoch the checkpoint was taken after.

        Returns
        -------
        Path
            The new checkpoint folder.
        """
        self._require_writer()
        epoch = int(epoch)
        self.checkpoint_dir.mkdir(exist_ok=True)
        name = f"e{epoch:05d}-{secrets.token_hex(2)}"
        target = atomic_write_dir(self.checkpoint_dir / name, save_fn, replace=False)
        with self._mutex:
            previous = self._record.get("checkpoint")
            now = time.time()
            self._update(checkpoint=f"checkpoints/{name}", last_checkpoint_epoch=epoch,
                         checkpoint_time=now, heartbeat=now)
            self._last_heartbeat = now
        if previous and previous != f"checkpoints/{name}":
            shutil.rmtree(self.path / previous, ignore_errors=True)
        self._cleanup_temp()
        return target

    def finish(
        self,
        *,
        status: FinalStatus,
        save_fn: Callable[[Path], Any] | None = None,
        latent: pd.DataFrame | None = None,
        history: list[Mapping[str, Any]] | None = None,
        metrics: Mapping[str, Any] | None = None,
        error: str | None = None,
        keep_checkpoint: bool | None = None,
        device: str | None = None,
    ) -> None:
        """Write the run's results and mark it finished.

        Each result is written atomically; ``run.json`` is rewritten last with
        the final status and the list of complete ``files``, so a crash during
        ``finish`` leaves a run that lists as interrupted (with its checkpoint)
        rather than a complete-looking run with missing pieces.

        Parameters
        ----------
        status
            ``"done"``, ``"stopped"`` (cancelled, partial model kept) or
            ``"failed"``.
        save_fn
            Writes the final model folder (``model/``), e.g. ``model.save``.
        latent
            Latent coordinates, one row per cell (index = cell ids), written to
            ``latent.csv``.
        history
            One dict (or dataclass) per epoch, written to ``history.json``.
        metrics
            Summary numbers (``final_loss``, ``ari``, ...), written to
            ``metrics.json``; ``final_loss`` is filled from the last history
            row's ``loss`` when missing.
        error
            The failure message for ``status="failed"``.
        keep_checkpoint
            Keep the last checkpoint after a final model was saved.  Default:
            keep it only when no final model was saved.
        device
            The device training actually used (e.g. ``est.device_``) when it
            was not known at :meth:`RunStore.create` (``"auto"``).
        """
        if status not in ("done", "stopped", "failed"):
            raise ValueError(f"status must be 'done', 'stopped' or 'failed', got {status!r}")
        self._require_writer()
        files: dict[str, str] = dict(self._record.get("files") or {})
        if save_fn is not None:
            atomic_write_dir(self.path / "model", save_fn)
            files["model"] = "model"
        if latent is not None:
            buf = io.StringIO()
            latent.to_csv(buf, index=True)
            atomic_write_bytes(self.path / "latent.csv", buf.getvalue().encode("utf-8"))
            files["latent"] = "latent.csv"
        rows: list[dict[str, Any]] | None = None
        if history is not None:
            rows = [json.loads(_to_json_bytes(row)) for row in history]
            atomic_write_json(self.path / "history.json", rows)
            files["history"] = "history.json"
        summary: dict[str, Any] = json.loads(_to_json_bytes(dict(metrics or {})))
        if "final_loss" not in summary and rows:
            last = rows[-1]
            if isinstance(last, dict) and "loss" in last:
                summary["final_loss"] = last["loss"]
        if metrics is not None or summary:
            atomic_write_json(self.path / "metrics.json", summary)
            files["metrics"] = "metrics.json"
        now = time.time()
        update: dict[str, Any] = {
            "status": status,
            "finished": _now_iso(),
            "heartbeat": now,
            "files": files,
            "error": error,
            "summary": {
                "final_loss": _finite_or_none(summary.get("final_loss")),
                "ari": _finite_or_none(summary.get("ari")),
                "n_epochs_run": len(rows) if rows is not None else None,
            },
        }
        if device is not None:
            update["device"] = str(device)
        previous = self._record.get("checkpoint")
        if keep_checkpoint is None:
            keep_checkpoint = save_fn is None
        if previous and not keep_checkpoint:
            update["checkpoint"] = None
        self._update(**update)
        if previous and not keep_checkpoint:
            shutil.rmtree(self.path / previous, ignore_errors=True)
        self._cleanup_temp()
        self.close()

    def close(self) -> None:
        """Release the run's lock (a still-``running`` run then lists as interrupted)."""
        fd, self._lock_fd = self._lock_fd, None
        if fd is not None and fd >= 0:  # -1: writer without flock support
            try:
                if fcntl is not None:
                    fcntl.flock(fd, fcntl.LOCK_UN)
            finally:
                os.close(fd)

    def _cleanup_temp(self) -> None:
        # checkpoints not named in run.json are leftovers of a crash between
        # renaming a new checkpoint in and recording it
        current = Path(self._record.get("checkpoint") or "").name
        if self.checkpoint_dir.is_dir():
            for entry in self.checkpoint_dir.iterdir():
                if entry.name != current and not entry.name.startswith("."):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)
        for parent in (self.path, self.checkpoint_dir):
            if not parent.is_dir():
                continue
            for entry in parent.iterdir():
                if entry.name.startswith(".") and (".tmp-" in entry.name or ".old-" in entry.name):
                    if entry.is_dir() and not entry.is_symlink():
                        shutil.rmtree(entry, ignore_errors=True)
                    else:
                        entry.unlink(missing_ok=True)

    # -- reading ------------------------------------------------------------
    def info(self) -> RunInfo:
        """This run as a :class:`RunInfo`."""
        r = self._record
        created = None
        if isinstance(r.get("created"), str):
            try:
                created = _dt.datetime.fromisoformat(r["created"])
            except ValueError:
                created = None
        data = r.get("data") or {}
        fp = data.get("fingerprint") or {}
        shape = fp.get("shape") or data.get("shape")
        summary = r.get("summary") or {}
        settings = dict(r.get("settings") or {})
        ckpt_epoch = r.get("last_checkpoint_epoch") if r.get("checkpoint") else None
        return RunInfo(
            id=self.id,
            path=self.path,
            created=created,
            status=self.status,
            data_name=data.get("name"),
            data_shape=tuple(int(s) for s in shape) if isinstance(shape, (list, tuple)) else None,
            settings=settings,
            settings_summary=_summarize_settings(settings),
            final_loss=_finite_or_none(summary.get("final_loss")),
            ari=_finite_or_none(summary.get("ari")),
            owner=r.get("owner"),
            last_checkpoint_epoch=ckpt_epoch,
            error=r.get("error"),
        )

    def _file(self, key: str) -> Path:
        files = self._record.get("files") or {}
        name = files.get(key)
        if not name:
            raise RunError(f"Run {self.id} has no complete {key} (status: {self.status}).")
        path = (self.path / name).resolve()
        if self.path.resolve() not in path.parents:
            raise RunError(f"Run {self.id}: {RUN_FILE} names a {key} outside the run folder.")
        return path

    def checkpoint_path(self) -> Path | None:
        """The last complete checkpoint folder, or ``None``."""
        name = self._record.get("checkpoint")
        if not name:
            return None
        path = (self.path / name).resolve()
        if self.path.resolve() not in path.parents or not path.is_dir():
            return None
        return path

    def model_dir(self) -> Path:
        """The final model folder, or else the last checkpoint.

        Raises
        ------
        RunError
            If the run has neither.
        """
        files = self._record.get("files") or {}
        if files.get("model"):
            return self._file("model")
        ckpt = self.checkpoint_path()
        if ckpt is not None:
            return ckpt
        raise RunError(f"Run {self.id} has no saved model and no checkpoint (status: {self.status}).")

    def load_latent(self) -> pd.DataFrame:
        """The latent coordinates (index = cell ids)."""
        import pandas as pd

        return pd.read_csv(self._file("latent"), index_col=0)

    def load_history(self) -> list[dict[str, Any]]:
        """The per-epoch history rows."""
        with open(self._file("history"), "rb") as fh:
            return json.load(fh)

    def load_metrics(self) -> dict[str, Any]:
        """The summary metrics (``final_loss``, ``ari``, ...)."""
        with open(self._file("metrics"), "rb") as fh:
            return json.load(fh)


class RunStore:
    """The folder of runs under ``root`` (``DHAKA_HOME`` or ``./dhaka-runs``).

    Parameters
    ----------
    root
        The workspace root; runs live in ``root/runs``.  Created on first write.
    """

    def __init__(self, root: str | os.PathLike[str] | None = None) -> None:
        self.root = Path(root) if root is not None else default_root()
        self.runs_dir = self.root / "runs"

    def __repr__(self) -> str:
        return f"RunStore({str(self.root)!r})"

    def create(
        self,
        *,
        settings: Mapping[str, Any],
        data: Mapping[str, Any],
        owner: str | None = None,
        seed: int | None = None,
        device: str | None = None,
        genes: Iterable[str] | None = None,
    ) -> Run:
        """Start a new run: its folder appears in one rename with a complete ``run.json``.

        Parameters
        ----------
        settings
            The estimator's settings (``Dhaka.get_params()``), JSON-able.
        data
            ``{"name": ..., "fingerprint": {"shape": [n_cells, n_genes], "nnz": ..., "sha256": ...}}``.
        owner
            The session that started it (stored; :meth:`list` can filter on it).
        seed
            The random seed; default ``settings["seed"]``.
        device
            The device actually used (``"cpu"``, ``"cuda:0"``); default
            ``settings["device"]``.
        genes
            Selected gene names, stored in ``genes.txt`` when given.

        Returns
        -------
        Run
            Holding the run's lock until :meth:`Run.finish` or :meth:`Run.close`.
        """
        self.runs_dir.mkdir(parents=True, exist_ok=True)
        created = _dt.datetime.now(_dt.timezone.utc)
        settings = json.loads(_to_json_bytes(dict(settings)))
        data = json.loads(_to_json_bytes(dict(data)))
        pid = os.getpid()
        for _ in range(100):
            run_id = f"{created:%Y%m%d-%H%M%S}-{secrets.token_hex(3)}"
            final = self.runs_dir / run_id
            if not final.exists():
                break
        else:  # pragma: no cover
            raise RunError("could not find a free run id")
        tmp = self.runs_dir / f".{run_id}.tmp-{secrets.token_hex(4)}"
        tmp.mkdir()
        lock_fd: int | None = None
        try:
            lock_fd = os.open(tmp / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o644)
            if fcntl is not None:
                fcntl.flock(lock_fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            else:  # pragma: no cover - no flock: readers use pid / heartbeat
                os.close(lock_fd)
                lock_fd = -1
                (tmp / LOCK_FILE).unlink()
            files: dict[str, str] = {}
            if genes is not None:
                atomic_write_bytes(tmp / "genes.txt", ("\n".join(map(str, genes)) + "\n").encode("utf-8"))
                files["genes"] = "genes.txt"
            record = {
                "schema": SCHEMA_VERSION,
                "id": run_id,
                "created": created.isoformat(timespec="microseconds"),
                "status": "running",
                "owner": owner,
                "settings": settings,
                "seed": seed if seed is not None else settings.get("seed"),
                "device": device if device is not None else settings.get("device"),
                "versions": _versions(),
                "data": data,
                "process": {
                    "pid": pid,
                    "hostname": socket.gethostname(),
                    "boot_id": _boot_id(),
                    "start_ticks": _proc_start(pid),
                },
                "heartbeat": time.time(),
                "checkpoint": None,
                "last_checkpoint_epoch": None,
                "files": files,
                "summary": {},
                "error": None,
            }
            atomic_write_json(tmp / RUN_FILE, record)
            _fsync_dir(tmp)
            os.rename(tmp, final)  # the run appears complete or not at all
        except BaseException:
            if lock_fd is not None and lock_fd >= 0:
                os.close(lock_fd)
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        _fsync_dir(self.runs_dir)
        return Run(final, lock_fd=lock_fd)

    def _path(self, run_id: str) -> Path:
        if not isinstance(run_id, str) or not run_id or run_id in (".", "..") \
                or "/" in run_id or "\\" in run_id or os.sep in run_id or "\x00" in run_id \
                or run_id.startswith("."):
            raise RunError(f"{run_id!r} is not a valid run id.")
        path = self.runs_dir / run_id
        runs = self.runs_dir.resolve()
        if path.is_symlink() or path.resolve().parent != runs:
            raise RunError(f"{run_id!r} is not a run under {self.runs_dir}.")
        return path

    def open(self, run_id: str) -> Run:
        """Open an existing run read-only.

        Raises
        ------
        RunError
            If the id is malformed or names no run.
        """
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        return Run(path)

    def list(self, *, owner: str | None = None) -> list[RunInfo]:
        """All runs, newest first.

        Folders without a readable ``run.json`` (half-created, foreign) and
        hidden temporary folders are skipped.

        Parameters
        ----------
        owner
            Only runs of this owner when given.
        """
        if not self.runs_dir.is_dir():
            return []
        infos: list[RunInfo] = []
        for entry in self.runs_dir.iterdir():
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            try:
                info = Run(entry).info()
            except RunError:
                continue
            if owner is not None and info.owner != owner:
                continue
            infos.append(info)
        epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
        infos.sort(key=lambda i: (i.created or epoch, i.id), reverse=True)
        return infos

    def delete(self, run_id: str, *, force: bool = False) -> None:
        """Delete a run: renamed out of ``runs/`` first, then removed.

        Parameters
        ----------
        run_id
            The run's id; ids with path separators or outside the store are refused.
        force
            Also delete a run that is still running (its writer alive).

        Raises
        ------
        RunError
            For a bad id, an unknown run, or a live run without ``force``.
        """
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        if not force:
            try:
                status = Run(path).status
            except RunError:
                status = None
            if status == "running":
                raise RunError(f"Run {run_id} is still running; cancel it first.")
        trash = self.runs_dir / f".{run_id}.deleted-{secrets.token_hex(4)}"
        os.rename(path, trash)
        _fsync_dir(self.runs_dir)
        shutil.rmtree(trash, ignore_errors=True)
