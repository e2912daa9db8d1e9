"""Load models and reference tables when a worker starts, not on its first job.

Runs on a daemon thread, so a worker takes jobs at once; a job that starts meanwhile waits on
the same process-wide caches instead of loading them twice (oracles) or loads them itself.
"""

from __future__ import annotations

import logging
import threading

from app.settings import Settings

log = logging.getLogger(__name__)


def _warm() -> None:
    try:
        from ml.pipeline import warm_up

        log.info("warm-up done (seconds): %s", warm_up())
    except Exception:  # a job will load (and report) whatever failed here
        log.exception("warm-up failed")


def start_warm_up(settings: Settings) -> threading.Thread | None:
    if not settings.worker_warm_up:
        return None
    thread = threading.Thread(target=_warm, name="warm-up", daemon=True)
    thread.start()
    return thread
