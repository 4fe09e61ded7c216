"""Settings of the bridge process (environment prefix ``RUNWIRE_BRIDGE_``)."""

from __future__ import annotations

from typing import Literal, Self

from pydantic import Field, model_validator
from pydantic_settings import SettingsConfigDict

from runwire_common.settings import ServerSettings


class BridgeSettings(ServerSettings):
    """Where events are kept and how much of them.

    Memory is bounded per user (``log_capacity`` retained events) and per
    subscriber (``subscriber_queue`` undelivered live events); a subscriber
    that exceeds its queue is ended with ``RESOURCE_EXHAUSTED`` and resumes.
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_BRIDGE_", populate_by_name=True, extra="ignore")

    backend: Literal["memory"] = Field(
        default="memory", description="event log and fan-out backend ('redis' comes later)"
    )
    log_capacity: int = Field(default=10_000, ge=1, description="retained events per user")
    subscriber_queue: int = Field(default=1_000, ge=1, description="undelivered events per subscriber")
    max_events_per_publish: int = Field(default=500, ge=1, description="events in one Publish call")
    max_payload_bytes: int = Field(default=64 * 1024, ge=2, description="size of one payload_json")

    @model_validator(mode="after")
    def _one_publish_fits_a_queue(self) -> Self:
        # One Publish fans out without yielding to the subscribers, so a batch
        # larger than a subscriber queue would overflow even the fastest one.
        if self.subscriber_queue < self.max_events_per_publish:
            raise ValueError("subscriber_queue must be at least max_events_per_publish")
        return self
