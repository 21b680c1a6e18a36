"""The probe of a container's health check: ``python3 -m dreamcatcher_pg.probe [URL]``.

GETs the merger's ``/healthz`` (or the URL given, e.g. ``/readyz``) and exits 0 on 200, else 1,
printing the answer: the Dockerfile's HEALTHCHECK, with no curl in the image. Part of the command
line, like ``entry.py``: it imports nothing but the standard library, so a probe every few
seconds costs next to nothing.
"""

from __future__ import annotations

import os
import sys
import urllib.error
import urllib.request

#: What the probe asks unless given a URL (``$DREAMCATCHER_HEALTH_URL`` overrides it).
DEFAULT_PROBE_URL = "http://127.0.0.1:9464/healthz"


def probe(url: str, *, timeout: float = 4.0) -> int:
    """GET ``url`` (``/healthz`` or ``/readyz``): 0 on 200, else 1; prints the body or the error."""
    try:
        with urllib.request.urlopen(url, timeout=timeout) as response:
            print(response.read().decode(errors="replace").strip())
            return 0 if response.status == 200 else 1
    except urllib.error.HTTPError as exc:
        print(f"{exc.code}: {exc.read().decode(errors='replace').strip()}")
    except (OSError, ValueError) as exc:
        print(f"{url}: {exc}")
    return 1


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    return probe(args[0] if args else os.environ.get("DREAMCATCHER_HEALTH_URL", DEFAULT_PROBE_URL))


if __name__ == "__main__":  # pragma: no cover - run by the image's HEALTHCHECK
    sys.exit(main())
