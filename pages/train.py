"""Train page: choose the network and training settings, train in the background, watch it live."""
from __future__ import annotations

import streamlit as st

from dhaka import plots
from dhaka.ui import demos, entrypoint, figures, forms, live_chart, messages, owner, state, tasks

entrypoint.require_entrypoint()

# Every poll is a fragment rerun: Python work in the server and a redraw in the browser, which shares the
# CPU with the training (on a laptop, and on bench/app_live.py's 2 cores). The progress, ETA and loss curves
# are one fragment, polled every POLL_SECONDS; the bar and the curves are static SVG while the job runs (a
# Plotly redraw cost the browser ~0.5 s of CPU each, Streamlit's progress bar 35 ms; see
# dhaka/ui/live_chart.py), the interactive figure after. While a training runs the form is replaced by a
# summary of its settings: the browser's cost of a poll grows with the number of widgets on the page.
POLL_SECONDS = 2.0
# Near the end (the last fit with at most END_WAIT_ETA seconds to go, or embedding and clustering) a poll
# also waits up to END_WAIT_SECONDS for the end, so "Finished" shows when the training ends instead of at the
# next poll (1 s later on average). A click (Stop) made during such a wait is handled when it is over.
END_WAIT_SECONDS = 1.5
END_WAIT_ETA = 10.0

st.title("Train")
adata = state.require_dataset()
info = state.get_dataset_info()


@st.cache_resource(show_spinner=False)
def _cuda_available() -> bool:
    try:
        import torch

        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001
        return False


def _fmt_seconds(s: float | None) -> str:
    if s is None or s != s:
        return "?"
    s = int(round(s))
    return f"{s // 3600}h {s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m {s % 60:02d}s" if s >= 60 else f"{s}s"


job = state.get_job()
active = job is not None and not job.done
if not active and not tasks.train_in_thread() and not state.views_running():
    from dhaka.ui import train_worker

    # the next training's process imports torch while the form is being set; not while the last
    # training's views are computed (its 5 s of CPU slowed them: bench/app_live.py), they start it when done
    train_worker.prestart()

st.caption(f"Dataset: **{info.get('name')}** · {adata.n_obs:,} cells × {adata.n_vars:,} genes · "
           f"mode **{state.get_preprocess().get('mode', 'expression')}** (change on the Data page)")
if active:  # the settings of the running training; the form comes back, as it was, when it ends
    params, batch_key = state.get_train_params(), state.get_batch_key()
    batch = f" · corrected for batch: {batch_key}" if batch_key else ""
    st.caption(f"**Settings of this training:** {forms.settings_summary(params)}{batch}.")
else:
    params = forms.train_form(defaults=demos.fast_train_params() if demos.demo_fast() else None,
                              cuda=_cuda_available())
    batch_key = forms.batch_choice(adata)
full = {**state.get_preprocess(), **params}

c1, c2 = st.columns([1, 3])
start = c1.button("Start training", type="primary", key="w.train.start", disabled=active or not params,
                  icon=":material/play_arrow:")
if active:
    c2.caption("A training of this session is queued or running; stop it or wait for it to end.")
if start:
    ok = messages.safe_call(tasks.check_training_memory, adata, full, what="Cannot train")
    if ok is not None:
        task = tasks.make_train_task(adata, full, data_name=str(info.get("name")), dataset_key=info.get("key"),
                                     fingerprint=info.get("fingerprint"), truth=state.get_truth_labels(),
                                     batch_key=batch_key)
        new = messages.safe_call(owner.submit, task,  # the person's quota (a shared one without a login)
                                 name=f"train on {info.get('name')}", kind="train", memory_bytes=ok,
                                 what="Could not start training")
        if new is not None:
            state.set_job(new)
            st.rerun()


@st.fragment(run_every=POLL_SECONDS if active else None)
def live_progress() -> None:
    """Progress bar and ETA (every POLL_SECONDS while the job runs); the whole page reruns when it ends."""
    j = state.get_job()
    if j is None:
        st.info("No training yet in this session: set the options above and press **Start training**.")
        return
    j.touch()  # the person is still here
    snap = j.snapshot(history=True)
    prog = snap.get("progress") or {}
    status = snap["status"]
    if status == "queued":
        why = f" ({snap['waiting_for']})" if snap.get("waiting_for") else ""
        st.info(f"Queued: position {snap.get('queue_position') or '?'}{why} — this training starts when a "
                "training slot frees up.", icon=":material/hourglass:")
        st.button("Cancel", key="w.train.cancel", on_click=j.cancel)
    elif status == "running":
        ep, n = prog.get("epoch"), prog.get("n_epochs")
        s, ns = int(prog.get("start", 0)) + 1, int(prog.get("n_starts", 1))
        if prog.get("phase") == "embedding":
            bar = live_chart.progress_html(1.0, prog.get("message", "Embedding cells and calling clusters") + "…")
        elif ep and n:
            starts = f" · {prog['stage']}" if prog.get("stage") else (f" · start {s}/{ns}" if ns > 1 else "")
            bar = live_chart.progress_html(ep / n, f"Epoch {ep}/{n}{starts} · elapsed "
                                                   f"{_fmt_seconds(prog.get('elapsed'))} · ETA "
                                                   f"{_fmt_seconds(prog.get('eta'))} · loss {prog.get('loss', 0):.4g}")
        else:
            bar = live_chart.progress_html(0.0, prog.get("message", "Starting…"))
        if snap.get("stop_requested"):
            st.caption("Stopping after the current epoch…")
        else:
            st.button("Stop", key="w.train.stop", on_click=j.cancel, icon=":material/stop:",
                      help="Ends training within one epoch; the model is kept as it is.")
        # one element: the bar, then the curves (our own markup, every text escaped)
        st.markdown(bar + live_chart.loss_svg(snap["history"]), unsafe_allow_html=True)
        near_end = prog.get("phase") == "embedding" or (ep and s >= ns and (prog.get("eta") or 0.0) <= END_WAIT_ETA)
        if active and near_end and j.wait(END_WAIT_SECONDS):
            st.rerun()  # ended while we waited: show it now
    elif status == "done":
        n_epochs, n_fits = snap["n_history"], int(prog.get("n_fits") or 1)
        fits = f" over {n_fits} fits (gene refinement / warm starts)" if n_fits > 1 else ""
        st.success(f"Finished: {n_epochs} epochs{fits} in {_fmt_seconds(snap.get('elapsed'))} "
                   f"(run {prog.get('run_id', '?')}).", icon=":material/check_circle:")
    elif status == "cancelled":
        st.warning(f"Stopped after {snap['n_history']} epochs; the model as it was is kept "
                   f"(run {prog.get('run_id', '?')}).")
    else:
        st.error(f"Training failed: {snap.get('error')}")
    if active and status not in ("queued", "running"):
        st.rerun()  # the whole app: collect the result, switch the polling off


def final_chart() -> None:
    """The interactive loss curves, with their downloads, once the training has ended."""
    j = state.get_job()
    if j is None or not j.done:
        return
    snap = j.snapshot()
    if snap["history"]:
        fig = plots.loss_curves(snap["history"])
        st.plotly_chart(fig, key="train_loss", config=figures.PLOTLY_CONFIG)
        figures.figure_downloads(fig, "training-loss", key="dl_fig_loss")


live_progress()
final_chart()
if not active and state.results_match_dataset():
    st.page_link("pages/explore.py", label="Explore the latent space", icon=":material/arrow_forward:")
