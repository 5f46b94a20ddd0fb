"""One run folder and its record: :class:`Run` (written by its job, read by everyone) and :class:`RunInfo`.

A run folder holds ``run.json`` (the record; the ONLY file readers trust first), ``.lock`` (held by the
writer), ``checkpoints/`` (the checkpoint ``run.json`` names), and once finished ``model/``,
``latent.csv``, ``history.json``, ``metrics.json`` and later ``annotations.csv``.  ``run.json`` names
the files that are complete (``files``) and the current checkpoint (``checkpoint``); it is rewritten
*after* the things it names are in place, so it never points at a half-written file.
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import io
import json
import math
import platform
import secrets
import shutil
import sys
import threading
import time
from collections.abc import Callable, Mapping
from importlib import metadata
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from dhaka.runs.locks import release_writer_lock, writer_alive
from dhaka.store import _to_json_bytes, atomic_write_bytes, atomic_write_dir, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["RUN_FILE", "SCHEMA_VERSION", "FinalStatus", "Run", "RunError", "RunInfo", "RunStatus", "now_iso",
           "read_record", "software_versions"]

RUN_FILE = "run.json"
SCHEMA_VERSION = 1

RunStatus = Literal["running", "done", "stopped", "failed", "interrupted"]
FinalStatus = Literal["done", "stopped", "failed"]


class RunError(RuntimeError):
    """A run cannot be created, opened, read or deleted."""


def read_record(path: Path) -> dict[str, Any]:
    """The ``run.json`` of the run folder ``path``; :class:`RunError` when it is missing or unreadable."""
    run_id = Path(path).name
    try:
        with open(Path(path) / RUN_FILE, "rb") as fh:
            record = json.load(fh)
    except FileNotFoundError:
        raise RunError(f"Run {run_id} has no {RUN_FILE}; it is not a run folder.") from None
    except (OSError, ValueError) as exc:
        raise RunError(f"Run {run_id}: cannot read {RUN_FILE} ({exc}).") from None
    if not isinstance(record, dict):
        raise RunError(f"Run {run_id}: {RUN_FILE} is not a JSON object.")
    return record


def software_versions() -> dict[str, str | None]:
    """Versions of Python and the libraries a run's results depend on, for its record."""
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


def now_iso() -> str:
    """The current UTC time as an ISO string (seconds)."""
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
        return read_record(self.path)

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
    def status(self) -> RunStatus:
        """The effective status: ``"interrupted"`` if it says running but its writer is gone."""
        status = self._record.get("status")
        if status == "running":
            if self._lock_fd is not None:
                return "running"
            return "running" if writer_alive(self.path, self._record) else "interrupted"
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
            "finished": now_iso(),
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
        release_writer_lock(fd)

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
