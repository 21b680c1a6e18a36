"""DeltaClient: what workers import.

A worker appends deltas for its stream; it never writes state::

    async with DeltaClient.connect(dsn, stream_id="stream-1") as dc:
        await dc.insert_delta(frame=515, payload={"posts_created": [...]})
        await dc.close_frame(515)
        await dc.wait_merged(515, timeout=5.0)

Every insert is one round trip to a SQL function that holds the frame's fence
(a shared advisory lock) while it checks the frame and appends: ``append_open``
for the common case (the frame open, the key new), else ``append_delta``. A
batch is one transaction (the fence, then a COPY into the log, when the login
may write the table itself; otherwise one call of ``append_deltas``), after the
rows of frames the client has not seen were made in one of their own. A retry of the
same delta (same utc) is recognised and reported as ``"duplicate"``, so
retrying after a lost connection is always safe.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import AsyncIterator, Iterable, Mapping
from datetime import timedelta
from typing import Any, cast

import asyncpg

from .append import (
    OPEN_FALLBACK,
    OPEN_NEVER_AGAIN,
    SeenFrames,
    batch_receipts,
    copy_batch,
    is_merged,
    next_wait,
    prepare_batch,
    receipt,
)
from .db.connect import READ_COMMITTED, connect, create_pool, listen
from .db.connect import session_settings as connection_settings
from .db.queries import query
from .db.schema_version import check_schema_version
from .errors import (
    DRIVER_ERRORS,
    ConnectionLostError,
    FrameClosedError,
    map_db_error,
)
from .models import CopyMode, InsertStatus, PreparedDelta, Receipt, WorldConfig, prepare_delta
from .settings import DEFAULT_MAX_PAYLOAD_BYTES, env_max_payload_bytes
from .validation import check_frame, validate_identity
from .worlds import configure_world

__all__ = ["DeltaClient", "configure_world", "session_settings"]

log = logging.getLogger(__name__)

MERGED_CHANNEL = "dreamcatcher_merged"
_APPEND_OPEN = query("append_open")


def session_settings(world: str, stream_id: str) -> dict[str, str]:
    """The settings of a client's sessions: the fence needs READ COMMITTED (the database's default
    may be another level), and the session names its stream, so that ``dreamcatcher status``
    can say which writer holds a frame open (``application_name``, at most 63 bytes)."""
    return connection_settings(f"dreamcatcher {world}/{stream_id}", READ_COMMITTED)


async def _no_session_state(conn: asyncpg.Connection) -> None:
    """The reset of the client's own pool: nothing to do. Its calls leave no session state
    behind (no SET, no LISTEN, no session-level lock; asyncpg itself still rolls back a
    transaction left open), so asyncpg's default reset query — a second round trip after
    every call — is skipped. A pool given to :meth:`DeltaClient.connect` keeps its own reset."""


class DeltaClient:
    """An async client for one stream of one world. Use :meth:`connect`.

    By default a client talks to PostgreSQL over ONE dedicated connection (no pool: a pool's
    acquire and release cost more than an insert), its calls taking turns on it, so one client
    serves one worker; ``pool_size=N`` gives it a pool of N connections for concurrent calls,
    and ``pool=`` the caller's own pool. Every call retries across a lost connection.
    """

    def __init__(
        self,
        pool: asyncpg.Pool | None,
        *,
        dsn: str,
        stream_id: str,
        world: str,
        owns_pool: bool,
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retries: int = 3,
    ) -> None:
        ident = validate_identity(world, stream_id)
        self.world = ident.world
        self.stream_id = ident.stream_id
        #: the structured fields of this client's log lines (``extra=``)
        self._log_fields: dict[str, Any] = {"world": self.world, "stream": self.stream_id}
        self._pool = pool
        self._dsn = dsn
        self._owns_pool = owns_pool
        self._max_payload_bytes = max_payload_bytes
        self._retries = retries
        #: the dedicated connection (when there is no pool), and the turns its calls take
        self._conn: asyncpg.Connection | None = None
        self._turn = asyncio.Lock()
        #: False once the server said this session may not COPY into the log (then: append_deltas)
        self._copy_ok = True
        #: False once the server said this session may not call append_open (then: append_delta)
        self._open_ok = True
        #: the frames known to have their row (a batch makes the others first: open_frames)
        self._seen_frames = SeenFrames()
        self._listener: asyncpg.Connection | None = None
        self._listener_lock = asyncio.Lock()
        self._merged_event = asyncio.Event()

    @classmethod
    @contextlib.asynccontextmanager
    async def connect(
        cls,
        dsn: str,
        *,
        stream_id: str,
        world: str = "default",
        pool: asyncpg.Pool | None = None,
        pool_size: int = 1,
        max_payload_bytes: int | None = None,
        retries: int = 3,
    ) -> AsyncIterator[DeltaClient]:
        """Open a client: one dedicated connection (``pool_size=1``, the default), a pool of its
        own (``pool_size`` > 1), or the caller's ``pool`` (never closed here).

        ``max_payload_bytes`` defaults to ``$DREAMCATCHER_MAX_PAYLOAD_BYTES`` (else 1 MiB).
        """
        if max_payload_bytes is None:
            max_payload_bytes = env_max_payload_bytes()
        validate_identity(world, stream_id)
        owns = pool is None
        if pool is None and pool_size > 1:
            pool = await create_pool(
                dsn,
                min_size=1,
                max_size=pool_size,
                reset=_no_session_state,
                settings=session_settings(world, stream_id),
            )
        client = cls(
            pool,
            dsn=dsn,
            stream_id=stream_id,
            world=world,
            owns_pool=owns,
            max_payload_bytes=max_payload_bytes,
            retries=retries,
        )
        try:
            async with client._session() as conn:  # (a wrong DSN fails here, not at the first insert)
                await check_schema_version(conn)  # once per client: SchemaVersionError unless current
            yield client
        finally:
            await client.aclose()

    async def aclose(self) -> None:
        for conn in (self._listener, self._conn):
            if conn is not None:
                with contextlib.suppress(Exception):
                    await conn.close()
        self._listener = self._conn = None
        if self._owns_pool and self._pool is not None:
            await self._pool.close()

    # -- calls with retry on a lost connection (every call here is idempotent) --

    async def _connection(self) -> asyncpg.Connection:
        """The dedicated connection, (re)opened when needed. Call it in its turn (or at connect)."""
        if self._conn is None or self._conn.is_closed():
            self._conn = None
            self._conn = await connect(
                self._dsn,
                application_name=f"dreamcatcher {self.world}/{self.stream_id}",
                settings=READ_COMMITTED,
            )
        return self._conn

    @contextlib.asynccontextmanager
    async def _session(self) -> AsyncIterator[asyncpg.Connection]:
        """A connection for one call: the dedicated one in its turn, or one of the pool."""
        if self._pool is not None:
            async with self._pool.acquire() as conn:
                yield cast(asyncpg.Connection, conn)  # (a pool's connection proxy)
            return
        async with self._turn:
            yield await self._connection()

    async def _call(self, sql: str, *args: Any, row: bool = False) -> Any:
        """``fetchval`` (``fetchrow`` with ``row``), retried when the connection was lost."""
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                async with self._session() as conn:
                    if row:
                        return await conn.fetchrow(sql, *args)
                    return await conn.fetchval(sql, *args)
            except DRIVER_ERRORS as exc:
                err = map_db_error(exc)
                if isinstance(exc, asyncpg.SerializationError) and attempt < self._retries:
                    # a merge passed the frame this call was making while it ran: nothing was
                    # stored; the retry finds the frame late, as the world's policy says
                    log.info("insert raced a merge (%s); retrying", exc, extra=self._log_fields)
                    continue
                if isinstance(err, ConnectionLostError) and attempt < self._retries:
                    log.warning("connection lost (%s); retrying in %.2fs", exc, delay, extra=self._log_fields)
                    await asyncio.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise err from exc
        raise AssertionError("unreachable")

    # -- writing --

    def _receipt(self, delta: PreparedDelta, status: str) -> Receipt:
        return receipt(self.world, self.stream_id, delta, status)

    async def insert_delta(self, frame: int, payload: Mapping[str, Any], utc: Any = None) -> Receipt:
        """Append one delta. ``utc`` (the writer's clock) defaults to now.

        Raises :class:`InvalidDeltaError`, :class:`FrameClosedError` (frame closed,
        policy ``reject``) or :class:`DeltaConflictError` (same key, other payload).
        """
        delta, text = prepare_delta(
            frame, payload, utc, stream_id=self.stream_id, max_payload_bytes=self._max_payload_bytes
        )
        if self._open_ok and await self._append_open(delta, text):
            return Receipt(self.world, delta.frame, self.stream_id, delta.utc, InsertStatus.STORED)
        status = await self._call(
            query("append_delta"), self.world, self.stream_id, delta.frame, delta.utc, text
        )
        return self._receipt(delta, status)

    async def _append_open(self, delta: PreparedDelta, text: str) -> bool:
        """The common case in one cheap call (``append_open``): True when the delta was stored.

        False leaves it to ``append_delta``, the reference, which decides every other case: the
        frame is not open (or has no row yet), the key is stored already (a retry: duplicate or
        conflict), the connection was lost (a delta that did commit then reads "duplicate"), or
        this session may not INSERT into the log (a worker of ``init --roles``: never again).
        """
        try:
            async with self._session() as conn:
                stored = await conn.fetchval(
                    _APPEND_OPEN, self.world, self.stream_id, delta.frame, delta.utc, text
                )
            return stored is True
        except ConnectionLostError:  # (the connection could not be opened again)
            return False
        except DRIVER_ERRORS as exc:
            state = getattr(exc, "sqlstate", None)
            self._open_ok = state not in OPEN_NEVER_AGAIN
            err = map_db_error(exc)
            if state in OPEN_FALLBACK or isinstance(err, ConnectionLostError):
                return False
            raise err from exc

    async def insert_deltas(self, deltas: Iterable[Mapping[str, Any]]) -> list[Receipt]:
        """Append a batch in one transaction: items ``{"frame", "payload", "utc"?}``.

        Every item is validated first; an invalid one fails the whole batch and
        nothing is written. After the round trip, the first conflicting or late
        item raises its error; the items stored before and after it stay stored,
        and are listed in the error's ``receipts`` attribute.
        """
        prepared = prepare_batch(deltas, self.stream_id, self._max_payload_bytes)
        if not prepared:
            return []
        statuses = await self._copy_batch(prepared) if self._copy_ok else None
        if statuses is None:
            statuses = await self._call(
                query("append_deltas"),
                self.world,
                self.stream_id,
                [d.frame for d, _ in prepared],
                [d.utc for d, _ in prepared],
                [t for _, t in prepared],
            )
        return batch_receipts(self.world, self.stream_id, prepared, statuses)

    async def _copy_batch(self, prepared: list[tuple[PreparedDelta, str]]) -> list[str] | None:
        """Append a batch with COPY straight into the log; None when it must take append_deltas.

        One transaction: ``copy_begin`` takes the fence of every frame of the batch and checks
        they are open, then COPY writes the rows (several times cheaper for the server than an
        INSERT ... SELECT of the same rows). Anything but the plain case (a frame not open, a
        key already stored or repeated in the batch, a session that may not INSERT into the
        log, a lost connection) returns None or the statuses of append_deltas, whose answers
        are the reference: the COPY path only ever answers "stored" for every row.
        """
        try:
            async with self._session() as conn:
                answer = await copy_batch(conn, self.world, self.stream_id, prepared, self._seen_frames)
            if isinstance(answer, CopyMode):  # DENIED: this role appends through append_deltas only
                self._copy_ok = False
                return None
            return answer
        except (asyncpg.UniqueViolationError, asyncpg.SerializationError):
            # a retry, or a key repeated in the batch; or a merge passed a frame this batch was
            # making while it ran (refused at COMMIT): append_deltas sorts it out
            return None
        except asyncpg.InsufficientPrivilegeError:
            self._copy_ok = False  # (a worker of `init --roles` may not even call copy_begin)
            return None
        except DRIVER_ERRORS as exc:
            err = map_db_error(exc)
            if isinstance(err, ConnectionLostError):
                return None  # append_deltas retries; a batch that did commit reads "duplicate"
            raise err from exc

    # -- frames --

    async def close_frame(self, frame: int, *, reason: str = "explicit") -> str:
        """Close ``frame`` (idempotent). Returns ``"closed"`` or the status it already had.

        Waits for every insert in flight for that frame to commit; after it
        returns, every insert for the frame is late.
        """
        check_frame(frame)
        status = cast(str, await self._call(query("close_frame"), self.world, frame, reason))
        if status == "late":
            raise FrameClosedError(
                f"frame {frame} of world {self.world!r} has no deltas and lies below the frames "
                "already merged; it can never be merged",
                world=self.world,
                frame=frame,
            )
        return status

    async def frame_status(self, frame: int) -> str | None:
        """``"open"``, ``"closed"``, ``"merged"``, or None when the frame does not exist."""
        check_frame(frame)
        row = await self._call(query("frame_status"), self.world, frame, row=True)
        return None if row is None else cast("str | None", row["status"])

    async def configure_world(
        self,
        *,
        expected_streams: list[str] | None = None,
        late_policy: str | None = None,
        close_after: float | timedelta | None = None,
        max_frame_ahead: int | None = None,
        idle_writer_timeout: float | timedelta | None = None,
    ) -> WorldConfig:
        """Configure this world (None keeps a setting): see :func:`configure_world`."""
        async with self._session() as conn:
            return await configure_world(
                conn,
                self.world,
                expected_streams=expected_streams,
                late_policy=late_policy,
                close_after=close_after,
                max_frame_ahead=max_frame_ahead,
                idle_writer_timeout=idle_writer_timeout,
            )

    # -- waiting for merges --

    async def _ensure_listener(self) -> None:
        async with self._listener_lock:
            if self._listener is not None and not self._listener.is_closed():
                return
            self._listener = await listen(self._dsn, MERGED_CHANNEL, self._on_merged)

    def _on_merged(self, conn: Any, pid: int, channel: str, payload: object) -> None:
        # wake every waiter of this generation; later waiters wait on a fresh event
        event, self._merged_event = self._merged_event, asyncio.Event()
        event.set()

    async def wait_merged(self, frame: int, timeout: float | None = None, *, poll: float = 0.5) -> None:
        """Return once ``frame`` is merged; ``TimeoutError`` if not within ``timeout`` seconds.

        Listens for the merger's NOTIFY and also polls, so a lost notification
        (e.g. while the connection was down) only costs up to ``poll`` seconds.
        A lost connection does not end the wait: it polls on until the server is
        back or the timeout passes (the ``TimeoutError`` then has the connection
        error as its cause).
        """
        check_frame(frame)
        loop = asyncio.get_running_loop()
        deadline = None if timeout is None else loop.time() + timeout
        lost: ConnectionLostError | None = None
        while True:
            try:
                await self._ensure_listener()
            except ConnectionLostError:
                log.warning(
                    "cannot LISTEN for merges; polling every %.1fs",
                    poll,
                    extra={**self._log_fields, "frame": frame},
                )
            event = self._merged_event  # taken before the check: a merge after it sets this event
            try:
                row = await self._call(query("frame_status"), self.world, frame, row=True)
            except ConnectionLostError as exc:
                lost = exc
            else:
                lost = None
                if is_merged(self.world, frame, row):
                    return
            wait = next_wait(self.world, frame, timeout, deadline, loop.time(), poll, lost)
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(event.wait(), wait)
