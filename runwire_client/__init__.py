"""An asyncio client of the Runwire WebSocket gateway (docs/clients.md, docs/protocol.md).

>>> async with RunwireClient("ws://127.0.0.1:8080/ws", token=jwt) as client:
...     run = await client.start_run("assistant", {"message": "what is 2 + 3?"})
...     async for event in client.run_events(run["run_id"]):
...         print(event["seq"], event["type"])
"""

from __future__ import annotations

from runwire_client.backoff import Backoff
from runwire_client.client import RunwireClient, State
from runwire_client.errors import RunwireError
from runwire_client.events import TERMINAL_EVENTS, Event

__all__ = ("TERMINAL_EVENTS", "Backoff", "Event", "RunwireClient", "RunwireError", "State")
