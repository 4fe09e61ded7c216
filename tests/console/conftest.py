"""Fixtures of the browser-console tests: a real headless Chromium driven by Playwright.

Debian's ``chromium`` (``/usr/bin/chromium``, or ``RUNWIRE_CHROMIUM``) is launched by
Python's ``playwright`` with that executable: Playwright's own browser downloads are
not used. Without either, the tests are skipped with the reason — and fail in CI
(``RUNWIRE_REQUIRE_SERVICES=1``). ``make test`` installs both (``make browser``).

Screenshots of every state go to ``RUNWIRE_CONSOLE_SCREENSHOTS`` (default: a
``console-screenshots`` folder in pytest's temporary directory), named in the summary.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from tests.conftest import skip_unless_required
from tests.e2e.conftest import launch, system, user

__all__ = ("launch", "system", "user")

CHROMIUM_FLAGS = (
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
)
SCREENSHOTS_ENV = "RUNWIRE_CONSOLE_SCREENSHOTS"


def chromium_path() -> str | None:
    configured = os.environ.get("RUNWIRE_CHROMIUM")
    if configured:
        return configured if Path(configured).exists() else None
    return shutil.which("chromium") or next(
        (p for p in ("/usr/bin/chromium", "/usr/bin/chromium-browser") if Path(p).exists()), None
    )


@pytest.fixture(scope="session")
def screenshot_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    configured = os.environ.get(SCREENSHOTS_ENV)
    folder = Path(configured) if configured else tmp_path_factory.getbasetemp() / "console-screenshots"
    folder.mkdir(parents=True, exist_ok=True)
    return folder


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    folder = os.environ.get(SCREENSHOTS_ENV) or str(
        terminalreporter.config._tmp_path_factory.getbasetemp() / "console-screenshots"  # type: ignore[attr-defined]
    )
    if Path(folder).is_dir() and any(Path(folder).iterdir()):
        terminalreporter.write_line(f"browser console screenshots: {folder}")


@pytest.fixture(scope="session", autouse=True)
def chromium() -> str:
    """The browser's executable; checked before any cluster is started for these tests."""
    try:
        import playwright.async_api  # noqa: F401
    except ImportError:
        skip_unless_required("Python's playwright is not installed (it is in requirements/dev.lock)")
    executable = chromium_path()
    if executable is None:
        skip_unless_required("Debian's chromium is not installed (`make browser`: apt-get install chromium)")
    return executable


@pytest.fixture
async def browser(chromium: str) -> AsyncIterator[object]:
    from playwright.async_api import async_playwright

    executable = chromium
    async with async_playwright() as playwright:
        browser = await playwright.chromium.launch(
            executable_path=executable, headless=True, args=list(CHROMIUM_FLAGS)
        )
        try:
            yield browser
        finally:
            await browser.close()


Shot = Callable[[object, str], Awaitable[None]]


@pytest.fixture
def shot(screenshot_dir: Path, request: pytest.FixtureRequest) -> Shot:
    """``await shot(page, "state")`` saves ``<test>-<n>-<state>.png``."""
    count = 0

    async def take(page: object, state: str) -> None:
        nonlocal count
        count += 1
        path = screenshot_dir / f"{request.node.name}-{count:02d}-{state}.png"
        await page.screenshot(path=str(path), full_page=True)  # type: ignore[attr-defined]
        print(f"screenshot: {path}")

    return take
