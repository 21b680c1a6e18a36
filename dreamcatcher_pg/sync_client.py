"""SyncDeltaClient: :class:`~dreamcatcher_pg.DeltaClient` for code that does not run an event loop.

Simulations, notebooks, Celery tasks and multiprocessing workers are synchronous; this client
gives them the same methods, validation, errors, retries and receipts, over psycopg 3
(``pip install 'dreamcatcher-pg[sync]'``)::

    with SyncDeltaClient.connect(dsn, stream_id="stream-1") as dc:
        dc.insert_delta(frame=515, payload={"posts_created": [...]})
        dc.close_frame(515)
        dc.wait_merged(515, timeout=5.0)

It calls the same SQL as the async client (``append_open``, else ``append_delta``; ``open_frames``,
``copy_begin`` then COPY, else ``append_deltas``; ``close_frame``, ``configure_world``;
``wait_merged`` LISTENs for the merger's NOTIFY), validates at the edge with the same code
and maps driver errors through the same SQLSTATE table (:func:`dreamcatcher_pg.errors.map_db_error`).

Threads: a client may be shared by threads; its calls then take turns on its one connection
(a lock), as the async client's calls take turns on its connection. For parallel inserts give
each thread its own client. A client must not cross a ``fork()``: in a multiprocessing or
Celery worker, connect in the child (e.g. in the pool's initializer), never before the fork.
"""

from __future__ import annotations

import contextlib
import logging
import threading
import time
from collections.abc import Iterable, Iterator, Mapping
from datetime import timedelta
from typing import Any, cast

import psycopg
from psycopg import sql
from psycopg.rows import dict_row

from .append import (
    COPY_COLUMNS,
    OPEN_FALLBACK,
    OPEN_NEVER_AGAIN,
    SeenFrames,
    batch_receipts,
    is_merged,
    next_wait,
    prepare_batch,
    receipt,
)
from .client import MERGED_CHANNEL, session_settings
from .db.queries import query
from .errors import ConnectionLostError, DreamcatcherError, FrameClosedError, map_db_error
from .models import InsertStatus, PreparedDelta, Receipt, WorldConfig, prepare_delta
from .settings import DEFAULT_MAX_PAYLOAD_BYTES, Settings
from .validation import check_frame, validate_identity
from .worlds import configure_world_args, world_config

log = logging.getLogger(__name__)

#: What psycopg raises when a call fails: errors of the server, of the socket, of the driver.
SYNC_DRIVER_ERRORS = (OSError, psycopg.Error)

_APPEND_OPEN = query("append_open")
_COPY_SQL = sql.SQL("COPY dreamcatcher.delta_log ({}) FROM STDIN").format(
    sql.SQL(", ").join(sql.Identifier(c) for c in COPY_COLUMNS)
)

Connection = psycopg.Connection[Any]


def map_sync_error(exc: BaseException) -> DreamcatcherError:
    """A psycopg exception as one of ours: :func:`map_db_error` (the SQLSTATE table both clients
    share), after the one case only psycopg has: a failure of the connection itself carries no
    SQLSTATE (refused, reset, closed under the call), like asyncpg's ``InternalClientError``."""
    if isinstance(exc, psycopg.OperationalError) and exc.sqlstate is None:
        return ConnectionLostError(f"connection to PostgreSQL failed: {exc}")
    return map_db_error(exc)


def _sqlstate(exc: BaseException) -> str | None:
    return exc.sqlstate if isinstance(exc, psycopg.Error) else None


class SyncDeltaClient:
    """A blocking client for one stream of one world. Use :meth:`connect`.

    One dedicated connection (autocommit, each call one statement or one transaction); calls
    from several threads take turns on it. Every call retries across a lost connection and
    across a merge that passed its frame while it ran (SQLSTATE 40001): every call is idempotent.
    """

    def __init__(
        self,
        *,
        dsn: str,
        stream_id: str,
        world: str = "default",
        max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES,
        retries: int = 3,
    ) -> None:
        ident = validate_identity(world, stream_id)
        self.world = ident.world
        self.stream_id = ident.stream_id
        #: the structured fields of this client's log lines (``extra=``)
        self._log_fields: dict[str, Any] = {"world": self.world, "stream": self.stream_id}
        self._dsn = dsn
        self._max_payload_bytes = max_payload_bytes
        self._retries = retries
        self._conn: Connection | None = None
        self._turn = threading.RLock()
        #: False once the server said this session may not COPY into the log (then: append_deltas)
        self._copy_ok = True
        #: the frames known to have their row (a batch makes the others first: open_frames)
        self._seen_frames = SeenFrames()
        #: False once the server said this session may not call append_open (then: append_delta)
        self._open_ok = True
        self._listener: Connection | None = None
        self._listener_lock = threading.Lock()

    @classmethod
    @contextlib.contextmanager
    def connect(
        cls,
        dsn: str,
        *,
        stream_id: str,
        world: str = "default",
        max_payload_bytes: int | None = None,
        retries: int = 3,
    ) -> Iterator[SyncDeltaClient]:
        """Open a client on one dedicated connection; closed when the block ends.

        ``max_payload_bytes`` defaults to ``$DREAMCATCHER_MAX_PAYLOAD_BYTES`` (else 1 MiB).
        A wrong DSN fails here (:class:`ConnectionLostError`), not at the first insert.
        """
        client = cls.open(
            dsn, stream_id=stream_id, world=world, max_payload_bytes=max_payload_bytes, retries=retries
        )
        try:
            yield client
        finally:
            client.close()

    @classmethod
    def open(
        cls,
        dsn: str,
        *,
        stream_id: str,
        world: str = "default",
        max_payload_bytes: int | None = None,
        retries: int = 3,
    ) -> SyncDeltaClient:
        """Like :meth:`connect`, for a client that outlives a ``with`` block (a worker process's
        global); call :meth:`close` when done."""
        if max_payload_bytes is None:
            max_payload_bytes = Settings.from_env().max_payload_bytes
        client = cls(
            dsn=dsn, stream_id=stream_id, world=world, max_payload_bytes=max_payload_bytes, retries=retries
        )
        with client._turn:
            client._connection()
        return client

    def close(self) -> None:
        with self._turn, self._listener_lock:
            for conn in (self._listener, self._conn):
                if conn is not None:
                    with contextlib.suppress(Exception):
                        conn.close()
            self._listener = self._conn = None

    def __enter__(self) -> SyncDeltaClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- calls with retry on a lost connection (every call here is idempotent) --

    def _open(self) -> Connection:
        try:
            conn = psycopg.connect(
                self._dsn,
                autocommit=True,
                cursor_factory=psycopg.RawCursor,  # the SQL of sql/queries.sql: $1, $2 ...
                application_name=session_settings(self.world, self.stream_id)["application_name"],
            )
        except SYNC_DRIVER_ERRORS as exc:
            raise map_sync_error(exc) from exc
        try:
            # the fence needs READ COMMITTED, whatever the database's default
            conn.execute("SET default_transaction_isolation = 'read committed'")
        except SYNC_DRIVER_ERRORS as exc:
            conn.close()
            raise map_sync_error(exc) from exc
        return conn

    def _connection(self) -> Connection:
        """The dedicated connection, (re)opened when needed. Call it in its turn."""
        if self._conn is None or self._conn.closed:
            self._conn = None
            self._conn = self._open()
        return self._conn

    def _call(self, statement: str, *args: Any, row: bool = False) -> Any:
        """The first column of the first row (the row as a dict with ``row``), retried when the
        connection was lost or a merge passed the frame while the call ran (40001)."""
        delay = 0.05
        for attempt in range(self._retries + 1):
            try:
                with self._turn:
                    conn = self._connection()
                    with conn.cursor(row_factory=dict_row) as cur:
                        cur.execute(statement, args)
                        found = cur.fetchone()
                if row:
                    return found
                return None if found is None else next(iter(found.values()))
            except SYNC_DRIVER_ERRORS as exc:
                err = map_sync_error(exc)
                if _sqlstate(exc) == "40001" and attempt < self._retries:
                    # a merge passed the frame this call was making while it ran: nothing was
                    # stored; the retry finds the frame late, as the world's policy says
                    log.info("insert raced a merge (%s); retrying", exc, extra=self._log_fields)
                    continue
                if isinstance(err, ConnectionLostError) and attempt < self._retries:
                    log.warning("connection lost (%s); retrying in %.2fs", exc, delay, extra=self._log_fields)
                    time.sleep(delay)
                    delay = min(delay * 2, 2.0)
                    continue
                raise err from exc
        raise AssertionError("unreachable")

    # -- writing --

    def insert_delta(self, frame: int, payload: Mapping[str, Any], utc: Any = None) -> Receipt:
        """Append one delta. ``utc`` (the writer's clock) defaults to now.

        Raises :class:`InvalidDeltaError`, :class:`FrameClosedError` (frame closed,
        policy ``reject``) or :class:`DeltaConflictError` (same key, other payload).
        """
        delta, text = prepare_delta(
            frame, payload, utc, stream_id=self.stream_id, max_payload_bytes=self._max_payload_bytes
        )
        if self._open_ok and self._append_open(delta, text):
            return Receipt(self.world, delta.frame, self.stream_id, delta.utc, InsertStatus.STORED)
        status = self._call(query("append_delta"), self.world, self.stream_id, delta.frame, delta.utc, text)
        return receipt(self.world, self.stream_id, delta, status)

    def _append_open(self, delta: PreparedDelta, text: str) -> bool:
        """The common case in one cheap call (``append_open``): True when the delta was stored;
        False leaves it to ``append_delta``, the reference (as :class:`DeltaClient` does)."""
        try:
            with self._turn:
                conn = self._connection()
                with conn.cursor() as cur:
                    cur.execute(_APPEND_OPEN, (self.world, self.stream_id, delta.frame, delta.utc, text))
                    found = cur.fetchone()
            return found is not None and found[0] is True
        except ConnectionLostError:  # (the connection could not be opened again)
            return False
        except SYNC_DRIVER_ERRORS as exc:
            state = getattr(exc, "sqlstate", None)
            self._open_ok = state not in OPEN_NEVER_AGAIN
            err = map_sync_error(exc)
            if state in OPEN_FALLBACK or isinstance(err, ConnectionLostError):
                return False
            raise err from exc

    def insert_deltas(self, deltas: Iterable[Mapping[str, Any]]) -> list[Receipt]:
        """Append a batch in one transaction: items ``{"frame", "payload", "utc"?}``.

        Every item is validated first; an invalid one fails the whole batch and
        nothing is written. After the round trip, the first conflicting or late
        item raises its error; the items stored before and after it stay stored,
        and are listed in the error's ``receipts`` attribute.
        """
        prepared = prepare_batch(deltas, self.stream_id, self._max_payload_bytes)
        if not prepared:
            return []
        statuses = self._copy_batch(prepared) if self._copy_ok else None
        if statuses is None:
            statuses = self._call(
                query("append_deltas"),
                self.world,
                self.stream_id,
                [d.frame for d, _ in prepared],
                [d.utc for d, _ in prepared],
                [t for _, t in prepared],
            )
        return batch_receipts(self.world, self.stream_id, prepared, statuses)

    def _copy_batch(self, prepared: list[tuple[PreparedDelta, str]]) -> list[str] | None:
        """Append a batch with COPY straight into the log; None when it must take append_deltas.

        The same transaction as the async client's: ``copy_begin`` (the fence of every frame
        of the batch, and whether they are open), then COPY; anything but the plain case goes
        to ``append_deltas``, whose answers are the reference.
        """
        frames = [d.frame for d, _ in prepared]
        distinct = list(set(frames))
        try:
            with self._turn:
                conn = self._connection()
                if self._seen_frames.unseen(distinct):  # (autocommit: the rows commit at once)
                    conn.execute(query("open_frames"), (self.world, distinct))
                    self._seen_frames.add(distinct)
                with conn.transaction(), conn.cursor() as cur:
                    cur.execute(query("copy_begin"), (self.world, self.stream_id, distinct))
                    found = cur.fetchone()
                    mode = None if found is None else found[0]
                    if mode == "copy":
                        world, stream = self.world, self.stream_id
                        with cur.copy(_COPY_SQL) as copy:
                            for d, text in prepared:
                                copy.write_row((world, d.frame, stream, d.utc, text))
                        return ["stored"] * len(prepared)
                    if mode == "exact":  # a frame is closed or late: the fence is held, ask the reference
                        utcs, texts = [d.utc for d, _ in prepared], [t for _, t in prepared]
                        cur.execute(query("append_deltas"), (self.world, self.stream_id, frames, utcs, texts))
                        found = cur.fetchone()
                        assert found is not None
                        return cast(list[str], found[0])
                self._copy_ok = False  # 'denied': this role appends through append_deltas only
                return None
        except (psycopg.errors.UniqueViolation, psycopg.errors.SerializationFailure):
            # a retry, or a key repeated in the batch; or a merge passed a frame this batch was
            # making while it ran (refused at COMMIT): append_deltas sorts it out
            return None
        except psycopg.errors.InsufficientPrivilege:
            self._copy_ok = False  # (a worker of `init --roles` may not even call copy_begin)
            return None
        except SYNC_DRIVER_ERRORS as exc:
            err = map_sync_error(exc)
            if isinstance(err, ConnectionLostError):
                return None  # append_deltas retries; a batch that did commit reads "duplicate"
            raise err from exc

    # -- frames --

    def close_frame(self, frame: int, *, reason: str = "explicit") -> str:
        """Close ``frame`` (idempotent). Returns ``"closed"`` or the status it already had.

        Waits for every insert in flight for that frame to commit; after it
        returns, every insert for the frame is late.
        """
        check_frame(frame)
        status = cast(str, self._call(query("close_frame"), self.world, frame, reason))
        if status == "late":
            raise FrameClosedError(
                f"frame {frame} of world {self.world!r} has no deltas and lies below the frames "
                "already merged; it can never be merged",
                world=self.world,
                frame=frame,
            )
        return status

    def frame_status(self, frame: int) -> str | None:
        """``"open"``, ``"closed"``, ``"merged"``, or None when the frame does not exist."""
        check_frame(frame)
        found = self._call(query("frame_status"), self.world, frame, row=True)
        return None if found is None else cast("str | None", found["status"])

    def configure_world(
        self,
        *,
        expected_streams: list[str] | None = None,
        late_policy: str | None = None,
        close_after: float | timedelta | None = None,
        max_frame_ahead: int | None = None,
        idle_writer_timeout: float | timedelta | None = None,
    ) -> WorldConfig:
        """Configure this world (None keeps a setting): see :func:`dreamcatcher_pg.configure_world`."""
        args = configure_world_args(
            self.world,
            expected_streams=expected_streams,
            late_policy=late_policy,
            close_after=close_after,
            max_frame_ahead=max_frame_ahead,
            idle_writer_timeout=idle_writer_timeout,
        )
        found = self._call(query("configure_world"), *args, row=True)
        assert found is not None
        return world_config(found)

    # -- waiting for merges --

    def _listen(self) -> Connection:
        """The connection that LISTENs for the merger's NOTIFY, (re)opened when needed."""
        if self._listener is None or self._listener.closed:
            self._listener = None
            try:
                conn = psycopg.connect(self._dsn, autocommit=True)
                conn.execute(sql.SQL("LISTEN {}").format(sql.Identifier(MERGED_CHANNEL)))
            except SYNC_DRIVER_ERRORS as exc:
                raise map_sync_error(exc) from exc
            self._listener = conn
        return self._listener

    def wait_merged(self, frame: int, timeout: float | None = None, *, poll: float = 0.5) -> None:
        """Return once ``frame`` is merged; ``TimeoutError`` if not within ``timeout`` seconds.

        Listens for the merger's NOTIFY and also polls, so a lost notification only costs up
        to ``poll`` seconds. A lost connection does not end the wait: it polls on until the
        server is back or the timeout passes (the ``TimeoutError`` then has the connection
        error as its cause). Threads that wait at once take turns on the listening connection.
        """
        check_frame(frame)
        deadline = None if timeout is None else time.monotonic() + timeout
        lost: ConnectionLostError | None = None
        while True:
            # Notifications queue on the listening connection from its LISTEN on, so one sent
            # between the check below and the wait after it is not missed: the wait returns.
            with self._listener_lock:
                try:
                    self._listen()
                except ConnectionLostError:
                    log.warning("cannot LISTEN for merges; polling every %.1fs", poll, extra=self._log_fields)
            try:
                found = self._call(query("frame_status"), self.world, frame, row=True)
            except ConnectionLostError as exc:
                lost = exc
            else:
                lost = None
                if is_merged(self.world, frame, found):
                    return
            self._wait_notify(next_wait(self.world, frame, timeout, deadline, time.monotonic(), poll, lost))

    def _wait_notify(self, wait: float) -> None:
        """Up to ``wait`` seconds for a NOTIFY of a merge (any: the caller checks its frame)."""
        with self._listener_lock:
            listener = self._listener
            if listener is not None and not listener.closed:
                try:
                    for _ in listener.notifies(timeout=wait, stop_after=1):
                        pass
                    return
                except SYNC_DRIVER_ERRORS as exc:
                    log.warning("LISTEN connection lost (%s)", exc, extra=self._log_fields)
                    with contextlib.suppress(Exception):
                        listener.close()
                    self._listener = None
        time.sleep(wait)
