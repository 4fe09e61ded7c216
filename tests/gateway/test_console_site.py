"""The browser console's HTTP side of the WebSocket port: static files, headers, development sign-in."""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest

from gateway.server import GatewayServer
from gateway.settings import GatewaySettings
from gateway.static import CONSOLE_DIR, StaticFiles
from tests.gateway.conftest import JWT_SECRET, GatewayFactory, open_ws, recv_json

CSP_DIRECTIVES = (
    "default-src 'none'",
    "script-src 'self'",
    "style-src 'self'",
    "img-src 'self' data:",
    "frame-ancestors 'none'",
    "base-uri 'none'",
    "form-action 'none'",
)


@dataclass
class Reply:
    status: int
    headers: dict[str, str]
    body: bytes

    def json(self) -> dict[str, object]:
        value = json.loads(self.body)
        assert isinstance(value, dict)
        return value


async def http(
    server: GatewayServer, path: str, *, method: str = "GET", headers: dict[str, str] | None = None
) -> Reply:
    """One raw HTTP/1.1 request, the path sent exactly as given (no client-side normalising)."""
    reader, writer = await asyncio.open_connection("127.0.0.1", server.port)
    lines = [f"{method} {path} HTTP/1.1", f"Host: 127.0.0.1:{server.port}"]
    lines += [f"{name}: {value}" for name, value in (headers or {}).items()]
    writer.write(("\r\n".join(lines) + "\r\n\r\n").encode())
    await writer.drain()
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    head, _, body = raw.partition(b"\r\n\r\n")
    status_line, *header_lines = head.decode("latin-1").split("\r\n")
    parsed = {}
    for line in header_lines:
        name, _, value = line.partition(":")
        parsed[name.strip().lower()] = value.strip()
    return Reply(int(status_line.split()[1]), parsed, body)


@pytest.fixture
async def gateway_dev(start_gateway: GatewayFactory) -> GatewayServer:
    return await start_gateway(dev_tokens=True, dev_token_ttl_s=120, dev_mode=True)


async def test_get_root_serves_the_console_with_a_restrictive_csp(gateway: GatewayServer) -> None:
    reply = await http(gateway, "/")
    assert reply.status == 200
    assert reply.headers["content-type"] == "text/html; charset=utf-8"
    assert reply.body == (CONSOLE_DIR / "index.html").read_bytes()
    csp = reply.headers["content-security-policy"]
    for directive in CSP_DIRECTIVES:
        assert directive in csp
    assert f"connect-src 'self' ws://127.0.0.1:{gateway.port} wss://127.0.0.1:{gateway.port}" in csp
    assert "unsafe" not in csp
    assert reply.headers["x-content-type-options"] == "nosniff"
    assert reply.headers["referrer-policy"] == "no-referrer"
    assert reply.headers["cache-control"] == "no-cache"
    assert reply.headers["etag"].startswith('"')


async def test_console_files_have_their_content_types_and_revalidate_with_etag(
    gateway: GatewayServer,
) -> None:
    script = await http(gateway, "/console/app.js")
    assert script.status == 200
    assert script.headers["content-type"] == "text/javascript; charset=utf-8"
    style = await http(gateway, "/console/console.css")
    assert (style.status, style.headers["content-type"]) == (200, "text/css; charset=utf-8")
    again = await http(gateway, "/console/app.js", headers={"If-None-Match": script.headers["etag"]})
    assert (again.status, again.body) == (304, b"")
    head = await http(gateway, "/console/app.js", method="HEAD")
    assert (head.status, head.body, head.headers["content-length"]) == (
        200,
        b"",
        str(len(script.body)),
    )


@pytest.mark.parametrize(
    "path",
    [
        "/console/../settings.py",
        "/console/..%2f..%2fpyproject.toml",
        "/console/%2e%2e/server.py",
        "/client/../../pyproject.toml",
        "/console//etc/passwd",
        "//etc/passwd",
        "/console/",
        "/console/index.html/",
        "/console/app.js%00.html",
        "/console/nope.js",
        "/static/app.js",
        "/gateway/server.py",
        "/index.html",
    ],
)
async def test_anything_but_a_listed_file_is_404(gateway: GatewayServer, path: str) -> None:
    reply = await http(gateway, path)
    assert reply.status == 404
    assert b"import" not in reply.body and b"<" not in reply.body


async def test_only_get_and_head_are_served(gateway: GatewayServer) -> None:
    reply = await http(gateway, "/", method="POST", headers={"Content-Length": "0"})
    assert reply.status == 405
    assert reply.headers["allow"] == "GET, HEAD"


async def test_the_development_token_endpoint_does_not_exist_without_the_setting(
    gateway: GatewayServer,
) -> None:
    for method in ("GET", "POST"):
        reply = await http(
            gateway, "/dev/token?user=alice_01", method=method, headers={"Content-Length": "0"}
        )
        assert reply.status == 404


async def test_a_development_token_opens_the_websocket_as_that_user(gateway_dev: GatewayServer) -> None:
    probe = await http(gateway_dev, "/dev/token")
    assert (probe.status, probe.json()) == (200, {"enabled": True, "ttl_s": 120.0})
    reply = await http(gateway_dev, "/dev/token?user=console_alice", method="POST")
    assert reply.status == 200
    assert reply.headers["cache-control"] == "no-store"
    body = reply.json()
    claims = jwt.decode(str(body["token"]), JWT_SECRET, algorithms=["HS256"])
    assert claims["sub"] == "console_alice"
    assert 110 <= claims["exp"] - claims["iat"] <= 120
    async with open_ws(gateway_dev, str(body["token"])) as ws:
        assert (await recv_json(ws))["user_id"] == "console_alice"


@pytest.mark.parametrize(
    ("path", "headers", "status"),
    [
        ("/dev/token", {}, 400),
        ("/dev/token?user=", {}, 400),
        ("/dev/token?user=a&user=b", {}, 400),
        ("/dev/token?user=null", {}, 400),
        ("/dev/token?user=x%0Ay", {}, 400),
        ("/dev/token?user=mallory_1", {"Origin": "http://evil.example"}, 403),
    ],
)
async def test_bad_development_sign_ins_are_refused(
    gateway_dev: GatewayServer, path: str, headers: dict[str, str], status: int
) -> None:
    reply = await http(gateway_dev, path, method="POST", headers=headers)
    assert reply.status == status
    assert "token" not in reply.json()


async def test_a_development_sign_in_with_a_body_gets_no_token(gateway_dev: GatewayServer) -> None:
    # websockets reads requests as handshakes, which have no body: it drops the connection.
    reader, writer = await asyncio.open_connection("127.0.0.1", gateway_dev.port)
    writer.write(b"POST /dev/token HTTP/1.1\r\nHost: x\r\nContent-Length: 2\r\n\r\n{}")
    raw = await asyncio.wait_for(reader.read(), 5)
    writer.close()
    assert b"token" not in raw.split(b"\r\n\r\n", 1)[-1]


def test_dev_tokens_need_an_hmac_secret(attestation_key_spec: str) -> None:
    with pytest.raises(ValueError, match="dev_tokens"):
        GatewaySettings(
            attestation_keys=attestation_key_spec,
            execution_target="x:1",
            registry_target="x:1",
            bridge_target="x:1",
            jwt_algorithms=("RS256",),
            jwt_public_key="-----BEGIN PUBLIC KEY-----",
            dev_tokens=True,
            dev_mode=True,
        )


def test_dev_tokens_are_refused_outside_development_mode(attestation_key_spec: str) -> None:
    fields: dict[str, Any] = {
        "attestation_keys": attestation_key_spec,
        "execution_target": "x:1",
        "registry_target": "x:1",
        "bridge_target": "x:1",
        "jwt_secret": "s" * 64,
        "dev_tokens": True,
    }
    with pytest.raises(ValueError, match="RUNWIRE_DEV_MODE=true"):
        GatewaySettings(**fields)
    assert GatewaySettings(**fields, dev_mode=True).dev_tokens


def test_the_file_table_skips_symlinks_odd_names_and_unknown_types(tmp_path: Path) -> None:
    (tmp_path / "ok.js").write_text("export {};")
    (tmp_path / "sub").mkdir()
    (tmp_path / "sub" / "deep.css").write_text("a{}")
    (tmp_path / ".hidden.js").write_text("x")
    (tmp_path / "notes.txt").write_text("x")
    (tmp_path / "index.test.js").write_text("x")
    (tmp_path / "link.js").symlink_to(tmp_path / "ok.js")
    (tmp_path / "linked").symlink_to(tmp_path / "sub")
    files = StaticFiles.load([("/client/", tmp_path)], index="/client/ok.js")
    assert files.paths() == {"/", "/client/ok.js", "/client/sub/deep.css"}
    assert StaticFiles.load([("/x/", tmp_path / "missing")]).paths() == frozenset()


async def test_the_client_modules_are_served_from_the_configured_folder(
    start_gateway: GatewayFactory, tmp_path: Path
) -> None:
    (tmp_path / "index.js").write_text('export { RunwireClient } from "./client.js";\n')
    server = await start_gateway(client_dir=str(tmp_path))
    reply = await http(server, "/client/index.js")
    assert (reply.status, reply.headers["content-type"]) == (200, "text/javascript; charset=utf-8")
    assert reply.body.startswith(b"export")
    assert (await http(server, "/client/client.js")).status == 404
