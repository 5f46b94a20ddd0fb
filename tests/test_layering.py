"""The core must not pull in Streamlit or heavy optional libraries at import time."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def test_core_imports_do_not_load_streamlit_or_heavy_libraries():
    code = (
        "import sys, importlib, pkgutil, dhaka\n"
        "import dhaka.estimator, dhaka.preprocess, dhaka.model, dhaka.train\n"
        "for m in ('dhaka.io', 'dhaka.cluster', 'dhaka.reduce', 'dhaka.simulate', 'dhaka.jobs', 'dhaka.runs',"
        " 'dhaka.plots', 'dhaka.cli'):\n"
        "    try: importlib.import_module(m)\n"
        "    except ModuleNotFoundError as e:\n"
        "        if e.name != m: raise\n"
        "print(','.join(x for x in ('streamlit', 'umap', 'openTSNE', 'plotly', 'numba') if x in sys.modules))\n"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "", f"core imports pulled in: {out.stdout.strip()}"


def test_no_streamlit_import_outside_the_ui_layer():
    offenders = []
    for path in (ROOT / "dhaka").rglob("*.py"):
        if "ui" in path.relative_to(ROOT / "dhaka").parts:
            continue
        text = path.read_text()
        if "import streamlit" in text or "from streamlit" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []
