"""The ``dreamcatcher web`` command, and what ``dreamcatcher demo --web`` runs after the demo.

The CLI side of the inspector: the only code of this package that prints.
Registering the command imports nothing of the web stack; running it does.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import os
import sys
import webbrowser
from typing import Any

TOKEN_ENV = "DREAMCATCHER_WEB_TOKEN"


def register(sub: Any) -> None:
    p = sub.add_parser(
        "web",
        help="serve the read-only inspector: frames, timeline, state at any frame, diffs, blame, live",
        description="Serve the inspector in the browser: each world's frames and merge lag, a timeline "
        "with a frame slider, the state right after any frame (paged, searchable), diffs between two "
        "frames, an entity's history with the delta that set each field, quarantine and late attempts, "
        "and new frames as they merge. It only reads (as the reader role of `init --roles` when there is "
        "one; every transaction read-only). It listens on 127.0.0.1 unless given a token.",
    )
    p.add_argument("--world", help="the world the page opens on (default: the first one)")
    p.add_argument(
        "--address",
        default="127.0.0.1",
        help="address to listen on (default 127.0.0.1; any other than a loopback address needs --token)",
    )
    p.add_argument("--port", type=int, default=8765, help="port (default 8765; 0: any free port)")
    p.add_argument(
        "--token",
        help=f"require this token from every client (default: ${TOKEN_ENV}); "
        "the page is opened as http://HOST:PORT/?token=TOKEN",
    )
    p.add_argument(
        "--role-prefix",
        default="dreamcatcher",
        help="read as the role PREFIX_reader when it exists (init --roles; default dreamcatcher)",
    )
    p.add_argument("--open", action="store_true", help="open the page in a web browser")
    p.set_defaults(func=cmd_web)


def _token(given: str | None) -> str | None:
    return given or os.environ.get(TOKEN_ENV) or None


def _ready(open_browser: bool) -> Any:
    def ready(url: str) -> None:
        print(f"inspector: {url}  (Ctrl-C to stop)", flush=True)
        if open_browser:
            webbrowser.open(url)

    return ready


def cmd_web(args: argparse.Namespace, dsn: str) -> int:
    from ..web.app import WebConfig
    from ..web.server import serve

    reader_role = f"{args.role_prefix}_reader"
    config = WebConfig(dsn, world=args.world, token=_token(args.token), reader_role=reader_role)
    asyncio.run(serve(config, args.address, args.port, on_ready=_ready(args.open)))
    return 0


def add_demo_arguments(p: Any) -> None:
    """``demo --web [--web-port PORT]``."""
    p.add_argument(
        "--web",
        action="store_true",
        help="then keep the demo world up (with a merger) and serve the inspector on it until Ctrl-C",
    )
    p.add_argument(
        "--web-port",
        type=int,
        default=8765,
        metavar="PORT",
        help="the inspector's port with --web (default 8765; 0: any free port)",
    )


def run_demo_web(dsn: str, world: str, port: int) -> int:
    """After ``demo``: a merger for the demo world and the inspector on it, until interrupted."""
    from ..merger import Merger
    from ..web.app import WebConfig
    from ..web.server import serve

    async def run() -> None:
        stop = asyncio.Event()
        merger = Merger(dsn, world, poll_interval=0.2, name="demo-web")
        merging = asyncio.create_task(merger.run(stop), name="demo-web-merger")
        try:
            await serve(
                WebConfig(dsn, world=world),
                "127.0.0.1",
                port,
                stop=stop,
                on_ready=_ready(sys.stdout.isatty()),
            )
        finally:
            stop.set()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(merging, 10)

    print(f"world {world} stays up, with a merger: write more deltas with DREAMCATCHER_DSN={dsn}", flush=True)
    asyncio.run(run())
    return 0
