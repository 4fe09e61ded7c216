"""No module-level mutable state in the registry package (static scan, no database)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

import registry_service

PACKAGE = Path(registry_service.__file__).resolve().parent
MODULES = sorted(PACKAGE.rglob("*.py"))
MUTABLE_LITERALS = (ast.Dict, ast.List, ast.Set, ast.DictComp, ast.ListComp, ast.SetComp)
MUTABLE_FACTORIES = frozenset({"dict", "list", "set", "defaultdict", "OrderedDict", "deque", "Counter"})
CACHING_DECORATORS = frozenset({"cache", "lru_cache", "cached_property"})


def _module_level_values(tree: ast.Module) -> list[ast.expr]:
    values: list[ast.expr] = []
    for node in tree.body:
        if isinstance(node, (ast.Assign, ast.AnnAssign)) and node.value is not None:
            values.append(node.value)
    return values


def _is_mutable(value: ast.expr) -> bool:
    if isinstance(value, MUTABLE_LITERALS):
        return True
    if isinstance(value, ast.Call):
        func = value.func
        name = func.id if isinstance(func, ast.Name) else func.attr if isinstance(func, ast.Attribute) else ""
        return name in MUTABLE_FACTORIES
    return False


def _decorator_name(decorator: ast.expr) -> str:
    target = decorator.func if isinstance(decorator, ast.Call) else decorator
    if isinstance(target, ast.Attribute):
        return target.attr
    return target.id if isinstance(target, ast.Name) else ""


def _problems(source: str) -> tuple[list[str], list[int], list[str]]:
    tree = ast.parse(source)
    mutable = [ast.unparse(v)[:60] for v in _module_level_values(tree) if _is_mutable(v)]
    globals_used = [n.lineno for n in ast.walk(tree) if isinstance(n, (ast.Global, ast.Nonlocal))]
    cached = [
        n.name
        for n in ast.walk(tree)
        if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))
        and any(_decorator_name(d) in CACHING_DECORATORS for d in n.decorator_list)
    ]
    return mutable, globals_used, cached


def test_the_scan_flags_the_patterns_it_looks_for() -> None:
    bad = "import functools\nREG = {}\nSEEN = set()\n@functools.lru_cache(1)\ndef f():\n    global REG\n"

    mutable, globals_used, cached = _problems(bad)

    assert (len(mutable), globals_used, cached) == (2, [6], ["f"])


@pytest.mark.parametrize("path", MODULES, ids=lambda p: str(p.relative_to(PACKAGE)))
def test_a_registry_module_keeps_no_mutable_state_at_module_level(path: Path) -> None:
    assert _problems(path.read_text()) == ([], [], [])
