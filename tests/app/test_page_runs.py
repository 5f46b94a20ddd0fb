"""AppTest: the Runs page lists a person's runs (and shared ones), never renders others' text as Markdown."""
from __future__ import annotations

import json
from pathlib import Path

import pytest
from streamlit.testing.v1 import AppTest

from dhaka.runs import RunStore
from dhaka.ui import owner, state

PAGE = str(Path(__file__).resolve().parents[2] / "pages" / "runs.py")
DATA = {"name": "blobs.csv", "fingerprint": {"shape": [120, 60]}}
TOKEN = "A" * 16 + "b-_" + "c" * 13  # the form new_token() makes
OTHER = owner.key_for_user("bob")
HOSTILE_NAME = "**bold** [click](http://evil.example) <b>x</b>.csv"
HOSTILE_ERROR = "ValueError: # heading _it_ [link](http://evil.example)"


def _run(store, who, *, name="blobs.csv", shared=False, error=None):
    run = store.create(settings={"epochs": 1, "seed": 0}, data={**DATA, "name": name}, owner=who)
    run.finish(status="failed" if error else "done", history=[{"loss": 1.0}], error=error)
    if shared:
        store.share(run.id, admin=True)
    return run.id


@pytest.fixture
def home(tmp_path, monkeypatch):
    monkeypatch.setenv("DHAKA_HOME", str(tmp_path / "home"))
    for name in ("DHAKA_OWNER_HEADER", "DHAKA_ADMIN_TOKEN", "DHAKA_ADMIN_USERS"):
        monkeypatch.delenv(name, raising=False)
    return RunStore(tmp_path / "home")


def _page(token: str | None = TOKEN) -> AppTest:
    at = AppTest.from_file(PAGE, default_timeout=60)
    if token is not None:
        at.query_params[owner.OWNER_PARAM] = token
    return at.run()


def _markdown_text(at) -> str:
    parts = [m.value for m in at.markdown] + [m.value for m in at.caption]
    for kind in (at.error, at.warning, at.info, at.success):
        parts += [e.value for e in kind]
    return "\n".join(parts)


def test_a_new_browser_gets_a_token_and_sees_no_one_elses_runs(home):
    _run(home, OTHER)
    at = _page(token=None)
    assert not at.exception
    token = at.query_params[owner.OWNER_PARAM]
    assert owner.valid_token(token)
    assert any("No runs yet" in i.value for i in at.info)
    again = _page(token)  # a reload: same address, same person
    assert again.query_params[owner.OWNER_PARAM] == token


def test_a_forged_token_in_the_address_is_replaced(home):
    at = _page(token="../../../etc/passwd")
    token = at.query_params[owner.OWNER_PARAM]
    assert owner.valid_token(token) and token != "../../../etc/passwd"


def test_lists_my_runs_and_shared_ones_with_foreign_text_as_plain_text(home):
    me = owner.key_for_token(TOKEN)
    mine = _run(home, me, name="mine.csv")
    _run(home, OTHER, name="secret.csv")
    _run(home, None, name="legacy.csv")
    shared = _run(home, OTHER, name=HOSTILE_NAME, shared=True, error=HOSTILE_ERROR)
    at = _page()
    assert not at.exception, [e.value for e in at.exception]
    table = at.dataframe[0].value
    assert set(table.index) == {mine, shared}
    assert table.loc[mine, "whose"] == "mine" and table.loc[shared, "whose"] == "bob, shared"
    assert table.loc[shared, "data"] == HOSTILE_NAME  # a dataframe cell: plain text

    at.selectbox(key="w.runs.sel").set_value(shared).run()
    texts = "\n".join(t.value for t in at.text)
    assert HOSTILE_NAME in texts and HOSTILE_ERROR in texts
    rendered = _markdown_text(at)
    assert "evil.example" not in rendered and "secret.csv" not in rendered
    assert at.button(key="w.runs.delete").disabled  # shared for reading, not for deleting
    assert not [b for b in at.button if b.key == "w.runs.share"]


def test_share_then_delete_my_run(home):
    me = owner.key_for_token(TOKEN)
    run_id = _run(home, me)
    at = _page()
    at.button(key="w.runs.share").click().run()
    assert json.loads((home.runs_dir / run_id / "run.json").read_text())["shared"] is True
    assert [i.id for i in home.list(owner=OTHER)] == [run_id]
    assert at.dataframe[0].value.loc[run_id, "whose"] == "mine, shared"
    at.button(key="w.runs.delete").click().run()
    at.button(key="w.runs.confirm").click().run()
    assert not at.exception and home.list(admin=True) == []
    notices = [text for _, text in at.session_state[state.NOTICE]]  # app.py shows them
    assert f"Run {run_id} is shared." in notices and f"Deleted run {run_id}." in notices


def test_admin_view_is_behind_the_token(home, monkeypatch):
    secret = "s3cret-admin-token-for-the-lab"
    monkeypatch.setenv("DHAKA_ADMIN_TOKEN", secret)
    others = {_run(home, OTHER), _run(home, None)}
    at = _page()
    assert not [t for t in at.toggle if t.key == "w.runs.admin"]
    at.text_input(key="w.runs.admin_token").input("guess").run()
    at.button(key="w.runs.unlock").click().run()
    assert any("not the admin token" in e.value for e in at.error)
    at.text_input(key="w.runs.admin_token").input(secret).run()
    at.button(key="w.runs.unlock").click().run()
    at.toggle(key="w.runs.admin").set_value(True).run()
    assert not at.exception
    table = at.dataframe[0].value
    assert set(table.index) == others
    assert set(table["whose"]) == {"bob", "nobody (made outside the app)"}


def test_owner_helpers():
    assert owner.valid_token(owner.new_token()) and owner.new_token() != owner.new_token()
    for bad in (None, "", "short", "A" * 33, "A" * 31 + "/", "A" * 31 + "\n"):
        assert not owner.valid_token(bad)
    key = owner.key_for_token(TOKEN)
    assert key.startswith("anon:") and TOKEN not in key and key == owner.key_for_token(TOKEN)
    with pytest.raises(ValueError):
        owner.key_for_token("nope")
    headers = {"Host": "lab", "X-Forwarded-User": " alice@lab.org "}
    assert owner.user_from_headers(headers, "x-forwarded-user") == "alice@lab.org"
    assert owner.user_from_headers(headers, "X-Remote-User") is None
    for bad in ("", "-rf", "a b", "alice\nadmin", "<script>", "x" * 200):
        assert owner.user_from_headers({"X-Forwarded-User": bad}, "X-Forwarded-User") is None
    assert owner.owner_label("user:alice") == "alice"
    assert owner.owner_label(key).startswith("anonymous ") and key[5:] not in owner.owner_label(key)
    assert owner.owner_label(None).startswith("nobody")
