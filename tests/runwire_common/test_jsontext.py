"""The surrogate pre-check: it may say yes too often, never no when a surrogate can result."""

from __future__ import annotations

import json

import pytest
from hypothesis import given
from hypothesis import strategies as st

from runwire_common.jsontext import may_hold_surrogates


def _holds_surrogate(value: object) -> bool:
    return any(0xD800 <= ord(ch) <= 0xDFFF for ch in json.dumps(value, ensure_ascii=False))


@pytest.mark.parametrize("text", ['{"a": "\\ud800"}', '"\\uDFFF"', '["\\uDbFf"]', '"\\ud83d\\ude00"'])
def test_surrogate_escapes_are_noticed(text: str) -> None:
    assert may_hold_surrogates(text)


@pytest.mark.parametrize("text", ['{"a": "\\u00e9"}', '"\\uD7FF"', '"\\uE000"', '"plain ud800"', '"é😀"'])
def test_text_without_surrogate_escapes_passes(text: str) -> None:
    assert not may_hold_surrogates(text)


# st.text() never draws surrogates, so some strings get one put in explicitly.
STRINGS = st.one_of(
    st.text(max_size=5),
    st.builds(
        lambda head, surrogate, tail: head + surrogate + tail,
        st.text(max_size=3),
        st.sampled_from(["\ud800", "\udbff", "\udc00", "\udfff", "\ud83d\ude00"]),
        st.text(max_size=3),
    ),
)


@given(st.recursive(STRINGS, lambda inner: st.lists(inner) | st.dictionaries(STRINGS, inner), max_leaves=8))
def test_whenever_parsing_yields_a_surrogate_the_check_said_so(value: object) -> None:
    text = json.dumps(value)  # ASCII: every non-ASCII character, surrogates included, escaped
    if _holds_surrogate(json.loads(text)):  # a lone surrogate survived parsing
        assert may_hold_surrogates(text)
