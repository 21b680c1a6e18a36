"""The inspector: ``dreamcatcher web``, a read-only time-travel view of a world in the browser.

Worlds and their frames, a timeline (deltas per frame, close→merged latency,
merge duration) with a frame slider, the state right after any frame (paged,
searchable), diffs between two frames, an entity's history with blame (which
delta set each field), quarantine and late attempts, and new frames as they
merge (LISTEN/NOTIFY → server-sent events).

Modules: :mod:`.app` (``WebConfig``, ``create_app``: a Starlette app),
:mod:`.server` (``serve``: uvicorn on a socket bound first; loopback unless a
token is set), :mod:`.db` (read-only connections), ``api_*`` (the JSON
endpoints), :mod:`.blame` (the per-kind blame policy), :mod:`.live` (the feed),
:mod:`.command` (the ``web`` command and ``demo --web``). The page is plain
HTML, CSS and JS in ``static/``: no build step, nothing loaded from the internet.

This package imports nothing at import time, so the CLI can register the
command without loading the web stack.
"""
