"""Page tokens and page sizes (pure functions, no database)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone

import pytest

from registry_service.paging import (
    DEFAULT_PAGE_SIZE,
    MAX_PAGE_SIZE,
    PageCursor,
    decode_page_token,
    encode_page_token,
    page_size,
)
from runwire_common.errors import InvalidArgument


def test_a_token_round_trips_to_the_same_cursor_in_utc() -> None:
    local = datetime(2025, 3, 4, 5, 6, 7, 891011, tzinfo=timezone(timedelta(hours=2)))
    cursor = PageCursor(created_at=local, run_id="run_0123456789abcdef")

    decoded = decode_page_token(encode_page_token(cursor))

    assert decoded == PageCursor(created_at=local.astimezone(UTC), run_id="run_0123456789abcdef")
    assert decoded is not None and decoded.created_at.tzinfo == UTC


def test_a_token_is_url_safe_and_unpadded() -> None:
    token = encode_page_token(PageCursor(created_at=datetime.now(UTC), run_id="run_" + "f" * 32))

    assert "=" not in token and "+" not in token and "/" not in token


def test_an_empty_token_means_the_first_page() -> None:
    assert decode_page_token("") is None


def test_a_token_from_another_format_version_is_refused() -> None:
    token = encode_page_token(PageCursor(created_at=datetime.now(UTC), run_id="run_x")).replace(
        "eyJ2Ijox", "eyJ2Ijoy"
    )

    with pytest.raises(InvalidArgument, match="page_token"):
        decode_page_token(token)


@pytest.mark.parametrize(("requested", "expected"), [(0, DEFAULT_PAGE_SIZE), (7, 7), (10_000, MAX_PAGE_SIZE)])
def test_page_sizes_default_and_cap(requested: int, expected: int) -> None:
    assert page_size(requested) == expected


def test_a_negative_page_size_is_refused() -> None:
    with pytest.raises(InvalidArgument, match="page_size"):
        page_size(-5)
