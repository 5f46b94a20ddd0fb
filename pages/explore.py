"""Explore page: the Dhaka latent space in 3-D beside PCA, t-SNE and UMAP; clusters, scores, downloads."""
from __future__ import annotations

import time

import numpy as np
import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.ui import cached, figures, state, tasks, widgets

widgets.require_entrypoint()

METHODS = {"pca": "PCA", "tsne": "t-SNE", "umap": "UMAP"}

st.title("Explore")
Z = state.require_latent()
adata = state.get_dataset()
res = state.get_result_info()
obs_names = res.get("obs_names") or [str(o) for o in adata.obs_names]
z_digest = res.get("latent_digest") or tasks.digest(Z)
seed = int(state.get_estimator_params().get("seed", 0))

# ------------------------------------------------------------------ clusters
gmm = state.get_gmm()
with st.sidebar:
    st.subheader("Clusters")
    k_max = st.number_input("Largest k tried (BIC)", 2, 30, 10, key="w.exp.kmax")
if gmm is None or len(gmm.bic) != k_max:
    with st.spinner("Fitting Gaussian mixtures…"):
        gmm = widgets.safe_call(cached.gmm_bic, Z, digest=z_digest, k_max=int(k_max), seed=seed,
                                what="GMM clustering")
    if gmm is not None:
        st.session_state[state.GMM] = gmm
with st.sidebar:
    k_opts = ["BIC"] + list(range(1, int(k_max) + 1))
    k_choice = st.selectbox("Number of clusters", k_opts, key="w.exp.k",
                            format_func=lambda v: f"lowest BIC (k={gmm.k})" if v == "BIC" and gmm else str(v))
if gmm is not None:
    if k_choice == "BIC":
        labels, k_use = np.asarray(gmm.labels), int(gmm.k)
    else:
        fixed = widgets.safe_call(cached.gmm_fixed_k, Z, digest=z_digest, k=int(k_choice), seed=seed,
                                  what=f"GMM with k={k_choice}")
        if fixed is None:
            labels, k_use = np.asarray(gmm.labels), int(gmm.k)
        else:
            labels, k_use = np.asarray(fixed.labels), int(fixed.k)
            if k_use != int(k_choice):
                st.sidebar.caption(f"k={k_choice} is not feasible here; using k={k_use}.")
    if state.get_cluster_k() != k_use or state.get_clusters() is None:
        state.set_clusters(labels, k=k_use)
labels = state.get_clusters()

# ------------------------------------------------------------------ controls
colour = widgets.color_control(adata, clusters=labels)
o1, o2, o3, o4 = st.columns([1, 1, 2, 2], vertical_alignment="bottom")
dims = o1.segmented_control("Other views", [2, 3], default=2, key="w.exp.dims", format_func=lambda d: f"{d}-D",
                            required=True)
n = Z.shape[0]
default_cap = n if n <= 20_000 else 20_000
max_points = o2.number_input("Cells drawn", 100, max(100, n), min(default_cap, max(100, n)), step=1000,
                             key="w.exp.maxpts", help="A seeded subsample is drawn when fewer than all; "
                                                      "scores always use every cell.")
size = o3.slider("Point size", 1.0, 10.0, float(plots.default_point_size(min(n, max_points))), 0.5,
                 key="w.exp.size")


def draw(coords: np.ndarray, title: str, prefix: str, key: str) -> None:
    fig = widgets.safe_call(plots.scatter, coords, color=colour.values, color_name=colour.name,
                            color_type="auto" if colour.kind == "auto" else colour.kind, cell_ids=obs_names,
                            title=title, axis_prefix=prefix, point_size=size, max_points=int(max_points),
                            seed=0, height=460, what=title)
    if fig is None:
        return
    figures.chart(fig, key.removeprefix("fig_"), {"colour": colour.name}, key=key)


# ------------------------------------------------------------------ views
emb = state.get_embeddings()
model_input = state.get_model_input()
if model_input is None and state.get_estimator() is not None:
    aligned = widgets.safe_call(state.get_estimator().align, adata, what="Preparing the model's input")
    if aligned is not None:
        state.set_model_input(aligned[0], tasks.digest(aligned[0]))
        model_input = state.get_model_input()

worker = cached.views_worker()
umap_note = ("" if worker.warm else f" (UMAP is still compiling in the background, started "
             f"{int(time.time() - worker.started)} s ago; the first UMAP waits for it)")


def compute(methods: list[str]) -> None:
    """Compute the missing embeddings (cached by content digest), store them, redraw."""
    done = False
    for method in methods:
        label = METHODS[method]
        with st.spinner(f"Computing {label} ({dims}-D)…" + (umap_note if method == "umap" else "")):
            out = widgets.safe_call(cached.embedding, model_input[0], digest=model_input[1], method=method,
                                    n_components=int(dims), random_state=seed, what=f"{label} failed")
        if out is not None:
            state.set_embedding(f"{method}_{dims}d", out)
            done = True
    if done:
        st.rerun()


widgets.views_progress()
views_job = state.get_views_job()
background = views_job is not None and not views_job[0].done and views_job[1].n_components == dims
missing = [m for m in METHODS if f"{m}_{dims}d" not in emb]
if missing and model_input is not None and not background:
    if o4.button(f"Compute {', '.join(METHODS[m] for m in missing)}", key="w.exp.compute_all", type="primary",
                 help="PCA, t-SNE and UMAP of the matrix the model was trained on; cached, so colour changes "
                      "and later visits are instant." + umap_note):
        compute(missing)

refined = getattr(state.get_estimator(), "refinement_", None) or []
if len(refined) > 1:
    st.caption(f"The model's final fit used {refined[-1]['genes']} genes chosen by gene refinement (first fit: "
               f"{refined[0]['genes']} by {refined[0]['selected_by']}); PCA, t-SNE and UMAP embed the same genes.")
left, right = st.columns(2)
with left:
    draw(Z[:, :3] if Z.shape[1] >= 3 else Z, "Dhaka latent space", "dhaka", "fig_dhaka")
cells = [right] + list(st.columns(2))
for (method, label), cell in zip(METHODS.items(), cells):
    name = f"{method}_{dims}d"
    with cell:
        if name in emb:
            draw(emb[name], f"{label} ({dims}-D)", method, f"fig_{name}")
            continue
        if background and method in views_job[1].methods:
            st.markdown(f"**{label} ({dims}-D)** — computing in the background…")
            continue
        st.markdown(f"**{label} ({dims}-D)** — not computed yet")
        if model_input is None:
            st.caption("Needs the data the model was trained on (load the matching dataset).")
            continue
        if st.button(f"Compute {label}", key=f"w.exp.compute.{name}",
                     help="Cached: later reruns are instant." + (umap_note if method == "umap" else "")):
            compute([method])

# ------------------------------------------------------------------ scores
st.subheader("Clusters and scores")
b1, b2 = st.columns([1, 1])
with b1:
    if gmm is not None:
        fig_bic = plots.bic_curve(np.arange(1, len(gmm.bic) + 1), gmm.bic, best_k=int(gmm.k), chosen_k=state.get_cluster_k(),
                                  skipped=list(getattr(gmm, "skipped", [])))
        figures.chart(fig_bic, "gmm-bic", key="fig_bic")
with b2:
    truth_opts = [None] + [str(c) for c in adata.obs.columns]
    cur = state.get_truth_column()
    truth_col = st.selectbox("True labels for ARI / NMI", truth_opts,
                             index=truth_opts.index(cur) if cur in truth_opts else 0,
                             format_func=lambda v: "none" if v is None else v, key="w.exp.truth")
    state.set_truth_column(truth_col)
    truth = state.get_truth_labels()
    rows = []
    views = {"Dhaka": (Z, labels)}
    for name, coords in emb.items():
        m, d = name.split("_")
        v_gmm = widgets.safe_call(cached.gmm_bic, coords, digest=tasks.digest(coords), k_max=int(k_max),
                                  seed=seed, what=f"GMM on {METHODS[m]}")
        views[f"{METHODS[m]} {d.upper()}"] = (coords, None if v_gmm is None else np.asarray(v_gmm.labels))
    for view, (coords, lab) in views.items():
        if lab is None:
            continue
        key = f"{tasks.digest(coords)}-{tasks.digest(lab)}-{truth_col}-{state.get_dataset_key()}"
        sc = widgets.safe_call(cached.view_scores, coords, lab, truth, key=key, what=f"Scores of {view}") or {}
        rows.append({"view": view, "k": int(len(np.unique(lab))), **{k: sc.get(k) for k in ("silhouette", "ari", "nmi")
                                                                      if k in sc}})
    scores = pd.DataFrame(rows).set_index("view").apply(pd.to_numeric, errors="coerce").round(3)
    st.dataframe(scores, key="scores", column_config={
        "silhouette": st.column_config.NumberColumn("silhouette", help="undefined (empty) for a single cluster"),
        "ari": st.column_config.NumberColumn("ARI"), "nmi": st.column_config.NumberColumn("NMI")})
    st.caption("Each view's own GMM clusters (BIC); Dhaka uses the clusters above. "
               + ("ARI / NMI against " + truth_col + "." if truth_col else "Pick true labels to see ARI / NMI."))

# ------------------------------------------------------------------ downloads
st.subheader("Downloads")
stem = f"dhaka-{res.get('run_id') or 'result'}"
params = state.get_estimator().get_params() if state.get_estimator() is not None else state.get_estimator_params()
d1, d2, d3 = st.columns(3)
d1.download_button("Latent + clusters (CSV)", key="dl_csv", file_name=f"{stem}-latent.csv", mime="text/csv",
                   data=lambda: tasks.latent_csv_bytes(Z, obs_names, labels=labels), on_click="ignore",
                   icon=":material/download:")
d2.download_button("AnnData (.h5ad)", key="dl_h5ad", file_name=f"{stem}.h5ad", mime="application/octet-stream",
                   data=lambda: tasks.h5ad_bytes(adata, latent=Z, labels=labels, embeddings=emb, params=params,
                                                 gmm=gmm, run_id=res.get("run_id")), on_click="ignore",
                   icon=":material/download:", help="obsm['X_dhaka'] (+ X_pca / X_tsne / X_umap when computed), "
                                                    "obs['dhaka_cluster']; opens in scanpy and cellxgene.")
est = state.get_estimator()
d3.download_button("Model (.zip)", key="dl_model", file_name=f"{stem}-model.zip", mime="application/zip",
                   data=lambda: tasks.model_zip_bytes(est), on_click="ignore", disabled=est is None,
                   icon=":material/download:", help="safetensors weights + JSON settings; load with Dhaka.load().")
st.caption(widgets.PNG_NOTE)
