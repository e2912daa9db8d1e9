"""Claiming a job and holding it: a claim token, a heartbeat, and the cancel flag.

A job is claimed with one conditional UPDATE (queued, or running with a stale heartbeat), so
duplicate queue messages are harmless: only one worker wins. Every later write of the runner
names the claim token; a worker whose job was taken over (its heartbeat went stale and the
sweeper re-queued the job) finds its writes refused and stops (:class:`LostClaim`).
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal

from sqlalchemy import func, or_, select, update

from app.db import Database, utcnow
from app.models import CANCELLING, FAILED, QUEUED, RUNNING, Job, JobShard
from app.settings import Settings
from ml.methods.base import Cancelled
from workers.periodic import PeriodicThread
from workers.runtime import interrupted

log = logging.getLogger(__name__)


class LostClaim(Exception):
    """Another worker owns the job now; this one must stop without writing."""


class Interrupted(LostClaim):
    """The server is shutting down: stop without finishing; the job is resumed later."""


class JobTimeLimit(Exception):
    """The job ran past ``job_time_limit_s``."""


@dataclass
class Claimed:
    job: Job
    claim: str


def stale_before(settings: Settings, now: datetime | None = None) -> datetime:
    """Heartbeats older than this are a dead worker's."""
    return (now or utcnow()) - timedelta(seconds=settings.heartbeat_stale_after_s)


def take_claim(
    session: Any,
    table: type[Job] | type[JobShard],
    *where: Any,
    status: str,
    token: str,
    worker: str,
    now: datetime,
) -> bool:
    """One conditional UPDATE of the job or shard row matching ``where``: running under this
    claim token and worker, heartbeat now, one more attempt, the first start kept and the last
    error cleared. False when no row matched (another worker has it, or it is finished)."""
    taken = session.execute(
        update(table)
        .where(*where)
        .values(
            status=status,
            claim=token,
            worker=worker[:255],
            heartbeat_at=now,
            attempts=table.attempts + 1,
            started_at=func.coalesce(table.started_at, now),
            error=None,
        )
    ).rowcount
    return bool(taken)


def claim_job(
    db: Database,
    settings: Settings,
    job_id: str,
    worker: str,
    owner_gone: Callable[[str | None, str], bool] | None = None,
    token: str | None = None,
) -> Claimed | None:
    """Take the job if it is queued or its worker died; None when someone else has it.

    A worker counts as dead when its heartbeat went stale, or (``owner_gone``, for a
    redelivered message) when the check, given the owner and its claim token, says the
    process that claimed it is gone. ``token``: this claim's token (default: a new one).
    """
    token = token or str(uuid.uuid4())
    claimed = _claim(db, settings, job_id, worker, None, token)
    if claimed is not None or owner_gone is None:
        return claimed
    with db.session() as s:
        row = s.execute(select(Job.status, Job.worker, Job.claim).where(Job.id == job_id)).first()
    if row is None or row.status != RUNNING or row.claim is None:
        return None
    if not owner_gone(row.worker, row.claim):
        return None
    log.warning("job %s: owner %s is gone; taking the job over at once", job_id, row.worker)
    return _claim(db, settings, job_id, worker, row.claim, token)


def _claim(
    db: Database,
    settings: Settings,
    job_id: str,
    worker: str,
    from_claim: str | None,
    token: str,
) -> Claimed | None:
    now = utcnow()
    stale = stale_before(settings, now)
    with db.session() as s:
        if from_claim is not None:  # take over exactly that (dead) owner's lease
            claimable = (Job.status == RUNNING) & (Job.claim == from_claim)
        else:
            claimable = or_(
                Job.status == QUEUED,
                (Job.status == RUNNING) & or_(Job.heartbeat_at.is_(None), Job.heartbeat_at < stale),
            )
        if not take_claim(
            s, Job, Job.id == job_id, claimable, status=RUNNING, token=token, worker=worker, now=now
        ):
            return None
        job = s.scalars(select(Job).where(Job.id == job_id)).one()
    return Claimed(job=job, claim=token)


def fail_unstarted(db: Database, job_id: str, error: str, worker: str | None = None) -> bool:
    """Fail a job whose execution raised before its method ran (it would stay queued, or
    running under ``worker``, until the sweeper's long back-off). True if it was failed."""
    states = [Job.status == QUEUED]
    if worker:
        states.append((Job.status == RUNNING) & (Job.worker == worker))
    with db.session() as s:
        return bool(
            s.execute(
                update(Job)
                .where(Job.id == job_id, or_(*states))
                .values(status=FAILED, finished_at=utcnow(), claim=None, error=error[:4000])
            ).rowcount
        )


class JobLease:
    """The running job's lease: heartbeat thread, guarded writes and the cancel check.

    The same for a shard (``workers.shards.ShardLease`` writes to the shard's row instead)."""

    def __init__(self, db: Database, settings: Settings, job_id: str, claim: str) -> None:
        self.db = db
        self.settings = settings
        self.job_id = job_id
        self.claim = claim
        self.deadline = time.monotonic() + settings.job_time_limit_s
        self.lost = threading.Event()
        self._heartbeat = PeriodicThread(
            f"heartbeat-{job_id[:8]}", settings.heartbeat_interval_s, self._beat, 5.0
        )
        self._status_checked = 0.0
        self._status: str = RUNNING

    # --- guarded writes -------------------------------------------------------------------
    def write(self, **values: Any) -> str:
        """Update the job row (plus heartbeat) if still ours; returns its status."""
        with self.db.session() as s:
            status = self.write_in(s, **values)
        return status

    def write_in(self, session: Any, **values: Any) -> str:
        """As :meth:`write`, inside the caller's transaction (atomic with its other writes)."""
        done = session.execute(
            update(Job)
            .where(Job.id == self.job_id, Job.claim == self.claim)
            .values(heartbeat_at=utcnow(), **values)
        ).rowcount
        if not done:
            self.lost.set()
            raise LostClaim(self.job_id)
        status = session.scalar(select(Job.status).where(Job.id == self.job_id))
        self._status = status
        self._status_checked = time.monotonic()
        return status

    def finish(self, status: str, **values: Any) -> str:
        """Write the final ``status`` (finished now, with ``values`` such as the error);
        returns ``status``."""
        self.write(status=status, finished_at=utcnow(), **values)
        return status

    # --- holding the claim while the work runs --------------------------------------------
    def hold(self, run: Callable[[], str], *, lost: str, interrupted: str | None = None) -> str:
        """``run()`` with the heartbeat beating; its outcome, or "lost" when another worker
        took the claim over and "interrupted" on shutdown (the work is resumed later), each
        logged as a warning with the message given for it."""
        self.start()
        try:
            return run()
        except Interrupted:
            if interrupted:
                log.warning(interrupted)
            return "interrupted"
        except LostClaim:
            log.warning(lost)
            return "lost"
        finally:
            self.stop()

    # --- heartbeat ------------------------------------------------------------------------
    def start(self) -> None:
        self._heartbeat.start()

    def stop(self) -> None:
        self._heartbeat.stop()

    def _beat(self) -> str | None:
        """One heartbeat; ``STOP`` once the lease is lost. Other errors (a
        database hiccup) propagate to the periodic thread, which logs them and beats again."""
        try:
            self.write()
        except LostClaim:
            log.warning("job %s: lease lost, stopping", self.job_id)
            return PeriodicThread.STOP
        return None

    # --- cooperative checks ---------------------------------------------------------------
    def checkpoint(self) -> None:
        """Raise if the job must stop: lease lost, shutdown, cancel requested, or time limit."""
        if self.lost.is_set():
            raise LostClaim(self.job_id)
        if interrupted():
            raise Interrupted(self.job_id)
        if time.monotonic() > self.deadline:
            raise JobTimeLimit(f"job ran longer than {self.settings.job_time_limit_s:g} s")
        if self.cancel_requested():
            raise Cancelled()

    def cancel_requested(self) -> bool:
        """Whether the job was asked to stop (reads the row at most every poll interval)."""
        now = time.monotonic()
        if now - self._status_checked >= self.settings.cancel_poll_interval_s:
            with self.db.session() as s:
                row = s.execute(select(Job.status, Job.claim).where(Job.id == self.job_id)).first()
            self._status_checked = now
            if row is None or row.claim != self.claim:
                self.lost.set()
                raise LostClaim(self.job_id)
            self._status = row.status
        return self._status == CANCELLING

    def stop_reason(self) -> Literal["time limit", "cancelled"]:
        """Why the method stopped at :meth:`should_cancel`: raises :class:`LostClaim` when the
        lease was lost and :class:`Interrupted` on shutdown (neither is the job's end)."""
        if self.lost.is_set():
            raise LostClaim(self.job_id) from None
        if interrupted():
            raise Interrupted(self.job_id) from None
        if time.monotonic() > self.deadline:
            return "time limit"
        return "cancelled"

    def should_cancel(self) -> bool:
        """For ``MethodContext.should_cancel``: true on cancel, lease loss or time limit (the
        runner tells them apart afterwards)."""
        if self.lost.is_set() or interrupted() or time.monotonic() > self.deadline:
            return True
        try:
            return self.cancel_requested()
        except LostClaim:
            return True
