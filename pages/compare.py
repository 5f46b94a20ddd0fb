"""Compare network structures (paper Table 1) and show the warm-start report of the model in use."""
from __future__ import annotations

import pandas as pd
import streamlit as st

from dhaka.analysis import structures
from dhaka.io import to_csv_safe
from dhaka.ui import cached, demos, figures, owner, state, widgets

widgets.require_entrypoint()

JOB_KEY = "dhaka.analysis.compare.job"        # this page's background job
RESULT_KEY = "dhaka.analysis.compare.result"  # (dataset key, DataFrame) of the last comparison
POLL_SECONDS = 1.0
PRESETS = {"deep": "deep (1024-512-256)", "shallow": "shallow (1024)"}

st.title("Compare structures")
adata = state.require_dataset()
info = state.get_dataset_info()
st.caption("Paper Table 1: Dhaka trained with each structure on the same data (and t-SNE on the same genes); "
           "GMM-BIC clusters of every latent space scored by ARI against known labels and by silhouette.")

# ------------------------------------------------------------ warm starts
est = state.get_estimator()
if est is not None and getattr(est, "start_scores_", None) and state.results_match_dataset():
    with st.expander("Warm starts of the model in use", expanded=len(est.start_scores_) > 1):
        ws = structures.warm_start_table(est)
        if len(ws) == 1:
            st.caption("The model was trained with one start (set *random starts* on the Train page to compare "
                       "several; the one whose GMM clusters have the best silhouette is kept).")
        st.dataframe(ws, hide_index=True, key="cmp_ws")

# --------------------------------------------------------------- settings
cols = ["(none)"] + [str(c) for c in adata.obs.columns]
truth = state.get_truth_column()
c1, c2 = st.columns(2)
label_col = c1.selectbox("Known labels (for ARI)", cols, index=cols.index(truth) if truth in cols else 0,
                         key="w.cmp.labels")
chosen = c2.multiselect("Structures", list(PRESETS), default=list(PRESETS), format_func=PRESETS.get,
                        key="w.cmp.structures")
custom = st.text_input("Extra structure (hidden widths, comma separated; optional)", "", key="w.cmp.custom",
                       placeholder="e.g. 256, 64")
params = state.get_estimator_params()
if demos.demo_fast():
    params = {**params, **demos.fast_train_params()}
c3, c4, c5 = st.columns(3)
epochs = c3.number_input("Epochs per structure", 1, 2000, int(params.get("epochs", 200)), key="w.cmp.epochs")
include_tsne = c4.checkbox("Include t-SNE", value=True, key="w.cmp.tsne")
include_pca = c5.checkbox("Include PCA", value=False, key="w.cmp.pca")

structs: list = list(chosen)
if custom.strip():
    try:
        widths = tuple(int(w) for w in custom.replace(";", ",").split(",") if w.strip())
        if not widths or min(widths) < 1:
            raise ValueError
        structs.append(widths)
    except ValueError:
        st.error(f"Could not read {custom!r} as layer widths: give positive integers separated by commas.")
        st.stop()

job = st.session_state.get(JOB_KEY)
active = job is not None and not job.done
if st.button("Compare", type="primary", key="w.cmp.start", icon=":material/play_arrow:",
             disabled=active or not (structs or include_tsne or include_pca)):
    y = None if label_col == "(none)" else label_col
    est_params = {**params, "epochs": int(epochs)}
    data, key = adata, info.get("key")

    def task(ctx):
        def progress(p):
            ctx.report(history_row=p["row"], done=p["done"], total=p["total"], message=p["message"])

        df = structures.compare_structures(data, structures=tuple(structs), include_tsne=include_tsne,
                                           include_pca=include_pca, labels=y, estimator_params=est_params,
                                           seed=int(est_params.get("seed", 0)), progress=progress,
                                           stop_event=ctx.stop_event)
        return key, df

    new = widgets.safe_call(cached.job_manager().submit, task, owner=owner.owner_key(),
                            name=f"structure comparison on {info.get('name')}", kind="analysis",
                            what="Could not start the comparison")
    if new is not None:
        st.session_state[JOB_KEY] = new
        st.rerun()


@st.fragment(run_every=POLL_SECONDS if active else None)
def progress_panel() -> None:
    """Progress and the rows finished so far."""
    j = st.session_state.get(JOB_KEY)
    if j is None:
        return
    snap = widgets.analysis_job_status(j, key="w.cmp", what="comparison", default_total=len(structs),
                                       start_message="training the first structure…")
    if snap["status"] == "running" and snap["history"]:
        st.dataframe(pd.DataFrame(snap["history"]), hide_index=True)
    if j.done and j.result is not None and st.session_state.get(RESULT_KEY, (None, None))[1] is not j.result[1]:
        st.session_state[RESULT_KEY] = j.result
    if active and j.done:
        st.rerun()


progress_panel()

key, table = st.session_state.get(RESULT_KEY, (None, None))
if table is None or table.empty:
    st.stop()
if key != info.get("key"):
    st.caption("These results were computed on a previously loaded dataset.")
if table.attrs.get("stopped"):
    st.warning("The comparison was stopped; only the finished rows are shown.")
st.dataframe(table, hide_index=True, key="cmp_table",
             column_config={"seconds": st.column_config.NumberColumn(format="%.1f s")})
figures.chart(structures.figure_structures(table), "structures", key="cmp_bar")
st.download_button("Table as CSV", to_csv_safe(table, index=False).encode(), file_name="structures.csv",
                   mime="text/csv", key="w.cmp.csv", icon=":material/download:")
