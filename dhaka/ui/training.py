"""The app's training, wherever it runs (the training process or, for debugging, the job's thread).

:func:`fit_embed_cluster` is :func:`dhaka.pipeline.run` with the app's plumbing around it: epoch
reports as dicts for the job's progress, checkpoints taken at most once per ``checkpoint_seconds``.
It is what :mod:`dhaka.ui.train_worker` runs in its process and what :mod:`dhaka.ui.tasks` runs in a
thread; both import it from here, so neither imports the other's caller.

Nothing here imports streamlit.
"""
from __future__ import annotations

import time
from typing import TYPE_CHECKING, Any, Callable

if TYPE_CHECKING:  # pragma: no cover
    import anndata
    import numpy as np

    from dhaka.pipeline import PipelineResult

__all__ = ["fit_embed_cluster"]


def fit_embed_cluster(
    adata: anndata.AnnData,
    params: dict[str, Any],
    *,
    truth: np.ndarray | None,
    k_max: int,
    batch_key: str | None = None,
    on_epoch: Callable[[dict[str, Any]], None],
    stop_event: Any,
    checkpoint: Callable[[Callable[[Any], None], int], None] | None,
    checkpoint_every: int,
    checkpoint_seconds: float = 0.0,
    on_phase: Callable[[str], None] = lambda phase: None,
) -> PipelineResult:
    """Fit :class:`dhaka.Dhaka`, embed the cells, call clusters and score them (:func:`dhaka.pipeline.run`).

    ``on_epoch`` gets each epoch's report as a dict; ``on_phase("embedding")`` is called when the
    fitting is over. Metrics: ``k``, ``silhouette``, ``n_threads`` (the CPU share the fit ran with) and, with
    ``truth``, ``ari`` / ``nmi``. ``batch_key``: the ``adata.obs`` column to correct for, or ``None``.
    Checkpoints are offered every ``checkpoint_every`` epochs and taken at the first offer, then at
    most once per ``checkpoint_seconds``.
    """
    from dhaka.pipeline import run

    def callback(report: Any) -> None:
        on_epoch(report.as_dict() if hasattr(report, "as_dict") else dict(vars(report)))

    last = [float("-inf")]

    def timed_checkpoint(save_fn: Callable[[Any], None], epoch: int) -> None:
        now = time.monotonic()
        if now - last[0] >= checkpoint_seconds:
            last[0] = now
            checkpoint(save_fn, epoch)

    result = run(adata, estimator=dict(params), k_max=k_max, truth=truth, batch_key=batch_key,
                 callback=callback, stop_event=stop_event,
                 checkpoint=timed_checkpoint if checkpoint is not None else None, checkpoint_every=checkpoint_every,
                 on_phase=on_phase)
    result.metrics["n_threads"] = int(result.estimator.n_threads_)  # the share the fit ran with, kept with the run
    return result
