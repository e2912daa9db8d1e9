"""What a new user trips over (issue 23): bad inputs get a 422 that names the field and says
why, defaults fit the deployment, jobs can be labelled and purged, the schema explains itself,
the readiness check sees missing models and data, and non-PBE gaps carry their caveat.

The app runs without its lifespan (no worker), on SQLite; the score test loads MEGNet.
"""

from __future__ import annotations

import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any, get_args

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select, update

from app.db import Database, utcnow
from app.examples import EXAMPLES
from app.jobs import validate_design
from app.main import create_app
from app.migrate import upgrade
from app.models import Job, OracleScore, Structure
from app.settings import Settings
from ml.crystal import Crystal
from ml.methods.registry import method_names
from ml.oracles.registry import fidelities, list_oracles
from ml.request import DesignRequest, Fidelity
from ml.settings import get_ml_settings
from workers.store import crystal_to_json

from .conftest import SMALL_JOB


@pytest.fixture(scope="module")
def settings(tmp_path_factory: pytest.TempPathFactory) -> Settings:
    d = tmp_path_factory.mktemp("newuser")
    s = Settings(database_url=f"sqlite:///{d}/newuser.db")
    upgrade(s.database_url)
    return s


@pytest.fixture(scope="module")
def client(settings: Settings) -> Iterator[TestClient]:
    yield TestClient(create_app(settings))  # no lifespan: jobs stay queued


def _post(client: TestClient, **changes: Any) -> Any:
    return client.post("/v1/jobs", json={**SMALL_JOB, **changes})


def _error(r: Any) -> tuple[str, str]:
    assert r.status_code == 422, r.text
    first = r.json()["detail"][0]
    return first["field"], first["msg"]


# --- bad inputs ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "field", "says"),
    [
        (  # was a 500 from inside the method
            {"method": "conditional", "constraints": {"composition": "LiFeQO4"}, "params": {}},
            "body.constraints.composition",
            "unknown element symbols: 'Q'",
        ),
        (
            {"method": "conditional", "constraints": {"composition": "lifepo4"}, "params": {}},
            "body.constraints.composition",
            "case-sensitive",
        ),
        (  # no multiple of LiFePO4 fits 20 atoms in Pnma (it needs Z = 4, 28 atoms)
            {
                "method": "conditional",
                "constraints": {"composition": "LiFePO4", "space_groups": [62]},
                "params": {},
            },
            "body.constraints.space_groups",
            "62 (Pnma) needs Z in [4",
        ),
        (
            {
                "method": "conditional",
                "constraints": {"composition": "ZnO", "formula_units": [1], "space_groups": [186]},
                "params": {},
            },
            "body.constraints.space_groups",
            "186 (P63mc) needs Z in [2",
        ),
        (  # the anion is there but excluded: say so, not "no allowed element forms one"
            {"constraints": {"elements": {"allowed": ["Ba", "Ti", "O"], "excluded": ["O"]}}},
            "body.constraints.elements.excluded",
            "excluding ['O'] leaves no usable element",
        ),
        (
            {"constraints": {"formula_units": [2]}},
            "body.constraints.formula_units",
            "needs a composition",
        ),
    ],
)
def test_bad_inputs_get_a_422_saying_why(
    client: TestClient, body: dict[str, Any], field: str, says: str
) -> None:
    r = _post(client, **body)
    got_field, msg = _error(r)
    assert got_field == field and says in msg, msg


def test_a_target_without_tolerance_stores_its_band(client: TestClient) -> None:
    objectives = [{"property": "band_gap", "goal": "target", "value": 2.5}]
    r = _post(client, objectives=objectives)
    assert r.status_code == 202, r.text
    stored = r.json()["request"]["objectives"][0]
    assert stored["tolerance"] == pytest.approx(0.25)  # 10 % of |value|, at least 0.1
    assert (
        "10 %"
        in DesignRequest.model_json_schema()["$defs"]["Objective"]["properties"]["tolerance"][
            "description"
        ]
    )


# --- defaults that fit the deployment -------------------------------------------------------


def test_defaults_follow_the_deployment(client: TestClient) -> None:
    body = {k: v for k, v in SMALL_JOB.items() if k not in ("relax", "num_candidates")}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    assert r.json()["request"]["relax"] is False  # embedded CPU server
    assert r.json()["request"]["num_candidates"] == 8
    explicit = client.post("/v1/jobs", json={**body, "relax": True, "num_candidates": 3}).json()
    assert explicit["request"]["relax"] is True and explicit["request"]["num_candidates"] == 3
    request = DesignRequest.model_validate(body)
    celery = Settings(database_url="sqlite://", broker_url="redis://127.0.0.1:6379/0")
    assert validate_design(request, celery).relax is True
    assert validate_design(request, celery).num_candidates == 64
    pinned = Settings(database_url="sqlite://", default_relax=True, default_num_candidates=2)
    assert validate_design(request, pinned).relax is True
    assert validate_design(request, pinned).num_candidates == 2
    schema = client.get("/openapi.json").json()["components"]["schemas"]["DesignRequest"]
    assert schema["properties"]["relax"]["default"] is False
    assert schema["properties"]["num_candidates"]["default"] == 8


# --- labels, short objectives, purge --------------------------------------------------------


def test_label_is_shown_and_filterable_with_objectives_in_short(client: TestClient) -> None:
    label = f"perovskites {uuid.uuid4().hex[:6]}"
    job = _post(client, label=label).json()
    _post(client, label="something else")
    assert job["label"] == label
    assert job["objectives"] == "band_gap = 1.5 ± 0.5 eV; formation_energy < -0.5 eV/atom"
    items = client.get("/v1/jobs", params={"label": label}).json()["items"]
    assert [j["id"] for j in items] == [job["id"]]
    assert items[0]["objectives"] == job["objectives"]


def _finish_with_structure(settings: Settings, job_id: str) -> None:
    crystal = Crystal(np.eye(3) * 5.64, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17])
    db = Database(settings.database_url)
    sid = str(uuid.uuid4())
    with db.session() as s:
        s.add(
            Structure(
                id=sid,
                job_id=job_id,
                seq=1,
                fingerprint=uuid.uuid4().hex,
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
                energy_above_hull=0.1,
                flags={"valid": True},
                hit=False,
                predicted={},
                meta={},
                created_at=utcnow(),
            )
        )
        s.add(
            OracleScore(
                structure_id=sid,
                property="density",
                oracle="density",
                version="exact",
                value=2.1,
                unit="g/cm^3",
            )
        )
        s.execute(update(Job).where(Job.id == job_id).values(status="succeeded"))
    db.dispose()


def _count(settings: Settings, model: Any, *where: Any) -> int:
    db = Database(settings.database_url)
    with db.session() as s:
        n = s.scalar(select(func.count()).select_from(model).where(*where))
    db.dispose()
    return int(n or 0)


def test_purge_removes_a_finished_job_and_its_structures(
    client: TestClient, settings: Settings
) -> None:
    queued = _post(client).json()["id"]
    r = client.delete(f"/v1/jobs/{queued}", params={"purge": "true"})
    assert r.status_code == 409 and "cancel it first" in r.json()["detail"]
    job_id = _post(client, seed=7).json()["id"]
    _finish_with_structure(settings, job_id)
    other = _post(client, seed=8).json()["id"]
    _finish_with_structure(settings, other)
    assert _count(settings, Structure, Structure.job_id == job_id) == 1
    r = client.delete(f"/v1/jobs/{job_id}", params={"purge": "true"})
    assert r.status_code == 204, r.text
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert _count(settings, Structure, Structure.job_id == job_id) == 0
    assert _count(settings, OracleScore, OracleScore.structure_id.not_in(select(Structure.id))) == 0
    # The other finished job keeps its structures.
    assert _count(settings, Structure, Structure.job_id == other) == 1
    assert client.delete(f"/v1/jobs/{job_id}", params={"purge": "true"}).status_code == 404


# --- the schema explains itself -------------------------------------------------------------


def test_openapi_fields_described_enums_from_registries_and_examples(client: TestClient) -> None:
    from benchmarks.openapi_coverage import coverage

    schema = client.get("/openapi.json").json()
    cov = coverage(schema)
    assert cov["undescribed"] == []
    # Every number states its unit (or that it is a count, a position or unitless).
    assert cov["numeric_fields"] >= 20 and cov["numeric_without_unit"] == []
    comps = schema["components"]["schemas"]
    assert comps["DesignRequest"]["properties"]["method"]["enum"] == method_names()
    prop_enum = comps["Objective"]["properties"]["property"]["enum"]
    assert {"band_gap", "formation_energy", "energy_above_hull"} <= set(prop_enum)
    assert comps["Objective"]["properties"]["goal"]["enum"] == [
        "minimize",
        "maximize",
        "target",
        "below",
        "above",
    ]
    fidelity = comps["Objective"]["properties"]["fidelity"]["anyOf"][0]["enum"]
    assert fidelity == fidelities("band_gap") == list(get_args(Fidelity))
    filters = schema["paths"]["/v1/jobs"]["get"]["parameters"]
    method_filter = next(p for p in filters if p["name"] == "method")
    assert method_filter["schema"]["anyOf"][0]["enum"] == method_names()
    oracle_items = comps["ScoreRequest"]["properties"]["oracles"]["anyOf"][0]["items"]
    assert oracle_items["enum"] == [o.name for o in list_oracles()]
    assert set(comps["Flags"]["properties"]) >= {"valid", "stable", "metastable", "hit"}
    assert "0.1 eV/atom" in comps["Flags"]["properties"]["metastable"]["description"]
    examples = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    assert set(examples) == set(method_names())


@pytest.mark.parametrize("method", sorted(EXAMPLES))
def test_every_method_example_is_accepted(client: TestClient, method: str) -> None:
    from ml.methods.registry import get_method

    r = client.post("/v1/jobs", json=EXAMPLES[method]["value"])
    if get_method(method).missing_weights():
        # Not trained yet on this server: refused at submission, saying what is missing.
        assert r.status_code == 422 and "not installed" in r.text, r.text
        return
    assert r.status_code == 202, r.text
    assert r.json()["method"] == method


# --- readiness: models and data -------------------------------------------------------------


def test_readyz_is_not_ready_without_models_and_data(
    settings: Settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from app.auth import create_key
    from app.db import Database

    # Each check's detail goes to admin keys only (issue 19); everyone sees the status.
    admin_settings = settings.model_copy(update={"admin_keys": ["ops"]})
    _, key = create_key(Database(settings.database_url), "ops")
    client = TestClient(create_app(admin_settings), headers={"X-API-Key": key})
    ok = client.get("/readyz").json()["checks"]["models_data"]
    assert ok["ok"] is True, ok
    monkeypatch.setenv("MATDESIGN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MATDESIGN_DATA_DIR", str(tmp_path / "data"))
    get_ml_settings.cache_clear()
    try:
        r = client.get("/readyz")
    finally:
        monkeypatch.undo()
        get_ml_settings.cache_clear()
    assert r.status_code == 503
    check = r.json()["checks"]["models_data"]
    assert check["ok"] is False
    assert "MEGNet-MP-2018.6.1-Eform/model.pt" in check["detail"]
    assert "MATDESIGN_MODELS_DIR" in check["detail"]


def test_server_start_warns_which_models_and_data_are_missing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    settings = Settings(
        database_url=f"sqlite:///{tmp_path}/start.db", worker_warm_up=False, sweeper_enabled=False
    )
    monkeypatch.setenv("MATDESIGN_MODELS_DIR", str(tmp_path / "models"))
    monkeypatch.setenv("MATDESIGN_DATA_DIR", str(tmp_path / "data"))
    get_ml_settings.cache_clear()
    try:
        with caplog.at_level("WARNING", logger="app.main"), TestClient(create_app(settings)) as c:
            assert c.get("/readyz").json() == {"status": "not ready"}  # no admin key: no detail
    finally:
        monkeypatch.undo()
        get_ml_settings.cache_clear()
    warnings = [r.getMessage() for r in caplog.records if r.name == "app.main"]
    assert len(warnings) == 1, warnings
    assert "every job would fail" in warnings[0]
    assert str(tmp_path / "data" / "mp20") in warnings[0]
    assert "MATDESIGN_DATA_DIR" in warnings[0]


# --- scores with their caveats --------------------------------------------------------------


def test_non_pbe_gaps_carry_the_fidelity_caveat(client: TestClient) -> None:
    cif = Crystal(np.eye(3) * 5.64, [[0, 0, 0], [0.5, 0.5, 0.5]], [11, 17]).to_cif()
    r = client.post(
        "/v1/score", json={"cifs": [cif], "oracles": ["megnet-gap-pbe", "megnet-gap-hse"]}
    )
    assert r.status_code == 200, r.text
    scores = r.json()["items"][0]["scores"]
    assert scores["megnet-gap-pbe"]["note"] is None
    note = scores["megnet-gap-hse"]["note"]
    assert "multi-fidelity MEGNet" in note and "megnet-gap-pbe" in note
    below = scores["megnet-gap-hse"]["value"] < scores["megnet-gap-pbe"]["value"] - 0.05
    assert note.startswith("Below the PBE gap here") == below
    oracles = {o["name"]: o for o in client.get("/v1/oracles").json()}
    assert "multi-fidelity" in oracles["megnet-gap-hse"]["description"]


def test_job_structures_carry_the_caveat_of_a_non_pbe_gap(
    client: TestClient, settings: Settings
) -> None:
    objectives = [{"property": "band_gap", "goal": "above", "value": 1.0, "fidelity": "hse"}]
    job_id = _post(client, objectives=objectives, seed=11).json()["id"]
    _finish_with_structure(settings, job_id)
    db = Database(settings.database_url)
    with db.session() as s:
        sid = s.scalar(select(Structure.id).where(Structure.job_id == job_id))
        s.add(
            OracleScore(
                structure_id=sid,
                property="band_gap",
                oracle="megnet-gap-hse",
                version="v",
                value=0.4,
                unit="eV",
            )
        )
    db.dispose()
    item = client.get(f"/v1/jobs/{job_id}/structures").json()["items"][0]
    assert "multi-fidelity MEGNet" in item["scores"]["band_gap"]["note"]
    assert item["scores"]["density"]["note"] is None
