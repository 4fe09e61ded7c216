"""Which replicas of a peer service there are, and which one serves a key.

The long-lived streams of the event fabric (gateway → bridge, execution →
bridge) are opened per bridge *replica*, not through one round-robin channel:
a user's subscription must stay on one replica while it is healthy and move
when that replica goes away. A target names its replicas as

- ``host:port`` — one replica (or a Kubernetes Service that balances itself);
- ``ipv4:a:p,b:q`` or ``a:p,b:q`` — a fixed list (``runwire up`` with replicas);
- ``dns:///name:port`` — every address ``name`` resolves to (a headless
  Kubernetes Service), looked up again whenever the caller asks.

:func:`rendezvous` spreads keys over replicas by highest random weight: a key
keeps its replica as long as that replica is in the list, and only the keys of
a replica that leaves move (each to its next choice).
"""

from __future__ import annotations

import asyncio
import hashlib
import socket
from collections.abc import Sequence

DNS_SCHEME = "dns:///"
IPV4_SCHEME = "ipv4:"


def static_replicas(target: str) -> tuple[str, ...] | None:
    """The replica addresses of a fixed ``target``; ``None`` for a ``dns:///`` target."""
    target = target.strip()
    if target.startswith(DNS_SCHEME):
        return None
    if target.startswith(IPV4_SCHEME):
        target = target[len(IPV4_SCHEME) :]
    replicas = tuple(part.strip() for part in target.split(",") if part.strip())
    if not replicas:
        raise ValueError("a target names at least one host:port")
    return replicas


async def resolve_replicas(target: str) -> tuple[str, ...]:
    """The replica addresses of ``target`` now (``dns:///`` targets are resolved; sorted, unique)."""
    fixed = static_replicas(target)
    if fixed is not None:
        return fixed
    host, _, port = target.strip()[len(DNS_SCHEME) :].rpartition(":")
    if not host or not port.isdigit():
        raise ValueError(f"{target!r} is not dns:///host:port")
    infos = await asyncio.get_running_loop().getaddrinfo(host, int(port), type=socket.SOCK_STREAM)
    addresses = {
        f"[{info[4][0]}]:{port}" if info[0] == socket.AF_INET6 else f"{info[4][0]}:{port}" for info in infos
    }
    return tuple(sorted(addresses))


def rendezvous(key: str, replicas: Sequence[str]) -> str:
    """The replica of ``replicas`` that serves ``key`` (highest random weight)."""
    if not replicas:
        raise ValueError("no replicas to choose from")
    if len(replicas) == 1:
        return replicas[0]
    return max(replicas, key=lambda replica: _weight(key, replica))


def _weight(key: str, replica: str) -> bytes:
    return hashlib.blake2b(f"{replica}\x00{key}".encode(), digest_size=8).digest()


class ReplicaList:
    """The replicas of ``target`` now: fixed ones as given, a ``dns:///`` name's looked up again every ``every_s``.

    A failed lookup keeps the last answer; with none yet it raises ``OSError``.
    """

    def __init__(self, target: str, *, every_s: float = 5.0) -> None:
        self._target = target
        self._every_s = every_s
        self._fixed = static_replicas(target)
        self._resolved: tuple[str, ...] = ()
        self._resolved_at = float("-inf")

    async def current(self) -> tuple[str, ...]:
        if self._fixed is not None:
            return self._fixed
        now = asyncio.get_running_loop().time()
        if self._resolved and now - self._resolved_at < self._every_s:
            return self._resolved
        try:
            self._resolved = await resolve_replicas(self._target)
        except OSError:
            if not self._resolved:
                raise
        self._resolved_at = now
        return self._resolved
