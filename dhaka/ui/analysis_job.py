"""One submit-and-poll widget for every analysis page that runs its work as a background job.

A page names its job once (:class:`AnalysisJob`), hands :meth:`AnalysisJob.submit` a task from
:mod:`dhaka.ui.tasks` (a plain ``task(ctx)`` function that never calls streamlit), and draws
:meth:`AnalysisJob.progress`: queue position and Cancel, a progress bar and Stop, the rows finished
so far, the failure message. The panel polls with ``@st.fragment(run_every=...)`` only while the job
runs (``run_every=None`` otherwise) and reruns the whole page once when the job ends, so the page draws
the result from :meth:`AnalysisJob.result`.

The job runs in a thread of the server with its share of the CPU budget (:attr:`dhaka.jobs.JobContext.threads`)
applied to torch, OpenMP, BLAS and numba in that thread (:func:`dhaka.cpu.limit_threads`), so an analysis
takes its share instead of every core beside the trainings.

Session keys: ``f"{key}.job"`` holds the :class:`dhaka.jobs.Job`, ``f"{key}.result"`` the pair
``(dataset key, payload)`` of the last finished job (a stopped job's partial payload included).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, Callable

import streamlit as st

from dhaka.ui import owner, state
from dhaka.ui.messages import safe_call

if TYPE_CHECKING:  # pragma: no cover
    from dhaka.jobs import Job, JobContext

__all__ = ["AnalysisJob", "POLL_SECONDS", "analysis_job_status"]

#: Seconds between two polls of a running analysis job.
POLL_SECONDS = 1.0


@dataclass(frozen=True)
class AnalysisJob:
    """Where one page's background analysis lives in the session, and how it is shown.

    Parameters
    ----------
    key
        Prefix of the session keys (``"dhaka.analysis.compare"``).
    widget_key
        Prefix of the panel's widget keys (``"w.cmp"``: ``w.cmp.cancel``, ``w.cmp.stop``).
    what
        The analysis in words, for messages ("comparison", "dropout study").
    """

    key: str
    widget_key: str
    what: str

    @property
    def job_key(self) -> str:
        """Session key of the job."""
        return f"{self.key}.job"

    @property
    def result_key(self) -> str:
        """Session key of ``(dataset key, payload)``."""
        return f"{self.key}.result"

    def job(self) -> Job | None:
        """This page's current or last job."""
        return st.session_state.get(self.job_key)

    def active(self) -> bool:
        """``True`` while the job is queued or running."""
        job = self.job()
        return job is not None and not job.done

    def result(self) -> tuple[str | None, Any]:
        """``(dataset key, payload)`` of the last finished job, or ``(None, None)``."""
        return st.session_state.get(self.result_key) or (None, None)

    def result_for_dataset(self) -> Any:
        """The last payload, with a caption when it was computed on a previously loaded dataset."""
        key, payload = self.result()
        if payload is not None and key != state.get_dataset_key():
            st.caption("These results were computed on a previously loaded dataset.")
        return payload

    def submit(self, task: Callable[[JobContext], Any], *, name: str) -> bool:
        """Start ``task`` as a background job of this session; rerun the page when it started.

        The job returns ``(dataset key at submission, task's return value)``. A refusal (queue full,
        too many jobs of this person) is shown with ``st.error``.

        Returns
        -------
        bool
            ``False`` when the job could not start (the rerun happens otherwise).
        """
        dataset_key = state.get_dataset_key()

        def run(ctx: JobContext) -> tuple[str | None, Any]:
            from dhaka import cpu

            # the job's share of the CPU budget (ctx.threads, shown in its snapshot) for torch, OpenMP, BLAS
            # and numba in this thread, less a thread per core busy elsewhere; fits inside take the same
            with cpu.limit_threads(None):
                return dataset_key, task(ctx)

        job = safe_call(owner.submit, run, name=name, kind="analysis",
                        what=f"Could not start the {self.what}")
        if job is None:
            return False
        st.session_state[self.job_key] = job
        st.rerun()
        return True  # pragma: no cover - st.rerun does not return

    def progress(self, *, rows: bool = True, default_total: int = 1, start_message: str = "starting…",
                 on_result: Callable[[str, Any], None] | None = None) -> None:
        """The job's panel, polled once a second while it runs.

        Parameters
        ----------
        rows
            Show the history rows reported so far (a table) while the job runs.
        default_total
            Units of work when the job has not said yet (progress bar).
        start_message
            The bar's text before the first report.
        on_result
            Called once with ``(status, payload)`` when a finished job's result is taken into the session
            (e.g. to queue a notice that a stopped study shows partial rows).
        """
        was_active = self.active()

        @st.fragment(run_every=POLL_SECONDS if was_active else None)
        def _panel() -> None:
            job = self.job()
            if job is None:
                return
            snap = analysis_job_status(job, key=self.widget_key, what=self.what, default_total=default_total,
                                       start_message=start_message)
            if rows and snap["history"] and snap["status"] in ("queued", "running"):
                import pandas as pd

                st.dataframe(pd.DataFrame(snap["history"]), hide_index=True)
            if job.done and job.result is not None and self.result()[1] is not job.result[1]:
                st.session_state[self.result_key] = job.result
                if on_result is not None:
                    on_result(snap["status"], job.result[1])
            if was_active and job.done:
                st.rerun()  # the whole page: draw the result, stop polling

        _panel()


def analysis_job_status(job: Any, *, key: str, what: str, start_message: str = "starting…",
                        default_total: int = 1) -> dict[str, Any]:
    """Queue position + Cancel, progress bar + Stop, or the failure of a background analysis job.

    Returns the job's snapshot so the page can add what is its own (rows so far, results).
    Widget keys are ``f"{key}.cancel"`` and ``f"{key}.stop"``.
    """
    job.touch()  # the person is still here
    snap = job.snapshot()
    prog = snap.get("progress") or {}
    if snap["status"] == "queued":
        st.info(f"Queued (position {snap.get('queue_position') or '?'}): waits for a free job slot.")
        st.button("Cancel", key=f"{key}.cancel", on_click=job.cancel)
    elif snap["status"] == "running":
        done, total = prog.get("done", 0), prog.get("total") or max(default_total, 1)
        st.progress(min(1.0, done / total), text=prog.get("message", start_message))
        if not snap.get("stop_requested"):
            st.button("Stop", key=f"{key}.stop", on_click=job.cancel, icon=":material/stop:")
    elif snap["status"] == "failed":
        st.error(f"The {what} failed: {snap.get('error')}")
    return snap
