"""Two groups of cells to compare (Differential expression page): clusters, annotations or hand-picked selections."""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import streamlit as st

from dhaka import plots
from dhaka.ui import annotate, figures, state

if TYPE_CHECKING:  # pragma: no cover
    import anndata

__all__ = ["Groups", "pick_groups", "SEL_A", "SEL_B", "VIEW_KEY", "MODES"]

SEL_A = "dhaka.analysis.de.selection_a"  # int ndarray: cell positions picked as group A
SEL_B = "dhaka.analysis.de.selection_b"
VIEW_KEY = "de_view"                     # the selectable 2-D chart
MODES = {"clusters": "Two clusters", "rest": "A cluster against the rest", "obs": "Two groups of an annotation",
         "select": "Two hand-picked selections (box / lasso)"}
REST = "(all other cells)"


@dataclass(frozen=True)
class Groups:
    """Group A (a mask), group B (a mask, or ``None`` for every other cell) and what they are."""

    a: np.ndarray
    b: np.ndarray | None
    label_a: str
    label_b: str

    @property
    def ready(self) -> bool:
        """Both groups have at least two cells."""
        n_b = (len(self.a) - int(self.a.sum())) if self.b is None else int(self.b.sum())
        return int(self.a.sum()) >= 2 and n_b >= 2


def _assign(key: str, other: str) -> None:
    picked = figures.selected_points(VIEW_KEY)
    st.session_state[key] = picked
    st.session_state[other] = np.setdiff1d(st.session_state.get(other, np.array([], dtype=int)), picked)


def _clear() -> None:
    for k in (SEL_A, SEL_B):
        st.session_state.pop(k, None)


def _from_clusters(clusters: np.ndarray, *, rest: bool) -> Groups:
    ks = sorted(np.unique(clusters).tolist())
    c1, c2 = st.columns(2)
    ka = c1.selectbox("Cluster A", ks, key="w.de.ca")
    if rest:
        return Groups(clusters == ka, None, f"cluster {ka}", "rest")
    kb = c2.selectbox("Cluster B", [k for k in ks if k != ka] or ks, key="w.de.cb")
    return Groups(clusters == ka, clusters == kb, f"cluster {ka}", f"cluster {kb}")


def _from_columns(columns: dict[str, np.ndarray]) -> Groups:
    c1, c2, c3 = st.columns(3)
    col = c1.selectbox("Annotation", list(columns), key="w.de.obs")
    s = columns[col]
    values = sorted({v for v in s if v is not None})
    va = c2.selectbox("Group A", values, key="w.de.oa")
    vb = c3.selectbox("Group B", [v for v in values if v != va] + [REST], key="w.de.ob")
    if vb == REST:
        return Groups(s == va, None, f"{col}={va}", "rest")
    return Groups(s == va, s == vb, f"{col}={va}", f"{col}={vb}")


def _from_selection(Z: np.ndarray, obs_names: np.ndarray) -> Groups:
    n = Z.shape[0]
    dims = list(range(Z.shape[1]))
    c1, c2 = st.columns(2)
    dx = c1.selectbox("x axis", dims, index=0, key="w.de.dx", format_func=lambda d: f"dhaka_{d + 1}")
    dy = c2.selectbox("y axis", dims, index=min(1, len(dims) - 1), key="w.de.dy", format_func=lambda d: f"dhaka_{d + 1}")
    sel_a = st.session_state.get(SEL_A, np.array([], dtype=int))
    sel_b = st.session_state.get(SEL_B, np.array([], dtype=int))
    group = np.full(n, None, dtype=object)
    group[sel_a], group[sel_b] = "A", "B"
    fig = plots.selection_scatter(Z[:, [dx, dy]], groups=group, group_colors={"A": "#d62728", "B": "#1f77b4"},
                                  cell_ids=obs_names, axis_titles=(f"dhaka_{dx + 1}", f"dhaka_{dy + 1}"),
                                  title="Draw a box or lasso, then assign the selection to group A or B")
    st.plotly_chart(fig, key=VIEW_KEY, on_select="rerun", selection_mode=("box", "lasso"), config=figures.PLOTLY_CONFIG)
    b1, b2, b3, b4 = st.columns(4)
    b1.button("Selection → group A", key="w.de.to_a", on_click=_assign, args=(SEL_A, SEL_B))
    b2.button("Selection → group B", key="w.de.to_b", on_click=_assign, args=(SEL_B, SEL_A))
    b3.button("Clear groups", key="w.de.clear", on_click=_clear)
    only_a = b4.checkbox("B = all other cells", key="w.de.b_rest")
    st.caption(f"Group A: {len(sel_a):,} cells · group B: " + ("all other cells" if only_a else f"{len(sel_b):,} cells"))
    a = np.isin(np.arange(n), sel_a)
    return Groups(a, None, "A", "rest") if only_a else Groups(a, np.isin(np.arange(n), sel_b), "A", "B")


def pick_groups(Z: np.ndarray, adata: anndata.AnnData) -> Groups:
    """The "Compare" choice and its widgets; returns the two groups picked.

    Cluster modes need clusters in use; the annotation mode lists the person's annotations and the
    dataset's ``obs`` columns with 2 to 50 values (:func:`dhaka.ui.annotate.group_columns`).
    """
    clusters = state.get_clusters()
    columns = annotate.group_columns(adata)
    modes = [m for m in MODES if (m not in ("clusters", "rest") or clusters is not None) and (m != "obs" or columns)]
    mode = st.radio("Compare", modes, format_func=MODES.get, horizontal=True, key="w.de.mode")
    if mode in ("clusters", "rest"):
        return _from_clusters(np.asarray(clusters), rest=mode == "rest")
    if mode == "obs":
        return _from_columns(columns)
    return _from_selection(Z, np.array([str(o) for o in adata.obs_names]))
