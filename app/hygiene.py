"""Input the database cannot store, refused at the boundary.

Postgres rejects NUL characters in text and JSON, NaN and infinities in JSON, and strings
that are not valid UTF-8 (lone surrogates from ``"\\ud800"`` escapes). Such input passes
pydantic, so it is checked here: bodies and queries get 422 naming the field, a path with
such characters 404 (no resource can have that id).
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Sequence
from typing import Any
from urllib.parse import parse_qsl, unquote

from starlette.types import ASGIApp, Receive, Scope, Send

from app.errors import FieldError, error_item


def unstorable_text(s: str) -> str | None:
    """Why ``s`` cannot be stored, or None."""
    if "\x00" in s:
        return "contains a NUL character"
    try:
        s.encode("utf-8")
    except UnicodeEncodeError:
        return "is not valid UTF-8 (lone surrogate)"
    return None


def _problems(obj: Any, loc: list[str | int]) -> Iterator[tuple[list[str | int], str]]:
    if isinstance(obj, float):
        if not math.isfinite(obj):
            yield loc, "must be a finite number (NaN and infinities are not accepted)"
    elif isinstance(obj, str):
        why = unstorable_text(obj)
        if why:
            yield loc, f"text {why}"
    elif isinstance(obj, dict):
        for k, v in obj.items():
            why = unstorable_text(str(k))
            if why:
                yield [*loc, str(k).encode("utf-8", "backslashreplace").decode()], f"key {why}"
                continue
            yield from _problems(v, [*loc, k])
    elif isinstance(obj, list | tuple):
        for i, v in enumerate(obj):
            yield from _problems(v, [*loc, i])


def check_storable(obj: Any, loc: Sequence[str | int] = ("body",)) -> None:
    """Raise a 422 :class:`FieldError` naming every non-finite number or unstorable text."""
    found = list(_problems(obj, list(loc)))
    if found:
        err = FieldError(found[0][0], found[0][1])
        err.items = [error_item(where, msg, "value_error") for where, msg in found]
        raise err


class UnstorableInputMiddleware:
    """Path with NUL or undecodable characters -> 404; such a query parameter -> 422."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        raw_path = scope.get("raw_path") or scope.get("path", "").encode()
        path = unquote(raw_path.decode("latin-1"), errors="surrogateescape")
        if unstorable_text(path) or "\x00" in scope.get("path", ""):
            await _send_json(send, 404, {"detail": "no such resource"})
            return
        query = scope.get("query_string", b"").decode("latin-1")
        items = []
        for name, value in parse_qsl(query, keep_blank_values=True, errors="surrogateescape"):
            why = unstorable_text(value) or unstorable_text(name)
            if why:
                shown = name.encode("utf-8", "backslashreplace").decode()
                items.append(error_item(["query", shown], f"text {why}", "value_error"))
        if items:
            await _send_json(send, 422, {"detail": items})
            return
        await self.app(scope, receive, send)


async def _send_json(send: Send, status: int, body: dict[str, Any]) -> None:
    data = json.dumps(body).encode()
    await send(
        {
            "type": "http.response.start",
            "status": status,
            "headers": [
                (b"content-type", b"application/json"),
                (b"content-length", str(len(data)).encode()),
            ],
        }
    )
    await send({"type": "http.response.body", "body": data})
