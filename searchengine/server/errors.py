"""How failures become HTTP answers: JSON `{"detail": message}`, the right status, never a trace.

Library errors keep their message (it already says what to do); the class decides the status.
"""

from __future__ import annotations

import logging

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from searchengine.errors import (
    ImageDecodeError,
    InvalidInputError,
    NotIndexedError,
    SearchEngineError,
)
from searchengine.paths import display_path

log = logging.getLogger(__name__)


class ApiError(Exception):
    """An answer the server decides itself (unknown id, oversize upload, bad token)."""

    def __init__(self, status: int, message: str, *, headers: dict[str, str] | None = None):
        super().__init__(message)
        self.status = status
        self.message = message
        self.headers = headers


def status_of(error: SearchEngineError) -> int:
    """HTTP status of a library error: bad input 400, undecodable image 422, nothing indexed yet
    409 (the home's state, not the request, is missing something), anything else 500."""
    if isinstance(error, InvalidInputError):
        return 400
    if isinstance(error, ImageDecodeError):
        return 422
    if isinstance(error, NotIndexedError):
        return 409
    return 500


def error_response(status: int, message: str,
                   headers: dict[str, str] | None = None) -> JSONResponse:
    # a message may name a file whose name is not UTF-8: show its odd bytes as \xNN
    return JSONResponse({"detail": display_path(message)}, status_code=status, headers=headers)


def install_error_handlers(app: FastAPI) -> None:
    """Register the handlers that turn every failure into `{"detail": message}`."""

    @app.exception_handler(ApiError)
    async def _api(_request: Request, error: ApiError) -> JSONResponse:
        return error_response(error.status, error.message, error.headers)

    @app.exception_handler(SearchEngineError)
    async def _library(_request: Request, error: SearchEngineError) -> JSONResponse:
        status = status_of(error)
        if status >= 500:
            log.error("%s: %s", type(error).__name__, error)
        return error_response(status, str(error))

    @app.exception_handler(RequestValidationError)
    async def _validation(_request: Request, error: RequestValidationError) -> JSONResponse:
        problems = [_describe(item) for item in error.errors()]
        return JSONResponse(
            {"detail": "; ".join(problems), "errors": [_plain(item) for item in error.errors()]},
            status_code=422,
        )

    @app.exception_handler(StarletteHTTPException)
    async def _http(_request: Request, error: StarletteHTTPException) -> JSONResponse:
        message = error.detail if isinstance(error.detail, str) else "request failed"
        if error.status_code == 404 and message == "Not Found":
            message = "no such endpoint; see /openapi.json for the API"
        return error_response(error.status_code, message, getattr(error, "headers", None))

    @app.exception_handler(Exception)
    async def _unexpected(_request: Request, error: Exception) -> JSONResponse:
        log.exception("unexpected error while answering a request")
        return error_response(500, f"internal error ({type(error).__name__}); see the server log")


def _describe(item: dict) -> str:
    where = ".".join(str(part) for part in item.get("loc", ()) if part != "body")
    return f"{where}: {item.get('msg', 'invalid')}" if where else str(item.get("msg", "invalid"))


def _plain(item: dict) -> dict:
    """A validation error without the pieces that may not be JSON (exception objects in ctx)."""
    return {"loc": list(item.get("loc", ())), "msg": item.get("msg"), "type": item.get("type")}
