"""The load test of ``bench/load_test.py`` in miniature: two sessions, one epoch, a fresh run store.

* AppTest mode (plain test): two app sessions in this process share its job manager;
* browser mode (``e2e``): a live ``streamlit run app.py`` on 127.0.0.1 and two
  Chromium contexts; skipped when Chromium is missing unless ``DHAKA_REQUIRE_E2E=1``.

Each asserts every run was stored and done, every session saw only its own run
(its Train page named it, the run is stored under the session's owner key, and
its Runs page, which lists the person's own runs, holds it alone) and no more
trainings ran at once than the server allows. The checker itself is tested on
made-up results, so a broken check cannot pass silently.
"""
from __future__ import annotations

import os
from pathlib import Path

import pytest

from bench.load_test import LoadResult, SessionResult, browser_available, check, run_load


def _assert_all_stored(result: LoadResult, n: int) -> None:
    assert result.problems == [], result.problems
    assert len(result.runs) == n
    assert all(rec["status"] == "done" for rec in result.runs.values())
    owners = [rec["owner"] for rec in result.runs.values()]
    assert len(set(owners)) == n and all(owners)
    assert sorted(r.run_id for r in result.results) == sorted(result.runs)
    for r in result.results:
        assert r.outcome == "done"
        assert r.runs_listed == [r.run_id]
        assert result.runs[r.run_id]["settings"]["epochs"] == result.epochs
        assert r.owner is not None  # AppTest: the session's token; browser: the address's ?owner=
        assert result.runs[r.run_id]["owner"] == r.owner
    assert 1 <= result.max_concurrent() <= result.max_jobs
    assert result.n_done == n and result.failures == 0


def test_apptest_sessions_all_complete_and_are_stored(tmp_path):
    result = run_load("apptest", sessions=2, epochs=1, home=tmp_path / "home", timeout=120)
    _assert_all_stored(result, 2)


@pytest.mark.e2e
def test_browser_sessions_against_live_server(tmp_path):
    missing = browser_available()
    if missing:
        if os.environ.get("DHAKA_REQUIRE_E2E") == "1":
            pytest.fail(f"browser load test needs a browser: {missing} (DHAKA_REQUIRE_E2E=1)")
        pytest.skip(f"browser load test needs a browser: {missing}")
    result = run_load("browser", sessions=2, epochs=1, max_jobs=1, home=tmp_path / "home", timeout=120)
    _assert_all_stored(result, 2)


# ---------------------------------------------------------------- the checker
def _record(owner: str, created: str, finished: str, *, status: str = "done", epochs: int = 1) -> dict:
    return {"owner": owner, "status": status, "created": created, "finished": finished,
            "settings": {"epochs": epochs}}


def _good() -> LoadResult:
    runs = {"r0": _record("a", "2026-01-01T00:00:00+00:00", "2026-01-01T00:00:05+00:00"),
            "r1": _record("b", "2026-01-01T00:00:05+00:00", "2026-01-01T00:00:09+00:00")}
    results = [SessionResult(0, clicked=1767225600.0, finished_seen=1767225606.0, outcome="done", run_id="r0",
                             epochs_shown=1, owner="a", runs_listed=["r0"]),
               SessionResult(1, clicked=1767225600.0, finished_seen=1767225610.0, outcome="done", run_id="r1",
                             epochs_shown=1, owner="b", runs_listed=["r1"], queue_positions=[1])]
    return LoadResult("apptest", 2, 1, 1, Path("."), results, runs)


def test_check_passes_a_good_result_and_computes_figures():
    r = _good()
    assert check(r) == []
    assert r.wall_s == pytest.approx(10.0)
    assert r.throughput == pytest.approx(12.0)
    assert sorted(r.queue_waits()) == pytest.approx([0.0, 5.0])
    assert r.max_concurrent() == 1


@pytest.mark.parametrize("spoil, expected", [
    (lambda r: r.runs.pop("r1"), "runs stored"),
    (lambda r: r.runs["r1"].update(status="failed"), "not done"),
    (lambda r: r.runs["r1"].update(owner="a"), "share an owner"),
    (lambda r: setattr(r.results[1], "run_id", "r0"), "same run"),
    (lambda r: setattr(r.results[0], "runs_listed", ["r0", "r1"]), "own-runs list"),
    (lambda r: setattr(r.results[1], "owner", "a"), "another owner"),
    (lambda r: setattr(r.results[1], "owner", None), "owner key is unknown"),
    (lambda r: r.runs["r0"].update(finished="2026-01-01T00:00:07+00:00"), "at once"),
    (lambda r: setattr(r.results[0], "outcome", "timeout"), "ended as timeout"),
    (lambda r: r.runs["r0"]["settings"].update(epochs=15), "epochs=15"),
])
def test_check_reports_each_kind_of_problem(spoil, expected):
    r = _good()
    spoil(r)
    problems = check(r)
    assert any(expected in p for p in problems), problems
