"""Differential expression between two groups of cells: clusters, annotations or hand-picked selections."""
from __future__ import annotations

import numpy as np
import pandas as pd
import streamlit as st

from dhaka.analysis import differential
from dhaka.io import to_csv_safe
from dhaka.ui import entrypoint, figures, groups, messages, state, tasks
from dhaka.ui.analysis_job import AnalysisJob

entrypoint.require_entrypoint()

JOB = AnalysisJob("dhaka.analysis.de", widget_key="w.de.job", what="test")  # result: dict(df, a, b, labels, method)

st.title("Differential expression")
Z = state.require_latent()
adata = state.get_dataset()
obs_names = np.array([str(o) for o in adata.obs_names])
g = groups.pick_groups(Z, adata)

c1, c2 = st.columns([1, 3])
method = c1.radio("Test", ["welch", "wilcoxon"], key="w.de.method",
                  format_func={"welch": "Welch t-test", "wilcoxon": "Wilcoxon rank-sum"}.get)
c2.caption("Counts are library-size normalised and log2(x+1)-transformed before testing; log values are used as "
           "given. Benjamini–Hochberg adjusted p-values over all genes.")
if st.button("Run test", type="primary", key="w.de.run", disabled=not g.ready or JOB.active(),
             icon=":material/play_arrow:"):
    mode = state.get_preprocess().get("mode") or state.get_dataset_info().get("mode") or "expression"
    JOB.submit(tasks.de_task(adata.X, g.a, g.b, genes=list(map(str, adata.var_names)), mode=mode, method=method,
                             label_a=g.label_a, label_b=g.label_b), name=f"differential expression {g.label_a} vs "
                                                                        f"{g.label_b}")
if not g.ready:
    st.caption("Each group needs at least two cells.")
JOB.progress(rows=False, start_message=f"testing {adata.n_vars:,} genes…")

key, res = JOB.result()
if res is None:
    st.stop()
if key != state.get_dataset_key() or max(res["a"].max(initial=-1), res["b"].max(initial=-1)) >= adata.n_obs:
    st.caption("The last test was run on a previously loaded dataset: run it again.")
    st.stop()
df = res["df"]
st.subheader(messages.plain(f"{res['label_a']} ({len(res['a']):,} cells) vs {res['label_b']} ({len(res['b']):,} cells)"))
st.caption(f"{'Welch t-test' if res['method'] == 'welch' else 'Wilcoxon rank-sum'}: {int((df['padj'] < 0.05).sum()):,} "
           f"of {len(df):,} genes with adjusted p < 0.05. Click a column header to sort.")
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
