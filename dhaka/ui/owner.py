"""Who is using the app: one owner key per *person*, not per browser tab.

Runs and jobs belong to an owner key, which stays the same across the tabs and reloads of one person
(a Streamlit session does not).

Two ways to know the person, chosen by settings:

* **Behind a login proxy** (``DHAKA_OWNER_HEADER``, e.g. ``X-Forwarded-User``):
  the user name the proxy puts in that request header, read from
  ``st.context.headers``.  The key is ``"user:<name>"``.  Only safe when the
  Streamlit port is reachable *only* through the proxy and the proxy
  overwrites the header (docs/deploy.md).
* **Otherwise**: a random token (``secrets.token_urlsafe``) kept in the
  page's address as ``?owner=<token>``.  Streamlit keeps query parameters
  over reloads, and clears them when the page changes (sidebar navigation,
  ``st.switch_page``), so the token is also kept in the session and written
  back into the address on every run.  Bookmark the address to come back to
  your runs from another browser; anyone given that address sees them too.
  A value that is not a token of the expected form is ignored and a fresh
  token minted.  The key is ``"anon:<first 32 hex of sha256(token)>"``, so
  run records on disk and admin pages never show the token itself.

Fair queues without a login.  Opening the bare address mints a new anonymous
key, so a per-key job limit alone lets one person take every slot by opening
tabs.  Anonymous keys therefore share a quota (:func:`quota_key`): all of them
one pool (``DHAKA_ANON_QUOTA=shared``, the default), or one pool per client
address (``DHAKA_ANON_QUOTA=address``; behind a reverse proxy every client has
the proxy's address, so that is one pool again).  The pool may have
``DHAKA_MAX_ANON_JOBS`` jobs queued or running (default: the per-person limit,
``DHAKA_MAX_JOBS_PER_OWNER``).  Behind the login proxy each user is a pool of
their own, and the per-person limit stays.  Jobs are submitted through
:func:`submit`, which checks the pool and then hands the job to the job
manager under the person's own key (their runs stay theirs).

A cookie would be invisible in shared links, but Streamlit can read cookies
(``st.context.cookies``) and not set them without a custom component; the
query parameter needs nothing extra.

Lab admins see every run: proxy user names listed in ``DHAKA_ADMIN_USERS``
(comma-separated), or anyone who enters ``DHAKA_ADMIN_TOKEN`` (at least 16
characters) on the Runs page (:func:`unlock_admin`).
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import os
import re
import secrets
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping
from typing import Any, Literal

import streamlit as st

from dhaka.jobs import FINISHED, Job, JobManager, OwnerLimitError
from dhaka.ui import cached

__all__ = [
    "OWNER_PARAM",
    "AnonymousQuotaError",
    "anon_job_limit",
    "anon_quota_mode",
    "check_quota",
    "quota_key",
    "quota_key_for",
    "submit",
    "admin_token_configured",
    "is_admin",
    "key_for_token",
    "key_for_user",
    "new_token",
    "owner_header",
    "owner_key",
    "owner_label",
    "proxy_user",
    "run_store",
    "unlock_admin",
    "user_from_headers",
    "valid_token",
]

log = logging.getLogger(__name__)

#: The query parameter holding the browser's owner token.
OWNER_PARAM = "owner"
#: Session-state key of the token (kept when navigation clears the address's parameters).
TOKEN_KEY = "dhaka.owner_token"
#: Session-state flag set by :func:`unlock_admin`.
ADMIN_KEY = "dhaka.admin_unlocked"
#: Shortest ``DHAKA_ADMIN_TOKEN`` accepted.
MIN_ADMIN_TOKEN = 16

#: Pools keep the quota of this many owner keys in memory (the oldest without a live job are forgotten).
MAX_TRACKED_OWNERS = 10_000

_TOKEN_BYTES = 24  # token_urlsafe(24): 32 characters, 192 random bits
_TOKEN_RE = re.compile(r"^[A-Za-z0-9_-]{32}$")
_USER_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._@+-]{0,127}$")


# ------------------------------------------------------------------ pure helpers
def new_token() -> str:
    """A fresh random browser token (32 URL-safe characters)."""
    return secrets.token_urlsafe(_TOKEN_BYTES)


def valid_token(value: object) -> bool:
    """``True`` for a string of the form :func:`new_token` makes."""
    return isinstance(value, str) and bool(_TOKEN_RE.match(value))


def key_for_token(token: str) -> str:
    """The owner key of a browser token (a digest: the token itself is never stored)."""
    if not valid_token(token):
        raise ValueError("not an owner token")
    return "anon:" + hashlib.sha256(token.encode("ascii")).hexdigest()[:32]


def key_for_user(user: str) -> str:
    """The owner key of a user name set by the login proxy."""
    return f"user:{user}"


def user_from_headers(headers: Mapping[str, str] | None, header: str) -> str | None:
    """The user name in ``header`` (case-insensitive), or ``None`` if absent or not a plain name.

    Names are 1-128 characters of letters, digits and ``. _ @ + -``, starting
    with a letter or digit (user names and e-mail addresses); anything else
    is refused rather than trusted.
    """
    if not headers or not header:
        return None
    wanted = header.strip().lower()
    value = None
    for name, v in headers.items():
        if str(name).lower() == wanted:
            value = v
            break
    if not isinstance(value, str):
        return None
    value = value.strip()
    if not _USER_RE.match(value):
        log.warning("ignoring %s header that is not a plain user name", header)
        return None
    return value


def anon_quota_mode() -> Literal["shared", "address"]:
    """How anonymous keys share a job quota: ``DHAKA_ANON_QUOTA`` = ``shared`` (default) or ``address``."""
    mode = os.environ.get("DHAKA_ANON_QUOTA", "").strip().lower() or "shared"
    if mode not in ("shared", "address"):
        raise ValueError(f"DHAKA_ANON_QUOTA must be 'shared' or 'address', not {mode!r}")
    return mode  # type: ignore[return-value]


def anon_job_limit(manager: JobManager) -> int:
    """Jobs the anonymous pool may have queued or running: ``DHAKA_MAX_ANON_JOBS`` or the per-person limit."""
    env = os.environ.get("DHAKA_MAX_ANON_JOBS", "").strip()
    if not env:
        return manager.max_per_owner
    try:
        value = int(env)
    except ValueError:
        value = 0
    if value < 1:
        raise ValueError(f"DHAKA_MAX_ANON_JOBS must be a whole number of at least 1, got {env!r}")
    return value


def quota_key_for(key: str, *, address: str | None = None, mode: str = "shared") -> str:
    """The pool whose job quota ``key`` draws on.

    A proxy user (``user:<name>``) and any other non-anonymous key is its own pool.  Anonymous
    keys (``anon:...``) share ``"anon-pool"``, or with ``mode="address"`` one pool per client
    address (a digest of it; no address known: the shared pool).
    """
    if not key.startswith("anon:"):
        return key
    if mode == "address" and address:
        return "anon-pool:" + hashlib.sha256(address.encode("utf-8", "replace")).hexdigest()[:16]
    return "anon-pool"


class AnonymousQuotaError(OwnerLimitError):
    """The anonymous pool (no login) has its jobs queued or running already."""


class _Pools:
    """Which owner keys draw on which pool, as seen by this server process (thread-safe, bounded)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._pool_of: OrderedDict[str, str] = OrderedDict()
        self.submit_lock = threading.Lock()  # a check and its submission are one step

    def note(self, key: str, pool: str) -> None:
        with self._lock:
            self._pool_of[key] = pool
            self._pool_of.move_to_end(key)
            while len(self._pool_of) > MAX_TRACKED_OWNERS:
                self._pool_of.popitem(last=False)

    def members(self, pool: str) -> list[str]:
        with self._lock:
            return [k for k, p in self._pool_of.items() if p == pool]


_POOLS = _Pools()


def _active(manager: JobManager, owners: list[str]) -> list[Job]:
    """Unfinished jobs of ``owners``, less the kinds the manager counts apart."""
    return [j for k in owners for j in manager.jobs(k)
            if j.status not in FINISHED and j.kind not in manager.separate_kinds]


def check_quota(manager: JobManager, key: str, pool: str, *, kind: str = "train") -> None:
    """Refuse a job of ``kind`` for ``key`` when its anonymous pool has its limit of jobs queued or running.

    Keys that are their own pool (proxy users), and the kinds the manager counts apart (the views
    the app starts after a training), are left to the manager's per-person limit.

    Raises
    ------
    AnonymousQuotaError
        Naming the limit, the settings and the way to a quota of one's own (the login proxy).
    """
    _POOLS.note(key, pool)
    if pool == key or kind in manager.separate_kinds:  # own pool; or a job the app starts for the person
        return
    limit = anon_job_limit(manager)
    active = _active(manager, _POOLS.members(pool))
    if len(active) >= limit:
        shared = "everyone without a login" if pool == "anon-pool" else "everyone at your address without a login"
        raise AnonymousQuotaError(
            f"{len(active)} job(s) of {shared} are queued or running; without a login they share "
            f"{limit} (DHAKA_MAX_ANON_JOBS). Wait for one to finish, or sign in through the lab's login "
            "for a quota of your own.")


def submit(fn: Callable[..., Any], *, name: str, kind: str = "train", memory_bytes: int | None = None,
           manager: JobManager | None = None) -> Job:
    """Submit a job for this person: the anonymous pool's quota checked, then ``manager.submit``.

    The job belongs to :func:`owner_key` (its runs and progress stay this person's); what it
    counts against is :func:`quota_key`.  Raises what :meth:`dhaka.jobs.JobManager.submit` raises,
    and :class:`AnonymousQuotaError`.
    """
    if manager is None:
        manager = cached.job_manager()
    key = owner_key()
    with _POOLS.submit_lock:
        check_quota(manager, key, quota_key(key), kind=kind)
        return manager.submit(fn, owner=key, name=name, kind=kind, memory_bytes=memory_bytes)


def owner_label(key: str | None) -> str:
    """How to show an owner key to people: the user name, or a short anonymous tag (never a token)."""
    if not key:
        return "nobody (made outside the app)"
    if key.startswith("user:"):
        return key[5:]
    if key.startswith("anon:"):
        return f"anonymous {key[5:11]}"
    return f"session {hashlib.sha256(key.encode()).hexdigest()[:6]}"


def owner_header() -> str | None:
    """The request header carrying the proxy's user name (``DHAKA_OWNER_HEADER``), or ``None``."""
    return os.environ.get("DHAKA_OWNER_HEADER", "").strip() or None


def _admin_users() -> set[str]:
    return {u for u in re.split(r"[,\s]+", os.environ.get("DHAKA_ADMIN_USERS", "")) if u}


def _admin_token() -> str | None:
    token = os.environ.get("DHAKA_ADMIN_TOKEN", "").strip()
    if not token:
        return None
    if len(token) < MIN_ADMIN_TOKEN:
        log.warning("DHAKA_ADMIN_TOKEN is shorter than %d characters; the admin view stays locked",
                    MIN_ADMIN_TOKEN)
        return None
    return token


# ------------------------------------------------------------------ streamlit side
def proxy_user() -> str | None:
    """The user name the login proxy set, when ``DHAKA_OWNER_HEADER`` says to read one."""
    header = owner_header()
    if header is None:
        return None
    try:
        headers = st.context.headers
    except Exception:  # noqa: BLE001 - no request context (bare script, tests)
        headers = None
    return user_from_headers(headers, header)


def _browser_token() -> str:
    ss = st.session_state
    token = ss.get(TOKEN_KEY)
    if not valid_token(token):
        token = st.query_params.get(OWNER_PARAM)
        if not valid_token(token):
            token = new_token()
        ss[TOKEN_KEY] = token
    if st.query_params.get(OWNER_PARAM) != token:
        st.query_params[OWNER_PARAM] = token  # back into the address after navigation cleared it
    return token


def owner_key() -> str:
    """This person's owner key: ``"user:<name>"`` behind a login proxy, else ``"anon:<digest>"``.

    Call it on every run of the app (it also puts the browser token back
    into the address).  With ``DHAKA_OWNER_HEADER`` set but the header
    missing (someone reached Streamlit without the proxy), the browser token
    is used: that person gets an anonymous space of their own, never a
    proxy user's runs.
    """
    user = proxy_user()
    if user is not None:
        return key_for_user(user)
    if owner_header() is not None:
        log.warning("DHAKA_OWNER_HEADER=%s is set but the request has no valid user in it; "
                    "using an anonymous browser owner", owner_header())
    return key_for_token(_browser_token())


def client_address() -> str | None:
    """The browser's address as Streamlit sees it (``st.context.ip_address``), or ``None``."""
    try:
        address = st.context.ip_address
    except Exception:  # noqa: BLE001 - no request context (bare script, tests)
        return None
    return address if isinstance(address, str) and address else None


def quota_key(key: str | None = None) -> str:
    """The pool this person's jobs count against (:func:`quota_key_for` with the settings and address)."""
    key = owner_key() if key is None else key
    mode = anon_quota_mode()
    return quota_key_for(key, address=client_address() if mode == "address" else None, mode=mode)


def run_store() -> Any:
    """The run store as this person sees it (:meth:`dhaka.runs.RunStore.view` for :func:`owner_key`)."""
    from dhaka.runs import RunStore

    return RunStore().view(owner_key())


def admin_token_configured() -> bool:
    """``True`` when ``DHAKA_ADMIN_TOKEN`` is set (and long enough) to unlock the admin view."""
    return _admin_token() is not None


def unlock_admin(token: str) -> bool:
    """Unlock the admin view for this session if ``token`` is ``DHAKA_ADMIN_TOKEN``."""
    expected = _admin_token()
    ok = expected is not None and isinstance(token, str) and hmac.compare_digest(
        token.strip().encode("utf-8"), expected.encode("utf-8"))
    st.session_state[ADMIN_KEY] = bool(ok)
    return bool(ok)


def is_admin() -> bool:
    """``True`` for a lab admin: a proxy user in ``DHAKA_ADMIN_USERS``, or a session unlocked with the token."""
    user = proxy_user()
    if user is not None and user in _admin_users():
        return True
    return _admin_token() is not None and st.session_state.get(ADMIN_KEY) is True
