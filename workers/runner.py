"""The job runner: one design job from claim to its final state.

method (from the registry) -> batches of candidates -> common pipeline -> stored per batch
-> final ranking over all of the job's structures -> summary. Progress goes to the job row at
a bounded rate; cancellation is checked between steps; the job ends ``succeeded``,
``failed`` (with a readable error) or ``cancelled``.

Over-generation and selection (``request.oversample``, at least ``EHULL_OVERSAMPLE`` with
``constraints.max_energy_above_hull``): the method is asked for that many times the requested
number (capped at ``MAX_CANDIDATES``); S.U.N. hits are stored as they are scored, the rest
wait in memory and fill the places left, best first, when the method is done
(:class:`ml.pipeline.generation.Selection`); candidates breaking the stability limit are never
stored. When the method runs out first, the job returns fewer and the summary's ``shortfall``
says why; ``generation`` holds the counts.
"""

from __future__ import annotations

import logging
import time
import uuid
from typing import Any

from app.availability import is_unavailable
from app.db import Database, utcnow
from app.models import CANCELLED, FAILED, SUCCEEDED
from app.settings import Settings
from ml import pipeline
from ml.methods.base import Cancelled, Candidate, MethodContext, Progress, RequestError
from ml.methods.registry import get_method
from ml.pipeline.generation import Generation, Selection, generation_request
from ml.request import DesignRequest
from ml.settings import get_ml_settings
from workers.job_summary import (
    PhaseTimer,
    ProgressReporter,
    finish_summary,
    timed_events,
)
from workers.lease import JobLease, JobTimeLimit, LostClaim, claim_job
from workers.liveness import exit_if_terminating, owner_gone, running
from workers.store import StructureStore

log = logging.getLogger(__name__)


def execute_job(job_id: str, db: Database, settings: Settings, *, worker: str) -> str:
    """Run a job if this worker can claim it; returns the outcome for the logs.

    Database outages propagate (the task requeues the message); the job is not failed.
    """
    token = str(uuid.uuid4())
    with running(token):
        return _execute(job_id, db, settings, worker, token)


def _execute(job_id: str, db: Database, settings: Settings, worker: str, token: str) -> str:
    def gone(owner: str | None, claim: str) -> bool:
        return owner_gone(owner, claim, job_id, worker, ask_nodes=not settings.embedded)

    claimed = claim_job(db, settings, job_id, worker, owner_gone=gone, token=token)
    if claimed is None:
        return "skipped"  # finished, cancelled, or running on a live worker
    job = claimed.job
    from workers.shards import dispatch, wants_shards

    if wants_shards(job, db, settings):
        # A large job: sent as shard tasks and a join (attempts are counted per shard).
        return dispatch(claimed, db, settings)
    lease = JobLease(db, settings, job_id, claimed.claim)
    if job.attempts > settings.max_attempts:
        error = f"gave up after {job.attempts - 1} attempts: the worker died each time"
        return lease.finish(FAILED, error=error)
    return lease.hold(
        lambda: _run(job.request, job, lease, db, settings),
        lost=f"job {job_id} was taken over by another worker",
        interrupted=f"job {job_id} interrupted by shutdown; it will be resumed",
    )


def _run(
    raw_request: dict[str, Any], job: Any, lease: JobLease, db: Database, settings: Settings
) -> str:
    t_start = time.perf_counter()
    timer = PhaseTimer()
    store = StructureStore(db, job.id, lease)
    device = get_ml_settings().torch_device()
    reporter = ProgressReporter(lease, settings.progress_interval_s)
    request: DesignRequest | None = None
    generation: Generation | None = None
    selection: Selection | None = None
    previous: list[Any] = []
    method_info: dict[str, Any] = {"name": job.method}
    ctx: MethodContext | None = None
    if job.started_at is not None:
        timer.add("queued_s", max((job.started_at - job.created_at).total_seconds(), 0.0))
    try:
        request = DesignRequest.model_validate(raw_request)
        try:
            method = get_method(request.method)
        except KeyError:
            raise RequestError("method", f"method {request.method!r} is not installed") from None
        method_info = {"name": method.name, "version": method.version}
        params = method.validate(request)
        # Non-empty when resuming after a dead worker: the method regenerates the same
        # candidates (same seed), and those already stored are skipped, not re-evaluated.
        previous = store.crystals()
        stored = store.fingerprints()
        kept = len(previous)
        reporter.report("starting", 0, request.num_candidates, None, force=True)
        ctx = MethodContext(device=device, should_cancel=lease.should_cancel)
        gen_request = generation_request(request)
        selection = Selection(request, kept=kept)
        generation = Generation(budget=gen_request.num_candidates, oversample=selection.factor)
        gen = method.run(gen_request, params, ctx)
        try:
            for event in timed_events(gen, timer):
                lease.checkpoint()
                if isinstance(event, Progress):
                    reporter.report(
                        event.phase, event.step, event.total, event.best, detail=event.detail
                    )
                    continue
                generation.n_generated += len(event)
                fresh = [c for c in event if pipeline.candidate_identity(c) not in stored]
                _evaluate_and_store(
                    fresh, request, previous, store, reporter, timer, device, selection, generation
                )
                if selection.full:
                    break
                lease.checkpoint()
        finally:
            gen.close()
        lease.checkpoint()
        _store_selected(selection, store, reporter, timer, generation)
        generation.exhausted = not selection.full
        method_summary = ctx.summary if ctx is not None else None
        summary = finish_summary(
            store, request, reporter, timer, method_info, t_start, generation, method_summary
        )
        store.write_ranks(
            summary.pop("_ranks"),
            hits=summary.pop("_hits"),
            status=SUCCEEDED,
            finished_at=utcnow(),
            summary=summary,
            progress={**reporter.current, "phase": "done"},
        )
        return SUCCEEDED
    except Cancelled:
        if lease.stop_reason() == "time limit":
            return _fail(lease, f"time limit: job ran longer than {settings.job_time_limit_s:g} s")
        # Keep what was found so far (with the best of those still waiting), ranked, with a
        # summary of it.
        if selection is not None and generation is not None:
            _store_selected(selection, store, reporter, timer, generation)
        summary = (
            finish_summary(
                store,
                request,
                reporter,
                timer,
                method_info,
                t_start,
                generation,
                ctx.summary if ctx is not None else None,
            )
            if request
            else {}
        )
        ranks = summary.pop("_ranks", {})
        store.write_ranks(
            ranks,
            hits=summary.pop("_hits", {}),
            status=CANCELLED,
            finished_at=utcnow(),
            summary=summary or None,
            progress={**reporter.current, "phase": "cancelled"},
        )
        return CANCELLED
    except LostClaim:
        raise
    except JobTimeLimit as exc:
        return _fail(lease, f"time limit: {exc}")
    except RequestError as exc:
        return _fail(lease, f"invalid request: {exc.field}: {exc.message}")
    except Exception as exc:
        if is_unavailable(exc):
            raise  # not the job's fault: the message is requeued and the job resumed
        exit_if_terminating(exc)
        log.exception("job %s failed", job.id)
        return _fail(lease, f"{type(exc).__name__}: {exc}")


def _evaluate_and_store(
    batch: list[Candidate],
    request: DesignRequest,
    previous: list[Any],
    store: StructureStore,
    reporter: ProgressReporter,
    timer: PhaseTimer,
    device: str,
    selection: Selection,
    generation: Generation,
) -> None:
    batch = selection.admit(batch)
    if not batch:
        return
    if request.relax:
        # CHGNet relaxation dominates a batch's time on CPU: show it as its own phase.
        reporter.report("relaxing", selection.kept, request.num_candidates, None)
    t = time.perf_counter()
    scored = pipeline.evaluate_candidates(
        batch, request, previous=previous, device=device, timings=timer.totals
    )
    timer.add("pipeline_s", time.perf_counter() - t)
    generation.n_evaluated += len(scored)
    # Uniqueness is judged on the final (relaxed when relaxed) crystals, against every scored
    # one: a crystal waiting for selection still makes a later copy of it a duplicate.
    previous.extend(s.relaxed or s.crystal for s in scored)
    now, rejected = selection.take(scored)
    generation.n_rejected += rejected
    _store(now, selection, store, reporter, timer)


def _store_selected(
    selection: Selection,
    store: StructureStore,
    reporter: ProgressReporter,
    timer: PhaseTimer,
    generation: Generation,
) -> None:
    """The method is done (or the job cancelled): the best waiting candidates fill the places
    left."""
    now, not_selected = selection.flush()
    generation.n_not_selected += not_selected
    _store(now, selection, store, reporter, timer)


def _store(
    scored: list[Any],
    selection: Selection,
    store: StructureStore,
    reporter: ProgressReporter,
    timer: PhaseTimer,
) -> None:
    if not scored:
        return
    t = time.perf_counter()
    progress = reporter.evaluated(scored, selection.kept, selection.request.num_candidates)
    _, reporter.current = store.add(scored, progress)
    # The store keeps a crystal yielded twice once: its count is what the job holds.
    selection.kept = int(reporter.current["stored"])
    timer.add("storage_s", time.perf_counter() - t)


def _fail(lease: JobLease, error: str) -> str:
    return lease.finish(FAILED, error=error[:4000])
