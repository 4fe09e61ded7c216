"""``StartRunRequest.input_json``: a JSON object of valid Unicode, or INVALID_ARGUMENT."""

from __future__ import annotations

import pytest

from execution_service.run_input import parse_input
from runwire_common.errors import InvalidArgument


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("", {}),
        ("  ", {}),
        ('{"steps": []}', {"steps": []}),
        ('{"emoji": "\\ud83d\\ude00", "accent": "\\u00e9"}', {"emoji": "\U0001f600", "accent": "é"}),
    ],
)
def test_json_objects_are_parsed(text: str, expected: object) -> None:
    assert parse_input(text).value == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("{", "not valid JSON"),
        ("[1, 2]", "must be a JSON object"),
        ('{"x": "\\ud800"}', "unpaired surrogate"),
        ('{"x": ["ok", {"\\uDFFF": 1}]}', "unpaired surrogate"),
        ('{"x": "\\ude00\\ud83d"}', "unpaired surrogate"),  # a pair in the wrong order
    ],
)
def test_anything_else_is_an_invalid_argument(text: str, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_input(text)
