"""The design task: only the job id travels through the broker; the job row holds the rest."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time

from celery.exceptions import Reject

from app.availability import is_unavailable
from workers.celery_app import RUN_JOB_TASK, celery_app

log = logging.getLogger(__name__)

# Consecutive "database unreachable" outcomes in this process: the back-off before the
# message goes back to the broker grows 1, 2, 4, 8 s and stays at DB_RETRY_MAX_S, so jobs
# start within that long of the database's return.
DB_RETRY_MAX_S = 8.0
_failures = 0
_failures_lock = threading.Lock()


def db_backoff(failed: bool) -> float:
    """Record an outcome; the seconds to wait before handing a message back."""
    global _failures
    with _failures_lock:
        _failures = _failures + 1 if failed else 0
        n = _failures
    return 0.0 if not failed else min(2.0 ** (n - 1), DB_RETRY_MAX_S)


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_design_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run one design job to its end; returns what happened ("succeeded", "skipped", ...).

    While the database is unreachable the message is never acknowledged away: the task waits
    (back-off) and rejects it with requeue, so the broker hands it out again. Any other error
    before the job started fails the job with that error instead of leaving it queued.
    """
    from workers.runtime import current_runtime

    settings, db = current_runtime()
    hostname = self.request.hostname or socket.gethostname()
    worker = f"{hostname}/pid{os.getpid()}"
    try:
        from workers.runner import execute_job

        outcome = execute_job(job_id, db, settings, worker=worker)
    except Exception as exc:
        if is_unavailable(exc):
            wait = db_backoff(True)
            log.warning("job %s: database unreachable; requeued in %.0f s: %s", job_id, wait, exc)
            time.sleep(wait)
            raise Reject(f"database unreachable: {exc}", requeue=True) from exc
        from workers.lease import fail_unstarted

        log.exception("job %s: failed before it started", job_id)
        fail_unstarted(db, job_id, f"{type(exc).__name__}: {exc}", worker=worker)
        raise
    db_backoff(False)
    log.info("job %s: %s", job_id, outcome)
    return outcome
