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
    The training and analysis job functions and download builders (no streamlit import; run in worker threads).
analysis_job
    One submit-and-poll widget for every page that runs an analysis as a background job.
views
    What the Explore page shows: clusters in use, the state of each comparison view, per-view scores.
annotate
    The person's labels of cells (rename / merge clusters, label a lasso selection), kept with the run.
"""
from __future__ import annotations
