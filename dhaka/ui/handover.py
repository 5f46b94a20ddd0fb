"""Results of background jobs taken into the session: a finished training (once per job, with a notice) and
the comparison views computed after it."""
from __future__ import annotations

import streamlit as st

from dhaka.ui import cached, owner, state, tasks, train_worker
from dhaka.ui.messages import error_message

__all__ = ["collect_finished_job", "start_views", "views_progress"]


def collect_finished_job() -> None:
    """Take a finished training job's result into the session (once per job).

    Called on every app run (from ``app.py``): when this session's job has
    ended since the last run, its result becomes the one in use (if it was
    trained on the dataset still loaded) and a notice says what happened.
    """
    job = state.get_job()
    if job is None or not job.done or st.session_state.get(state.COLLECTED_JOB) == job.id:
        return
    st.session_state[state.COLLECTED_JOB] = job.id
    snap = job.snapshot()
    status = snap["status"]
    out = job.result
    if status == "done" and out is None:  # freed while the person was away (dhaka.jobs abandoned sweep)
        run_id = (snap.get("progress") or {}).get("run_id", "?")
        state.push_notice("info", f"Training finished while you were away; its result is stored as run {run_id} "
                                  "(open it from the Runs page).")
        return
    if status == "failed" or out is None:
        msg = snap.get("error") or "training stopped before a model was made"
        state.push_notice("error", f"Training failed: {msg}")
        return
    if out.dataset_key != state.get_dataset_key():
        state.push_notice("warning", f"Training finished on the previously loaded dataset; it is stored as run "
                                     f"{out.run_id} (open it from the Runs page after loading that dataset).")
        return
    state.set_result(out.estimator, out.latent, gmm=out.gmm, run_id=out.run_id, source="job",
                     status=out.status, latent_digest=out.latent_digest, obs_names=out.obs_names)
    state.set_model_input(out.model_input, out.model_input_digest)
    start_views()
    if out.status == "stopped":
        state.push_notice("warning", f"Training stopped early; the model as it was is kept (run {out.run_id}).")
    else:
        k = out.metrics.get("k")
        extra = f", {k} GMM clusters" if k else ""
        state.push_notice("success", f"Training finished (run {out.run_id}{extra}). Open Explore to see it.")


def start_views(*, n_components: int = 2) -> None:
    """Compute the comparison views (PCA, t-SNE, UMAP) of the result in use in a background job.

    Explore shows each view as soon as it is ready (:func:`views_progress`); a view already
    computed is not computed again.
    """
    model_input = state.get_model_input()
    if model_input is None:
        return
    seed = int(state.get_estimator_params().get("seed", 0))
    after = None
    if not tasks.train_in_thread():
        after = train_worker.prestart  # the next training's spare process, once the views are done
    task = tasks.ViewsTask(model_input[0], digest=model_input[1], n_components=n_components, seed=seed,
                           done=tuple(state.get_embeddings()), run=cached.views_worker().run, after=after)
    if not task.methods:
        return
    previous = state.get_views_job()
    if previous is not None:
        previous[0].cancel()  # the views of the result this session no longer shows
    try:
        job = owner.submit(task, name="comparison views", kind="views")
    except Exception as exc:  # noqa: BLE001 - the views can still be computed from the Explore page
        state.push_notice("warning", f"The comparison views were not started ({error_message(exc)}); "
                                     "compute them on the Explore page.")
        return
    state.set_views_job(job, task)


def views_progress() -> None:
    """Take finished background views into the session; say what is still running (Explore page)."""
    views = state.get_views_job()
    if views is None:
        return
    job, task = views
    running = not job.done

    @st.fragment(run_every=1.0 if running else None)
    def _poll() -> None:
        have = state.get_embeddings()
        new = {k: v for k, v in list(task.results.items()) if k not in have}
        for name, coords in new.items():
            state.set_embedding(name, coords)
        snap = job.snapshot(history=False)
        if new or (running and job.done):
            st.rerun()  # the whole page: draw the new views (and stop polling when the job has ended)
        left = [tasks.VIEW_LABELS[m] for m in task.methods if f"{m}_{task.n_components}d" not in task.results]
        if snap["status"] in ("queued", "running") and left:
            prog = snap.get("progress") or {}
            what = prog.get("message") if snap["status"] == "running" else "Waiting for a free job slot"
            st.info(f"{what}… still to come: {', '.join(left)}. The views appear here as they finish.",
                    icon=":material/hourglass:")
        elif snap["status"] == "failed":
            st.warning(f"The comparison views failed: {snap.get('error')}. Use the Compute buttons below.")

    _poll()
