"""Settings of the bridge process (environment prefix ``RUNWIRE_BRIDGE_``).

``RUNWIRE_BRIDGE_BACKEND`` [memory|redis], ``_REDIS_URL``, ``_REDIS_KEY_PREFIX``
[runwire], ``_RETENTION_S`` [86400], ``_LOG_CAPACITY`` [10000],
``_LOG_MAX_BYTES`` [4194304], ``_RUN_STATE_CAPACITY`` [1000], ``_RUN_STATE_HOLD_S`` [600],
``_RUN_STATE_MAX`` [20000], ``_SUBSCRIBER_QUEUE`` [1000],
``_MAX_EVENTS_PER_PUBLISH`` [500], ``_MAX_PAYLOAD_BYTES`` [65536],
``_MAX_SUBSCRIBE_BATCH`` [256], ``_REDIS_MAX_CONNECTIONS`` [6],
``_REDIS_PUBSUB_SHARDS`` [4], ``_REDIS_SHARDED_PUBSUB`` [false],
``_REDIS_CLUSTER`` [false], ``_REDIS_LIVE_BODY_MAX_BYTES`` [65536],
``_REDIS_ALLOW_EVICTION`` [false], ``_CANARY_INTERVAL_S`` [5], ``_CANARY_TIMEOUT_S`` [2].
"""

from __future__ import annotations

import re
from typing import Literal, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, field_validator, model_validator
from pydantic_settings import SettingsConfigDict

from runwire_common.settings import ServerSettings

_PREFIX = re.compile(r"[A-Za-z0-9._:-]{1,64}")
REDIS_SCHEMES = ("redis", "rediss", "unix")


class BridgeSettings(ServerSettings):
    """Where events are kept and how much of them.

    Memory is bounded per user (``log_capacity`` retained events, the
    fencing state of ``run_state_capacity`` runs) and per subscriber
    (``subscriber_queue`` undelivered live events); a subscriber that exceeds
    its queue is ended with ``RESOURCE_EXHAUSTED`` and resumes. Events older
    than ``retention_s`` are trimmed on both backends, and a user idle that
    long is forgotten (Redis expires the keys; the memory backend drops the
    log once no subscriber holds it).

    ``log_max_bytes`` bounds a user's retained log by the size of its
    serialized events as well, on both backends (the oldest go first; the
    newest event is always kept): with large payloads it, not
    ``log_capacity``, is what caps the memory one user can hold.

    Fencing state: beyond ``run_state_capacity`` runs per user, only runs
    that finished more than ``run_state_hold_s`` ago are forgotten — a
    publisher may retry a batch for the publish retry window
    (``RUNWIRE_EXECUTION_PUBLISH_RETRY_S``, 20 s) plus its acknowledgement
    timeout, so the default 600 s leaves a wide margin. ``run_state_max``
    is the hard per-user bound (a user finishing that many runs within the
    hold loses the oldest state early; the run-creation limits keep honest
    users far below it). On Redis, only ``maxmemory-policy noeviction`` keeps
    all of it: the bridge refuses to start on an evicting policy unless
    ``redis_allow_eviction`` (see :mod:`bridge_service.redis_policy`).

    ``max_subscribe_batch`` caps ``SubscribeRequest.max_batch``: a subscriber
    that asks for batches gets at most that many events per response, and
    only events that were already waiting (a batch is never waited for).

    ``backend="redis"`` keeps the log in Redis at ``redis_url`` under keys
    starting with ``redis_key_prefix``. A bridge process then holds at most
    ``redis_max_connections`` command connections plus ``redis_pubsub_shards``
    shared Pub/Sub connections (10 with the defaults), whatever its
    subscriber count: the live channels of all its subscribers are spread
    over those shards. ``redis_sharded_pubsub`` uses Redis 7 sharded Pub/Sub
    (``SSUBSCRIBE``/``SPUBLISH``), which Redis Cluster routes to the slot's
    shard instead of broadcasting to every node. ``redis_cluster`` (which
    needs ``redis_sharded_pubsub``) treats ``redis_url`` as any node of a
    Redis Cluster: commands go to the node owning their slot, each live
    channel is subscribed on the primary owning its slot, and the bounds
    hold per node (``redis_max_connections`` commands in flight in all, each
    node's pool as large; ``redis_pubsub_shards`` Pub/Sub connections per
    primary). It is a setting, not detected, so a bridge never changes its
    routing because of one ``INFO`` answer. A live message carries the
    published events themselves up to ``redis_live_body_max_bytes`` (0: only
    the newest id), so caught-up subscribers need no stream read.

    Delivery-aware readiness (Redis backend, :mod:`bridge_service.canary`):
    every ``canary_interval_s`` the replica publishes a canary event per
    shared Pub/Sub connection to a reserved internal user and waits up to
    ``canary_timeout_s`` for it to arrive through its own subscription; a
    missing one turns the bridge service's health ``NOT_SERVING`` until a
    round arrives in full again. ``canary_interval_s=0`` turns it off.
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_BRIDGE_", populate_by_name=True, extra="ignore")

    backend: Literal["memory", "redis"] = Field(default="memory", description="event log and fan-out backend")
    redis_url: SecretStr = Field(
        default=SecretStr("redis://127.0.0.1:6379/0"),
        description="Redis server of backend 'redis' (a secret: it may carry the password)",
    )
    redis_key_prefix: str = Field(default="runwire", description="first part of every Redis key")
    retention_s: float = Field(default=86_400.0, gt=0, description="age after which events are trimmed")
    log_capacity: int = Field(default=10_000, ge=1, description="retained events per user")
    log_max_bytes: int = Field(
        default=4 * 1024 * 1024,
        ge=1,
        description="serialized bytes of retained events per user",
    )
    run_state_capacity: int = Field(
        default=1_000, ge=1, description="runs per user whose seq/terminal state is kept for dedup"
    )
    run_state_hold_s: float = Field(
        default=600.0, ge=0, description="a finished run's fencing state is kept at least this long"
    )
    run_state_max: int = Field(
        default=20_000, ge=1, description="hard bound on runs per user with fencing state"
    )
    subscriber_queue: int = Field(default=1_000, ge=1, description="undelivered events per subscriber")
    max_events_per_publish: int = Field(default=500, ge=1, description="events in one Publish call")
    max_payload_bytes: int = Field(default=64 * 1024, ge=2, description="size of one payload_json")
    max_subscribe_batch: int = Field(default=256, ge=1, description="events in one Subscribe response")
    redis_max_connections: int = Field(
        default=6, ge=1, le=1024, description="command connections of the Redis client (bounded pool)"
    )
    redis_pubsub_shards: int = Field(
        default=4, ge=1, le=64, description="shared Pub/Sub connections carrying every live subscription"
    )
    redis_sharded_pubsub: bool = Field(
        default=False,
        description="SSUBSCRIBE/SPUBLISH (Redis 7+, Redis Cluster) instead of SUBSCRIBE/PUBLISH",
    )
    redis_cluster: bool = Field(
        default=False,
        description="redis_url is a node of a Redis Cluster: route commands and channels by slot",
    )
    redis_live_body_max_bytes: int = Field(
        default=64 * 1024, ge=0, description="events carried in a live message (bytes; 0 = only the id)"
    )
    redis_allow_eviction: bool = Field(
        default=False, description="start even on an evicting maxmemory-policy (with a warning)"
    )

    @field_validator("redis_url")
    @classmethod
    def _redis_scheme(cls, value: SecretStr) -> SecretStr:
        try:
            scheme = urlsplit(value.get_secret_value()).scheme
        except ValueError:
            scheme = ""
        if scheme not in REDIS_SCHEMES:
            raise ValueError(f"redis_url must start with {', '.join(s + '://' for s in REDIS_SCHEMES)}")
        return value

    canary_interval_s: float = Field(
        default=5.0, ge=0, description="seconds between delivery canary rounds (Redis backend; 0 = off)"
    )
    canary_timeout_s: float = Field(
        default=2.0, gt=0, description="how long a canary may take to come back before readiness fails"
    )

    @field_validator("redis_key_prefix")
    @classmethod
    def _prefix_is_plain(cls, value: str) -> str:
        # Braces would change the Redis Cluster hash tag; spaces break CLIENT SETNAME.
        if not _PREFIX.fullmatch(value):
            raise ValueError("redis_key_prefix must be 1-64 characters of letters, digits and . _ - :")
        return value

    @model_validator(mode="after")
    def _cluster_uses_sharded_pubsub(self) -> Self:
        # Classic PUBLISH on a cluster is broadcast to every node; the bridge routes by slot only.
        if self.redis_cluster and not self.redis_sharded_pubsub:
            raise ValueError("redis_cluster requires redis_sharded_pubsub=true")
        return self

    @model_validator(mode="after")
    def _hard_bound_above_capacity(self) -> Self:
        if self.run_state_max < self.run_state_capacity:
            raise ValueError("run_state_max must be at least run_state_capacity")
        return self

    @model_validator(mode="after")
    def _one_publish_fits_a_queue(self) -> Self:
        # One Publish fans out without yielding to the subscribers, so a batch
        # larger than a subscriber queue would overflow even the fastest one.
        if self.subscriber_queue < self.max_events_per_publish:
            raise ValueError("subscriber_queue must be at least max_events_per_publish")
        return self
