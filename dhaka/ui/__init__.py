"""The Streamlit layer of Dhaka Explorer (the only package besides ``app.py`` and ``pages/`` that imports streamlit).

Modules
-------
state
    Session-state keys as constants, typed getters/setters, ``require_*`` guards.
cached
    ``st.cache_data`` / ``st.cache_resource`` wrappers around dhaka calls, keyed by content digests.
owner
    Who is using the app: one owner key per person; the run store as that person sees it.
entrypoint
    The guard every page calls first, so that a page always runs inside ``app.py``.
sidebar
    The shared sidebar: page links, the loaded dataset, the result in use, this session's training job.
messages
    Errors as one line (``safe_call``), Markdown-safe text (``plain``), the session's one-shot notices.
forms
    The Data and Train settings forms, returning keyword arguments of :class:`dhaka.Dhaka`.
color
    The colour control every view of the cells shares.
figures
    Charts with their SVG / PNG / HTML downloads; box and lasso selections on them.
handover
    A finished training taken into the session, and the comparison views computed after it.
runs_open
    A stored run opened as the session's result.
demos
    The built-in demo datasets (no streamlit import).
tasks
    The training and analysis job functions and download builders (no streamlit import; they run in
    background jobs, a training in a process of its own: ``train_worker``, ``training``).
analysis_job
    One submit-and-poll widget for every page that runs an analysis as a background job.
views
    What the Explore page shows: clusters in use, the state of each comparison view, per-view scores.
annotate
    The person's labels of cells (rename / merge clusters, label a lasso selection), kept with the run.
groups, copy_number, live_chart
    The Differential expression page's two groups, the Copy number page's choices, the live loss curves.
views_worker, upload_worker, worker_process
    The UMAP worker process, the capped upload parser, and the process-and-socket plumbing they share.
"""
from __future__ import annotations
