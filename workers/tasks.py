"""The design task: only the job id travels through the broker; the job row holds the rest."""

from __future__ import annotations

import logging
import os
import socket
import threading
import time
from typing import Any

from celery.exceptions import Reject

from app.availability import is_unavailable
from workers.celery_app import JOIN_SHARDS_TASK, RUN_JOB_TASK, RUN_SHARD_TASK, celery_app

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
        from workers.liveness import exit_if_terminating

        exit_if_terminating(exc)
        log.exception("job %s: failed before it started", job_id)
        fail_unstarted(db, job_id, f"{type(exc).__name__}: {exc}", worker=worker)
        raise
    db_backoff(False)
    log.info("job %s: %s", job_id, outcome)
    return outcome


def _worker_name(task: Any) -> str:
    return f"{task.request.hostname or socket.gethostname()}/pid{os.getpid()}"


# Chord members must store a result (the chord counts them in the result backend).
@celery_app.task(name=RUN_SHARD_TASK, bind=True, ignore_result=False)
def run_job_shard(self, job_id: str, shard: int) -> str:  # type: ignore[no-untyped-def]
    """Run one shard of a sharded job (see ``workers/shards.py``). Never raises, so the
    chord's join always runs; an unreachable database requeues the message as for a job."""
    from workers.runtime import current_runtime
    from workers.shards import SHARD_FAILED, execute_shard

    settings, db = current_runtime()
    try:
        outcome = execute_shard(job_id, shard, db, settings, _worker_name(self))
    except Exception as exc:
        if is_unavailable(exc):
            wait = db_backoff(True)
            log.warning("job %s shard %d: database unreachable; requeued", job_id, shard)
            time.sleep(wait)
            raise Reject(f"database unreachable: {exc}", requeue=True) from exc
        from workers.liveness import exit_if_terminating

        exit_if_terminating(exc)
        log.exception("job %s shard %d: failed", job_id, shard)
        return SHARD_FAILED
    db_backoff(False)
    log.info("job %s shard %d: %s", job_id, shard, outcome)
    return outcome


@celery_app.task(name=JOIN_SHARDS_TASK, bind=True, max_retries=None)
def join_sharded_job(self, job_id: str, dispatch_claim: str) -> str:  # type: ignore[no-untyped-def]
    """Rank and summarise a sharded job; retries itself while a shard still runs (a
    duplicate shard message can complete the chord before the shard's real run ends)."""
    from workers.runtime import current_runtime
    from workers.shards import join_job

    settings, db = current_runtime()
    try:
        outcome = join_job(job_id, dispatch_claim, db, settings)
    except Exception as exc:
        if is_unavailable(exc):
            raise self.retry(countdown=DB_RETRY_MAX_S, exc=exc) from exc
        raise
    if outcome is None:
        raise self.retry(countdown=settings.heartbeat_interval_s)
    log.info("job %s join: %s", job_id, outcome)
    return outcome
