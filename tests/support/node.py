"""Node projects the tests run (the examples, the JS client): node, npm and locked dependencies."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

from tests.conftest import skip_unless_required


def npm_project(folder: Path, *, needed_for: str) -> Path:
    """``folder`` with its dependencies installed from its lock file (again when the lock changed).

    Skips (fails in CI) when node or npm is missing; ``needed_for`` says what needs them.
    """
    npm = shutil.which("npm")
    if shutil.which("node") is None or npm is None:
        skip_unless_required(f"{needed_for} needs node and npm, which are not on PATH")
    installed = folder / "node_modules" / ".package-lock.json"
    lock = folder / "package-lock.json"
    if not installed.exists() or installed.stat().st_mtime < lock.stat().st_mtime:
        subprocess.run(
            [npm, "ci", "--prefix", str(folder), "--no-audit", "--no-fund", "--loglevel=error"],
            check=True,
            timeout=300,
        )
    return folder
