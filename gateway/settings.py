"""Typed settings of the gateway process (environment prefix ``RUNWIRE_GATEWAY_``).

The gateway is a WebSocket server and a gRPC *client*, so it does not reuse the
gRPC server knobs of :class:`runwire_common.settings.ServerSettings`. Bad
configuration (no verification key, ``none`` in the algorithm list, a short
HMAC secret) fails at start-up, never on the first handshake.
"""

from __future__ import annotations

from typing import Annotated, Any

from pydantic import Field, SecretStr, ValidationInfo, field_validator, model_validator
from pydantic_settings import NoDecode, SettingsConfigDict

from runwire_common.attestation import ContextAttestor
from runwire_common.settings import DEV_MODE_ENV, SecretSettings, parse_attestation_keys
from runwire_common.tls import TlsSettings

HMAC_ALGORITHMS = frozenset({"HS256", "HS384", "HS512"})
PUBLIC_KEY_ALGORITHMS = frozenset(
    {"RS256", "RS384", "RS512", "PS256", "PS384", "PS512", "ES256", "ES384", "ES512", "EdDSA"}
)
# RFC 7518 §3.2: an HMAC key must be at least as long as the hash output.
MIN_HMAC_SECRET_BYTES = 32


class GatewaySettings(SecretSettings, TlsSettings):
    """Settings of one gateway process.

    Its gRPC channels to the services speak TLS when ``RUNWIRE_TLS_CA_FILE`` is
    set (:mod:`runwire_common.tls`; with client authentication it presents
    ``RUNWIRE_TLS_CERT_FILE``).
    """

    model_config = SettingsConfigDict(env_prefix="RUNWIRE_GATEWAY_", populate_by_name=True, extra="ignore")

    attestation_keys: SecretStr = Field(
        validation_alias="RUNWIRE_ATTESTATION_KEYS",
        description="KEY_ID:BASE64[:verify-only], comma-separated; the first not verify-only signs",
    )
    execution_target: str = Field(min_length=1, description="host:port of the execution service")
    registry_target: str = Field(min_length=1, description="host:port of the registry service")
    bridge_target: str = Field(
        min_length=1,
        description="the bridge's replicas: host:port, ipv4:a:p,b:q or dns:///name:port (one Fabric stream each)",
    )

    ws_host: str = "127.0.0.1"
    ws_port: int = Field(default=8080, ge=0, le=65535, description="0 picks a free port")
    ready_file: str = Field(default="", description="write {'port': N, 'pid': P} here once listening")
    log_level: str = "INFO"

    jwt_secret: SecretStr | None = Field(default=None, description="HMAC secret for HS* tokens")
    jwt_public_key: str | None = Field(default=None, description="PEM public key for RS*/PS*/ES* tokens")
    jwt_algorithms: Annotated[tuple[str, ...], NoDecode] = ("HS256",)
    jwt_audience: str | None = None
    jwt_issuer: str | None = None
    jwt_leeway_s: float = Field(default=0.0, ge=0, le=300)

    context_ttl_s: float = Field(default=300.0, gt=0, description="lifetime of a minted UserContext")
    max_connections_per_user: int = Field(
        default=5, gt=0, description="per user: across the replicas with redis_url, else per process"
    )
    max_frame_bytes: int = Field(default=65536, gt=0)
    hard_frame_factor: int = Field(
        default=16, ge=2, description="frames above max_frame_bytes * this close the connection (1009)"
    )
    rate_limit_messages: int = Field(default=30, gt=0, description="client frames per window per connection")
    rate_limit_window_s: float = Field(default=10.0, gt=0)
    user_rate_limit_messages: int | None = Field(
        default=None,
        gt=0,
        description="client frames per window per user, all connections and replicas "
        "(unset = max_connections_per_user * rate_limit_messages)",
    )
    rate_limit_close_after: int = Field(
        default=30, gt=0, description="refused frames in a row after which the connection is closed (1008)"
    )
    run_start_rate_limit: int = Field(default=60, gt=0, description="run.start requests per window per user")
    run_start_rate_window_s: float = Field(default=60.0, gt=0)
    send_timeout_s: float = Field(
        default=10.0,
        gt=0,
        description="a write the client does not take within this closes the socket (1013)",
    )
    write_limit_bytes: int = Field(
        default=64 * 1024, ge=1024, description="bytes buffered for a socket before its writer waits"
    )
    incoming_queue_frames: int = Field(
        default=8, ge=1, description="received frames buffered per socket before reading pauses"
    )
    redis_url: SecretStr | None = Field(
        default=None,
        description="Redis shared by the replicas for the per-user limits (a secret: it may carry "
        "the password); unset = per-process limits",
    )
    redis_key_prefix: str = Field(default="runwire", pattern=r"^[A-Za-z0-9._:-]{1,64}$")
    redis_cluster: bool = Field(default=False, description="redis_url is a node of a Redis Cluster")
    redis_timeout_s: float = Field(default=0.5, gt=0, description="per Redis command; past it, per process")
    redis_retry_s: float = Field(
        default=2.0, gt=0, description="per-process limits this long after a Redis failure"
    )
    redis_max_connections: int = Field(default=16, gt=0)
    connection_lease_s: float = Field(
        default=30.0,
        gt=0,
        description="a connection counts in Redis this long after its gateway last refreshed it",
    )
    max_in_flight: int = Field(default=8, gt=0, description="concurrent gRPC calls per connection")
    ping_interval_s: float = Field(default=25.0, gt=0)
    ping_timeout_s: float = Field(default=20.0, gt=0)
    compression: bool = False
    call_timeout_s: float = Field(default=5.0, gt=0, description="deadline of outbound unary calls")
    start_stream: bool = Field(
        default=True,
        description="start runs over one StartRuns stream per execution replica (false: a StartRun call each)",
    )
    metrics_port: int | None = Field(
        default=None, ge=0, le=65535, description="serve Prometheus metrics here (unset = off, 0 = free port)"
    )
    grace_period_s: float = Field(default=10.0, gt=0, description="drain time on SIGTERM")
    resubscribe_attempts: int = Field(
        default=8,
        gt=0,
        description="consecutive failed re-adds of a subscription before its sockets close (1011)",
    )
    resubscribe_backoff_s: float = Field(default=0.1, gt=0)
    resubscribe_max_backoff_s: float = Field(default=2.0, gt=0)
    default_agent: str = Field(default="assistant", min_length=1)
    subscribe_max_batch: int = Field(
        default=256,
        ge=0,
        le=65536,
        description="events per batch of a subscription (FabricAdd.max_batch); 0 = the bridge's default",
    )
    fabric_credit: int = Field(
        default=256,
        ge=1,
        le=65536,
        description="events a subscription may have in flight from the bridge before the gateway grants more",
    )
    outbox_coalesce_after: int = Field(
        default=32, ge=1, description="queued frames of a socket past which partial_result events are merged"
    )
    outbox_max_frames: int = Field(
        default=1000, ge=2, description="queued frames of a socket past which it is resumed from its cursor"
    )
    outbox_max_bytes: int = Field(
        default=4 * 1024 * 1024, ge=1024, description="queued bytes of a socket past which it is resumed"
    )
    max_start_runs_in_flight: int = Field(
        default=1024,
        gt=0,
        description="run.start calls in flight on this gateway; more are answered resource_exhausted at once",
    )
    dev_tokens: bool = Field(
        default=False,
        description=(
            "development only: POST /dev/token?user=NAME mints a token for anyone (runwire up sets it); "
            "refused unless RUNWIRE_DEV_MODE=true"
        ),
    )
    dev_token_ttl_s: float = Field(
        default=900.0, gt=0, le=86400, description="lifetime of a development token"
    )
    client_dir: str = Field(
        default="",
        description="the JS client's modules served at /client/ (empty = clients/js/src beside gateway/)",
    )

    @field_validator("attestation_keys")
    @classmethod
    def _keys_parse(cls, value: SecretStr, info: ValidationInfo) -> SecretStr:
        return parse_attestation_keys(value, info)

    @field_validator("jwt_algorithms", mode="before")
    @classmethod
    def _split_algorithms(cls, value: Any) -> Any:
        if isinstance(value, str):
            return tuple(part.strip() for part in value.split(",") if part.strip())
        return value

    @field_validator("jwt_algorithms")
    @classmethod
    def _known_algorithms(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        if not value:
            raise ValueError("at least one JWT algorithm is required")
        for alg in value:
            if alg.lower() == "none":
                raise ValueError("the 'none' JWT algorithm is never accepted")
            if alg not in HMAC_ALGORITHMS | PUBLIC_KEY_ALGORITHMS:
                raise ValueError(f"unsupported JWT algorithm {alg!r}")
        return value

    @model_validator(mode="after")
    def _keys_for_algorithms(self) -> GatewaySettings:
        uses_hmac = any(alg in HMAC_ALGORITHMS for alg in self.jwt_algorithms)
        uses_public = any(alg in PUBLIC_KEY_ALGORITHMS for alg in self.jwt_algorithms)
        if uses_hmac:
            if self.jwt_secret is None:
                raise ValueError("jwt_secret is required for HS* algorithms")
            if len(self.jwt_secret.get_secret_value().encode()) < self.min_hmac_secret_bytes():
                raise ValueError(f"jwt_secret must be at least {self.min_hmac_secret_bytes()} bytes")
        if uses_public and not self.jwt_public_key:
            raise ValueError("jwt_public_key is required for public-key algorithms")
        if self.dev_tokens and not uses_hmac:
            raise ValueError("dev_tokens needs an HS* algorithm and jwt_secret to sign with")
        if self.dev_tokens and not self.dev_mode:
            # It signs a token for any user name: never on by accident in a real deployment.
            raise ValueError(
                f"dev_tokens lets anyone sign in as any user: it needs {DEV_MODE_ENV}=true (development mode)"
            )
        return self

    def min_hmac_secret_bytes(self) -> int:
        sizes = [int(alg[2:]) // 8 for alg in self.jwt_algorithms if alg in HMAC_ALGORITHMS]
        return max([MIN_HMAC_SECRET_BYTES, *sizes])

    @property
    def effective_user_rate_limit(self) -> int:
        if self.user_rate_limit_messages is not None:
            return self.user_rate_limit_messages
        return self.max_connections_per_user * self.rate_limit_messages

    @property
    def hard_max_frame_bytes(self) -> int:
        return self.max_frame_bytes * self.hard_frame_factor

    def attestor(self) -> ContextAttestor:
        return ContextAttestor.from_spec(self.attestation_keys.get_secret_value())
