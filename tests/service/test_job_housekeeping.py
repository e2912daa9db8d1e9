"""Job labels and purge on both databases (issue 23): the label migration (0002) upgrades a
database holding jobs, and downgrades; a label is stored, shown and filtered on; purge deletes
a finished job with its structures and scores for its owner only.

SQLite always; Postgres when the server at MATDESIGN_TEST_POSTGRES_URL is up (a database of
its own, dropped afterwards; CI requires it). The app runs without its lifespan: no worker.
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic import command
from fastapi.testclient import TestClient
from sqlalchemy import func, inspect, select, text

from app.auth import create_key
from app.db import Database, utcnow
from app.main import create_app
from app.migrate import alembic_config, upgrade
from app.models import Job, OracleScore, Structure
from app.settings import Settings

from .conftest import PG_ADMIN_URL, SMALL_JOB, _unavailable
from .test_new_user import _finish_with_structure


@pytest.fixture(params=["sqlite", "postgres"])
def database_url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/housekeeping.db"
        return
    import psycopg

    name = f"matdesign_test_housekeeping_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=5) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
    except psycopg.OperationalError as exc:
        _unavailable("Postgres", exc)
    base, _, _ = PG_ADMIN_URL.rpartition("/")
    try:
        yield f"{base}/{name}".replace("postgresql://", "postgresql+psycopg://", 1)
    finally:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def _job_columns(db: Database) -> set[str]:
    return {c["name"] for c in inspect(db.engine).get_columns("jobs")}


def test_label_migration_keeps_existing_jobs_and_downgrades(database_url: str) -> None:
    upgrade(database_url, "0001")
    db = Database(database_url)
    old = str(uuid.uuid4())
    with db.session() as s:  # a job written by a server of schema 0001 (no label column)
        s.execute(
            text(
                "INSERT INTO jobs (id, owner, status, method, request, request_hash, "
                "created_at, enqueue_count, attempts) VALUES (:id, 'single-user', 'succeeded', "
                "'substitution', :request, 'h', :now, 1, 1)"
            ),
            {"id": old, "request": json.dumps(SMALL_JOB), "now": utcnow()},
        )
    assert "label" not in _job_columns(db)
    upgrade(database_url)
    assert "label" in _job_columns(db)
    indexes = {ix["name"] for ix in inspect(db.engine).get_indexes("jobs")}
    assert "ix_jobs_owner_label" in indexes
    with db.session() as s:
        job = s.get(Job, old)
        assert job is not None and job.label is None and job.status == "succeeded"
    db.dispose()
    command.downgrade(alembic_config(database_url), "0001")
    db = Database(database_url)
    assert "label" not in _job_columns(db)
    with db.session() as s:
        assert s.scalar(text("SELECT count(*) FROM jobs WHERE id = :id"), {"id": old}) == 1
    db.dispose()
    upgrade(database_url)  # and back up again: the revision is repeatable


def _count(db: Database, model: type, *where: object) -> int:
    with db.session() as s:
        return int(s.scalar(select(func.count()).select_from(model).where(*where)) or 0)


def test_label_filter_and_purge_for_the_owner_only(database_url: str) -> None:
    settings = Settings(database_url=database_url, require_api_key=True)
    upgrade(database_url)
    db = Database(database_url)
    _, alice = create_key(db, "alice")
    _, bob = create_key(db, "bob")
    app = create_app(settings)
    a = TestClient(app, headers={"X-API-Key": alice})
    b = TestClient(app, headers={"X-API-Key": bob})

    label = "LFP polymorphs, run 1"
    job = a.post("/v1/jobs", json={**SMALL_JOB, "label": label}).json()
    a.post("/v1/jobs", json={**SMALL_JOB, "label": "another run", "seed": 1})
    b.post("/v1/jobs", json={**SMALL_JOB, "label": label, "seed": 2})  # same label, other key
    assert job["label"] == label and job["request"]["label"] == label
    mine = a.get("/v1/jobs", params={"label": label}).json()["items"]
    assert [j["id"] for j in mine] == [job["id"]]
    assert mine[0]["objectives"] == "band_gap = 1.5 ± 0.5 eV; formation_energy < -0.5 eV/atom"
    assert len(a.get("/v1/jobs").json()["items"]) == 2

    keep = a.post("/v1/jobs", json={**SMALL_JOB, "seed": 3}).json()["id"]
    for job_id in (job["id"], keep):
        _finish_with_structure(settings, job_id)
    assert b.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"}).status_code == 404
    assert _count(db, Structure, Structure.job_id == job["id"]) == 1

    r = a.delete(f"/v1/jobs/{job['id']}", params={"purge": "true"})
    assert r.status_code == 204, r.text
    assert a.get(f"/v1/jobs/{job['id']}").status_code == 404
    assert a.get("/v1/jobs", params={"label": label}).json()["items"] == []
    assert _count(db, Job, Job.id == job["id"]) == 0
    assert _count(db, Structure, Structure.job_id == job["id"]) == 0
    orphans = OracleScore.structure_id.not_in(select(Structure.id))
    assert _count(db, OracleScore, orphans) == 0
    assert _count(db, Structure, Structure.job_id == keep) == 1
    assert _count(db, OracleScore) == 1  # the kept job's score
    db.dispose()


def test_pages_of_finished_jobs_are_cached_for_their_owner_until_purged(database_url: str) -> None:
    settings = Settings(database_url=database_url, require_api_key=True)
    upgrade(database_url)
    db = Database(database_url)
    _, alice = create_key(db, "alice")
    _, bob = create_key(db, "bob")
    app = create_app(settings)
    pages = app.state.services.pages
    a = TestClient(app, headers={"X-API-Key": alice})
    b = TestClient(app, headers={"X-API-Key": bob})
    job_id = a.post("/v1/jobs", json=SMALL_JOB).json()["id"]
    url = f"/v1/jobs/{job_id}/structures"

    assert a.get(url).json()["items"] == []
    assert len(pages) == 0  # an unfinished job's page may still change
    _finish_with_structure(settings, job_id)

    first = a.get(url)
    again = a.get(url)
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and pages.hits == 1 and len(pages) == 1
    assert first.json()["items"][0]["formula"] == "NaCl"
    assert b.get(url).status_code == 404  # the cached page is not another key's
    # The cache serves what the database would.
    uncached = Settings(database_url=database_url, require_api_key=True, page_cache_mb=0)
    plain = TestClient(create_app(uncached), headers={"X-API-Key": alice})
    assert plain.get(url).content == first.content

    assert a.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}).status_code == 204
    assert a.get(url).status_code == 404  # purged: not served from the cache
    db.dispose()
