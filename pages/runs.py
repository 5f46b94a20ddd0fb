"""Runs page: every training kept on disk; open one, compare two, delete."""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.runs import RunStore
from dhaka.ui import state, widgets

st.title("Runs")
store = RunStore()
st.caption(f"Runs are kept in `{store.runs_dir}` (set `DHAKA_HOME` to move them). Interrupted runs (the server "
           "stopped mid-training) keep their last checkpoint, which can be opened.")
mine = st.toggle("Only runs started in this browser session", key="w.runs.mine", value=False)
infos = widgets.safe_call(store.list, owner=state.get_session_id() if mine else None, what="Cannot list runs") or []
if not infos:
    st.info("No runs yet: train a model on the Train page.")
    st.stop()

table = pd.DataFrame([i.as_row() for i in infos]).set_index("id")
st.dataframe(table, key="runs_table",
             column_order=["date", "status", "data", "shape", "final_loss", "ari", "checkpoint_epoch", "settings"],
             column_config={
    "final_loss": st.column_config.NumberColumn("final loss", format="%.4g"),
    "ari": st.column_config.NumberColumn("ARI", format="%.3f"),
    "checkpoint_epoch": st.column_config.NumberColumn("checkpoint epoch")})

ids = [i.id for i in infos]
by_id = {i.id: i for i in infos}


def _label(run_id: str) -> str:
    i = by_id[run_id]
    return f"{run_id} · {i.status} · {i.data_name or '?'}"


st.subheader("Open")
sel = st.selectbox("Run", ids, key="w.runs.sel", format_func=_label)
info = by_id[sel]
if info.status == "interrupted":
    st.warning(f"This run was interrupted" + (f"; its checkpoint of epoch {info.last_checkpoint_epoch} can be opened."
                                               if info.has_checkpoint else " before its first checkpoint."))
if info.error:
    st.error(f"This run failed: {info.error}")
c1, c2, _ = st.columns([1, 1, 3])
can_open = info.status in ("done", "stopped") or info.has_checkpoint
if c1.button("Open in Explore", key="w.runs.open", type="primary", disabled=not can_open or info.status == "running"):
    if widgets.open_run(sel, store=store):
        st.switch_page("pages/explore.py")
pending = st.session_state.get("w.runs.pending_delete")
if pending != sel:
    if c2.button("Delete…", key="w.runs.delete", disabled=info.status == "running"):
        st.session_state["w.runs.pending_delete"] = sel
        st.rerun()
else:
    st.warning(f"Delete run {sel} and its model for good?")
    y, n, _ = st.columns([1, 1, 3])
    if y.button("Yes, delete", key="w.runs.confirm", type="primary"):
        st.session_state.pop("w.runs.pending_delete", None)
        try:
            store.delete(sel)
            state.push_notice("success", f"Deleted run {sel}.")
        except Exception as exc:  # noqa: BLE001
            state.push_notice("error", f"Could not delete run {sel}: {widgets.error_message(exc)}")
        st.rerun()
    if n.button("Cancel", key="w.runs.cancel"):
        st.session_state.pop("w.runs.pending_delete", None)
        st.rerun()

st.subheader("Compare two runs")
if len(ids) < 2:
    st.caption("Train a second model to compare.")
    st.stop()
a_col, b_col = st.columns(2)
pair = [a_col.selectbox("Left", ids, index=0, key="w.runs.a", format_func=_label),
        b_col.selectbox("Right", ids, index=1, key="w.runs.b", format_func=_label)]
settings = pd.DataFrame({rid: {k: json.dumps(v) if isinstance(v, (list, dict)) else v
                               for k, v in by_id[rid].settings.items()} for rid in pair})
diff = settings[settings.iloc[:, 0].astype(str) != settings.iloc[:, 1].astype(str)]
st.caption("Settings that differ" if len(diff) else "Same settings")
if len(diff):
    st.dataframe(diff.astype(str), key="runs_diff")
for rid, col in zip(pair, (a_col, b_col)):
    with col:
        i = by_id[rid]
        st.markdown(f"**{rid}** · {i.status} · {i.data_name or '?'}  \nfinal loss "
                    f"{i.final_loss if i.final_loss is not None else '–'} · ARI {i.ari if i.ari is not None else '–'}")
        try:
            run = store.open(rid)
            files = run.record.get("files") or {}
            if files.get("latent"):
                lat = run.load_latent()
                coords = lat[[c for c in lat.columns if c.startswith("dhaka_")]].to_numpy()
                colour = lat["cluster"].to_numpy() if "cluster" in lat else None
                st.plotly_chart(plots.scatter(coords, color=colour, color_name="cluster", color_type="categorical",
                                              cell_ids=lat.index.astype(str), axis_prefix="dhaka", height=380,
                                              max_points=20_000),
                                key=f"cmp_lat_{rid}_{col is a_col}", config=widgets.PLOTLY_CONFIG)
            if files.get("history"):
                st.plotly_chart(plots.loss_curves(run.load_history(), title=None, height=260),
                                key=f"cmp_loss_{rid}_{col is a_col}", config=widgets.PLOTLY_CONFIG)
        except Exception as exc:  # noqa: BLE001
            st.error(f"Cannot show run {rid}: {widgets.error_message(exc)}")
