"""Rate limits and quotas per key (429 + Retry-After, counters in the real Redis), the
closed label set of /metrics, /readyz detail for admins only, and idempotency keys per the
IETF draft (empty 400, other body 422, in flight 409, expiry), on Postgres and Redis."""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from datetime import timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import update

from app import jobs as jobs_service
from app.auth import create_key
from app.db import Database, utcnow
from app.main import create_app
from app.migrate import upgrade
from app.models import Job
from app.ratelimit import RateLimitMiddleware
from app.settings import Settings

from .conftest import SMALL_JOB

pytestmark = pytest.mark.integration


def _app(settings: Settings, **update: object) -> TestClient:
    """The API without its lifespan (no sweeper, nothing consumes its fresh queue)."""
    s = settings.model_copy(update={"queue_name": f"limits-{uuid.uuid4().hex[:8]}", **update})
    upgrade(s.database_url)
    return TestClient(create_app(s))


@pytest.fixture(scope="module")
def db(integration_settings: Settings) -> Iterator[Database]:
    upgrade(integration_settings.database_url)
    d = Database(integration_settings.database_url)
    yield d
    d.dispose()


def _key(db: Database, name: str = "lab") -> dict[str, str]:
    return {"X-API-Key": create_key(db, name)[1]}


def test_rate_limit_per_key_429_with_retry_after(
    integration_settings: Settings, db: Database
) -> None:
    client = _app(integration_settings, rate_limit="5/minute")
    alice, bob = _key(db), _key(db)
    codes = [client.get("/v1/jobs", headers=alice).status_code for _ in range(8)]
    assert codes[:5] == [200] * 5 and codes[5:] == [429] * 3, codes
    r = client.get("/v1/jobs", headers=alice)
    assert r.status_code == 429 and r.json()["detail"]
    assert 1 <= int(r.headers["retry-after"]) <= 60
    # Another key has its own budget; a wrong key is limited too (no free brute force).
    assert client.get("/v1/jobs", headers=bob).status_code == 200
    wrong = {"X-API-Key": "mdk_wrong"}
    codes = [client.get("/v1/jobs", headers=wrong).status_code for _ in range(7)]
    assert codes[:5] == [401] * 5 and codes[5:] == [429] * 2, codes
    # Probes are never throttled.
    assert all(client.get("/healthz").status_code == 200 for _ in range(8))
    # The counters are in Redis: a second API process (replica) sees the same budget.
    replica = TestClient(create_app(client.app.state.services.settings))
    assert replica.get("/v1/jobs", headers=alice).status_code == 429


def test_quotas_of_active_jobs_and_candidates(integration_settings: Settings, db: Database) -> None:
    client = _app(integration_settings, quota_active_jobs=2)
    key = _key(db)
    first = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 1}, headers=key)
    second = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 2}, headers=key)
    assert first.status_code == second.status_code == 202
    third = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 3}, headers=key)
    assert third.status_code == 429 and "queued or running jobs" in third.json()["detail"]
    assert int(third.headers["retry-after"]) >= 1
    # A finished (cancelled) job no longer counts.
    client.delete(f"/v1/jobs/{first.json()['id']}", headers=key)
    assert client.post("/v1/jobs", json={**SMALL_JOB, "seed": 3}, headers=key).status_code == 202
    # Candidates: 4 + 4 queued, 3 more would pass 10.
    client = _app(integration_settings, quota_active_candidates=10)
    key = _key(db)
    for seed in (1, 2):
        assert client.post("/v1/jobs", json={**SMALL_JOB, "seed": seed}, headers=key).is_success
    big = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 5, "num_candidates": 3}, headers=key)
    assert big.status_code == 429 and "candidates" in big.json()["detail"]
    # Another key is not affected.
    assert client.post("/v1/jobs", json=SMALL_JOB, headers=_key(db)).status_code == 202


def test_limits_off_on_the_embedded_default(tmp_path: object) -> None:
    s = Settings(database_url=f"sqlite:///{tmp_path}/x.db")
    assert s.embedded and not s.limits_on
    app = create_app(s)
    assert not any(m.cls is RateLimitMiddleware for m in app.user_middleware)
    assert Settings(broker_url="redis://127.0.0.1:6379/0").limits_on


def _series(text: str) -> set[str]:
    return {line.split(" ")[0] for line in text.splitlines() if not line.startswith("#")}


def test_metrics_labels_are_a_closed_set(integration_settings: Settings) -> None:
    client = _app(integration_settings)

    def burst(tag: str) -> str:
        for i in range(200):
            client.request(f"{tag}{i}", "/v1/jobs")
            client.request(f"{tag}{i}", f"/no/such/{tag}/{i}")
        return client.get("/metrics").text

    client.get("/metrics")  # its own series exist before the comparison
    first = burst("MADEUP")
    assert "MADEUP" not in first and "/no/such" not in first
    assert 'method="other",route="/v1/jobs",status="405"' in first
    assert 'route="unmatched"' in first
    second = burst("OTHERTOKEN")
    # 400 more requests with 400 new methods and paths: not a single new series.
    assert _series(second) == _series(first)
    assert len(second) < len(first) + 200  # counters grew, the text did not


def test_readyz_detail_only_for_admin_keys(integration_settings: Settings, db: Database) -> None:
    client = _app(integration_settings)
    anonymous = client.get("/readyz")
    assert set(anonymous.json()) == {"status"}
    assert set(client.get("/readyz", headers=_key(db, "lab")).json()) == {"status"}
    admin = client.get("/readyz", headers=_key(db, "admin")).json()
    assert admin["checks"]["database"]["ok"] and admin["checks"]["broker"]["ok"]
    assert admin["checks"]["database"]["detail"] == "postgresql"


def test_idempotency_key_per_ietf_draft(integration_settings: Settings, db: Database) -> None:
    client = _app(integration_settings)
    key = _key(db)
    empty = client.post("/v1/jobs", json=SMALL_JOB, headers={**key, "Idempotency-Key": ""})
    assert empty.status_code == 400 and "Idempotency-Key" in empty.json()["detail"]
    h = {**key, "Idempotency-Key": "run-1"}
    first = client.post("/v1/jobs", json=SMALL_JOB, headers=h)
    assert client.post("/v1/jobs", json=SMALL_JOB, headers=h).json()["id"] == first.json()["id"]
    other = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 9}, headers=h)
    assert other.status_code == 409 and "run-1" in other.json()["detail"]
    # In flight: another request with this key holds it (as a concurrent request would).
    owner = client.app.state.keys.owner_for(key["X-API-Key"])
    h2 = {**key, "Idempotency-Key": "run-2"}
    with jobs_service.idempotency_guard(db, owner, "run-2"):
        busy = client.post("/v1/jobs", json=SMALL_JOB, headers=h2)
    assert busy.status_code == 409 and "still being processed" in busy.json()["detail"]
    assert client.post("/v1/jobs", json=SMALL_JOB, headers=h2).status_code == 202
    # Expiry: a key older than the TTL (24 h) names a new job, even with another body.
    with db.session() as s:
        s.execute(
            update(Job)
            .where(Job.id == first.json()["id"])
            .values(created_at=utcnow() - timedelta(hours=25))
        )
    renewed = client.post("/v1/jobs", json={**SMALL_JOB, "seed": 9}, headers=h)
    assert renewed.status_code == 202 and renewed.json()["id"] != first.json()["id"]
    assert "idempotent-replayed" not in renewed.headers
