"""Keyset pagination for ``ListRuns`` and ``ListThreads``.

Runs are listed newest first, ordered by ``(created_at, run_id)`` descending;
threads most recently updated first, by ``(updated_at, thread_id)``
descending (a thread's token is marked as such, so the two never mix).
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
THREAD_TOKEN_KIND = "thread"


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


@dataclass(frozen=True)
class ThreadCursor:
    """The last thread of a ``ListThreads`` page: the next page starts strictly after it."""

    updated_at: datetime
    thread_id: str


def encode_page_token(cursor: PageCursor) -> str:
    return _encode(cursor.created_at, cursor.run_id, kind=None)


def decode_page_token(token: str) -> PageCursor | None:
    """The cursor in ``token`` (``None`` for an empty token) or ``INVALID_ARGUMENT``."""
    position = _decode(token, kind=None)
    return None if position is None else PageCursor(created_at=position[0], run_id=position[1])


def encode_thread_token(cursor: ThreadCursor) -> str:
    return _encode(cursor.updated_at, cursor.thread_id, kind=THREAD_TOKEN_KIND)


def decode_thread_token(token: str) -> ThreadCursor | None:
    """The cursor in a ``ListThreads`` ``token`` (``None`` for an empty token) or ``INVALID_ARGUMENT``."""
    position = _decode(token, kind=THREAD_TOKEN_KIND)
    return None if position is None else ThreadCursor(updated_at=position[0], thread_id=position[1])


def _encode(at: datetime, key: str, *, kind: str | None) -> str:
    document: dict[str, object] = {"v": TOKEN_VERSION, "t": at.astimezone(UTC).isoformat(), "r": key}
    if kind is not None:
        document["k"] = kind
    raw = json.dumps(document, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def _decode(token: str, *, kind: str | None) -> tuple[datetime, str] | None:
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
    if not isinstance(document, dict) or document.get("v") != TOKEN_VERSION or document.get("k") != kind:
        raise malformed
    at, key = document.get("t"), document.get("r")
    if not isinstance(at, str) or not isinstance(key, str) or not key:
        raise malformed
    try:
        position = datetime.fromisoformat(at)
    except ValueError as exc:
        raise malformed from exc
    if position.tzinfo is None:
        raise malformed
    return position.astimezone(UTC), key
