"""The API's one error shape, {"error": {"code", "message"}}, and the handlers that produce it.

FastAPI's own errors (a path that does not exist, a method not allowed, a query value or body
that does not fit its model) and the engine's (NotFound, StoreError, ProfileError) all leave
in this shape, with a message naming the field; nothing but a bug gives a 500.
"""

import logging
from typing import Any, Dict, Optional, Sequence

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException

from garrison.detect.judge.profiles import ProfileError
from garrison.detect.state.store import NotFound, StoreError
from garrison.detect.validation import field_path, message

log = logging.getLogger("garrison.api")


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str):
        super().__init__(message)
        self.status, self.code, self.message = status, code, message


def error_response(status: int, code: str, message: str) -> JSONResponse:
    headers: Optional[Dict[str, str]] = None
    if status == 401:
        headers = {"WWW-Authenticate": 'Bearer realm="garrison-detect"'}
    return JSONResponse({"error": {"code": code, "message": message}}, status, headers=headers)


def describe_request_errors(errors: Sequence[Dict[str, Any]]) -> str:
    """One line: the first problem, naming where it is ("query parameter startTime: ...")."""
    first = errors[0]
    where, *path = first.get("loc", ()) or ("body",)
    place = {"query": "query parameter ", "path": "path parameter ", "header": "header "}.get(str(where), "")
    name = field_path(path) if path else ("the body" if where == "body" else str(where))
    more = f" (and {len(errors) - 1} more)" if len(errors) > 1 else ""
    return f"{place}{name}: {message(first)}{more}"


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api_error(request: Request, exc: ApiError):
        return error_response(exc.status, exc.code, exc.message)

    @app.exception_handler(NotFound)
    async def _not_found(request: Request, exc: NotFound):
        return error_response(404, "ResourceNotFound", str(exc))

    @app.exception_handler(StoreError)
    @app.exception_handler(ProfileError)
    async def _invalid(request: Request, exc: Exception):
        return error_response(400, "InvalidRequest", str(exc))

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errors = exc.errors()
        if errors and errors[0].get("type") == "json_invalid":
            return error_response(400, "InvalidJson", "the body is not JSON")
        return error_response(400, "InvalidRequest", describe_request_errors(errors))

    @app.exception_handler(HTTPException)
    async def _http(request: Request, exc: HTTPException):
        if exc.status_code == 404:
            return error_response(404, "NotFound", f"no such path {request.url.path}")
        if exc.status_code == 405:
            return error_response(405, "MethodNotAllowed", f"{request.method} is not allowed on {request.url.path}")
        return error_response(exc.status_code, "InvalidRequest", str(exc.detail))

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        log.error("API %s %s failed", request.method, request.url.path, exc_info=exc)
        return error_response(500, "InternalError", "internal error (see the engine log)")
