"""Redaction's shortcuts for text and values that hold nothing to mask change no result.

The reference below is redaction without the shortcuts: every string through
both full patterns (pairs, then secret shapes), every key normalised, every
value through the general type checks.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from types import MappingProxyType
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from execution_service.redaction import (
    MAX_DEPTH,
    REDACTED,
    SECRET_KEY_PARTS,
    redact,
    redact_text,
    redact_text_fully,
)


def reference_text(text: str) -> str:
    return redact_text_fully(text)


def reference_key_is_secret(key: str) -> bool:
    normalised = re.sub(r"[-_. ]", "", key.lower())
    return any(part in normalised for part in SECRET_KEY_PARTS)


def reference(value: Any, *, _depth: int = 0) -> Any:
    if _depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED
            if isinstance(key, str) and reference_key_is_secret(key)
            else reference(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [reference(item, _depth=_depth + 1) for item in value]
    if isinstance(value, str):
        return reference_text(value)
    return value


# Pieces that make pairs, near-pairs and the characters that match key letters only
# case-insensitively (long s, dotted and dotless i, Kelvin sign).
PIECES = st.sampled_from(
    [
        *SECRET_KEY_PARTS,
        "PASSWORD",
        "Api_Key",
        "pa\u017f\u017fword",
        "author\u0130zation",
        "credent\u0131al",
        "api_\u212aey",
        "tok",
        "passwd",
        "PassPhrase",
        "apiKey",
        "x-api-key",
        "API-KEY",
        "private_key",
        "ACCESS-key",
        "Cookie",
        "key",
        "pass",
        "sk-",
        "sk-proj-",
        "eyJ",
        "eyJhbGci",
        "abcd1234efgh5678ijkl",
        "0",
        ".",
        "://",
        "https://",
        "u:",
        "@",
        "/",
        "bearer",
        "BEARER ",
        "beArer ",
        "\u017fk-",
        "=",
        ":",
        " : ",
        "bearer ",
        "Bearer ",
        '"x y"',
        "'q'",
        ",",
        ";",
        " ",
        "-",
        "_",
        "x",
        "é",
        "\n",
    ]
)
TEXTS = st.one_of(st.lists(PIECES, max_size=8).map("".join), st.text(max_size=20))


class Text(str):
    pass


@settings(max_examples=3000, deadline=None)
@given(TEXTS)
def test_text_is_masked_exactly_as_by_the_full_pattern(text: str) -> None:
    assert redact_text(text) == reference_text(text)


def test_pairs_behind_case_insensitive_lookalikes_are_still_masked() -> None:
    for text in ("pa\u017f\u017fword=hunter2", "api_\u212aey: abc", "author\u0130zation=x"):
        assert redact_text(text) == reference_text(text)
        assert redact_text(text) != text


KEYS = st.one_of(
    st.sampled_from(
        [
            *SECRET_KEY_PARTS,
            "Password",
            "clientSecret",
            "x",
            "steps",
            "apiKey",
            "x-api-key",
            "Set-Cookie",
            "pass_wd",
        ]
    ),
    st.text(max_size=4),
)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(),
    st.floats(allow_nan=False),
    TEXTS,
    TEXTS.map(Text),
    st.binary(max_size=3),
)
VALUES = st.recursive(
    SCALARS,
    lambda inner: st.one_of(
        st.lists(inner, max_size=3),
        st.lists(inner, max_size=3).map(tuple),
        st.dictionaries(KEYS, inner, max_size=3),
        st.dictionaries(KEYS, inner, max_size=3).map(MappingProxyType),
        st.dictionaries(st.integers(), inner, max_size=2),
    ),
    max_leaves=12,
)


@settings(max_examples=1500, deadline=None)
@given(VALUES)
def test_values_are_redacted_exactly_as_by_the_general_checks(value: Any) -> None:
    result = redact(value)
    expected = reference(value)
    assert result == expected
    assert type(result) is type(expected)


def test_nesting_beyond_the_limit_is_redacted_as_before() -> None:
    value: Any = "token=abc"
    for _ in range(MAX_DEPTH + 2):
        value = {"k": [value]}
    assert redact(value) == reference(value)


def test_every_secret_key_part_is_a_key_word_of_free_text() -> None:
    from runwire_common import redaction

    for part in SECRET_KEY_PARTS:
        assert redact_text(f"{part}=abc") == f"{part}={REDACTED}"
        assert redaction._TEXT_KEY_WORD.fullmatch(part)


def test_the_shortcut_hints_cover_the_text_key_words() -> None:
    from runwire_common import redaction

    words = ["password", "passwd", "passphrase", "secret", "token", "api-key", "api_key", "apikey"]
    words += ["private_key", "privatekey", "access-key", "authorization", "credential", "cookie", "bearer"]
    for word in words:
        assert redaction._TEXT_KEY_WORD.fullmatch(word)
        assert any(hint in word for hint in redaction._TEXT_KEY_HINTS)
