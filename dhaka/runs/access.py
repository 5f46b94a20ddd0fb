"""Who may do what with a run.

Every run records its ``owner`` (the person's owner key in the app) and a ``shared`` flag.  A caller
says who asks: ``owner=`` (a person: their runs, plus runs others shared for reading) or
``admin=True`` (a lab admin, the CLI, a maintenance pass: every run).  Asking as nobody is an error, so
a forgotten owner cannot silently list everyone's runs.  Runs with no owner (made by the library
directly, or before owners existed) are seen only by admins until one shares them.
"""
from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from dhaka.runs.record import RunError

__all__ = ["Action", "RunPermissionError", "check_access", "who_asks"]

Action = Literal["open", "delete", "share", "annotate"]


class RunPermissionError(RunError, PermissionError):
    """The run belongs to someone else (and is not shared, or the action is the owner's alone)."""


def who_asks(owner: str | None, admin: bool, action: str) -> str | None:
    """The owner asking, or ``None`` for an admin; refuses a call that says neither."""
    if admin:
        return None
    if not isinstance(owner, str) or not owner:
        raise ValueError(
            f"RunStore.{action}: say who asks: owner=<the person's owner key>, or admin=True for a lab "
            "admin or a trusted caller (CLI, maintenance).")
    return owner


def check_access(run_id: str, record: Mapping[str, Any], owner: str | None, *, action: Action) -> None:
    """Refuse ``action`` on a run (described by its ``record``) to ``owner`` (``None``: an admin) unless allowed.

    The owner may do anything; others may only open a shared run.

    Raises
    ------
    RunPermissionError
        Naming the run and what only its owner or a lab admin may do.
    """
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
