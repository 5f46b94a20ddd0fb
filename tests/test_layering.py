"""Layering (shared/ARCHITECTURE.md): pages -> dhaka.ui -> dhaka core, and nothing patches a library at run time.

The core is every module of ``dhaka/`` outside ``dhaka/ui``. It never imports streamlit, ``dhaka.ui`` or the
run store ``dhaka.runs`` (checked statically on every import statement, lazy ones inside functions included,
and in a subprocess for what importing the entry points loads); importing ``dhaka``, ``dhaka.estimator``,
``dhaka.io`` or ``dhaka.cli`` does not load streamlit, UMAP, openTSNE, anndata or Plotly (they are imported
inside the functions that need them); no module of dhaka/ replaces other code at run time.
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
        if any(_is_under(_module_name(path), s) for s in skip):
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


def _run_time_patches(tree) -> list[tuple[int, str]]:
    """Places that assign to an attribute of an imported module or class, or graft a method on."""
    import ast

    imported: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported |= {(a.asname or a.name).split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            imported |= {a.asname or a.name for a in node.names}

    def root(expr) -> str | None:
        while isinstance(expr, (ast.Attribute, ast.Subscript)):
            expr = expr.value
        return expr.id if isinstance(expr, ast.Name) else None

    def grafts_a_method(value) -> bool:
        return (isinstance(value, ast.Call) and isinstance(value.func, ast.Attribute)
                and value.func.attr == "MethodType")

    found = []
    for node in ast.walk(tree):
        targets = []
        if isinstance(node, (ast.Assign, ast.Delete)):
            targets = node.targets
        elif isinstance(node, (ast.AugAssign, ast.AnnAssign)):
            targets = [node.target]
        for t in targets:
            if isinstance(t, ast.Attribute) and (root(t) in imported or t.attr in ("forward", "reparameterize")
                                                 or grafts_a_method(getattr(node, "value", None))):
                found.append((node.lineno, ast.unparse(t)))
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("setattr", "delattr")
                and node.args and root(node.args[0]) in imported):
            found.append((node.lineno, ast.unparse(node)))
    return found


#: Known exceptions, each with its reason; the list should only shrink (now empty).
ALLOWED_PATCHES: set[tuple[str, str]] = set()


def test_nothing_in_the_library_patches_other_code_at_run_time():
    """No ``module.attr = ...``, ``setattr(torch.nn..., ...)`` or grafted ``forward``: a caller that needs
    other behaviour passes an argument (e.g. ``fit_vae``'s seams), so threads never see each other's patches."""
    import ast

    offenders = []
    for path in sorted((ROOT / "dhaka").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for line, what in _run_time_patches(ast.parse(path.read_text())):
            if (rel, what) not in ALLOWED_PATCHES:
                offenders.append(f"{rel}:{line}: {what}")
    assert offenders == []


def test_the_patch_finder_sees_patches():
    import ast

    code = ("import types\nfrom dhaka import train\nimport torch\nfrom dhaka.model import VAE\n"
            "train.fit_vae = None\nsetattr(torch.nn.BatchNorm1d, 'forward', None)\nVAE.reparameterize = None\n"
            "def f(bn, vae):\n    bn.forward = types.MethodType(len, bn)\n    vae.reparameterize = len\n"
            "    del train._x\n    vae.ok = 1\n")
    assert sorted(line for line, _ in _run_time_patches(ast.parse(code))) == [5, 6, 7, 9, 10, 11]


# ------------------------------------------------------------------ import cycles
def _type_checking_lines(tree: ast.AST) -> set[int]:
    lines: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            lines.update(n.lineno for n in ast.walk(node) if hasattr(n, "lineno"))
    return lines


def import_graph(root: Path = ROOT, package: str = "dhaka") -> dict[str, set[str]]:
    """Module -> the package's modules it imports, lazy (function-local) imports included, ``TYPE_CHECKING`` not.

    An import of a parent package (``dhaka`` for ``__version__``) is not an edge: Python runs a package's
    ``__init__`` before its modules, so that is an order, not a cycle.
    """
    files = {_module_name(p, root): p for p in (root / package).rglob("*.py")}
    graph: dict[str, set[str]] = {}
    for name, path in files.items():
        skip = _type_checking_lines(ast.parse(path.read_text(), filename=str(path)))
        deps: set[str] = set()
        for line, module in imported_modules(path, root=root):
            while module and module not in files:
                module = module.rpartition(".")[0]
            if line not in skip and module and module != name and not name.startswith(module + "."):
                deps.add(module)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan), each sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                found.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_cycle_finder_sees_lazy_cycles(tmp_path):
    pkg = tmp_path / "pkg"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("from pkg import b\n")
    (pkg / "b.py").write_text("def f():\n    from pkg.a import x\n")
    (pkg / "c.py").write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pkg import a\n")
    graph = import_graph(tmp_path, "pkg")
    assert cycles(graph) == [["pkg.a", "pkg.b"]]
    assert graph["pkg.c"] == set()


def test_no_import_cycles_in_the_library():
    assert cycles(import_graph()) == [], "import cycles (lazy imports included) in dhaka/"
