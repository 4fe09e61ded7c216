"""Secret redaction for everything that leaves the execution service.

Values under keys that contain ``password``, ``secret``, ``token``,
``api_key``, ``authorization`` or ``credential`` (case-insensitively, at any
depth of nested objects and arrays) become ``"[REDACTED]"``. Free text, such
as error messages, has ``key=value`` / ``key: value`` pairs with such keys
masked the same way.

Redaction runs on every run's input and on every tool's arguments and result,
so the common case — text with nothing to mask — is kept cheap: text without
``=`` or ``:`` cannot hold a pair, and text in which no key word occurs (the
same case-insensitive alternation the full pattern uses) cannot either; only
the rest goes through the full pattern.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
SECRET_KEY_PARTS = ("password", "secret", "token", "api_key", "authorization", "credential")
MAX_DEPTH = 64

_KEY_WORDS = "password|secret|token|api_key|authorization|credential"  # SECRET_KEY_PARTS
_TEXT_SECRET = re.compile(
    rf"(?i)(\b[\w-]*(?:{_KEY_WORDS})[\w-]*\b)"
    r"(\s*[=:]\s*)(?:bearer\s+)?(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
)
# Matches wherever the key part of _TEXT_SECRET could: the same words under the same flags.
_TEXT_KEY_WORD = re.compile(rf"(?i){_KEY_WORDS}")
# ``str.lower`` then substring tests: exactly what ``is_secret_key`` has always meant.
_SECRET_KEY_PART = re.compile(_KEY_WORDS)
# Values returned as they are (exact types only; subclasses take the general path).
_SCALARS = frozenset({int, float, bool, type(None)})


def is_secret_key(key: str) -> bool:
    return _SECRET_KEY_PART.search(key.lower()) is not None


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-named keys replaced; the input is not changed."""
    if _depth > MAX_DEPTH:
        return REDACTED
    kind = type(value)
    # Fast paths for the exact JSON types; the general checks below give the same answers.
    if kind is str:
        return redact_text(value)
    if kind in _SCALARS:
        return value
    if kind is dict or isinstance(value, Mapping):
        depth = _depth + 1
        return {
            key: REDACTED if isinstance(key, str) and is_secret_key(key) else redact(item, _depth=depth)
            for key, item in value.items()
        }
    if isinstance(value, list | tuple):
        depth = _depth + 1
        return [redact(item, _depth=depth) for item in value]
    if isinstance(value, str):
        return redact_text(value)
    return value


def _mask(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def redact_text(text: str) -> str:
    """Mask ``token=abc`` / ``password: hunter2`` style pairs inside free text."""
    if type(text) is str and (("=" not in text and ":" not in text) or not _TEXT_KEY_WORD.search(text)):
        return text  # no separator or no key word: the full pattern cannot match
    return _TEXT_SECRET.sub(_mask, text)
