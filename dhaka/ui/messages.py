"""What the person is told: errors as one line without a traceback, text from files or other people
escaped for Markdown, and the session's one-shot notices."""
from __future__ import annotations

import re
from typing import Any, Callable, TypeVar

import streamlit as st

from dhaka.ui import state

__all__ = ["error_message", "plain", "safe_call", "show_notices"]

T = TypeVar("T")


def plain(text: Any) -> str:
    """``text`` with Markdown's special characters escaped, for names and messages that come from files
    or other people (shown by ``st.error`` / ``st.caption``, which render Markdown)."""
    return re.sub(r"([\\`*_{}\[\]()#+\-.!|<>~$:])", r"\\\1", str(text))


def error_message(exc: BaseException) -> str:
    """A one-line user-facing message for an exception (no traceback)."""
    msg = str(exc).strip()
    if isinstance(exc, KeyError) and msg.startswith(("'", '"')):
        msg = msg[1:-1]
    return msg or type(exc).__name__


def safe_call(fn: Callable[..., T], *args: Any, what: str | None = None, **kwargs: Any) -> T | None:
    """Call a library function; on any exception show ``st.error`` and return ``None``.

    Parameters
    ----------
    fn
        The function to call.
    what
        Prefix of the error message, e.g. ``"Could not read the file"``.
    """
    try:
        return fn(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001 - the UI never shows a traceback
        msg = error_message(exc)
        st.error(f"{what}: {msg}" if what else msg)
        return None


def show_notices() -> None:
    """Show and clear the session's one-shot messages."""
    for level, text in state.pop_notices():
        getattr(st, level if level in ("info", "success", "warning", "error") else "info")(text)
