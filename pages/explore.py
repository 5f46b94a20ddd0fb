"""Explore page: the Dhaka latent space in 3-D beside PCA, t-SNE and UMAP; clusters, scores, annotations, downloads."""
from __future__ import annotations

import numpy as np
import streamlit as st

from dhaka import plots
from dhaka.ui import annotate, color, entrypoint, figures, handover, messages, runs_open, state, tasks, views

entrypoint.require_entrypoint()

st.title("Explore")
if state.get_dataset() is not None and not state.results_match_dataset():
    runs_open.offer_latest_run()
Z = state.require_latent()
adata = state.get_dataset()
res = state.get_result_info()
obs_names = res.get("obs_names") or [str(o) for o in adata.obs_names]
seed = int(state.get_estimator_params().get("seed", 0))
gmm, labels, k_max = views.cluster_controls(Z, digest=res.get("latent_digest") or tasks.digest(Z), seed=seed)

# ------------------------------------------------------------------ controls
colour = color.color_control(adata, clusters=labels)
o1, o2, o3, o4 = st.columns([1, 1, 2, 2], vertical_alignment="bottom")
dims = o1.segmented_control("Other views", [2, 3], default=2, key="w.exp.dims", format_func=lambda d: f"{d}-D",
                            required=True)
n = Z.shape[0]
max_points = o2.number_input("Cells drawn", 100, max(100, n), min(n if n <= 20_000 else 20_000, max(100, n)),
                             step=1000, key="w.exp.maxpts", help="A seeded subsample is drawn when fewer than all; "
                                                                 "scores always use every cell.")
size = o3.slider("Point size", 1.0, 10.0, float(plots.default_point_size(min(n, max_points))), 0.5, key="w.exp.size")


def draw(coords: np.ndarray, title: str, prefix: str, key: str) -> None:
    fig = messages.safe_call(plots.scatter, coords, color=colour.values, color_name=colour.name,
                             color_type="auto" if colour.kind == "auto" else colour.kind, cell_ids=obs_names,
                             title=title, axis_prefix=prefix, point_size=size, max_points=int(max_points),
                             seed=0, height=460, what=title)
    if fig is not None:
        figures.chart(fig, key.removeprefix("fig_"), {"colour": colour.name}, key=key)


# ------------------------------------------------------------------ views
has_input = views.model_input() is not None
handover.views_progress()
cells = views.plan_views(dims, has_input=has_input)
missing = [c.method for c in cells if c.status == "missing"]
if missing and o4.button(f"Compute {', '.join(views.METHODS[m] for m in missing)}", key="w.exp.compute_all",
                         type="primary", help="PCA, t-SNE and UMAP of the matrix the model was trained on; cached, "
                                              "so colour changes and later visits are instant." + views.umap_note()):
    views.compute_views(missing, dims=dims, seed=seed)
refined = getattr(state.get_estimator(), "refinement_", None) or []
if len(refined) > 1:
    st.caption(f"The model's final fit used {refined[-1]['genes']} genes chosen by gene refinement (first fit: "
               f"{refined[0]['genes']} by {refined[0]['selected_by']}); PCA, t-SNE and UMAP embed the same genes.")
left, right = st.columns(2)
with left:
    draw(Z[:, :3] if Z.shape[1] >= 3 else Z, "Dhaka latent space", "dhaka", "fig_dhaka")
for cell, col in zip(cells, [right, *st.columns(2)]):
    with col:
        views.view_cell(cell, dims=dims, seed=seed, draw=draw)

# ------------------------------------------------------------------ scores
st.subheader("Clusters and scores")
b1, b2 = st.columns([1, 1])
if gmm is not None and "bic" in gmm.record:
    with b1:
        bic = gmm.record["bic"]
        fig_bic = plots.bic_curve(np.arange(1, len(bic) + 1), bic, best_k=int(gmm.k),
                                  chosen_k=state.get_cluster_k(), skipped=list(getattr(gmm, "skipped", [])))
        figures.chart(fig_bic, "gmm-bic", key="fig_bic")
with b2:
    views.scores_panel(Z, labels, k_max=k_max, seed=seed)

st.subheader("Annotations")
annotate.panel(clusters=labels, views=views.selection_views(Z), obs_names=obs_names,
                  taken=[str(c) for c in adata.obs.columns])

# ------------------------------------------------------------------ downloads
st.subheader("Downloads")
stem = f"dhaka-{res.get('run_id') or 'result'}"
ann, emb, est = state.get_annotations(), state.get_embeddings(), state.get_estimator()
params = est.get_params() if hasattr(est, "get_params") else state.get_estimator_params()
d1, d2, d3 = st.columns(3)
d1.download_button("Latent + clusters (CSV)", key="dl_csv", file_name=f"{stem}-latent.csv", mime="text/csv",
                   data=lambda: tasks.latent_csv_bytes(Z, obs_names, labels=labels, annotations=ann),
                   on_click="ignore", icon=":material/download:", help="With your annotations as columns.")
d2.download_button("AnnData (.h5ad)", key="dl_h5ad", file_name=f"{stem}.h5ad", mime="application/octet-stream",
                   data=lambda: tasks.h5ad_bytes(adata, latent=Z, labels=labels, embeddings=emb, annotations=ann,
                                                 cluster_result=gmm, params=params, run_id=res.get("run_id")),
                   on_click="ignore",
                   icon=":material/download:", help="obsm['X_dhaka'] (+ X_pca / X_tsne / X_umap when computed), "
                                                    "obs['dhaka_cluster']; opens in scanpy and cellxgene.")
d3.download_button("Model (.zip)", key="dl_model", file_name=f"{stem}-model.zip", mime="application/zip",
                   data=lambda: tasks.model_zip_bytes(est), on_click="ignore", disabled=est is None,
                   icon=":material/download:", help="safetensors weights + JSON settings; load with Dhaka.load().")
st.caption("Each figure downloads as SVG, PNG (publication size, settings in the file name) and interactive HTML; "
           "the camera icon in a figure's toolbar saves the view at its current rotation.")
