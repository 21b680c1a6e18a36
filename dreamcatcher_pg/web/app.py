"""The inspector's ASGI app: the JSON API, the live feed and the page (plain HTML, CSS and JS).

:func:`create_app` builds it from a :class:`WebConfig`; its lifespan opens the
read-only pool and the live feed, and closes them. Every route is a GET; the
app never writes to the database.
"""

from __future__ import annotations

import contextlib
import logging
import re
from collections.abc import AsyncIterator
from dataclasses import dataclass
from importlib import resources

from starlette.applications import Starlette
from starlette.exceptions import HTTPException
from starlette.middleware import Middleware
from starlette.requests import Request
from starlette.responses import FileResponse, Response
from starlette.routing import BaseRoute, Mount, Route
from starlette.staticfiles import StaticFiles

from .. import __version__
from ..errors import DreamcatcherError
from . import api_diff, api_entity, api_frames, api_logs, api_state, live
from .db import DEFAULT_READER_ROLE, Reader
from .errors import ApiError, JSONResponse, error_response
from .guard import Guard

log = logging.getLogger(__name__)

#: What a token may be made of (it travels in a header, a cookie and a URL).
TOKEN_PATTERN = re.compile(r"[A-Za-z0-9._~+/=-]{8,256}")


class InvalidTokenError(DreamcatcherError, ValueError):
    """The token cannot be used (see :data:`TOKEN_PATTERN`)."""


@dataclass(frozen=True, slots=True)
class WebConfig:
    """What the inspector serves, and to whom."""

    dsn: str
    #: the world the page opens on (None: the first one)
    world: str | None = None
    #: required from every client when set; without one, only loopback Host headers are answered
    token: str | None = None
    #: the role to read as when it exists and the login may become it (None: the login's own)
    reader_role: str | None = DEFAULT_READER_ROLE
    #: seconds between the live feed's polls (NOTIFY wakes it sooner)
    poll_interval: float = 1.0

    def __post_init__(self) -> None:
        if self.token is not None and not TOKEN_PATTERN.fullmatch(self.token):
            raise InvalidTokenError("a token must be 8 to 256 characters of A-Z a-z 0-9 . _ ~ + / = -")


def _static_dir() -> str:
    return str(resources.files("dreamcatcher_pg.web").joinpath("static"))


async def index(request: Request) -> Response:
    return FileResponse(_static_dir() + "/index.html", media_type="text/html")


async def meta(request: Request) -> JSONResponse:
    """Who the inspector reads as (role, read-only), its version, and the world to open on."""
    session = await request.app.state.reader.session()
    return JSONResponse(
        {
            "version": __version__,
            "role": session.role,
            "read_only": session.read_only,
            "default_world": request.app.state.world,
        }
    )


async def _api_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, ApiError)
    return error_response(exc.status, exc.code, exc.message)


async def _http_error(request: Request, exc: Exception) -> Response:
    assert isinstance(exc, HTTPException)
    code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
    return error_response(exc.status_code, code, str(exc.detail))


async def _unexpected(request: Request, exc: Exception) -> Response:
    log.error("inspector: unexpected error on %s", request.url.path, exc_info=exc)
    return error_response(500, "internal", "internal error (logged by the server)")


API = [
    ("/api/meta", meta),
    ("/api/worlds", api_frames.worlds),
    ("/api/world", api_frames.world),
    ("/api/timeline", api_frames.timeline),
    ("/api/frame", api_frames.frame),
    ("/api/state", api_state.state),
    ("/api/diff", api_diff.diff),
    ("/api/entity", api_entity.entity),
    ("/api/history", api_entity.history),
    ("/api/quarantine", api_logs.quarantine),
    ("/api/late", api_logs.late),
    ("/api/events", live.events),
]


def create_app(config: WebConfig) -> Starlette:
    """The inspector for ``config``; serve it with any ASGI server (``serve`` uses uvicorn)."""
    reader = Reader(config.dsn, reader_role=config.reader_role)
    feed = live.MergeFeed(config.dsn, config.reader_role, poll_interval=config.poll_interval)

    @contextlib.asynccontextmanager
    async def lifespan(app: Starlette) -> AsyncIterator[None]:
        await reader.open()
        feed.start()
        try:
            yield
        finally:
            await feed.stop()
            await reader.close()

    routes: list[BaseRoute] = [Route("/", index, methods=["GET", "HEAD"])]
    routes += [Route(path, endpoint, methods=["GET"]) for path, endpoint in API]
    routes.append(Mount("/static", StaticFiles(directory=_static_dir()), name="static"))
    app = Starlette(
        routes=routes,
        middleware=[Middleware(Guard, token=config.token, check_host=config.token is None)],
        exception_handlers={ApiError: _api_error, HTTPException: _http_error, Exception: _unexpected},
        lifespan=lifespan,
    )
    app.state.reader = reader
    app.state.feed = feed
    app.state.world = config.world
    return app
