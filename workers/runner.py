"""The job runner: one design job from claim to its final state.

method (from the registry) -> batches of candidates -> common pipeline -> stored per batch
-> final ranking over all of the job's structures -> summary. Progress goes to the job row at
a bounded rate; cancellation is checked between steps; the job ends ``succeeded``,
``failed`` (with a readable error) or ``cancelled``.
"""

from __future__ import annotations

import logging
import platform
import time
import uuid
from collections.abc import Iterator
from typing import Any

from app import __version__
from app.availability import is_unavailable
from app.db import Database, utcnow
from app.models import CANCELLED, FAILED, SUCCEEDED
from app.settings import Settings
from ml import pipeline
from ml.methods.base import Cancelled, Candidate, MethodContext, Progress, RequestError
from ml.methods.registry import get_method
from ml.request import DesignRequest
from ml.settings import get_ml_settings
from workers.lease import Interrupted, JobLease, JobTimeLimit, LostClaim, claim_job
from workers.liveness import owner_gone, running
from workers.runtime import interrupted
from workers.store import StructureStore, clean_json

log = logging.getLogger(__name__)


class ProgressReporter:
    """Writes progress to the job row at most every ``interval`` seconds (phase changes and
    forced reports always go through)."""

    def __init__(self, lease: JobLease, interval: float) -> None:
        self.lease = lease
        self.interval = interval
        self._last = 0.0
        self._phase: str | None = None
        self.current: dict[str, Any] = {}

    def report(
        self, phase: str, step: int, total: int, best: float | None, force: bool = False
    ) -> None:
        if best is None:
            best = self.current.get("best")
        self.current = clean_json(
            {**self.current, "phase": phase, "step": step, "total": total, "best": best}
        )
        now = time.monotonic()
        if force or phase != self._phase or now - self._last >= self.interval:
            self.lease.write(progress=self.current)
            self._last = now
            self._phase = phase


class _Timer:
    def __init__(self) -> None:
        self.totals: dict[str, float] = {}

    def add(self, key: str, seconds: float) -> None:
        self.totals[key] = self.totals.get(key, 0.0) + seconds


def _timed_events(gen: Iterator[Any], timer: _Timer) -> Iterator[Any]:
    """Iterate the method's generator, charging the time spent inside it to ``method_s``."""
    while True:
        t = time.perf_counter()
        try:
            event = next(gen)
        except StopIteration:
            timer.add("method_s", time.perf_counter() - t)
            return
        timer.add("method_s", time.perf_counter() - t)
        yield event


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
    lease = JobLease(db, settings, job_id, claimed.claim)
    if job.attempts > settings.max_attempts:
        lease.write(
            status=FAILED,
            finished_at=utcnow(),
            error=f"gave up after {job.attempts - 1} attempts: the worker died each time",
        )
        return FAILED
    lease.start()
    try:
        return _run(job.request, job, lease, db, settings)
    except Interrupted:
        log.warning("job %s interrupted by shutdown; it will be resumed", job_id)
        return "interrupted"
    except LostClaim:
        log.warning("job %s was taken over by another worker", job_id)
        return "lost"
    finally:
        lease.stop()


def _run(
    raw_request: dict[str, Any], job: Any, lease: JobLease, db: Database, settings: Settings
) -> str:
    t_start = time.perf_counter()
    timer = _Timer()
    store = StructureStore(db, job.id, lease)
    device = get_ml_settings().torch_device()
    reporter = ProgressReporter(lease, settings.progress_interval_s)
    request: DesignRequest | None = None
    method_info: dict[str, Any] = {"name": job.method}
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
        gen = method.run(request, params, ctx)
        try:
            for event in _timed_events(gen, timer):
                lease.checkpoint()
                if isinstance(event, Progress):
                    reporter.report(event.phase, event.step, event.total, event.best)
                    continue
                fresh = [c for c in event if pipeline.fingerprint(c.crystal) not in stored]
                kept = _evaluate_and_store(
                    fresh, request, previous, store, reporter, timer, device, kept
                )
                if kept >= request.num_candidates:
                    break
                lease.checkpoint()
        finally:
            gen.close()
        lease.checkpoint()
        summary = _finish(store, request, reporter, timer, method_info, t_start)
        store.write_ranks(
            summary.pop("_ranks"),
            status=SUCCEEDED,
            finished_at=utcnow(),
            summary=summary,
            progress={**reporter.current, "phase": "done"},
        )
        return SUCCEEDED
    except Cancelled:
        if lease.lost.is_set():
            raise LostClaim(job.id) from None
        if interrupted():
            raise Interrupted(job.id) from None
        if time.monotonic() > lease.deadline:
            return _fail(lease, f"time limit: job ran longer than {settings.job_time_limit_s:g} s")
        # Keep what was found so far, ranked, with a summary of it.
        summary = _finish(store, request, reporter, timer, method_info, t_start) if request else {}
        ranks = summary.pop("_ranks", {})
        store.write_ranks(
            ranks,
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
        log.exception("job %s failed", job.id)
        return _fail(lease, f"{type(exc).__name__}: {exc}")


def _evaluate_and_store(
    batch: list[Candidate],
    request: DesignRequest,
    previous: list[Any],
    store: StructureStore,
    reporter: ProgressReporter,
    timer: _Timer,
    device: str,
    kept: int,
) -> int:
    batch = batch[: max(request.num_candidates - kept, 0)]
    if not batch:
        return kept
    t = time.perf_counter()
    scored = pipeline.evaluate_candidates(batch, request, previous=previous, device=device)
    timer.add("pipeline_s", time.perf_counter() - t)
    t = time.perf_counter()
    losses = [s.objective_loss for s in scored if s.flags.get("valid", True)]
    best = min(losses) if losses else None
    if best is not None and reporter.current.get("best") is not None:
        best = min(best, reporter.current["best"])
    progress = clean_json(
        {
            **reporter.current,
            "phase": "evaluating",
            "step": kept + len(scored),
            "total": request.num_candidates,
            "best": best,
        }
    )
    _, reporter.current = store.add(scored, progress)
    # Uniqueness is judged on the final (relaxed when relaxed) crystals.
    previous.extend(s.relaxed or s.crystal for s in scored)
    timer.add("storage_s", time.perf_counter() - t)
    return int(reporter.current["stored"])


def _finish(
    store: StructureStore,
    request: DesignRequest,
    reporter: ProgressReporter,
    timer: _Timer,
    method_info: dict[str, Any],
    t_start: float,
) -> dict[str, Any]:
    """Rank every stored candidate of the job and summarise; ``_ranks`` maps row id -> rank."""
    reporter.report(
        "ranking", reporter.current.get("step", 0), request.num_candidates, None, force=True
    )
    t = time.perf_counter()
    scored, ids = store.load_scored()
    by_fp = {s.fingerprint: sid for s, sid in zip(scored, ids, strict=True)}
    ranked = pipeline.rank_candidates(scored)
    ranks = {by_fp[s.fingerprint]: s.rank for s in ranked}
    summary = dict(pipeline.summarize(ranked, request))
    timer.add("ranking_s", time.perf_counter() - t)
    timer.add("total_s", time.perf_counter() - t_start)
    oracles: dict[str, dict[str, str]] = {}
    for s in scored:
        for prop, sc in s.scores.items():
            oracles.setdefault(prop, {"oracle": sc.oracle, "version": sc.version})
    summary.update(
        {
            "seed": request.seed,
            "timings": {k: round(v, 4) for k, v in timer.totals.items()},
            "versions": {
                "method": method_info,
                "oracles": oracles,
                "matdesign": __version__,
                "python": platform.python_version(),
                **_library_versions(),
            },
        }
    )
    out = clean_json(summary)
    out["_ranks"] = ranks
    return out


def _library_versions() -> dict[str, str]:
    from importlib.metadata import PackageNotFoundError, version

    out = {}
    for name in ("torch", "pymatgen", "matgl", "chgnet"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            continue
    return out


def _fail(lease: JobLease, error: str) -> str:
    lease.write(status=FAILED, finished_at=utcnow(), error=error[:4000])
    return FAILED
