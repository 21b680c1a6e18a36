"""The metrics port of the merger process: ``/metrics``, ``/healthz``, ``/readyz``.

:func:`start_metrics_server` serves a registry of :mod:`.metrics` on a small threaded WSGI
server (the HTTP thread only reads in-memory state; the database refresher runs in the
mergers' event loop), and the probes of :mod:`.health`.
"""

from __future__ import annotations

import asyncio
import logging
import socket
import threading
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from socketserver import ThreadingMixIn
from typing import Any
from wsgiref.simple_server import WSGIRequestHandler, WSGIServer, make_server

import orjson
from prometheus_client import CollectorRegistry, make_wsgi_app

from .health import liveness, readiness
from .metrics import DatabaseRefresher, MergerLike, build_registry, refresh_interval_for

log = logging.getLogger(__name__)


@dataclass
class MetricsServer:
    """A running metrics endpoint. ``close()`` stops the HTTP server and the refresher."""

    port: int
    registry: CollectorRegistry
    refresher: DatabaseRefresher | None
    _server: Any
    _thread: threading.Thread
    _task: asyncio.Task[None] | None

    def close(self) -> None:
        self._server.shutdown()
        self._server.server_close()
        self._thread.join(5.0)
        if self._task is not None:
            self._task.cancel()


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # no access log on stderr
        pass


class _ThreadingWSGIServer(ThreadingMixIn, WSGIServer):
    daemon_threads = True


#: The paths the metrics port answers (anything else: 404).
PATHS = ("/metrics", "/healthz", "/readyz")


def make_app(
    registry: CollectorRegistry, mergers: Sequence[MergerLike], refresher: DatabaseRefresher | None
) -> Callable[..., Any]:
    """The WSGI app of the metrics port: ``/metrics``, ``/healthz``, ``/readyz``; 404 elsewhere.

    ``/healthz`` and ``/readyz`` answer 200 or 503 with a small JSON body saying why
    (:func:`~dreamcatcher_pg.ops.health.liveness`, :func:`~dreamcatcher_pg.ops.health.readiness`);
    they read in-memory state only.
    """
    metrics_app = make_wsgi_app(registry)
    schema = refresher.schema if refresher is not None else None

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> list[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return list(metrics_app(environ, start_response))
        if path in ("/healthz", "/readyz"):
            try:
                ok, doc = liveness(mergers) if path == "/healthz" else readiness(mergers, schema)
                status = "200 OK" if ok else "503 Service Unavailable"
            except Exception as exc:  # a bug of ours: say so, as JSON, and log it once per request
                log.exception("%s failed", path)
                doc = {"status": "error", "reason": f"{type(exc).__name__}: {exc}"}
                status = "500 Internal Server Error"
            body = orjson.dumps(doc) + b"\n"
            kind = "application/json"
        else:
            body = f"not found; this port serves {', '.join(PATHS)}\n".encode()
            status, kind = "404 Not Found", "text/plain; charset=utf-8"
        start_response(
            status,
            [("Content-Type", kind), ("Content-Length", str(len(body))), ("Cache-Control", "no-store")],
        )
        return [body]

    return app


def _serve(addr: str, port: int, app: Callable[..., Any]) -> tuple[WSGIServer, threading.Thread]:
    family = socket.getaddrinfo(addr, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)[0][0]

    class Server(_ThreadingWSGIServer):
        address_family = family

    server = make_server(addr, port, app, Server, _QuietHandler)
    thread = threading.Thread(target=server.serve_forever, name="dreamcatcher-metrics-http", daemon=True)
    thread.start()
    return server, thread


#: Where the metrics port listens unless told (``--metrics-address``): this host only.
DEFAULT_METRICS_ADDRESS = "127.0.0.1"


def start_metrics_server(
    port: int,
    mergers: Sequence[MergerLike],
    *,
    addr: str = DEFAULT_METRICS_ADDRESS,
    refresh_interval: float | None = None,
) -> MetricsServer:
    """Serve the mergers' metrics on ``addr:port`` at ``/metrics`` (port 0: any free port),
    and ``/healthz`` and ``/readyz`` (see :func:`make_app`).

    Call it from the mergers' event loop (``dreamcatcher merger`` does): the database
    refresher runs as a task of that loop, every ``refresh_interval`` seconds
    (default: :func:`refresh_interval_for`). Outside a running loop the
    database-derived metrics are left out.
    """
    task: asyncio.Task[None] | None = None
    refresher: DatabaseRefresher | None = None
    if mergers:
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            loop = None
        if loop is not None:
            if refresh_interval is None:
                refresh_interval = refresh_interval_for(mergers)
            refresher = DatabaseRefresher(
                mergers[0].dsn, [m.world for m in mergers], interval=refresh_interval
            )
            task = loop.create_task(refresher.run(), name="dreamcatcher-metrics-refresher")
    registry = build_registry(mergers, refresher)
    try:
        server, thread = _serve(addr, port, make_app(registry, mergers, refresher))
    except BaseException:
        if task is not None:
            task.cancel()
        raise
    bound = int(server.server_address[1])
    log.info("serving Prometheus metrics on http://%s:%s/metrics (and /healthz, /readyz)", addr, bound)
    return MetricsServer(bound, registry, refresher, server, thread, task)
