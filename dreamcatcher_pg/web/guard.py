"""Who may talk to the inspector: the optional token, the Host check, the security headers.

* With a token, every request must carry it: ``Authorization: Bearer T``, the
  cookie the page gets when it is opened as ``/?token=T``, or ``?token=T``.
* Without one (loopback only, see :func:`~dreamcatcher_pg.web.server.check_bind`),
  a request must name a loopback host in its ``Host`` header, so a web page
  elsewhere cannot reach the inspector by pointing a DNS name at 127.0.0.1.
* Every answer forbids framing, sniffing and any script or connection to
  another origin (the page needs none: nothing is loaded from the internet).
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Iterable
from http.cookies import SimpleCookie
from urllib.parse import parse_qs

from starlette.datastructures import Headers, MutableHeaders
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from .errors import error_response

COOKIE = "dreamcatcher_token"
SECURITY_HEADERS = {
    "Content-Security-Policy": "default-src 'none'; script-src 'self'; style-src 'self'; "
    "img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
    "X-Frame-Options": "DENY",
    "Cache-Control": "no-store",
}


def is_loopback_host(host: str | None) -> bool:
    """Does a ``Host`` header (``name[:port]``) name this machine's loopback?"""
    if not host:
        return False
    name = host.strip().lower()
    if name.startswith("["):  # [::1]:8765
        name = name[1 : name.find("]")] if "]" in name else name
    elif name.count(":") == 1:
        name = name.rsplit(":", 1)[0]
    if name in ("localhost", "localhost.") or name.endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(name).is_loopback
    except ValueError:
        return False


def _supplied_tokens(scope: Scope, headers: Headers) -> Iterable[tuple[str, str]]:
    auth = headers.get("authorization", "")
    if auth[:7].lower() == "bearer ":
        yield "header", auth[7:].strip()
    cookie = SimpleCookie()
    try:
        cookie.load(headers.get("cookie", ""))
    except Exception:  # a malformed Cookie header is not a token
        cookie = SimpleCookie()
    if COOKIE in cookie:
        yield "cookie", cookie[COOKIE].value
    for value in parse_qs(scope.get("query_string", b"").decode("latin-1")).get("token", []):
        yield "query", value


class Guard:
    """ASGI middleware: the token, the Host check, and the security headers on every answer."""

    def __init__(self, app: ASGIApp, *, token: str | None, check_host: bool) -> None:
        self.app = app
        self.token = token
        self.check_host = check_host

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.check_host and not is_loopback_host(headers.get("host")):
            refused = error_response(403, "host_not_allowed", "only loopback host names are answered")
            await refused(scope, receive, send)
            return
        set_cookie = False
        if self.token is not None:
            accepted = [
                how
                for how, value in _supplied_tokens(scope, headers)
                if hmac.compare_digest(value.encode(), self.token.encode())
            ]
            if not accepted:
                refused = error_response(401, "unauthorized", "a valid token is required (?token= or Bearer)")
                await refused(scope, receive, send)
                return
            set_cookie = accepted == ["query"]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                out = MutableHeaders(scope=message)
                for name, value in SECURITY_HEADERS.items():
                    out.setdefault(name, value)
                if set_cookie and self.token is not None:
                    out.append("Set-Cookie", f"{COOKIE}={self.token}; HttpOnly; SameSite=Strict; Path=/")
            await send(message)

        await self.app(scope, receive, send_with_headers)
