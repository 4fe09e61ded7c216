"""The browser console in a real headless Chromium, against the services as processes.

Each test signs in through the page (development sign-in or a pasted token), drives it
with clicks and keys only, and reads what the page shows. Screenshots of each state are
saved (see ``conftest.py``).
"""

from __future__ import annotations

import asyncio
import json
import signal
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

import pytest

from tests.console.conftest import Shot
from tests.e2e.conftest import Launch, System

if TYPE_CHECKING:
    from playwright.async_api import Browser, Page

pytestmark = pytest.mark.e2e

WAIT_MS = 20_000


def console_url(system: System) -> str:
    return f"http://127.0.0.1:{system.cluster.processes['gateway'][0].port}/"


class Console:
    """One browser page of the console, and the problems it reported."""

    def __init__(self, page: Page) -> None:
        self.page = page
        self.problems: list[str] = []
        page.on("pageerror", lambda exc: self.problems.append(f"page error: {exc}"))
        page.on(
            "console",
            lambda msg: (
                self.problems.append(f"console {msg.type}: {msg.text}") if msg.type == "error" else None
            ),
        )

    @classmethod
    async def open(cls, browser: Browser, system: System) -> Console:
        context = await browser.new_context()
        console = cls(await context.new_page())
        await console.page.goto(console_url(system))
        await console.page.wait_for_selector("body[data-ready='true']", timeout=WAIT_MS)
        return console

    async def dev_sign_in(self, user: str) -> None:
        await self.page.fill("#dev-user", user)
        await self.page.click("#dev-form button[type=submit]")
        await self.connected(user)

    async def token_sign_in(self, token: str, user: str) -> None:
        await self.page.fill("#token-input", token)
        await self.page.click("#token-form button[type=submit]")
        await self.connected(user)

    async def connected(self, user: str) -> None:
        await self.page.wait_for_selector("#connection[data-state='open']", timeout=WAIT_MS)
        await self.page.wait_for_selector(f"#connection[data-user='{user}']", timeout=WAIT_MS)
        await self.page.wait_for_selector(
            "#agent option[value='scripted']", state="attached", timeout=WAIT_MS
        )

    async def start(self, agent: str, input_: dict[str, Any] | None = None) -> str:
        """Start a run from the form; return its run id (the newest timeline)."""
        before = set(await self.run_ids())
        await self.page.select_option("#agent", agent)
        if input_ is not None:
            await self.page.fill("#input", json.dumps(input_))
        await self.page.click("#start-button")
        for _ in range(200):
            new = [run_id for run_id in await self.run_ids() if run_id not in before]
            if new:
                return new[0]
            await asyncio.sleep(0.05)
        raise AssertionError(f"no new run appeared; problems: {self.problems}")

    async def run_ids(self) -> list[str]:
        ids = await self.page.eval_on_selector_all("article.run", "nodes => nodes.map(n => n.dataset.runId)")
        return [str(i) for i in ids]

    def run(self, run_id: str) -> str:
        return f"article.run[data-run-id='{run_id}']"

    async def wait_state(self, run_id: str, state: str) -> None:
        await self.page.wait_for_selector(f"{self.run(run_id)}[data-state='{state}']", timeout=WAIT_MS)

    async def ledger(self, run_id: str) -> list[dict[str, str]]:
        """The events the page received for the run, in arrival order."""
        rows = await self.page.eval_on_selector_all(
            f"{self.run(run_id)} .ledger li", "nodes => nodes.map(n => ({...n.dataset}))"
        )
        return [dict(row) for row in rows]

    async def text(self, selector: str) -> str:
        return str(await self.page.text_content(selector) or "")

    def assert_clean(self) -> None:
        assert self.problems == [], self.problems


def seqs_of(ledger: list[dict[str, str]]) -> list[int]:
    """Every seq the page's events stand for (a coalesced partial_result covers merged_from..seq)."""
    out: list[int] = []
    for row in ledger:
        seq = int(row["seq"])
        first = int(row.get("mergedFrom") or seq)
        out.extend(range(first, seq + 1))
    return out


async def test_sign_in_and_watch_an_assistant_answer_stream_while_another_user_sees_nothing(
    browser: Browser, system: System, user: Callable[[], str], shot: Shot
) -> None:
    alice, mallory = user(), user()
    page = await Console.open(browser, system)
    await shot(page.page, "signed-out")
    await page.dev_sign_in(alice)
    other = await Console.open(browser, system)
    await other.token_sign_in(system.token(mallory), mallory)  # a pasted token
    await shot(page.page, "signed-in")

    run_id = await page.start("assistant", {"message": "what is 12 * (3 + 4)?"})
    await page.wait_state(run_id, "completed")
    answer = await page.text(f"{page.run(run_id)} .entry.text")
    assert "84" in answer
    tool = page.page.locator(f"{page.run(run_id)} .entry.tool")
    assert await tool.get_attribute("data-status") == "success"
    assert "calculator" in (await tool.text_content() or "")
    assert " ms" in (await tool.locator(".status").text_content() or "")
    await page.page.wait_for_selector(
        f"#runs li[data-run-id='{run_id}'][data-state='completed']", timeout=WAIT_MS
    )
    await page.page.wait_for_selector("#threads li[data-thread-id]", timeout=WAIT_MS)
    await shot(page.page, "assistant-answered")

    # Another user's console: no timeline, no run, no thread of alice's.
    await other.page.click("#refresh-lists")
    await other.page.wait_for_selector("#runs li.empty", timeout=WAIT_MS)
    assert await other.run_ids() == []
    assert await other.page.locator("#threads li[data-thread-id]").count() == 0
    assert run_id not in await other.page.content()
    await shot(other.page, "other-user-sees-nothing")
    page.assert_clean()
    other.assert_clean()


async def test_a_scripted_run_asks_and_the_question_is_answered_in_the_page(
    browser: Browser, system: System, user: Callable[[], str], shot: Shot
) -> None:
    page = await Console.open(browser, system)
    await page.dev_sign_in(user())
    script = {
        "steps": [
            {"think": "planning"},
            {"ask": "What is your name?"},
            {"tool": "echo", "args": {"text": "hi"}, "require_approval": True},
            {"partial": "!"},
        ],
        "result": "done",
    }
    run_id = await page.start("scripted", script)
    await page.wait_state(run_id, "waiting")
    prompt = page.page.locator(f"{page.run(run_id)} .entry.prompt.input")
    assert "What is your name?" in (await prompt.text_content() or "")
    await shot(page.page, "question-asked")
    await prompt.locator("input.answer-text").fill("Ada")
    await prompt.locator("button[type=submit]").click()

    approval = page.page.locator(f"{page.run(run_id)} .entry.prompt.approval")
    await approval.wait_for(timeout=WAIT_MS)
    assert "echo" in (await approval.text_content() or "")
    await shot(page.page, "approval-asked")
    await approval.locator("button.approve").click()

    await page.wait_state(run_id, "completed")
    assert await prompt.get_attribute("data-answered") == "true"
    assert await approval.get_attribute("data-answered") == "true"
    texts = await page.page.locator(f"{page.run(run_id)} .entry.text").all_text_contents()
    assert "".join(texts) == "Ada!"
    tool = page.page.locator(f"{page.run(run_id)} .entry.tool")
    assert await tool.get_attribute("data-status") == "success"
    await shot(page.page, "answered-and-completed")
    page.assert_clean()


async def test_a_run_is_cancelled_from_the_page(
    browser: Browser, system: System, user: Callable[[], str], shot: Shot
) -> None:
    page = await Console.open(browser, system)
    await page.dev_sign_in(user())
    run_id = await page.start(
        "scripted", {"steps": [{"think": "long wait"}, {"sleep_ms": 60000}], "result": "x"}
    )
    await page.page.wait_for_selector(f"{page.run(run_id)} .entry.thinking", timeout=WAIT_MS)
    await shot(page.page, "running")
    await page.page.click(f"{page.run(run_id)} button.cancel")
    await page.wait_state(run_id, "cancelled")
    terminal = page.page.locator(f"{page.run(run_id)} .entry.terminal")
    assert "cancelled" in (await terminal.text_content() or "")
    assert await page.page.locator(f"{page.run(run_id)} button.cancel").is_hidden()
    await shot(page.page, "cancelled")
    page.assert_clean()


async def test_input_errors_and_refusals_are_shown_clearly(
    browser: Browser, system: System, user: Callable[[], str], shot: Shot
) -> None:
    page = await Console.open(browser, system)
    await page.dev_sign_in(user())
    await page.page.fill("#input", "{not json")
    await page.page.click("#start-button")
    assert "not valid JSON" in await page.text("#input-problem")
    await page.page.fill("#input", json.dumps({"steps": "nope"}))
    await page.page.click("#start-button")
    error = page.page.locator("#errors .error").first
    await error.wait_for(timeout=WAIT_MS)
    assert await error.get_attribute("data-code") == "invalid_argument"
    assert "run.start" in (await error.text_content() or "")
    await shot(page.page, "errors")


async def test_a_gateway_restart_mid_run_is_resumed_with_nothing_missing_or_repeated(
    browser: Browser, launch: Launch, user: Callable[[], str], shot: Shot
) -> None:
    system = launch(grace_period_s=2)
    page = await Console.open(browser, system)
    await page.dev_sign_in(user())
    steps: list[dict[str, Any]] = []
    for n in range(40):
        steps += [{"partial": f"p{n} "}, {"sleep_ms": 100}]
    run_id = await page.start("scripted", {"steps": steps, "result": "streamed"})
    # (wait_for_function would need 'unsafe-eval', which the console's CSP refuses.)
    await page.page.wait_for_selector(
        f"{page.run(run_id)} .ledger li:nth-child(5)", state="attached", timeout=WAIT_MS
    )

    proc = system.cluster.processes["gateway"][0]
    proc.signal(signal.SIGTERM)
    await page.page.wait_for_selector("#connection[data-state='reconnecting']", timeout=WAIT_MS)
    await shot(page.page, "reconnecting")
    assert await asyncio.to_thread(proc.wait, 15) == 0, proc.log_tail()
    await asyncio.to_thread(system.cluster.restart, proc)

    await page.page.wait_for_selector("#connection[data-state='open'][data-reconnects='1']", timeout=WAIT_MS)
    await page.wait_state(run_id, "completed")
    ledger = await page.ledger(run_id)
    terminal_seq = int(ledger[-1]["seq"])
    assert ledger[-1]["type"] == "agent_completed"
    assert seqs_of(ledger) == list(range(1, terminal_seq + 1)), ledger
    assert len({row["eventId"] for row in ledger}) == len(ledger)
    assert await page.text(f"{page.run(run_id)} .entry.text") == "".join(f"p{n} " for n in range(40))
    resumed = int(await page.page.get_attribute("#connection", "data-resumed") or 0)
    assert resumed >= 1
    assert f"{resumed}" in await page.text("#conn-resumed")
    await shot(page.page, "resumed")
    # The only console errors allowed are the browser's own reports of the refused reconnects.
    assert all("WebSocket" in problem or "ERR_CONNECTION_REFUSED" in problem for problem in page.problems), (
        page.problems
    )
