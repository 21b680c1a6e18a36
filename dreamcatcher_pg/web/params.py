"""Reading a request's parameters: each one checked, every failure a 400 that names it."""

from __future__ import annotations

from dataclasses import dataclass

from starlette.requests import Request

from .db import Reader
from .errors import bad_request, not_found

#: The largest frame number (frames are bigint >= 0).
MAX_FRAME = 2**63 - 1
#: World names are at most 200 characters (the schema: sql/migrations/); keys and search text are bounded too.
MAX_WORLD = 200
MAX_TEXT = 4096
#: Page sizes: the default, and the most a request may ask for.
DEFAULT_LIMIT = 50
MAX_LIMIT = 500


def text(request: Request, name: str, *, required: bool = False, max_length: int = MAX_TEXT) -> str | None:
    """A string parameter; empty counts as absent."""
    value = request.query_params.get(name)
    if value is None or value == "":
        if required:
            raise bad_request(f"parameter {name!r} is required")
        return None
    if len(value) > max_length:
        raise bad_request(f"parameter {name!r} is longer than {max_length} characters")
    if "\x00" in value:
        raise bad_request(f"parameter {name!r} holds a NUL character")
    return value


def integer(
    request: Request,
    name: str,
    *,
    required: bool = False,
    low: int = 0,
    high: int = MAX_FRAME,
    default: int | None = None,
) -> int | None:
    """An integer parameter within ``low..high``."""
    raw = text(request, name, required=required, max_length=25)
    if raw is None:
        return default
    try:
        value = int(raw, 10)
    except ValueError:
        raise bad_request(f"parameter {name!r} must be an integer, not {raw!r}") from None
    if not low <= value <= high:
        raise bad_request(f"parameter {name!r} must be between {low} and {high}, not {value}")
    return value


def frame(request: Request, name: str = "frame", *, required: bool = True) -> int | None:
    return integer(request, name, required=required)


def limit(request: Request, *, default: int = DEFAULT_LIMIT, high: int = MAX_LIMIT) -> int:
    value = integer(request, "limit", low=1, high=high, default=default)
    assert value is not None
    return value


def world_name(request: Request) -> str:
    """The ``world`` parameter (a query parameter: a world's name may hold any character)."""
    world = text(request, "world", required=True, max_length=MAX_WORLD)
    assert world is not None
    return world


@dataclass(frozen=True, slots=True)
class WorldBounds:
    """A known world's frames: the first and last, and the last merged (None: none yet)."""

    world: str
    first_frame: int | None
    last_frame: int | None
    last_merged: int | None

    def require_merged(self, frame: int, name: str = "frame") -> int:
        """``frame`` when its state is final (at or below the last merged frame), else 404."""
        if self.last_merged is None:
            raise not_found("frame_not_merged", f"world {self.world!r} has no merged frame yet")
        if frame > self.last_merged:
            raise not_found(
                "frame_not_merged",
                f"{name} {frame} is not merged yet in world {self.world!r} (last merged: {self.last_merged})",
            )
        return frame


async def world_bounds(reader: Reader, request: Request) -> WorldBounds:
    """The ``world`` parameter, which must name a known world (a frame or an entity), else 404."""
    world = world_name(request)
    row = await reader.fetchrow("web_world_bounds", world)
    if row is None or not row["known"]:
        raise not_found("unknown_world", f"no world named {world!r} (it has no frames)")
    return WorldBounds(world, row["first_frame"], row["last_frame"], row["last_merged"])
