"""Copy number (paper Fig. 8): clone calls, genome-ordered heatmap, projection of a second sample."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.analysis import copy_number, projection
from dhaka.io import to_csv_safe
from dhaka.ui import cached, demos, figures, state, tasks, widgets

widgets.require_entrypoint()

CALLS_KEY = "dhaka.analysis.cnv.calls"          # (latent digest, min size, GMMResult)
UPLOAD_KEY = "dhaka.analysis.cnv.second_upload"  # (file name, AnnData) of an uploaded second sample

st.title("Copy number")
adata = state.require_dataset()
info = state.get_dataset_info()
mode = state.get_preprocess().get("mode") or info.get("mode") or "expression"


def load_cnv_demo() -> None:
    first, second = cached.load_demo("cnv_pair")
    demo = demos.get("cnv_pair")
    state.set_dataset(first, name=demo.title, source="demo", demo=demo.key, truth=demo.truth, mode="cnv",
                      second=second)


if mode != "cnv":
    st.info("This page is for copy-number profiles (cells x genomic bins, mode **cnv** on the Data page). "
            "Try the simulated pair of tumour samples: a first sample with a major and a minor clone, and a "
            "later sample of the major clone only.")
    st.button("Load the copy-number demo", key="w.cnv.demo", on_click=load_cnv_demo, icon=":material/genetics:")

# ------------------------------------------------------------- clone calls
labels = None
Z = state.get_latent() if state.results_match_dataset() else None
if Z is not None:
    c1, c2 = st.columns([2, 1])
    robust = c1.toggle("Robust clone calls", value=True, key="w.cnv.robust",
                       help="GMM-BIC over-splits the heavy-tailed clouds that per-cell private events make. "
                            "Robust calls join mixture components whose union is unimodal and fold clusters "
                            "smaller than the minimum clone size into the clone they fit best (dhaka.analysis.copy_number.call_clones).")
    min_size = c2.selectbox("Minimum clone size", ["auto", 0.01, 0.02, 0.05, 0.1, None], key="w.cnv.min",
                            disabled=not robust,
                            format_func=lambda v: "auto (10 cells or 1%)" if v == "auto" else
                            "none" if v is None else f"{v:.0%} of cells")
    if robust:
        digest = state.get_result_info().get("latent_digest") or tasks.digest(Z)
        cached_calls = st.session_state.get(CALLS_KEY)
        if cached_calls is None or cached_calls[:2] != (digest, min_size):
            with st.spinner("Calling clones…"):
                res = widgets.safe_call(copy_number.call_clones, Z, min_cluster_size=min_size,
                                        seed=int(state.get_estimator_params().get("seed", 0)),
                                        what="Clone calling")
            cached_calls = (digest, min_size, res)
            st.session_state[CALLS_KEY] = cached_calls
        gmm = cached_calls[2]
        labels = None if gmm is None else np.asarray(gmm.labels)
        if labels is not None:
            k = len(np.unique(labels))
            c1.caption(f"{k} clone{'s' if k != 1 else ''} called (GMM-BIC chose {gmm.n_components} components).")
            if st.button("Use these clone calls as the clusters on every page", key="w.cnv.use"):
                state.set_clusters(labels, k=k)
                st.toast("Clone calls are now the clusters in use.")
    else:
        gmm = state.get_gmm()
        labels = state.get_clusters()
else:
    gmm = None
    st.info("Train a model on this dataset (Train page, mode cnv) to see clone calls in the heatmap, the latent "
            "space and the projection of a second sample.")

# ------------------------------------------------------------------ heatmap
st.subheader("Profiles in genome order")
order = st.radio("Cell order", ["hierarchical", "cluster"], horizontal=True, key="w.cnv.order",
                 format_func={"hierarchical": "Hierarchical clustering (Ward)",
                              "cluster": "Grouped by clone, hierarchical within"}.get,
                 disabled=labels is None)
with st.spinner("Ordering cells…"):
    heat = widgets.safe_call(copy_number.figure_heatmap, adata.X, var=adata.var, clusters=labels,
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
second = state.get_second_dataset()
src = "the second sample of the loaded demo"
up = st.file_uploader("…or upload one (same kind of bins, matched by name)", key="w.cnv.upload",
                      type=["csv", "tsv", "txt", "gz", "h5ad", "zip", "npz", "mtx"])
if up is not None:
    prev = st.session_state.get(UPLOAD_KEY)
    if prev is None or prev[0] != (up.name, up.size):
        from dhaka.io import read

        ad = widgets.safe_call(read, up.getvalue(), filename=up.name, what=f"Could not read {up.name}")
        st.session_state[UPLOAD_KEY] = ((up.name, up.size), ad)
    second, src = st.session_state[UPLOAD_KEY][1], up.name
if second is None:
    st.caption("No second sample: upload one above.")
    st.stop()
if est is None or labels is None:
    st.info("Projection needs the fitted model and clone calls of this session's result.")
    st.stop()
assign = st.radio("Assign projected cells by", ["centroid", "knn", "gmm"], horizontal=True, key="w.cnv.assign",
                  format_func={"centroid": "nearest clone centroid", "knn": "15 nearest reference cells",
                               "gmm": "the fitted mixture"}.get)
proj = widgets.safe_call(projection.project, est, second, reference_latent=Z, reference_labels=labels,
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
