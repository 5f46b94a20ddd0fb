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

Modules: :mod:`~dhaka.runs.locks` (the writer's lock, liveness), :mod:`~dhaka.runs.record` (one run
folder: :class:`Run`, :class:`RunInfo`), :mod:`~dhaka.runs.access` (who may do what),
:mod:`~dhaka.runs.store` (:class:`RunStore`, :class:`RunStoreView`), :mod:`~dhaka.runs.folders`
(sizes, removal), :mod:`~dhaka.runs.retention` (the clean-up pass) and :mod:`~dhaka.runs.maintenance`
(its daily thread).  The atomic writers and the model-folder check are :mod:`dhaka.store`'s (the
estimator uses them too), re-exported here.
"""
from __future__ import annotations

from dhaka.runs.access import RunPermissionError
from dhaka.runs.maintenance import Maintenance, start_maintenance
from dhaka.runs.record import Run, RunError, RunInfo
from dhaka.runs.retention import CleanupReport, Retention
from dhaka.runs.store import RunStore, RunStoreView, default_root
from dhaka.store import (
    MODEL_FILES,
    MODEL_REQUIRED,
    ModelDirError,
    atomic_write_bytes,
    atomic_write_dir,
    atomic_write_json,
    check_model_dir,
)

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
