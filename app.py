"""Dhaka Explorer: the Streamlit app. Run with ``streamlit run app.py``.

This file sets up the page, the session state (a fresh session starts with
the paper-style simulation loaded, ready to train), the shared sidebar, the
background UMAP warm-up and the navigation. Pages live in ``pages/``; the
analysis pages are listed only when their files exist.
"""
from __future__ import annotations

import logging
from pathlib import Path

import streamlit as st

from dhaka.ui import cached, demos, state, widgets

HERE = Path(__file__).resolve().parent

st.set_page_config(page_title="Dhaka Explorer", page_icon=":material/scatter_plot:", layout="wide",
                   initial_sidebar_state="expanded")

state.init_state()
cached.umap_warmup()  # once per server process, in a background thread

if state.get_dataset() is None and not st.session_state.get("dhaka.default_loaded"):
    st.session_state["dhaka.default_loaded"] = True
    try:
        adata, second = cached.load_demo(demos.DEFAULT_DEMO)
        demo = demos.get(demos.DEFAULT_DEMO)
        state.set_dataset(adata, name=demo.title, source="demo", demo=demo.key, truth=demo.truth,
                          mode=demo.mode, second=second)
    except Exception as exc:  # noqa: BLE001 - the Data page still works
        state.push_notice("warning", f"The default demo could not be loaded: {widgets.error_message(exc)}")

widgets.collect_finished_job()

# Every url_path differs from its file's stem on purpose: with a folder named pages/, Streamlit's
# legacy multipage wrapper would otherwise run e.g. pages/train.py directly for the URL /train,
# skipping this script (no sidebar, no state set-up, no job hand-over).
pages = {
    "Workflow": [
        st.Page(str(HERE / "pages" / "data.py"), title="Data", icon=":material/table_view:", default=True),
        st.Page(str(HERE / "pages" / "train.py"), title="Train", icon=":material/model_training:",
                url_path="training"),
        st.Page(str(HERE / "pages" / "explore.py"), title="Explore", icon=":material/scatter_plot:",
                url_path="latent-space"),
        st.Page(str(HERE / "pages" / "runs.py"), title="Runs", icon=":material/history:",
                url_path="run-history"),
    ],
}
ANALYSES = [  # owned by the analysis room; shown once their files exist
    ("robustness.py", "Robustness to dropout", ":material/grain:", "dropout-robustness"),
    ("compare.py", "Compare structures", ":material/compare:", "structure-comparison"),
    ("copy_number.py", "Copy number", ":material/genetics:", "copy-number-analysis"),
    ("trajectory.py", "Trajectory", ":material/timeline:", "pseudotime"),
    ("differential.py", "Differential expression", ":material/bar_chart:", "differential-expression"),
]
analyses = [st.Page(str(HERE / "pages" / f), title=t, icon=i, url_path=u)
            for f, t, i, u in ANALYSES if (HERE / "pages" / f).is_file()]
if analyses:
    pages["Analyses"] = analyses

page = st.navigation(pages)
widgets.sidebar()
with st.sidebar:
    st.caption("Dhaka: Rashid, Shah & Pandya, *Bioinformatics* 2019. "
               + ("Fast demo mode (DHAKA_DEMO_FAST)." if demos.demo_fast() else ""))
widgets.show_notices()
try:
    page.run()
except Exception as exc:  # noqa: BLE001 - last line of defence: a message, never a traceback, in the UI
    logging.getLogger("dhaka.app").exception("page %s failed", page.title)
    st.error(f"Something went wrong on this page: {widgets.error_message(exc)}. "
             "Your data and results are kept; the details are in the server log.")
