"""The previous platform's handshake: tokens in ``jwt.``/``jwt-auth.``/``bearer.`` entries, subprotocols, paths."""

from __future__ import annotations

import base64
from typing import Any

import pytest
from websockets.asyncio.client import connect
from websockets.exceptions import InvalidStatus

from gateway.auth import Credentials, decode_token, extract_credentials, selected_subprotocol
from gateway.legacy import is_legacy
from gateway.server import GatewayServer
from tests.gateway.conftest import TokenFactory, recv_json, ws_url

RAW = "eyJhbGciOiJIUzI1NiJ9.eyJzdWIiOiJ1c2VyXzEyMyJ9.c2lnbmF0dXJl"


def b64url(token: str) -> str:
    return base64.urlsafe_b64encode(token.encode()).decode().rstrip("=")


# -- parsing (pure) ------------------------------------------------------------


@pytest.mark.parametrize("prefix", ["jwt.", "jwt-auth.", "bearer.", "JWT-Auth."])
def test_a_token_entry_yields_the_raw_token(prefix: str) -> None:
    assert extract_credentials(None, ["jwt-auth", f"{prefix}{RAW}"]).token == RAW


@pytest.mark.parametrize("prefix", ["jwt.", "jwt-auth.", "bearer."])
def test_a_base64url_token_without_padding_is_decoded(prefix: str) -> None:
    encoded = b64url(RAW)
    assert "=" not in encoded and "." not in encoded
    assert extract_credentials(None, [f"{prefix}{encoded}"]).token == RAW


def test_only_jwt_entries_mark_a_client_of_the_previous_platform() -> None:
    assert extract_credentials(None, [f"jwt.{RAW}"]) == Credentials(RAW, from_jwt_entry=True)
    assert extract_credentials(None, [f"jwt-auth.{RAW}"]) == Credentials(RAW, from_jwt_entry=True)
    assert extract_credentials(None, [f"bearer.{RAW}"]) == Credentials(RAW, from_jwt_entry=False)
    assert extract_credentials(f"Bearer {RAW}", [f"jwt.{RAW}"]) == Credentials(RAW, from_jwt_entry=False)


@pytest.mark.parametrize(
    ("authorization", "entries"),
    [
        ("Bearer short", []),
        (None, ["jwt.short"]),
        (None, ["jwt-auth.123456789"]),
        (None, [f"bearer.{b64url('abc')}"]),  # decodes to 3 characters
        (None, ["jwt.", "bearer."]),
        (None, ["jwt-auth", "runwire.v1"]),
        ("Basic dXNlcjpwYXNzd29yZA==", []),
    ],
)
def test_a_token_shorter_than_ten_characters_counts_as_missing(
    authorization: str | None, entries: list[str]
) -> None:
    assert extract_credentials(authorization, entries).token is None


def test_a_short_token_falls_through_to_the_next_source() -> None:
    assert extract_credentials("Bearer null", [f"jwt.{RAW}"]).token == RAW
    assert extract_credentials(None, ["jwt.undefined", f"bearer.{RAW}"]).token == RAW


def test_the_header_comes_before_any_entry() -> None:
    assert extract_credentials("Bearer header-token-123", [f"jwt.{RAW}"]).token == "header-token-123"


def test_what_is_neither_a_jwt_nor_base64url_is_passed_on_for_the_verifier_to_refuse() -> None:
    assert decode_token("not*base64*at*all") == "not*base64*at*all"
    assert decode_token(b64url("no dots in here")) == b64url("no dots in here")
    assert decode_token("") == ""


@pytest.mark.parametrize(
    ("offered", "selected"),
    [
        (["runwire.v1", f"jwt.{RAW}"], "runwire.v1"),
        ([f"jwt.{RAW}", "runwire.v1"], "runwire.v1"),
        (["jwt-auth", f"jwt.{RAW}"], "jwt-auth"),
        ([f"jwt-auth.{RAW}"], "jwt-auth"),
        (["jwt"], "jwt-auth"),
        (["jwt-auth"], "jwt-auth"),
        ([f"bearer.{RAW}"], "bearer"),
        (["bearer", f"bearer.{RAW}"], "bearer"),
        (["graphql-ws"], None),
        ([], None),
    ],
)
def test_the_selected_subprotocol(offered: list[str], selected: str | None) -> None:
    assert selected_subprotocol(offered) == selected


@pytest.mark.parametrize(
    ("kwargs", "legacy"),
    [
        ({"path": "/ws", "profile": "", "from_jwt_entry": True, "offered": ["jwt-auth"]}, True),
        ({"path": "/ws/chat", "profile": "", "from_jwt_entry": False, "offered": []}, True),
        ({"path": "/ws", "profile": "legacy", "from_jwt_entry": False, "offered": []}, True),
        ({"path": "/ws", "profile": "", "from_jwt_entry": False, "offered": ["bearer"]}, False),
        ({"path": "/ws/chat", "profile": "legacy", "from_jwt_entry": True, "offered": ["runwire.v1"]}, False),
    ],
)
def test_which_connections_are_legacy(kwargs: dict[str, Any], legacy: bool) -> None:
    assert is_legacy(**kwargs) is legacy


# -- real handshakes -------------------------------------------------------------


async def test_jwt_auth_with_a_base64url_token_opens_and_selects_jwt_auth(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    token = make_token("user_legacy_0123456789")
    async with connect(ws_url(gateway), subprotocols=["jwt-auth", f"jwt.{b64url(token)}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "jwt-auth"
        assert ws.response is not None
        assert ws.response.headers["Sec-WebSocket-Protocol"] == "jwt-auth"
        assert (await recv_json(ws))["user_id"] == "user_legacy_0123456789"


async def test_a_raw_token_in_a_jwt_auth_entry_opens_on_the_chat_path(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    token = make_token("user_legacy_0123456789")
    async with connect(ws_url(gateway, "/ws/chat"), subprotocols=["jwt-auth", f"jwt-auth.{token}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "jwt-auth"
        assert (await recv_json(ws))["type"] == "connected"


async def test_a_bearer_entry_selects_bearer_when_runwire_v1_is_not_offered(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    token = make_token("user_legacy_0123456789")
    async with connect(ws_url(gateway), subprotocols=["bearer", f"bearer.{b64url(token)}"]) as ws:  # type: ignore[list-item]
        assert ws.subprotocol == "bearer"
        assert (await recv_json(ws))["user_id"] == "user_legacy_0123456789"


@pytest.mark.parametrize(
    ("entries", "reason"),
    [
        (["jwt-auth", "jwt.short"], "missing bearer token"),
        (["jwt-auth"], "missing bearer token"),
        (["jwt-auth", "jwt.not-a-jwt-at-all"], "malformed token"),
        (["jwt-auth", f"jwt.{b64url('not-a-jwt-at-all')}"], "malformed token"),
        (["jwt-auth", f"jwt.{b64url('aaaaaaaa.bbbbbbbbb.ccccccc')}"], "malformed token"),
    ],
)
async def test_a_missing_or_bad_token_in_a_legacy_entry_is_refused_with_401(
    gateway: GatewayServer, entries: list[str], reason: str
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(ws_url(gateway), subprotocols=entries):  # type: ignore[arg-type]
            pass
    assert info.value.response.status_code == 401
    assert info.value.response.body is not None
    assert info.value.response.body.decode().strip() == reason


async def test_a_token_signed_with_another_key_is_refused_on_the_chat_path(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    forged = make_token("user_legacy_0123456789", secret="another-secret-" + "x" * 40)
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            ws_url(gateway, "/ws/chat"), additional_headers={"Authorization": f"Bearer {forged}"}
        ):
            pass
    assert info.value.response.status_code == 401


async def test_an_unknown_profile_is_refused_with_400(
    gateway: GatewayServer, make_token: TokenFactory
) -> None:
    with pytest.raises(InvalidStatus) as info:
        async with connect(
            ws_url(gateway, "/ws?profile=old"),
            additional_headers={"Authorization": f"Bearer {make_token()}"},
        ):
            pass
    assert info.value.response.status_code == 400
