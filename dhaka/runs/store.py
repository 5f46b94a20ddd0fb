"""The run store: the folder of runs under ``DHAKA_HOME`` and what a caller may do with them.

:class:`RunStore` creates runs (a new run folder appears in one rename with a complete ``run.json``),
opens, lists, shares, annotates and deletes them, saying who asks (:mod:`dhaka.runs.access`), and runs
the maintenance pass (:mod:`dhaka.runs.retention`).  :class:`RunStoreView` is the store seen by one
person, for code that takes a store and calls ``store.open(run_id)``.
"""
from __future__ import annotations

import contextlib
import datetime as _dt
import io
import json
import os
import secrets
import shutil
import time
from collections.abc import Iterable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhaka.runs.access import RunPermissionError, check_access, who_asks
from dhaka.runs.folders import remove_run_dir
from dhaka.runs.locks import hold_if_quiet, process_identity, take_writer_lock
from dhaka.runs.record import RUN_FILE, SCHEMA_VERSION, Run, RunError, RunInfo, read_record, software_versions
from dhaka.runs.retention import CleanupReport, Retention, cleanup_pass
from dhaka.store import _fsync_dir, _to_json_bytes, atomic_write_bytes, atomic_write_json

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["RunStore", "RunStoreView", "default_root"]


def default_root() -> Path:
    """The workspace root: ``DHAKA_HOME`` or ``./dhaka-runs``."""
    return Path(os.environ.get("DHAKA_HOME") or "dhaka-runs")


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
            lock_fd = take_writer_lock(tmp)
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
                "versions": software_versions(),
                "data": data,
                "process": process_identity(),
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
        asker = who_asks(owner, admin, "open")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        run = Run(path)
        check_access(run.id, run.record, asker, action="open")
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
        asker = who_asks(owner, admin, "list")
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
        asker = who_asks(owner, admin, "delete")
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        try:
            record = read_record(path)
        except RunError:
            if asker is not None:  # no readable record: nobody can prove it is theirs
                raise RunPermissionError(f"Run {run_id} has no readable record; only a lab admin can delete it.")
            record = {}
        check_access(run_id, record, asker, action="delete")
        with hold_if_quiet(path, record) as quiet:
            if not quiet and not force:
                raise RunError(f"Run {run_id} is still running; cancel it first.")
            remove_run_dir(self.runs_dir, path)

    @contextlib.contextmanager
    def _finished_record(self, run_id: str, asker: str | None, action: str) -> Iterator[tuple[Path, dict]]:
        """A finished run's folder and record, ``asker`` allowed to ``action`` it, its writer's lock held.

        The record is read again under the lock, so a change written back from it loses nothing.
        """
        path = self._path(run_id)
        if not path.is_dir():
            raise RunError(f"No run {run_id!r} under {self.runs_dir}.")
        record = read_record(path)
        check_access(run_id, record, asker, action=action)
        with hold_if_quiet(path, record) as quiet:
            if not quiet:
                raise RunError(f"Run {run_id} is still running; {action} it once it has finished.")
            yield path, read_record(path)

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
        with self._finished_record(run_id, who_asks(owner, admin, "share"), "share") as (path, record):
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
        with self._finished_record(run_id, who_asks(owner, admin, "annotate"), "annotate") as (path, record):
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
        who_asks(owner, admin, "view")
        return RunStoreView(self, owner=None if admin else owner, admin=admin)

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
        return cleanup_pass(self.root, self.runs_dir, retention, now=now, leftover_grace_s=leftover_grace_s,
                            temp_dir=temp_dir)


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
