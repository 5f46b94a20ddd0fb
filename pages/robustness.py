"""Robustness to dropout (paper Fig. 3 / 6): inject extra dropout, re-embed, re-cluster, score."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dhaka import plots
from dhaka.analysis import robustness
from dhaka.io import to_csv_safe
from dhaka.ui import demos, entrypoint, figures, state, tasks
from dhaka.ui.analysis_job import AnalysisJob

entrypoint.require_entrypoint()

JOB = AnalysisJob("dhaka.analysis.robustness", widget_key="w.rob", what="study")  # result: a DropoutStudy
METHOD_LABELS = {"dhaka": "Dhaka", "pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}

st.title("Robustness to dropout")
adata = state.require_dataset()
info = state.get_dataset_info()
st.caption("Paper Fig. 3 and 6: a seeded fraction of every cell's non-zero values is set to zero, each method "
           "re-embeds the data, GMM-BIC calls clusters, and the calls are scored — ARI against known labels "
           "when there are some, otherwise the silhouette of the calls.")

# ------------------------------------------------------------------ settings
cols = ["(none: silhouette only)"] + [str(c) for c in adata.obs.columns]
truth = state.get_truth_column()
c1, c2 = st.columns(2)
label_col = c1.selectbox("Known labels (for ARI)", cols, index=cols.index(truth) if truth in cols else 0,
                         key="w.rob.labels")
methods = c2.multiselect("Methods", list(METHOD_LABELS), default=list(METHOD_LABELS), key="w.rob.methods",
                         format_func=METHOD_LABELS.get)
levels_pct = st.multiselect("Extra dropout levels (% of each cell's non-zeros)", [0, 5, 10, 20, 30, 40, 50, 60],
                            default=[0, 10, 20, 30, 50], key="w.rob.levels")
params = state.get_estimator_params()
if demos.demo_fast():
    params = {**params, **demos.fast_train_params()}
c3, c4, c5 = st.columns(3)
epochs = c3.number_input("Dhaka epochs per level", 1, 2000, int(params.get("epochs", 200)), key="w.rob.epochs",
                         help="Other settings come from the Data and Train pages.")
k_max = c4.number_input("Largest k tried (BIC)", 2, 30, 10, key="w.rob.kmax")
seed = c5.number_input("Seed", 0, 10**6, int(params.get("seed", 0)), key="w.rob.seed")
if "umap" in methods:
    st.caption("The first UMAP of a server process compiles numba code (about a minute); the app starts that "
               "in the background when it opens.")

if st.button("Run dropout study", type="primary", key="w.rob.start", icon=":material/play_arrow:",
             disabled=JOB.active() or not methods or not levels_pct):
    JOB.submit(tasks.dropout_task(adata, levels=tuple(sorted(v / 100 for v in levels_pct)), methods=tuple(methods),
                                  labels=None if label_col.startswith("(none") else label_col,
                                  estimator_params={**params, "epochs": int(epochs)}, k_max=int(k_max),
                                  seed=int(seed)),
               name=f"dropout study on {info.get('name')}")


def _stopped_notice(status: str, study) -> None:
    if status == "cancelled" or study.stopped:
        state.push_notice("warning", "Dropout study stopped; the rows finished so far are shown.")


JOB.progress(on_result=_stopped_notice)

# ------------------------------------------------------------------- results
study = JOB.result_for_dataset()
if study is None or study.table.empty:
    st.stop()
table = study.table
metric = study.metric
st.subheader("Scores against dropout")
f1, f2 = st.columns(2)
figures.chart(robustness.figure_curve(table, metric=metric), "robustness", {"metric": metric}, key="rob_curve",
              container=f1)
figures.chart(robustness.figure_curve(table, metric="n_clusters"), "robustness-k", key="rob_k", container=f2)
show = table.assign(method=table["method"].map(METHOD_LABELS).fillna(table["method"]))
st.dataframe(show, hide_index=True, column_config={"level": st.column_config.NumberColumn(format="percent")})
st.download_button("Table as CSV", to_csv_safe(show, index=False).encode(), file_name="dropout_curve.csv",
                   mime="text/csv", key="w.rob.csv", icon=":material/download:")

st.subheader("Dropout before and after injection, with the matching latent spaces")
levels = sorted(study.dropout_fractions)
v1, v2 = st.columns(2)
level = v1.select_slider("Level", levels, value=levels[-1], key="w.rob.view_level", format_func=lambda v: f"{v:.0%}")
done_methods = [m for m in METHOD_LABELS if (level, m) in study.embeddings]
method = v2.selectbox("Method", done_methods or ["-"], key="w.rob.view_method", format_func=lambda m: METHOD_LABELS.get(m, m))
h1, h2 = st.columns(2)
figures.chart(robustness.figure_dropout_histograms(study, levels=sorted({levels[0], level})), "dropout",
              {"level": level}, key="rob_hist", container=h1)
if (level, method) in study.embeddings:
    Z = study.embeddings[(level, method)]
    colour = study.labels if study.labels is not None else study.clusters[(level, method)]
    fig = plots.scatter(Z, color=np.asarray(colour).astype(str), color_name="label" if study.labels is not None
                        else "GMM cluster", color_type="categorical", cell_ids=[str(o) for o in adata.obs_names]
                        if len(adata.obs_names) == Z.shape[0] else None,
                        title=f"{METHOD_LABELS.get(method, method)} at {level:.0%} extra dropout")
    figures.chart(fig, "robustness-latent", {"level": level, "method": method}, key="rob_latent", container=h2)
