"""The sweeper: finds jobs that no worker will finish and hands them back to the queue.

- running (or cancelling) jobs whose heartbeat went stale: their worker died. Running ones are
  re-queued (the runner resumes them; stored structures are not duplicated), cancelling ones
  become cancelled, and a job that already used ``max_attempts`` fails.
- queued jobs that never reached the broker (the enqueue after the commit failed, marked by
  an empty ``enqueued_at``): enqueued again at every pass until the broker takes them.
- queued jobs whose message may have been lost (broker restarted, embedded server
  restarted): re-enqueued after ``requeue_queued_after_s``, then after twice as long, and so
  on, but at least every ``requeue_queued_max_s`` while the job stays queued. A duplicate
  message is harmless: the claim is atomic.

``enqueue_count`` counts the sends the broker took: a failed send is undone (and the job
marked unsent), so a broker outage does not stretch the back-off of the jobs it held. After
the first failed send of a pass the rest of the pass is not tried (the broker is down): they
are marked unsent and go at the next pass.

Every change is a conditional UPDATE, so several sweepers (API replicas) can run at once.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import timedelta

from sqlalchemy import select, update

from app.db import Database, utcnow
from app.models import CANCELLED, CANCELLING, FAILED, QUEUED, RUNNING, Job
from app.queue import mark_unsent
from app.settings import Settings
from workers.periodic import PeriodicThread

log = logging.getLogger(__name__)

Enqueue = Callable[[str], None]


def sweep(db: Database, settings: Settings, enqueue: Enqueue) -> dict[str, int]:
    """One pass; returns counts of what it did."""
    now = utcnow()
    stale_before = now - timedelta(seconds=settings.heartbeat_stale_after_s)
    counts = {
        "requeued_stale": 0,
        "cancelled_stale": 0,
        "failed_stale": 0,
        "enqueued_unsent": 0,
        "requeued_lost": 0,
        "send_failed": 0,
    }
    to_enqueue: list[str] = []
    with db.session() as s:
        stale = s.execute(
            select(Job.id, Job.status, Job.attempts, Job.heartbeat_at).where(
                Job.status.in_([RUNNING, CANCELLING]), Job.heartbeat_at < stale_before
            )
        ).all()
    for job_id, status, attempts, beat in stale:
        same = (Job.id == job_id, Job.status == status, Job.heartbeat_at == beat)
        with db.session() as s:
            if status == CANCELLING:
                values = {"status": CANCELLED, "finished_at": now, "claim": None}
                key = "cancelled_stale"
            elif attempts >= settings.max_attempts:
                values = {
                    "status": FAILED,
                    "finished_at": now,
                    "claim": None,
                    "error": f"worker lost {attempts} times; giving up",
                }
                key = "failed_stale"
            else:
                values = {
                    "status": QUEUED,
                    "claim": None,
                    "worker": None,
                    "enqueued_at": now,
                    "enqueue_count": Job.enqueue_count + 1,
                }
                key = "requeued_stale"
            if s.execute(update(Job).where(*same).values(**values)).rowcount:
                counts[key] += 1
                if key == "requeued_stale":
                    to_enqueue.append(job_id)

    with db.session() as s:
        never = list(
            s.scalars(
                select(Job.id).where(Job.status == QUEUED, Job.enqueued_at.is_(None)).limit(1000)
            )
        )
    for job_id in never:
        with db.session() as s:
            moved = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == QUEUED, Job.enqueued_at.is_(None))
                .values(enqueued_at=now, enqueue_count=Job.enqueue_count + 1)
            ).rowcount
        if moved:
            counts["enqueued_unsent"] += 1
            to_enqueue.append(job_id)

    base = settings.requeue_queued_after_s
    with db.session() as s:
        waiting = s.execute(
            select(Job.id, Job.enqueued_at, Job.enqueue_count).where(
                Job.status == QUEUED, Job.enqueued_at < now - timedelta(seconds=base)
            )
        ).all()
    for job_id, enqueued_at, n in waiting:
        # Exponential back-off: a long but healthy backlog is not flooded with duplicates;
        # capped, so a job whose re-send went astray is not left for hours.
        wait = min(base * 2 ** min(max(n - 1, 0), 6), settings.requeue_queued_max_s)
        if enqueued_at > now - timedelta(seconds=wait):
            continue
        with db.session() as s:
            moved = s.execute(
                update(Job)
                .where(Job.id == job_id, Job.status == QUEUED, Job.enqueued_at == enqueued_at)
                .values(enqueued_at=now, enqueue_count=Job.enqueue_count + 1)
            ).rowcount
        if moved:
            counts["requeued_lost"] += 1
            to_enqueue.append(job_id)

    broker_down = False
    for job_id in to_enqueue:
        if not broker_down:
            try:
                enqueue(job_id)
                continue
            except Exception:  # broker down: the job stays queued and is retried next pass
                log.exception("sweeper could not enqueue job %s", job_id)
                broker_down = True
        counts["send_failed"] += 1
        mark_unsent(db, job_id, undo_count=True)
    if any(counts.values()):
        log.info("sweeper: %s", counts)
    return counts


class Sweeper:
    """Runs :func:`sweep` every ``sweeper_interval_s`` on a daemon thread."""

    def __init__(self, db: Database, settings: Settings, enqueue: Enqueue) -> None:
        self.db = db
        self.settings = settings
        self.enqueue = enqueue
        self._thread = PeriodicThread("sweeper", settings.sweeper_interval_s, self._pass)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._thread.stop()

    def _pass(self) -> None:
        sweep(self.db, self.settings, self.enqueue)
