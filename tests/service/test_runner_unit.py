"""The job runner, lease and sweeper with a fake method and a fake scoring step.

Focused unit tests on SQLite: the fake method makes tiny rock-salt cells and the fake
``evaluate_candidates`` scores them without models. Ranking and summaries are the real
pipeline functions. The end-to-end tests (test_embedded_flow, test_integration) use the real
method and pipeline.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import numpy as np
import pytest
from sqlalchemy import func, select, update

from app.db import Database, utcnow
from app.jobs import submit_job
from app.migrate import upgrade
from app.models import Job, JobShard, Structure
from app.settings import Settings
from ml import pipeline
from ml.crystal import Crystal
from ml.methods.base import Candidate, DesignMethod, MethodContext, MethodParams, Progress
from ml.request import DesignRequest
from workers import runner, shards
from workers.job_summary import ProgressReporter
from workers.lease import JobLease, claim_job
from workers.runner import execute_job
from workers.sweeper import sweep


class Crash(BaseException):
    """Stands for the worker process dying: nothing in the runner catches it."""


class FakeParams(MethodParams):
    batch: int = 2
    crash_after: int | None = None  # batches
    fail: bool = False
    report: bool = False  # progress details and a method summary
    keyed: bool = False  # candidates carry their index as key
    noise: float = 0.0  # added to every lattice constant (a GPU's float noise on a re-run)


class FakeMethod(DesignMethod):
    name = "fake"
    version = "0.1"
    Params = FakeParams
    hook: Any = None  # called with the batch index before each batch

    def run(
        self, request: DesignRequest, params: MethodParams, ctx: MethodContext
    ) -> Iterator[Any]:
        assert isinstance(params, FakeParams)
        n = request.num_candidates
        for b in range(0, n, params.batch):
            ctx.check_cancelled()
            if params.fail:
                raise ValueError("boom")
            if params.crash_after is not None and b // params.batch == params.crash_after:
                raise Crash()
            if FakeMethod.hook is not None:
                FakeMethod.hook(b // params.batch)
            detail = {"batch": b // params.batch} if params.report else None
            yield Progress("making", b, n, detail=detail)
            if params.report:
                ctx.summary["batches"] = b // params.batch + 1
            yield [
                Candidate(
                    crystal=_rocksalt(4.0 + 0.05 * i + 0.001 * request.seed + params.noise),
                    method_score=float(i),
                    key=f"{request.seed}/{i}" if params.keyed else None,
                )
                for i in range(b, min(b + params.batch, n))
            ]


def _rocksalt(a: float) -> Crystal:
    return Crystal(np.eye(3) * a, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])


class FakeScoring:
    def __init__(self) -> None:
        self.seen: list[str] = []

    def __call__(self, candidates: Any, request: DesignRequest, **_: Any) -> list[Any]:
        out = []
        for c in candidates:
            fp = pipeline.candidate_identity(c)  # as evaluate_candidates stores it
            self.seen.append(fp)
            gap = float(c.crystal.lattice[0, 0] - 3.0)
            scores = {"band_gap": pipeline.OracleScore(gap, "eV", "fake-gap", "0")}
            hit = request.hit({"band_gap": gap})
            out.append(
                pipeline.ScoredCandidate(
                    crystal=c.crystal,
                    relaxed=None,
                    formula="NaCl",
                    n_atoms=2,
                    space_group=221,
                    scores=scores,
                    flags={
                        "valid": True,
                        "unique": True,
                        "novel": False,
                        "stable": False,
                        "metastable": False,
                        "charge_neutral": True,
                        "hit": hit,
                    },
                    energy_above_hull=None,
                    method_score=c.method_score,
                    objective_loss=request.objective_loss({"band_gap": gap}),
                    fingerprint=fp,
                )
            )
        return out


@pytest.fixture
def settings(tmp_path: Any) -> Settings:
    return Settings(
        database_url=f"sqlite:///{tmp_path}/unit.db",
        heartbeat_interval_s=0.2,
        heartbeat_stale_after_s=2.0,
        progress_interval_s=0.0,
        cancel_poll_interval_s=0.0,
        requeue_queued_after_s=10.0,
    )


@pytest.fixture
def db(settings: Settings) -> Iterator[Database]:
    upgrade(settings.database_url)
    database = Database(settings.database_url)
    yield database
    database.dispose()


@pytest.fixture
def scoring(monkeypatch: pytest.MonkeyPatch) -> FakeScoring:
    fake = FakeScoring()
    monkeypatch.setattr(runner, "get_method", lambda name: FakeMethod())
    monkeypatch.setattr(runner.pipeline, "evaluate_candidates", fake)
    FakeMethod.hook = None
    return fake


def _submit(db: Database, n: int = 6, oversample: int = 1, **params: Any) -> str:
    request = DesignRequest.model_validate(
        {
            "oversample": oversample,
            "method": "fake",
            "objectives": [
                {"property": "band_gap", "goal": "target", "value": 1.1, "tolerance": 0.01}
            ],
            "num_candidates": n,
            "params": params,
        }
    )
    job, _ = submit_job(db, "anonymous", request, None)
    return job.id


def _job(db: Database, job_id: str) -> Job:
    with db.session() as s:
        return s.get(Job, job_id)


def _rows(db: Database, job_id: str) -> list[Structure]:
    with db.session() as s:
        return list(s.scalars(select(Structure).where(Structure.job_id == job_id)))


def _age_heartbeat(db: Database, job_id: str, seconds: float) -> None:
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(heartbeat_at=utcnow() - timedelta(seconds=seconds))
        )


def test_job_succeeds_ranked_with_summary(db: Database, settings: Settings, scoring: Any) -> None:
    job_id = _submit(db, n=6)
    assert execute_job(job_id, db, settings, worker="t") == "succeeded"
    job = _job(db, job_id)
    rows = _rows(db, job_id)
    assert job.status == "succeeded" and job.finished_at is not None and job.error is None
    assert sorted(r.rank for r in rows) == [1, 2, 3, 4, 5, 6]
    # a = 4.1 gives a gap of 1.1 (the target): the hit ranks first.
    best = min(rows, key=lambda r: r.rank)
    assert best.hit and best.crystal["lattice"][0][0] == pytest.approx(4.1)
    s = job.summary
    assert s["n_candidates"] == 6 and s["n_hits"] == sum(r.hit for r in rows) >= 1
    assert s["versions"]["method"] == {"name": "fake", "version": "0.1"}
    assert s["versions"]["oracles"]["band_gap"] == {"oracle": "fake-gap", "version": "0"}
    assert s["seed"] == 0 and s["timings"]["total_s"] > 0
    assert job.progress["phase"] == "done" and job.progress["stored"] == 6


def test_method_figures_reach_progress_and_summary(
    db: Database, settings: Settings, scoring: Any
) -> None:
    job_id = _submit(db, n=6, batch=2, report=True)
    assert execute_job(job_id, db, settings, worker="t") == "succeeded"
    job = _job(db, job_id)
    assert job.summary["method_summary"] == {"batches": 3}
    assert job.progress["detail"] == {"batch": 2}  # the latest, kept through later phases
    # A method that reports nothing adds no key.
    plain = _submit(db, n=2)
    assert execute_job(plain, db, settings, worker="t") == "succeeded"
    assert "method_summary" not in _job(db, plain).summary
    assert "detail" not in _job(db, plain).progress


def test_a_method_that_is_not_shardable_runs_whole(
    db: Database, settings: Settings, monkeypatch: pytest.MonkeyPatch
) -> None:
    job = _job(db, _submit(db, n=10))
    celery = settings.model_copy(
        update={"broker_url": "redis://unused", "shard_min_candidates": 4, "shard_candidates": 2}
    )
    monkeypatch.setattr(shards, "get_method", lambda name: FakeMethod())
    assert shards.wants_shards(job, db, celery)
    monkeypatch.setattr(FakeMethod, "shardable", False)  # e.g. matinvent: it learns as it runs
    assert not shards.wants_shards(job, db, celery)


def test_resume_after_worker_death_stores_no_duplicates(
    db: Database, settings: Settings, scoring: FakeScoring
) -> None:
    job_id = _submit(db, n=6, batch=2, crash_after=2)
    with pytest.raises(Crash):
        execute_job(job_id, db, settings, worker="first")
    assert _job(db, job_id).status == "running" and len(_rows(db, job_id)) == 4
    first_ids = {r.id for r in _rows(db, job_id)}
    # A live heartbeat keeps other workers away; once stale, the job can be taken over.
    assert execute_job(job_id, db, settings, worker="second") == "skipped"
    _age_heartbeat(db, job_id, 60)
    with db.session() as s:  # the second attempt does not crash
        job = s.get(Job, job_id)
        job.request = {**job.request, "params": {"batch": 2}}
    assert execute_job(job_id, db, settings, worker="second") == "succeeded"
    rows = _rows(db, job_id)
    assert len(rows) == 6 and len({r.fingerprint for r in rows}) == 6
    assert first_ids <= {r.id for r in rows}  # earlier rows kept, not rewritten
    assert len(scoring.seen) == 6  # stored candidates were not scored again
    job = _job(db, job_id)
    assert job.status == "succeeded" and job.attempts == 2


@pytest.mark.parametrize("keyed", [True, False])
def test_resume_skips_keyed_candidates_that_come_back_with_float_noise(
    db: Database, settings: Settings, scoring: FakeScoring, keyed: bool
) -> None:
    job_id = _submit(db, n=6, batch=2, crash_after=2, keyed=keyed)
    with pytest.raises(Crash):
        execute_job(job_id, db, settings, worker="first")
    _age_heartbeat(db, job_id, 60)
    with db.session() as s:  # the re-run regenerates the same candidates, 1e-4 A off
        job = s.get(Job, job_id)
        job.request = {**job.request, "params": {"batch": 2, "keyed": keyed, "noise": 1e-4}}
    assert execute_job(job_id, db, settings, worker="second") == "succeeded"
    # Keyed: the four stored before the crash are skipped and candidates 4 and 5 complete the
    # job. Unkeyed, 0 and 1 differ beyond the fingerprint's rounding: stored again, as new.
    stored = sorted(r.method_score for r in _rows(db, job_id))
    assert stored == ([0, 1, 2, 3, 4, 5] if keyed else [0, 0, 1, 1, 2, 3])


def test_resume_with_selection_returns_what_an_uninterrupted_run_returns(
    db: Database, settings: Settings, scoring: FakeScoring
) -> None:
    """With over-generation the waiting candidates live only in the dead worker's memory: the
    next attempt regenerates the stream and selects the same crystals, stored once."""
    whole = _submit(db, n=4, oversample=3, batch=2)
    assert execute_job(whole, db, settings, worker="ref") == "succeeded"
    job_id = _submit(db, n=4, oversample=3, batch=2, crash_after=4)
    with pytest.raises(Crash):
        execute_job(job_id, db, settings, worker="first")
    assert _job(db, job_id).status == "running"
    _age_heartbeat(db, job_id, 60)
    with db.session() as s:
        job = s.get(Job, job_id)
        job.request = {**job.request, "params": {"batch": 2}}
    assert execute_job(job_id, db, settings, worker="second") == "succeeded"
    rows = _rows(db, job_id)
    assert len(rows) == 4 and len({r.fingerprint for r in rows}) == 4
    expected = {r.fingerprint: r.rank for r in _rows(db, whole)}
    assert {r.fingerprint: r.rank for r in rows} == expected
    generation = _job(db, job_id).summary["generation"]
    assert generation["n_generated"] == 12 and generation["n_not_selected"] == 8


def test_cancel_between_steps_keeps_partial_results(
    db: Database, settings: Settings, scoring: Any
) -> None:
    job_id = _submit(db, n=8, batch=2)

    def cancel_at(batch: int) -> None:
        if batch == 2:
            with db.session() as s:
                s.execute(update(Job).where(Job.id == job_id).values(status="cancelling"))

    FakeMethod.hook = cancel_at
    assert execute_job(job_id, db, settings, worker="t") == "cancelled"
    job = _job(db, job_id)
    rows = _rows(db, job_id)
    assert job.status == "cancelled" and len(rows) == 4
    assert sorted(r.rank for r in rows) == [1, 2, 3, 4]
    assert job.summary["n_candidates"] == 4


def test_method_error_fails_job_readably(db: Database, settings: Settings, scoring: Any) -> None:
    job_id = _submit(db, fail=True)
    assert execute_job(job_id, db, settings, worker="t") == "failed"
    job = _job(db, job_id)
    assert job.status == "failed" and job.error == "ValueError: boom"


def test_an_error_raised_by_a_terminate_signal_does_not_fail_the_job(
    db: Database, settings: Settings, scoring: Any, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Celery's terminate signal (broker connection lost) surfaced through a C extension as
    a TypeError: the job is left to be resumed, as if the process had died, not failed."""
    import billiard.common

    job_id = _submit(db, n=4, batch=2)

    def terminated_mid_batch(batch: int) -> None:
        if batch == 1:
            monkeypatch.setattr(billiard.common, "_should_have_exited", [True])
            raise TypeError("raise: exception class must be a subclass of BaseException")

    monkeypatch.setattr(FakeMethod, "hook", terminated_mid_batch)
    with pytest.raises(SystemExit):
        execute_job(job_id, db, settings, worker="t")
    job = _job(db, job_id)
    assert job.status == "running" and job.error is None and len(_rows(db, job_id)) == 2
    monkeypatch.setattr(billiard.common, "_should_have_exited", [False])
    _age_heartbeat(db, job_id, 60)
    monkeypatch.setattr(FakeMethod, "hook", None)
    assert execute_job(job_id, db, settings, worker="t2") == "succeeded"
    assert len(_rows(db, job_id)) == 4


def test_time_limit_fails_job(db: Database, settings: Settings, scoring: Any) -> None:
    job_id = _submit(db, n=4)
    limited = settings.model_copy(update={"job_time_limit_s": 1e-6})
    assert execute_job(job_id, db, limited, worker="t") == "failed"
    assert "time limit" in _job(db, job_id).error


def test_worker_that_lost_its_claim_writes_nothing(
    db: Database, settings: Settings, scoring: Any
) -> None:
    job_id = _submit(db, n=6, batch=2)

    def steal(batch: int) -> None:
        if batch == 1:
            with db.session() as s:
                s.execute(update(Job).where(Job.id == job_id).values(claim="someone-else"))

    FakeMethod.hook = steal
    assert execute_job(job_id, db, settings, worker="t") == "lost"
    job = _job(db, job_id)
    assert job.status == "running" and job.claim == "someone-else"
    assert len(_rows(db, job_id)) == 2  # only the batch stored before the takeover


def test_claim_is_exclusive(db: Database, settings: Settings) -> None:
    job_id = _submit(db)
    assert claim_job(db, settings, job_id, "a") is not None
    assert claim_job(db, settings, job_id, "b") is None


def test_a_job_past_its_attempts_fails_without_running(
    db: Database, settings: Settings, scoring: Any
) -> None:
    job_id = _submit(db)
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(attempts=settings.max_attempts))
    assert execute_job(job_id, db, settings, worker="t") == "failed"
    job = _job(db, job_id)
    assert job.status == "failed" and job.finished_at is not None
    assert job.error == "gave up after 3 attempts: the worker died each time"
    assert not scoring.seen and not _rows(db, job_id)


def test_shard_claim_is_exclusive_until_its_heartbeat_goes_stale(
    db: Database, settings: Settings
) -> None:
    job_id = _submit(db)
    with db.session() as s:
        s.add(JobShard(job_id=job_id, shard=0, lo=0, hi=2, status=shards.SHARD_QUEUED))
    first = shards.claim_shard(db, settings, job_id, 0, "a", "token-a")
    assert first is not None and first.claim == "token-a" and first.attempts == 1
    assert first.status == shards.SHARD_RUNNING and first.worker == "a"
    assert shards.claim_shard(db, settings, job_id, 0, "b", "token-b") is None
    with db.session() as s:
        stale = utcnow() - timedelta(seconds=settings.heartbeat_stale_after_s + 1)
        s.execute(update(JobShard).where(JobShard.job_id == job_id).values(heartbeat_at=stale))
    taken = shards.claim_shard(db, settings, job_id, 0, "b", "token-b")
    assert taken is not None and taken.claim == "token-b" and taken.attempts == 2
    assert taken.started_at == first.started_at  # the first start is kept


def test_progress_writes_are_rate_limited(db: Database, settings: Settings) -> None:
    job_id = _submit(db)
    claimed = claim_job(db, settings, job_id, "t")
    assert claimed is not None
    lease = JobLease(db, settings, job_id, claimed.claim)
    writes: list[dict[str, Any]] = []
    lease.write = lambda **values: writes.append(values) or "running"  # type: ignore[method-assign]
    reporter = ProgressReporter(lease, interval=3600)
    for step in range(100):
        reporter.report("scanning", step, 100, None)
    reporter.report("substituting", 0, 10, None)
    assert len(writes) == 2  # the first report, then the phase change
    assert reporter.current["step"] == 0 and reporter.current["phase"] == "substituting"


def test_sweeper_requeues_cancels_and_fails_dead_jobs(db: Database, settings: Settings) -> None:
    running, cancelling, exhausted, alive = (_submit(db) for _ in range(4))
    for job_id, status, attempts in [
        (running, "running", 1),
        (cancelling, "cancelling", 1),
        (exhausted, "running", settings.max_attempts),
        (alive, "running", 1),
    ]:
        with db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(status=status, attempts=attempts, claim="x", heartbeat_at=utcnow())
            )
    for job_id in (running, cancelling, exhausted):
        _age_heartbeat(db, job_id, 60)
    enqueued: list[str] = []
    counts = sweep(db, settings, enqueued.append)
    assert counts["requeued_stale"] == 1 and enqueued == [running]
    assert _job(db, running).status == "queued" and _job(db, running).claim is None
    assert _job(db, cancelling).status == "cancelled"
    assert _job(db, exhausted).status == "failed" and "giving up" in _job(db, exhausted).error
    assert _job(db, alive).status == "running"


def test_sweeper_reenqueues_lost_messages_with_backoff(db: Database, settings: Settings) -> None:
    job_id = _submit(db)
    enqueued: list[str] = []
    assert sweep(db, settings, enqueued.append)["requeued_lost"] == 0  # just submitted

    def age_enqueue(seconds: float) -> None:
        with db.session() as s:
            s.execute(
                update(Job)
                .where(Job.id == job_id)
                .values(enqueued_at=utcnow() - timedelta(seconds=seconds))
            )

    age_enqueue(11)  # past requeue_queued_after_s = 10
    assert sweep(db, settings, enqueued.append)["requeued_lost"] == 1
    assert enqueued == [job_id] and _job(db, job_id).enqueue_count == 2
    age_enqueue(11)  # the second re-enqueue waits twice as long (20 s)
    assert sweep(db, settings, enqueued.append)["requeued_lost"] == 0
    age_enqueue(21)
    assert sweep(db, settings, enqueued.append)["requeued_lost"] == 1
    with db.session() as s:
        assert s.scalar(select(func.count()).select_from(Job)) == 1


@pytest.mark.parametrize("relax", [True, False])
def test_relaxation_is_a_progress_phase_of_its_own(
    db: Database,
    settings: Settings,
    scoring: FakeScoring,
    monkeypatch: pytest.MonkeyPatch,
    relax: bool,
) -> None:
    request = DesignRequest.model_validate(
        {"method": "fake", "num_candidates": 4, "relax": relax, "params": {"batch": 2}}
    )
    job_id = submit_job(db, "anonymous", request, None)[0].id
    phases: list[str] = []

    def spy(candidates: Any, req: DesignRequest, **kw: Any) -> list[Any]:
        phases.append(_job(db, job_id).progress["phase"])  # what a poller sees meanwhile
        return scoring(candidates, req, **kw)

    monkeypatch.setattr(runner.pipeline, "evaluate_candidates", spy)
    assert execute_job(job_id, db, settings, worker="t") == "succeeded"
    assert phases == (["relaxing", "relaxing"] if relax else ["making", "making"])


# --- issue 19: faster recovery and database outages ------------------------------------------


def _dead_pid() -> int:
    import subprocess
    import sys

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_redelivered_job_of_a_dead_process_is_taken_over_at_once(
    db: Database, settings: Settings, scoring: Any
) -> None:
    import os

    job_id = _submit(db, n=4, batch=2, crash_after=1)
    dead = f"node1@host/pid{_dead_pid()}"
    with pytest.raises(Crash):
        execute_job(job_id, db, settings, worker=dead)  # the pool child "dies" mid-job
    assert _job(db, job_id).status == "running"  # heartbeat still fresh
    FakeMethod.hook = None
    with db.session() as s:  # the resumed run must not crash again
        job = s.get(Job, job_id)
        job.request = {**job.request, "params": {"batch": 2}}
    me = f"node1@host/pid{os.getpid()}"
    assert execute_job(job_id, db, settings, worker=me) == "succeeded"
    job = _job(db, job_id)
    assert job.attempts == 2 and len(_rows(db, job_id)) == 4


def test_job_of_a_live_owner_is_not_taken_over(db: Database, settings: Settings) -> None:
    import os

    from workers.liveness import owner_gone, running

    job_id = _submit(db)
    alive = f"node1@host/pid{os.getppid()}"
    assert claim_job(db, settings, job_id, alive) is not None
    me = f"node1@host/pid{os.getpid()}"
    gone = lambda owner, claim: owner_gone(owner, claim, job_id, me, ask_nodes=False)  # noqa: E731
    assert claim_job(db, settings, job_id, me, owner_gone=gone) is None
    # This process itself, while it still runs the job: not gone either.
    with db.session() as s:
        s.execute(update(Job).where(Job.id == job_id).values(worker=me))
        claim = s.get(Job, job_id).claim
    with running(claim):
        assert claim_job(db, settings, job_id, me, owner_gone=gone) is None
    # ... and once its execution ended (e.g. on a database outage), taken over.
    assert claim_job(db, settings, job_id, me, owner_gone=gone) is not None


def test_database_outage_mid_job_is_not_a_job_failure(
    db: Database, settings: Settings, scoring: FakeScoring, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os

    from sqlalchemy.exc import OperationalError

    from app.availability import is_unavailable

    job_id = _submit(db, n=4, batch=2)
    real = scoring.__call__
    calls = {"n": 0}

    def flaky(candidates: Any, request: DesignRequest, **kw: Any) -> list[Any]:
        calls["n"] += 1
        if calls["n"] == 2:
            raise OperationalError("INSERT", {}, Exception("server closed the connection"))
        return real(candidates, request, **kw)

    monkeypatch.setattr(runner.pipeline, "evaluate_candidates", flaky)
    me = f"node1@host/pid{os.getpid()}"
    with pytest.raises(OperationalError) as err:
        execute_job(job_id, db, settings, worker=me)
    assert is_unavailable(err.value)
    job = _job(db, job_id)
    assert job.status == "running" and job.error is None  # not failed: it is resumed
    # The requeued message comes back to this process: taken over without the sweeper.
    assert execute_job(job_id, db, settings, worker=me) == "succeeded"
    assert len(_rows(db, job_id)) == 4 and _job(db, job_id).attempts == 2


def test_fail_unstarted_fails_only_queued_or_own_jobs(db: Database, settings: Settings) -> None:
    from workers.lease import fail_unstarted

    queued = _submit(db)
    assert fail_unstarted(db, queued, "ImportError: no module")
    assert _job(db, queued).status == "failed" and "ImportError" in _job(db, queued).error
    other = _submit(db)
    claim_job(db, settings, other, "someone/pid1")
    assert not fail_unstarted(db, other, "boom", worker="me/pid2")
    assert _job(db, other).status == "running"


def test_job_the_broker_never_took_is_sent_at_the_next_sweep(
    db: Database, settings: Settings
) -> None:
    from app.queue import mark_unsent

    job_id = _submit(db)
    mark_unsent(db, job_id)  # the API's enqueue after the commit failed (broker down)

    def broker_down(_: str) -> None:
        raise ConnectionError("broker unreachable")

    assert sweep(db, settings, broker_down)["enqueued_unsent"] == 1
    assert _job(db, job_id).enqueued_at is None  # still unsent: tried again next pass
    sent: list[str] = []
    assert sweep(db, settings, sent.append)["enqueued_unsent"] == 1  # broker back
    assert sent == [job_id] and _job(db, job_id).enqueued_at is not None
    assert sweep(db, settings, sent.append)["enqueued_unsent"] == 0 and sent == [job_id]


def test_failed_sends_do_not_stretch_the_back_off(db: Database, settings: Settings) -> None:
    """A broker outage: every pass tries the job and fails. Those failures are not counted,
    so once the broker is back the job's lost-message re-send comes after the base delay,
    not after 2^n times it (issue 19: the back-off had grown to 64x during an outage)."""
    job_id = _submit(db)
    calls: list[str] = []

    def broker_down(j: str) -> None:
        calls.append(j)
        raise ConnectionError("broker unreachable")

    with db.session() as s:  # the message was lost long ago
        s.execute(
            update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=11))
        )
    for _ in range(8):
        counts = sweep(db, settings, broker_down)
        assert counts["send_failed"] == 1
    # Still the one send the broker took (at submission; the outage lost it).
    assert len(calls) == 8 and _job(db, job_id).enqueue_count == 1
    sent: list[str] = []
    assert sweep(db, settings, sent.append)["enqueued_unsent"] == 1  # broker back
    assert sent == [job_id] and _job(db, job_id).enqueue_count == 2
    with db.session() as s:  # that send was lost too (e.g. the worker's consumer stalled)
        s.execute(
            update(Job).where(Job.id == job_id).values(enqueued_at=utcnow() - timedelta(seconds=21))
        )
    # The second send's back-off: 2 x 10 s (with the 8 failures counted it was 640 s).
    assert sweep(db, settings, sent.append)["requeued_lost"] == 1
    assert sent == [job_id, job_id]


def test_re_sends_keep_coming_while_a_job_stays_queued(db: Database, settings: Settings) -> None:
    job_id = _submit(db)
    capped = settings.model_copy(update={"requeue_queued_max_s": 30.0})
    with db.session() as s:  # sent 20 times already: the doubling alone would wait 640 s
        s.execute(
            update(Job)
            .where(Job.id == job_id)
            .values(enqueue_count=20, enqueued_at=utcnow() - timedelta(seconds=31))
        )
    sent: list[str] = []
    assert sweep(db, settings, sent.append)["requeued_lost"] == 0  # default cap: 1800 s
    assert sweep(db, capped, sent.append)["requeued_lost"] == 1 and sent == [job_id]


def test_a_pass_stops_sending_after_the_first_broker_failure(
    db: Database, settings: Settings
) -> None:
    from app.queue import mark_unsent

    ids = [_submit(db) for _ in range(5)]
    for job_id in ids:
        mark_unsent(db, job_id)
    calls: list[str] = []

    def broker_down(j: str) -> None:
        calls.append(j)
        raise ConnectionError("broker unreachable")

    counts = sweep(db, settings, broker_down)
    assert len(calls) == 1 and counts["send_failed"] == 5
    assert all(_job(db, j).enqueued_at is None for j in ids)  # all go at the next pass
    sent: list[str] = []
    assert sweep(db, settings, sent.append)["enqueued_unsent"] == 5 and sorted(sent) == sorted(ids)
