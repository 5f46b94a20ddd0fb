"""``streamlit run app.py`` for the browser tests, and the Chromium settings (Debian's /usr/bin/chromium:
Playwright cannot download browsers on this network)."""
from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from typing import Iterator

import pytest

ROOT = Path(__file__).resolve().parents[2]
OUT = ROOT / "test-output" / "e2e"
CHROMIUM = "/usr/bin/chromium"
CHROMIUM_ARGS = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
                 "--disable-sync", "--no-first-run", "--enable-unsafe-swiftshader"]


def require_browser() -> None:
    """Skip (or, with ``DHAKA_REQUIRE_E2E=1`` as in CI, fail) when Chromium or playwright is missing."""
    problems = []
    if not Path(CHROMIUM).exists():
        problems.append(f"{CHROMIUM} is missing (apt-get install chromium)")
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        problems.append("the playwright package is not installed")
    if problems:
        msg = "end-to-end browser test needs a browser: " + "; ".join(problems)
        if os.environ.get("DHAKA_REQUIRE_E2E") == "1":
            pytest.fail(msg + " (DHAKA_REQUIRE_E2E=1)")
        pytest.skip(msg)


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def run_server(home: Path, *, fast: bool) -> Iterator[str]:
    """A fresh server process (its run store in ``home``); ``fast`` = DHAKA_DEMO_FAST. Yields its URL.

    Errors on a page are raised (DHAKA_RAISE_ERRORS=1), so Streamlit shows its exception box, which
    the tests look for, instead of the app's catch-all banner.
    """
    require_browser()
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "DHAKA_DEMO_FAST"}
    env.update(DHAKA_HOME=str(home), DHAKA_RAISE_ERRORS="1")
    if fast:
        env.update(DHAKA_DEMO_FAST="1", DHAKA_UMAP_WARMUP="0", OMP_NUM_THREADS="1")
    OUT.mkdir(parents=True, exist_ok=True)
    log = open(OUT / f"server-{'fast' if fast else 'real'}.log", "w")
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", "app.py", "--server.port", str(port), "--server.address",
         "127.0.0.1", "--server.headless", "true", "--browser.gatherUsageStats", "false"],
        cwd=ROOT, env=env, stdout=log, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.time() + 60
        while time.time() < deadline:
            try:
                if urllib.request.urlopen(url + "/_stcore/health", timeout=2).read() == b"ok":
                    break
            except OSError:
                time.sleep(0.5)
            if proc.poll() is not None:
                pytest.fail(f"streamlit exited early; see {log.name}")
        else:
            pytest.fail("streamlit did not become healthy within 60 s")
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(10)
        except subprocess.TimeoutExpired:
            proc.kill()
        log.close()


def page_problems(page) -> list[str]:
    """Error boxes, the catch-all banner and "Page not found" dialogs on ``page`` (empty when clean)."""
    found = []
    for box in page.get_by_test_id("stException").all():
        found.append("exception: " + box.inner_text()[:300])
    if page.get_by_text("Something went wrong on this page").count():
        found.append("the app's catch-all error banner")
    if page.get_by_text("Page not found").count():
        found.append("a 'Page not found' dialog")
    return found
