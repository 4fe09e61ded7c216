"""Server-generated identifiers: a readable prefix and 128 random bits."""

from __future__ import annotations

import secrets


def new_id(prefix: str) -> str:
    """``run_`` + 32 hex digits; long enough never to look like a placeholder."""
    return f"{prefix}_{secrets.token_hex(16)}"
