"""Optional TLS, optionally mutual, on every gRPC hop between the services.

Every process reads the same unprefixed settings (one Secret mounted at the
same path in every pod):

``RUNWIRE_TLS_CA_FILE``
    PEM bundle of the CA(s) that signed the services' certificates. Setting it
    turns TLS on: every channel to another service verifies the peer's
    certificate against it (and its name against the target's host, or
    ``RUNWIRE_TLS_SERVER_NAME``).
``RUNWIRE_TLS_CERT_FILE`` / ``RUNWIRE_TLS_KEY_FILE``
    this process's certificate chain and private key (PEM). A gRPC server
    serves them (required with TLS); with client authentication every client
    presents them too.
``RUNWIRE_TLS_CLIENT_AUTH``
    mutual TLS: servers refuse a client without a certificate the CA signed.
``RUNWIRE_TLS_SERVER_NAME``
    the name expected in servers' certificates when it is not the target's
    host (``grpc.ssl_target_name_override``), e.g. one certificate for all.

The files are read once, at start-up, by the service's lifecycle function;
a missing or unreadable file fails the start like any bad setting.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Self

import grpc
from pydantic import Field, model_validator
from pydantic_settings import BaseSettings


@dataclass(frozen=True, repr=False)
class TlsConfig:
    """The PEM material of one process, read from its files (the key never appears in a repr)."""

    ca: bytes
    cert: bytes | None
    key: bytes | None
    client_auth: bool
    server_name: str = ""

    @classmethod
    def from_environment(cls, env: Mapping[str, str]) -> TlsConfig | None:
        """What a process started with ``env`` uses (for a launcher's or a tool's own probes)."""
        ca = env.get("RUNWIRE_TLS_CA_FILE", "")
        if not ca:
            return None
        cert, key = env.get("RUNWIRE_TLS_CERT_FILE", ""), env.get("RUNWIRE_TLS_KEY_FILE", "")
        return cls(
            ca=Path(ca).read_bytes(),
            cert=Path(cert).read_bytes() if cert else None,
            key=Path(key).read_bytes() if key else None,
            client_auth=env.get("RUNWIRE_TLS_CLIENT_AUTH", "").lower() in ("1", "true", "yes", "on"),
            server_name=env.get("RUNWIRE_TLS_SERVER_NAME", ""),
        )

    def __repr__(self) -> str:
        return f"TlsConfig(client_auth={self.client_auth}, server_name={self.server_name!r})"

    def server_credentials(self) -> grpc.ServerCredentials:
        if self.cert is None or self.key is None:
            raise ValueError("a TLS server needs RUNWIRE_TLS_CERT_FILE and RUNWIRE_TLS_KEY_FILE")
        return grpc.ssl_server_credentials(
            [(self.key, self.cert)],
            root_certificates=self.ca if self.client_auth else None,
            require_client_auth=self.client_auth,
        )

    def channel_credentials(self) -> grpc.ChannelCredentials:
        # The certificate is presented whenever there is one; servers without client auth ignore it.
        return grpc.ssl_channel_credentials(
            root_certificates=self.ca, private_key=self.key, certificate_chain=self.cert
        )

    def channel_options(self) -> list[tuple[str, str | int]]:
        return [("grpc.ssl_target_name_override", self.server_name)] if self.server_name else []


class TlsSettings(BaseSettings):
    """The ``RUNWIRE_TLS_*`` settings, shared by every process (mixed into each service's settings)."""

    tls_ca_file: str = Field(
        default="", validation_alias="RUNWIRE_TLS_CA_FILE", description="CA bundle (PEM); set = TLS on"
    )
    tls_cert_file: str = Field(
        default="",
        validation_alias="RUNWIRE_TLS_CERT_FILE",
        description="this process's certificate chain (PEM)",
    )
    tls_key_file: str = Field(
        default="", validation_alias="RUNWIRE_TLS_KEY_FILE", description="this process's private key (PEM)"
    )
    tls_client_auth: bool = Field(
        default=False, validation_alias="RUNWIRE_TLS_CLIENT_AUTH", description="mutual TLS"
    )
    tls_server_name: str = Field(
        default="",
        validation_alias="RUNWIRE_TLS_SERVER_NAME",
        description="name expected in the servers' certificates, when not the target's host",
    )

    @model_validator(mode="after")
    def _tls_is_complete(self) -> Self:
        if not self.tls_ca_file:
            if self.tls_cert_file or self.tls_key_file or self.tls_client_auth or self.tls_server_name:
                raise ValueError("TLS settings need RUNWIRE_TLS_CA_FILE (it turns TLS on)")
            return self
        if bool(self.tls_cert_file) != bool(self.tls_key_file):
            raise ValueError("RUNWIRE_TLS_CERT_FILE and RUNWIRE_TLS_KEY_FILE go together")
        if self.tls_client_auth and not self.tls_cert_file:
            raise ValueError(
                "RUNWIRE_TLS_CLIENT_AUTH needs this process's RUNWIRE_TLS_CERT_FILE and _KEY_FILE"
            )
        for variable, path in (
            ("RUNWIRE_TLS_CA_FILE", self.tls_ca_file),
            ("RUNWIRE_TLS_CERT_FILE", self.tls_cert_file),
            ("RUNWIRE_TLS_KEY_FILE", self.tls_key_file),
        ):
            if path and not Path(path).is_file():
                raise ValueError(f"{variable}: no such file {path!r}")
        return self

    def tls(self) -> TlsConfig | None:
        """The files' contents, or None when TLS is off. Read them once, in the lifecycle function."""
        if not self.tls_ca_file:
            return None
        return TlsConfig(
            ca=Path(self.tls_ca_file).read_bytes(),
            cert=Path(self.tls_cert_file).read_bytes() if self.tls_cert_file else None,
            key=Path(self.tls_key_file).read_bytes() if self.tls_key_file else None,
            client_auth=self.tls_client_auth,
            server_name=self.tls_server_name,
        )
