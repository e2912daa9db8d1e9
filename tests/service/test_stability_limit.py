"""``constraints.max_energy_above_hull`` through the API and the real runner (embedded default,
real substitution method and pipeline): the job over-generates and returns only crystals
meeting the limit, or fewer than asked with the reason in the summary; the summary carries the
S.U.N.-hit figures, also in the archive's summary.json.

The SMALL_JOB substitutions (unrelaxed perovskite-derived Ba/Sr/Ca-Ti/Zr-O/S cells) have
CHGNet E_hull from about 0.11 to 2.3 eV/atom: a limit of 1.0 leaves enough of the 4x
over-generation, 0.2 leaves fewer than asked."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from ml.pipeline.generation import EHULL_OVERSAMPLE

from .conftest import FAST, SMALL_JOB, finished, wait_for

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("ehull")
    settings = Settings(database_url=f"sqlite:///{d}/matdesign.db", **FAST)
    with TestClient(create_app(settings)) as c:
        yield c


def _run(client: TestClient, limit: float) -> tuple[dict[str, Any], list[dict[str, Any]]]:
    body = {**SMALL_JOB, "constraints": {**SMALL_JOB["constraints"]}}
    body["constraints"]["max_energy_above_hull"] = limit
    # Proposal order, without substitution's oracle pre-screen, whose picks for the band-gap
    # target may all lie under the limit: these tests need some to be rejected.
    body["params"] = {**SMALL_JOB.get("params", {}), "prescreen": 1}
    r = client.post("/v1/jobs", json=body)
    assert r.status_code == 202, r.text
    job = wait_for(client, r.json()["id"], finished, timeout=300)
    assert job["status"] == "succeeded", job["error"]
    items = client.get(f"/v1/jobs/{job['id']}/structures?limit=100").json()["items"]
    return job, items


def test_only_crystals_within_the_limit_are_returned(client: TestClient) -> None:
    job, items = _run(client, 1.0)
    s = job["summary"]
    n = SMALL_JOB["num_candidates"]
    assert s["n_candidates"] == len(items) == n and s["n_requested"] == n
    for item in items:
        assert item["flags"]["valid"] and item["energy_above_hull"] <= 1.0
        assert "max_energy_above_hull" not in item["meta"].get("violations", [])
    gen = s["generation"]
    assert gen["budget"] == EHULL_OVERSAMPLE * n and gen["max_energy_above_hull"] == 1.0
    assert gen["oversample"] == EHULL_OVERSAMPLE
    # Some were dropped on the way, and every stored one was evaluated.
    assert gen["n_rejected"] >= 1 and gen["n_evaluated"] >= n + gen["n_rejected"]
    assert "shortfall" not in s
    # The headline figures, on unrelaxed crystals here, and the same in the archive.
    assert 0.0 <= s["sun_hit_rate"] <= 1.0 and s["n_sun_hit"] <= s["n_hits"]
    assert s["stable_sun_hit_rate"] <= s["sun_hit_rate"]
    assert s["stability_basis"] == "unrelaxed" and "unrelaxed" in s["stability_note"]
    archive = client.get(f"/v1/jobs/{job['id']}/archive")
    summary_json = json.loads(zipfile.ZipFile(io.BytesIO(archive.content)).read("summary.json"))
    for key in ("sun_hit_rate", "n_sun_hit", "stable_sun_hit_rate", "n_stable_sun_hit"):
        assert summary_json["summary"][key] == s[key]
    assert summary_json["summary"]["stability_note"] == s["stability_note"]


def test_fewer_than_asked_says_why(client: TestClient) -> None:
    job, items = _run(client, 0.2)
    s = job["summary"]
    n = SMALL_JOB["num_candidates"]
    assert len(items) == s["n_candidates"] < n
    assert all(item["energy_above_hull"] <= 0.2 for item in items)
    gen = s["generation"]
    assert gen["exhausted"] and gen["n_generated"] == gen["budget"]
    assert gen["n_rejected"] == gen["n_evaluated"] - len(items)
    assert s["shortfall"].startswith(f"returned {len(items)} of {n} requested")
    assert "energy above hull above 0.2 eV/atom" in s["shortfall"]
