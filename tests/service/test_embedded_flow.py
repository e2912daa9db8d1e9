"""Must-show 1: the embedded default (SQLite + in-process worker running the Celery task)
takes a real substitution job from submit to ranked, scored structures."""

from __future__ import annotations

import csv
import io
import json
import warnings
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pymatgen.io.cif import CifParser

from app.main import create_app
from app.settings import Settings

from .conftest import FAST, SMALL_JOB, finished, wait_for

pytestmark = pytest.mark.slow

FLAGS = {"valid", "charge_neutral", "unique", "novel", "stable", "hit"}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("embedded")
    settings = Settings(database_url=f"sqlite:///{d}/var/matdesign.db", **FAST)
    assert settings.embedded
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def finished_job(client: TestClient) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=SMALL_JOB)
    assert r.status_code == 202, r.text
    job_id = r.json()["id"]
    assert r.headers["location"] == f"/v1/jobs/{job_id}"
    assert r.json()["status"] == "queued"
    return wait_for(client, job_id, finished, timeout=300)


def _parse(cif: str) -> Any:
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return CifParser.from_str(cif).parse_structures(primitive=False)[0]


def test_job_succeeds_with_scored_parseable_structures(
    client: TestClient, finished_job: dict[str, Any]
) -> None:
    job = finished_job
    assert job["status"] == "succeeded", job["error"]
    assert job["started_at"] and job["finished_at"] and job["attempts"] == 1
    summary = job["summary"]
    assert summary["n_candidates"] == SMALL_JOB["num_candidates"], summary
    assert summary["versions"]["method"]["name"] == "substitution"
    assert summary["versions"]["oracles"]["formation_energy"]["oracle"] == "chgnet-eform"
    assert summary["seed"] == 0 and summary["timings"]["total_s"] > 0

    items = client.get(f"/v1/jobs/{job['id']}/structures?limit=100").json()["items"]
    assert len(items) == summary["n_candidates"]
    assert [s["rank"] for s in items] == list(range(1, len(items) + 1))
    for s in items:
        structure = _parse(s["cif"])
        assert structure.composition.reduced_formula == s["formula"]
        assert len(structure) == s["n_atoms"]
        assert set(s["flags"]) >= FLAGS
        assert s["meta"]["reference"] and s["meta"]["substitutions"]
        if s["flags"]["valid"]:
            for prop in ("formation_energy", "band_gap"):
                score = s["scores"][prop]
                assert isinstance(score["value"], float)
                assert score["unit"] and score["oracle"] and score["version"]
    hits = client.get(f"/v1/jobs/{job['id']}/structures?hits_only=true").json()["items"]
    assert all(s["flags"]["hit"] for s in hits)
    assert len(hits) == sum(s["flags"]["hit"] for s in items)


def test_structure_pages_single_structures_and_cif(
    client: TestClient, finished_job: dict[str, Any]
) -> None:
    job_id = finished_job["id"]
    full = client.get(f"/v1/jobs/{job_id}/structures?limit=100").json()["items"]
    paged, cursor = [], None
    while True:
        url = f"/v1/jobs/{job_id}/structures?limit=1" + (f"&cursor={cursor}" if cursor else "")
        page = client.get(url).json()
        paged += page["items"]
        cursor = page["next_cursor"]
        if not cursor:
            break
    assert [s["id"] for s in paged] == [s["id"] for s in full]
    first = full[0]
    assert client.get(f"/v1/structures/{first['id']}").json() == first
    cif = client.get(f"/v1/structures/{first['id']}.cif")
    assert cif.headers["content-type"].startswith("chemical/x-cif")
    assert _parse(cif.text).composition.reduced_formula == first["formula"]


def test_archive_holds_cifs_summary_and_table(
    client: TestClient, finished_job: dict[str, Any]
) -> None:
    r = client.get(f"/v1/jobs/{finished_job['id']}/archive")
    assert r.status_code == 200 and r.headers["content-type"] == "application/zip"
    z = zipfile.ZipFile(io.BytesIO(r.content))
    names = z.namelist()
    cifs = [n for n in names if n.endswith(".cif")]
    assert len(cifs) == finished_job["summary"]["n_candidates"]
    assert json.loads(z.read("summary.json"))["id"] == finished_job["id"]
    rows = list(csv.DictReader(io.StringIO(z.read("structures.csv").decode())))
    assert len(rows) == len(cifs) and {r["cif_file"] for r in rows} == set(cifs)
    # Substitution provenance and units in the header (one column per field).
    assert all(r["reference_material"] and r["reference_formula"] for r in rows)
    assert "energy_above_hull (eV/atom)" in rows[0] and "energy_above_hull" not in rows[0]
    assert _parse(z.read(cifs[0]).decode()).composition.reduced_formula == rows[0]["formula"]


def test_readyz_and_score_endpoint(client: TestClient, finished_job: dict[str, Any]) -> None:
    ready = client.get("/readyz")
    assert ready.status_code == 200, ready.text
    assert ready.json() == {"status": "ready"}  # details are for admin keys only
    items = client.get(f"/v1/jobs/{finished_job['id']}/structures?limit=2").json()["items"]
    r = client.post("/v1/score", json={"cifs": [s["cif"] for s in items]})
    assert r.status_code == 200, r.text
    for scored, stored in zip(r.json()["items"], items, strict=True):
        eform = scored["scores"]["chgnet-eform"]["value"]
        # Same oracle, same (unrelaxed) crystal: the job's stored score.
        assert eform == pytest.approx(stored["scores"]["formation_energy"]["value"], abs=1e-4)


def test_python_client(client: TestClient, finished_job: dict[str, Any], tmp_path: Any) -> None:
    from app.client import ApiError, Client

    c = Client(http=client)  # type: ignore[arg-type]
    job_id = finished_job["id"]
    assert c.wait(job_id, timeout=5)["status"] == "succeeded"
    assert job_id in [j["id"] for j in c.jobs(status="succeeded")]
    structures = list(c.structures(job_id, page_size=1))
    assert len(structures) == finished_job["summary"]["n_candidates"]
    path = c.download_archive(job_id, tmp_path / "job.zip")
    assert "summary.json" in zipfile.ZipFile(path).namelist()
    with pytest.raises(ApiError) as err:
        c.submit({**SMALL_JOB, "method": "nope"})
    assert err.value.status_code == 422 and "body.method" in str(err.value)
