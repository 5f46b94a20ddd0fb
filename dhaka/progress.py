"""A progress bar over a whole fit (every refinement round and start), with the loss and an ETA.

:func:`fit_progress` wraps a fit's epoch callback: with no callback of the caller's and
``dhaka.settings.verbosity >= 1`` it draws a tqdm bar (notebook-aware through ``tqdm.auto``); a
caller that reports progress its own way (the app's worker, the CLI's lines) passes its callback
and gets no bar. Both read the same :class:`dhaka.train.EpochReport` fields.
"""
from __future__ import annotations

import contextlib
from typing import Any, Callable, Iterator

from dhaka import settings

__all__ = ["fit_progress"]


@contextlib.contextmanager
def fit_progress(callback: Callable[[Any], None] | None, *, desc: str = "Dhaka fit") -> Iterator[Callable | None]:
    """The callback a fit should use: the caller's, or a progress bar's when there is none and it is wanted.

    Only a fit in the main thread draws a bar: the bar moves the ``dhaka`` logger's lines above itself by
    swapping the logger's handlers for the duration, and two fits in threads at once (the app's in-process
    jobs) would restore each other's handlers and leave a stale one behind.
    """
    import threading

    if (callback is not None or not settings.progress_enabled()
            or threading.current_thread() is not threading.main_thread()):
        yield callback
        return
    import logging

    from tqdm.auto import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=100, desc=desc, unit="%", bar_format="{l_bar}{bar}| {n:.0f}% [{elapsed}<{remaining}{postfix}]",
               leave=True)

    def update(r: Any) -> None:
        done = 100.0 * (r.start + r.epoch / max(1, r.n_epochs)) / max(1, r.n_starts)
        bar.n = min(100.0, done)
        stage = f"{r.stage}, " if getattr(r, "stage", "") else ""
        bar.set_postfix_str(f"{stage}epoch {r.epoch}/{r.n_epochs}, loss {r.loss:.2f}, ETA {r.eta:.0f}s",
                            refresh=False)
        bar.refresh()

    try:
        with logging_redirect_tqdm(loggers=[logging.getLogger("dhaka")], tqdm_class=tqdm):  # log lines above the bar
            yield update
        bar.n = 100.0
        bar.refresh()
    finally:
        bar.close()
