"""Issue 11, must-show 5: jobs through the API whose stored scores name their oracles: the new
defaults, and oracles the request picks by name (CHGNet as the stability judge)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings

from .conftest import FAST, SMALL_JOB, finished, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("oracles")
    settings = Settings(database_url=f"sqlite:///{d}/var/matdesign.db", **FAST)
    with TestClient(create_app(settings)) as c:
        yield c


def _run(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["id"], finished, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    assert job["request"]["oracles"] == body.get("oracles", {})
    items = client.get(f"/v1/jobs/{job['id']}/structures").json()["items"]
    return [s for s in items if s["flags"]["valid"]]


def test_default_job_scores_name_the_new_band_gap_oracle(client: TestClient) -> None:
    for s in _run(client, SMALL_JOB):
        assert s["scores"]["band_gap"]["oracle"] == "gap-chgnet-ft"
        assert s["scores"]["band_gap"]["value"] >= 0.0
        assert s["scores"]["energy_above_hull"]["oracle"] == "chgnet-energy"
        assert "unrelaxed" in s["scores"]["energy_above_hull"]["version"]


def test_job_picks_oracles_by_name(client: TestClient) -> None:
    body = {
        **SMALL_JOB,
        "oracles": {
            "energy_above_hull": "chgnet-energy",
            "band_gap": "megnet-gap-pbe",
            "formation_energy": "sevennet-0-eform",
        },
    }
    structures = _run(client, body)
    assert structures
    for s in structures:
        assert s["scores"]["band_gap"]["oracle"] == "megnet-gap-pbe"
        assert s["scores"]["formation_energy"]["oracle"] == "sevennet-0-eform"
        assert s["scores"]["energy_above_hull"]["oracle"] == "chgnet-energy"


@pytest.mark.parametrize(
    ("oracles", "field"),
    [({"band_gap": "nope"}, "oracles"), ({"energy_above_hull": "density"}, "oracles")],
)
def test_unusable_oracle_is_a_422_naming_the_field(
    client: TestClient, oracles: dict[str, str], field: str
) -> None:
    r = client.post("/v1/jobs", json={**SMALL_JOB, "oracles": oracles})
    assert r.status_code == 422, r.text
    assert field in r.text and next(iter(oracles)) in r.text
