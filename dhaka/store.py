"""Crash-safe files and model folders: the atomic writers and the model-folder check.

Core pieces that both the estimator (``Dhaka.save`` / ``Dhaka.load``) and the run
store (:mod:`dhaka.runs`) use, so the core never imports the run store:

* every file is written to a temporary name in the same folder, flushed,
  ``fsync``-ed and moved into place with :func:`os.replace`
  (:func:`atomic_write_bytes`, :func:`atomic_write_json`);
* folders are filled under a temporary name, fsync-ed, and renamed in
  (:func:`atomic_write_dir`);
* a model folder holds only known, code-free files (:func:`check_model_dir`).
"""
from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import os
import secrets
import shutil
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

__all__ = ["MODEL_FILES", "MODEL_REQUIRED", "ModelDirError", "atomic_write_bytes", "atomic_write_dir",
           "atomic_write_json", "check_model_dir", "is_occupied"]

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
def is_occupied(path: str | os.PathLike[str]) -> bool:
    """Whether writing a folder at ``path`` would replace something: a file, or a folder that is not empty."""
    p = Path(path)
    return p.exists() and (not p.is_dir() or any(p.iterdir()))


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
