"""The colour control every view of the cells shares: GMM cluster, an annotation, an obs column or a gene."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import numpy as np
import streamlit as st

from dhaka.ui import state

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["ColorChoice", "color_control"]


@dataclass
class ColorChoice:
    """What the colour control picked: one value per cell (or ``None``), its name and kind."""

    values: Any
    name: str
    kind: str  # "categorical" | "continuous" | "auto"


def color_control(adata: anndata.AnnData, *, clusters: np.ndarray | None, key: str = "w.colour") -> ColorChoice:
    """One colour control for every view: GMM cluster, an obs column, or a gene's expression."""
    options: list[str] = []
    if clusters is not None:
        options.append("GMM cluster")
    annotations = state.get_annotations()
    options += [f"annotation: {a}" for a in annotations]
    options += [f"obs: {c}" for c in adata.obs.columns]
    options += ["Gene expression", "None"]
    truth = state.get_truth_column()
    default = "GMM cluster" if clusters is not None else (f"obs: {truth}" if truth else options[0])
    if st.session_state.get(key) not in options:
        st.session_state[key] = default
    c1, c2 = st.columns([2, 2])
    with c1:
        choice = st.selectbox("Colour cells by", options, key=key)
    if choice == "GMM cluster":
        return ColorChoice(np.asarray(clusters).astype(int), "cluster", "categorical")
    if choice == "None":
        return ColorChoice(None, "", "auto")
    if choice.startswith("annotation: "):
        name = choice[len("annotation: "):]
        return ColorChoice(annotations[name], name, "categorical")
    if choice.startswith("obs: "):
        col = choice[5:]
        return ColorChoice(adata.obs[col].to_numpy(), col, "auto")
    genes = [str(g) for g in adata.var_names]
    with c2:
        gene = st.selectbox("Gene", genes, key=key + ".gene", help="Type to search.")
    j = genes.index(gene)
    import scipy.sparse as sp

    col_values = adata.X[:, j]
    col_values = col_values.toarray().ravel() if sp.issparse(col_values) else np.asarray(col_values).ravel()
    return ColorChoice(col_values.astype(np.float64), gene, "continuous")
