"""The Copy number page's decisions: which clone calls to show, and the second sample to project."""
from __future__ import annotations

from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from dhaka.io import READABLE_SUFFIXES
from dhaka.ui import cached, demos, messages, state, tasks, upload_worker

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["load_demo", "clone_controls", "second_sample"]

UPLOAD_KEY = "dhaka.analysis.cnv.second_upload"  # ((file name, size), AnnData) of an uploaded second sample
MIN_SIZES: list[Any] = ["auto", 0.01, 0.02, 0.05, 0.1, None]


def load_demo() -> None:
    """Load the simulated pair of tumour samples (button callback)."""
    first, second = cached.load_demo("cnv_pair")
    demo = demos.get("cnv_pair")
    state.set_dataset(first, name=demo.title, source="demo", demo=demo.key, truth=demo.truth, mode="cnv",
                      second=second)


def clone_controls(Z: np.ndarray) -> tuple[Any, np.ndarray | None]:
    """Robust clone calls (cached by latent digest and minimum size) or the clusters in use.

    Returns
    -------
    gmm, labels
        The mixture behind the calls (``None`` when calling failed) and one clone per cell.
    """
    c1, c2 = st.columns([2, 1])
    robust = c1.toggle("Robust clone calls", value=True, key="w.cnv.robust",
                       help="GMM-BIC over-splits the heavy-tailed clouds that per-cell private events make. "
                            "Robust calls join mixture components whose union is unimodal and fold clusters "
                            "smaller than the minimum clone size into the clone they fit best "
                            "(dhaka.analysis.copy_number.call_clones).")
    min_size = c2.selectbox("Minimum clone size", MIN_SIZES, key="w.cnv.min", disabled=not robust,
                            format_func=lambda v: "auto (10 cells or 1%)" if v == "auto" else
                            "none" if v is None else f"{v:.0%} of cells")
    if not robust:
        return state.get_gmm(), state.get_clusters()
    with st.spinner("Calling clones…"):
        gmm = messages.safe_call(cached.clone_calls, Z, digest=state.get_result_info().get("latent_digest")
                                 or tasks.digest(Z), min_cluster_size=min_size,
                                 seed=int(state.get_estimator_params().get("seed", 0)), what="Clone calling")
    if gmm is None:
        return None, None
    labels = np.asarray(gmm.labels)
    k = len(np.unique(labels))
    c1.caption(f"{k} clone{'s' if k != 1 else ''} called (GMM-BIC chose {gmm.n_components} components).")
    if st.button("Use these clone calls as the clusters on every page", key="w.cnv.use"):
        state.set_clusters(labels, k=k)
        st.toast("Clone calls are now the clusters in use.")
    return gmm, labels


def second_sample() -> tuple[anndata.AnnData | None, str]:
    """The sample to project: an upload (read once per file) or the loaded demo's second sample."""
    second, src = state.get_second_dataset(), "the second sample of the loaded demo"
    up = st.file_uploader("…or upload one (same kind of bins, matched by name)", key="w.cnv.upload",
                          type=list(READABLE_SUFFIXES))
    if up is None:
        return second, src
    prev = st.session_state.get(UPLOAD_KEY)
    if prev is None or prev[0] != (up.name, up.size):
        # parsed in a capped child process, as every upload is (dhaka.ui.upload_worker)
        ad = messages.safe_call(upload_worker.read_upload, up, what=f"Could not read {messages.plain(up.name)}")
        st.session_state[UPLOAD_KEY] = ((up.name, up.size), ad)
    return st.session_state[UPLOAD_KEY][1], up.name
