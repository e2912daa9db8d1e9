"""HTTP contract without running jobs: validation (422 naming the field), 413, API keys and
per-key isolation, idempotency, pagination, cancel of a queued job, health and metrics.

The app is used without its lifespan, so no worker picks up the jobs submitted here.
"""

from __future__ import annotations

import io
import uuid
from collections.abc import Iterator
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app import cli
from app.db import Database, utcnow
from app.main import create_app
from app.migrate import upgrade
from app.models import Structure
from app.settings import Settings, get_settings
from ml.crystal import Crystal
from workers.store import crystal_to_json

from .conftest import SMALL_JOB

MAX_BODY = 64 * 1024
# The malformed-CIF case makes pymatgen warn at length; the test checks the 422 instead.
pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    d = tmp_path_factory.mktemp("api")
    s = Settings(
        database_url=f"sqlite:///{d}/api.db",
        require_api_key=True,
        max_body_bytes=MAX_BODY,
        cors_origins=["http://lab.example"],
    )
    upgrade(s.database_url)
    return s


@pytest.fixture(scope="module")
def keys(settings: Settings) -> list[str]:
    """Two keys made with the `matdesign keys create` command."""
    import contextlib

    made = []
    mp = pytest.MonkeyPatch()
    mp.setenv("MATDESIGN_DATABASE_URL", settings.database_url)
    get_settings.cache_clear()
    try:
        for name in ("alice", "bob"):
            out = io.StringIO()
            with contextlib.redirect_stdout(out):
                assert cli.main(["keys", "create", "--name", name]) == 0
            made.append(out.getvalue().strip())
    finally:
        mp.undo()
        get_settings.cache_clear()
    return made


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    yield TestClient(create_app(settings))  # no `with`: no lifespan, no worker


def _h(key: str, **extra: str) -> dict[str, str]:
    return {"X-API-Key": key, **extra}


def _fields(r: Any) -> list[str]:
    assert r.status_code == 422, r.text
    return [e["field"] for e in r.json()["detail"]]


def _job(**changes: Any) -> dict[str, Any]:
    body = {**SMALL_JOB, **changes}
    return body


def test_keys_are_required_and_hashed(client: TestClient, keys: list[str], settings: Settings):
    assert client.get("/v1/jobs").status_code == 401
    assert client.get("/v1/jobs", headers=_h("mdk_wrong")).status_code == 401
    assert client.get("/v1/jobs", headers=_h(keys[0])).status_code == 200
    db = Database(settings.database_url)
    with db.engine.connect() as conn:
        stored = [r[0] for r in conn.exec_driver_sql("SELECT key_hash FROM api_keys")]
    db.dispose()
    assert len(stored) == 2 and not set(keys) & set(stored)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        ({"method": "alchemy"}, "body.method"),
        (
            {"objectives": [{"property": "beauty", "goal": "maximize"}]},
            "body.objectives.0.property",
        ),
        (
            {"constraints": {"elements": {"allowed": ["Ba", "Xx", "O"]}}},
            "body.constraints.elements.allowed",
        ),
        ({"num_candidates": -5}, "body.num_candidates"),
        ({"num_candidates": 10**9}, "body.num_candidates"),
        (
            {"constraints": {"templates": ["data_x\nthis is not a cif"]}},
            "body.constraints.templates",
        ),
        ({"params": {"datasets": ["perov5"], "bogus": 1}}, "body.params.bogus"),
        ({"params": {"batch_size": 0}}, "body.params.batch_size"),
        ({"constraints": {"max_atoms": 100000}}, "body.constraints.max_atoms"),
        (
            {"constraints": {"max_energy_above_hull": -0.05}},
            "body.constraints.max_energy_above_hull",
        ),
        (
            {"constraints": {"max_energy_above_hull": "inf"}},
            "body.constraints.max_energy_above_hull",
        ),
        (
            {"constraints": {"max_energy_above_hull": "NaN"}},
            "body.constraints.max_energy_above_hull",
        ),
        (
            {"constraints": {"elements": {"allowed": ["Na", "K"]}, "charge_neutral": True}},
            "body.constraints.elements.allowed",
        ),
    ],
)
def test_invalid_requests_name_the_field(
    client: TestClient, keys: list[str], change: dict[str, Any], field: str
) -> None:
    r = client.post("/v1/jobs", json=_job(**change), headers=_h(keys[0]))
    assert field in _fields(r)
    assert all(e["msg"] for e in r.json()["detail"])


def test_too_large_body_is_413(client: TestClient, keys: list[str]) -> None:
    big = _job(constraints={"templates": ["x" * (MAX_BODY + 1)]})
    r = client.post("/v1/jobs", json=big, headers=_h(keys[0]))
    assert r.status_code == 413 and "larger than" in r.json()["detail"]

    def chunks() -> Iterator[bytes]:  # no Content-Length: counted while reading
        yield b'{"method": "substitution", "params": {"pad": "'
        for _ in range(MAX_BODY // 1024 + 1):
            yield b"y" * 1024
        yield b'"}}'

    r = client.post(
        "/v1/jobs", content=chunks(), headers=_h(keys[0], **{"Content-Type": "application/json"})
    )
    assert r.status_code == 413


def test_another_keys_job_is_404(client: TestClient, keys: list[str], settings: Settings):
    alice, bob = keys
    r = client.post("/v1/jobs", json=_job(), headers=_h(alice))
    assert r.status_code == 202
    job_id = r.json()["id"]
    structure_id = _insert_structure(settings, job_id)
    for path in (
        f"/v1/jobs/{job_id}",
        f"/v1/jobs/{job_id}/structures",
        f"/v1/jobs/{job_id}/archive",
        f"/v1/structures/{structure_id}",
        f"/v1/structures/{structure_id}.cif",
    ):
        assert client.get(path, headers=_h(bob)).status_code == 404, path
        assert client.get(path, headers=_h(alice)).status_code == 200, path
    assert client.delete(f"/v1/jobs/{job_id}", headers=_h(bob)).status_code == 404
    assert job_id not in [j["id"] for j in client.get("/v1/jobs", headers=_h(bob)).json()["items"]]
    cif = client.get(f"/v1/structures/{structure_id}.cif", headers=_h(alice))
    assert cif.headers["content-type"].startswith("chemical/x-cif") and "_cell_length_a" in cif.text


def _insert_structure(settings: Settings, job_id: str) -> str:
    crystal = Crystal(np.eye(3) * 5.64, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
    sid = str(uuid.uuid4())
    db = Database(settings.database_url)
    with db.session() as s:
        s.add(
            Structure(
                id=sid,
                job_id=job_id,
                seq=1,
                fingerprint="f" * 64,
                rank=1,
                formula="NaCl",
                n_atoms=2,
                space_group=221,
                cif=crystal.to_cif(),
                relaxed_cif=None,
                crystal=crystal_to_json(crystal),
                relaxed=None,
                method_score=None,
                objective_loss=None,
                energy_above_hull=None,
                flags={"valid": True},
                hit=False,
                predicted={},
                meta={},
                created_at=utcnow(),
            )
        )
    db.dispose()
    return sid


def test_idempotency_key(client: TestClient, keys: list[str]) -> None:
    h = _h(keys[0], **{"Idempotency-Key": "order-66"})
    first = client.post("/v1/jobs", json=_job(seed=7), headers=h)
    again = client.post("/v1/jobs", json=_job(seed=7), headers=h)
    assert first.status_code == again.status_code == 202
    assert first.json()["id"] == again.json()["id"]
    assert again.headers["idempotent-replayed"] == "true"
    # Reuse with another body: 409 (docs/api.md), naming the key and the job it holds.
    other = client.post("/v1/jobs", json=_job(seed=8), headers=h)
    assert other.status_code == 409, other.text
    assert "order-66" in other.json()["detail"] and first.json()["id"] in other.json()["detail"]
    # The same idempotency key of another API key is another job.
    theirs = client.post(
        "/v1/jobs", json=_job(seed=7), headers=_h(keys[1], **{"Idempotency-Key": "order-66"})
    )
    assert theirs.status_code == 202 and theirs.json()["id"] != first.json()["id"]


def test_job_list_cursor_pagination(client: TestClient, keys: list[str]) -> None:
    key = keys[1]
    made = {
        client.post("/v1/jobs", json=_job(seed=100 + i), headers=_h(key)).json()["id"]
        for i in range(5)
    }
    seen: list[str] = []
    cursor = None
    while True:
        q = "/v1/jobs?limit=2" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(q, headers=_h(key)).json()
        assert len(page["items"]) <= 2
        seen += [j["id"] for j in page["items"]]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert made <= set(seen) and len(seen) == len(set(seen))
    created = [
        j["created_at"] for j in client.get("/v1/jobs?limit=100", headers=_h(key)).json()["items"]
    ]
    assert created == sorted(created, reverse=True)
    assert "query.cursor" in _fields(client.get("/v1/jobs?cursor=garbage", headers=_h(key)))
    assert "query.limit" in _fields(client.get("/v1/jobs?limit=100000", headers=_h(key)))
    queued = client.get("/v1/jobs?status=queued&limit=100", headers=_h(key)).json()["items"]
    assert queued and all(j["status"] == "queued" for j in queued)


def test_cancel_queued_job_and_finished_job_conflict(client: TestClient, keys: list[str]):
    job_id = client.post("/v1/jobs", json=_job(seed=55), headers=_h(keys[0])).json()["id"]
    r = client.delete(f"/v1/jobs/{job_id}", headers=_h(keys[0]))
    assert r.status_code == 200 and r.json()["status"] == "cancelled"
    # Cancelling again leaves it cancelled.
    assert client.delete(f"/v1/jobs/{job_id}", headers=_h(keys[0])).json()["status"] == "cancelled"


def test_catalog_health_metrics_cors_page(client: TestClient, keys: list[str]) -> None:
    methods = client.get("/v1/methods", headers=_h(keys[0])).json()
    sub = next(m for m in methods if m["name"] == "substitution")
    assert "step_delay_s" in sub["params_schema"]["properties"]
    assert sub["defaults"]["datasets"] == ["mp20"]
    oracles = {o["name"]: o for o in client.get("/v1/oracles", headers=_h(keys[0])).json()}
    assert oracles["chgnet-eform"]["unit"] == "eV/atom"
    assert "formation_energy" in oracles["chgnet-eform"]["default_for"]
    assert client.get("/healthz").json()["status"] == "ok"
    metrics = client.get("/metrics")
    assert metrics.status_code == 200
    assert 'matdesign_http_requests_total{method="GET",route="/v1/jobs"' in metrics.text
    assert "matdesign_jobs{" in metrics.text
    pre = client.options(
        "/v1/jobs",
        headers={
            "Origin": "http://lab.example",
            "Access-Control-Request-Method": "POST",
            "Access-Control-Request-Headers": "X-API-Key",
        },
    )
    assert pre.headers["access-control-allow-origin"] == "http://lab.example"
    page = client.get("/")
    assert page.status_code == 200 and "<form" in page.text and "/static/main.js" in page.text
    spec = client.get("/openapi.json").json()
    assert {"/v1/jobs", "/v1/jobs/{job_id}/archive", "/v1/score"} <= set(spec["paths"])


def test_score_validation(client: TestClient, keys: list[str]) -> None:
    good = Crystal(np.eye(3) * 5.64, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17]).to_cif()
    r = client.post(
        "/v1/score", json={"cifs": [good, "not a cif"], "oracles": ["density"]}, headers=_h(keys[0])
    )
    assert "body.cifs.1" in _fields(r)
    r = client.post(
        "/v1/score",
        json={"cifs": [good], "oracles": ["density", "oracle-of-delphi"]},
        headers=_h(keys[0]),
    )
    assert "body.oracles.1" in _fields(r)
    r = client.post("/v1/score", json={"cifs": [good], "oracles": ["density"]}, headers=_h(keys[0]))
    assert r.status_code == 200
    density = r.json()["items"][0]["scores"]["density"]
    assert density["unit"] == "g/cm^3" and density["value"] == pytest.approx(
        0.5409, abs=1e-3
    )  # 2 atoms in 5.64^3
