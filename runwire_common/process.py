"""The ``__main__`` of a service process, in one place.

Load settings (fail fast), configure logging, run the service's async
``main`` on uvloop where available, and exit non-zero on a start-up failure.
"""

from __future__ import annotations

import asyncio
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from runwire_common.logs import configure_logging
from runwire_common.settings import describe_invalid_settings

S = TypeVar("S")


def run_service(
    name: str,
    load_settings: Callable[[], S],
    main: Callable[[S], Coroutine[Any, Any, None]],
) -> None:
    try:
        settings = load_settings()
    except ValidationError as exc:
        # Never str(exc): pydantic's text repeats every input value, secrets included.
        print(f"{name}: invalid configuration: {describe_invalid_settings(exc)}", file=sys.stderr)
        raise SystemExit(2) from None
    configure_logging(name, getattr(settings, "log_level", "INFO"))
    try:
        import uvloop

        runner: Callable[[Coroutine[Any, Any, None]], None] = uvloop.run
    except ImportError:  # pragma: no cover - uvloop is optional off Linux
        runner = asyncio.run
    try:
        runner(main(settings))
    except KeyboardInterrupt:
        pass
    except Exception:
        logging.getLogger(name).exception("service failed")
        raise SystemExit(1) from None
