"""Marathon's error shapes: 422 with field paths for invalid input, {"message"} otherwise."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer other than success, raised anywhere under the API and shaped here."""

    def __init__(
        self, status: int, message: str, *, headers: dict[str, str] | None = None, **extra: Any
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers
        self.extra = extra


def invalid(path: str, error: str) -> ApiError:
    """A 422 for one field, for checks that pydantic cannot express."""
    return ApiError(422, "Object is not valid", details=[{"path": path, "errors": [error]}])


def _path(location: Sequence[Any]) -> str:
    parts = [str(part) for part in location]
    if parts and parts[0] in ("body", "query", "path"):
        parts = parts[1:]
    return "/" + "/".join(parts)


def _wording(error: dict[str, Any]) -> str:
    kind = error.get("type", "")
    ctx = error.get("ctx") or {}
    if kind == "greater_than_equal":
        return f"must be ≥ {ctx.get('ge')}"
    if kind == "greater_than":
        return f"must be > {ctx.get('gt')}"
    if kind == "less_than_equal":
        return f"must be ≤ {ctx.get('le')}"
    if kind == "extra_forbidden":
        return "unknown field"
    if kind == "missing":
        return "is required"
    if kind == "json_invalid":
        return f"invalid JSON: {ctx.get('error', 'cannot parse')}"
    return str(error.get("msg", "is invalid")).removeprefix("Value error, ")


def validation_details(errors: Sequence[Any]) -> list[dict[str, Any]]:
    by_path: dict[str, list[str]] = {}
    for error in errors:
        by_path.setdefault(_path(error.get("loc", ())), []).append(_wording(error))
    return [{"path": path, "errors": messages} for path, messages in by_path.items()]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def on_invalid(_: Request, exc: RequestValidationError) -> JSONResponse:
        body = {"message": "Object is not valid", "details": validation_details(exc.errors())}
        return JSONResponse(body, status_code=422)

    @app.exception_handler(ApiError)
    async def on_api_error(_: Request, exc: ApiError) -> JSONResponse:
        body = {"message": exc.message, **exc.extra}
        return JSONResponse(body, status_code=exc.status, headers=exc.headers)

    @app.exception_handler(StarletteHTTPException)
    async def on_http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        return JSONResponse({"message": str(exc.detail)}, status_code=exc.status_code)

    @app.exception_handler(RecursionError)
    async def on_too_deep(_: Request, exc: RecursionError) -> JSONResponse:
        # Input nested deeper than any parser here can follow (JSON 10,000 levels deep).
        return JSONResponse({"message": "request nested too deeply"}, status_code=400)

    @app.exception_handler(Exception)
    async def on_crash(request: Request, exc: Exception) -> JSONResponse:
        # Logged in full here; the client gets one line, never a traceback.
        log.exception("unhandled error serving %s %s", request.method, request.url.path)
        return JSONResponse({"message": f"internal error: {type(exc).__name__}"}, 500)
