"""A static scan for process-wide mutable state in service code.

The platform Runwire replaces leaked users' events through singletons and
module-level registries. This scanner walks the AST of every service module
and reports anything that could hold state shared between requests:

* a module-level (or class-level) assignment whose value is not obviously
  immutable — only constants, tuples, ``frozenset(...)``,
  ``MappingProxyType(...)``, loggers, type variables and the like pass;
* a ``global`` statement;
* a memoising decorator (``lru_cache``, ``cache``) on a module-level function;
* a name that smells of a singleton accessor (``_instance``, ``get_instance``).
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

ALLOWED_CALLS = frozenset(
    {
        "frozenset",
        "tuple",
        "MappingProxyType",
        "types.MappingProxyType",
        "logging.getLogger",
        "getLogger",
        "TypeVar",
        "typing.TypeVar",
        "ParamSpec",
        "NewType",
        "re.compile",
        "Field",
        "SettingsConfigDict",
        "ConfigDict",
        "str",
        "int",
        "float",
        "bool",
        "bytes",
        "object",
        "namedtuple",
        "NamedTuple",
        "Path",
        "pathlib.Path",
        "timedelta",
        "datetime.timedelta",
        "sa.Column",
        "Column",
        "MetaData",
        "sa.MetaData",
        "sa.Table",
        "Table",
        "os.environ.get",
        "grpc.StatusCode",
        "field",
        "dataclasses.field",
        "mapped_column",
        "relationship",
        "PrivateAttr",
    }
)
# Class attributes that frameworks require to be literal mappings.
ALLOWED_CLASS_ATTRIBUTES = frozenset(
    {
        "model_config",
        "__table_args__",
        "__mapper_args__",
        "__slots__",
        "impl",
    }  # impl: SQLAlchemy TypeDecorator
)
SINGLETON_MARKERS = ("_instance", "get_instance", "_singleton")
MEMOISERS = frozenset({"lru_cache", "cache", "functools.lru_cache", "functools.cache", "cached_property"})


@dataclass(frozen=True)
class Finding:
    path: str
    line: int
    what: str

    def __str__(self) -> str:
        return f"{self.path}:{self.line}: {self.what}"


def _dotted(node: ast.expr) -> str:
    if isinstance(node, ast.Name):
        return node.id
    if isinstance(node, ast.Attribute):
        return f"{_dotted(node.value)}.{node.attr}"
    if isinstance(node, ast.Call):
        return _dotted(node.func)
    return ""


def _immutable(node: ast.expr | None) -> bool:
    if node is None:
        return True
    match node:
        case ast.Constant() | ast.Name() | ast.Attribute() | ast.Subscript() | ast.Lambda():
            return True
        case ast.JoinedStr():
            return True
        case ast.Tuple(elts=elts):
            return all(_immutable(e) for e in elts)
        case ast.BinOp(left=left, right=right):
            return _immutable(left) and _immutable(right)
        case ast.UnaryOp(operand=operand):
            return _immutable(operand)
        case ast.Call(func=func):
            return _dotted(func) in ALLOWED_CALLS
    return False


def _targets(node: ast.Assign | ast.AnnAssign | ast.AugAssign) -> list[str]:
    raw = node.targets if isinstance(node, ast.Assign) else [node.target]
    return [ast.unparse(t) for t in raw]


def _scan_body(body: list[ast.stmt], path: str, *, in_class: bool) -> Iterator[Finding]:
    for stmt in body:
        if isinstance(stmt, ast.Assign | ast.AnnAssign | ast.AugAssign):
            names = _targets(stmt)
            if in_class and set(names) <= ALLOWED_CLASS_ATTRIBUTES:
                continue
            if isinstance(stmt, ast.AugAssign) or not _immutable(stmt.value):
                where = "class" if in_class else "module"
                yield Finding(
                    path, stmt.lineno, f"{where}-level mutable value assigned to {', '.join(names)}"
                )
            for name in names:
                if any(marker in name.lower() for marker in SINGLETON_MARKERS):
                    yield Finding(path, stmt.lineno, f"singleton-like name {name}")
        elif isinstance(stmt, ast.ClassDef):
            yield from _scan_body(stmt.body, path, in_class=True)
        elif isinstance(stmt, ast.FunctionDef | ast.AsyncFunctionDef):
            if not in_class and any(_dotted(d) in MEMOISERS for d in stmt.decorator_list):
                yield Finding(path, stmt.lineno, f"memoised module-level function {stmt.name}")
            if any(marker in stmt.name.lower() for marker in SINGLETON_MARKERS):
                yield Finding(path, stmt.lineno, f"singleton-like accessor {stmt.name}")
        elif isinstance(stmt, ast.If | ast.Try | ast.With):
            # Module-level conditional blocks can hide assignments too.
            for child in ast.iter_child_nodes(stmt):
                if isinstance(child, ast.stmt):
                    yield from _scan_body([child], path, in_class=in_class)
            for handler in getattr(stmt, "handlers", []):
                yield from _scan_body(handler.body, path, in_class=in_class)


def scan_source(source: str, path: str = "<string>") -> list[Finding]:
    tree = ast.parse(source, filename=path)
    findings = list(_scan_body(tree.body, path, in_class=False))
    for node in ast.walk(tree):
        if isinstance(node, ast.Global):
            findings.append(Finding(path, node.lineno, f"global statement for {', '.join(node.names)}"))
    return findings


def scan_tree(root: Path, packages: tuple[str, ...]) -> list[Finding]:
    findings: list[Finding] = []
    for package in packages:
        for file in sorted((root / package).rglob("*.py")):
            if "migrations/versions" in file.as_posix():
                continue  # Alembic revision ids are module constants by design.
            findings.extend(scan_source(file.read_text(), str(file.relative_to(root))))
    return findings
