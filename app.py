"""Dhaka Explorer: the Streamlit app. Run with ``streamlit run app.py``.

This file sets up the page, the session state (a fresh session starts with
the paper-style simulation loaded, ready to train), the shared sidebar, the
background UMAP warm-up, a spare training process and the navigation. Pages live in ``pages/``.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path

import streamlit as st

from dhaka.runs import start_maintenance
from dhaka.ui import cached, demos, entrypoint, handover, messages, owner, sidebar, state, tasks, train_worker

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="Dhaka Explorer", page_icon=":material/scatter_plot:", layout="wide",
                   initial_sidebar_state="expanded")

state.init_state()
cached.job_manager().touch(owner.owner_key())  # this person is here: their jobs are not abandoned
start_maintenance()  # run-store clean-up: once per server process at start-up, then daily
cached.views_worker()  # once per server process: compiles UMAP in a low-priority process
if not tasks.train_in_thread():
    train_worker.prestart_once()  # a training process with torch imported waits for the first Start

if state.get_dataset() is None and not st.session_state.get("dhaka.default_loaded"):
    st.session_state["dhaka.default_loaded"] = True
    try:
        adata, second = cached.load_demo(demos.DEFAULT_DEMO)
        demo = demos.get(demos.DEFAULT_DEMO)
        state.set_dataset(adata, name=demo.title, source="demo", demo=demo.key, truth=demo.truth,
                          mode=demo.mode, second=second)
    except Exception as exc:  # noqa: BLE001 - the Data page still works
        state.push_notice("warning", f"The default demo could not be loaded: {messages.error_message(exc)}")

handover.collect_finished_job()

# Each page's URL is its file's stem (/train, /explore, ...). Streamlit runs the very first session of a
# server in its legacy pages/ mode, where a URL names a file of pages/ and that file runs without this
# script; every page therefore starts with entrypoint.require_entrypoint(), which reruns through here.
# The navigation is drawn by sidebar.sidebar() (client.showSidebarNavigation = false in
# .streamlit/config.toml), so that legacy first run cannot flash a list of raw file names.
pages = {
    "Workflow": [
        st.Page(str(HERE / "pages" / "data.py"), title="Data", icon=":material/table_view:", default=True),
        st.Page(str(HERE / "pages" / "train.py"), title="Train", icon=":material/model_training:"),
        st.Page(str(HERE / "pages" / "explore.py"), title="Explore", icon=":material/scatter_plot:"),
        st.Page(str(HERE / "pages" / "runs.py"), title="Runs", icon=":material/history:"),
    ],
    "Analyses": [
        st.Page(str(HERE / "pages" / "robustness.py"), title="Robustness to dropout", icon=":material/grain:"),
        st.Page(str(HERE / "pages" / "compare.py"), title="Compare structures", icon=":material/compare:"),
        st.Page(str(HERE / "pages" / "copy_number.py"), title="Copy number", icon=":material/genetics:"),
        st.Page(str(HERE / "pages" / "trajectory.py"), title="Trajectory", icon=":material/timeline:"),
        st.Page(str(HERE / "pages" / "differential.py"), title="Differential expression",
                icon=":material/bar_chart:"),
    ],
}
page = st.navigation(pages, position="hidden")
sidebar.sidebar(pages, job_status=page.title != "Train")
with st.sidebar:
    st.caption("Dhaka: Rashid, Shah & Pandya, *Bioinformatics* 2019. "
               + ("Fast demo mode (DHAKA_DEMO_FAST)." if demos.demo_fast() else ""))
messages.show_notices()
try:
    with entrypoint.entrypoint():
        page.run()
except Exception as exc:  # noqa: BLE001 - last line of defence: a message, never a traceback, in the UI
    if os.environ.get("DHAKA_RAISE_ERRORS", "").strip().lower() in ("1", "true", "yes", "on"):
        raise  # tests: an error on any page is a failure, not a banner
    logging.getLogger("dhaka.app").exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page: {messages.error_message(exc)}. "
             "Your data and results are kept; the details are in the server log.")
