"""The queue port: what the API needs from whatever runs jobs (``workers/queues.py`` holds the
embedded and Celery implementations), and the job-row side of handing a job over. Nothing
here imports ``workers``, so the API's modules load without Celery."""

from __future__ import annotations

import logging
from typing import Protocol

from sqlalchemy import case, select, update

from app.db import Database
from app.models import QUEUED, Job

log = logging.getLogger(__name__)


class JobQueue(Protocol):
    def enqueue(self, job_id: str) -> None: ...

    def resend(self, job_id: str) -> None: ...

    def broker_ok(self) -> tuple[bool, str]: ...

    def workers_ok(self) -> tuple[bool, str]: ...

    def start(self) -> None: ...

    def stop(self) -> None: ...


def enqueue_quietly(q: JobQueue, job_id: str) -> bool:
    try:
        q.enqueue(job_id)
        return True
    except Exception:
        log.exception("could not enqueue job %s; the sweeper will retry", job_id)
        return False


def mark_unsent(db: Database, job_id: str, undo_count: bool = True) -> None:
    """The job's message did not reach the broker: the next sweep sends it (not only after
    the lost-message delay). ``undo_count``: the failed send was counted in
    ``enqueue_count``; take it back so the back-off counts only sends the broker took."""
    values: dict[str, object] = {"enqueued_at": None}
    if undo_count:
        values["enqueue_count"] = case((Job.enqueue_count > 0, Job.enqueue_count - 1), else_=0)
    try:
        with db.session() as s:
            s.execute(update(Job).where(Job.id == job_id, Job.status == QUEUED).values(**values))
    except Exception:  # database down too: the lost-message path still finds the job
        log.exception("could not mark job %s as not enqueued", job_id)


def queued_job_ids(db: Database) -> list[str]:
    with db.session() as s:
        return list(s.scalars(select(Job.id).where(Job.status == QUEUED).order_by(Job.created_at)))
