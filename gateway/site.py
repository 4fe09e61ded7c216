"""The plain-HTTP side of the WebSocket port: the browser console and development sign-in.

``GET /`` and the files of :mod:`gateway.static` (``/console/…``, ``/client/…``) are
answered with a restrictive Content-Security-Policy; ``/dev/token`` exists only when
development tokens are on (:mod:`gateway.devtokens`). Any other path is not this
module's (:meth:`ConsoleSite.respond` returns ``None``) and the server answers 404.

websockets parses requests for a handshake and refuses a request body, so the
development sign-in is ``POST /dev/token?user=NAME`` with an empty body.
"""

from __future__ import annotations

import email.utils
import http
import json
import re
from collections.abc import Mapping
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import parse_qs, urlsplit

from websockets.datastructures import Headers
from websockets.http11 import Request, Response

from gateway.devtokens import DevTokens
from gateway.static import CONSOLE_DIR, DEFAULT_CLIENT_DIR, StaticFiles

DEV_TOKEN_PATH = "/dev/token"
CONSOLE_PREFIX = "/console/"
CLIENT_PREFIX = "/client/"
_HOST = re.compile(r"^[A-Za-z0-9.-]{1,253}(:[0-9]{1,5})?$|^\[[0-9A-Fa-f:.]{2,45}\](:[0-9]{1,5})?$")

SECURITY_HEADERS: Mapping[str, str] = MappingProxyType(
    {
        "X-Content-Type-Options": "nosniff",
        "Referrer-Policy": "no-referrer",
        "X-Frame-Options": "DENY",
        "Cross-Origin-Opener-Policy": "same-origin",
        "Cross-Origin-Resource-Policy": "same-origin",
    }
)


def content_security_policy(host: str | None) -> str:
    """Scripts, styles and images from this origin only; sockets to this host only."""
    # 'self' covers ws:/wss: to the page's own host in CSP Level 3; the explicit sources
    # are for browsers that predate it. A Host that is not a plain host[:port] adds nothing.
    sockets = f" ws://{host} wss://{host}" if host and _HOST.match(host) else ""
    return (
        "default-src 'none'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
        f"connect-src 'self'{sockets}; frame-ancestors 'none'; base-uri 'none'; form-action 'none'"
    )


class ConsoleSite:
    """Answers the console's HTTP requests; immutable after construction."""

    __slots__ = ("_dev", "_files")

    def __init__(self, files: StaticFiles, *, dev_tokens: DevTokens | None = None) -> None:
        self._files = files
        self._dev = dev_tokens

    @classmethod
    def load(cls, *, client_dir: str = "", dev_tokens: DevTokens | None = None) -> ConsoleSite:
        files = StaticFiles.load(
            (
                (CONSOLE_PREFIX, CONSOLE_DIR),
                (CLIENT_PREFIX, Path(client_dir) if client_dir else DEFAULT_CLIENT_DIR),
            ),
            index=CONSOLE_PREFIX + "index.html",
        )
        return cls(files, dev_tokens=dev_tokens)

    @property
    def files(self) -> StaticFiles:
        return self._files

    def respond(self, request: Request) -> Response | None:
        """The response to a request for one of the site's paths, else ``None``."""
        url = urlsplit(request.path)
        if url.path == DEV_TOKEN_PATH and self._dev is not None:
            return self._dev_token(request, url.query)
        file = self._files.get(url.path)
        if file is None:
            return None
        if request.method not in ("GET", "HEAD"):
            return _response(request, http.HTTPStatus.METHOD_NOT_ALLOWED, b"", extra={"Allow": "GET, HEAD"})
        cache = {"Cache-Control": "no-cache", "ETag": file.etag}
        if file.etag in _etags(request.headers.get("If-None-Match")):
            return _response(request, http.HTTPStatus.NOT_MODIFIED, b"", extra=cache)
        return _response(request, http.HTTPStatus.OK, file.body, content_type=file.content_type, extra=cache)

    def _dev_token(self, request: Request, query: str) -> Response:
        assert self._dev is not None
        if request.method == "GET":  # lets the console offer the user-name sign-in
            return _json(request, http.HTTPStatus.OK, {"enabled": True, "ttl_s": self._dev.ttl_s})
        if request.method != "POST":
            return _response(request, http.HTTPStatus.METHOD_NOT_ALLOWED, b"", extra={"Allow": "GET, POST"})
        origin = request.headers.get("Origin")
        host = request.headers.get("Host")
        if origin is not None and origin not in (f"http://{host}", f"https://{host}"):
            return _json(request, http.HTTPStatus.FORBIDDEN, {"error": "cross-origin request refused"})
        users = parse_qs(query, keep_blank_values=True).get("user", [])
        if len(users) != 1:
            return _json(request, http.HTTPStatus.BAD_REQUEST, {"error": "give exactly one ?user=NAME"})
        try:
            minted = self._dev.mint(users[0])
        except ValueError as exc:
            return _json(request, http.HTTPStatus.BAD_REQUEST, {"error": str(exc)})
        body = {"token": minted.token, "user_id": minted.user_id, "expires_at": minted.expires_at}
        return _json(request, http.HTTPStatus.OK, body)


def _etags(header: str | None) -> frozenset[str]:
    if not header:
        return frozenset()
    return frozenset(part.strip().removeprefix("W/") for part in header.split(","))


def _json(request: Request, status: http.HTTPStatus, body: dict[str, Any]) -> Response:
    return _response(
        request,
        status,
        json.dumps(body).encode(),
        content_type="application/json",
        extra={"Cache-Control": "no-store"},
    )


def _response(
    request: Request,
    status: http.HTTPStatus,
    body: bytes,
    *,
    content_type: str | None = None,
    extra: Mapping[str, str] = MappingProxyType({}),
) -> Response:
    headers = Headers(
        [
            ("Date", email.utils.formatdate(usegmt=True)),
            ("Connection", "close"),
            ("Content-Length", str(len(body))),
        ]
    )
    if content_type is not None:
        headers["Content-Type"] = content_type
    headers["Content-Security-Policy"] = content_security_policy(request.headers.get("Host"))
    for name, value in (*SECURITY_HEADERS.items(), *extra.items()):
        headers[name] = value
    send = b"" if request.method == "HEAD" or status == http.HTTPStatus.NOT_MODIFIED else body
    return Response(status.value, status.phrase, headers, send)
