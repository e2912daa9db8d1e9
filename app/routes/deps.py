"""Shared route dependencies: the app's settings, database and queue."""

from __future__ import annotations

from dataclasses import dataclass, field

from fastapi import Request

from app.db import Database
from app.page_cache import PageCache
from app.queue import JobQueue
from app.settings import Settings


@dataclass
class Services:
    settings: Settings
    db: Database
    queue: JobQueue
    pages: PageCache = field(default_factory=lambda: PageCache(0))


def services(request: Request) -> Services:
    return request.app.state.services  # type: ignore[no-any-return]


def page_limit(limit: int | None, svc: Services) -> int:
    from app.errors import FieldError

    if limit is None:
        return svc.settings.page_limit_default
    if limit < 1 or limit > svc.settings.page_limit_max:
        raise FieldError(["query", "limit"], f"must be between 1 and {svc.settings.page_limit_max}")
    return limit
