from __future__ import annotations

from execution_service.redaction import REDACTED, redact, redact_text


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
