"""The handshake: authentication, subprotocols, paths, health and per-user limits."""

from __future__ import annotations

import hashlib
import hmac
import http
import json
import time
import urllib.request
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from tests.gateway.conftest import (
    JWT_SECRET,
    UNUSED_TARGET,
    GatewayFactory,
    TokenFactory,
    open_ws,
    recv_json,
    request,
    ws_url,
)


async def refused_status(server: GatewayServer, token: str | None, **kwargs: Any) -> tuple[int, str]:
    with pytest.raises(InvalidStatus) as info:
        async with open_ws(server, token, **kwargs):
            pass
    response = info.value.response
    return response.status_code, response.body.decode() if response.body else ""


def unsigned_token(sub: str) -> str:
    header = jwt.utils.base64url_encode(json.dumps({"alg": "none", "typ": "JWT"}).encode()).decode()
    body = jwt.utils.base64url_encode(
        json.dumps({"sub": sub, "exp": int(time.time()) + 600}).encode()
    ).decode()
    return f"{header}.{body}."


async def test_a_handshake_without_a_token_is_refused_with_401(gateway: GatewayServer) -> None:
    status, body = await refused_status(gateway, None)
    assert status == 401
    assert "missing" in body


async def test_an_expired_token_is_refused_with_401(gateway: GatewayServer, make_token: TokenFactory) -> None:
    status, body = await refused_status(gateway, make_token(ttl_s=-60))
    assert (status, body.strip()) == (401, "token expired")


async def test_a_token_with_a_wrong_signature_is_refused_with_401(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    status, body = await refused_status(gateway, make_token(secret="another-secret-" + "x" * 40))
    assert status == 401
    assert "signature" in body


async def test_an_alg_none_token_is_refused_with_401(gateway: GatewayServer) -> None:
    status, body = await refused_status(gateway, unsigned_token("user_alice_0123456789"))
    assert status == 401
    assert "algorithm" in body


async def test_a_token_without_exp_is_refused_with_401(gateway: GatewayServer) -> None:
    token = jwt.encode({"sub": "user_alice_0123456789"}, JWT_SECRET, algorithm="HS256")
    status, body = await refused_status(gateway, token)
    assert status == 401
    assert "exp" in body


async def test_a_token_with_a_placeholder_subject_is_refused_with_401(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    status, _ = await refused_status(gateway, make_token("null"))
    assert status == 401


async def test_a_garbage_token_is_refused_with_401(gateway: GatewayServer) -> None:
    # 10 characters or more: a shorter token counts as missing (the previous platform's rule).
    status, body = await refused_status(gateway, "not-a-jwt-at-all")
    assert (status, body.strip()) == (401, "malformed token")


async def test_a_token_for_the_wrong_audience_is_refused_when_an_audience_is_configured(
    start_gateway: GatewayFactory, make_token: TokenFactory
) -> None:
    server = await start_gateway(jwt_audience="runwire", jwt_issuer="https://auth.example.com")
    iss = "https://auth.example.com"
    status, body = await refused_status(server, make_token(aud="someone-else", iss=iss))
    assert (status, body.strip()) == (401, "token audience not accepted")
    status, body = await refused_status(server, make_token(aud="runwire", iss="https://evil.example.com"))
    assert (status, body.strip()) == (401, "token issuer not accepted")
    async with open_ws(server, make_token(aud="runwire", iss=iss)) as ws:
        assert (await recv_json(ws))["type"] == "connected"


async def test_a_valid_header_token_opens_the_connection_and_says_connected(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    async with open_ws(gateway, make_token("user_alice_0123456789")) as ws:
        hello = await recv_json(ws)
        assert hello["type"] == "connected"
        assert hello["user_id"] == "user_alice_0123456789"
        assert hello["connection_id"].startswith("conn_")
        assert hello["server_time"].endswith("Z")


async def test_subprotocol_auth_selects_runwire_v1_and_never_echoes_the_bearer_entry(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    token = make_token("user_browser_0123456789")
    async with connect(ws_url(gateway), subprotocols=["runwire.v1", f"bearer.{token}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "runwire.v1"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "runwire.v1"
        hello = await recv_json(ws)
        assert hello["user_id"] == "user_browser_0123456789"


async def test_a_bad_subprotocol_token_is_refused_with_401(gateway: GatewayServer) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(gateway), subprotocols=["runwire.v1", "bearer.garbage"]):  # type: ignore[list-item]
            pass
    assert info.value.response.status_code == 401


async def test_the_authorization_header_takes_precedence_over_the_subprotocol(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    header_token = make_token("user_header_0123456789")
    proto_token = make_token("user_proto_0123456789")
    async with connect(
        ws_url(gateway),
        additional_headers={"Authorization": f"Bearer {header_token}"},
        subprotocols=["runwire.v1", f"bearer.{proto_token}"],  # type: ignore[list-item]
    ) as ws:
        assert (await recv_json(ws))["user_id"] == "user_header_0123456789"


async def test_rs256_tokens_verify_with_the_configured_public_key(
    start_gateway: GatewayFactory,
) -> None:
    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = (
        private.public_key()
        .public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        .decode()
    )
    server = await start_gateway(jwt_algorithms="RS256", jwt_secret=None, jwt_public_key=public_pem)
    token = jwt.encode(
        {"sub": "user_rsa_0123456789", "exp": int(time.time()) + 60}, private, algorithm="RS256"
    )
    async with open_ws(server, token) as ws:
        assert (await recv_json(ws))["user_id"] == "user_rsa_0123456789"
    # An HS256 token whose MAC key is the public key text must not pass (key confusion).
    status, body = await refused_status(server, hs256_signed_with(public_pem))
    assert (status, body.strip()) == (401, "token algorithm not allowed")


def hs256_signed_with(secret: str) -> str:
    def b64(data: bytes) -> str:
        return jwt.utils.base64url_encode(data).decode()

    header = b64(json.dumps({"alg": "HS256", "typ": "JWT"}).encode())
    body = b64(json.dumps({"sub": "user_rsa_0123456789", "exp": int(time.time()) + 60}).encode())
    mac = hmac.new(secret.encode(), f"{header}.{body}".encode(), hashlib.sha256).digest()
    return f"{header}.{body}.{b64(mac)}"


def test_settings_never_accept_the_none_algorithm(attestation_key_spec: str) -> None:
    with pytest.raises(ValueError, match="none"):
        GatewaySettings(
            attestation_keys=attestation_key_spec,
            execution_target=UNUSED_TARGET,
            registry_target=UNUSED_TARGET,
            bridge_target=UNUSED_TARGET,
            jwt_secret=JWT_SECRET,
            jwt_algorithms="HS256,none",
        )


def test_settings_refuse_a_short_hmac_secret(attestation_key_spec: str) -> None:
    with pytest.raises(ValueError, match="at least 32 bytes"):
        GatewaySettings(
            attestation_keys=attestation_key_spec,
            execution_target=UNUSED_TARGET,
            registry_target=UNUSED_TARGET,
            bridge_target=UNUSED_TARGET,
            jwt_secret="short",
        )


def _http_get(url: str) -> tuple[int, str, str]:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return response.status, response.headers["Content-Type"], response.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.headers["Content-Type"], exc.read().decode()


async def test_healthz_answers_200_with_json_status_ok(gateway: GatewayServer) -> None:
    import asyncio

    status, content_type, body = await asyncio.to_thread(
        _http_get, f"http://127.0.0.1:{gateway.port}/healthz"
    )
    assert (status, content_type, json.loads(body)) == (200, "application/json", {"status": "ok"})


async def test_paths_other_than_ws_answer_404(gateway: GatewayServer, make_token: TokenFactory) -> None:
    status, _ = await refused_status(gateway, make_token(), path="/other")
    assert status == http.HTTPStatus.NOT_FOUND


async def test_the_sixth_connection_of_a_user_is_refused_with_429_while_another_user_connects(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    from contextlib import AsyncExitStack

    alice = make_token("user_alice_0123456789")
    async with AsyncExitStack() as stack:
        for _ in range(5):
            ws = await stack.enter_async_context(open_ws(gateway, alice))
            assert (await recv_json(ws))["type"] == "connected"
        status, body = await refused_status(gateway, alice)
        assert status == 429
        assert "too many connections" in body and "5" in body
        async with open_ws(gateway, make_token("user_bob_0123456789")) as bob:
            assert (await recv_json(bob))["user_id"] == "user_bob_0123456789"
        assert gateway.connections_of("user_alice_0123456789") == 5
        await ws.close()
    async with open_ws(gateway, alice) as ws:
        assert (await request(ws, {"type": "ping"}))["type"] in ("connected", "pong")
