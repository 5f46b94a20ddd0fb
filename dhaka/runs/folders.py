"""Run folders on disk: the bytes one holds, and its removal (renamed out of ``runs/`` first, then deleted)."""
from __future__ import annotations

import contextlib
import os
import secrets
import shutil
from pathlib import Path

from dhaka.store import _fsync_dir

__all__ = ["remove_run_dir", "tree_size"]


def tree_size(path: Path) -> int:
    """Bytes of the files under ``path`` (links counted as themselves, unreadable entries as 0)."""
    total = 0
    for dirpath, _dirnames, filenames in os.walk(path):
        for name in filenames:
            with contextlib.suppress(OSError):
                total += os.lstat(os.path.join(dirpath, name)).st_size
    return total


def remove_run_dir(runs_dir: Path, path: Path) -> int:
    """Rename the run folder ``path`` out of ``runs_dir`` and delete it; returns the bytes freed.

    The rename is one step, so a run is listed whole or not at all; a crash before the deletion
    ends leaves a hidden ``.<id>.deleted-*`` folder that the next clean-up removes.
    """
    size = tree_size(path)
    trash = runs_dir / f".{path.name}.deleted-{secrets.token_hex(4)}"
    os.rename(path, trash)
    _fsync_dir(runs_dir)
    shutil.rmtree(trash, ignore_errors=True)
    return size
