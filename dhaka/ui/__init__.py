"""The Streamlit layer of Dhaka Explorer (the only package besides ``app.py`` and ``pages/`` that imports streamlit).

Modules
-------
state
    Session-state keys as constants, typed getters/setters, ``require_*`` guards.
cached
    ``st.cache_data`` / ``st.cache_resource`` wrappers around dhaka calls, keyed by content digests.
widgets
    Settings forms returning kwargs dicts, the colour control, downloads, sidebar, job hand-over.
demos
    The built-in demo datasets (no streamlit import).
tasks
    The training job function and download builders (no streamlit import; runs in worker threads).
"""
from __future__ import annotations
