"""Typed settings of the execution service (``RUNWIRE_EXECUTION_*``)."""

from __future__ import annotations

from typing import Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from execution_service.llm.settings import LlmSettings
from runwire_common.ids import new_id
from runwire_common.settings import ServerSettings


def _new_executor_id() -> str:
    return new_id("exec")


class ExecutionSettings(ServerSettings):
    """Settings of one execution replica.

    ``registry_target`` and ``bridge_target`` are required (``host:port`` or
    ``dns:///name:port``; the bridge's also ``ipv4:a:p,b:q``: events are
    published over one stream per bridge replica, see
    :mod:`execution_service.publisher`). ``executor_id`` identifies this replica in the run
    records; it is generated per process unless configured. ``llm`` holds the
    ``llm`` agent's endpoint and limits (``OPENAI_*``, ``RUNWIRE_LLM_*``).
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_EXECUTION_", populate_by_name=True, extra="ignore")

    registry_target: str = Field(min_length=1, description="address of the registry service")
    bridge_target: str = Field(min_length=1, description="address of the bridge service (its replicas)")
    executor_id: str = Field(default_factory=_new_executor_id, min_length=1)
    default_timeout_s: float = Field(default=300.0, gt=0, description="execution timeout of a run")
    tool_timeout_s: float = Field(default=10.0, gt=0, description="timeout of one tool call")
    heartbeat_interval_s: float = Field(default=2.0, gt=0, description="heartbeat of each live run")
    cancel_grace_s: float = Field(
        default=5.0, gt=0, description="time an agent gets to stop before it is cancelled hard"
    )
    context_ttl_s: float = Field(
        default=120.0,
        gt=0,
        description="lifetime of a run's attested context (minted once, again when a quarter is left)",
    )
    event_queue_size: int = Field(default=1000, gt=0, description="events pending per run")
    publish_batch_size: int = Field(default=100, gt=0, description="events per published batch at most")
    max_payload_bytes: int = Field(
        default=64 * 1024, ge=1024, description="payload size the bridge accepts; larger ones are shortened"
    )
    publish_retry_s: float = Field(
        default=20.0,
        gt=0,
        description="how long a batch of events is retried while the bridge is unavailable (restarts)",
    )
    registry_retry_s: float = Field(
        default=10.0, gt=0, description="how long recording a run's end is retried while the registry is down"
    )
    registry_write_stream: bool = Field(
        default=True,
        description=(
            "send runs' CreateRun, TransitionRun and Heartbeat over one WriteRuns stream (false: a unary call each, "
            "e.g. behind a proxy that cuts long-lived streams)"
        ),
    )
    queue_poll_initial_s: float = Field(
        default=0.2, gt=0, description="first wait of a queued (enqueue) run before it asks to start again"
    )
    queue_poll_max_s: float = Field(
        default=1.0, gt=0, description="longest wait of a queued run between two attempts to start"
    )
    input_timeout_s: float = Field(
        default=600.0, gt=0, description="how long a run waits for its user's answer before it times out"
    )
    input_poll_s: float = Field(
        default=0.5,
        gt=0,
        description="how often a waiting run looks for an answer given through another replica",
    )
    drain_stop_s: float = Field(
        default=1.0,
        gt=0,
        description="on shutdown, runs still going this long before the grace period ends are ended dead",
    )
    llm: LlmSettings = Field(default_factory=LlmSettings, description="the llm agent's model endpoint")

    @model_validator(mode="after")
    def _drain_fits(self) -> Self:
        if self.drain_stop_s >= self.grace_period_s:
            raise ValueError("drain_stop_s must be shorter than grace_period_s")
        if self.queue_poll_initial_s > self.queue_poll_max_s:
            raise ValueError("queue_poll_initial_s must not exceed queue_poll_max_s")
        return self
