"""Real-browser end-to-end test: ``streamlit run app.py`` driven by Chromium through Playwright.

The flow a new user follows: pick a demo, train, watch the loss curve grow
while training runs, stop, see the Dhaka latent space render as a Plotly
WebGL 3-D scatter, download the latent CSV. Screenshots of every step go to
``test-output/e2e/``.

Needs ``/usr/bin/chromium`` (``apt-get install chromium``). Skipped with a
reason when it is missing, unless ``DHAKA_REQUIRE_E2E=1`` (CI), which turns the
skip into a failure. The server runs with ``DHAKA_DEMO_FAST=1`` (small demo,
shallow network) so the test takes well under two minutes.

Run: ``python -m pytest tests/e2e -m e2e -q``.
"""
from __future__ import annotations

import time

import pytest

from tests.e2e.server import CHROMIUM, CHROMIUM_ARGS, OUT, run_server

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    with run_server(tmp_path_factory.mktemp("dhaka-home"), fast=True) as url:
        yield url


# Plotly 6+ ships arrays base64-encoded, so count points on the decoded traces (_fullData).
# Every pass (gene-refinement fit) has its own "total ..." line: count the points of all of them.
# while training: the static SVG (first polyline = the training loss); after: the interactive Plotly figure
LIVE_LOSS_POINTS = """() => {
  const line = document.querySelector('svg[aria-label="Training loss curves"] polyline');
  return line ? line.getAttribute('points').trim().split(/\\s+/).length : 0;
}"""

PLOTLY_LOSS_POINTS = """() => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const ts = (el._fullData || []).filter(t => String(t.name || '').startsWith('total'));
    if (ts.length) return ts.reduce((a, t) => a + (t._length || 0), 0);
  }
  return 0;
}"""

WEBGL_3D = """() => {
  for (const el of document.querySelectorAll('.js-plotly-plot')) {
    const d = el._fullData || [];
    if (d.length && d[0].type === 'scatter3d') {
      const c = el.querySelector('.gl-container canvas');
      return c ? {traces: d.length, points: d.reduce((a, t) => a + (t._length || 0), 0),
                  w: c.width, h: c.height} : null;
    }
  }
  return null;
}"""


def test_demo_train_explore_download(server):
    import pandas as pd
    from playwright.sync_api import expect, sync_playwright

    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, headless=True, args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1100}, accept_downloads=True)
        try:
            # 1. a fresh session has the default demo; choose and load it explicitly
            page.goto(server)
            expect(page.get_by_role("heading", name="Data")).to_be_visible(timeout=60_000)
            page.get_by_role("button", name="Load demo").click()
            expect(page.get_by_text("Training matrix:")).to_be_visible(timeout=60_000)
            page.screenshot(path=OUT / "01-data.png")

            # 2. train with many epochs so the curve is seen growing; stop once it has
            page.get_by_role("link", name="Train", exact=True).click()
            expect(page.get_by_role("heading", name="Train")).to_be_visible(timeout=30_000)
            epochs = page.get_by_label("Epochs", exact=True)
            epochs.fill("3000")  # long enough to outlast the wait for the curve to grow
            epochs.press("Enter")
            time.sleep(1.0)
            page.get_by_role("button", name="Start training").click()
            deadline = time.time() + 60
            first = 0
            while time.time() < deadline and first == 0:
                first = page.evaluate(LIVE_LOSS_POINTS)
                time.sleep(0.3)
            assert first > 0, "no loss curve appeared within 60 s of starting"
            page.screenshot(path=OUT / "02-training.png")
            later = first
            deadline = time.time() + 45
            while time.time() < deadline and later <= first:
                time.sleep(0.5)
                later = page.evaluate(LIVE_LOSS_POINTS)
            assert later > first, f"loss curve did not grow while training ({first} -> {later} points)"
            page.get_by_role("button", name="Stop").click()
            expect(page.get_by_text("Stopped after")).to_be_visible(timeout=60_000)
            deadline = time.time() + 30
            final = 0
            while time.time() < deadline and final < later:
                time.sleep(0.3)
                final = page.evaluate(PLOTLY_LOSS_POINTS)
            assert final >= later, f"the interactive loss curves did not replace the live ones ({final} points)"
            page.screenshot(path=OUT / "03-stopped.png")

            # 3. the latent space renders as a WebGL 3-D scatter
            page.get_by_role("link", name="Explore", exact=True).click()
            expect(page.get_by_role("heading", name="Explore")).to_be_visible(timeout=30_000)
            info = None
            deadline = time.time() + 60
            while time.time() < deadline and not info:
                info = page.evaluate(WEBGL_3D)
                time.sleep(0.5)
            page.screenshot(path=OUT / "04-explore.png")
            assert info, "no Plotly scatter3d with a WebGL canvas on the Explore page"
            assert info["points"] == 200 and info["w"] > 0 and info["h"] > 0

            # 4. download the latent coordinates + clusters
            button = page.get_by_role("button", name="Latent + clusters (CSV)")
            button.scroll_into_view_if_needed()
            with page.expect_download(timeout=60_000) as dl:
                button.click()
            path = OUT / "latent.csv"
            dl.value.save_as(path)
            df = pd.read_csv(path)
            assert len(df) == 200
            assert {"dhaka_1", "dhaka_2", "dhaka_3", "cluster"} <= set(df.columns)
            page.screenshot(path=OUT / "05-downloaded.png")
        except Exception:
            page.screenshot(path=OUT / "failure.png")
            raise
        finally:
            browser.close()
