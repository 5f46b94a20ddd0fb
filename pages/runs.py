"""Runs page: your trainings kept on disk (and runs colleagues shared); open, share, compare, delete.

Names and messages that come from other people's runs (file names, error
texts) are shown with ``st.text``, never as Markdown.
"""
from __future__ import annotations

import json

import pandas as pd
import streamlit as st

from dhaka import plots
from dhaka.runs import RunStore
from dhaka.ui import entrypoint, figures, messages, owner, runs_open, state

entrypoint.require_entrypoint()

st.title("Runs")
me = owner.owner_key()
store = RunStore()

if owner.admin_token_configured() and not owner.is_admin():
    with st.expander("Lab admin"):
        token = st.text_input("Admin token", type="password", key="w.runs.admin_token")
        if st.button("Unlock the admin view", key="w.runs.unlock") and not owner.unlock_admin(token):
            st.error("That is not the admin token.")
admin_view = owner.is_admin() and st.toggle("Lab admin view: every person's runs", key="w.runs.admin", value=False)
view = store.view(admin=True) if admin_view else store.view(me)

user = owner.proxy_user()
tied = (f"your login ({user})" if user else
        "this page's address (its `?owner=` part): bookmark it to find your runs again from another browser, "
        "and share links without that part, since anyone with it sees your runs")
st.caption(f"Your runs, and runs colleagues shared (marked *shared*); they are tied to {tied}. Interrupted runs "
           "(the server stopped mid-training) keep their last checkpoint, which can be opened.")
infos = messages.safe_call(view.list, what="Cannot list runs") or []
if not infos:
    st.info("No runs yet: train a model on the Train page.")
    st.stop()


def _whose(i) -> str:
    if view.is_mine(i):
        return "mine, shared" if i.shared else "mine"
    return f"{owner.owner_label(i.owner)}" + (", shared" if i.shared else "")


table = pd.DataFrame([{**i.as_row(), "whose": _whose(i)} for i in infos]).set_index("id")
st.dataframe(table, key="runs_table",  # cells are plain text: safe for other people's file names
             column_order=["date", "whose", "status", "data", "shape", "final_loss", "ari", "checkpoint_epoch",
                           "settings"],
             column_config={
    "final_loss": st.column_config.NumberColumn("final loss", format="%.4g"),
    "ari": st.column_config.NumberColumn("ARI", format="%.3f"),
    "checkpoint_epoch": st.column_config.NumberColumn("checkpoint epoch")})

ids = [i.id for i in infos]
by_id = {i.id: i for i in infos}


def _label(run_id: str) -> str:  # selectbox options are plain text
    i = by_id[run_id]
    return f"{run_id} · {i.status} · {i.data_name or '?'}" + ("" if view.is_mine(i) else f" · {_whose(i)}")


def _run_text(i) -> None:
    """What a run says about itself, as plain text."""
    st.text(f"Data: {i.data_name or '?'}" + ("" if view.is_mine(i) else f"\nOwner: {_whose(i)}"))
    if i.error:
        st.text(f"Error: {i.error}")


st.subheader("Open")
sel = st.selectbox("Run", ids, key="w.runs.sel", format_func=_label)
info = by_id[sel]
mine = view.is_mine(info) or admin_view
_run_text(info)
if info.status == "interrupted":
    st.warning("This run was interrupted" + (f"; its checkpoint of epoch {info.last_checkpoint_epoch} can be opened."
                                              if info.has_checkpoint else " before its first checkpoint."))
if info.error:
    st.error("This run failed; its message is shown above.")
c1, c2, c3, _ = st.columns([1, 1, 1, 2])
can_open = info.status in ("done", "stopped") or info.has_checkpoint
if c1.button("Open in Explore", key="w.runs.open", type="primary", disabled=not can_open or info.status == "running"):
    if runs_open.open_run(sel, store=view):
        st.switch_page("pages/explore.py")
if mine and info.status != "running":
    label = "Stop sharing" if info.shared else "Share with the lab"
    if c3.button(label, key="w.runs.share", help="Shared runs can be listed and opened (not deleted) by everyone."):
        if messages.safe_call(view.share, sel, shared=not info.shared, what="Could not change sharing") is not None:
            state.push_notice("success", f"Run {sel} is {'no longer ' if info.shared else ''}shared.")
            st.rerun()
pending = st.session_state.get("w.runs.pending_delete")
if pending != sel:
    if c2.button("Delete…", key="w.runs.delete", disabled=info.status == "running" or not mine,
                 help=None if mine else "Only its owner can delete a run."):
        st.session_state["w.runs.pending_delete"] = sel
        st.rerun()
else:
    st.warning(f"Delete run {sel} and its model for good?")
    y, n, _ = st.columns([1, 1, 3])
    if y.button("Yes, delete", key="w.runs.confirm", type="primary"):
        st.session_state.pop("w.runs.pending_delete", None)
        try:
            view.delete(sel)
            state.push_notice("success", f"Deleted run {sel}.")
        except Exception as exc:  # noqa: BLE001
            st.error(f"Could not delete run {sel}:")
            st.text(messages.error_message(exc))
            st.stop()
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
        st.markdown(f"**{rid}** · {i.status} · final loss {i.final_loss if i.final_loss is not None else '–'} · "
                    f"ARI {i.ari if i.ari is not None else '–'}")
        _run_text(i)
        try:
            run = view.open(rid)
            files = run.record.get("files") or {}
            if files.get("latent"):
                lat = run.load_latent()
                coords = lat[[c for c in lat.columns if c.startswith("dhaka_")]].to_numpy()
                colour = lat["cluster"].to_numpy() if "cluster" in lat else None
                figures.chart(plots.scatter(coords, color=colour, color_name="cluster", color_type="categorical",
                                              cell_ids=lat.index.astype(str), axis_prefix="dhaka", height=380,
                                              max_points=20_000), "run-latent", {"run": rid},
                              key=f"cmp_lat_{rid}_{col is a_col}", session=False)
            if files.get("history"):
                figures.chart(plots.loss_curves(run.load_history(), title=None, height=260), "run-loss", {"run": rid},
                              key=f"cmp_loss_{rid}_{col is a_col}", session=False)
        except Exception as exc:  # noqa: BLE001
            st.error(f"Cannot show run {rid}:")
            st.text(messages.error_message(exc))
