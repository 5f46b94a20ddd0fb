"""Differential expression between two groups of cells: clusters, annotations or hand-picked selections."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka.analysis import differential
from dhaka.io import to_csv_safe
from dhaka.ui import figures, state, widgets

widgets.require_entrypoint()

SEL_A = "dhaka.analysis.de.selection_a"  # int ndarray: cell positions picked as group A
SEL_B = "dhaka.analysis.de.selection_b"
RESULT_KEY = "dhaka.analysis.de.result"  # dict(df, a, b, label_a, label_b, method, dataset)
VIEW_KEY = "de_view"                     # the selectable 2-D chart
MODES = {"clusters": "Two clusters", "rest": "A cluster against the rest", "obs": "Two groups of an annotation",
         "select": "Two hand-picked selections (box / lasso)"}

st.title("Differential expression")
Z = state.require_latent()
adata = state.get_dataset()
info = state.get_dataset_info()
obs_names = np.array([str(o) for o in adata.obs_names])
n = adata.n_obs
clusters = state.get_clusters()
cats = [c for c in adata.obs.columns if adata.obs[c].nunique() <= 50 and adata.obs[c].nunique() >= 2]

modes = [m for m in MODES if (m not in ("clusters", "rest") or clusters is not None) and (m != "obs" or cats)]
mode = st.radio("Compare", modes, format_func=MODES.get, horizontal=True, key="w.de.mode")

a = b = None
label_a, label_b = "A", "B"
if mode in ("clusters", "rest"):
    ks = sorted(np.unique(clusters).tolist())
    c1, c2 = st.columns(2)
    ka = c1.selectbox("Cluster A", ks, key="w.de.ca")
    a, label_a = clusters == ka, f"cluster {ka}"
    if mode == "clusters":
        kb = c2.selectbox("Cluster B", [k for k in ks if k != ka] or ks, key="w.de.cb")
        b, label_b = clusters == kb, f"cluster {kb}"
    else:
        label_b = "rest"
elif mode == "obs":
    c1, c2, c3 = st.columns(3)
    col = c1.selectbox("Annotation", cats, key="w.de.obs")
    values = sorted(adata.obs[col].astype(str).unique().tolist())
    va = c2.selectbox("Group A", values, key="w.de.oa")
    vb = c3.selectbox("Group B", [v for v in values if v != va] + ["(all other cells)"], key="w.de.ob")
    s = adata.obs[col].astype(str).to_numpy()
    a, label_a = s == va, f"{col}={va}"
    b, label_b = (None, "rest") if vb == "(all other cells)" else (s == vb, f"{col}={vb}")
else:
    import plotly.graph_objects as go

    dims = list(range(Z.shape[1]))
    c1, c2 = st.columns(2)
    dx = c1.selectbox("x axis", dims, index=0, key="w.de.dx", format_func=lambda d: f"dhaka_{d + 1}")
    dy = c2.selectbox("y axis", dims, index=min(1, len(dims) - 1), key="w.de.dy", format_func=lambda d: f"dhaka_{d + 1}")
    sel_a = st.session_state.get(SEL_A, np.array([], dtype=int))
    sel_b = st.session_state.get(SEL_B, np.array([], dtype=int))
    group = np.full(n, "other", dtype=object)
    group[sel_a] = "A"
    group[sel_b] = "B"
    colour = np.where(group == "A", "#d62728", np.where(group == "B", "#1f77b4", "#bbbbbb"))
    fig = go.Figure(go.Scattergl(x=Z[:, dx], y=Z[:, dy], mode="markers", customdata=np.arange(n), text=obs_names,
                                 marker=dict(color=colour, size=5), hovertemplate="%{text}<extra></extra>"))
    fig.update_layout(dragmode="lasso", template="plotly_white", height=520, showlegend=False,
                      xaxis_title=f"dhaka_{dx + 1}", yaxis_title=f"dhaka_{dy + 1}",
                      title="Draw a box or lasso, then assign the selection to group A or B")
    figures.chart(fig, "de-selection", key=VIEW_KEY, on_select="rerun", selection_mode=("box", "lasso"))

    def _selected() -> np.ndarray:
        ev = st.session_state.get(VIEW_KEY) or {}
        sel = (ev.get("selection") if isinstance(ev, dict) else getattr(ev, "selection", None)) or {}
        pts = sel.get("points") or []
        idx = [p["customdata"] for p in pts if isinstance(p, dict) and "customdata" in p]
        if not idx:
            idx = sel.get("point_indices") or []
        return np.unique(np.asarray(idx, dtype=int).ravel()) if len(idx) else np.array([], dtype=int)

    def _assign(key: str, other: str) -> None:
        picked = _selected()
        st.session_state[key] = picked
        st.session_state[other] = np.setdiff1d(st.session_state.get(other, np.array([], dtype=int)), picked)

    b1, b2, b3, b4 = st.columns(4)
    b1.button("Selection → group A", key="w.de.to_a", on_click=_assign, args=(SEL_A, SEL_B))
    b2.button("Selection → group B", key="w.de.to_b", on_click=_assign, args=(SEL_B, SEL_A))
    b3.button("Clear groups", key="w.de.clear",
              on_click=lambda: [st.session_state.pop(k, None) for k in (SEL_A, SEL_B)])
    only_a = b4.checkbox("B = all other cells", key="w.de.b_rest")
    st.caption(f"Group A: {len(sel_a):,} cells · group B: "
               + ("all other cells" if only_a else f"{len(sel_b):,} cells"))
    a = np.zeros(n, dtype=bool)
    a[sel_a] = True
    if only_a:
        label_b = "rest"
    else:
        b = np.zeros(n, dtype=bool)
        b[sel_b] = True

c1, c2 = st.columns([1, 3])
method = c1.radio("Test", ["welch", "wilcoxon"], key="w.de.method",
                  format_func={"welch": "Welch t-test", "wilcoxon": "Wilcoxon rank-sum"}.get)
mode_data = state.get_preprocess().get("mode") or info.get("mode") or "expression"
c2.caption("Counts are library-size normalised and log2(x+1)-transformed before testing; log values are used as "
           "given. Benjamini–Hochberg adjusted p-values over all genes.")
n_a = int(a.sum()) if a is not None else 0
n_b = (n - n_a) if b is None else int(b.sum())
ready = n_a >= 2 and n_b >= 2
if st.button("Run test", type="primary", key="w.de.run", disabled=not ready, icon=":material/play_arrow:"):
    with st.spinner(f"Testing {adata.n_vars:,} genes…"):
        M, scale = differential.prepare_expression(adata.X, mode="cnv" if mode_data == "cnv" else "expression")
        df = widgets.safe_call(differential.differential_expression, M, a, b, genes=list(map(str, adata.var_names)),
                               method=method, scale=scale, what="Differential expression")
    if df is not None:
        st.session_state[RESULT_KEY] = dict(df=df, a=np.flatnonzero(a), b=np.flatnonzero(~a if b is None else b),
                                            label_a=label_a, label_b=label_b, method=method,
                                            dataset=info.get("key"))
if not ready:
    st.caption("Each group needs at least two cells.")

res = st.session_state.get(RESULT_KEY)
if res is None:
    st.stop()
if res["dataset"] != info.get("key") or max(res["a"].max(initial=-1), res["b"].max(initial=-1)) >= n:
    st.caption("The last test was run on a previously loaded dataset: run it again.")
    st.stop()
df = res["df"]
n_sig = int((df["padj"] < 0.05).sum())
st.subheader(f"{res['label_a']} ({len(res['a']):,} cells) vs {res['label_b']} ({len(res['b']):,} cells)")
st.caption(f"{'Welch t-test' if res['method'] == 'welch' else 'Wilcoxon rank-sum'}: {n_sig:,} of {len(df):,} "
           "genes with adjusted p < 0.05. Click a column header to sort.")
v1, v2 = st.columns([3, 2])
v1.dataframe(df.sort_values("padj", kind="stable"), hide_index=True, key="de_table", height=460,
             column_config={"pvalue": st.column_config.NumberColumn(format="%.2e"),
                            "padj": st.column_config.NumberColumn(format="%.2e")})
figures.chart(differential.figure_volcano(df, title=f"{res['label_a']} vs {res['label_b']}"), "volcano",
              key="de_volcano", container=v2)
d1, d2 = st.columns(2)
d1.download_button("All genes as CSV", to_csv_safe(df, index=False).encode(), file_name="differential_expression.csv",
                   mime="text/csv", key="w.de.csv", icon=":material/download:")
ids = pd.DataFrame({"cell": np.r_[obs_names[res["a"]], obs_names[res["b"]]],
                    "group": [res["label_a"]] * len(res["a"]) + [res["label_b"]] * len(res["b"])})
d2.download_button("Cell ids of both groups (CSV)", to_csv_safe(ids, index=False).encode(), file_name="de_groups.csv",
                   mime="text/csv", key="w.de.ids", icon=":material/download:")
