"""Events, export formats and the client's pymatgen results on a real embedded job: the
event stream of a job, extxyz and OPTIMADE JSON read back by ASE and pymatgen (and validated by
the ``optimade`` package's models), the archive's members, the CLI's table and progress bar."""

from __future__ import annotations

import io
import json
import zipfile
from collections.abc import Iterator
from typing import Any

import pytest
from ase.io import read as ase_read
from fastapi.testclient import TestClient
from pymatgen.analysis.structure_matcher import StructureMatcher
from pymatgen.core import Lattice, Structure
from pymatgen.io.ase import AseAtomsAdaptor

from app.cli_views import JobProgressBar, results_table
from app.client import Client, DesignedStructure, parse_sse
from app.main import create_app
from app.settings import Settings

from .conftest import FAST, SMALL_JOB, finished, wait_for

pytestmark = pytest.mark.slow

# Slowed per batch so that a stream sees it running.
SLOW_JOB: dict[str, Any] = {
    **SMALL_JOB,
    "num_candidates": 6,
    "params": {**SMALL_JOB["params"], "batch_size": 2, "step_delay_s": 0.4},
}


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("lab")
    settings = Settings(database_url=f"sqlite:///{d}/matdesign.db", **FAST)
    with TestClient(create_app(settings)) as c:
        yield c


@pytest.fixture(scope="module")
def job(client: TestClient) -> dict[str, Any]:
    r = client.post("/v1/jobs", json=SMALL_JOB)
    assert r.status_code == 202, r.text
    done = wait_for(client, r.json()["id"], finished, timeout=300)
    assert done["status"] == "succeeded", done["error"]
    return done


@pytest.fixture(scope="module")
def items(client: TestClient, job: dict[str, Any]) -> list[dict[str, Any]]:
    return client.get(f"/v1/jobs/{job['id']}/structures?limit=100").json()["items"]


def _events(client: TestClient, job_id: str) -> list[tuple[str, dict[str, Any]]]:
    with client.stream("GET", f"/v1/jobs/{job_id}/events") as r:
        assert r.status_code == 200
        assert r.headers["content-type"].startswith("text/event-stream")
        return list(parse_sse(r.iter_lines()))


def test_event_stream_of_a_running_job(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json=SLOW_JOB).json()["id"]
    events = _events(client, job_id)
    kinds = [e for e, _ in events]
    assert kinds[-1] == "end" and kinds.count("end") == 1 and "progress" in kinds
    running = [d["progress"] for e, d in events if e == "progress" and d["status"] == "running"]
    assert len({(p["phase"], p["step"]) for p in running}) >= 2, running
    stored = [d for e, d in events if e == "candidates"]
    ids = [item["id"] for d in stored for item in d["items"]]
    end = events[-1][1]
    assert end["status"] == "succeeded"
    assert len(ids) == len(set(ids)) == end["summary"]["n_candidates"]
    assert stored[-1]["stored"] == len(ids)
    assert all("band_gap" in item["scores"] for d in stored for item in d["items"])


def test_event_stream_of_a_finished_job_ends_at_once(
    client: TestClient, job: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    events = _events(client, job["id"])
    assert [e for e, _ in events] == ["candidates", "progress", "end"]
    assert events[0][1]["stored"] == len(items)


def test_event_stream_of_an_unknown_job_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/no-such-job/events").status_code == 404


def test_extxyz_read_back_by_ase_and_pymatgen(
    client: TestClient, job: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    r = client.get(f"/v1/jobs/{job['id']}/structures?format=extxyz")
    assert r.status_code == 200 and r.headers["content-type"].startswith("chemical/x-extxyz")
    frames = ase_read(io.StringIO(r.text), index=":", format="extxyz")
    assert len(frames) == len(items)
    matcher = StructureMatcher()
    for atoms, item in zip(frames, items, strict=True):
        assert atoms.info["matdesign_id"] == item["id"]
        assert atoms.info["rank"] == item["rank"]
        assert atoms.info["geometry"] == "proposed"
        assert atoms.info["band_gap_eV"] == pytest.approx(item["scores"]["band_gap"]["value"])
        fe = item["scores"]["formation_energy"]["value"]
        assert atoms.info["formation_energy_eV_per_atom"] == pytest.approx(fe)
        assert atoms.info["flag_hit"] == item["flags"]["hit"]
        assert all(atoms.pbc)
        structure = AseAtomsAdaptor.get_structure(atoms)
        original = Structure.from_str(item["cif"], fmt="cif")
        assert structure.composition.reduced_formula == item["formula"]
        assert matcher.fit(structure, original)
    hits = client.get(f"/v1/jobs/{job['id']}/structures?format=extxyz&hits_only=true").text
    n_hits = sum(1 for s in items if s["flags"]["hit"])
    if n_hits:
        assert len(ase_read(io.StringIO(hits), index=":", format="extxyz")) == n_hits
    else:
        assert hits == ""


def test_optimade_json_read_back_and_validated(
    client: TestClient, job: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    r = client.get(f"/v1/jobs/{job['id']}/structures?format=optimade")
    assert r.status_code == 200
    doc = r.json()
    assert doc["meta"]["data_returned"] == len(items) == len(doc["data"])
    matcher = StructureMatcher()
    for entry, item in zip(doc["data"], items, strict=True):
        a = entry["attributes"]
        assert entry["type"] == "structures" and entry["id"] == item["id"]
        assert a["_matdesign_rank"] == item["rank"]
        assert a["_matdesign_band_gap"] == pytest.approx(item["scores"]["band_gap"]["value"])
        assert a["_matdesign_flags"] == item["flags"]
        assert a["_matdesign_units"]["band_gap"] == "eV"
        # pymatgen, straight from the OPTIMADE fields.
        s = Structure(
            Lattice(a["lattice_vectors"]),
            a["species_at_sites"],
            a["cartesian_site_positions"],
            coords_are_cartesian=True,
        )
        assert matcher.fit(s, Structure.from_str(item["cif"], fmt="cif"))
        assert a["nsites"] == item["n_atoms"] == len(s)


def test_optimade_models_and_adapters_accept_it(
    client: TestClient, job: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    models = pytest.importorskip("optimade.models")
    adapters = pytest.importorskip("optimade.adapters")
    doc = client.get(f"/v1/jobs/{job['id']}/structures?format=optimade").json()
    models.StructureResponseMany(**doc)
    for entry, item in zip(doc["data"], items, strict=True):
        resource = adapters.Structure(entry)
        atoms = resource.convert("ase")
        structure = resource.convert("pymatgen")
        assert len(atoms) == len(structure) == item["n_atoms"]
        assert structure.composition.reduced_formula == item["formula"]


def test_archive_holds_extxyz_and_optimade(client: TestClient, job: dict[str, Any]) -> None:
    r = client.get(f"/v1/jobs/{job['id']}/archive")
    with zipfile.ZipFile(io.BytesIO(r.content)) as z:
        names = set(z.namelist())
        assert {"structures.extxyz", "structures.optimade.json"} <= names
        frames = ase_read(
            io.StringIO(z.read("structures.extxyz").decode()), index=":", format="extxyz"
        )
        doc = json.loads(z.read("structures.optimade.json"))
    assert len(frames) == len(doc["data"]) == job["summary"]["n_candidates"]


def test_client_results_are_pymatgen_structures_with_scores(
    client: TestClient, job: dict[str, Any], items: list[dict[str, Any]]
) -> None:
    c = Client(http=client)
    seen: list[str] = []
    done = c.follow(job["id"], on_event=lambda e, _: seen.append(e))
    assert done["status"] == "succeeded" and seen[-1] == "end"
    results = c.results(job["id"])
    assert [d.id for d in results] == [s["id"] for s in items]
    for d, item in zip(results, items, strict=True):
        assert isinstance(d, DesignedStructure) and isinstance(d.structure, Structure)
        assert d.structure.composition.reduced_formula == d.formula == item["formula"]
        assert d.scores["band_gap"] == item["scores"]["band_gap"]["value"]
        assert d.units["formation_energy"] == "eV/atom"
        assert d.relaxed is None  # relax was off
        assert d.sun == all(item["flags"][f] for f in ("stable", "unique", "novel"))


def test_cli_results_table(items: list[dict[str, Any]]) -> None:
    lines = results_table(items).splitlines()
    header = lines[0]
    assert "band_gap (eV)" in header and "formation_energy (eV/atom)" in header
    assert "E_hull (eV/atom)" in header
    rows = lines[2 : 2 + len(items)]
    assert [int(r.split()[0]) for r in rows] == [s["rank"] for s in items]
    assert [r.split()[1] for r in rows] == [s["formula"] for s in items]
    assert lines[-1].startswith(f"{len(items)} structures")


def test_cli_progress_bar_follows_events() -> None:
    out = io.StringIO()
    bar = JobProgressBar(out)
    bar(
        "progress",
        {"status": "running", "progress": {"phase": "evaluating", "step": 2, "total": 8}},
    )
    bar("progress", {"status": "running", "progress": {"phase": "evaluating", "step": 6, "total": 8,
                                                         "best": 0.25, "stored": 6}})  # fmt: skip
    bar("end", {"status": "succeeded", "progress": {"phase": "done", "step": 8, "total": 8}})
    text = out.getvalue()
    assert "evaluating" in text and " 2/8" in text and " 6/8" in text and "stored=6" in text
    assert "done" in text and "100%" in text and "status=succeeded" in text
