"""Typed settings shared by every service process.

Each service subclasses :class:`ServerSettings` with its own environment
prefix (``RUNWIRE_REGISTRY_``, ``RUNWIRE_BRIDGE_`` …). Settings that every
service must agree on, such as the attestation keys, are read from one
unprefixed variable. Bad configuration fails at start-up, never later.

Secrets are typed :class:`~pydantic.SecretStr` (the attestation keys, the
gateway's JWT secret, the registry's database URL and the bridge's Redis URL,
which may carry passwords), so they are masked in every ``repr``, log and
dump; :func:`describe_invalid_settings` reports a failed validation without
the values pydantic would echo. A secret the repository itself publishes (a
``REPLACE_ME`` placeholder of ``k8s/base`` or a ``dev-only`` value of the
dev overlay) is refused unless the process runs in development mode
(``RUNWIRE_DEV_MODE=true``, which ``runwire up`` and the dev overlay set).
"""

from __future__ import annotations

import base64
import binascii
from collections.abc import Iterator
from typing import Any, Self
from urllib.parse import urlsplit

from pydantic import Field, SecretStr, ValidationError, ValidationInfo, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from runwire_common.attestation import ContextAttestor
from runwire_common.errors import InvalidArgument
from runwire_common.redaction import REDACTED, redact_text
from runwire_common.tls import TlsSettings

DEV_MODE_ENV = "RUNWIRE_DEV_MODE"
# What the repository's published secrets contain: the base Secret's placeholders and the
# dev overlay's values (in the text, or inside an attestation key's decoded material).
KNOWN_SECRET_MARKERS = ("REPLACE_ME", "dev-only")
# Inputs shorter than this are not scrubbed from messages (they would mask words, not secrets).
MIN_SCRUBBED_LENGTH = 4


def is_known_development_secret(value: str) -> bool:
    """Is ``value`` one of the secrets published in this repository (or built from one)?"""
    if any(marker in value for marker in KNOWN_SECRET_MARKERS):
        return True
    for item in value.split(","):  # an attestation key set: KEY_ID:BASE64[:flags],...
        _, _, rest = item.strip().partition(":")
        encoded = rest.partition(":")[0].strip()
        try:
            material = base64.urlsafe_b64decode(encoded + "=" * (-len(encoded) % 4))
        except (ValueError, binascii.Error):
            continue
        if any(marker.encode() in material for marker in KNOWN_SECRET_MARKERS):
            return True
    return False


def known_secret_message(name: str) -> str:
    return (
        f"{name} is a known development value (a REPLACE_ME placeholder of k8s/base or a dev-only "
        f"value of the dev overlay, public in the repository): configure a real secret, or set "
        f"{DEV_MODE_ENV}=true to run in development mode"
    )


class SecretSettings(BaseSettings):
    """Development mode, and the refusal of known development secrets outside it.

    Every ``SecretStr`` field of a subclass is checked once the model is valid.
    ``dev_mode`` is read from the unprefixed ``RUNWIRE_DEV_MODE`` by every process.
    """

    dev_mode: bool = Field(
        default=False,
        validation_alias=DEV_MODE_ENV,
        description="development mode: accept the repository's known development secrets",
    )

    @model_validator(mode="after")
    def _no_known_development_secrets(self) -> Self:
        if self.dev_mode:
            return self
        for name in type(self).model_fields:
            value = getattr(self, name)
            if isinstance(value, SecretStr) and is_known_development_secret(value.get_secret_value()):
                raise ValueError(known_secret_message(name))
        return self


def refuse_known_secret(name: str, value: SecretStr, info: ValidationInfo) -> None:
    """For a field validator that must answer before parsing ``value`` (placeholders do not parse)."""
    if not info.data.get("dev_mode", False) and is_known_development_secret(value.get_secret_value()):
        raise ValueError(known_secret_message(name))


def parse_attestation_keys(value: SecretStr, info: ValidationInfo) -> SecretStr:
    """The shared field validator of ``attestation_keys``: known values refused, then parsed."""
    refuse_known_secret("attestation_keys", value, info)
    try:
        ContextAttestor.from_spec(value.get_secret_value())
    except InvalidArgument as exc:  # its messages name key ids, never key material
        raise ValueError(exc.message) from None
    return value


def _strings(value: Any) -> Iterator[str]:
    if isinstance(value, SecretStr):
        value = value.get_secret_value()
    if isinstance(value, str):
        yield value
        try:
            password = urlsplit(value).password
        except ValueError:
            password = None
        if password:
            yield password
    elif isinstance(value, dict):
        for item in value.values():
            yield from _strings(item)
    elif isinstance(value, list | tuple):
        for item in value:
            yield from _strings(item)


def describe_invalid_settings(exc: ValidationError) -> str:
    """What is wrong with the settings, one line per error, without the values given.

    pydantic's own text repeats every input (``input_value=…``, for an error
    of the whole model all of them), and some messages quote the input: the
    inputs are left out, and any of them a message quotes is masked, as is
    anything shaped like a secret (a URL's password, a bearer token …).
    """
    errors = exc.errors(include_url=False)
    given = sorted(
        {
            text
            for error in errors
            for text in _strings(error.get("input"))
            if len(text) >= MIN_SCRUBBED_LENGTH
        },
        key=len,
        reverse=True,
    )
    lines = [f"{exc.error_count()} invalid setting(s) of {exc.title}:"]
    for error in errors:
        where = ".".join(str(part) for part in error["loc"]) or "settings"
        message = str(error["msg"])
        for text in given:
            message = message.replace(text, REDACTED)
        lines.append(f"  {where}: {redact_text(message)}")
    return "\n".join(lines)


class ServerSettings(SecretSettings, TlsSettings):
    """Settings of one gRPC service process.

    TLS (``RUNWIRE_TLS_*``, :mod:`runwire_common.tls`) covers the server and
    every channel the service opens to the others. ``health_port`` adds a
    plaintext port that serves only ``grpc.health.v1``, for probes that cannot
    speak TLS (the kubelet's ``grpc`` probe).
    """

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
    health_port: int | None = Field(
        default=None,
        ge=0,
        le=65535,
        description="plaintext port serving only grpc.health.v1, for probes without TLS (unset = none)",
    )

    @field_validator("attestation_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        return parse_attestation_keys(value, info)

    @model_validator(mode="after")
    def _tls_server_has_a_certificate(self) -> Self:
        if self.tls_ca_file and not self.tls_cert_file:
            raise ValueError("a gRPC server with TLS needs RUNWIRE_TLS_CERT_FILE and RUNWIRE_TLS_KEY_FILE")
        return self

    def attestor(self) -> ContextAttestor:
        return ContextAttestor.from_spec(self.attestation_keys.get_secret_value())
