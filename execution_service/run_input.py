"""A run's input, parsed once at the edge and carried encoded from there on.

``StartRunRequest.input_json`` is parsed exactly once (:func:`parse_input`):
the value validates against the agent's schema and is what the agent gets.
Everything downstream that needs the input as JSON — the registry's
``CreateRun.input_json`` and the ``input`` of the ``agent_started`` payload —
takes :attr:`RunInput.redacted_json`, which is the caller's own text whenever
redaction changes nothing (the usual case), and otherwise the redacted value
encoded once. The ``agent_started`` payload splices that text in
(:class:`~execution_service.emitter.RawJson`) instead of encoding the input again.

The caller's text is carried only when it says exactly what the parsed value
says: JSON objects with duplicate keys (whose earlier values the value drops,
and redaction would never see) are re-encoded from the value, and values that
no event could carry are refused here: ``NaN``/``Infinity`` (Python's parser
accepts them, JSON does not), numbers that overflow to infinity, and lone
UTF-16 surrogates.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

from execution_service.emitter import encode_payload
from execution_service.redaction import redact
from runwire_common.errors import InvalidArgument
from runwire_common.jsontext import may_hold_surrogates

EMPTY_INPUT = "{}"


@dataclass(frozen=True, slots=True)
class RunInput:
    """The parsed input (for the agent) and its redacted JSON text (for everything else)."""

    value: dict[str, Any]
    redacted_json: str


class _NotJson(ValueError):
    pass


def _refuse_constant(name: str) -> float:
    raise _NotJson(f"input_json holds {name}, which is not JSON")


def _finite(text: str) -> float:
    number = float(text)
    if not math.isfinite(number):
        raise _NotJson("input_json holds a number too large for a 64-bit float")
    return number


def parse_input(input_json: str) -> RunInput:
    """Parse ``input_json`` (a JSON object; empty means ``{}``) once; ``InvalidArgument`` otherwise."""
    text = input_json.strip()
    if not text:
        return RunInput({}, EMPTY_INPUT)
    duplicates = False

    def unique_object(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
        nonlocal duplicates
        document = dict(pairs)
        if len(document) != len(pairs):
            duplicates = True
        return document

    try:
        value = json.loads(
            text, object_pairs_hook=unique_object, parse_constant=_refuse_constant, parse_float=_finite
        )
    except _NotJson as exc:
        raise InvalidArgument(str(exc)) from None
    except ValueError:
        raise InvalidArgument("input_json is not valid JSON") from None
    if not isinstance(value, dict):
        raise InvalidArgument("input_json must be a JSON object")
    if may_hold_surrogates(text) and _has_lone_surrogate(value):
        # Valid JSON may still escape a lone UTF-16 surrogate ("\\ud800"), which no
        # event could carry: refuse it here rather than fail the run later.
        raise InvalidArgument("input_json contains an unpaired surrogate escape")
    redacted = redact(value)
    if redacted == value and not duplicates:
        return RunInput(value, text)
    return RunInput(value, encode_payload(redacted))


def _has_lone_surrogate(value: Any) -> bool:
    if isinstance(value, str):
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:
            return True
        return False
    if isinstance(value, dict):
        return any(_has_lone_surrogate(key) or _has_lone_surrogate(item) for key, item in value.items())
    if isinstance(value, list):
        return any(_has_lone_surrogate(item) for item in value)
    return False
