"""Error responses: every 422 names the offending field as a dotted path (``body.method``)."""

from __future__ import annotations

import logging
from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError

from app.availability import UNAVAILABLE_ERRORS, Unavailable

log = logging.getLogger(__name__)


class FieldError(Exception):
    """A request the service refuses, naming where: ``loc`` like ("body", "params", "steps")."""

    def __init__(self, loc: Sequence[str | int], msg: str, type_: str = "value_error") -> None:
        super().__init__(f"{'.'.join(map(str, loc))}: {msg}")
        self.items = [error_item(loc, msg, type_)]

    @classmethod
    def from_validation(cls, exc: ValidationError, prefix: Sequence[str | int]) -> FieldError:
        """Re-root a pydantic error (e.g. of a method's params) under ``prefix``."""
        err = cls(prefix, "invalid")
        err.items = [error_item([*prefix, *e["loc"]], e["msg"], e["type"]) for e in exc.errors()]
        return err


class Conflict(Exception):
    """409: the request clashes with the resource's state."""


class NotFound(Exception):
    """404: no such resource for this key."""


class TooMany(Exception):
    """429: a rate limit or quota of the calling key; ``retry_after`` in seconds."""

    def __init__(self, message: str, retry_after: int) -> None:
        super().__init__(message)
        self.retry_after = max(int(retry_after), 1)


class BadRequest(Exception):
    """400: a malformed header (e.g. an empty Idempotency-Key)."""


def error_item(loc: Sequence[str | int], msg: str, type_: str) -> dict[str, Any]:
    loc = list(loc)
    return {"field": ".".join(str(p) for p in loc), "loc": loc, "msg": msg, "type": type_}


def loc_from_dotted(field: str) -> list[str | int]:
    """``constraints.templates.0`` -> ["body", "constraints", "templates", 0]."""
    parts: list[str | int] = [int(p) if p.isdigit() else p for p in field.split(".") if p]
    return parts if parts[:1] == ["body"] else ["body", *parts]


def install_error_handlers(app: FastAPI) -> None:
    @app.exception_handler(RequestValidationError)
    async def _validation(_: Request, exc: RequestValidationError) -> JSONResponse:
        # The echoed "input" is left out: it can be a whole (large) request body.
        items = [error_item(e["loc"], e["msg"], e["type"]) for e in exc.errors()]
        return JSONResponse({"detail": items}, status_code=422)

    @app.exception_handler(FieldError)
    async def _field(_: Request, exc: FieldError) -> JSONResponse:
        return JSONResponse({"detail": exc.items}, status_code=422)

    @app.exception_handler(Conflict)
    async def _conflict(_: Request, exc: Conflict) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=409)

    @app.exception_handler(NotFound)
    async def _not_found(_: Request, exc: NotFound) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=404)

    @app.exception_handler(BadRequest)
    async def _bad_request(_: Request, exc: BadRequest) -> JSONResponse:
        return JSONResponse({"detail": str(exc)}, status_code=400)

    @app.exception_handler(TooMany)
    async def _too_many(_: Request, exc: TooMany) -> JSONResponse:
        return JSONResponse(
            {"detail": str(exc)},
            status_code=429,
            headers={"Retry-After": str(exc.retry_after)},
        )

    retry_after = str(app.state.services.settings.unavailable_retry_after_s)

    async def _unavailable(request: Request, exc: Exception) -> JSONResponse:
        # The database or the broker is down: the client may retry; nothing was half-stored
        # (every write is one transaction). The driver's message stays in the log only.
        if isinstance(exc, Unavailable):
            detail = exc.detail
        else:
            detail = "database temporarily unavailable; retry later"
        log.warning("%s %s: 503: %s", request.method, request.url.path, exc)
        return JSONResponse(
            {"detail": detail},
            status_code=503,
            headers={"Retry-After": retry_after},
        )

    async def _internal(request: Request, exc: Exception) -> JSONResponse:
        # A bug: still a JSON body (clients parse one), and the traceback goes to the log.
        log.error("%s %s: unhandled error", request.method, request.url.path, exc_info=exc)
        return JSONResponse({"detail": "internal error"}, status_code=500)

    app.add_exception_handler(Exception, _internal)
    app.add_exception_handler(Unavailable, _unavailable)
    for cls in UNAVAILABLE_ERRORS:
        app.add_exception_handler(cls, _unavailable)
