"""Error responses every route may give, for the OpenAPI schema (``responses=`` of routes)."""

from __future__ import annotations

from typing import Any

from app.schemas import MessageOut, ValidationErrorOut

_RETRY_AFTER = {
    "Retry-After": {"description": "Seconds to wait before retrying", "schema": {"type": "integer"}}
}

UNAVAILABLE: dict[int | str, dict[str, Any]] = {
    503: {
        "model": MessageOut,
        "description": "Database or broker unreachable (or scoring busy); retry after the "
        "`Retry-After` header's seconds",
        "headers": _RETRY_AFTER,
    }
}
RATE_LIMITED: dict[int | str, dict[str, Any]] = {
    429: {
        "model": MessageOut,
        "description": "Rate limit (`MATDESIGN_RATE_LIMIT`, per key) or quota exceeded; retry "
        "after `Retry-After` seconds",
        "headers": _RETRY_AFTER,
    }
}
UNAUTHORIZED: dict[int | str, dict[str, Any]] = {
    401: {"model": MessageOut, "description": "Missing or invalid X-API-Key"}
}
INVALID: dict[int | str, dict[str, Any]] = {
    422: {"model": ValidationErrorOut, "description": "Invalid field (named in `field`)"}
}
NOT_FOUND: dict[int | str, dict[str, Any]] = {
    404: {"model": MessageOut, "description": "No such resource for this key"}
}
# Routes with a JSON body.
UNPARSEABLE: dict[int | str, dict[str, Any]] = {
    400: {"model": MessageOut, "description": "The body could not be parsed"},
    413: {"model": MessageOut, "description": "Request body too large"},
}
# Every route behind an API key.
KEYED: dict[int | str, dict[str, Any]] = {**UNAUTHORIZED, **RATE_LIMITED, **UNAVAILABLE}
