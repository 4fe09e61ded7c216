"""Secret redaction for everything that leaves the execution service.

The rules live in :mod:`runwire_common.redaction` (structured logs use them
too); this module keeps the execution service's imports where they were.
"""

from __future__ import annotations

from runwire_common.redaction import (
    MAX_DEPTH,
    REDACTED,
    SECRET_KEY_PARTS,
    is_secret_key,
    normalise_key,
    redact,
    redact_text,
    redact_text_fully,
)

__all__ = (
    "MAX_DEPTH",
    "REDACTED",
    "SECRET_KEY_PARTS",
    "is_secret_key",
    "normalise_key",
    "redact",
    "redact_text",
    "redact_text_fully",
)
