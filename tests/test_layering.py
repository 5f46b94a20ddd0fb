"""Layering (shared/ARCHITECTURE.md): pages -> dhaka.ui -> dhaka core, and nothing patches a library at run time.

The core is every module of ``dhaka/`` outside ``dhaka/ui``. It never imports streamlit, ``dhaka.ui`` or the
run store ``dhaka.runs`` (checked statically on every import statement, lazy ones inside functions included,
and in a subprocess for what importing the entry points loads); importing ``dhaka``, ``dhaka.estimator``,
``dhaka.io`` or ``dhaka.cli`` does not load streamlit, UMAP, openTSNE, anndata or Plotly (they are imported
inside the functions that need them); no module replaces a library function or method at run time.
"""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DHAKA = ROOT / "dhaka"


def core_files() -> list[Path]:
    return sorted(p for p in DHAKA.rglob("*.py") if p.relative_to(DHAKA).parts[0] != "ui")


def _module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imported_modules(path: Path, *, root: Path = ROOT) -> list[tuple[int, str]]:
    """(line, absolute module name) of every import in ``path``: relative imports resolved, and
    ``from package import name`` also counted as importing ``package.name`` (it may be a submodule)."""
    name = _module_name(path, root)
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[int, str]] = []
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            found += [(node.lineno, a.name) for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                module = ".".join(base + ([node.module] if node.module else []))
            else:
                module = node.module or ""
            found.append((node.lineno, module))
            found += [(node.lineno, f"{module}.{a.name}") for a in node.names if a.name != "*"]
    return found


def _is_under(module: str, banned: str) -> bool:
    return module == banned or module.startswith(banned + ".")


def _offenders(banned: tuple[str, ...], *, skip: tuple[str, ...] = ()) -> list[str]:
    out = []
    for path in core_files():
        if _module_name(path) in skip:
            continue
        for line, module in imported_modules(path):
            if any(_is_under(module, b) for b in banned):
                out.append(f"{path.relative_to(ROOT)}:{line} imports {module}")
    return out


def test_import_scanner_sees_lazy_relative_and_from_imports(tmp_path):
    # the static checks below are only as good as this scanner
    pkg = tmp_path / "dhaka"
    pkg.mkdir()
    probe = pkg / "probe.py"
    probe.write_text("def f():\n    from .runs import check\n    from dhaka import ui\n    import streamlit as st\n")
    found = {m for _, m in imported_modules(probe, root=tmp_path)}
    assert {"dhaka.runs", "dhaka.runs.check", "dhaka.ui", "streamlit"} <= found


def test_core_never_imports_streamlit_or_the_ui():
    offenders = _offenders(("streamlit", "dhaka.ui"))
    assert offenders == [], "the core imports the UI layer:\n" + "\n".join(offenders)


@pytest.mark.xfail(strict=True, reason="dhaka/estimator.py imports dhaka.runs.check_model_dir in Dhaka.load; "
                   "issue 13 moves the model-directory check into the core (helper 'pre'); flip when it lands")
def test_core_never_imports_the_run_store():
    offenders = _offenders(("dhaka.runs",), skip=("dhaka.runs",))
    assert offenders == [], "the core imports the run store:\n" + "\n".join(offenders)


def test_no_streamlit_import_outside_the_ui_layer():
    offenders = []
    for path in core_files():
        text = path.read_text()
        if "import streamlit" in text or "from streamlit" in text:
            offenders.append(str(path.relative_to(ROOT)))
    assert offenders == []


def _run(code: str) -> str:
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return out.stdout.strip()


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
    loaded = _run(code)
    assert loaded == "", f"core imports pulled in: {loaded}"


ENTRY_POINTS = ("dhaka", "dhaka.estimator", "dhaka.io", "dhaka.cli")
NOT_EAGER = ("streamlit", "dhaka.ui", "dhaka.runs", "umap", "openTSNE", "anndata", "plotly", "numba")


@pytest.mark.parametrize("entry", ENTRY_POINTS)
def test_entry_point_import_is_light(entry):
    code = f"import sys, {entry}\nprint(','.join(m for m in {NOT_EAGER!r} if m in sys.modules))\n"
    loaded = _run(code)
    assert loaded == "", f"import {entry} loads {loaded} (import them inside the functions that need them)"


def _library_methods() -> set[str]:
    import torch

    from dhaka.model import VAE

    names = {n for n in dir(torch.nn.Module) if not n.startswith("__") and callable(getattr(torch.nn.Module, n))}
    return names | {n for n, v in vars(VAE).items() if callable(v) or isinstance(v, staticmethod)}


def runtime_patches(path: Path, methods: set[str], *, root: Path = ROOT) -> list[str]:
    """Statements in ``path`` that replace a library function or method at run time: an assignment to an
    attribute of an imported module or object (``train.fit_vae = ...``), to a module's method on an
    instance (``bn.forward = ...``, ``vae.reparameterize = ...``), ``types.MethodType`` or ``setattr``
    on an imported name. Setting a flag or number is not counted."""
    tree = ast.parse(path.read_text(), filename=str(path))
    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {a.asname or a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {a.asname or a.name for a in node.names}
    found = []
    for node in ast.walk(tree):
        targets = (node.targets if isinstance(node, ast.Assign)
                   else [node.target] if isinstance(node, (ast.AugAssign, ast.AnnAssign)) else [])
        value = getattr(node, "value", None)
        if isinstance(value, ast.Constant) and value.value is not None:
            targets = []  # a flag or a number (e.g. a library's class attribute set to False), not a function
        for target in targets:
            for sub in ast.walk(target):
                if isinstance(sub, ast.Attribute) and isinstance(sub.ctx, ast.Store) and (
                        (isinstance(sub.value, ast.Name) and sub.value.id in imported) or sub.attr in methods):
                    found.append(f"{path.relative_to(root)}:{node.lineno} assigns {ast.unparse(sub)}")
        if isinstance(node, ast.Call):
            func = ast.unparse(node.func)
            if func in ("types.MethodType", "MethodType") or (
                    func == "setattr" and node.args and isinstance(node.args[0], ast.Name)
                    and node.args[0].id in imported):
                found.append(f"{path.relative_to(root)}:{node.lineno} calls {func}")
    return found


def test_patch_scanner_finds_the_known_forms(tmp_path):
    probe = tmp_path / "probe.py"
    probe.write_text("import types\nfrom dhaka import train\n"
                     "def f(vae, bn):\n    train.fit_vae = None\n    vae.reparameterize = lambda m, v: m\n"
                     "    bn.forward = types.MethodType(len, bn)\n    vae.training = False\n    train.VERBOSE = True\n")
    found = runtime_patches(probe, _library_methods(), root=tmp_path)
    assert [f.split(" ", 1)[1] for f in found] == [
        "assigns train.fit_vae", "assigns vae.reparameterize", "assigns bn.forward", "calls types.MethodType"]


@pytest.mark.xfail(strict=True, reason="dhaka/distributed.py replaces train.fit_vae, VAE.reparameterize/forward "
                   "and BatchNorm.forward; issue 13 turns them into fit_vae arguments (helper 'pre'); flip when "
                   "it lands")
def test_nothing_patches_library_functions_at_run_time():
    methods = _library_methods()
    files = [*sorted(DHAKA.rglob("*.py")), ROOT / "app.py", *sorted((ROOT / "pages").glob("*.py"))]
    found = [f for path in files for f in runtime_patches(path, methods)]
    assert found == [], "run-time patches (give the function an argument instead):\n" + "\n".join(found)
