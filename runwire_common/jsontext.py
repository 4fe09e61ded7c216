"""Cheap questions about JSON text, asked before parsing work is spent on it."""

from __future__ import annotations

import re

# JSON text that arrives as a decoded str (a WebSocket text frame, a protobuf string)
# is valid Unicode, so a lone surrogate can only appear after parsing, from a
# \uD800-\uDFFF escape.
_SURROGATE_ESCAPE = re.compile(r"\\u[dD][89a-fA-F]")


def may_hold_surrogates(text: str) -> bool:
    """Whether parsing ``text`` can produce a UTF-16 surrogate (``False``: it certainly cannot).

    Pairs such as ``\\ud83d\\ude00`` also answer ``True``; the parsed value
    decides whether any surrogate is left unpaired.
    """
    return _SURROGATE_ESCAPE.search(text) is not None
