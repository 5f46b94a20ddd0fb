"""Load test of the app (issue 5): N simulated sessions train at once against one live server.

Two ways to drive the sessions, both through the app's real code path (the Train
page submits :func:`dhaka.ui.tasks.make_train_task` to the server's one
:class:`dhaka.jobs.JobManager`, which writes a run into the :class:`dhaka.runs.RunStore`):

``--mode browser`` (default)
    Starts ``streamlit run app.py`` on a free 127.0.0.1 port with its own
    ``DHAKA_HOME`` (a temporary folder), ``DHAKA_DEMO_FAST=1``,
    ``DHAKA_UMAP_WARMUP=0`` and ``DHAKA_MAX_JOBS``; opens N Chromium browser
    contexts (N independent Streamlit sessions over the websocket) with
    Playwright; each opens the app, goes to the Train page, sets the epochs,
    and all press *Start training* together; each then watches its own page
    ("Queued: position k" -> "Epoch i/n" -> "Finished ... (run ID)").
``--mode apptest``
    The same flow with N ``streamlit.testing`` AppTest sessions in this
    process (one process-wide job manager, as in the server).  No browser needed.

Reported: wall time from the first click to the last "Finished", throughput
(runs per minute), time from click to training start per session (the run's
``created`` time in the store minus the click; the run is created as the job
starts), the most trainings seen running at once (from the runs' created /
finished times; must not exceed ``max_jobs``); per session also the time from
opening the app to a ready Train page, and from the run being stored to the
page showing it.  Checked: exactly N runs, all ``done``, N distinct owners,
each run id shown by exactly one session and stored under that session's owner
key, with the requested number of epochs, and each session's Runs page (which
lists the person's own runs plus runs others shared; none are shared here)
offers that session's run alone.  A session's owner key is
:func:`dhaka.ui.owner.key_for_token` of its browser token: in AppTest mode the
token in ``st.session_state["dhaka.owner_token"]``, in browser mode the
``?owner=`` part of the page's address.  The store is read as a lab admin
(``RunStore.list(admin=True)``) to see every session's run.

Run: ``python -m bench.load_test --sessions 4 --epochs 3`` (writes the ``load``
section of ``bench/RESULTS.md``; ``--no-write`` to only print; ``--max-jobs 1 2``
compares server limits; ``--mode apptest`` without a browser).
"""
from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as _dt
import os
import re
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterator, Literal

ROOT = Path(__file__).resolve().parents[1]
APP = ROOT / "app.py"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run"]
SECTION = "load"

Mode = Literal["browser", "apptest"]

_FINISHED = re.compile(r"Finished: (\d+) epochs(?: over (\d+) fits)?.*?\(run ([^)\s]+)\)")
_QUEUED = re.compile(r"Queued: position (\d+)")
_EPOCH = re.compile(r"Epoch (\d+)/(\d+)")
_FAILED = re.compile(r"Training failed: ([^\n]{0,200})")
_MAIN_TEXT = """() => { const m = document.querySelector('[data-testid="stMain"]'); return m ? m.textContent : ''; }"""
_STOPPED = re.compile(r"Stopped after (\d+) epochs")
_OWNER_IN_URL = """() => new URLSearchParams(window.location.search).get('owner')"""


# ----------------------------------------------------------------------------- results
@dataclass
class SessionResult:
    """What one simulated session did and saw.

    Attributes
    ----------
    index
        0-based session number.
    clicked
        Wall-clock time (``time.time()``) of pressing *Start training*.
    finished_seen
        Wall-clock time the session's page first showed the end of its training, or ``None``.
    outcome
        ``"done"``, ``"stopped"``, ``"failed"`` or ``"timeout"`` as shown on the page.
    run_id
        The run id the page named in its "Finished" message, or ``None``.
    epochs_shown
        The epoch count in the "Finished" message.
    fits_shown
        The number of fits in it (gene refinement / warm starts: each runs the epochs asked for).
    queue_positions
        Every "Queued: position k" value the page showed.
    saw_running
        ``True`` when the page showed an "Epoch i/n" progress line.
    owner
        The session's owner key (:func:`dhaka.ui.owner.key_for_token` of its token: the
        session state's in AppTest mode, the address's ``?owner=`` in browser mode).
    runs_listed
        The run ids the session's Runs page offers (its own runs plus shared ones; should
        be exactly :attr:`run_id`).
    page_error
        Browser mode: an exception while driving the page (element not found, time-out).
    ready_s
        Seconds from opening the app to its Train page with the epochs set (all sessions
        open at once, so this is the server's start-up latency under N new sessions).
    message
        Error text (training failure, time-out, page problem).
    """

    index: int
    clicked: float | None = None
    finished_seen: float | None = None
    outcome: str = "timeout"
    run_id: str | None = None
    epochs_shown: int | None = None
    fits_shown: int = 1
    queue_positions: list[int] = field(default_factory=list)
    saw_running: bool = False
    owner: str | None = None
    message: str | None = None
    runs_listed: list[str] | None = None
    page_error: str | None = None
    ready_s: float | None = None

    def observe(self, text: str, now: float) -> bool:
        """Update from the page's text; ``True`` once the training has ended (any way)."""
        for m in _QUEUED.finditer(text):
            pos = int(m.group(1))
            if not self.queue_positions or self.queue_positions[-1] != pos:
                self.queue_positions.append(pos)
        if _EPOCH.search(text):
            self.saw_running = True
        m = _FINISHED.search(text)
        if m:
            self.outcome, self.epochs_shown, self.run_id = "done", int(m.group(1)), m.group(3)
            self.fits_shown = int(m.group(2) or 1)
        elif _STOPPED.search(text):
            self.outcome = "stopped"
        elif _FAILED.search(text):
            self.outcome, self.message = "failed", _FAILED.search(text).group(1)
        else:
            return False
        self.finished_seen = now
        return True


@dataclass
class LoadResult:
    """The whole load test: sessions, the stored runs and the checks.

    Attributes
    ----------
    mode, sessions, max_jobs, epochs
        The set-up.
    home
        The ``DHAKA_HOME`` the runs were stored under.
    results
        One :class:`SessionResult` per session.
    runs
        ``run id -> run.json record`` of every run in the store afterwards.
    server_cpu_s
        CPU seconds the server process (AppTest mode: this process, sessions and jobs
        alike) used while the sessions ran, page loads included.
    browser_cpu_s
        Browser mode: CPU seconds of Chromium and the Playwright driver over their life.
    problems
        Every failed check, in words (empty when all is well).
    """

    mode: str
    sessions: int
    max_jobs: int
    epochs: int
    home: Path
    results: list[SessionResult]
    runs: dict[str, dict[str, Any]]
    server_cpu_s: float = float("nan")
    browser_cpu_s: float = float("nan")
    problems: list[str] = field(default_factory=list)

    # -- derived figures ------------------------------------------------------------
    @property
    def wall_s(self) -> float:
        """First click to the last session seeing its training end."""
        clicks = [r.clicked for r in self.results if r.clicked is not None]
        ends = [r.finished_seen for r in self.results if r.finished_seen is not None]
        return max(ends) - min(clicks) if clicks and ends else float("nan")

    @property
    def n_done(self) -> int:
        """Runs stored with status ``done``."""
        return sum(1 for rec in self.runs.values() if rec.get("status") == "done")

    @property
    def throughput(self) -> float:
        """Completed runs per minute over the wall time."""
        w = self.wall_s
        return 60.0 * self.n_done / w if w == w and w > 0 else float("nan")

    def queue_waits(self) -> list[float]:
        """Per session: its run's ``created`` time minus its click (seconds), where both are known."""
        out = []
        for r in self.results:
            rec = self.runs.get(r.run_id or "")
            t = _iso(rec.get("created")) if rec else None
            if t is not None and r.clicked is not None:
                out.append(max(0.0, t - r.clicked))
        return out

    def training_seconds(self) -> float:
        """Sum over runs of created -> finished in the store (the jobs' own time)."""
        total = 0.0
        for rec in self.runs.values():
            a, b = _iso(rec.get("created")), _iso(rec.get("finished"))
            if a is not None and b is not None:
                total += b - a
        return total

    def max_concurrent(self) -> int:
        """Most runs that were training at the same moment (from created/finished in the store)."""
        events = []
        for rec in self.runs.values():
            a, b = _iso(rec.get("created")), _iso(rec.get("finished"))
            if a is not None and b is not None:
                events += [(a, 1), (b, -1)]
        events.sort(key=lambda e: (e[0], e[1]))  # an end before a start at the same instant
        cur = best = 0
        for _, d in events:
            cur += d
            best = max(best, cur)
        return best

    @property
    def failures(self) -> int:
        """Sessions whose training did not end as ``done``."""
        return sum(1 for r in self.results if r.outcome != "done")

    def summary_row(self) -> dict[str, Any]:
        waits = self.queue_waits()
        return {
            "mode": self.mode,
            "sessions": self.sessions,
            "max_jobs": self.max_jobs,
            "epochs": self.epochs,
            "wall s": _f(self.wall_s),
            "runs/min": _f(self.throughput, 2),
            "p50 queue wait s": _f(statistics.median(waits)) if waits else "n/a",
            "max queue wait s": _f(max(waits)) if waits else "n/a",
            "max running at once": self.max_concurrent(),
            "server CPU s": _f(self.server_cpu_s),
            "browser CPU s": _f(self.browser_cpu_s),
            "training s (sum)": _f(self.training_seconds()),
            "runs stored (done)": f"{self.n_done}/{self.sessions}",
            "failures": self.failures,
        }

    def session_rows(self) -> list[dict[str, Any]]:
        rows = []
        for r in self.results:
            rec = self.runs.get(r.run_id or "") or {}
            created, finished = _iso(rec.get("created")), _iso(rec.get("finished"))
            rows.append({
                "session": r.index,
                "outcome": r.outcome,
                "run": r.run_id or "-",
                "queue positions shown": ",".join(map(str, r.queue_positions)) or "-",
                "click to start s": _f(created - r.clicked) if created and r.clicked else "n/a",
                "training s": _f(finished - created) if created and finished else "n/a",
                "open to ready s": _f(r.ready_s) if r.ready_s is not None else "n/a",
                "click to finished on page s": (_f(r.finished_seen - r.clicked)
                                                if r.finished_seen and r.clicked else "n/a"),
                "stored to page s": _f(r.finished_seen - finished) if finished and r.finished_seen else "n/a",
                "own runs listed": "n/a" if r.runs_listed is None else len(r.runs_listed),
            })
        return rows


def _f(x: float, digits: int = 1) -> str:
    return "n/a" if x != x else f"{x:.{digits}f}"


def _iso(value: Any) -> float | None:
    if not isinstance(value, str):
        return None
    try:
        t = _dt.datetime.fromisoformat(value)
    except ValueError:
        return None
    if t.tzinfo is None:
        t = t.replace(tzinfo=_dt.timezone.utc)
    return t.timestamp()


def stored_runs(home: str | os.PathLike[str]) -> dict[str, dict[str, Any]]:
    """``run id -> run.json record`` of every run under ``home`` (via :class:`dhaka.runs.RunStore`)."""
    from dhaka.runs import RunStore

    store = RunStore(home)
    out = {}
    for info in store.list(admin=True):  # every session's run: read as a lab admin
        rec = dict(store.open(info.id, admin=True).record)
        rec["status"] = info.status  # effective status (interrupted when the writer died)
        # "finished" is stored to the second; run.json is last written (atomically) by finish(),
        # so its modification time is the finish to the microsecond
        if rec.get("finished"):
            with contextlib.suppress(OSError):
                mtime = (Path(info.path) / "run.json").stat().st_mtime
                rec["finished"] = _dt.datetime.fromtimestamp(mtime, _dt.timezone.utc).isoformat()
        out[info.id] = rec
    return out


def check(result: LoadResult) -> list[str]:
    """Every run stored and done, one per session, each session saw only its own run.

    Returns
    -------
    list of str
        The problems found (also stored in ``result.problems``).
    """
    problems: list[str] = []
    n = result.sessions
    for r in result.results:
        if r.page_error:
            problems.append(f"session {r.index}: {r.page_error}")
        if r.outcome != "done":
            problems.append(f"session {r.index}: training ended as {r.outcome}"
                            + (f" ({r.message})" if r.message else ""))
        if r.run_id is not None and r.run_id not in result.runs:
            problems.append(f"session {r.index}: its page names run {r.run_id}, which is not in the store")
        if r.epochs_shown is not None and r.epochs_shown != result.epochs * r.fits_shown:
            problems.append(f"session {r.index}: finished {r.epochs_shown} epochs over {r.fits_shown} fits, "
                            f"asked for {result.epochs} per fit")
    if len(result.runs) != n:
        problems.append(f"{len(result.runs)} runs stored for {n} sessions")
    not_done = {k: v.get("status") for k, v in result.runs.items() if v.get("status") != "done"}
    if not_done:
        problems.append(f"runs not done: {not_done}")
    owners = [rec.get("owner") for rec in result.runs.values()]
    if any(not o for o in owners):
        problems.append("a stored run has no owner")
    if len(set(owners)) != len(owners):
        problems.append(f"runs share an owner: {owners}")
    shown = [r.run_id for r in result.results if r.run_id is not None]
    if len(set(shown)) != len(shown):
        problems.append(f"two sessions were shown the same run: {shown}")
    for r in result.results:
        rec = result.runs.get(r.run_id or "")
        if rec is None:
            continue
        if r.owner is None:
            problems.append(f"session {r.index}: its owner key is unknown, so its run's owner cannot be checked")
        elif rec.get("owner") != r.owner:
            problems.append(f"session {r.index} was shown run {r.run_id} of another owner")
        if r.runs_listed is not None and r.runs_listed != [r.run_id]:
            problems.append(f"session {r.index}: its own-runs list shows {r.runs_listed}, expected [{r.run_id}]")
        epochs = (rec.get("settings") or {}).get("epochs")
        if epochs != result.epochs:
            problems.append(f"run {r.run_id} has epochs={epochs}, the session set {result.epochs}")
    if result.max_concurrent() > result.max_jobs:
        problems.append(f"{result.max_concurrent()} trainings ran at once with max_jobs={result.max_jobs}")
    result.problems = problems
    return problems


# ----------------------------------------------------------------------------- live server
def free_port() -> int:
    """A free TCP port on 127.0.0.1."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def live_server(home: str | os.PathLike[str], *, max_jobs: int = 1, port: int | None = None,
                log_path: str | os.PathLike[str] | None = None, timeout: float = 120.0,
                info: dict[str, Any] | None = None) -> Iterator[str]:
    """``streamlit run app.py`` on 127.0.0.1 with its own run store; yields the base URL.

    The server is stopped (terminate, then kill) when the block ends; ``info``, when
    given, receives the server's ``"pid"``.
    """
    port = port or free_port()
    env = {**os.environ, "DHAKA_HOME": str(home), "DHAKA_DEMO_FAST": "1", "DHAKA_UMAP_WARMUP": "0",
           "DHAKA_MAX_JOBS": str(int(max_jobs)), "PYTHONUNBUFFERED": "1"}  # threads: the server's CPU budget
    log_path = Path(log_path) if log_path else Path(home) / "server.log"
    log = open(log_path, "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(APP), "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    if info is not None:
        info["pid"] = proc.pid
    try:
        deadline = time.time() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}; see {log_path}")
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                pass
            if time.time() > deadline:
                raise RuntimeError(f"streamlit did not become healthy within {timeout:.0f} s; see {log_path}")
            time.sleep(0.5)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(5)
        log.close()


def process_cpu_seconds(pid: int | None = None) -> float:
    """User + system CPU seconds of process ``pid`` (this process when ``None``); ``nan`` if unreadable."""
    if pid is None:
        t = os.times()
        return t.user + t.system
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return float("nan")


def descendants_cpu_seconds(*, exclude: int | None = None) -> float:
    """CPU seconds of the living descendants of this process (the Playwright driver and
    Chromium), leaving out the subtree of ``exclude`` (the server)."""
    children: dict[int, list[int]] = {}
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                ppid = int((d / "stat").read_text().rsplit(")", 1)[1].split()[1])
            except (OSError, IndexError, ValueError):
                continue
            children.setdefault(ppid, []).append(int(d.name))
    total, todo = 0.0, list(children.get(os.getpid(), []))
    while todo:
        pid = todo.pop()
        if pid == exclude:
            continue
        cpu = process_cpu_seconds(pid)
        total += cpu if cpu == cpu else 0.0
        todo += children.get(pid, [])
    return total


def browser_available() -> str | None:
    """``None`` when Chromium and Playwright are there, else what is missing."""
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing")
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed")
    return "; ".join(problems) or None


async def _browser_session(browser: Any, url: str, res: SessionResult, *, epochs: int, ready: asyncio.Barrier,
                           timeout: float, shots: Path | None) -> None:
    from playwright.async_api import expect

    context = await browser.new_context(viewport={"width": 1300, "height": 1000})
    page = await context.new_page()
    page.set_default_timeout(min(timeout, 60.0) * 1000)  # one page action; the training wait has its own
    waited = False
    t0 = time.time()
    try:
        await page.goto(url)
        await expect(page.get_by_role("heading", name="Data", exact=True)).to_be_visible(timeout=timeout * 1000)
        res.owner = await _owner_from_url(page, timeout)
        await page.get_by_role("link", name="Train", exact=True).click()
        await expect(page.get_by_role("heading", name="Train", exact=True)).to_be_visible(timeout=timeout * 1000)
        box = page.get_by_label("Epochs", exact=True)
        await box.fill(str(epochs))
        await box.press("Enter")
        await _settle(page, timeout)
        if await box.input_value() != str(epochs):
            raise RuntimeError(f"the Epochs box shows {await box.input_value()!r}")
        res.ready_s = time.time() - t0
        waited = True
        await ready.wait()  # every session is on its Train page: press Start together
        start = page.get_by_role("button", name="Start training")
        await start.click()
        res.clicked = time.time()
        deadline = time.time() + timeout
        while time.time() < deadline:
            try:  # textContent: no layout forced, so watching costs the browser little
                text = await page.evaluate(_MAIN_TEXT)
            except Exception:  # noqa: BLE001 - the page is redrawing; try again
                text = ""
            if res.observe(text or "", time.time()):
                break
            await asyncio.sleep(0.5)
        else:
            res.outcome, res.message = "timeout", f"no end of training within {timeout:.0f} s"
        if res.outcome == "done":
            # the page collects the result in one more rerun: Start is offered again
            await expect(start).to_be_enabled(timeout=timeout * 1000)
            await _settle(page, timeout)
            if shots is not None:
                await page.screenshot(path=shots / f"session-{res.index}-train.png")
            res.runs_listed = await _own_runs_listed(page, res.run_id, timeout)
            if shots is not None:
                await page.screenshot(path=shots / f"session-{res.index}-runs.png")
            owner_now = await _owner_from_url(page, timeout)
            if owner_now != res.owner:
                raise RuntimeError(f"the address's owner changed from {res.owner} to {owner_now} during the session")
    except Exception as exc:  # noqa: BLE001 - reported as this session's failure
        res.page_error = f"{type(exc).__name__}: " + " ".join(str(exc).split())[:300]
        if shots is not None:
            with contextlib.suppress(Exception):
                await page.screenshot(path=shots / f"session-{res.index}-failure.png")
        if not waited:
            with contextlib.suppress(Exception):
                await ready.abort()
    finally:
        await context.close()


async def _owner_from_url(page: Any, timeout: float) -> str:
    """The owner key of the browser token in the page's address (``?owner=<token>``).

    The app writes the token into the address on every run (page changes clear it
    first), so the address is read until it carries a valid token or ``timeout``
    (capped at 60 s) passes.
    """
    from dhaka.ui.owner import key_for_token, valid_token

    token = None
    deadline = time.time() + min(timeout, 60.0)
    while True:
        with contextlib.suppress(Exception):  # the page is redrawing; try again
            token = await page.evaluate(_OWNER_IN_URL)
        if valid_token(token):
            return key_for_token(token)
        if time.time() > deadline:
            raise RuntimeError(f"the page's address carries no owner token (owner={token!r}): {page.url}")
        await asyncio.sleep(0.2)


async def _own_runs_listed(page: Any, run_id: str | None, timeout: float) -> list[str]:
    """Runs page: the run ids its picker offers (the person's own runs plus shared ones).

    The picker is read until it can be read (it is drawn once the page's rerun lands) and
    offers ``run_id`` or anything else, or ``timeout`` (capped at 60 s) passes; a list with
    any other run in it is returned at once, and the last list read otherwise.
    """
    from playwright.async_api import expect

    await page.get_by_role("link", name="Runs", exact=True).click()
    await expect(page.get_by_role("heading", name="Runs", exact=True)).to_be_visible(timeout=timeout * 1000)
    await _settle(page, timeout)
    options = page.get_by_role("option")
    seen: list[str] = []
    deadline = time.time() + min(timeout, 60.0)
    while time.time() < deadline:
        await page.get_by_role("combobox", name="Run", exact=True).click()
        try:
            await expect(options.first).to_be_visible(timeout=5_000)
            seen = [t.split("·")[0].strip() for t in await options.all_inner_texts()]
        except AssertionError:
            pass
        await page.keyboard.press("Escape")
        if seen and (seen == [run_id] or any(r != run_id for r in seen)):
            break
        await asyncio.sleep(1.0)
    return seen


async def _settle(page: Any, timeout: float) -> None:
    """Wait until Streamlit has finished the rerun a widget change started."""
    await asyncio.sleep(0.5)
    widget = page.locator('[data-testid="stStatusWidget"]')
    deadline = time.time() + timeout
    quiet = 0
    while time.time() < deadline and quiet < 3:
        quiet = quiet + 1 if not await widget.is_visible() else 0
        await asyncio.sleep(0.2)


async def _run_browser(url: str, results: list[SessionResult], *, epochs: int, timeout: float,
                       shots: Path | None, cpu: list[float], server_pid: int) -> None:
    from playwright.async_api import async_playwright

    async with async_playwright() as p:
        browser = await p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        try:
            ready = asyncio.Barrier(len(results))
            await asyncio.gather(*(_browser_session(browser, url, r, epochs=epochs, ready=ready, timeout=timeout,
                                                    shots=shots) for r in results))
            cpu.append(descendants_cpu_seconds(exclude=server_pid))  # before Chromium exits
        finally:
            await browser.close()


def run_browser(sessions: int, *, epochs: int, max_jobs: int, home: str | os.PathLike[str],
                timeout: float = 240.0, shots: str | os.PathLike[str] | None = None) -> LoadResult:
    """N Chromium sessions against a live ``streamlit run app.py`` (see the module docstring).

    Parameters
    ----------
    sessions
        Number of browser sessions (one browser context each).
    epochs
        Epochs each session sets on the Train page.
    max_jobs
        ``DHAKA_MAX_JOBS`` of the server.
    home
        ``DHAKA_HOME`` of the server (should be empty).
    timeout
        Seconds any one step, and each session's wait for its training, may take.
    shots
        Folder for a screenshot of every session's final page, or ``None``.

    Returns
    -------
    LoadResult
        Checked (see :func:`check`).
    """
    missing = browser_available()
    if missing:
        raise RuntimeError(f"the browser load test needs a browser: {missing}")
    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    shots_dir = Path(shots) if shots else None
    if shots_dir:
        shots_dir.mkdir(parents=True, exist_ok=True)
    results = [SessionResult(i) for i in range(sessions)]
    browser_cpu: list[float] = []
    server: dict[str, Any] = {}
    with live_server(home, max_jobs=max_jobs, info=server) as url:
        cpu0 = process_cpu_seconds(server["pid"])
        asyncio.run(_run_browser(url, results, epochs=epochs, timeout=timeout, shots=shots_dir,
                                 cpu=browser_cpu, server_pid=server["pid"]))
        cpu = process_cpu_seconds(server["pid"]) - cpu0
        # the server may still be writing the last run's files when its page says Finished
        _wait_runs_settled(home, sessions, timeout=30)
    result = LoadResult("browser", sessions, max_jobs, epochs, home, results, stored_runs(home), server_cpu_s=cpu,
                        browser_cpu_s=browser_cpu[0] if browser_cpu else float("nan"))
    check(result)
    return result


def _wait_runs_settled(home: Path, n: int, *, timeout: float) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        runs = stored_runs(home)
        if len(runs) >= n and all(rec.get("status") != "running" for rec in runs.values()):
            return
        time.sleep(0.5)


# ----------------------------------------------------------------------------- AppTest
@contextlib.contextmanager
def _env(**values: str) -> Iterator[None]:
    old = {k: os.environ.get(k) for k in values}
    os.environ.update(values)
    try:
        yield
    finally:
        for k, v in old.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def _apptest_texts(at: Any) -> str:
    parts = []
    for kind in ("info", "success", "warning", "error"):
        parts += [str(e.value) for e in getattr(at, kind)]
    for p in at.get("progress"):
        parts.append(str(getattr(p, "proto", None) and p.proto.text or ""))
    return "\n".join(parts)


def run_apptest(sessions: int, *, epochs: int, home: str | os.PathLike[str], timeout: float = 240.0,
                poll: float = 0.5) -> LoadResult:
    """N AppTest sessions of ``app.py`` in this process, sharing its job manager.

    Each session runs the app, opens the Train page, sets the epochs and
    presses *Start training* (one after the other, fast); then every session is
    rerun every ``poll`` seconds, as the page's own polling does, until its
    page shows the end of its training.  ``max_jobs`` is the process-wide
    manager's limit (``DHAKA_MAX_JOBS`` when this process created it).
    """
    from streamlit.testing.v1 import AppTest

    home = Path(home)
    home.mkdir(parents=True, exist_ok=True)
    results = [SessionResult(i) for i in range(sessions)]
    with _env(DHAKA_HOME=str(home), DHAKA_DEMO_FAST="1", DHAKA_UMAP_WARMUP="0"):
        from dhaka.jobs import get_manager
        from dhaka.ui import owner

        max_jobs = get_manager().max_running
        cpu0 = process_cpu_seconds()
        apps = []
        for r in results:
            t0 = time.time()
            at = AppTest.from_file(str(APP), default_timeout=timeout)
            at.run()
            at.switch_page("pages/train.py").run()
            at.number_input(key="w.train.epochs").set_value(epochs).run()
            if at.exception:
                raise RuntimeError(f"session {r.index}: {[e.value for e in at.exception]}")
            r.owner = owner.key_for_token(at.session_state[owner.TOKEN_KEY])  # the person's key, as the app has it
            r.ready_s = time.time() - t0
            apps.append(at)
        for r, at in zip(results, apps):
            at.button(key="w.train.start").click()
            r.clicked = time.time()
            at.run()
        deadline = time.time() + timeout
        pending = set(range(sessions))
        for i, (r, at) in enumerate(zip(results, apps)):
            if "dhaka.job" not in at.session_state or at.session_state["dhaka.job"] is None:
                # the page refused the start (memory check, queue full, ...): say why, do not wait it out
                shown = [str(e.value) for e in at.exception] + [str(e.value) for e in at.error]
                r.outcome, r.message = "failed", "no job after Start: " + ("; ".join(shown) or "nothing shown")
                pending.discard(i)
        while pending and time.time() < deadline:
            for i in sorted(pending):
                at, r = apps[i], results[i]
                at.run()
                if at.exception:
                    r.outcome, r.message = "failed", str([e.value for e in at.exception])
                    pending.discard(i)
                    continue
                job = at.session_state["dhaka.job"] if "dhaka.job" in at.session_state else None
                if job is not None and job.owner != r.owner:
                    r.message = f"the session holds job {job.id} of owner {job.owner}"
                if r.observe(_apptest_texts(at), time.time()):
                    pending.discard(i)
            if pending:
                time.sleep(poll)
        for i in pending:
            results[i].outcome, results[i].message = "timeout", f"no end of training within {timeout:.0f} s"
        cpu = process_cpu_seconds() - cpu0
        for r, at in zip(results, apps):
            # a manager-level view of isolation: each owner holds exactly its own training job (the app
            # may also run other jobs for it after a training, e.g. the background "comparison views")
            jobs = [j for j in get_manager().jobs(r.owner) if j.kind == "train"] if r.owner else []
            if len(jobs) != 1:
                r.message = (r.message or "") + f" manager lists {len(jobs)} training jobs for this session"
            if r.outcome == "done":  # the user's view: the Runs page lists the person's own (and shared) runs
                at.switch_page("pages/runs.py").run()
                if at.exception:
                    r.page_error = str([e.value for e in at.exception])
                else:
                    try:
                        options = at.selectbox(key="w.runs.sel").options
                    except KeyError:  # no picker: the page lists no run at all
                        options = []
                    r.runs_listed = [str(o).split("·")[0].strip() for o in options]
        _wait_runs_settled(home, sessions, timeout=30)
        result = LoadResult("apptest", sessions, max_jobs, epochs, home, results, stored_runs(home),
                            server_cpu_s=cpu)
    check(result)
    for r in results:
        if r.message and r.outcome == "done":
            result.problems.append(f"session {r.index}: {r.message}")
    return result


# ----------------------------------------------------------------------------- CLI
def run_load(mode: Mode = "browser", *, sessions: int = 4, epochs: int = 3, max_jobs: int = 1,
             home: str | os.PathLike[str] | None = None, timeout: float = 240.0,
             shots: str | os.PathLike[str] | None = None) -> LoadResult:
    """Run the load test in ``mode`` with a fresh run store (a temporary folder when ``home`` is ``None``)."""
    if home is None:
        home = tempfile.mkdtemp(prefix="dhaka-load-")
    if mode == "browser":
        return run_browser(sessions, epochs=epochs, max_jobs=max_jobs, home=home, timeout=timeout, shots=shots)
    if mode == "apptest":
        return run_apptest(sessions, epochs=epochs, home=home, timeout=timeout)
    raise ValueError(f"mode is 'browser' or 'apptest', got {mode!r}")


def report(results: list[LoadResult]) -> str:
    """Markdown: the summary table, the per-session tables and the problems."""
    from bench.common import markdown_table

    out = [markdown_table([r.summary_row() for r in results])]
    for r in results:
        out.append(f"\nSessions, {r.mode} mode:\n\n" + markdown_table(r.session_rows()))
        if r.problems:
            out.append("\nProblems:\n" + "\n".join(f"- {p}" for p in r.problems) + "\n")
    return "\n".join(out)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sessions", type=int, nargs="+", default=[4], help="one run per value")
    parser.add_argument("--epochs", type=int, default=3)
    parser.add_argument("--max-jobs", type=int, nargs="+", default=[1],
                        help="DHAKA_MAX_JOBS of the server; browser mode runs once per value, AppTest mode uses "
                             "the first (one job manager per process)")
    parser.add_argument("--mode", choices=["auto", "browser", "apptest", "both"], default="auto",
                        help="auto: browser when Chromium and Playwright are there, else apptest")
    parser.add_argument("--timeout", type=float, default=240.0)
    parser.add_argument("--shots", default=None, help="folder for screenshots of each browser session")
    parser.add_argument("--no-write", action="store_true", help="do not write bench/RESULTS.md")
    args = parser.parse_args(argv)

    os.environ.setdefault("DHAKA_MAX_JOBS", str(args.max_jobs[0]))  # the AppTest mode's process-wide manager
    # no thread override: the jobs take their share of the CPU budget (dhaka.cpu, dhaka.jobs.plan), as in production
    from bench.common import machine_description, write_section

    machine = machine_description()
    if args.mode == "auto":
        missing = browser_available()
        if missing:
            print(f"no browser ({missing}): AppTest mode", flush=True)
        modes = ["apptest"] if missing else ["browser"]
    else:
        modes = ["browser", "apptest"] if args.mode == "both" else [args.mode]
    plan = [(m, n, j) for m in modes for n in args.sessions
            for j in (args.max_jobs if m == "browser" else args.max_jobs[:1])]
    done = []
    for mode, n, max_jobs in plan:
        with tempfile.TemporaryDirectory(prefix="dhaka-load-") as home:
            r = run_load(mode, sessions=n, epochs=args.epochs, max_jobs=max_jobs, home=home, timeout=args.timeout,
                         shots=args.shots and Path(args.shots) / f"{mode}-{n}-{max_jobs}")
        done.append(r)
        print(report([r]), flush=True)
    text = report(done)
    if not args.no_write:
        shown = [a for a in (argv if argv is not None else sys.argv[1:]) if not a.startswith("--shots")]
        if args.shots and args.shots in shown:
            shown.remove(args.shots)
        cmd = " ".join(["python -m bench.load_test", *shown])
        body = (
            "## Load test: N sessions train at once on one server (`bench/load_test.py`)\n\n"
            f"`{cmd}`. Browser mode: `streamlit run app.py` on 127.0.0.1 "
            "(fast demo: 200 cells x 300 genes, shallow network, `DHAKA_MAX_JOBS` as shown), one headless "
            "Chromium context per session (Playwright, one Streamlit session each); every session opens the app, "
            "goes to Train, sets the epochs, and all press Start together, then watch their own page. "
            "AppTest mode: the same flow with `streamlit.testing` sessions in one process. "
            "Queue wait = the run's creation in the store (the job starting) minus the click; "
            "max running at once from the runs' created/finished times. Checked: N runs stored, all done, "
            "N distinct owners, each session's page named its own run, stored under the session's owner key "
            "(from its `?owner=` token), and its Runs page (own runs plus shared ones) listed that run alone.\n\n"
            f"Machine: {machine}\n\n{text}")
        write_section(SECTION, body)
        print(f"wrote the '{SECTION}' section of bench/RESULTS.md")
    return 0 if all(not r.problems for r in done) else 1


if __name__ == "__main__":
    raise SystemExit(main())
