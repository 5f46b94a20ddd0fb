"""Trajectory: diffusion pseudotime along the latent structure from a root cell or cluster."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka.analysis import pseudotime
from dhaka.io import to_csv_safe
from dhaka.ui import cached, entrypoint, figures, messages, state, tasks

entrypoint.require_entrypoint()

st.title("Trajectory")
st.caption("Diffusion pseudotime (Haghverdi et al. 2016) on a k-nearest-neighbour graph of the latent space: "
           "cells are ordered by their diffusion distance from the root.")
Z = state.require_latent()
adata = state.get_dataset()
obs_names = [str(o) for o in adata.obs_names]
clusters = state.get_clusters()
digest = state.get_result_info().get("latent_digest") or tasks.digest(Z)

c1, c2, c3 = st.columns(3)
root_kind = c1.radio("Root", ["cluster", "cell"], horizontal=True, key="w.traj.kind",
                     format_func={"cluster": "a cluster", "cell": "a cell"}.get,
                     disabled=clusters is None, index=0 if clusters is not None else 1)
if root_kind == "cluster" and clusters is not None:
    cl = c2.selectbox("Root cluster", sorted(np.unique(clusters).tolist()), key="w.traj.cluster")
    with st.spinner("Finding the cluster's root cell…"):
        roots = messages.safe_call(cached.pseudotime_root, Z, clusters, cl, digest=digest,
                                   clusters_digest=tasks.digest(np.asarray(clusters)), what="Root cell")
    if roots is None:
        st.stop()
    c2.caption(f"Root: cell **{messages.plain(obs_names[roots])}**, the cluster's cell farthest from the other cells.")
else:
    default = obs_names[0]
    if "time" in adata.obs.columns and pd.api.types.is_numeric_dtype(adata.obs["time"]):
        default = obs_names[int(np.nanargmin(adata.obs["time"].to_numpy(dtype=float)))]
    cell = c2.selectbox("Root cell", obs_names, index=obs_names.index(default), key="w.traj.cell",
                        help="Type to search cell ids.")
    roots = obs_names.index(cell)
method = c3.radio("Distance", ["diffusion", "geodesic"], horizontal=True, key="w.traj.method",
                  format_func={"diffusion": "diffusion (DPT)", "geodesic": "shortest path"}.get)
k = c3.slider("Neighbours in the kNN graph", 5, 50, 15, key="w.traj.k")

with st.spinner("Computing pseudotime…"):
    pt = messages.safe_call(cached.pseudotime, Z, digest=digest, root=int(roots), n_neighbors=int(k), method=method,
                            what="Pseudotime")
if pt is None:
    st.stop()

n_nan = int(np.isnan(pt).sum())
if n_nan:
    st.warning(f"{n_nan} cells are not connected to the root in the kNN graph (no pseudotime); raise the number "
               "of neighbours or pick a root in their part of the latent space.")
if "time" in adata.obs.columns and pd.api.types.is_numeric_dtype(adata.obs["time"]):
    from scipy.stats import spearmanr

    t = adata.obs["time"].to_numpy(dtype=float)
    ok = np.isfinite(pt) & np.isfinite(t)
    rho = float(spearmanr(pt[ok], t[ok])[0]) if ok.sum() > 2 else float("nan")
    st.metric("Spearman correlation with obs['time']", f"{rho:.3f}")

figures.chart(pseudotime.figure_pseudotime(Z, pt, root=roots, hover=obs_names), "pseudotime", key="traj_latent")
out = pd.DataFrame({"cell": obs_names, "pseudotime": pt})
if clusters is not None:
    out["cluster"] = clusters
st.download_button("Pseudotime as CSV", to_csv_safe(out, index=False).encode(), file_name="pseudotime.csv",
                   mime="text/csv", key="w.traj.csv", icon=":material/download:")
