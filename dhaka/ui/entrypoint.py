"""Every page runs inside ``app.py``: the guard a page calls first, and the context ``app.py`` runs the page in.

While no session of a server has called ``st.navigation`` yet, Streamlit treats the ``pages/`` folder next
to ``app.py`` as a legacy multipage app: a URL such as ``/train`` then runs ``pages/train.py`` on its
own, without the app's state, sidebar and job hand-over (AppTest starts every run in that mode too).
:func:`require_entrypoint` turns such a run into a run of ``app.py``, whose ``st.navigation`` call ends
the legacy mode for every session (Streamlit's documented behaviour) and runs the page asked for.

Streamlit's own way out is a page folder with another name than ``pages/`` (its docs call ``pages/`` the
legacy mechanism); then no run is ever a legacy one and this guard goes.  The folder keeps its name for
now because tests, benchmarks and deployment scripts name its files.
"""
from __future__ import annotations

import contextlib
import runpy
import threading
from pathlib import Path
from typing import Iterator

import streamlit as st
from streamlit.runtime.scriptrunner import get_script_run_ctx

__all__ = ["APP_SCRIPT", "entrypoint", "require_entrypoint"]

_ENTRY = threading.local()
#: The app's entry script (``streamlit run app.py``).
APP_SCRIPT = Path(__file__).resolve().parents[2] / "app.py"


@contextlib.contextmanager
def entrypoint() -> Iterator[None]:
    """``app.py`` runs the selected page inside this: :func:`require_entrypoint` then lets it through."""
    _ENTRY.active = True
    try:
        yield
    finally:
        _ENTRY.active = False


def require_entrypoint() -> None:
    """First line of every page: make sure the page runs inside ``app.py``'s navigation.

    A run of the page outside :func:`entrypoint` (a legacy ``pages/`` run, see the module's note) runs
    ``app.py`` in its place, in the same script run, so that widget events of this run (a button
    click) are not lost, and stops.  A page that is itself the script being run (a test of one page)
    runs on.
    """
    if getattr(_ENTRY, "active", False):
        return
    ctx = get_script_run_ctx()
    if ctx is None or Path(ctx.pages_manager.main_script_path).resolve() != APP_SCRIPT:
        return  # the page itself is the script being run (a test of one page), not a page of the app
    runpy.run_path(str(APP_SCRIPT), run_name="__main__")
    st.stop()
