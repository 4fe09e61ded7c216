"""The browser console's static files: a fixed table, read once when the gateway starts.

A request path is only ever a key of that table, never joined to a filesystem
path, so ``..``, encoded separators, symlinks and absolute paths cannot reach
anything outside it. Only regular files with a plain name and a known
extension, at most :data:`MAX_FILE_BYTES` each, are taken.
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

CONTENT_TYPES: Mapping[str, str] = MappingProxyType(
    {
        ".html": "text/html; charset=utf-8",
        ".js": "text/javascript; charset=utf-8",
        ".mjs": "text/javascript; charset=utf-8",
        ".css": "text/css; charset=utf-8",
        ".svg": "image/svg+xml",
        ".png": "image/png",
        ".ico": "image/x-icon",
    }
)
MAX_FILE_BYTES = 1 << 20
MAX_DEPTH = 3
_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_.-]{0,127}$")

CONSOLE_DIR = Path(__file__).resolve().parent / "console"
# In a checkout (and an editable install) the JS client lives beside the gateway package.
DEFAULT_CLIENT_DIR = Path(__file__).resolve().parent.parent / "clients" / "js" / "src"


@dataclass(frozen=True, slots=True)
class StaticFile:
    body: bytes
    content_type: str
    etag: str


class StaticFiles:
    """URL path → file, immutable once built."""

    __slots__ = ("_files",)

    def __init__(self, files: Mapping[str, StaticFile]) -> None:
        self._files: Mapping[str, StaticFile] = MappingProxyType(dict(files))

    @classmethod
    def load(cls, mounts: Iterable[tuple[str, Path]], *, index: str | None = None) -> StaticFiles:
        """Read every servable file under each ``(url_prefix, folder)``; ``/`` serves ``index``."""
        files: dict[str, StaticFile] = {}
        for prefix, folder in mounts:
            for url, path in _walk(prefix, folder, depth=0):
                files[url] = _read(path)
        if index is not None and index in files:
            files["/"] = files[index]
        return cls(files)

    def get(self, url_path: str) -> StaticFile | None:
        return self._files.get(url_path)

    def paths(self) -> frozenset[str]:
        return frozenset(self._files)


def _walk(prefix: str, folder: Path, *, depth: int) -> Iterator[tuple[str, Path]]:
    if depth > MAX_DEPTH or folder.is_symlink() or not folder.is_dir():
        return
    for child in sorted(folder.iterdir()):
        if not _NAME.match(child.name) or child.is_symlink():
            continue
        if child.is_dir():
            yield from _walk(f"{prefix}{child.name}/", child, depth=depth + 1)
        elif (
            child.is_file()
            and child.suffix in CONTENT_TYPES
            and child.stat().st_size <= MAX_FILE_BYTES
            and not child.name.endswith(".test.js")
        ):
            yield f"{prefix}{child.name}", child


def _read(path: Path) -> StaticFile:
    body = path.read_bytes()
    digest = hashlib.sha256(body).hexdigest()[:32]
    return StaticFile(body=body, content_type=CONTENT_TYPES[path.suffix], etag=f'"{digest}"')
