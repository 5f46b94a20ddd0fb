"""Opening a stored run as the session's result: the Runs page's Open, and Explore's offer of the person's
latest run after a reload."""
from __future__ import annotations

from typing import Any

import numpy as np
import streamlit as st

from dhaka.runs import RunError
from dhaka.ui import annotate, cached, demos, owner, state, tasks
from dhaka.ui.handover import start_views
from dhaka.ui.messages import error_message, plain, safe_call

__all__ = ["offer_latest_run", "open_run"]


def offer_latest_run() -> None:
    """A button that opens this person's newest finished run of the loaded dataset (Explore after a reload).

    A reload or a page opened by its URL starts a new session, which holds no model; the runs are kept.
    Shows nothing when there is no such run.
    """
    view = owner.run_store()
    name = state.get_dataset_info().get("name")
    runs = [i for i in (safe_call(view.list, include_shared=False, what="Cannot list runs") or [])
            if i.data_name == name and i.status in ("done", "stopped")]
    if not runs:
        return
    newest = max(runs, key=lambda i: (i.created is not None, i.created or 0))
    when = newest.created.strftime("%Y-%m-%d %H:%M") if newest.created else "?"
    if st.button(f"Open your latest run of this dataset ({newest.id}, {newest.status}, {when})", type="primary",
                 key="w.exp.open_latest", icon=":material/history:",
                 help="This page was reloaded or opened by its address, which starts a new session; "
                      "every training is kept as a run (Runs page)."):
        if open_run(newest.id, store=view):
            st.rerun()


def open_run(run_id: str, *, store: Any = None) -> bool:
    """Load a stored run (final model or last checkpoint) as the session's result.

    The run's cells must be the loaded dataset's: matched by cell id when the
    run has latent coordinates, else by the data fingerprint (then the latent
    space is computed from the checkpoint). When the run was trained on a
    built-in demo that is not loaded, the demo is loaded first. Problems are
    shown with ``st.error``.

    Returns
    -------
    bool
        ``True`` when the run is now the result in use.
    """
    from dhaka.estimator import Dhaka

    store = store if store is not None else owner.run_store()
    try:
        run = store.open(run_id)
        record = run.record
        data = record.get("data") or {}
        info = state.get_dataset_info()
        if data.get("name") and data.get("name") != info.get("name"):
            demo = next((d for d in demos.available() if d.title == data["name"]), None)
            if demo is not None:
                adata, second = cached.load_demo(demo.key)
                state.set_dataset(adata, name=demo.title, source="demo", demo=demo.key, truth=demo.truth,
                                  mode=demo.mode, second=second)
        adata = state.get_dataset()
        if adata is None:
            st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))}: load that dataset first (Data page).")
            return False
        est = Dhaka.load(run.model_dir())
        files = record.get("files") or {}
        cell_ids = [str(o) for o in adata.obs_names]
        emb = None  # the model's input and latent, when computed here (preprocessed once)
        if files.get("latent"):
            lat = run.load_latent()
            lat.index = lat.index.astype(str)
            if set(lat.index) != set(cell_ids) or len(lat) != len(cell_ids):
                st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))} "
                         f"({len(lat):,} cells); the loaded dataset has other cells. Load that dataset first.")
                return False
            lat = lat.loc[cell_ids]
            Z = lat[[c for c in lat.columns if c.startswith("dhaka_")]].to_numpy(dtype=np.float32)
        else:
            fp = data.get("fingerprint") or {}
            mine = tasks.data_fingerprint(adata)
            if fp.get("sha256") and fp.get("sha256") != mine.get("sha256"):
                st.error(f"Run {run_id} was trained on {plain(repr(data.get('name')))} with shape {fp.get('shape')}; "
                         "the loaded dataset differs. Load that dataset first.")
                return False
            emb = est.embed(adata)
            Z = np.asarray(emb.latent)
        seed = int(est.get_params().get("seed", 0))
        z_digest = tasks.digest(Z)
        gmm = cached.clusters(Z, digest=z_digest, k_max=10, seed=seed, mode=est.get_params().get("mode", "expression"))
        state.set_result(est, Z, gmm=gmm, run_id=run_id, source="run", status=run.status,
                         latent_digest=z_digest, obs_names=cell_ids)
        for problem in annotate.load_from_run(run, cell_ids, taken=[str(c) for c in adata.obs.columns]):
            state.push_notice("warning", plain(f"Run {run_id}: {problem}."))
        S = emb.model_input if emb is not None else est.align(adata)[0]
        state.set_model_input(S, tasks.digest(S))
        start_views()
        state.push_notice("success", f"Opened run {run_id} ({run.status}"
                          + (f", checkpoint of epoch {record.get('last_checkpoint_epoch')}" if not files.get("model")
                             else "") + ").")
        return True
    except (RunError, Exception) as exc:  # noqa: BLE001
        st.error(f"Could not open run {run_id}: {error_message(exc)}")
        return False
