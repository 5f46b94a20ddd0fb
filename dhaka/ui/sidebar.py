"""The app's shared sidebar: page links by section, the loaded dataset, the result in use and this session's
training job (polled while it runs)."""
from __future__ import annotations

from typing import Any

import streamlit as st

from dhaka.ui import state

__all__ = ["job_is_active", "navigation", "sidebar"]

ACTIVE = ("queued", "running")


def job_is_active(snapshot: dict[str, Any] | None) -> bool:
    """``True`` while a job snapshot says queued or running."""
    return snapshot is not None and snapshot.get("status") in ACTIVE


def _job_line(snap: dict[str, Any]) -> str:
    status = snap["status"]
    prog = snap.get("progress") or {}
    if status == "queued":
        return f"Training queued (position {snap.get('queue_position') or '?'})"
    if status == "running":
        ep, n = prog.get("epoch"), prog.get("n_epochs")
        if ep and n:
            return f"Training: epoch {ep}/{n}"
        return f"Training: {prog.get('message', 'starting')}"
    return {"done": "Last training: finished", "cancelled": "Last training: stopped",
            "failed": "Last training: failed"}.get(status, status)


def navigation(pages: dict[str, list[Any]]) -> None:
    """The sidebar's page links, by section (the app's ``st.navigation`` runs with ``position="hidden"``)."""
    for section, items in pages.items():
        st.caption(section)
        for p in items:
            st.page_link(p, label=p.title, icon=p.icon)


def sidebar(pages: dict[str, list[Any]] | None = None, *, job_status: bool = True) -> None:
    """The shared sidebar: page links, current dataset and this session's job status (live while it runs).

    ``job_status=False`` leaves the job line out (the Train page shows the job itself, and a second
    poll would only slow the training down).
    """
    with st.sidebar:
        if pages:
            navigation(pages)
            st.divider()
        info = state.get_dataset_info()
        adata = state.get_dataset()
        if adata is None:
            st.caption("No dataset loaded")
        else:
            st.markdown(f"**Dataset:** {info.get('name', 'unnamed')}  \n"
                        f"{adata.n_obs:,} cells × {adata.n_vars:,} genes")
        res = state.get_result_info()
        if state.results_match_dataset():
            st.caption(f"Model: run {res.get('run_id') or '(unsaved)'}"
                       + (f" · {state.get_cluster_k()} clusters" if state.get_cluster_k() else ""))
        job = state.get_job()
        active = job is not None and not job.done
        if not job_status:
            return

        @st.fragment(run_every=5.0 if active else None)
        def _status() -> None:
            j = state.get_job()
            if j is None:
                return
            j.touch()  # the person is still here (the sidebar polls on every page)
            snap = j.snapshot()
            line = _job_line(snap)
            if job_is_active(snap):
                st.info(line, icon=":material/model_training:")
            elif snap["status"] == "failed":
                st.error(line, icon=":material/error:")
            else:
                st.caption(line)
            if active and not job_is_active(snap):
                st.rerun()

        _status()
