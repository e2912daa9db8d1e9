"""Error responses: every 422 names the offending field as a dotted path (``body.method``)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from pydantic import ValidationError


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
