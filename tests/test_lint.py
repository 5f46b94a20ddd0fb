"""The repository passes ruff with the rules configured in pyproject.toml (what CI runs)."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def test_ruff_check_passes():
    assert importlib.util.find_spec("ruff") is not None, \
        "ruff is not installed: pip install -r requirements-dev.txt (it pins ruff)"
    out = subprocess.run(
        [sys.executable, "-m", "ruff", "check", "--no-cache", "--output-format", "concise", str(REPO)],
        cwd=REPO, capture_output=True, text=True, timeout=300,
    )
    assert out.returncode == 0, f"ruff check found problems:\n{out.stdout}{out.stderr}"
