"""Structured JSON logs on stdout, with ids bound per call.

There is no ambient logging context: a servicer binds the request's ids to a
:class:`logging.LoggerAdapter` with :func:`bind` and passes it down.

Every line is redacted with the rules of events (:mod:`runwire_common.redaction`):
the message and a traceback as text, ``extra`` fields by key and value.
"""

from __future__ import annotations

import json
import logging
import sys
from collections.abc import Mapping, MutableMapping
from typing import Any

from runwire.common.v1 import context_pb2
from runwire_common.redaction import REDACTED, is_secret_key, redact, redact_text

_STANDARD_ATTRS = frozenset((*vars(logging.makeLogRecord({})), "message", "asctime"))


def _redacted_str(value: object) -> str:
    return redact_text(str(value))


class JsonFormatter(logging.Formatter):
    def __init__(self, service: str) -> None:
        super().__init__()
        self._service = service

    def format(self, record: logging.LogRecord) -> str:
        entry: dict[str, Any] = {
            "ts": self.formatTime(record, "%Y-%m-%dT%H:%M:%S") + f".{int(record.msecs):03d}Z",
            "level": record.levelname.lower(),
            "service": self._service,
            "logger": record.name,
            "msg": redact_text(record.getMessage()),
        }
        for key, value in vars(record).items():
            if key not in _STANDARD_ATTRS and not key.startswith("_"):
                entry[key] = REDACTED if is_secret_key(key) else redact(value)
        if record.exc_info:
            entry["exc"] = redact_text(self.formatException(record.exc_info))
        return json.dumps(entry, default=_redacted_str)


def configure_logging(service: str, level: str = "INFO") -> None:
    """Route the root logger to stdout as JSON lines. Called once by ``__main__``."""
    # Records need no caller, thread or process details (the JSON lines never show
    # them); skipping them is the logging module's documented optimisation and
    # saves a stack walk per record.
    logging._srcfile = None
    logging.logThreads = False
    logging.logProcesses = False
    logging.logMultiprocessing = False
    handler = logging.StreamHandler(sys.stdout)
    handler.setFormatter(JsonFormatter(service))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


class _Bound(logging.LoggerAdapter):  # type: ignore[type-arg]
    def process(self, msg: Any, kwargs: MutableMapping[str, Any]) -> tuple[Any, MutableMapping[str, Any]]:
        kwargs["extra"] = {**(self.extra or {}), **kwargs.get("extra", {})}
        return msg, kwargs


def bind(
    logger: logging.Logger | logging.LoggerAdapter,  # type: ignore[type-arg]
    ctx: context_pb2.UserContext | None = None,
    **fields: Any,
) -> logging.LoggerAdapter:  # type: ignore[type-arg]
    """A logger that adds the context's ids (and ``fields``) to every record."""
    extra: dict[str, Any] = {}
    if isinstance(logger, logging.LoggerAdapter):
        extra.update(logger.extra if isinstance(logger.extra, Mapping) else {})
        base = logger.logger
    else:
        base = logger
    if ctx is not None:
        for name in ("request_id", "user_id", "run_id", "thread_id"):
            value = getattr(ctx, name)
            if value:
                extra[name] = value
    extra.update(fields)
    return _Bound(base, extra)
