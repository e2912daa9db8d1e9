"""The design task: only the job id travels through the broker; the job row holds the rest."""

from __future__ import annotations

import logging
import os
import socket

from workers.celery_app import RUN_JOB_TASK, celery_app

log = logging.getLogger(__name__)


@celery_app.task(name=RUN_JOB_TASK, bind=True)
def run_design_job(self, job_id: str) -> str:  # type: ignore[no-untyped-def]
    """Run one design job to its end; returns what happened ("succeeded", "skipped", ...)."""
    from workers.runner import execute_job
    from workers.runtime import current_runtime

    settings, db = current_runtime()
    hostname = self.request.hostname or socket.gethostname()
    worker = f"{hostname}/pid{os.getpid()}"
    outcome = execute_job(job_id, db, settings, worker=worker)
    log.info("job %s: %s", job_id, outcome)
    return outcome
