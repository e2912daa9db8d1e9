"""Fixtures of the service tests.

Integration tests use the real Postgres and Redis servers (``MATDESIGN_TEST_POSTGRES_URL``,
``MATDESIGN_TEST_REDIS_URL``; defaults: the local servers). Each test session gets a fresh
database ``matdesign_test_<random>`` (dropped afterwards) and its own Celery queue name, so
sessions sharing the servers do not see each other's jobs. With
``MATDESIGN_REQUIRE_SERVICES=1`` (CI) a missing server fails those tests instead of skipping.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

REPO = Path(__file__).resolve().parents[2]
PG_ADMIN_URL = os.environ.get(
    "MATDESIGN_TEST_POSTGRES_URL", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("MATDESIGN_TEST_REDIS_URL", "redis://127.0.0.1:6379/0")
REQUIRE_SERVICES = os.environ.get("MATDESIGN_REQUIRE_SERVICES", "").lower() in ("1", "true")
SESSION = uuid.uuid4().hex[:10]

# Fast liveness for tests: heartbeat every second, dead after 5 s of silence.
FAST = {
    "heartbeat_interval_s": 1.0,
    "heartbeat_stale_after_s": 5.0,
    "progress_interval_s": 0.5,
    "cancel_poll_interval_s": 0.3,
    "sweeper_interval_s": 1.0,
    "requeue_queued_after_s": 30.0,
    "consumer_stall_after_s": 10.0,
}

# A small, real substitution job: the perovskite references load quickly. Without
# over-generation (the Celery default selects, storing most crystals only at the end): these
# tests watch results stored batch by batch, through kills and shards. Resuming a selecting
# job is covered in test_runner_unit.
SMALL_JOB: dict[str, Any] = {
    "method": "substitution",
    "oversample": 1,
    "objectives": [
        {"property": "band_gap", "goal": "target", "value": 1.5, "tolerance": 0.5},
        {"property": "formation_energy", "goal": "below", "value": -0.5},
    ],
    "constraints": {
        "elements": {"allowed": ["Ba", "Sr", "Ca", "Ti", "Zr", "O", "S"]},
        "max_atoms": 10,
    },
    "num_candidates": 4,
    "relax": False,
    "seed": 0,
    "params": {"datasets": ["perov5"], "max_references": 500},
}


def _unavailable(what: str, exc: Exception) -> None:
    msg = f"{what} is not reachable: {exc}"
    if REQUIRE_SERVICES:
        pytest.fail(msg)
    pytest.skip(msg)


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """URL of a fresh database on the Postgres server, dropped at the end of the session."""
    import psycopg

    name = f"matdesign_test_{SESSION}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable("Postgres", exc)
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def redis_url() -> str:
    import redis

    try:
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except redis.RedisError as exc:
        _unavailable("Redis", exc)
    return REDIS_URL


@pytest.fixture(scope="module")
def module_database_url(postgres_url: str, request: pytest.FixtureRequest) -> Iterator[str]:
    """A database of the test module's own, for modules that start workers: a worker's
    sweeper re-sends every job earlier tests left queued in the session's database and works
    through that backlog first (seen in CI: the module's own job waited past its bound)."""
    import psycopg

    module = request.module.__name__.rsplit(".", 1)[-1]
    name = f"matdesign_{module}_{SESSION}"[:63]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    yield postgres_url.rsplit("/", 1)[0] + f"/{name}"
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def integration_settings(postgres_url: str, redis_url: str) -> Iterator[Settings]:
    import redis

    queue = f"gpu-test-{SESSION}"
    yield Settings(
        database_url=postgres_url,
        broker_url=redis_url,
        queue_name=queue,
        readyz_worker_timeout_s=2.0,
        # Limits on, but loose enough for the tests' bursts (test_limits.py tests them).
        rate_limit="10000/second",
        quota_active_jobs=10_000,
        quota_active_candidates=10_000_000,
        admin_keys=["admin"],
        **FAST,
    )
    # The session's queue, kombu's bindings for it, and the unacknowledged message the
    # SIGKILLed worker left behind (kombu would restore it to the queue in two hours).
    client = redis.Redis.from_url(redis_url)
    keys = client.keys(f"*{queue}*")
    if keys:
        client.delete(*keys)
    for tag, raw in client.hgetall("unacked").items():
        try:
            routing_key = json.loads(raw)[2]
        except (ValueError, IndexError, TypeError):
            continue
        if routing_key == queue:
            client.hdel("unacked", tag)
            client.zrem("unacked_index", tag)


def settings_env(settings: Settings) -> dict[str, str]:
    """The environment that gives a subprocess the same settings."""
    env = dict(os.environ)
    for key, value in settings.model_dump().items():
        if value is None:  # unset: the subprocess's own default
            env.pop(f"MATDESIGN_{key.upper()}", None)
            continue
        if isinstance(value, list):
            value = ",".join(value)
        env[f"MATDESIGN_{key.upper()}"] = str(value)
    env.setdefault("OMP_NUM_THREADS", "2")
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), env.get("PYTHONPATH", "")])
    return env


class WorkerProcess:
    """A ``matdesign worker`` (Celery) in its own process group, so that kill -9 takes the
    pool process with it, as when a machine or container dies."""

    def __init__(self, settings: Settings, log_path: Path, name: str) -> None:
        self.log_path = log_path
        self.name = name
        self._log = log_path.open("wb")
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "app.cli", "worker", "--hostname", f"{name}@%h"],
            cwd=REPO,
            env=settings_env(settings),
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )

    def wait_ready(self, timeout: float = 120.0) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"worker exited: {self.log()[-3000:]}")
            if b"ready." in self.log_path.read_bytes():
                return
            time.sleep(0.3)
        raise TimeoutError(f"worker not ready after {timeout} s: {self.log()[-3000:]}")

    def kill9(self) -> None:
        os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=30)

    def stop(self) -> None:
        if self.proc.poll() is None:
            os.killpg(self.proc.pid, signal.SIGTERM)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(self.proc.pid, signal.SIGKILL)
                self.proc.wait(timeout=10)
        self._log.close()

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


@pytest.fixture(scope="module")
def start_worker(
    integration_settings: Settings, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Callable[[str], WorkerProcess]]:
    started: list[WorkerProcess] = []
    logs = tmp_path_factory.mktemp("worker-logs")

    def start(name: str) -> WorkerProcess:
        w = WorkerProcess(integration_settings, logs / f"{name}.log", name)
        started.append(w)
        w.wait_ready()
        return w

    yield start
    for w in started:
        w.stop()


@pytest.fixture(scope="module")
def pg_client(integration_settings: Settings) -> Iterator[TestClient]:
    """The API on Postgres + Redis (sweeper included), in this process."""
    with TestClient(create_app(integration_settings)) as client:
        yield client


def wait_for(
    client: TestClient,
    job_id: str,
    done: Callable[[dict[str, Any]], bool],
    timeout: float,
    headers: dict[str, str] | None = None,
) -> dict[str, Any]:
    deadline = time.monotonic() + timeout
    while True:
        job = client.get(f"/v1/jobs/{job_id}", headers=headers or {}).json()
        if done(job):
            return job
        if time.monotonic() > deadline:
            raise AssertionError(f"job did not get there in {timeout} s: {job}")
        time.sleep(0.3)


def finished(job: dict[str, Any]) -> bool:
    return job["status"] in ("succeeded", "failed", "cancelled")
