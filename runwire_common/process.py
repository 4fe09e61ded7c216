"""The ``__main__`` of a service process, in one place.

Load settings (fail fast), configure logging, run the service's async
``main`` on uvloop where available, and exit non-zero on a start-up failure.
"""

from __future__ import annotations

import asyncio
import gc
import logging
import sys
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from pydantic import ValidationError

from runwire_common.logs import configure_logging
from runwire_common.settings import describe_invalid_settings

S = TypeVar("S")

# Collect the young generation every 50,000 net allocations (CPython: 700), the older ones
# after 20 collections of the one below (CPython: 10); see tune_garbage_collector.
GC_YOUNG_THRESHOLD = 50_000
GC_OLDER_THRESHOLD = 20


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
    tune_garbage_collector()
    try:
        runner(main(settings))
    except KeyboardInterrupt:
        pass
    except Exception:
        logging.getLogger(name).exception("service failed")
        raise SystemExit(1) from None


def tune_garbage_collector() -> None:
    """Keep the cyclic garbage collector off the hot path.

    A service allocates many short-lived objects per request (protobuf
    messages, grpc call objects, SQLAlchemy rows), so CPython's default
    threshold (a collection every 700 net allocations) runs the collector
    thousands of times a second under load, and each full collection walks
    every object the process holds: the modules, classes and caches loaded at
    start-up. Freezing the start-up heap moves it out of the collector's sight
    for good, and a higher young-generation threshold makes collections rarer;
    reference counting still frees almost everything at once (RSS after a load
    differed by under 5 MB). In the benchmark this cut the services' CPU per event by about 10%
    (0.222-0.242 ms before, 0.202-0.217 ms after, over repeated runs).
    """
    gc.collect()
    gc.freeze()
    gc.set_threshold(GC_YOUNG_THRESHOLD, GC_OLDER_THRESHOLD, GC_OLDER_THRESHOLD)
