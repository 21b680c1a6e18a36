"""One frozen settings object, read from the environment (``DREAMCATCHER_*``).

Only the command line builds :class:`Settings` (when a command runs, never when the
parser is built). Library code reads nothing from the environment except the one
documented default of :meth:`DeltaClient.connect` (:func:`env_max_payload_bytes`).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

#: The largest payload accepted by the client, in bytes of serialized JSON.
DEFAULT_MAX_PAYLOAD_BYTES = 1 << 20


def env_max_payload_bytes(environ: dict[str, str] | None = None) -> int:
    """``$DREAMCATCHER_MAX_PAYLOAD_BYTES``, else :data:`DEFAULT_MAX_PAYLOAD_BYTES`."""
    env = os.environ if environ is None else environ
    return int(env.get("DREAMCATCHER_MAX_PAYLOAD_BYTES", DEFAULT_MAX_PAYLOAD_BYTES))


@dataclass(frozen=True)
class Settings:
    """Process-wide settings. Flags on the command line override these."""

    dsn: str | None = None
    world: str = "default"
    max_payload_bytes: int = DEFAULT_MAX_PAYLOAD_BYTES
    poll_interval: float = 1.0
    #: seconds a leader may send no heartbeat before a standby ends its session (0: never)
    leader_timeout: float = 30.0
    data_dir: str | None = None
    log_format: str = "text"

    @classmethod
    def from_env(cls, environ: dict[str, str] | None = None) -> Settings:
        env = dict(os.environ if environ is None else environ)
        return cls(
            dsn=env.get("DREAMCATCHER_DSN") or None,
            world=env.get("DREAMCATCHER_WORLD", "default"),
            max_payload_bytes=env_max_payload_bytes(env),
            poll_interval=float(env.get("DREAMCATCHER_POLL_INTERVAL", "1.0")),
            leader_timeout=float(env.get("DREAMCATCHER_LEADER_TIMEOUT", "30")),
            data_dir=env.get("DREAMCATCHER_DATA_DIR") or None,
            log_format=env.get("DREAMCATCHER_LOG_FORMAT", "text"),
        )
