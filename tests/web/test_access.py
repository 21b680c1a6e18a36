"""Who may reach the inspector, and what it may do: read-only sessions, the reader role, the token,
the Host check, the bind rules, the security headers, and a page that needs no internet."""

from __future__ import annotations

import contextlib
import re
import secrets
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import quote, urlsplit, urlunsplit

import asyncpg
import httpx
import psycopg
import pytest
from psycopg import sql

import dreamcatcher_pg.web
from dreamcatcher_pg.ops.roles import create_roles, role_names
from dreamcatcher_pg.web import db
from dreamcatcher_pg.web.app import InvalidTokenError, WebConfig
from dreamcatcher_pg.web.guard import is_loopback_host
from dreamcatcher_pg.web.server import BindRefusedError, check_bind
from tests.support.webscenario import write_scenario
from tests.support.webserver import running_inspector, scratch_database

STATIC = Path(dreamcatcher_pg.web.__file__).parent / "static"
#: One GET of every JSON endpoint on world w (all must answer 200).
SWEEP = [
    ("/api/meta", {}),
    ("/api/worlds", {}),
    ("/api/world", {}),
    ("/api/timeline", {}),
    ("/api/frame", {"frame": 3}),
    ("/api/state", {"kind": "post", "frame": 3}),
    ("/api/state", {"kind": "comment", "value": "hi"}),
    ("/api/diff", {"a": 1, "b": 5}),
    ("/api/entity", {"kind": "post", "key": "1"}),
    ("/api/history", {"kind": "comment", "key": "id:c1"}),
    ("/api/quarantine", {}),
    ("/api/late", {}),
]


def as_user(dsn: str, user: str) -> str:
    parts = urlsplit(dsn)
    return urlunsplit(parts._replace(netloc=f"{quote(user, safe='')}@{parts.netloc.rpartition('@')[2]}"))


@contextlib.contextmanager
def reader_login(dsn: str) -> Iterator[tuple[str, str]]:
    """The roles of ``init --roles`` (a fresh prefix) and a login in the reader role; dropped after."""
    prefix = f"dcw_{secrets.token_hex(4)}"
    names = role_names(prefix)
    user = f"{prefix}_inspector"
    try:
        yield prefix, user
    finally:
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute("SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE usename = %s", [user])
            for role in (user, *names):
                if conn.execute("SELECT 1 FROM pg_roles WHERE rolname = %s", [role]).fetchone():
                    conn.execute(sql.SQL("DROP OWNED BY {}").format(sql.Identifier(role)))
                    conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def sweep(url: str) -> dict[str, object]:
    async with httpx.AsyncClient(base_url=url, timeout=30) as http:
        for path, params in SWEEP:
            response = await http.get(path, params={"world": "w", **params})
            assert response.status_code == 200, (path, response.text)
        meta: dict[str, object] = (await http.get("/api/meta")).json()
        return meta


async def test_every_endpoint_works_as_the_reader_role(
    dreamcatcher_server_dsn: str, dreamcatcher_template_db: str
) -> None:
    with (
        scratch_database(dreamcatcher_server_dsn, dreamcatcher_template_db) as dsn,
        reader_login(dsn) as (prefix, user),
    ):
        await write_scenario(dsn)
        names = role_names(prefix)
        await create_roles(dsn, prefix=prefix)
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(
                sql.SQL("CREATE ROLE {} LOGIN IN ROLE {}").format(
                    sql.Identifier(user), sql.Identifier(names.reader)
                )
            )
        # a login of the reader role: it reads with the reader's rights, read-only
        async with running_inspector(WebConfig(as_user(dsn, user), reader_role=names.reader)) as url:
            meta = await sweep(url)
        assert meta["role"] == names.reader and meta["read_only"] is True
        # a superuser login: the inspector becomes the reader role all the same
        async with running_inspector(WebConfig(dsn, reader_role=names.reader)) as url:
            meta = await sweep(url)
        assert meta["role"] == names.reader and meta["read_only"] is True
        conn = await db.connect(dsn, names.reader)
        try:
            assert await conn.fetchval("SELECT current_user") == names.reader
            with pytest.raises(asyncpg.InsufficientPrivilegeError):  # even out of read-only mode
                await conn.execute(
                    "SET transaction_read_only = off; INSERT INTO dreamcatcher.worlds (world) VALUES ('x')"
                )
        finally:
            await conn.close()


async def test_a_reader_role_without_grants_in_this_database_is_not_used(web_world: str) -> None:
    """Roles are cluster-wide: ``init --roles`` in another database made the role, not its grants here."""
    role = f"dcw_{secrets.token_hex(4)}_reader"
    with psycopg.connect(web_world, autocommit=True) as conn:
        conn.execute(sql.SQL("CREATE ROLE {} NOLOGIN").format(sql.Identifier(role)))
        login = conn.execute("SELECT current_user").fetchone()
    try:
        async with running_inspector(WebConfig(web_world, reader_role=role)) as url:
            meta = await sweep(url)
        assert login is not None and meta["role"] == login[0] and meta["read_only"] is True
    finally:
        with psycopg.connect(web_world, autocommit=True) as conn:
            conn.execute(sql.SQL("DROP ROLE {}").format(sql.Identifier(role)))


async def test_without_the_reader_role_every_session_is_read_only(web_world: str) -> None:
    conn = await db.connect(web_world, "no_such_role_here")
    try:
        assert await conn.fetchval("SHOW default_transaction_read_only") == "on"
        with pytest.raises(asyncpg.ReadOnlySQLTransactionError):
            await conn.execute("INSERT INTO dreamcatcher.worlds (world) VALUES ('x')")
    finally:
        await conn.close()


async def test_a_token_is_required_from_every_client_when_set(web_world: str) -> None:
    token = secrets.token_urlsafe(16)
    async with (
        running_inspector(WebConfig(web_world, token=token)) as url,
        httpx.AsyncClient(base_url=url, timeout=30) as http,
    ):
        for path in ("/", "/api/worlds", "/static/app.js", "/api/events?world=w"):
            response = await http.get(path)
            assert response.status_code == 401 and response.json()["error"]["code"] == "unauthorized", path
        assert (
            await http.get("/api/worlds", headers={"Authorization": "Bearer nope-nope-nope"})
        ).status_code == 401
        assert (
            await http.get("/api/worlds", headers={"Authorization": f"Bearer {token}"})
        ).status_code == 200
        page = await http.get("/", params={"token": token})
        assert page.status_code == 200 and "text/html" in page.headers["content-type"]
        cookie = page.headers["set-cookie"]
        assert (
            cookie.startswith(f"dreamcatcher_token={token}")
            and "HttpOnly" in cookie
            and "SameSite=Strict" in cookie
        )
        # the page's own requests then carry the cookie
        assert (
            await http.get("/api/worlds", headers={"Cookie": f"dreamcatcher_token={token}"})
        ).status_code == 200
        # any Host is answered with a token
        elsewhere = {"Host": "inspector.example", "Authorization": f"Bearer {token}"}
        assert (await http.get("/api/meta", headers=elsewhere)).status_code == 200


async def test_without_a_token_only_loopback_host_names_are_answered(http: httpx.AsyncClient) -> None:
    for host in ("evil.example", "evil.example:8765", "10.0.0.8", "127.0.0.1.evil.example"):
        response = await http.get("/api/worlds", headers={"Host": host})
        assert response.status_code == 403 and response.json()["error"]["code"] == "host_not_allowed", host
    for host in ("localhost:8765", "127.0.0.1", "[::1]:80", "app.localhost"):
        assert (await http.get("/api/meta", headers={"Host": host})).status_code == 200, host


def test_loopback_host_names() -> None:
    assert all(
        map(is_loopback_host, ["localhost", "LOCALHOST:1", "127.0.0.1:9", "127.8.9.1", "[::1]", "::1"])
    )
    assert not any(map(is_loopback_host, [None, "", "0.0.0.0", "example.com", "[::2]:1", "localhost.evil"]))


def test_a_non_loopback_address_needs_a_token() -> None:
    for address in ("0.0.0.0", "::", "192.0.2.1"):
        with pytest.raises(BindRefusedError, match="--token"):
            check_bind(address, None)
        check_bind(address, "a-long-token")
    for address in ("127.0.0.1", "::1", "localhost"):
        check_bind(address, None)
    with pytest.raises(InvalidTokenError):
        WebConfig("postgresql://x/y", token="short")
    with pytest.raises(InvalidTokenError):
        WebConfig("postgresql://x/y", token="has a space in it")


async def test_answers_forbid_framing_sniffing_and_other_origins(http: httpx.AsyncClient) -> None:
    for path in ("/", "/api/worlds", "/static/app.js", "/api/nothing"):
        headers = (await http.get(path)).headers
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "script-src 'self'" in csp and "frame-ancestors 'none'" in csp
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"


async def test_the_page_and_its_assets_are_served(http: httpx.AsyncClient) -> None:
    page = await http.get("/")
    assert page.status_code == 200 and '<script type="module" src="/static/app.js">' in page.text
    for name in sorted(p.name for p in STATIC.iterdir()):
        response = await http.get(f"/static/{name}")
        assert response.status_code == 200, name
        expected = {".js": "javascript", ".css": "text/css", ".html": "text/html"}[Path(name).suffix]
        assert expected in response.headers["content-type"], name


def test_the_page_loads_nothing_from_the_internet() -> None:
    """No build step and no network: every asset is a local file of the package, every import relative."""
    assert {p.suffix for p in STATIC.iterdir()} == {".html", ".css", ".js"}
    for path in STATIC.iterdir():
        text = path.read_text(encoding="utf-8").replace("http://www.w3.org/2000/svg", "")  # a name, not a URL
        assert not re.search(r"(?:https?:)?//[a-z0-9-]+\.[a-z0-9.-]+", text, re.IGNORECASE), path.name
        for target in re.findall(r"""(?:import|from)\s+["']([^"']+)["']""", text):
            assert target.startswith("./") and (STATIC / target[2:]).is_file(), (path.name, target)
        for target in re.findall(r"""(?:src|href)="(/static/[^"]+)\"""", text):
            assert (STATIC / target.removeprefix("/static/")).is_file(), (path.name, target)
