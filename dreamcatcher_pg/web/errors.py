"""The inspector's errors: every one is a JSON body ``{"error": {"code", "message"}}``.

Bad input is a 4xx that says what was wrong; nothing a request sends can turn
into a 500 with a traceback (the app's last handler logs an unexpected error
and answers a bare 500 JSON).
"""

from __future__ import annotations

from typing import Any

import orjson
from starlette.responses import Response


class ApiError(Exception):
    """An answer other than 200: ``status``, a stable ``code``, a message for people."""

    def __init__(self, status: int, code: str, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.code = code
        self.message = message


class JSONResponse(Response):
    """JSON through orjson (datetimes as ISO 8601)."""

    media_type = "application/json"

    def render(self, content: Any) -> bytes:
        return orjson.dumps(content)


def error_response(status: int, code: str, message: str) -> JSONResponse:
    return JSONResponse({"error": {"code": code, "message": message}}, status_code=status)


def bad_request(message: str) -> ApiError:
    return ApiError(400, "bad_request", message)


def not_found(code: str, message: str) -> ApiError:
    return ApiError(404, code, message)
