"""The attested identity of one run: minted once, re-minted only near its expiry.

Every call to a peer carries an attested ``UserContext``. Attesting costs an
HMAC, and a run makes many calls (a heartbeat every 2 s, a publish per batch),
so a run's context is minted once when the run starts and reused for all of
them; a long run gets a fresh one when the current one is within a quarter of
its lifetime of ``expires_at``. ``run_id`` and ``thread_id`` are not attested
(the MAC covers ``user_id``, ``tenant_id``, ``roles`` and ``expires_at``), so
binding the run's id needs no new mint.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from runwire.common.v1 import context_pb2
from runwire_common.attestation import ContextAttestor
from runwire_common.ids import new_id

# Re-mint when less than this share of the lifetime is left.
RENEW_WITHIN_SHARE = 0.25


def new_run_context(ctx: context_pb2.UserContext) -> context_pb2.UserContext:
    """A copy of a ``StartRun`` caller's context for the new run.

    Without ``run_id``: the registry assigns it, never the caller. Without a
    ``thread_id``, the run starts a new thread whose id is generated here, as
    ``run.start`` without a thread does over the WebSocket.
    """
    out = context_pb2.UserContext()
    out.CopyFrom(ctx)
    out.run_id = ""
    if not out.thread_id:
        out.thread_id = new_id("thread")
    return out


class RunIdentity:
    """An attested context reused for every outbound call made for one run (or one request)."""

    __slots__ = ("_attestor", "_clock", "_ctx", "_renew_within_s", "_ttl_s")

    def __init__(
        self,
        ctx: context_pb2.UserContext,
        *,
        attestor: ContextAttestor,
        ttl_s: float,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._attestor = attestor
        self._ttl_s = ttl_s
        self._renew_within_s = ttl_s * RENEW_WITHIN_SHARE
        self._clock = clock
        self._ctx = attestor.mint(ctx, ttl_s=ttl_s)

    def context(self) -> context_pb2.UserContext:
        """The attested context; re-minted first if it is close to its ``expires_at``.

        Callers must not modify the returned message (copy it to change fields).
        """
        if self._ctx.expires_at.seconds - self._clock() <= self._renew_within_s:
            self._ctx = self._attestor.mint(self._ctx, ttl_s=self._ttl_s)
        return self._ctx

    def bind_run(self, run_id: str) -> None:
        """Set the context's ``run_id`` (not attested: the attestation stays valid)."""
        ctx = context_pb2.UserContext()
        ctx.CopyFrom(self._ctx)
        ctx.run_id = run_id
        self._ctx = ctx
