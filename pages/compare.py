"""Compare network structures (paper Table 1) and show the warm-start report of the model in use."""
from __future__ import annotations

import streamlit as st

from dhaka.analysis import structures
from dhaka.io import to_csv_safe
from dhaka.ui import demos, entrypoint, figures, state, tasks
from dhaka.ui.analysis_job import AnalysisJob

entrypoint.require_entrypoint()

JOB = AnalysisJob("dhaka.analysis.compare", widget_key="w.cmp", what="comparison")  # result: a DataFrame
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
            st.caption("The model was trained with one start (set *Warm starts* on the Train page to compare "
                       "several; *Keep the start* chooses which one is kept: by default the start whose clusters "
                       "agree best with the other starts').")
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

if st.button("Compare", type="primary", key="w.cmp.start", icon=":material/play_arrow:",
             disabled=JOB.active() or not (structs or include_tsne or include_pca)):
    JOB.submit(tasks.structures_task(adata, structures=tuple(structs), include_tsne=include_tsne,
                                     include_pca=include_pca, labels=None if label_col == "(none)" else label_col,
                                     estimator_params={**params, "epochs": int(epochs)}),
               name=f"structure comparison on {info.get('name')}")
JOB.progress(default_total=len(structs), start_message="training the first structure…")

table = JOB.result_for_dataset()
if table is None or table.empty:
    st.stop()
if table.attrs.get("stopped"):
    st.warning("The comparison was stopped; only the finished rows are shown.")
st.dataframe(table, hide_index=True, key="cmp_table",
             column_config={"seconds": st.column_config.NumberColumn(format="%.1f s")})
figures.chart(structures.figure_structures(table), "structures", key="cmp_bar")
st.download_button("Table as CSV", to_csv_safe(table, index=False).encode(), file_name="structures.csv",
                   mime="text/csv", key="w.cmp.csv", icon=":material/download:")
