"""Event id parsing, ordering and allocation."""

from __future__ import annotations

import pytest

from bridge_service.event_ids import EventId, next_event_id, parse_event_id
from runwire_common.errors import InvalidArgument


def test_event_id_round_trips_through_its_text_form() -> None:
    assert parse_event_id("1700000000000-42") == EventId(1_700_000_000_000, 42)
    assert str(EventId(1_700_000_000_000, 42)) == "1700000000000-42"
    assert parse_event_id("0-0") == EventId(0, 0)


def test_event_ids_order_by_millisecond_then_sequence() -> None:
    ordered = ["9-5", "10-0", "10-1", "100-0"]
    assert sorted(ordered, key=parse_event_id) == ordered
    assert sorted(ordered) != ordered  # text order would be wrong


@pytest.mark.parametrize(
    "text", ["", "5", "5-", "-5", "a-1", "1-a", "1-2-3", "+1-0", "01-0", "1-01", " 1-0", "1_0", "1-0\n"]
)
def test_malformed_event_id_is_an_invalid_argument_naming_the_field(text: str) -> None:
    with pytest.raises(InvalidArgument, match="^after must be an event_id"):
        parse_event_id(text)


def test_event_id_beyond_64_bits_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="out of range"):
        parse_event_id(f"{2**64}-0")
    with pytest.raises(InvalidArgument):
        parse_event_id("1" * 21 + "-0")


def test_next_id_starts_a_new_millisecond_at_zero() -> None:
    assert next_event_id(EventId(100, 7), 101) == EventId(101, 0)


def test_next_id_within_the_same_millisecond_bumps_the_sequence() -> None:
    assert next_event_id(EventId(100, 7), 100) == EventId(100, 8)


def test_next_id_keeps_the_last_millisecond_when_the_clock_goes_back() -> None:
    assert next_event_id(EventId(100, 7), 40) == EventId(100, 8)
