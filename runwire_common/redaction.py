"""Secret redaction for everything that leaves a service: events, stored state, logs.

Two rules, applied at any depth of nested objects and arrays:

*Keys.* A value whose key, once lower-cased and stripped of separators
(``-``, ``_``, ``.``, space), contains ``password``, ``passwd``,
``passphrase``, ``secret``, ``token``, ``apikey``, ``privatekey``,
``accesskey``, ``authorization``, ``credential``, ``cookie`` or ``bearer``
becomes ``"[REDACTED]"`` — so ``apiKey``, ``api-key``, ``x-api-key``,
``private_key`` and ``Set-Cookie`` are all masked. Count fields are not
secrets, but a key containing ``token`` (``prompt_tokens``) is masked all the
same: that is the rule, and why usage is reported as ``prompt``/``completion``.

*Text.* Every string (values, error messages, thinking, partial results,
log messages) has ``key=value`` / ``key: value`` pairs whose key holds one of
the words above (``api_key``, ``api-key``, ``apikey``, ``private_key`` …)
masked the same way, and these secret shapes masked wherever they stand:
``sk-…`` keys (20+ characters with a digit), JWTs (``eyJ….eyJ….…``), the
credential after ``Bearer``/``bearer``/``BEARER`` and the password of a URL
(``https://user:[REDACTED]@host``).

Limit: text is redacted piece by piece, so a secret split across two pieces
(two ``partial_result`` deltas, say) is seen by neither and is not masked.

Redaction runs on every run's input, every tool's arguments and result and
every streamed delta, so the common case — text with nothing to mask — is
kept cheap: the pair pattern runs only on text holding ``=`` or ``:`` and one
of the key words (for ASCII text, substring tests on its lower-case form; for
other text, the case-insensitive alternation the full pattern uses), and the
shape pattern only on text holding one of its literal starts (``sk-``,
``eyJ``, ``://``, ``earer``, ``EARER``). A dict key is normalised only when it
is not all letters and digits already.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

REDACTED = "[REDACTED]"
# The words of the key rule, as they stand in a normalised key (lower case, no separators).
SECRET_KEY_PARTS = (
    "password",
    "passwd",
    "passphrase",
    "secret",
    "token",
    "apikey",
    "privatekey",
    "accesskey",
    "authorization",
    "credential",
    "cookie",
    "bearer",
)
MAX_DEPTH = 64

_SECRET_KEY_PART = re.compile("|".join(SECRET_KEY_PARTS))

# The key words of free text, where a key keeps its separators (``x-api-key``, ``private_key``).
TEXT_KEY_WORDS = (
    r"pass(?:word|wd|phrase)|secret|token|api[-_]?key|private[-_]?key|access[-_]?key"
    r"|authorization|credential|cookie|bearer"
)
_TEXT_SECRET = re.compile(
    rf"(?i)(\b[\w-]*(?:{TEXT_KEY_WORDS})[\w-]*\b)"
    r"(\s*[=:]\s*)(?:bearer\s+)?(\"[^\"]*\"|'[^']*'|[^\s,;]+)"
)
# Matches wherever the key part of _TEXT_SECRET could: the same words under the same flags.
_TEXT_KEY_WORD = re.compile(rf"(?i)(?:{TEXT_KEY_WORDS})")
# For ASCII text, each word of TEXT_KEY_WORDS holds one of these in its lower-case form.
_TEXT_KEY_HINTS = ("pass", "secret", "token", "key", "authorization", "credential", "cookie", "bearer")

_SECRET_SHAPE = re.compile(
    # sk-… API keys: 20+ key characters, one of them a digit (not ``sk-learn``).
    r"\bsk-(?=[A-Za-z_-]*[0-9])[A-Za-z0-9_-]{20,}"
    # JSON Web Tokens: base64url of ``{"`` then payload and signature.
    r"|\beyJ[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]{4,}\.[A-Za-z0-9_-]*"
    # The credential after Bearer: 8+ characters with a digit, or 20+ (not ``the bearer of``).
    r"|\b(?P<bearer>Bearer|bearer|BEARER)(?P<space>\s+)"
    r"(?:(?=[A-Za-z._~+/-]*[0-9])[A-Za-z0-9._~+/-]{8,}|[A-Za-z0-9._~+/-]{20,})=*"
    # A URL's password: scheme://user:password@ (the user name is kept).
    r"|(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s:/?#@]*:)[^\s/?#]+@"
)
# Values returned as they are (exact types only; subclasses take the general path).
_SCALARS = frozenset({int, float, bool, type(None)})


def normalise_key(key: str) -> str:
    """``key`` in lower case without separators: ``X-Api-Key`` → ``xapikey``."""
    lowered = key.lower()
    if lowered.isalnum():
        return lowered
    return lowered.replace("_", "").replace("-", "").replace(".", "").replace(" ", "")


def is_secret_key(key: str) -> bool:
    return _SECRET_KEY_PART.search(normalise_key(key)) is not None


def redact(value: Any, *, _depth: int = 0) -> Any:
    """A copy of ``value`` with secret-named keys and secret-shaped text replaced; the input is not changed."""
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


def _mask_pair(match: re.Match[str]) -> str:
    return f"{match.group(1)}{match.group(2)}{REDACTED}"


def _mask_shape(match: re.Match[str]) -> str:
    bearer = match.group("bearer")
    if bearer is not None:
        return f"{bearer}{match.group('space')}{REDACTED}"
    url = match.group("url")
    if url is not None:
        return f"{url}{REDACTED}@"
    return REDACTED


def redact_text_fully(text: str) -> str:
    """:func:`redact_text` without its shortcuts: both patterns, always."""
    return _SECRET_SHAPE.sub(_mask_shape, _TEXT_SECRET.sub(_mask_pair, text))


def redact_text(text: str) -> str:
    """Mask ``token=abc`` / ``password: hunter2`` pairs and secret shapes inside free text."""
    if type(text) is not str:
        return redact_text_fully(text)
    colon = ":" in text
    if colon or "=" in text:
        if text.isascii():
            lowered = text.lower()
            for hint in _TEXT_KEY_HINTS:
                if hint in lowered:
                    text = _TEXT_SECRET.sub(_mask_pair, text)
                    colon = ":" in text
                    break
        elif _TEXT_KEY_WORD.search(text):
            text = _TEXT_SECRET.sub(_mask_pair, text)
            colon = ":" in text
    # The literal starts of the shapes, each behind a one-character test (memchr) where one helps.
    if (
        ("-" in text and "sk-" in text)
        or ("J" in text and "eyJ" in text)
        or (colon and "://" in text)
        or "earer" in text
        or ("R" in text and "EARER" in text)
    ):
        text = _SECRET_SHAPE.sub(_mask_shape, text)
    return text
