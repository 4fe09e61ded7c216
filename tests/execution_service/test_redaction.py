from __future__ import annotations

import logging

import pytest

from execution_service.builtins import BUILTIN_AGENTS, BUILTIN_TOOLS
from execution_service.catalog import AgentCatalog
from execution_service.redaction import REDACTED, redact, redact_text
from execution_service.sdk import Agent, AgentResult, Message, RunContext
from runwire_common.logs import JsonFormatter
from tests.execution_service.fakes import Harness


def test_redacts_secret_keys_at_any_depth_case_insensitively() -> None:
    value = {
        "query": "weather",
        "Password": "hunter2",
        "nested": {"API_KEY": "k", "clientSecret": "s", "keep": 1, "list": [{"access_token": "t"}, 3]},
        "headers": [{"Authorization": "Bearer abc"}, {"x-credentials": ["a"]}],
    }
    assert redact(value) == {
        "query": "weather",
        "Password": REDACTED,
        "nested": {
            "API_KEY": REDACTED,
            "clientSecret": REDACTED,
            "keep": 1,
            "list": [{"access_token": REDACTED}, 3],
        },
        "headers": [{"Authorization": REDACTED}, {"x-credentials": REDACTED}],
    }


def test_redaction_leaves_its_input_unchanged() -> None:
    value = {"token": "abc", "inner": {"password": "p"}}
    redact(value)
    assert value == {"token": "abc", "inner": {"password": "p"}}


def test_redacts_key_value_pairs_in_free_text() -> None:
    text = "login failed: password=hunter2, api_key: abc123 token='x y' ok"
    out = redact_text(text)
    assert "hunter2" not in out and "abc123" not in out and "x y" not in out
    assert out.startswith("login failed: password=[REDACTED]")
    assert out.endswith("ok")


def test_keeps_values_that_are_not_secrets() -> None:
    assert redact({"a": [1, 2.5, None, True, "plain text"]}) == {"a": [1, 2.5, None, True, "plain text"]}


# --- keys matched after normalising case and separators; values scanned for secret shapes ---

OPENAI_KEY = "sk-proj-Ab12Cd34Ef56Gh78Ij90Kl"
JWT = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEyMyJ9.c2lnbmF0dXJlX29mX3RoZV90b2tlbg"
URL_PASSWORD = "s3cr3tPa55"
URL = f"https://alice:{URL_PASSWORD}@db.example.com:5432/app"


def test_secret_keys_are_matched_after_normalising_case_and_separators() -> None:
    keys = [
        "apiKey",
        "api-key",
        "x-api-key",
        "X-Api-Key",
        "API KEY",
        "private_key",
        "privateKey",
        "passwd",
        "cookie",
        "Set-Cookie",
        "bearer",
        "passphrase",
        "pass_word",
        "client.secret",
    ]
    assert redact({key: "v" for key in keys}) == {key: REDACTED for key in keys}


def test_harmless_keys_are_kept() -> None:
    value = {"prompt": 3, "completion": 5, "author": "x", "keyboard": "y", "api": "v1", "cookbook": 1}
    assert redact(value) == value


def test_openai_style_keys_in_values_are_masked() -> None:
    out = redact({"note": f"use {OPENAI_KEY} please", "list": [OPENAI_KEY]})
    assert OPENAI_KEY not in str(out)
    assert out["note"] == f"use {REDACTED} please"
    assert redact_text("sk-ant-api03-abcdefghijklmnopqrstuv") == REDACTED


def test_jwts_in_text_are_masked() -> None:
    assert redact_text(f"token was {JWT}.") == f"token was {REDACTED}."
    assert redact_text(JWT) == REDACTED


def test_bearer_credentials_in_text_are_masked() -> None:
    for word in ("Bearer", "bearer", "BEARER"):
        out = redact_text(f"sent {word} abc123def456ghi789 to the api")
        assert out == f"sent {word} {REDACTED} to the api"


def test_passwords_in_urls_are_masked() -> None:
    out = redact_text(f"connect to {URL} now")
    assert URL_PASSWORD not in out
    assert out == f"connect to https://alice:{REDACTED}@db.example.com:5432/app now"
    assert redact_text("redis://:pw0rd@cache:6379/0") == f"redis://:{REDACTED}@cache:6379/0"


def test_new_key_forms_are_masked_in_key_value_text() -> None:
    out = redact_text("headers x-api-key: abc123, apiKey=def456; passwd=hunter2 Cookie: sid=1")
    assert "abc123" not in out and "def456" not in out and "hunter2" not in out and "sid=1" not in out


def test_ordinary_text_is_left_alone() -> None:
    texts = [
        "The answer is 42",
        "I used sk-learn and a task-force: https://example.com/path?q=1",
        "the bearer of good news",
        "eyJ alone is not a token",
        "a desk-lamp with a 16-char-long-name-here",
    ]
    for text in texts:
        assert redact_text(text) == text


# --- through the real engine: nothing secret is published, stored or logged ---

SECRETS = (OPENAI_KEY, JWT, URL_PASSWORD)


class Leaky(Agent):
    """Says secrets everywhere an agent can: thinking, partials, a custom event, its result, and a crash."""

    name = "leaky"
    description = "leaks secrets"

    async def run(self, ctx: RunContext) -> AgentResult:
        await ctx.emitter.thinking(f"trying {OPENAI_KEY}", step=f"connect {URL}")
        await ctx.emitter.partial(f"the token is {JWT}")
        await ctx.emitter.emit("leaky.note", {"text": f"Bearer {OPENAI_KEY}", "apiKey": "plain"})
        if ctx.input.get("crash"):
            raise RuntimeError(f"could not reach {URL} with {JWT}")
        return AgentResult(
            final_response=f"done with {OPENAI_KEY} at {URL}",
            result={"url": URL, "x-api-key": "k", "jwt": JWT},
            messages=(
                Message(role="user", content=f"use {OPENAI_KEY}"),
                Message(role="assistant", content=f"ok {JWT}"),
            ),
        )


def assert_clean(text: str) -> None:
    for secret in SECRETS:
        assert secret not in text


async def test_a_run_never_publishes_stores_or_logs_the_secrets_it_says(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.handler.setFormatter(JsonFormatter("execution"))
    caplog.set_level(logging.DEBUG)
    h = Harness(catalog=AgentCatalog((*BUILTIN_AGENTS, Leaky), BUILTIN_TOOLS))
    script = {
        "steps": [
            {"think": f"plan with {OPENAI_KEY}", "step": f"Bearer {JWT}"},
            {"partial": f"here: {URL} "},
            {"partial": f"and {JWT}"},
            {"tool": "echo", "args": {"text": f"{URL} {OPENAI_KEY}", "apiKey": "plain"}},
        ],
        "result": f"final {OPENAI_KEY} {JWT} {URL}",
    }
    runs = [
        await h.run("scripted", script),
        await h.run(
            "scripted", {"steps": [{"think": "x"}, {"fail": f"boom {JWT} at {URL} key {OPENAI_KEY}"}]}
        ),
        await h.run("leaky", {}, thread="thread_leaky_0000000001"),
        await h.run("leaky", {"crash": True}),
    ]
    for run_id in runs:
        published = [e.payload_json for e in h.bridge.of(run_id)]
        assert published and h.bridge.of(run_id)[-1].type in {"agent_completed", "agent_error"}
        assert_clean("\n".join(published))
        run = h.registry.runs[run_id]
        assert_clean(f"{run.input_json} {run.result_json} {run.error.message}")
    assert_clean(" ".join(f"{m.message.content} {m.message.tool_calls_json}" for m in h.registry.messages))
    payloads = h.bridge.payloads(runs[0])
    assert payloads[1]["reasoning"] == f"plan with {REDACTED}"
    assert payloads[1]["step"] == f"Bearer {REDACTED}"
    assert [p["content"] for p in h.bridge.payloads(runs[0], "partial_result")] == [
        f"here: https://alice:{REDACTED}@db.example.com:5432/app ",
        f"and {REDACTED}",
    ]
    assert (
        payloads[-1]["final_response"]
        == f"final {REDACTED} {REDACTED} https://alice:{REDACTED}@db.example.com:5432/app"
    )
    assert h.bridge.payloads(runs[1])[-1]["error_message"].startswith(f"boom {REDACTED} at")
    note = h.bridge.payloads(runs[2], "leaky.note")[0]
    assert note == {"text": f"Bearer {REDACTED}", "apiKey": REDACTED}
    assert "agent raised" in caplog.text  # the crash was logged, with its traceback …
    assert_clean(caplog.text)  # … and the log lines hold no secret
