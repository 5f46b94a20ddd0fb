"""Library-wide settings, scanpy style: ``dhaka.settings.verbosity``.

``verbosity``: 0 errors only, 1 warnings and progress bars, 2 (default) also info lines (what a fit
is doing: cells, features, threads, clusters called), 3 also debug lines. Messages go through the
``dhaka`` logger (one per module, ``logging.getLogger(__name__)``) to stderr; a program that
configures :mod:`logging` itself can attach its own handlers to ``"dhaka"`` instead.

Environment: ``DHAKA_VERBOSITY`` sets the starting value.
"""
from __future__ import annotations

import logging
import os
import sys

__all__ = ["verbosity", "set_verbosity", "progress_enabled"]

_LEVELS = {0: logging.ERROR, 1: logging.WARNING, 2: logging.INFO, 3: logging.DEBUG}


class _StderrHandler(logging.StreamHandler):
    """Writes to whatever ``sys.stderr`` is at the time (a notebook or a test may replace it)."""

    def __init__(self) -> None:
        super().__init__(sys.stderr)

    @property
    def stream(self):  # noqa: D102
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


_logger = logging.getLogger("dhaka")
_handler = _StderrHandler()
_handler.setFormatter(logging.Formatter("dhaka: %(message)s"))
_logger.addHandler(_handler)
_logger.propagate = False

verbosity: int = 2


def set_verbosity(level: int) -> None:
    """Set :data:`verbosity` (0-3) and the ``dhaka`` logger's level with it."""
    global verbosity
    level = int(level)
    if level not in _LEVELS:
        raise ValueError(f"verbosity must be 0, 1, 2 or 3, got {level}")
    verbosity = level
    _logger.setLevel(_LEVELS[level])


def progress_enabled() -> bool:
    """Whether fits show a progress bar (verbosity 1 or more)."""
    return verbosity >= 1


set_verbosity(int(os.environ.get("DHAKA_VERBOSITY", "2") or 2))
