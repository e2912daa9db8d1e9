"""Which settings and database the task code uses on the current thread.

A Celery worker process uses the environment's settings. The worker threads of an embedded
server (``matdesign serve``) are bound to the settings and database of their app, so the same
task code writes where that API reads (and two apps in one process stay apart).
"""

from __future__ import annotations

import threading

from app.db import Database, get_database
from app.settings import Settings, get_settings

_LOCAL = threading.local()


def bind_thread(settings: Settings, db: Database, stopping: threading.Event | None = None) -> None:
    _LOCAL.runtime = (settings, db)
    _LOCAL.stopping = stopping


def interrupted() -> bool:
    """Whether this thread's server is shutting down (the job is left for a resume)."""
    stopping = getattr(_LOCAL, "stopping", None)
    return bool(stopping is not None and stopping.is_set())


def current_runtime() -> tuple[Settings, Database]:
    bound = getattr(_LOCAL, "runtime", None)
    if bound is not None:
        return bound  # type: ignore[no-any-return]
    settings = get_settings()
    return settings, get_database(settings)
