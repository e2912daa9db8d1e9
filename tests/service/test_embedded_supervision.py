"""The embedded default supervises its worker thread (issue 19): a thread that dies is
logged and restarted, /readyz reports it, and a job whose execution raised before the
method started fails with the error instead of staying queued. Real app on SQLite; the
failures are injected by replacing one call (focused tests)."""

from __future__ import annotations

import logging
import time
from collections.abc import Iterator

import pytest
from fastapi.testclient import TestClient

from app.auth import create_key
from app.db import Database
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from workers import runner
from workers.tasks import run_design_job

from .conftest import FAST, SMALL_JOB, finished, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture
def embedded(tmp_path: object) -> Iterator[tuple[TestClient, dict[str, str]]]:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/embedded.db",
        worker_warm_up=False,
        admin_keys=["ops"],
        **FAST,
    )
    upgrade(settings.database_url)
    db = Database(settings.database_url)
    admin = {"X-API-Key": create_key(db, "ops")[1]}
    db.dispose()
    with TestClient(create_app(settings)) as client:
        yield client, admin


def test_dead_worker_thread_is_restarted_logged_and_reported(
    embedded: tuple[TestClient, dict[str, str]],
    monkeypatch: pytest.MonkeyPatch,
    caplog: pytest.LogCaptureFixture,
) -> None:
    client, admin = embedded
    real_apply = run_design_job.apply
    calls = {"n": 0}

    def dying_apply(*args: object, **kwargs: object) -> object:
        calls["n"] += 1
        if calls["n"] == 1:
            raise SystemExit("worker thread killed")  # escapes every `except Exception`
        return real_apply(*args, **kwargs)

    monkeypatch.setattr(run_design_job, "apply", dying_apply)
    caplog.set_level(logging.ERROR, logger="workers.embedded")
    first = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 11}).json()["id"]
    job = wait_for(client, first, finished, timeout=30)
    assert job["status"] == "failed" and "worker thread killed" in job["error"]
    # Restarted within the supervisor's period, logged, and reported to admins.
    deadline = time.monotonic() + 15
    while "restarted" not in str(client.get("/readyz", headers=admin).json()):
        assert time.monotonic() < deadline, client.get("/readyz", headers=admin).json()
        time.sleep(0.2)
    ready = client.get("/readyz", headers=admin)
    assert ready.status_code == 200, ready.text
    detail = ready.json()["checks"]["workers"]["detail"]
    assert "1 of 1" in detail and "SystemExit: worker thread killed" in detail
    assert any("died" in r.getMessage() for r in caplog.records)
    # The restarted thread runs the next job.
    second = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 12, "num_candidates": 1})
    job = wait_for(client, second.json()["id"], finished, timeout=300)
    assert job["status"] == "succeeded", job["error"]


def test_job_raising_before_the_method_starts_fails_with_the_error(
    embedded: tuple[TestClient, dict[str, str]], monkeypatch: pytest.MonkeyPatch
) -> None:
    client, _ = embedded

    def broken(*args: object, **kwargs: object) -> str:
        raise ImportError("cannot import name 'X' from 'ml.methods'")

    monkeypatch.setattr(runner, "execute_job", broken)
    job_id = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 13}).json()["id"]
    job = wait_for(client, job_id, finished, timeout=30)
    assert job["status"] == "failed"
    assert job["error"] == "ImportError: cannot import name 'X' from 'ml.methods'"
    # The thread survived it.
    assert client.get("/readyz").json() == {"status": "ready"}
