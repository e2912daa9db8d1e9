"""Workers without any API process still recover jobs: each worker runs the sweeper too.

A job whose broker message was lost (the queue was emptied after the commit) is found by the
worker's own sweeper, re-enqueued and finished. The API used to submit it has its sweeper
off, and no other API is running while this module runs. The module has a database of its
own: the worker's sweeper would otherwise first re-send what earlier tests left queued.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import redis
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

from .conftest import SMALL_JOB, WorkerProcess, finished, wait_for

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_worker_alone_recovers_a_job_whose_message_was_lost(
    integration_settings: Settings, module_database_url: str, tmp_path: Path
) -> None:
    settings = integration_settings.model_copy(
        update={
            "database_url": module_database_url,
            "queue_name": f"{integration_settings.queue_name}-sweep",
            "requeue_queued_after_s": 2.0,
        }
    )
    broker = redis.Redis.from_url(settings.broker_url)
    with TestClient(create_app(settings.model_copy(update={"sweeper_enabled": False}))) as api:
        job_id = api.post("/v1/jobs", json={**SMALL_JOB, "seed": 7}).json()["id"]
        assert broker.llen(settings.queue_name) == 1
        broker.delete(settings.queue_name)  # the message is lost; the row stays queued

        worker = WorkerProcess(settings, tmp_path / "worker.log", "sweeping")
        try:
            worker.wait_ready()
            try:
                job = wait_for(api, job_id, finished, timeout=240)
            except AssertionError as exc:
                raise AssertionError(f"{exc}\nworker log:\n{worker.log()[-6000:]}") from None
        finally:
            worker.stop()
        assert job["status"] == "succeeded", (job["error"], worker.log()[-3000:])
        assert job["attempts"] == 1
        assert api.get(f"/v1/jobs/{job_id}/structures").json()["items"]
