"""Differential expression between two groups of cells: clusters, annotations or hand-picked selections."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.analysis import differential
from dhaka.io import to_csv_safe
from dhaka.ui import annotate, state, tasks, widgets
from dhaka.ui.analysis_job import AnalysisJob

widgets.require_entrypoint()

SEL_A = "dhaka.analysis.de.selection_a"  # int ndarray: cell positions picked as group A
SEL_B = "dhaka.analysis.de.selection_b"
VIEW_KEY = "de_view"                     # the selectable 2-D chart
JOB = AnalysisJob("dhaka.analysis.de", widget_key="w.de.job", what="test")  # result: dict(df, a, b, labels, method)
MODES = {"clusters": "Two clusters", "rest": "A cluster against the rest", "obs": "Two groups of an annotation",
         "select": "Two hand-picked selections (box / lasso)"}


def _assign(key: str, other: str) -> None:
    picked = widgets.selected_points(VIEW_KEY)
    st.session_state[key] = picked
    st.session_state[other] = np.setdiff1d(st.session_state.get(other, np.array([], dtype=int)), picked)


st.title("Differential expression")
Z = state.require_latent()
adata = state.get_dataset()
obs_names = np.array([str(o) for o in adata.obs_names])
n = adata.n_obs
clusters = state.get_clusters()
groups = annotate.group_columns(adata)

modes = [m for m in MODES if (m not in ("clusters", "rest") or clusters is not None) and (m != "obs" or groups)]
mode = st.radio("Compare", modes, format_func=MODES.get, horizontal=True, key="w.de.mode")
a = b = None
label_a, label_b = "A", "rest"
if mode in ("clusters", "rest"):
    ks = sorted(np.unique(clusters).tolist())
    c1, c2 = st.columns(2)
    ka = c1.selectbox("Cluster A", ks, key="w.de.ca")
    a, label_a = clusters == ka, f"cluster {ka}"
    if mode == "clusters":
        kb = c2.selectbox("Cluster B", [k for k in ks if k != ka] or ks, key="w.de.cb")
        b, label_b = clusters == kb, f"cluster {kb}"
elif mode == "obs":
    c1, c2, c3 = st.columns(3)
    col = c1.selectbox("Annotation", list(groups), key="w.de.obs")
    s = groups[col]
    values = sorted({v for v in s if v is not None})
    va = c2.selectbox("Group A", values, key="w.de.oa")
    vb = c3.selectbox("Group B", [v for v in values if v != va] + ["(all other cells)"], key="w.de.ob")
    a, label_a = s == va, f"{col}={va}"
    if vb != "(all other cells)":
        b, label_b = s == vb, f"{col}={vb}"
else:
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
    st.plotly_chart(fig, key=VIEW_KEY, on_select="rerun", selection_mode=("box", "lasso"), config=widgets.PLOTLY_CONFIG)
    b1, b2, b3, b4 = st.columns(4)
    b1.button("Selection → group A", key="w.de.to_a", on_click=_assign, args=(SEL_A, SEL_B))
    b2.button("Selection → group B", key="w.de.to_b", on_click=_assign, args=(SEL_B, SEL_A))
    b3.button("Clear groups", key="w.de.clear", on_click=lambda: [st.session_state.pop(k, None) for k in (SEL_A, SEL_B)])
    only_a = b4.checkbox("B = all other cells", key="w.de.b_rest")
    st.caption(f"Group A: {len(sel_a):,} cells · group B: " + ("all other cells" if only_a else f"{len(sel_b):,} cells"))
    a = np.isin(np.arange(n), sel_a)
    if not only_a:
        b, label_b = np.isin(np.arange(n), sel_b), "B"

c1, c2 = st.columns([1, 3])
method = c1.radio("Test", ["welch", "wilcoxon"], key="w.de.method",
                  format_func={"welch": "Welch t-test", "wilcoxon": "Wilcoxon rank-sum"}.get)
c2.caption("Counts are library-size normalised and log2(x+1)-transformed before testing; log values are used as "
           "given. Benjamini–Hochberg adjusted p-values over all genes.")
n_a = int(a.sum())
ready = n_a >= 2 and ((n - n_a) if b is None else int(b.sum())) >= 2
if st.button("Run test", type="primary", key="w.de.run", disabled=not ready or JOB.active(), icon=":material/play_arrow:"):
    mode_data = state.get_preprocess().get("mode") or state.get_dataset_info().get("mode") or "expression"
    JOB.submit(tasks.de_task(adata.X, a, b, genes=list(map(str, adata.var_names)), mode=mode_data, method=method,
                             label_a=label_a, label_b=label_b), name=f"differential expression {label_a} vs {label_b}")
if not ready:
    st.caption("Each group needs at least two cells.")
JOB.progress(rows=False, start_message=f"testing {adata.n_vars:,} genes…")

key, res = JOB.result()
if res is None:
    st.stop()
if key != state.get_dataset_key() or max(res["a"].max(initial=-1), res["b"].max(initial=-1)) >= n:
    st.caption("The last test was run on a previously loaded dataset: run it again.")
    st.stop()
df = res["df"]
st.subheader(widgets.plain(f"{res['label_a']} ({len(res['a']):,} cells) vs {res['label_b']} ({len(res['b']):,} cells)"))
st.caption(f"{'Welch t-test' if res['method'] == 'welch' else 'Wilcoxon rank-sum'}: {int((df['padj'] < 0.05).sum()):,} "
           f"of {len(df):,} genes with adjusted p < 0.05. Click a column header to sort.")
v1, v2 = st.columns([3, 2])
v1.dataframe(df.sort_values("padj", kind="stable"), hide_index=True, key="de_table", height=460,
             column_config={"pvalue": st.column_config.NumberColumn(format="%.2e"),
                            "padj": st.column_config.NumberColumn(format="%.2e")})
v2.plotly_chart(differential.figure_volcano(df, title=f"{res['label_a']} vs {res['label_b']}"), key="de_volcano",
                config=widgets.PLOTLY_CONFIG)
d1, d2 = st.columns(2)
d1.download_button("All genes as CSV", to_csv_safe(df, index=False).encode(), file_name="differential_expression.csv",
                   mime="text/csv", key="w.de.csv", icon=":material/download:")
ids = pd.DataFrame({"cell": np.r_[obs_names[res["a"]], obs_names[res["b"]]],
                    "group": [res["label_a"]] * len(res["a"]) + [res["label_b"]] * len(res["b"])})
d2.download_button("Cell ids of both groups (CSV)", to_csv_safe(ids, index=False).encode(), file_name="de_groups.csv",
                   mime="text/csv", key="w.de.ids", icon=":material/download:")
