"""Uploads parsed outside the server: a capped child process, admitted by the job queue's memory check.

The Data page never parses an upload in the Streamlit process.  It calls :func:`read_upload`, which
hands the bytes to :func:`dhaka.io.sandbox.read_sandboxed`: a fresh process whose data segment the
operating system caps, killed at the time limit, returning the matrix through a file in the run
store's temporary space (``DHAKA_HOME/tmp``).  The cap is what the job manager admits
(:meth:`dhaka.jobs.JobManager.check_memory`), so reading an upload counts against the memory that
running trainings hold, and a file the headers cannot size asks for the whole cap: admission fails
closed.

Settings (docs/deploy.md, "Upload caps"):

* ``DHAKA_UPLOAD_MEMORY``: the most one parse may allocate (``"4G"``); default the smaller of
  4 GB and the server's memory limit (:func:`dhaka.resources.memory_limit`);
* ``DHAKA_UPLOAD_TIMEOUT_S``: seconds one parse may take; default 300.

Nothing here calls ``st.*``; it is called from the page's script thread.
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from dhaka.io.sandbox import h5ad_layers_sandboxed, read_sandboxed
from dhaka.resources import env_positive_float, env_size, memory_limit
from dhaka.runs import default_root
from dhaka.ui import cached

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["DEFAULT_CAP", "DEFAULT_TIMEOUT_S", "upload_cap", "upload_time_limit", "upload_tmp_dir", "read_upload",
           "h5ad_layers"]

#: The most one parse may allocate when ``DHAKA_UPLOAD_MEMORY`` is not set (and the server has more).
DEFAULT_CAP = 4 * 2**30
#: Seconds one parse may take when ``DHAKA_UPLOAD_TIMEOUT_S`` is not set.
DEFAULT_TIMEOUT_S = 300.0


def upload_cap() -> int:
    """Bytes one upload's parse may allocate: ``DHAKA_UPLOAD_MEMORY``, else min(4 GB, the memory limit)."""
    env = env_size("DHAKA_UPLOAD_MEMORY")
    if env is not None:
        return env
    limit = memory_limit()
    return min(DEFAULT_CAP, limit) if limit else DEFAULT_CAP


def upload_time_limit() -> float:
    """Seconds one upload's parse may take: ``DHAKA_UPLOAD_TIMEOUT_S`` or :data:`DEFAULT_TIMEOUT_S`."""
    return env_positive_float("DHAKA_UPLOAD_TIMEOUT_S", unit="seconds") or DEFAULT_TIMEOUT_S


def upload_tmp_dir() -> Path:
    """The run store's temporary space, where an upload and its parsed matrix pass (then removed)."""
    return default_root() / "tmp"


def read_upload(upload: Any, *, meta: Any | None = None, **read_options: Any) -> "anndata.AnnData":
    """An uploaded matrix (and its metadata table) read in a capped child process.

    Parameters
    ----------
    upload, meta
        Streamlit ``UploadedFile`` objects (anything with ``.name`` and the bytes).
    **read_options
        ``orientation``, ``layer`` ... of :func:`dhaka.io.read`.

    Raises
    ------
    dhaka.resources.ResourceError
        The job manager has no room for the cap now.
    dhaka.io.sandbox.SandboxLimitError, dhaka.io.sandbox.MetadataError, dhaka.io.DataError
        Over the cap or the time limit; the metadata table's problem; the file's problem.
    """
    manager = cached.job_manager()

    def admit(need: int) -> None:
        manager.check_memory(need, what=f"Reading {upload.name}")

    return read_sandboxed(
        upload, filename=upload.name, memory_limit=upload_cap(), time_limit=upload_time_limit(), admit=admit,
        tmp_dir=upload_tmp_dir(), metadata=meta, metadata_filename=getattr(meta, "name", None), **read_options)


def h5ad_layers(upload: Any) -> dict[str, dict]:
    """The layers of an uploaded .h5ad (:func:`dhaka.io.h5ad_layers`), listed in a capped child process."""
    return h5ad_layers_sandboxed(upload, filename=upload.name, tmp_dir=upload_tmp_dir(),
                                 time_limit=min(60.0, upload_time_limit()))
