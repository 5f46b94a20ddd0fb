"""What the Explore page shows: the clusters in use, the state of each comparison view, per-view scores.

The page draws; the decisions live here:

* :func:`cluster_controls`: the sidebar's "largest k" and "number of clusters", the GMM-BIC search
  (refitted when the largest k changes), a fixed k when the person picks one (the feasible k when not
  every k can be fitted), and the labels that become the clusters in use on every page;
* :func:`plan_views`: for each comparison view (PCA, t-SNE, UMAP) whether it is ready, being computed
  in the background, missing, or impossible without the model's input;
* :func:`compute_views`: the on-demand computation of missing views (cached by content digest);
* :func:`scores_table`: silhouette / ARI / NMI of the Dhaka clusters and of each view's own GMM clusters;
* :func:`selection_views`: 2-D coordinates a person can draw a lasso on (annotations).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Literal

import numpy as np
import streamlit as st

from dhaka.clusterers import k_max_asked
from dhaka.ui import cached, messages, state, tasks

if TYPE_CHECKING:  # pragma: no cover
    import pandas as pd

__all__ = ["ClusterChoice", "choose_clusters", "cluster_controls", "ViewCell", "plan_views", "model_input",
           "compute_views", "view_cell", "merge_note", "stability_caption", "scores_table", "scores_panel", "selection_views"]

METHODS = tasks.VIEW_LABELS


@dataclass(frozen=True)
class ClusterChoice:
    """The clusters in use: labels, their number and a note when the asked k was not feasible."""

    labels: np.ndarray
    k: int
    note: str | None = None


def choose_clusters(gmm: Any, k_choice: int | str, fixed: Any = None) -> ClusterChoice:
    """The policy: the BIC choice, or the fixed-k fit when one was asked for and could be made.

    Parameters
    ----------
    gmm
        The BIC search (``.labels``, ``.k``).
    k_choice
        ``"BIC"`` or the number of clusters asked for.
    fixed
        The fixed-k fit (``.labels``, ``.k``), or ``None`` when it failed (the BIC choice is used).
    """
    if k_choice == "BIC" or fixed is None:
        return ClusterChoice(np.asarray(gmm.labels), int(gmm.k))
    k = int(fixed.k)
    note = None if k == int(k_choice) else f"k={k_choice} is not feasible here; using k={k}."
    return ClusterChoice(np.asarray(fixed.labels), k, note)


def merge_note(gmm: Any) -> str | None:
    """One line on how the BIC mixture became the clusters (``merge="auto"``'s decision), or ``None``."""
    mc = getattr(gmm, "merge_choice", None) or {}
    n = int(getattr(gmm, "n_components", gmm.k))
    if mc.get("chosen") == "merge" and "stability_merged" in mc:
        if int(gmm.k) == 1:
            return (f"BIC chose {n} mixture components; every union of them is unimodal: one cluster, which "
                    f"subsamples reproduce (stability {mc['stability_merged']:.2f}).")
        return (f"BIC chose {n} mixture components; merged into {gmm.k} clusters (unimodal unions), which subsamples "
                f"reproduce at least as well (stability {mc['stability_merged']:.2f} vs {mc['stability_plain']:.2f} "
                "unmerged).")
    if mc.get("chosen") == "plain":
        return (f"BIC chose {n} mixture components, kept as clusters: subsamples reproduce them better than "
                f"merging them into {mc['k_merged']} (stability {mc['stability_plain']:.2f} vs "
                f"{mc['stability_merged']:.2f}).")
    return None


def stability_caption(gmm: Any) -> str | None:
    """"Cluster stability (subsample agreement): 0.93" for the split the caller kept, or ``None``.

    The figure is the caller's own subsample check (``merge_choice``, :func:`dhaka.cluster.gmm_bic`): how
    well clusters called on subsamples of the cells agree with each other. Near 1: the same clusters come
    back; well below 1 (e.g. under 0.8): another training seed may well give other clusters.
    """
    mc = getattr(gmm, "merge_choice", None) or {}
    key = {"merge": "stability_merged", "plain": "stability_plain"}.get(str(mc.get("chosen")), "")
    value = mc.get(key)
    if value is None or not np.isfinite(float(value)):
        return None
    return f"Cluster stability (subsample agreement): {float(value):.2f}"


def cluster_controls(Z: np.ndarray, *, digest: str, seed: int) -> tuple[Any, np.ndarray | None, int]:
    """The sidebar's cluster settings; sets the clusters in use.

    Returns
    -------
    gmm, labels, k_max
        The BIC search (``None`` if it failed), the clusters in use and the largest k tried.
    """
    gmm = state.get_gmm()
    with st.sidebar:
        st.subheader("Clusters")
        k_max = int(st.number_input("Largest k tried (BIC)", 2, 30, 10, key="w.exp.kmax"))
    if gmm is None or k_max_asked(gmm) != k_max:
        with st.spinner("Fitting Gaussian mixtures…"):
            mode = state.get_estimator_params().get("mode", "expression")
            gmm = messages.safe_call(cached.clusters, Z, digest=digest, k_max=k_max, seed=seed, mode=mode,
                                     what="GMM clustering")
        if gmm is not None:
            st.session_state[state.GMM] = gmm
    with st.sidebar:
        tried = max(k_max, len(gmm.record.get("bic", ())) if gmm is not None else 0)
        if tried > k_max:
            st.caption(f"BIC was still falling at k = {k_max}, so k up to {tried} was tried.")
        k_choice = st.selectbox("Number of clusters", ["BIC", *range(1, tried + 1)], key="w.exp.k",
                                format_func=lambda v: f"lowest BIC (k={gmm.k})" if v == "BIC" and gmm else str(v))
    if gmm is not None:
        fixed = None if k_choice == "BIC" else messages.safe_call(
            cached.gmm_fixed_k, Z, digest=digest, k=int(k_choice), seed=seed, what=f"GMM with k={k_choice}")
        choice = choose_clusters(gmm, k_choice, fixed)
        if choice.note:
            st.sidebar.caption(choice.note)
        elif k_choice == "BIC" and (note := merge_note(gmm)):
            st.sidebar.caption(note)
        if k_choice == "BIC" and (stable := stability_caption(gmm)):
            st.sidebar.caption(stable, help="How well clusters called on subsamples of the cells agree (1 = the "
                               "same every time). Low values mean another seed or subsample may split the cells "
                               "differently; more warm starts (Train) or fewer clusters can help.")
        if state.get_cluster_k() != choice.k or state.get_clusters() is None:
            state.set_clusters(choice.labels, k=choice.k)
    return gmm, state.get_clusters(), k_max


@dataclass(frozen=True)
class ViewCell:
    """One comparison view on the page: its name (``"tsne_2d"``), label and what to draw."""

    method: str
    name: str
    label: str
    status: Literal["ready", "background", "missing", "no_input"]
    coords: np.ndarray | None = None


def model_input() -> tuple[Any, str] | None:
    """The matrix the model was trained on (rebuilt from the estimator when a run was opened without it)."""
    mi = state.get_model_input()
    est = state.get_estimator()
    if mi is None and est is not None:
        aligned = messages.safe_call(est.align, state.get_dataset(), what="Preparing the model's input")
        if aligned is not None:
            state.set_model_input(aligned[0], tasks.digest(aligned[0]))
            mi = state.get_model_input()
    return mi


def plan_views(dims: int, *, has_input: bool) -> list[ViewCell]:
    """What each comparison view of ``dims`` dimensions is now (see :class:`ViewCell`)."""
    emb = state.get_embeddings()
    job = state.get_views_job()
    background = job is not None and not job[0].done and job[1].n_components == dims
    cells = []
    for method, label in METHODS.items():
        name = f"{method}_{dims}d"
        if name in emb:
            cells.append(ViewCell(method, name, label, "ready", emb[name]))
        elif background and method in job[1].methods:
            cells.append(ViewCell(method, name, label, "background"))
        else:
            cells.append(ViewCell(method, name, label, "missing" if has_input else "no_input"))
    return cells


def umap_note() -> str:
    """A note on the first UMAP's wait while numba compiles in the background ("" once warm)."""
    import time

    worker = cached.views_worker()
    return "" if worker.warm else (f" (UMAP is still compiling in the background, started "
                                   f"{int(time.time() - worker.started)} s ago; the first UMAP waits for it)")


def compute_views(methods: list[str], *, dims: int, seed: int) -> None:
    """Compute the missing embeddings now (cached by content digest), store them and rerun the page."""
    mi = model_input()
    done = False
    for method in methods:
        label = METHODS[method]
        with st.spinner(f"Computing {label} ({dims}-D)…" + (umap_note() if method == "umap" else "")):
            out = messages.safe_call(cached.embedding, mi[0], digest=mi[1], method=method, n_components=int(dims),
                                     random_state=seed, what=f"{label} failed")
        if out is not None:
            state.set_embedding(f"{method}_{dims}d", out)
            done = True
    if done:
        st.rerun()


def scores_table(Z: np.ndarray, labels: np.ndarray | None, *, k_max: int, seed: int,
                 truth_col: str | None, with_views: bool = True) -> pd.DataFrame:
    """Silhouette, ARI and NMI of the Dhaka clusters and of every computed view's own GMM-BIC clusters.

    Each view is clustered and scored once per content (cached); a colour change costs nothing.
    ``with_views=False``: the Dhaka row only.
    """
    import pandas as pd

    truth = state.get_truth_labels()
    views: dict[str, tuple[np.ndarray, np.ndarray | None]] = {"Dhaka": (Z, labels)}
    for name, coords in (state.get_embeddings() if with_views else {}).items():
        method, d = name.split("_")
        gmm = messages.safe_call(cached.clusters, coords, digest=tasks.digest(coords), k_max=k_max, seed=seed,
                                 what=f"GMM on {METHODS[method]}")
        views[f"{METHODS[method]} {d.upper()}"] = (coords, None if gmm is None else np.asarray(gmm.labels))
    rows = []
    for view, (coords, lab) in views.items():
        if lab is None:
            continue
        key = f"{tasks.digest(coords)}-{tasks.digest(lab)}-{truth_col}-{state.get_dataset_key()}"
        sc = messages.safe_call(cached.view_scores, coords, lab, truth, key=key, what=f"Scores of {view}") or {}
        rows.append({"view": view, "k": int(len(np.unique(lab))),
                     **{k: sc.get(k) for k in ("silhouette", "ari", "nmi") if k in sc}})
    return pd.DataFrame(rows).set_index("view").apply(pd.to_numeric, errors="coerce").round(3)


def view_cell(cell: ViewCell, *, dims: int, seed: int, draw: Any) -> None:
    """One comparison view's place on the page: the figure (``draw(coords, title, prefix, key)``), or why not yet."""
    if cell.status == "ready":
        draw(cell.coords, f"{cell.label} ({dims}-D)", cell.method, f"fig_{cell.name}")
        return
    if cell.status == "background":
        st.markdown(f"**{cell.label} ({dims}-D)** — computing in the background…")
        return
    st.markdown(f"**{cell.label} ({dims}-D)** — not computed yet")
    if cell.status == "no_input":
        st.caption("Needs the data the model was trained on (load the matching dataset).")
    elif st.button(f"Compute {cell.label}", key=f"w.exp.compute.{cell.name}",
                   help="Cached: later reruns are instant." + (umap_note() if cell.method == "umap" else "")):
        compute_views([cell.method], dims=dims, seed=seed)


def scores_panel(Z: np.ndarray, labels: np.ndarray | None, *, k_max: int, seed: int) -> None:
    """The true-labels picker and the scores table (:func:`scores_table`) of the Explore page."""
    adata = state.get_dataset()
    opts = [None] + [str(c) for c in adata.obs.columns]
    cur = state.get_truth_column()
    truth_col = st.selectbox("True labels for ARI / NMI", opts, index=opts.index(cur) if cur in opts else 0,
                             format_func=lambda v: "none" if v is None else v, key="w.exp.truth")
    state.set_truth_column(truth_col)
    # the views' own GMMs (about 1 s each) wait for the last view: computed on every view's arrival they
    # took CPU from the views still running (bench/app_live.py, launch -> all views)
    views_running = state.views_running()
    st.dataframe(scores_table(Z, labels, k_max=k_max, seed=seed, truth_col=truth_col, with_views=not views_running),
                 key="scores",
                 column_config={"silhouette": st.column_config.NumberColumn(
                     "silhouette", help="undefined (empty) for a single cluster"),
                     "ari": st.column_config.NumberColumn("ARI"), "nmi": st.column_config.NumberColumn("NMI")})
    st.caption(("The comparison views are scored when all of them are ready. " if views_running else "")
               + "Each view's own GMM clusters (BIC); Dhaka uses the clusters above. "
               + (f"ARI / NMI against {messages.plain(truth_col)}." if truth_col else "Pick true labels to see ARI / NMI."))


def selection_views(Z: np.ndarray) -> dict[str, tuple[np.ndarray, tuple[str, str]]]:
    """2-D coordinates to draw a lasso on: pairs of Dhaka dimensions, then every computed 2-D view."""
    d = Z.shape[1]
    out = {f"Dhaka {i + 1} × {j + 1}": (Z[:, [i, j]], (f"dhaka_{i + 1}", f"dhaka_{j + 1}"))
           for i in range(d) for j in range(i + 1, d)}
    for name, coords in state.get_embeddings().items():
        method, dims = name.split("_")
        if dims == "2d":
            out[f"{METHODS[method]} 2-D"] = (coords, (f"{method}_1", f"{method}_2"))
    return out
