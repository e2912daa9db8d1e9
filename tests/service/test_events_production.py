"""The event stream and the export formats on the production stack: Postgres, Redis and a
separate Celery worker process (the API runs in this process)."""

from __future__ import annotations

import io
from collections.abc import Callable
from typing import Any

import pytest
from ase.io import read as ase_read
from fastapi.testclient import TestClient

from app.client import Client

from .conftest import SMALL_JOB, WorkerProcess

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def worker(start_worker: Callable[[str], WorkerProcess]) -> WorkerProcess:
    return start_worker("events")


def test_events_and_formats_of_a_celery_job(pg_client: TestClient, worker: WorkerProcess) -> None:
    request: dict[str, Any] = {
        **SMALL_JOB,
        "seed": 7,
        "params": {**SMALL_JOB["params"], "batch_size": 2, "step_delay_s": 0.3},
    }
    client = Client(http=pg_client)
    events: list[tuple[str, dict[str, Any]]] = []
    job = client.follow(client.submit(request)["id"], on_event=lambda e, d: events.append((e, d)))
    assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and "progress" in kinds and "candidates" in kinds
    stored = [item["id"] for e, d in events if e == "candidates" for item in d["items"]]
    assert len(stored) == len(set(stored)) == job["summary"]["n_candidates"]
    text = pg_client.get(f"/v1/jobs/{job['id']}/structures?format=extxyz").text
    frames = ase_read(io.StringIO(text), index=":", format="extxyz")
    assert [f.info["matdesign_id"] for f in frames] == [d.id for d in client.results(job["id"])]
