"""Errors as ``application/problem+json`` (RFC 9457): one handler per kind of failure.

Callers rely on: every error response of the API has this media type and the members
``type``, ``title``, ``status`` and ``detail`` (one line naming the problem); no traceback,
no request body and no value is ever echoed.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from rotator import errors

MEDIA_TYPE = "application/problem+json"

# Most specific first: the first class an error is an instance of gives its status.
_STATUS: tuple[tuple[type[errors.RotatorError], int], ...] = (
    (errors.AuthenticationFailed, 401),
    (errors.PermissionDenied, 403),
    (errors.NotFound, 404),
    (errors.AlreadyExists, 409),
    (errors.ConcurrentModification, 409),
    (errors.InvalidInput, 400),
    (errors.NotInitialized, 503),
    (errors.StoreUnavailable, 503),
    (errors.StoreFull, 503),
    (errors.AuditKeyUnavailable, 503),
    (errors.IntegrityError, 500),
    (errors.DecryptionError, 500),
    (errors.ConnectorError, 502),
    (errors.RotatorError, 500),
)


def status_of(exc: errors.RotatorError) -> int:
    for cls, status in _STATUS:
        if isinstance(exc, cls):
            return status
    return 500


def _slug(status: int) -> str:
    return {
        400: "bad-request",
        401: "unauthorized",
        403: "forbidden",
        404: "not-found",
        405: "method-not-allowed",
        409: "conflict",
        413: "payload-too-large",
        415: "unsupported-media-type",
        422: "invalid-request",
        429: "too-many-requests",
        500: "internal-error",
        502: "target-error",
        503: "unavailable",
    }.get(status, "error")


# Errors that share a status with others but that a client must tell apart: their own
# problem ``type`` (the status stays what _STATUS says). StoreFull is an operation failure
# (exit 1), unlike the store not answering (StoreUnavailable, exit 2 for the CLI).
_TYPES: tuple[tuple[type[errors.RotatorError], str], ...] = ((errors.StoreFull, "store-full"),)
PROBLEM_BASE = "https://rotator.dev/problems/"


def type_of(exc: errors.RotatorError) -> str | None:
    """The problem ``type`` slug of ``exc`` when it is not its status's (see _TYPES)."""
    return next((slug for cls, slug in _TYPES if isinstance(exc, cls)), None)


def problem(
    status: int,
    detail: str,
    *,
    title: str | None = None,
    headers: Mapping[str, str] | None = None,
    extra: dict[str, Any] | None = None,
    slug: str | None = None,
) -> JSONResponse:
    """A problem+json response. ``detail`` must already be safe to show (no value).
    ``slug``: the problem type's last segment (default the status's)."""
    slug = slug or _slug(status)
    body: dict[str, Any] = {
        "type": PROBLEM_BASE + slug,
        "title": title or slug.replace("-", " "),
        "status": status,
        "detail": detail.splitlines()[0] if detail else _slug(status).replace("-", " "),
    }
    if extra:
        body.update(extra)
    return JSONResponse(body, status_code=status, media_type=MEDIA_TYPE, headers=headers)


def _validation_detail(exc: RequestValidationError) -> str:
    """Where and what, from the first error; never the rejected input (it may be a value)."""
    errs = exc.errors()
    if not errs:
        return "invalid request"
    first = errs[0]
    loc = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or "request"
    return f"{loc}: {first.get('msg', 'invalid')}"


# What any /v1 operation may answer besides its own statuses: bad input, no or a refused
# token, a denial or a missing name, a conflict, a body too large, schema validation, the
# rate limit, the store unavailable. Documented on every operation so the OpenAPI document
# is honest about them (clients and schemathesis rely on it).
_COMMON_V1 = (400, 401, 403, 404, 409, 413, 422, 429, 503)

PROBLEM_SCHEMA: dict[str, Any] = {
    "title": "Problem",
    "description": "An error (RFC 9457 problem+json).",
    "type": "object",
    "properties": {
        "type": {"type": "string"},
        "title": {"type": "string"},
        "status": {"type": "integer"},
        "detail": {"type": "string"},
    },
    "required": ["type", "title", "status", "detail"],
}


def _document_problems(schema: dict[str, Any]) -> dict[str, Any]:
    """Every error response of every operation is problem+json (FastAPI documents its 422
    as application/json with its own shape; ours is a Problem), and /v1 operations list
    the statuses of :data:`_COMMON_V1`."""
    schema.setdefault("components", {}).setdefault("schemas", {})["Problem"] = PROBLEM_SCHEMA
    ref = {"$ref": "#/components/schemas/Problem"}
    for path, ops in schema.get("paths", {}).items():
        for op in ops.values():
            if not isinstance(op, dict) or "responses" not in op:
                continue
            responses = op["responses"]
            if path.startswith("/v1/"):
                for status in _COMMON_V1:
                    responses.setdefault(str(status), {"description": _slug(status)})
            for status, response in responses.items():
                if status.isdigit() and int(status) >= 400:
                    response["content"] = {"application/problem+json": {"schema": ref}}
    schema["components"]["schemas"].pop("HTTPValidationError", None)
    schema["components"]["schemas"].pop("ValidationError", None)
    return schema


def install(app: FastAPI) -> None:
    """Register the handlers on ``app``, and document them in its OpenAPI schema."""
    make_schema = app.openapi

    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            app.openapi_schema = _document_problems(make_schema())
        return app.openapi_schema

    app.openapi = openapi  # type: ignore[method-assign]

    @app.exception_handler(errors.RotatorError)
    async def _rotator_error(request: Request, exc: errors.RotatorError) -> JSONResponse:
        status = status_of(exc)
        headers = {"WWW-Authenticate": "Bearer"} if status == 401 else None
        detail = str(exc) if status < 500 or status in (502, 503) else type(exc).__name__
        return problem(status, detail, headers=headers, slug=type_of(exc))

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        return problem(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException) -> JSONResponse:
        return problem(exc.status_code, str(exc.detail), headers=exc.headers)

    @app.exception_handler(Exception)
    async def _unexpected(request: Request, exc: Exception) -> JSONResponse:
        return problem(500, "internal error")
