"""Readings of the Redis server behind the production configuration's bridge.

* ``connected_clients`` — ``INFO clients``: every client connection of the
  server, whoever made it (this benchmark's own probe connection included);
* ``bridge_clients`` — ``CLIENT LIST`` entries whose name is the bridge
  process's ``CLIENT SETNAME`` (``runwire-bridge.<key prefix>.<pid>``, see
  ``bridge_service.app.redis_client_name``): the connections that belong to
  the bridge under test;
* ``used_memory_kb`` (``INFO memory``) and ``cpu_s`` (``INFO cpu``,
  ``used_cpu_user + used_cpu_sys`` of the server).

:class:`RedisProbe` takes single readings and, as a context manager around a
measurement, polls in a thread and keeps the reading with the most bridge
clients (then the most clients) — the peak.
"""

from __future__ import annotations

import threading
from collections.abc import Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any

import redis

BRIDGE_NAME_PREFIX = "runwire-bridge."


def bridge_client_name(key_prefix: str, pid: int) -> str:
    """The name the bridge process ``pid`` gives its Redis connections."""
    return f"{BRIDGE_NAME_PREFIX}{key_prefix}.{pid}"


def _is_bridge(name: str, pids: frozenset[str]) -> bool:
    return name.startswith(BRIDGE_NAME_PREFIX) and name.rsplit(".", 1)[-1] in pids


@dataclass
class Peak:
    """The highest reading seen while a :meth:`RedisProbe.polling` block ran."""

    reading: dict[str, Any] = field(default_factory=dict)
    samples: int = 0
    errors: int = 0


class RedisProbe:
    """Readings of one Redis server; ``bridge_pids`` says whose connections count as the bridge's."""

    def __init__(self, url: str, bridge_pids: Iterable[int], *, poll_s: float = 1.0) -> None:
        self._client: redis.Redis = redis.Redis.from_url(
            url, socket_timeout=10, client_name="runwire-bench-probe"
        )
        self._pids = frozenset(str(pid) for pid in bridge_pids)
        self._poll_s = poll_s
        self._lock = threading.Lock()

    def reading(self) -> dict[str, Any]:
        """One reading now (the probe's own connection is among ``connected_clients``)."""
        with self._lock:
            info: dict[str, Any] = self._client.info("clients")
            memory: dict[str, Any] = self._client.info("memory")
            cpu: dict[str, Any] = self._client.info("cpu")
            clients: list[dict[str, Any]] = self._client.client_list()
        return {
            "connected_clients": int(info["connected_clients"]),
            "bridge_clients": sum(1 for c in clients if _is_bridge(str(c.get("name", "")), self._pids)),
            "used_memory_kb": int(memory["used_memory"]) // 1024,
            "cpu_s": round(float(cpu["used_cpu_user"]) + float(cpu["used_cpu_sys"]), 3),
        }

    @contextmanager
    def polling(self) -> Iterator[Peak]:
        """Poll every ``poll_s`` while the block runs; the :class:`Peak` is complete on exit."""
        peak = Peak()
        stop = threading.Event()

        def better(new: dict[str, Any]) -> bool:
            old = peak.reading
            key = ("bridge_clients", "connected_clients")
            return not old or tuple(new[k] for k in key) > tuple(old[k] for k in key)

        def poll() -> None:
            while True:
                try:
                    now = self.reading()
                except redis.RedisError:
                    peak.errors += 1
                else:
                    peak.samples += 1
                    if better(now):
                        peak.reading = now
                if stop.wait(self._poll_s):
                    return

        thread = threading.Thread(target=poll, name="redis-probe", daemon=True)
        thread.start()
        try:
            yield peak
        finally:
            stop.set()
            thread.join(timeout=30)
            try:
                last = self.reading()  # one more: the block's last state is a candidate too
            except redis.RedisError:
                peak.errors += 1
            else:
                peak.samples += 1
                if better(last):
                    peak.reading = last

    def delete_keys(self, key_prefix: str) -> int:
        """Delete every key under ``key_prefix:`` in this database; return how many."""
        deleted = 0
        with self._lock:
            batch: list[Any] = []
            for key in self._client.scan_iter(match=f"{key_prefix}:*", count=1000):
                batch.append(key)
                if len(batch) >= 1000:
                    deleted += int(self._client.delete(*batch))
                    batch.clear()
            if batch:
                deleted += int(self._client.delete(*batch))
        return deleted

    def close(self) -> None:
        self._client.close()


def phases(before: dict[str, Any], peak: Peak, after: dict[str, Any]) -> dict[str, Any]:
    """The JSON block of one measurement: readings before, at the peak and after."""
    return {
        "before": before,
        "peak": peak.reading,
        "after": after,
        "samples": peak.samples,
        "errors": peak.errors,
    }
