"""Which settings and database the task code uses in this process.

A Celery worker process uses the environment's settings. ``matdesign serve`` on the embedded
default installs the settings and database of its app, so the task code run by its worker
threads writes to the same database the API reads.
"""

from __future__ import annotations

import threading

from app.db import Database, get_database
from app.settings import Settings, get_settings

_LOCK = threading.Lock()
_RUNTIME: tuple[Settings, Database] | None = None


def install_runtime(settings: Settings, db: Database) -> None:
    global _RUNTIME
    with _LOCK:
        _RUNTIME = (settings, db)


def clear_runtime() -> None:
    global _RUNTIME
    with _LOCK:
        _RUNTIME = None


def current_runtime() -> tuple[Settings, Database]:
    with _LOCK:
        if _RUNTIME is not None:
            return _RUNTIME
    settings = get_settings()
    return settings, get_database(settings)
