"""Secret redaction for everything that leaves the execution service.

Values under keys that contain ``password``, ``secret``, ``token``,
``api_key``, ``authorization`` or ``credential`` (case-insensitively, at any
depth of nested objects and arrays) become ``"[REDACTED]"``. Free text, such
as error messages, has ``key=value`` / ``key: value`` pairs with such keys
masked the same way.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
SECRET_KEY_PARTS = ("password", "secret", "token", "api_key", "authorization", "credential")
MAX_DEPTH = 64

_TEXT_SECRET = re.compile(
    r"(?i)(\b[\w-]*(?:password|secret|token|api_key|authorization|credential)[\w-]*\b)"
    r"(\s*[=:]\s*)(?:bearer\s+)?(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
)


def is_secret_key(key: str) -> bool:
    lowered = key.lower()
    return any(part in lowered for part in SECRET_KEY_PARTS)


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-named keys replaced; the input is not changed."""
    if _depth > MAX_DEPTH:
        return REDACTED
    if isinstance(value, Mapping):
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact(item, _depth=_depth + 1)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        return [redact(item, _depth=_depth + 1) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def redact_text(text: str) -> str:
    """Mask ``token=abc`` / ``password: hunter2`` style pairs inside free text."""
    return _TEXT_SECRET.sub(lambda m: f"{m.group(1)}{m.group(2)}{REDACTED}", text)
