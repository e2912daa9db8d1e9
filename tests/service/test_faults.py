"""Fault tests of issue 19 on a PRIVATE Postgres (own initdb cluster on a free port; the
shared server is never touched), the shared Redis (own queue), a Celery worker process and
the API over real HTTP (uvicorn):

1. Postgres stopped for 12 s under a load of job submissions and reads: every response is
   2xx/4xx or 503 with Retry-After and a JSON body (no 500), nothing accepted is lost or
   duplicated.
2. A backlog of queued jobs while Postgres is stopped: the worker does not acknowledge the
   messages away (it backs off and requeues them), and every job runs as soon as the
   database is back; the sweeper's lost-message re-enqueue is set to 600 s here, so it
   cannot be what saves them.
3. Redis (private, no persistence) restarted under load: the messages it held are gone; the
   sweepers re-send the queued jobs and every job runs once (the worker's consumer watchdog
   reconnects a consumer that came back from the restart without taking messages).
4. kill -9 of a prefork pool process mid-job: the job is taken over at once.

Each test prints one ``FAULT-FIGURES`` line (run with ``-s`` to see it).
"""

from __future__ import annotations

import json
import threading
import time
import uuid
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

import httpx
import pytest
from sqlalchemy import create_engine, text

from app.main import create_app
from app.settings import Settings

from .conftest import REQUIRE_SERVICES, SMALL_JOB, WorkerProcess
from .servers import LiveServer, PrivatePostgres, PrivateRedis

pytestmark = [pytest.mark.integration, pytest.mark.slow]

JOB = {**SMALL_JOB, "num_candidates": 2}


@dataclass
class Stack:
    pg: PrivatePostgres
    settings: Settings
    server: LiveServer
    worker: WorkerProcess


@pytest.fixture(scope="module")
def stack(
    integration_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Stack]:
    try:
        pg = PrivatePostgres()
        pg.start()
    except Exception as exc:
        if REQUIRE_SERVICES:
            raise
        pytest.skip(f"no private Postgres: {exc}")
    settings = integration_settings.model_copy(
        update={
            "database_url": pg.url,
            "queue_name": f"{integration_settings.queue_name}-faults",
            "requeue_queued_after_s": 600.0,
        }
    )
    try:
        with LiveServer(create_app(settings)) as server:
            logs = tmp_path_factory.mktemp("fault-logs")
            worker = WorkerProcess(settings, logs / "worker.log", "faults")
            try:
                worker.wait_ready()
                yield Stack(pg, settings, server, worker)
            finally:
                worker.stop()
    finally:
        pg.destroy()


@dataclass
class Tally:
    responses: list[tuple[float, str, int, bool]] = field(default_factory=list)
    accepted: list[str] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def record(self, what: str, r: httpx.Response) -> None:
        ok_body = r.headers.get("content-type", "").startswith("application/json")
        if r.status_code == 503:
            ok_body = ok_body and "retry-after" in r.headers and bool(r.json().get("detail"))
        elif what == "metrics" and r.status_code == 200:
            ok_body = True
        with self.lock:
            self.responses.append((time.monotonic(), what, r.status_code, ok_body))


def _load(
    base: str, tally: Tally, stop: threading.Event, posters: int = 2, pause: float = 0.8
) -> list[threading.Thread]:
    """``posters`` threads submitting a job every ``pause`` s, two threads reading."""

    def poster(k: int) -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            i = 0
            while not stop.is_set():
                i += 1
                r = c.post("/v1/jobs", json={**JOB, "seed": 1000 * k + i})
                tally.record("submit", r)
                if r.status_code == 202:
                    with tally.lock:
                        tally.accepted.append(r.json()["id"])
                stop.wait(pause)

    def reader() -> None:
        with httpx.Client(base_url=base, timeout=30) as c:
            while not stop.is_set():
                with tally.lock:
                    known = tally.accepted[-1] if tally.accepted else str(uuid.uuid4())
                tally.record("job", c.get(f"/v1/jobs/{known}"))
                tally.record("list", c.get("/v1/jobs?limit=5"))
                tally.record("structures", c.get(f"/v1/jobs/{known}/structures"))
                tally.record("metrics", c.get("/metrics"))
                stop.wait(0.2)

    threads = [threading.Thread(target=poster, args=(k,)) for k in range(1, posters + 1)]
    threads += [threading.Thread(target=reader) for _ in range(2)]
    for t in threads:
        t.start()
    return threads


def _wait_finished(base: str, ids: list[str], timeout: float) -> dict[str, dict[str, Any]]:
    deadline = time.monotonic() + timeout
    jobs: dict[str, dict[str, Any]] = {}
    with httpx.Client(base_url=base, timeout=30) as c:
        while True:
            for job_id in ids:
                if jobs.get(job_id, {}).get("status") in ("succeeded", "failed", "cancelled"):
                    continue
                jobs[job_id] = c.get(f"/v1/jobs/{job_id}").json()
            if all(j.get("status") in ("succeeded", "failed", "cancelled") for j in jobs.values()):
                return jobs
            if time.monotonic() > deadline:
                stuck = {
                    k: v.get("status") for k, v in jobs.items() if v.get("status") != "succeeded"
                }
                raise AssertionError(f"jobs not finished after {timeout} s: {stuck}")
            time.sleep(0.5)


def _duplicates(url: str, ids: list[str]) -> tuple[int, int]:
    """(structure rows, rows whose (job, fingerprint) repeats) of these jobs."""
    engine = create_engine(url)
    with engine.connect() as conn:
        total, distinct = conn.execute(
            text(
                "SELECT count(*), count(DISTINCT (job_id, fingerprint)) FROM structures "
                "WHERE job_id = ANY(:ids)"
            ),
            {"ids": ids},
        ).one()
    engine.dispose()
    return int(total), int(total - distinct)


def _finished_after(jobs: dict[str, dict[str, Any]], t_wall: float) -> float:
    from datetime import datetime

    last = max(datetime.fromisoformat(j["finished_at"]).timestamp() for j in jobs.values())
    return last - t_wall


def test_postgres_stop_under_load_gives_503_never_500(stack: Stack) -> None:
    base = stack.server.url
    tally = Tally()
    stop = threading.Event()
    threads = _load(base, tally, stop)
    time.sleep(5)
    t_stop = time.monotonic()
    stack.pg.stop()
    time.sleep(12)
    stack.pg.start()
    t_start, t_start_wall = time.monotonic(), time.time()
    time.sleep(8)
    stop.set()
    for t in threads:
        t.join(timeout=60)

    codes = [code for _, _, code, _ in tally.responses]
    during = [code for t, _, code, _ in tally.responses if t_stop < t < t_start]
    n_503 = codes.count(503)
    other_5xx = [
        (what, code) for _, what, code, _ in tally.responses if code >= 500 and code != 503
    ]
    bad_bodies = [(what, code) for _, what, code, ok in tally.responses if not ok]
    assert not other_5xx, other_5xx[:10]
    assert not bad_bodies, bad_bodies[:10]
    assert n_503 > 0 and 503 in during  # the outage was seen...
    routes_503 = {what for _, what, code, _ in tally.responses if code == 503}
    assert {"submit", "job", "list", "metrics"} <= routes_503, routes_503
    # ... and left behind: 2xx again once the database was back.
    first_ok = min(
        t for t, what, code, _ in tally.responses if t > t_start and code < 300 and what == "submit"
    )
    jobs = _wait_finished(base, tally.accepted, timeout=420)
    lost = [k for k, j in jobs.items() if j["status"] != "succeeded"]
    rows, dups = _duplicates(stack.settings.database_url, tally.accepted)
    figures = {
        "requests": len(codes),
        "accepted_jobs": len(tally.accepted),
        "503": n_503,
        "5xx_other_than_503": len(other_5xx),
        "jobs_lost": len(lost),
        "structures": rows,
        "duplicated_results": dups,
        "api_recovered_s": round(first_ok - t_start, 2),
        "all_jobs_done_after_restart_s": round(_finished_after(jobs, t_start_wall), 1),
    }
    print("FAULT-FIGURES postgres-stop-under-load", json.dumps(figures))
    assert not lost, {k: jobs[k]["error"] for k in lost}
    assert dups == 0 and rows == len(tally.accepted) * JOB["num_candidates"]


def test_worker_backlog_survives_postgres_stop(stack: Stack) -> None:
    base = stack.server.url
    with httpx.Client(base_url=base, timeout=30) as c:
        ids = [c.post("/v1/jobs", json={**JOB, "seed": 5000 + i}).json()["id"] for i in range(6)]
        deadline = time.monotonic() + 240
        while c.get(f"/v1/jobs/{ids[0]}").json()["status"] == "queued":
            assert time.monotonic() < deadline
            time.sleep(0.2)
    log_before = len(stack.worker.log())
    stack.pg.stop()  # one job running, five messages waiting in Redis
    time.sleep(15)
    stack.pg.start()
    t_start_wall = time.time()
    jobs = _wait_finished(base, ids, timeout=300)
    after = _finished_after(jobs, t_start_wall)
    worker_log = stack.worker.log()[log_before:]
    requeues = worker_log.count("database unreachable; requeued")
    lost = [k for k, j in jobs.items() if j["status"] != "succeeded"]
    rows, dups = _duplicates(stack.settings.database_url, ids)
    figures = {
        "backlog_jobs": len(ids),
        "requeued_messages_during_outage": requeues,
        "jobs_lost": len(lost),
        "duplicated_results": dups,
        "all_jobs_done_after_restart_s": round(after, 1),
        "attempts": sorted(j["attempts"] for j in jobs.values()),
    }
    print("FAULT-FIGURES worker-backlog-postgres-stop", json.dumps(figures))
    assert requeues > 0, worker_log[-3000:]
    assert not lost, {k: jobs[k]["error"] for k in lost}
    assert dups == 0 and rows == len(ids) * JOB["num_candidates"]
    # Every job ran within a minute of the restart (6 small jobs on a 2-core machine).
    assert after < 60 + 10 * len(ids), figures


@pytest.fixture(scope="module")
def redis_stack(
    stack: Stack, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[tuple[PrivateRedis, Settings, LiveServer, WorkerProcess]]:
    try:
        broker = PrivateRedis()
        broker.start()
    except Exception as exc:
        if REQUIRE_SERVICES:
            raise
        pytest.skip(f"no private Redis: {exc}")
    # Its own database: no other test's queued jobs for its sweeper to hand to its worker.
    settings = stack.settings.model_copy(
        update={
            "database_url": stack.pg.create_database("redis_faults"),
            "broker_url": broker.url,
            "queue_name": f"{stack.settings.queue_name}-redis",
            "requeue_queued_after_s": 3.0,  # messages lost with Redis come back soon
        }
    )
    try:
        with LiveServer(create_app(settings)) as server:
            logs = tmp_path_factory.mktemp("redis-fault-logs")
            worker = WorkerProcess(settings, logs / "worker.log", "redisfaults")
            try:
                worker.wait_ready()
                yield broker, settings, server, worker
            finally:
                worker.stop()
    finally:
        broker.stop()


def _log_around(log: str, job_ids: list[str], width: int = 4000) -> str:
    """The worker log after the first mention of each job (its traceback is there)."""
    parts = []
    for job_id in job_ids:
        at = log.find(job_id)
        parts.append(log[at : at + width] if at >= 0 else f"{job_id}: not in the worker log")
    return "\n...\n".join(parts)


def test_redis_restart_under_load_loses_no_job(
    redis_stack: tuple[PrivateRedis, Settings, LiveServer, WorkerProcess],
) -> None:
    broker, settings, server, worker = redis_stack
    tally = Tally()
    stop = threading.Event()
    # One poster: every job accepted before the restart waits for the sweeper's re-enqueue.
    threads = _load(server.url, tally, stop, posters=1, pause=1.0)
    time.sleep(4)
    broker.stop()  # queued messages and unacknowledged deliveries are gone with it
    time.sleep(8)
    broker.start()
    t_start_wall = time.time()
    time.sleep(5)
    stop.set()
    for t in threads:
        t.join(timeout=60)
    other_5xx = [
        (what, code) for _, what, code, _ in tally.responses if code >= 500 and code != 503
    ]
    bad_bodies = [(what, code) for _, what, code, ok in tally.responses if not ok]
    assert not other_5xx, other_5xx[:10]
    assert not bad_bodies, bad_bodies[:10]
    jobs = _wait_finished(server.url, tally.accepted, timeout=420)
    lost = [k for k, j in jobs.items() if j["status"] != "succeeded"]
    rows, dups = _duplicates(settings.database_url, tally.accepted)
    figures = {
        "requests": len(tally.responses),
        "accepted_jobs": len(tally.accepted),
        "503": [code for _, _, code, _ in tally.responses].count(503),
        "5xx_other_than_503": len(other_5xx),
        "jobs_lost": len(lost),
        "duplicated_results": dups,
        "all_jobs_done_after_restart_s": round(_finished_after(jobs, t_start_wall), 1),
        # Times the worker's consumer watchdog found its consumer stalled and reconnected it.
        "consumer_restarts": worker.log().count("reconnecting the consumer"),
    }
    print("FAULT-FIGURES redis-restart-under-load", json.dumps(figures))
    # The worker's log holds the traceback of a lost job; without it a failure here is blind.
    assert not lost, ({k: jobs[k]["error"] for k in lost}, _log_around(worker.log(), lost))
    assert dups == 0 and rows == len(tally.accepted) * JOB["num_candidates"]


def test_killed_pool_child_job_is_taken_over_without_the_sweeper(
    stack: Stack, tmp_path: Any
) -> None:
    """kill -9 of the prefork pool process only: Celery hands the message back at once
    (reject_on_worker_lost), and the new pool process takes the job over because its owner
    process is gone, although the heartbeat is fresh (stale only after 300 s here, and the
    sweeper is off)."""
    import os
    import signal

    from fastapi.testclient import TestClient

    # Its own database: the stack's API sweeper (5 s staleness) must not be what saves it.
    settings = stack.settings.model_copy(
        update={
            "database_url": stack.pg.create_database("child_kill"),
            "queue_name": f"{stack.settings.queue_name}-child",
            "heartbeat_stale_after_s": 300.0,
            "sweeper_enabled": False,
        }
    )
    worker = WorkerProcess(settings, tmp_path / "child.log", "childkill")
    try:
        worker.wait_ready()
        slow = {
            **JOB,
            "num_candidates": 6,
            "seed": 77,
            "params": {**JOB["params"], "batch_size": 2, "step_delay_s": 2},
        }
        with TestClient(create_app(settings)) as api:
            job_id = api.post("/v1/jobs", json=slow).json()["id"]
            deadline = time.monotonic() + 240
            while True:
                job = api.get(f"/v1/jobs/{job_id}").json()
                if job["status"] == "running" and (job["progress"] or {}).get("stored"):
                    break
                assert time.monotonic() < deadline, job
                time.sleep(0.2)
            engine = create_engine(settings.database_url)
            with engine.connect() as conn:
                owner = conn.execute(
                    text("SELECT worker FROM jobs WHERE id = :j"), {"j": job_id}
                ).scalar_one()
            engine.dispose()
            child = int(owner.rpartition("/pid")[2])
            assert child != worker.proc.pid
            t_kill = time.monotonic()
            os.kill(child, signal.SIGKILL)
            while (job := api.get(f"/v1/jobs/{job_id}").json())["status"] not in (
                "succeeded",
                "failed",
            ):
                assert time.monotonic() - t_kill < 240, job
                time.sleep(0.2)
            recovered = time.monotonic() - t_kill
        rows, dups = _duplicates(settings.database_url, [job_id])
        print(
            "FAULT-FIGURES pool-child-kill-9",
            json.dumps(
                {
                    "status": job["status"],
                    "attempts": job["attempts"],
                    "structures": rows,
                    "duplicated_results": dups,
                    "finished_after_kill_s": round(recovered, 1),
                }
            ),
        )
        assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])
        assert job["attempts"] == 2 and rows == 6 and dups == 0
        engine = create_engine(settings.database_url)
        with engine.connect() as conn:
            final_owner = conn.execute(
                text("SELECT worker FROM jobs WHERE id = :j"), {"j": job_id}
            ).scalar_one()
        engine.dispose()
        # The same node's new pool process took it over (no other worker or sweeper exists).
        assert final_owner.startswith("childkill@") and final_owner != owner
        assert recovered < 120  # far below the 300 s heartbeat staleness
    finally:
        worker.stop()
