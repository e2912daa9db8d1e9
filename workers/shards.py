"""Sharded jobs: a large job split into shard tasks on queue ``gpu``, joined by a chord.

A Celery job of at least ``shard_min_candidates`` candidates (and no stability limit, whose
over-generation needs one sequential loop) is not run by the task that claims it. That task,
the *coordinator*, cuts the method's candidate stream into index ranges of
``shard_candidates``, records one ``job_shards`` row per range and sends
``chord(group(shard tasks), join)`` on the job's queue, then returns.

- A **shard** runs the method with the job's own request and seed, so the stream is the one
  an unsharded run sees, and evaluates and stores only the candidates in its range (the
  method's generation is repeated up to the shard's end; the pipeline work, which dominates a
  job, is split). Rows are the job's structures with ``seq`` = place in the stream + 1, keyed
  by (job, fingerprint) like a whole job: a redelivered shard skips what is stored.
- Shards are claimed like jobs (conditional UPDATE, claim token, heartbeat). A running shard
  keeps the job's heartbeat fresh only while no running shard is stale, so a shard whose worker
  died lets the job go stale: the sweeper re-queues the job and the next coordinator sends the
  unfinished shards again (a shard that died loses at most its batch in flight).
- **Cancel** is the job's status: every shard polls it and stops; the join then keeps what was
  stored, ranked, as a cancelled job.
- The **join** waits until every shard row is finished (it retries itself when a duplicate
  shard message fired the chord early), recomputes uniqueness over the whole job in stream
  order, then ranks and summarises with the runner's own ``finish_summary``, in one guarded write.

Progress aggregates the shards on the job row (``progress.shards``); the summary lists each
shard's worker, wall time and timings (``summary.shards``).
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from sqlalchemy import exists, func, select, update
from sqlalchemy.exc import IntegrityError

from app.availability import is_unavailable
from app.db import Database, utcnow
from app.models import (
    CANCELLED,
    CANCELLING,
    FAILED,
    FINISHED_STATES,
    QUEUED,
    RUNNING,
    SUCCEEDED,
    Job,
    JobShard,
    Structure,
)
from app.settings import Settings
from ml import pipeline
from ml.evaluation.uniqueness import PreparedStructure, unique_flags
from ml.methods.base import Cancelled, MethodContext, Progress, RequestError
from ml.methods.registry import get_method
from ml.pipeline.generation import oversample_factor
from ml.request import DesignRequest
from ml.settings import get_ml_settings
from workers.job_summary import PhaseTimer, ProgressReporter, finish_summary, timed_events
from workers.lease import Claimed, JobLease, LostClaim, stale_before, take_claim
from workers.liveness import exit_if_terminating
from workers.store import StructureStore, clean_json

log = logging.getLogger(__name__)

SHARD_QUEUED, SHARD_RUNNING, SHARD_DONE = "queued", "running", "done"
SHARD_CANCELLED, SHARD_FAILED = "cancelled", "failed"
SHARD_FINISHED = (SHARD_DONE, SHARD_CANCELLED, SHARD_FAILED)
# Job states in which a shard stops (a queued job is one the sweeper is re-dispatching).
_STOP_STATES = (CANCELLING, *FINISHED_STATES)


def shard_ranges(n: int, size: int) -> list[tuple[int, int]]:
    """[lo, hi) index ranges of ``size`` covering ``n`` candidates."""
    return [(lo, min(lo + size, n)) for lo in range(0, n, size)]


def wants_shards(job: Job, db: Database, settings: Settings) -> bool:
    """Whether this job runs as shards: a Celery job at or above the size threshold without
    selection (no over-generation, no stability limit), of a method whose candidate stream
    can be cut (``shardable``), or any job that already has shard rows (a resumed sharded job)."""
    if settings.embedded:
        return False
    with db.session() as s:
        if s.scalar(select(func.count()).where(JobShard.job_id == job.id)):
            return True
    if not settings.shard_min_candidates:
        return False
    try:
        request = DesignRequest.model_validate(job.request)
    except Exception:
        return False  # the whole-job path fails it with the validation error
    try:
        shardable = get_method(request.method).shardable
    except KeyError:
        shardable = True  # unknown method: the whole-job path fails it readably
    return (
        shardable
        and request.num_candidates >= settings.shard_min_candidates
        and request.num_candidates > settings.shard_candidates
        # Selection (over-generation, a stability limit) needs the whole job's candidates.
        and oversample_factor(request) == 1
    )


# --- coordinator --------------------------------------------------------------------------
def dispatch(claimed: Claimed, db: Database, settings: Settings) -> str:
    """Record the shards (first time) and send the unfinished ones with their join."""
    job = claimed.job
    lease = JobLease(db, settings, job.id, claimed.claim)
    # Validating may load a method's data: the heartbeat keeps the job alive meanwhile.
    return lease.hold(
        lambda: _dispatch(job, lease, db, settings),
        lost=f"job {job.id} was taken over while its shards were being sent",
    )


def _dispatch(job: Job, lease: JobLease, db: Database, settings: Settings) -> str:
    from celery import chord

    from workers.tasks import join_sharded_job, run_job_shard

    try:
        request = DesignRequest.model_validate(job.request)
        try:
            method = get_method(request.method)
        except KeyError:
            raise RequestError("method", f"method {request.method!r} is not installed") from None
        method.validate(request)
    except RequestError as exc:
        return lease.finish(FAILED, error=f"invalid request: {exc.field}: {exc.message}")
    except Exception as exc:
        return lease.finish(FAILED, error=f"{type(exc).__name__}: {exc}")
    stale = stale_before(settings)
    with db.session() as s:
        have = s.scalar(select(func.count()).where(JobShard.job_id == job.id))
        if not have:
            ranges = shard_ranges(request.num_candidates, settings.shard_candidates)
            for k, (lo, hi) in enumerate(ranges):
                s.add(JobShard(job_id=job.id, shard=k, lo=lo, hi=hi, status=SHARD_QUEUED))
    with db.session() as s:
        # A running shard whose heartbeat went stale died with its worker: send it again.
        s.execute(
            update(JobShard)
            .where(
                JobShard.job_id == job.id,
                JobShard.status == SHARD_RUNNING,
                JobShard.heartbeat_at < stale,
            )
            .values(status=SHARD_QUEUED, claim=None)
        )
        pending = list(
            s.scalars(
                select(JobShard.shard)
                .where(JobShard.job_id == job.id, JobShard.status == SHARD_QUEUED)
                .order_by(JobShard.shard)
            )
        )
        progress = _aggregate_progress(s, job.id, {"phase": "sharded"}, request.num_candidates)
    lease.write(progress=progress)
    queue = settings.queue_name
    join = join_sharded_job.si(job.id, lease.claim).set(queue=queue)
    if pending:
        header = [run_job_shard.si(job.id, k).set(queue=queue) for k in pending]
        chord(header)(join)
    else:  # every unfinished shard is running on a live worker: only the join is missing
        join.apply_async()
    log.info("job %s: sent %d shard(s) and the join", job.id, len(pending))
    return f"dispatched {len(pending)} shard(s)"


def _aggregate_progress(
    session: Any, job_id: str, latest: dict[str, Any], total: int | None
) -> dict[str, Any]:
    """The job's progress over all shards: stored rows, best loss, shard states."""
    rows = session.execute(
        select(JobShard.status, JobShard.progress).where(JobShard.job_id == job_id)
    ).all()
    states: dict[str, int] = {}
    bests = []
    for status, progress in rows:
        states[status] = states.get(status, 0) + 1
        if progress and progress.get("best") is not None:
            bests.append(progress["best"])
    stored = int(session.scalar(select(func.count()).where(Structure.job_id == job_id)) or 0)
    if total is None:
        last = select(func.max(JobShard.hi)).where(JobShard.job_id == job_id)
        total = int(session.scalar(last) or 0)
    return clean_json(
        {
            "phase": latest.get("phase", "evaluating"),
            "step": stored,
            "total": total,
            "best": min(bests) if bests else None,
            "stored": stored,
            "shards": {"total": len(rows), **states},
        }
    )


# --- a shard ------------------------------------------------------------------------------
class ShardLease(JobLease):
    """A shard's lease: writes go to its ``job_shards`` row (guarded by the shard's claim);
    the job row gets the heartbeat (while no running shard is stale) and the aggregated
    progress; cancellation is the job's status."""

    def __init__(self, db: Database, settings: Settings, job_id: str, shard: int, claim: str):
        super().__init__(db, settings, job_id, claim)
        self.shard = shard
        self.total: int | None = None

    def write_in(self, session: Any, **values: Any) -> str:
        now = utcnow()
        done = session.execute(
            update(JobShard)
            .where(
                JobShard.job_id == self.job_id,
                JobShard.shard == self.shard,
                JobShard.claim == self.claim,
            )
            .values(heartbeat_at=now, **values)
        ).rowcount
        if not done:
            self.lost.set()
            raise LostClaim(self.job_id)
        stale = stale_before(self.settings, now)
        dead_shard = exists().where(
            JobShard.job_id == self.job_id,
            JobShard.status == SHARD_RUNNING,
            JobShard.heartbeat_at < stale,
        )
        active = (Job.id == self.job_id, Job.status.in_([RUNNING, CANCELLING, QUEUED]))
        session.execute(update(Job).where(*active, ~dead_shard).values(heartbeat_at=now))
        if "progress" in values:
            progress = _aggregate_progress(session, self.job_id, values["progress"], self.total)
            session.execute(update(Job).where(*active).values(progress=progress))
        status = session.scalar(select(Job.status).where(Job.id == self.job_id))
        self._status = status or CANCELLED
        self._status_checked = time.monotonic()
        return self._status

    def cancel_requested(self) -> bool:
        now = time.monotonic()
        if now - self._status_checked >= self.settings.cancel_poll_interval_s:
            with self.db.session() as s:
                claim = s.scalar(
                    select(JobShard.claim).where(
                        JobShard.job_id == self.job_id, JobShard.shard == self.shard
                    )
                )
                status = s.scalar(select(Job.status).where(Job.id == self.job_id))
            self._status_checked = now
            if claim != self.claim:
                self.lost.set()
                raise LostClaim(self.job_id)
            self._status = status or CANCELLED
        return self._status in _STOP_STATES


def claim_shard(
    db: Database, settings: Settings, job_id: str, shard: int, worker: str, token: str
) -> JobShard | None:
    """Take the shard if it is queued or its worker's heartbeat went stale."""
    now = utcnow()
    stale = stale_before(settings, now)
    with db.session() as s:
        if not take_claim(
            s,
            JobShard,
            JobShard.job_id == job_id,
            JobShard.shard == shard,
            (JobShard.status == SHARD_QUEUED)
            | ((JobShard.status == SHARD_RUNNING) & (JobShard.heartbeat_at < stale)),
            status=SHARD_RUNNING,
            token=token,
            worker=worker,
            now=now,
        ):
            return None
        return s.scalars(
            select(JobShard).where(JobShard.job_id == job_id, JobShard.shard == shard)
        ).one()


def execute_shard(job_id: str, shard: int, db: Database, settings: Settings, worker: str) -> str:
    """Run one shard if this worker can claim it; the outcome for the logs."""
    token = str(uuid.uuid4())
    row = claim_shard(db, settings, job_id, shard, worker, token)
    if row is None:
        return "skipped"  # finished, or running on a live worker
    lease = ShardLease(db, settings, job_id, shard, token)
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.id == job_id)).one_or_none()
    if job is None or job.status in _STOP_STATES:
        return lease.finish(SHARD_CANCELLED)
    if row.attempts > settings.max_attempts:
        error = f"shard {shard}: gave up after {row.attempts - 1} attempts"
        return lease.finish(SHARD_FAILED, error=error)
    return lease.hold(
        lambda: _run_shard(job, row, lease, db, settings),
        lost=f"job {job_id} shard {shard} was taken over by another worker",
    )


def _run_shard(job: Job, row: JobShard, lease: ShardLease, db: Database, settings: Settings) -> str:

    t_start = time.perf_counter()
    timer = PhaseTimer()
    lo, hi = row.lo, row.hi
    device = get_ml_settings().torch_device()
    store = StructureStore(db, job.id, lease)
    reporter = ProgressReporter(lease, settings.progress_interval_s)

    def finish(status: str, error: str | None = None) -> str:
        timer.add("total_s", time.perf_counter() - t_start)
        return lease.finish(
            status,
            error=error,
            timings={k: round(v, 4) for k, v in timer.totals.items()},
            progress={**reporter.current, "phase": status},
        )

    try:
        request = DesignRequest.model_validate(job.request)
        lease.total = request.num_candidates
        method = get_method(request.method)
        params = method.validate(request)
        stored = store.fingerprints()  # a resumed shard skips what is already stored
        reporter.report("starting", 0, hi - lo, None, force=True)
        ctx = MethodContext(device=device, should_cancel=lease.should_cancel)
        gen = method.run(request, params, ctx)
        index = 0  # place in the method's stream of the next candidate
        try:
            for event in timed_events(gen, timer):
                lease.checkpoint()
                if isinstance(event, Progress):
                    reporter.report(event.phase, event.step, event.total, event.best)
                    continue
                start, index = index, index + len(event)
                picked = [
                    (start + k, c)
                    for k, c in enumerate(event)
                    if lo <= start + k < hi and pipeline.candidate_identity(c) not in stored
                ]
                if picked:
                    _evaluate_and_store(picked, request, store, reporter, timer, device, lo, hi)
                if index >= hi:
                    break
                lease.checkpoint()
        finally:
            gen.close()
        lease.checkpoint()
        return finish(SHARD_DONE)
    except Cancelled:
        if lease.stop_reason() == "time limit":
            limit = settings.job_time_limit_s
            return finish(SHARD_FAILED, f"time limit: ran longer than {limit:g} s")
        return finish(SHARD_CANCELLED)
    except LostClaim:
        raise
    except RequestError as exc:
        return finish(SHARD_FAILED, f"invalid request: {exc.field}: {exc.message}")
    except Exception as exc:
        if is_unavailable(exc):
            raise  # the task requeues the message; the shard is resumed
        exit_if_terminating(exc)
        log.exception("job %s shard %d failed", job.id, row.shard)
        return finish(SHARD_FAILED, f"shard {row.shard}: {type(exc).__name__}: {exc}")


def _evaluate_and_store(
    picked: list[tuple[int, Any]],
    request: DesignRequest,
    store: StructureStore,
    reporter: ProgressReporter,
    timer: PhaseTimer,
    device: str,
    lo: int,
    hi: int,
) -> None:
    if request.relax:
        reporter.report("relaxing", picked[0][0] - lo, hi - lo, None)
    t = time.perf_counter()
    # Uniqueness against the rest of the job is judged by the join (previous: none here).
    scored = pipeline.evaluate_candidates(
        [c for _, c in picked], request, previous=(), device=device, timings=timer.totals
    )
    timer.add("pipeline_s", time.perf_counter() - t)
    t = time.perf_counter()
    progress = reporter.evaluated(scored, picked[-1][0] + 1 - lo, hi - lo)
    seqs = [i + 1 for i, _ in picked]
    try:
        _, reporter.current = store.add(scored, progress, seqs=seqs)
    except IntegrityError:
        # Another shard stored the same crystal at the same moment: the retry skips it.
        _, reporter.current = store.add(scored, progress, seqs=seqs)
    timer.add("storage_s", time.perf_counter() - t)


# --- the join -----------------------------------------------------------------------------
def join_job(job_id: str, dispatch_claim: str, db: Database, settings: Settings) -> str | None:
    """Rank and summarise a sharded job once every shard is finished; None: not yet."""

    t_start = time.perf_counter()
    with db.session() as s:
        job = s.scalars(select(Job).where(Job.id == job_id)).one_or_none()
        shards = list(
            s.scalars(select(JobShard).where(JobShard.job_id == job_id).order_by(JobShard.shard))
        )
    if job is None or job.status in FINISHED_STATES:
        return "skipped"
    if job.claim != dispatch_claim:
        return "superseded"  # a later coordinator sent its own join
    if any(sh.status not in SHARD_FINISHED for sh in shards):
        return None
    lease = JobLease(db, settings, job_id, dispatch_claim)
    store = StructureStore(db, job_id, lease)
    request = DesignRequest.model_validate(job.request)
    method = get_method(request.method)
    method_info = {"name": method.name, "version": method.version}

    t = time.perf_counter()
    _write_job_uniqueness(store)
    unique_s = time.perf_counter() - t

    timer = PhaseTimer()
    for sh in shards:
        for key, value in (sh.timings or {}).items():
            if key != "total_s":
                timer.add(key, float(value))
    timer.add("uniqueness_join_s", unique_s)
    reporter = ProgressReporter(lease, settings.progress_interval_s)
    reporter.current = dict(job.progress or {})
    summary = finish_summary(store, request, reporter, timer, method_info, t_start)
    wall = (utcnow() - job.started_at).total_seconds() if job.started_at else None
    summary["timings"]["join_s"] = summary["timings"].pop("total_s")
    summary["timings"]["total_s"] = round(wall, 4) if wall is not None else None
    summary["timings"]["shards_total_s"] = round(
        sum(float((sh.timings or {}).get("total_s", 0.0)) for sh in shards), 4
    )
    summary["n_requested"] = request.num_candidates
    summary["shards"] = [
        {
            "shard": sh.shard,
            "lo": sh.lo,
            "hi": sh.hi,
            "status": sh.status,
            "worker": sh.worker,
            "attempts": sh.attempts,
            "stored": (sh.progress or {}).get("stored"),
            "wall_s": round((sh.finished_at - sh.started_at).total_seconds(), 3)
            if sh.finished_at and sh.started_at
            else None,
            "timings": sh.timings,
        }
        for sh in shards
    ]
    failed = [sh for sh in shards if sh.status == SHARD_FAILED]
    cancelled = job.status == CANCELLING or any(sh.status == SHARD_CANCELLED for sh in shards)
    status = FAILED if failed else CANCELLED if cancelled else SUCCEEDED
    values: dict[str, Any] = {}
    if failed:
        values["error"] = "; ".join(sh.error or f"shard {sh.shard} failed" for sh in failed)[:4000]
    store.write_ranks(
        summary.pop("_ranks"),
        hits=summary.pop("_hits"),
        status=status,
        finished_at=utcnow(),
        summary=clean_json(summary),
        progress={**reporter.current, "phase": "done" if status == SUCCEEDED else status},
        **values,
    )
    return status


def _write_job_uniqueness(store: StructureStore) -> None:
    """Each valid candidate is unique when it matches no earlier one of the job (stream
    order, as an unsharded run judges it batch after batch)."""
    scored, ids = store.load_scored()
    valid = [k for k, sc in enumerate(scored) if sc.flags.get("valid")]
    prepared = [PreparedStructure(scored[k].relaxed or scored[k].crystal) for k in valid]
    flags = dict.fromkeys(ids, False)
    for k, ok in zip(valid, unique_flags(prepared), strict=True):
        flags[ids[k]] = ok
    changed = {
        sid: flags[sid]
        for sid, sc in zip(ids, scored, strict=True)
        if sc.flags.get("unique") != flags[sid]
    }
    if changed:
        store.write_unique(changed)
