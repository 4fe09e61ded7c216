"""Typed settings shared by every service process.

Each service subclasses :class:`ServerSettings` with its own environment
prefix (``RUNWIRE_REGISTRY_``, ``RUNWIRE_BRIDGE_`` …). Settings that every
service must agree on, such as the attestation keys, are read from one
unprefixed variable. Bad configuration fails at start-up, never later.
"""

from __future__ import annotations

from pydantic import Field, SecretStr, field_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runwire_common.attestation import ContextAttestor


class ServerSettings(BaseSettings):
    """Settings of one gRPC service process."""

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_", populate_by_name=True, extra="ignore")

    host: str = "127.0.0.1"
    port: int = Field(default=0, ge=0, le=65535, description="0 picks a free port")
    grace_period_s: float = Field(default=10.0, gt=0, description="drain time on SIGTERM")
    reflection: bool = False
    max_connection_age_s: float = Field(default=300.0, gt=0)
    max_connection_age_grace_s: float = Field(default=30.0, gt=0)
    keepalive_time_s: float = Field(default=30.0, gt=0)
    keepalive_timeout_s: float = Field(default=10.0, gt=0)
    max_message_bytes: int = Field(default=4 * 1024 * 1024, gt=0)
    ready_file: str = Field(default="", description="write {'port': N} here once serving")
    log_level: str = "INFO"
    attestation_keys: SecretStr = Field(
        validation_alias="RUNWIRE_ATTESTATION_KEYS",
        description="KEY_ID:BASE64[:verify-only], comma-separated; the first not verify-only signs",
    )
    call_timeout_s: float = Field(default=5.0, gt=0, description="deadline of outbound calls")
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics here (unset = off, 0 = free port)"
    )

    @field_validator("attestation_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr) -> SecretStr:
        ContextAttestor.from_spec(value.get_secret_value())
        return value

    def attestor(self) -> ContextAttestor:
        return ContextAttestor.from_spec(self.attestation_keys.get_secret_value())
