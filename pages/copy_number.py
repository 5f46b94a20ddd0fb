"""Copy number (paper Fig. 8): clone calls, genome-ordered heatmap, projection of a second sample."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.analysis import copy_number, projection
from dhaka.io import to_csv_safe
from dhaka.ui import copy_number as cnv, figures
from dhaka.ui import entrypoint, messages, state

entrypoint.require_entrypoint()

st.title("Copy number")
adata = state.require_dataset()
mode = state.get_preprocess().get("mode") or state.get_dataset_info().get("mode") or "expression"
if mode != "cnv":
    st.info("This page is for copy-number profiles (cells x genomic bins, mode **cnv** on the Data page). "
            "Try the simulated pair of tumour samples: a first sample with a major and a minor clone, and a "
            "later sample of the major clone only.")
    st.button("Load the copy-number demo", key="w.cnv.demo", on_click=cnv.load_demo, icon=":material/genetics:")

# ------------------------------------------------------------- clone calls
gmm = labels = None
if state.results_match_dataset():
    gmm, labels = cnv.clone_controls(state.get_latent())
else:
    st.info("Train a model on this dataset (Train page, mode cnv) to see clone calls in the heatmap, the latent "
            "space and the projection of a second sample.")

# ------------------------------------------------------------------ heatmap
st.subheader("Profiles in genome order")
order = st.radio("Cell order", ["hierarchical", "cluster"], horizontal=True, key="w.cnv.order",
                 format_func={"hierarchical": "Hierarchical clustering (Ward)",
                              "cluster": "Grouped by clone, hierarchical within"}.get,
                 disabled=labels is None)
with st.spinner("Ordering cells…"):
    heat = messages.safe_call(copy_number.figure_heatmap, adata.X, var=adata.var, clusters=labels,
                              order=order if labels is not None else "hierarchical", what="Heatmap")
if heat is not None:
    if not np.isfinite(copy_number.parse_bins(adata.var)["rank"]).any():
        st.caption("Bin names carry no chromosome and position (e.g. chr1:100-200): file order is used.")
    figures.chart(heat, "copy-number-heatmap", key="cnv_heat")

# ---------------------------------------------------------- latent + second
Z = state.require_latent()
est = state.get_estimator()
st.subheader("Latent space")
truth = state.get_truth_labels()
fig = plots.scatter(Z, color=None if labels is None else labels.astype(str), color_name="clone call",
                    color_type="categorical", cell_ids=[str(o) for o in adata.obs_names], title="Dhaka latent space")
figures.chart(fig, "copy-number-latent", key="cnv_latent")
if truth is not None and labels is not None:
    st.caption("Clone calls against the known labels:")
    st.dataframe(pd.crosstab(pd.Series(truth, name="truth"), pd.Series(labels, name="call")), key="cnv_cross")

st.subheader("Project a second sample")
second, src = cnv.second_sample()
if second is None:
    st.caption("No second sample: upload one above.")
    st.stop()
if est is None or labels is None:
    st.info("Projection needs the fitted model and clone calls of this session's result.")
    st.stop()
assign = st.radio("Assign projected cells by", ["centroid", "knn", "gmm"], horizontal=True, key="w.cnv.assign",
                  format_func={"centroid": "nearest clone centroid", "knn": "15 nearest reference cells",
                               "gmm": "the fitted mixture"}.get)
proj = messages.safe_call(projection.project, est, second, reference_latent=Z, reference_labels=labels,
                          assign=assign, gmm=gmm if assign == "gmm" else None, what="Projection")
if proj is None:
    st.stop()
st.caption(f"Projected {len(proj.labels):,} cells of {src}; {proj.n_matched} of {proj.n_features} model "
           "bins matched by name.")
if proj.missing:
    st.warning(f"{len(proj.missing)} bins of the model are missing from the second sample and were filled with "
               f"the training mean: {', '.join(proj.missing[:10])}{' …' if len(proj.missing) > 10 else ''}")
figures.chart(projection.figure_projection(Z, labels, proj), "projection", key="cnv_proj")
st.dataframe(proj.fractions, hide_index=True, key="cnv_fractions",
             column_config={"fraction": st.column_config.NumberColumn("fraction of second sample", format="percent"),
                            "reference_fraction": st.column_config.NumberColumn("fraction of first sample",
                                                                                format="percent")})
out = pd.DataFrame(proj.latent, columns=[f"dhaka_{i + 1}" for i in range(proj.latent.shape[1])],
                   index=proj.obs_names).assign(cluster=proj.labels)
st.download_button("Projected cells as CSV", to_csv_safe(out, index_label="cell").encode(), file_name="projected.csv",
                   mime="text/csv", key="w.cnv.csv", icon=":material/download:")
