"""Must-show 2-4 on the production stack: Postgres, Redis, and separate ``matdesign worker``
(Celery) processes; the API (with its sweeper) runs in this process.

One worker serves the flow and cancel tests; the crash test kills it with SIGKILL mid-job and
starts a second one, which finishes the job.
"""

from __future__ import annotations

import time
import warnings
from collections.abc import Callable
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymatgen.io.cif import CifParser
from sqlalchemy import create_engine, text

from .conftest import SMALL_JOB, WorkerProcess, finished, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[[str], WorkerProcess]) -> WorkerProcess:
    return start_worker("w1")


def _all_structures(client: TestClient, job_id: str) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job_id}/structures?limit=500").json()["items"]


@pytest.fixture(scope="module")
def admin(postgres_url: str, pg_client: TestClient) -> dict[str, str]:
    """An admin key (its name is in the settings' admin_keys): /readyz shows it details."""
    from app.auth import create_key
    from app.db import Database

    db = Database(postgres_url)
    key = create_key(db, "admin")[1]
    db.dispose()
    return {"X-API-Key": key}


def test_not_ready_without_a_worker(pg_client: TestClient, admin: dict[str, str]) -> None:
    assert pg_client.get("/readyz").json() == {"status": "not ready"}
    r = pg_client.get("/readyz", headers=admin)
    assert r.status_code == 503
    checks = r.json()["checks"]
    assert checks["database"]["ok"] and checks["broker"]["ok"] and not checks["workers"]["ok"]


def test_flow_on_postgres_redis_and_celery_worker(
    pg_client: TestClient, worker: WorkerProcess, admin: dict[str, str]
) -> None:
    # A busy worker may miss one 2 s ping window right after it started: ask a few times.
    deadline = time.monotonic() + 30
    while (ready := pg_client.get("/readyz", headers=admin).json())["status"] != "ready":
        assert time.monotonic() < deadline, ready
        time.sleep(1)
    assert "w1@" in ready["checks"]["workers"]["detail"]
    assert ready["checks"]["database"]["detail"] == "postgresql"
    r = pg_client.post("/v1/jobs", json=SMALL_JOB)
    assert r.status_code == 202
    job = wait_for(pg_client, r.json()["id"], finished, timeout=300)
    assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])
    assert "w1@" in worker.log() and job["id"] in worker.log()
    items = _all_structures(pg_client, job["id"])
    assert len(items) == SMALL_JOB["num_candidates"]
    for s in items:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            structure = CifParser.from_str(s["cif"]).parse_structures(primitive=False)[0]
        assert structure.composition.reduced_formula == s["formula"]
        assert "formation_energy" in s["scores"] or not s["flags"]["valid"]
        assert {"valid", "unique", "novel", "stable", "hit"} <= set(s["flags"])


def test_cancel_running_job_within_seconds(pg_client: TestClient, worker: WorkerProcess) -> None:
    slow = {
        **SMALL_JOB,
        "num_candidates": 8,
        "seed": 1,
        "params": {**SMALL_JOB["params"], "batch_size": 1, "step_delay_s": 30},
    }
    job_id = pg_client.post("/v1/jobs", json=slow).json()["id"]
    wait_for(
        pg_client,
        job_id,
        lambda j: j["status"] == "running" and j["progress"]["phase"] == "substituting",
        timeout=180,
    )
    t0 = time.monotonic()
    r = pg_client.delete(f"/v1/jobs/{job_id}")
    assert r.status_code == 200 and r.json()["status"] == "cancelling"
    job = wait_for(pg_client, job_id, finished, timeout=15)
    elapsed = time.monotonic() - t0
    assert job["status"] == "cancelled" and elapsed < 10, (job, elapsed)
    assert pg_client.delete(f"/v1/jobs/{job_id}").json()["status"] == "cancelled"


def test_kill_9_worker_mid_job_new_worker_finishes_without_duplicates(
    pg_client: TestClient,
    worker: WorkerProcess,
    start_worker: Callable[[str], WorkerProcess],
    postgres_url: str,
) -> None:
    n = 6
    slow = {
        **SMALL_JOB,
        "num_candidates": n,
        "seed": 2,
        "params": {**SMALL_JOB["params"], "batch_size": 2, "step_delay_s": 3},
    }
    job_id = pg_client.post("/v1/jobs", json=slow).json()["id"]
    # Running, and the first batch stored: kill the worker in the middle of the job.
    wait_for(
        pg_client,
        job_id,
        lambda j: j["status"] == "running" and ((j["progress"] or {}).get("stored") or 0) >= 2,
        timeout=240,
    )
    before = {s["id"]: s["cif"] for s in _all_structures(pg_client, job_id)}
    assert 2 <= len(before) < n
    worker.kill9()
    assert pg_client.get(f"/v1/jobs/{job_id}").json()["status"] == "running"

    second = start_worker("w2")
    job = wait_for(pg_client, job_id, finished, timeout=300)
    assert job["status"] == "succeeded", (job["error"], second.log()[-3000:])
    assert job["attempts"] == 2
    items = _all_structures(pg_client, job_id)
    assert len(items) == n and len({s["id"] for s in items}) == n
    assert len({s["cif"] for s in items}) == n
    # What the dead worker stored is kept as it was.
    after = {s["id"]: s["cif"] for s in items}
    assert all(after.get(sid) == cif for sid, cif in before.items())
    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        total, distinct = conn.execute(
            text("SELECT count(*), count(DISTINCT fingerprint) FROM structures WHERE job_id = :j"),
            {"j": job_id},
        ).one()
    engine.dispose()
    assert total == distinct == n
