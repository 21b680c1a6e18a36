"""Serving the inspector with uvicorn: the bind rules, the socket, the URL.

:func:`check_bind` refuses a non-loopback address without a token.
:func:`serve` binds the socket first (so port 0 picks a free port and the URL
is known before the first request), calls ``on_ready(url)`` once the app has
started, and returns when ``stop`` is set or, in the main thread, on SIGINT or
SIGTERM (a graceful shutdown: open event streams are closed).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import signal
import socket
from collections.abc import Callable, Iterator
from urllib.parse import quote

import uvicorn

from ..errors import DreamcatcherError
from .app import WebConfig, create_app

log = logging.getLogger(__name__)

DEFAULT_ADDRESS = "127.0.0.1"
DEFAULT_PORT = 8765


class BindRefusedError(DreamcatcherError):
    """The inspector will not listen there (a non-loopback address without a token, or a bad address)."""


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


def check_bind(address: str, token: str | None) -> None:
    """Refuse to listen beyond this machine without a token."""
    if not is_loopback(address) and token is None:
        raise BindRefusedError(
            f"refusing to serve on {address}: only a loopback address (127.0.0.1, ::1) may be served "
            "without a token; pass --token (or set DREAMCATCHER_WEB_TOKEN)"
        )


def bind_socket(address: str, port: int) -> socket.socket:
    try:
        infos = socket.getaddrinfo(address, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    except socket.gaierror as exc:
        raise BindRefusedError(f"cannot listen on {address!r}: {exc}") from exc
    family, kind, proto, _, sockaddr = infos[0]
    # the protocol matters: asyncio sets TCP_NODELAY only on sockets whose proto is IPPROTO_TCP,
    # and without it every response written in two parts waits ~40 ms for the client's delayed ACK
    sock = socket.socket(family, kind, proto)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind(sockaddr)
    except OSError as exc:
        sock.close()
        raise BindRefusedError(f"cannot listen on {address} port {port}: {exc.strerror}") from exc
    sock.listen(128)
    sock.setblocking(False)
    return sock


class _Server(uvicorn.Server):
    """uvicorn without its own signal handling (it re-raises the signal after shutdown): ``serve``
    turns SIGINT and SIGTERM into a graceful stop and returns normally."""

    @contextlib.contextmanager
    def capture_signals(self) -> Iterator[None]:
        yield


def url_of(sock: socket.socket, token: str | None) -> str:
    host, port = sock.getsockname()[:2]
    shown = f"[{host}]" if ":" in host else host
    return f"http://{shown}:{port}/" + (f"?token={quote(token, safe='')}" if token else "")


async def serve(
    config: WebConfig,
    address: str = DEFAULT_ADDRESS,
    port: int = DEFAULT_PORT,
    *,
    on_ready: Callable[[str], None] | None = None,
    stop: asyncio.Event | None = None,
) -> None:
    """Serve the inspector until ``stop`` is set or the process is interrupted."""
    check_bind(address, config.token)
    sock = bind_socket(address, port)
    app = create_app(config)
    server = _Server(
        uvicorn.Config(
            app,
            log_config=None,
            access_log=False,
            lifespan="on",
            timeout_graceful_shutdown=2,
            server_header=False,
        )
    )
    url = url_of(sock, config.token)
    stop = stop or asyncio.Event()
    loop = asyncio.get_running_loop()
    handled: list[signal.Signals] = []
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread
            loop.add_signal_handler(sig, stop.set)
            handled.append(sig)

    async def announce() -> None:
        while not server.started:
            if server.should_exit:
                return
            await asyncio.sleep(0.02)
        log.info("inspector at %s", url)
        if on_ready is not None:
            on_ready(url)

    async def watch_stop() -> None:
        await stop.wait()
        server.should_exit = True

    helpers = [asyncio.create_task(announce()), asyncio.create_task(watch_stop())]
    try:
        await server.serve(sockets=[sock])
    finally:
        for task in helpers:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task
        for sig in handled:
            loop.remove_signal_handler(sig)
        sock.close()
    if not server.started and not stop.is_set():
        raise DreamcatcherError("the inspector did not start (see the log above)")
