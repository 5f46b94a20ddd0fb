"""docs/api.md describes the library as it is: every name it lists exists, with the parameters it shows.

Each ``## `dhaka.module``` section of docs/api.md has ```python blocks whose entries are checked against
the code: ``name(params) -> result  # note`` (a function, or ``class Name(params)``), ``  .method(params)``
(a method of the class above, ``self`` left out), ``  .attribute`` and ``NAME = ...``. The parameters are
compared by name, kind (positional, keyword-only after ``*``, ``*args``, ``**kwargs``) and default value.
"""
from __future__ import annotations

import ast
import importlib
import inspect
import re
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[1]
API = ROOT / "docs" / "api.md"


def _entries(text: str) -> list[tuple[str, int, str]]:
    """(module, line number, entry text) for every entry of the python blocks under a module heading."""
    out: list[tuple[str, int, str]] = []
    module, in_block, current, start = None, False, "", 0
    for number, line in enumerate(text.splitlines(), 1):
        heading = re.match(r"^#{2,3} .*?`(dhaka[\w.]*)`", line)
        if heading and not in_block:
            module = heading.group(1)
            continue
        if line.startswith("```"):
            if current:
                out.append((module, start, current))
                current = ""
            in_block = line.strip() == "```python" and module is not None
            continue
        if not in_block:
            continue
        if current and (line.startswith("    ") or _depth(current) > 0):
            current += " " + line.strip()
            continue
        if current:
            out.append((module, start, current))
            current = ""
        stripped = line.split("  #")[0].rstrip()
        if stripped and not stripped.lstrip().startswith("#"):
            current, start = stripped, number
    if current:
        out.append((module, start, current))
    return out


def _depth(text: str) -> int:
    text = text.split("  #")[0]
    return text.count("(") - text.count(")")


def _split(entry: str) -> tuple[str, str | None]:
    """'name(params) -> x' -> ('name', 'params'); 'name' -> ('name', None)."""
    entry = entry.split("  #")[0].strip()
    if "(" not in entry:
        return entry.split(" ")[0], None
    head, _, rest = entry.partition("(")
    depth, i = 1, 0
    while depth and i < len(rest):
        depth += {"(": 1, ")": -1}.get(rest[i], 0)
        i += 1
    return head.strip(), rest[: i - 1]


def _doc_params(params: str) -> list[tuple[str, str, Any]]:
    """(name, kind, default or inspect.Parameter.empty) from the text between a signature's parentheses."""
    args = ast.parse(f"def f({params}): pass").body[0].args
    out: list[tuple[str, str, Any]] = []
    positional = args.posonlyargs + args.args
    defaults = [inspect.Parameter.empty] * (len(positional) - len(args.defaults)) + list(args.defaults)
    out += [(a.arg, "positional", d) for a, d in zip(positional, defaults, strict=True)]
    if args.vararg:
        out.append((args.vararg.arg, "var_positional", inspect.Parameter.empty))
    out += [(a.arg, "keyword_only", inspect.Parameter.empty if d is None else d)
            for a, d in zip(args.kwonlyargs, args.kw_defaults, strict=True)]
    if args.kwarg:
        out.append((args.kwarg.arg, "var_keyword", inspect.Parameter.empty))
    return out


KINDS = {
    inspect.Parameter.POSITIONAL_ONLY: "positional", inspect.Parameter.POSITIONAL_OR_KEYWORD: "positional",
    inspect.Parameter.VAR_POSITIONAL: "var_positional", inspect.Parameter.KEYWORD_ONLY: "keyword_only",
    inspect.Parameter.VAR_KEYWORD: "var_keyword",
}


def _check_signature(obj: Any, params: str, *, method: bool) -> list[str]:
    real = list(inspect.signature(obj).parameters.values())
    if method and real and real[0].name in ("self", "cls"):
        real = real[1:]
    doc = _doc_params(params)
    problems = []
    doc_shape = [(n, k) for n, k, _ in doc]
    real_shape = [(p.name, KINDS[p.kind]) for p in real]
    if doc_shape != real_shape:
        return [f"parameters {doc_shape} but the code has {real_shape}"]
    for (name, _, node), p in zip(doc, real, strict=True):
        if node is inspect.Parameter.empty or p.default is inspect.Parameter.empty:
            if (node is inspect.Parameter.empty) != (p.default is inspect.Parameter.empty):
                problems.append(f"{name}: default shown {'none' if node is inspect.Parameter.empty else 'one'}, "
                                f"the code has {'none' if p.default is inspect.Parameter.empty else repr(p.default)}")
            continue
        if isinstance(node, ast.Constant) and node.value is Ellipsis:
            continue  # "..." stands for a default that has no short literal form
        try:
            value = ast.literal_eval(node)
        except ValueError:
            continue
        if value != p.default and not (isinstance(p.default, tuple) and list(p.default) == value):
            problems.append(f"{name}: default shown {value!r}, the code has {p.default!r}")
    return problems


def _problems(text: str) -> list[str]:
    problems: list[str] = []
    cls: Any = None
    for module_name, line, entry in _entries(text):
        where = f"docs/api.md:{line} ({module_name})"
        try:
            module = importlib.import_module(module_name)
        except ImportError as exc:
            problems.append(f"{where}: no module {module_name} ({exc})")
            continue
        if entry.startswith("  ."):
            name, params = _split(entry.strip()[1:])
            if cls is None or not hasattr(cls, name):
                problems.append(f"{where}: {getattr(cls, '__name__', '?')}.{name} does not exist")
            elif params is not None:
                problems += [f"{where}: {cls.__name__}.{name}: {p}"
                             for p in _check_signature(getattr(cls, name), params, method=True)]
            continue
        is_class = entry.startswith("class ")
        name, params = _split(entry[6:] if is_class else entry)
        if " = " in entry and "(" not in entry.split(" = ")[0]:
            name, params = entry.split(" = ")[0].strip(), None
        obj = getattr(module, name, None)
        if obj is None and not hasattr(module, name):
            problems.append(f"{where}: {module_name}.{name} does not exist")
            cls = None
            continue
        if is_class:
            if not inspect.isclass(obj):
                problems.append(f"{where}: {module_name}.{name} is not a class")
            cls = obj
        if params is not None:
            problems += [f"{where}: {name}: {p}" for p in _check_signature(obj, params, method=False)]
    return problems


def test_api_doc_lists_real_names_and_signatures():
    assert _entries(API.read_text()), "docs/api.md has no checked entries"
    problems = _problems(API.read_text())
    assert problems == [], "docs/api.md does not match the code:\n" + "\n".join(problems)


@pytest.mark.parametrize(("entry", "problem"), [
    ("ari(a, b, c)", "parameters"),
    ("ari(a, b=None)", "default"),
    ("silhouette(Z, labels, *, sample_size=10, seed=0)", "default"),
    ("no_such_function(x)", "does not exist"),
])
def test_checker_catches_a_wrong_entry(entry, problem):
    found = _problems(f"## `dhaka.cluster`\n\n```python\n{entry}\n```\n")
    assert found and problem in found[0]


def _public_names(module: Any) -> set[str]:
    """``__all__``, else the functions and classes the module defines without a leading underscore."""
    if hasattr(module, "__all__"):
        return set(module.__all__)
    return {name for name, value in vars(module).items() if not name.startswith("_")
            and (inspect.isfunction(value) or inspect.isclass(value))
            and getattr(value, "__module__", None) == module.__name__}


def test_api_doc_lists_every_public_name_of_the_modules_it_covers():
    documented: dict[str, set[str]] = {}
    for module_name, _, entry in _entries(API.read_text()):
        if entry.startswith("  ."):
            continue
        name = entry[6:] if entry.startswith("class ") else entry
        documented.setdefault(module_name, set()).add(re.split(r"[\s(=]", name.strip(), maxsplit=1)[0])
    missing = {m: sorted(_public_names(importlib.import_module(m)) - names) for m, names in documented.items()}
    missing = {m: names for m, names in missing.items() if names}
    assert not missing, f"public names that docs/api.md does not describe: {missing}"
