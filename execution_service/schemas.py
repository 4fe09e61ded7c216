"""JSON Schema handling for agent inputs and tool arguments."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from jsonschema import Draft202012Validator, validators
from jsonschema.exceptions import SchemaError, best_match
from jsonschema.protocols import Validator


def thaw(value: Any) -> Any:
    """A plain ``dict``/``list`` copy of a (possibly read-only) JSON document."""
    if isinstance(value, Mapping):
        return {str(key): thaw(item) for key, item in value.items()}
    if isinstance(value, list | tuple):
        return [thaw(item) for item in value]
    return value


def compile_schema(schema: Mapping[str, Any], *, owner: str) -> Validator:
    """A validator for ``schema``; raises ``ValueError`` naming ``owner`` if it is invalid."""
    document = thaw(schema)
    cls = validators.validator_for(document, default=Draft202012Validator)
    try:
        cls.check_schema(document)
    except SchemaError as exc:
        raise ValueError(f"{owner}: invalid JSON Schema: {exc.message}") from exc
    return cls(document)


def schema_problem(validator: Validator, instance: Any) -> str | None:
    """A one-line description of why ``instance`` does not match, or ``None``."""
    error = best_match(validator.iter_errors(instance))
    if error is None:
        return None
    where = error.json_path
    return error.message if where == "$" else f"{where}: {error.message}"
