"""pyproject.toml describes the package the code really is (no network install here).

The declared dependencies cover what the code imports (read with ``ast``): the core's
module-level imports are base dependencies, its lazy imports are base or an extra, the UI's
imports are base or ``app``, the tests' imports are declared somewhere; the ranges admit the
exact pins of requirements*.txt; every folder of ``dhaka`` is a package setuptools will find; the
``dhaka`` console script names a real function that prints its help.
"""
from __future__ import annotations

import ast
import importlib
import importlib.metadata
import os
import re
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[1]
PYPROJECT = tomllib.loads((REPO / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]


def _norm(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def _requirements(specs: list[str]) -> dict[str, Requirement]:
    reqs = [Requirement(s) for s in specs]
    return {_norm(r.name): r for r in reqs if _norm(r.name) != _norm(PROJECT["name"])}


BASE = _requirements(PROJECT["dependencies"])
EXTRAS = {name: _requirements(specs) for name, specs in PROJECT["optional-dependencies"].items()}


def _is_type_checking(node: ast.AST) -> bool:
    test = node.test if isinstance(node, ast.If) else None
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def imports(path: Path) -> tuple[set[str], set[str]]:
    """Top-level names imported by ``path`` at run time: (module level, inside functions).

    Imports under ``if TYPE_CHECKING:`` never run and are skipped; relative imports are local.
    """
    eager: set[str] = set()
    lazy: set[str] = set()

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.If) and _is_type_checking(child):
                for other in child.orelse:
                    visit(other, in_function)
                continue
            names: list[str] = []
            if isinstance(child, ast.Import):
                names = [a.name for a in child.names]
            elif isinstance(child, ast.ImportFrom) and child.level == 0 and child.module:
                names = [child.module]
            (lazy if in_function else eager).update(n.split(".")[0] for n in names)
            visit(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)))

    visit(ast.parse(path.read_text(), filename=str(path)), False)
    return eager, lazy


LOCAL = {"dhaka", "tests", "bench", "__future__"}


def third_party(names: set[str], local: set[str] = frozenset()) -> set[str]:
    return {n for n in names if n not in sys.stdlib_module_names and n not in LOCAL and n not in local}


def distributions(modules: set[str]) -> dict[str, set[str]]:
    """Import name -> the (normalised) distributions that provide it, from what is installed."""
    installed = importlib.metadata.packages_distributions()
    return {m: {_norm(d) for d in installed.get(m, [m])} for m in modules}


def _uncovered(modules: set[str], allowed: set[str]) -> dict[str, set[str]]:
    return {m: dists for m, dists in distributions(modules).items() if not dists & allowed}


def _files(*roots: str) -> list[Path]:
    out: list[Path] = []
    for root in roots:
        p = REPO / root
        out += [p] if p.is_file() else sorted(p.rglob("*.py"))
    return out


def _core_files() -> list[Path]:
    return [p for p in _files("dhaka") if "ui" not in p.relative_to(REPO / "dhaka").parts[:1]]


def test_core_module_level_imports_are_base_dependencies():
    eager = set().union(*(imports(p)[0] for p in _core_files()))
    missing = _uncovered(third_party(eager), set(BASE))
    assert not missing, f"imported at module level by the core but not in [project].dependencies: {missing}"


def test_core_lazy_imports_are_declared():
    lazy = set().union(*(imports(p)[1] for p in _core_files()))
    allowed = set(BASE).union(*EXTRAS.values())
    missing = _uncovered(third_party(lazy), allowed)
    assert not missing, f"imported by the core but in neither dependencies nor an extra: {missing}"


def test_ui_and_pages_imports_are_base_or_app():
    files = [p for p in _files("dhaka/ui", "pages", "app.py")]
    used = set().union(*(set().union(*imports(p)) for p in files))
    local = {p.stem for p in _files("pages")}
    missing = _uncovered(third_party(used, local), set(BASE) | set(EXTRAS["app"]))
    assert not missing, f"imported by the app but not in dependencies or the 'app' extra: {missing}"


def test_test_imports_are_declared():
    files = _files("tests")
    used = set().union(*(set().union(*imports(p)) for p in files))
    local = {p.stem for p in files}
    allowed = set(BASE).union(*EXTRAS.values())
    missing = _uncovered(third_party(used, local), allowed)
    assert not missing, f"imported by the tests but not declared (add to the 'dev' extra): {missing}"


def test_dev_extra_includes_the_app():
    assert any(_norm(Requirement(s).name) == _norm(PROJECT["name"]) and "app" in Requirement(s).extras
               for s in PROJECT["optional-dependencies"]["dev"]), "the tests open the app: dev must pull in [app]"


def _pins(filename: str) -> dict[str, str]:
    pins = {}
    for line in (REPO / filename).read_text().splitlines():
        line = line.split("#")[0].strip()
        if line and not line.startswith("-"):
            req = Requirement(line)
            [spec] = req.specifier
            assert spec.operator == "==", f"{filename}: {line} is not an exact pin"
            pins[_norm(req.name)] = spec.version
    return pins


@pytest.mark.parametrize(("filename", "groups"), [
    ("requirements.txt", ("base", "app")),
    ("requirements-dev.txt", ("dev",)),
])
def test_pyproject_ranges_admit_the_requirements_pins(filename, groups):
    declared = {**BASE, **EXTRAS["app"]} if "base" in groups else {**EXTRAS["dev"]}
    pins = _pins(filename)
    assert set(pins) <= set(declared), f"pinned in {filename} but missing from pyproject: {set(pins) - set(declared)}"
    refused = {n: (pins[n], str(declared[n].specifier)) for n in pins if pins[n] not in declared[n].specifier}
    assert not refused, f"pyproject ranges refuse the versions {filename} pins: {refused}"


def test_torch_is_pinned_exactly_like_requirements():
    torch = BASE["torch"]
    assert [s.operator for s in torch.specifier] == ["=="], "an unpinned torch pulls a multi-GB CUDA build"
    assert next(iter(torch.specifier)).version == _pins("requirements.txt")["torch"]


def test_every_dhaka_folder_is_a_package_setuptools_finds():
    find = PYPROJECT["tool"]["setuptools"]["packages"]["find"]
    assert find["include"] == ["dhaka", "dhaka.*"]
    folders = {p.parent for p in (REPO / "dhaka").rglob("*.py") if "__pycache__" not in p.parts}
    missing = sorted(str(f.relative_to(REPO)) for f in folders if not (f / "__init__.py").is_file())
    assert not missing, f"folders with modules but no __init__.py (pip install would leave them out): {missing}"
    data = sorted(str(p.relative_to(REPO)) for p in (REPO / "dhaka").rglob("*")
                  if p.is_file() and p.suffix not in (".py", ".pyc") and "__pycache__" not in p.parts)
    assert not data or PYPROJECT["tool"]["setuptools"].get("package-data"), \
        f"non-Python files in dhaka/ need [tool.setuptools.package-data]: {data}"


def test_version_is_a_literal_setuptools_can_read():
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {"attr": "dhaka.__version__"}
    tree = ast.parse((REPO / "dhaka" / "__init__.py").read_text())
    values = [n.value for n in tree.body if isinstance(n, ast.Assign)
              and any(isinstance(t, ast.Name) and t.id == "__version__" for t in n.targets)]
    assert len(values) == 1 and isinstance(values[0], ast.Constant) and isinstance(values[0].value, str)


def test_python_requires():
    assert PROJECT["requires-python"] == ">=3.11"


def test_console_script_target_exists_and_prints_help(capsys):
    target = PROJECT["scripts"]["dhaka"]
    module_name, _, attr = target.partition(":")
    func = getattr(importlib.import_module(module_name), attr)
    assert callable(func)
    with pytest.raises(SystemExit) as exc:
        func(["--help"])
    assert exc.value.code == 0
    assert "embed" in capsys.readouterr().out


def test_python_m_dhaka_help_from_outside_the_repo(tmp_path):
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    out = subprocess.run([sys.executable, "-m", "dhaka", "--help"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert "embed" in out.stdout
