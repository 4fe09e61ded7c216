"""Keyset pagination for ``ListRuns``.

Runs are listed newest first, ordered by ``(created_at, run_id)`` descending.
A page token is the position of the last run of the previous page, encoded
as URL-safe base64 of a small JSON object; it means nothing to the client and
grants nothing (every query is still filtered by the caller's ``user_id``).
Unlike an offset, a keyset cursor neither skips nor repeats runs when new
runs are created between pages.
"""

from __future__ import annotations

import base64
import binascii
import json
from dataclasses import dataclass
from datetime import UTC, datetime

from runwire_common.errors import InvalidArgument

DEFAULT_PAGE_SIZE = 50
MAX_PAGE_SIZE = 200
TOKEN_VERSION = 1
MAX_TOKEN_LENGTH = 1024


@dataclass(frozen=True)
class PageCursor:
    """The last run of a page: the next page starts strictly after it."""

    created_at: datetime
    run_id: str


def page_size(requested: int) -> int:
    """``0`` → the default; above the maximum → the maximum; negative → ``INVALID_ARGUMENT``."""
    if requested < 0:
        raise InvalidArgument("page_size must not be negative")
    if requested == 0:
        return DEFAULT_PAGE_SIZE
    return min(requested, MAX_PAGE_SIZE)


def encode_page_token(cursor: PageCursor) -> str:
    document = {"v": TOKEN_VERSION, "t": cursor.created_at.astimezone(UTC).isoformat(), "r": cursor.run_id}
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_page_token(token: str) -> PageCursor | None:
    """The cursor in ``token`` (``None`` for an empty token) or ``INVALID_ARGUMENT``."""
    if not token:
        return None
    malformed = InvalidArgument("page_token is malformed; pass next_page_token from a previous response")
    if len(token) > MAX_TOKEN_LENGTH:
        raise malformed
    try:
        raw = base64.urlsafe_b64decode(token + "=" * (-len(token) % 4))
        document = json.loads(raw)
    except (binascii.Error, ValueError) as exc:
        raise malformed from exc
    if not isinstance(document, dict) or document.get("v") != TOKEN_VERSION:
        raise malformed
    created, run_id = document.get("t"), document.get("r")
    if not isinstance(created, str) or not isinstance(run_id, str) or not run_id:
        raise malformed
    try:
        created_at = datetime.fromisoformat(created)
    except ValueError as exc:
        raise malformed from exc
    if created_at.tzinfo is None:
        raise malformed
    return PageCursor(created_at=created_at.astimezone(UTC), run_id=run_id)
