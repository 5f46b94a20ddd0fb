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
        annotations.csv     # cells x the person's labels (written after training, by its owner)
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

Ownership.  Every run records its ``owner`` (the person's owner key in the
app) and a ``shared`` flag.  :meth:`RunStore.list`, :meth:`RunStore.open`,
:meth:`RunStore.delete` and :meth:`RunStore.share` say who asks: ``owner=``
(a person: their runs, plus runs others shared for reading) or ``admin=True``
(a lab admin, the CLI, a maintenance pass: every run).  Asking as nobody is an
error, so a forgotten owner cannot silently list everyone's runs.  Runs with
no owner (made by the library directly, or before owners existed) are seen
only by admins until one shares them.

Maintenance.  :meth:`RunStore.cleanup` applies the retention settings
(``DHAKA_RETENTION_DAYS``, ``DHAKA_RETENTION_MAX_GB``), sweeps crash
leftovers and writes ``"interrupted"`` into the ``run.json`` of runs whose
writer died; it never touches a run whose writer is alive (it takes the
run's lock first).  :func:`start_maintenance` runs it at start-up and daily.
"""
from __future__ import annotations

import contextlib
import dataclasses
import datetime as _dt
import errno
import io
import json
import logging
import math
import os
import platform
import re
import secrets
import shutil
import socket
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
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
    "CleanupReport",
    "Maintenance",
    "ModelDirError",
    "Retention",
    "Run",
    "RunError",
    "RunInfo",
    "RunPermissionError",
    "RunStore",
    "RunStoreView",
    "atomic_write_bytes",
    "atomic_write_dir",
    "atomic_write_json",
    "check_model_dir",
    "default_root",
    "start_maintenance",
]

from dhaka.store import (  # noqa: F401 - part of this module's API since before the move
    MODEL_FILES,
    MODEL_REQUIRED,
    ModelDirError,
    _fsync_dir,
    _json_default,
    _tmp_name,
    _to_json_bytes,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    check_model_dir,
)

log = logging.getLogger(__name__)

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


class RunPermissionError(RunError, PermissionError):
    """The run belongs to someone else (and is not shared, or the action is the owner's alone)."""


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
    shared: bool = False

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
            "shared": self.shared,
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
            latent.to_csv(buf, index=True)  # internal: read back by load_latent, names kept exact
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
            shared=r.get("shared") is True,
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

    def load_annotations(self) -> pd.DataFrame:
        """The labels kept with the run (index = cell ids, one text column per annotation).

        Unlabelled cells are missing values. A run without annotations gives an empty table.
        """
        import pandas as pd

        if not (self._record.get("files") or {}).get("annotations"):
            return pd.DataFrame(index=pd.Index([], name="cell", dtype=object))
        return pd.read_csv(self._file("annotations"), index_col=0, dtype=str, keep_default_na=False,
                           na_values=[""])


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
            The person who started it (their owner key in the app); only they
            (and admins) can list, open and delete it unless they share it.
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
                "shared": False,
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


    # -- who may do what ----------------------------------------------------
    @staticmethod
    def _asker(owner: str | None, admin: bool, action: str) -> str | None:
        """The owner asking, or ``None`` for an admin; refuses a call that says neither."""
        if admin:
            return None
        if not isinstance(owner, str) or not owner:
            raise ValueError(
                f"RunStore.{action}: say who asks: owner=<the person's owner key>, or admin=True for a lab "
                "admin or a trusted caller (CLI, maintenance).")
        return owner

    def _check(self, run_id: str, record: Mapping[str, Any], owner: str | None, *,
               action: Literal["open", "delete", "share", "annotate"]) -> None:
        if owner is None:  # admin
            return
        if record.get("owner") == owner:
            return
        if action == "open" and record.get("shared") is True:
            return
        if action == "open":
            raise RunPermissionError(
                f"Run {run_id} belongs to someone else and is not shared; only its owner or a lab admin can "
                "open it.")
        raise RunPermissionError(
            f"Run {run_id} belongs to someone else; only its owner or a lab admin can {action} it.")

    def open(self, run_id: str, *, owner: str | None = None, admin: bool = False) -> Run:
        """Open an existing run read-only.

        Parameters
        ----------
        run_id
            The run's id.
        owner
            Who asks: their own runs and runs shared with everyone open.
        admin
            Open any run (a lab admin or a trusted caller); then ``owner`` is ignored.

        Raises
        ------
        RunError
            If the id is malformed or names no run.
        RunPermissionError
            If the run is someone else's and not shared.
        ValueError
            If neither ``owner`` nor ``admin=True`` is given.
        """
        asker = self._asker(owner, admin, "open")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        run = Run(path)
        self._check(run.id, run._record, asker, action="open")
        return run

    def list(self, *, owner: str | None = None, admin: bool = False,
             include_shared: bool = True) -> list[RunInfo]:
        """The runs ``owner`` may see (all of them for an admin), newest first.

        Folders without a readable ``run.json`` (half-created, foreign) and
        hidden temporary folders are skipped.

        Parameters
        ----------
        owner
            Who asks: their runs, plus others' shared runs when ``include_shared``.
        admin
            Every run (a lab admin or a trusted caller).
        include_shared
            Also list runs others shared.

        Raises
        ------
        ValueError
            If neither ``owner`` nor ``admin=True`` is given.
        """
        asker = self._asker(owner, admin, "list")
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
            if asker is not None and info.owner != asker and not (include_shared and info.shared):
                continue
            infos.append(info)
        epoch = _dt.datetime.min.replace(tzinfo=_dt.timezone.utc)
        infos.sort(key=lambda i: (i.created or epoch, i.id), reverse=True)
        return infos

    def delete(self, run_id: str, *, owner: str | None = None, admin: bool = False, force: bool = False) -> None:
        """Delete a run: renamed out of ``runs/`` first, then removed.

        Parameters
        ----------
        run_id
            The run's id; ids with path separators or outside the store are refused.
        owner
            Who asks: only the run's owner may delete it (sharing does not give that right).
        admin
            Delete any run.
        force
            Also delete a run that is still running (its writer alive).

        Raises
        ------
        RunError
            For a bad id, an unknown run, or a live run without ``force``.
        RunPermissionError
            If ``owner`` is not the run's owner.
        """
        asker = self._asker(owner, admin, "delete")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        try:
            record = Run(path)._record
        except RunError:
            if asker is not None:  # no readable record: nobody can prove it is theirs
                raise RunPermissionError(f"Run {run_id} has no readable record; only a lab admin can delete it.")
            record = {}
        self._check(run_id, record, asker, action="delete")
        with _quiet(path, record) as quiet:
            if not quiet and not force:
                raise RunError(f"Run {run_id} is still running; cancel it first.")
            self._remove(path)

    def share(self, run_id: str, *, owner: str | None = None, admin: bool = False, shared: bool = True) -> RunInfo:
        """Let everyone list and open a run (read-only), or stop sharing it.

        Parameters
        ----------
        run_id
            The run's id.
        owner
            Who asks: only the run's owner may share it.
        admin
            Share (or unshare) any run, e.g. one made before owners existed.
        shared
            ``True`` to share, ``False`` to stop sharing.

        Returns
        -------
        RunInfo
            The run as it is now.

        Raises
        ------
        RunPermissionError
            If ``owner`` is not the run's owner.
        RunError
            For an unknown run, or one still being written (share it once it has finished).
        """
        asker = self._asker(owner, admin, "share")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        run = Run(path)
        self._check(run.id, run._record, asker, action="share")
        with _quiet(path, run._record) as quiet:
            if not quiet:
                raise RunError(f"Run {run_id} is still running; share it once it has finished.")
            record = Run(path).record  # re-read under the lock
            record["shared"] = bool(shared)
            atomic_write_json(path / RUN_FILE, record)
        return Run(path).info()

    def save_annotations(self, run_id: str, table: pd.DataFrame, *, owner: str | None = None,
                         admin: bool = False) -> None:
        """Keep a person's labels with a finished run (``annotations.csv``), replacing the previous ones.

        Parameters
        ----------
        run_id
            The run's id.
        table
            One row per cell (index = cell ids), one text column per annotation; missing values are
            unlabelled cells. An empty table (no columns) removes the annotations.
        owner
            Who asks: only the run's owner may annotate it (sharing gives read access only).
        admin
            Annotate any run.

        Raises
        ------
        RunPermissionError
            If ``owner`` is not the run's owner.
        RunError
            For an unknown run, or one still being written.
        """
        asker = self._asker(owner, admin, "annotate")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        run = Run(path)
        self._check(run.id, run._record, asker, action="annotate")
        with _quiet(path, run._record) as quiet:
            if not quiet:
                raise RunError(f"Run {run_id} is still running; annotate it once it has finished.")
            record = Run(path).record  # re-read under the lock
            files = dict(record.get("files") or {})
            if len(table.columns):
                buf = io.StringIO()
                table.rename_axis("cell").to_csv(buf, index=True)  # internal: read back by load_annotations
                atomic_write_bytes(path / "annotations.csv", buf.getvalue().encode("utf-8"))
                files["annotations"] = "annotations.csv"
            else:
                files.pop("annotations", None)
            record["files"] = files
            atomic_write_json(path / RUN_FILE, record)
            if "annotations" not in files:
                (path / "annotations.csv").unlink(missing_ok=True)

    def view(self, owner: str | None = None, *, admin: bool = False) -> RunStoreView:
        """This store seen by one person (or an admin): ``list()``, ``open(id)``, ... without repeating who asks.

        Hand it to code that takes a store and calls ``store.open(run_id)``
        (e.g. the app's ``open_run``).
        """
        self._asker(owner, admin, "view")
        return RunStoreView(self, owner=None if admin else owner, admin=admin)

    def _remove(self, path: Path) -> int:
        """Rename a run folder out of ``runs/`` and delete it; returns the bytes freed."""
        size = _tree_size(path)
        trash = self.runs_dir / f".{path.name}.deleted-{secrets.token_hex(4)}"
        os.rename(path, trash)
        _fsync_dir(self.runs_dir)
        shutil.rmtree(trash, ignore_errors=True)
        return size

    # -- maintenance --------------------------------------------------------
    def cleanup(
        self,
        retention: Retention | None = None,
        *,
        now: float | None = None,
        leftover_grace_s: float = 3600.0,
        temp_dir: str | os.PathLike[str] | None = None,
    ) -> CleanupReport:
        """One maintenance pass: crash leftovers, interrupted runs, then retention.

        1. Removes half-deleted runs (``.<id>.deleted-*``), half-created ones
           (``.<id>.tmp-*`` older than ``leftover_grace_s``), temporary files
           and replaced folders left inside runs whose writer is gone
           (``.*.tmp-*``, ``.*.old-*``, checkpoints ``run.json`` does not
           name), stale cache temporaries (``DHAKA_HOME/cache/.*.tmp``) and
           stale upload copies (``dhaka-tmp-*`` in ``temp_dir``).
        2. Writes ``"interrupted"`` into ``run.json`` of runs that say
           ``"running"`` but whose writer is gone.
        3. Deletes runs last active (finished, last heartbeat or created)
           more than ``retention.max_age_days`` ago, then the least recently
           active runs until the store holds at most ``retention.max_bytes``.

        A run whose writer is alive is never touched: each step takes the
        run's lock (or, without a lock file, checks the writer's pid or
        heartbeat) first.

        Parameters
        ----------
        retention
            Age and size limits; default :meth:`Retention.from_env`.
        now
            The current time (``time.time()``), for tests.
        leftover_grace_s
            Temporaries younger than this may belong to a write in progress
            and are kept.
        temp_dir
            Where upload copies are made (default :func:`tempfile.gettempdir`).

        Returns
        -------
        CleanupReport
        """
        retention = Retention.from_env() if retention is None else retention
        now = time.time() if now is None else float(now)
        report = CleanupReport()
        self._sweep_temporaries(report, now, leftover_grace_s, temp_dir)
        if not self.runs_dir.is_dir():
            return report
        candidates: list[tuple[float, str, int]] = []  # (last active, id, bytes) of runs nobody writes
        total = 0
        for entry in sorted(self.runs_dir.iterdir()):
            if entry.name.startswith(".") or entry.is_symlink() or not entry.is_dir():
                continue
            try:
                record = Run(entry)._record
            except RunError:
                continue
            size = _tree_size(entry)
            total += size
            try:
                with _quiet(entry, record) as quiet:
                    if not quiet:
                        report.live.append(entry.name)
                        continue
                    record = Run(entry)._record  # re-read under the lock
                    if record.get("status") == "running":
                        record["status"] = "interrupted"
                        record["interrupted"] = _now_iso()
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
                if last < cutoff and self._remove_if_quiet(run_id, report):
                    report.deleted_age.append(run_id)
                    report.freed_bytes += size
                    total -= size
                    candidates.remove((last, run_id, size))
        if retention.max_bytes is not None:
            for last, run_id, size in list(candidates):
                if total <= retention.max_bytes:
                    break
                if self._remove_if_quiet(run_id, report):
                    report.deleted_size.append(run_id)
                    report.freed_bytes += size
                    total -= size
        report.total_bytes = total
        return report

    def _remove_if_quiet(self, run_id: str, report: CleanupReport) -> bool:
        path = self.runs_dir / run_id
        try:
            record = Run(path)._record
            with _quiet(path, record) as quiet:
                if not quiet:  # a writer appeared? (cannot happen for a finished run) keep it
                    report.live.append(run_id)
                    return False
                self._remove(path)
                return True
        except (OSError, RunError) as exc:
            report.errors.append(f"{run_id}: {exc}")
            return False

    def _sweep_temporaries(self, report: CleanupReport, now: float, grace: float,
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

        if self.runs_dir.is_dir():
            for entry in self.runs_dir.iterdir():
                if not entry.name.startswith("."):
                    continue
                if ".deleted-" in entry.name or (".tmp-" in entry.name and stale(entry)):
                    remove(entry)
        cache = self.root / "cache"
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


class RunStoreView:
    """A :class:`RunStore` seen by one owner (or an admin); get one from :meth:`RunStore.view`."""

    def __init__(self, store: RunStore, *, owner: str | None, admin: bool) -> None:
        self.store = store
        self.owner = owner
        self.admin = bool(admin)
        self.root = store.root
        self.runs_dir = store.runs_dir

    def __repr__(self) -> str:
        who = "admin" if self.admin else "owner"
        return f"RunStoreView({str(self.root)!r}, {who})"

    def list(self, *, include_shared: bool = True) -> list[RunInfo]:
        """See :meth:`RunStore.list`."""
        return self.store.list(owner=self.owner, admin=self.admin, include_shared=include_shared)

    def open(self, run_id: str) -> Run:
        """See :meth:`RunStore.open`."""
        return self.store.open(run_id, owner=self.owner, admin=self.admin)

    def delete(self, run_id: str, *, force: bool = False) -> None:
        """See :meth:`RunStore.delete`."""
        self.store.delete(run_id, owner=self.owner, admin=self.admin, force=force)

    def share(self, run_id: str, *, shared: bool = True) -> RunInfo:
        """See :meth:`RunStore.share`."""
        return self.store.share(run_id, owner=self.owner, admin=self.admin, shared=shared)

    def save_annotations(self, run_id: str, table: pd.DataFrame) -> None:
        """See :meth:`RunStore.save_annotations`."""
        self.store.save_annotations(run_id, table, owner=self.owner, admin=self.admin)

    def is_mine(self, info: RunInfo) -> bool:
        """``True`` when this view's owner owns the run (admins own none; they may still delete)."""
        return self.owner is not None and info.owner == self.owner


# ---------------------------------------------------------------------------
# maintenance helpers
# ---------------------------------------------------------------------------
@contextlib.contextmanager
def _quiet(run_dir: Path, record: Mapping[str, Any]) -> Iterator[bool]:
    """Hold a run's lock while changing it; yields ``False`` (and holds nothing) when its writer is alive.

    The writer keeps an exclusive ``flock`` on ``.lock`` for the run's life,
    so taking it proves nobody writes the run, and keeps a new writer out
    while we change it.  Without a lock file, the pid / heartbeat checks of
    :func:`_writer_alive` decide.
    """
    fd: int | None = None
    if fcntl is not None:
        try:
            fd = os.open(run_dir / LOCK_FILE, os.O_RDWR)
        except OSError:
            fd = None
    if fd is None:
        yield not (record.get("status") == "running" and _writer_alive(run_dir, record))
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


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


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
        from dhaka.resources import env_positive_float as number

        days = number("DHAKA_RETENTION_DAYS")
        gb = number("DHAKA_RETENTION_MAX_GB")
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
