"""The consumer watchdog (workers/consumer_watchdog.py).

Unit tests of the stall rule, then a real worker on a private Redis whose consumer stops
taking messages while it stays connected and answers pings: the state kombu's Redis transport
can be left in after a broker restart (celery/celery #8030, #8091, kombu #2629). Here it is
brought about with Celery's own ``cancel_consumer`` control command, which gives the same
state seen from outside: the worker is alive, its queue fills, nothing is taken. Without the
watchdog the job below stays queued for good.
"""

from __future__ import annotations

import socket
import time
from pathlib import Path

import pytest
from celery import Celery

from app.settings import Settings
from workers.consumer_watchdog import StallDetector

from .conftest import REQUIRE_SERVICES, SMALL_JOB, WorkerProcess
from .servers import PrivateRedis


def test_stall_needs_waiting_messages_and_a_free_slot_for_the_whole_period() -> None:
    d = StallDetector(after_s=10)
    assert not d.observe(0, connected=True, waiting=3, free_slots=1)
    assert not d.observe(9, connected=True, waiting=3, free_slots=1)
    assert d.observe(10, connected=True, waiting=3, free_slots=1)
    # The clock starts again after a restart.
    assert not d.observe(11, connected=True, waiting=3, free_slots=1)
    assert d.observe(21, connected=True, waiting=3, free_slots=1)


@pytest.mark.parametrize(
    "healthy",
    [
        {"connected": True, "waiting": 0, "free_slots": 1},  # nothing to take
        {"connected": True, "waiting": 2, "free_slots": 0},  # busy: messages wait for it
        {"connected": False, "waiting": 2, "free_slots": 1},  # Celery is reconnecting
    ],
)
def test_any_healthy_observation_resets_the_clock(healthy: dict[str, object]) -> None:
    d = StallDetector(after_s=10)
    assert not d.observe(0, connected=True, waiting=1, free_slots=1)
    assert not d.observe(8, **healthy)  # type: ignore[arg-type]
    assert not d.observe(12, connected=True, waiting=1, free_slots=1)
    assert not d.observe(21, connected=True, waiting=1, free_slots=1)
    assert d.observe(22, connected=True, waiting=1, free_slots=1)


@pytest.mark.integration
@pytest.mark.slow
def test_worker_whose_consumer_stalled_takes_messages_again(
    integration_settings: Settings, tmp_path: Path
) -> None:
    from fastapi.testclient import TestClient

    from app.main import create_app

    try:
        broker = PrivateRedis()
        broker.start()
    except Exception as exc:
        if REQUIRE_SERVICES:
            raise
        pytest.skip(f"no private Redis: {exc}")
    settings = integration_settings.model_copy(
        update={
            "broker_url": broker.url,
            "queue_name": f"{integration_settings.queue_name}-stall",
            "consumer_stall_after_s": 5.0,
            "sweeper_enabled": False,  # no re-send may be what saves the job
            "worker_warm_up": False,
        }
    )
    worker = WorkerProcess(settings, tmp_path / "worker.log", "stall")
    try:
        worker.wait_ready()
        with TestClient(create_app(settings)) as api:
            # An app of its own for the control command: the process-wide one may still
            # hold state of another broker from earlier tests in this session.
            control = Celery("stall-control", broker=broker.url).control
            node = f"stall@{socket.gethostname()}"
            deadline = time.monotonic() + 60
            # The worker's log, not a reply, confirms it (replies are not what is tested).
            while "Canceling queue" not in worker.log():
                assert time.monotonic() < deadline, worker.log()[-3000:]
                control.cancel_consumer(settings.queue_name, destination=[node])
                time.sleep(3)
            job_id = api.post("/v1/jobs", json={**SMALL_JOB, "num_candidates": 1}).json()["id"]
            t0 = time.monotonic()
            deadline = t0 + 240
            while api.get(f"/v1/jobs/{job_id}").json()["status"] == "queued":
                assert time.monotonic() < deadline, worker.log()[-3000:]
                time.sleep(0.3)
            taken_after = time.monotonic() - t0
        log = worker.log()
        assert "consumer stalled" in log and "reconnecting the consumer" in log
        print(f"stalled consumer: job taken {taken_after:.1f} s after it was submitted")
    finally:
        worker.stop()
        broker.stop()
