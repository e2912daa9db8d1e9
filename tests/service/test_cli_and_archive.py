"""The command line's failure modes (unfinished download, unreachable server, quiet httpx) and
the archive's structures.csv (one column per field, units in the header, provenance)."""

from __future__ import annotations

import csv
import io
import json
import logging
import socket
from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app import cli
from app.archive import structures_csv
from app.client import Client
from app.jobs import ScoreView, StructureView
from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings

from .conftest import SMALL_JOB


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    d = tmp_path_factory.mktemp("cli")
    s = Settings(database_url=f"sqlite:///{d}/cli.db")
    upgrade(s.database_url)
    yield TestClient(create_app(s))  # no lifespan: a submitted job stays queued


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_download_of_an_unfinished_job_fails_with_a_message(
    client: TestClient,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
    tmp_path: Any,
) -> None:
    job_id = client.post("/v1/jobs", json=SMALL_JOB).json()["id"]
    monkeypatch.setattr(cli, "_client", lambda args: Client(http=TestClient(client.app)))
    out = tmp_path / "job.zip"
    assert cli.main(["download", job_id, "-o", str(out)]) == 1
    err = capsys.readouterr().err
    assert f"job {job_id} is queued" in err and "--wait" in err
    assert not out.exists()
    assert cli.main(["download", job_id, "-o", str(out), "--partial"]) == 0
    assert out.stat().st_size > 0
    # --wait gives up after --timeout with one line, not a traceback.
    assert cli.main(["download", job_id, "--wait", "--timeout", "0"]) == 1
    assert "still queued" in capsys.readouterr().err


def test_submit_with_a_label(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, tmp_path: Any
) -> None:
    monkeypatch.setattr(cli, "_client", lambda args: Client(http=TestClient(client.app)))
    path = tmp_path / "request.json"
    path.write_text(json.dumps(SMALL_JOB))
    assert cli.main(["submit", str(path), "--label", "from the shell"]) == 0
    jobs = client.get("/v1/jobs", params={"label": "from the shell"}).json()["items"]
    assert len(jobs) == 1 and jobs[0]["label"] == "from the shell"


def test_jobs_list_by_label_and_cancel_then_purge(
    client: TestClient, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setattr(cli, "_client", lambda args: Client(http=TestClient(client.app)))
    job_id = client.post("/v1/jobs", json={**SMALL_JOB, "label": "cli list", "seed": 5}).json()[
        "id"
    ]
    client.post("/v1/jobs", json={**SMALL_JOB, "label": "not this one", "seed": 6})
    capsys.readouterr()
    assert cli.main(["jobs", "--label", "cli list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split() == ["created", "(UTC)", "id", "status", "method", "label", "objectives"]
    assert len(lines) == 4 and lines[-1] == "1 jobs"
    assert job_id in lines[2] and "cli list" in lines[2]
    assert "band_gap = 1.5 ± 0.5 eV; formation_energy < -0.5 eV/atom" in lines[2]
    # Purge refuses a queued job with the server's reason; cancel, then purge.
    assert cli.main(["cancel", job_id, "--purge"]) == 1
    assert "cancel it first" in capsys.readouterr().err
    assert cli.main(["cancel", job_id]) == 0
    assert capsys.readouterr().out.strip() == f"job {job_id} is cancelled"
    assert cli.main(["cancel", job_id, "--purge"]) == 0
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert cli.main(["jobs", "--label", "cli list"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == "0 jobs"


def test_unreachable_server_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    url = f"http://127.0.0.1:{_free_port()}"
    assert cli.main(["status", "some-job", "--url", url]) == 1
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0, err
    assert err.startswith(f"error: cannot reach the server at {url}")
    assert "Traceback" not in err


def test_httpx_request_logging_is_off_unless_verbose(client: TestClient) -> None:
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    url = f"http://127.0.0.1:{_free_port()}"
    cli.main(["status", "x", "--url", url])
    assert logging.getLogger("httpx").level == logging.WARNING
    logging.getLogger("httpx").setLevel(logging.NOTSET)
    cli.main(["status", "x", "--url", url, "--verbose"])
    assert logging.getLogger("httpx").level == logging.NOTSET


def _view(**kw: Any) -> StructureView:
    base: dict[str, Any] = {
        "id": "s1",
        "job_id": "j1",
        "seq": 1,
        "rank": 1,
        "formula": "SrTiSO2",
        "n_atoms": 5,
        "space_group": 25,
        "cif": "data_x",
        "relaxed_cif": None,
        "flags": {"valid": True, "hit": True, "constraints": True},
        "energy_above_hull": 1.573,
        "method_score": 1.92,
        "predicted": {"band_gap": 1.4},
        "meta": {
            "reference": "perov5-8273",
            "reference_formula": "SrRuSO2",
            "substitutions": {"Ru4+": "Ti4+", "Sr2+": "Sr2+"},
            "violations": [],
        },
        "scores": [
            ScoreView("band_gap", 1.165, "eV", "megnet-gap-pbe", "v"),
            ScoreView("energy_above_hull", 1.573, "eV/atom", "chgnet-energy", "v"),
            ScoreView("formation_energy", -1.486, "eV/atom", "chgnet-eform", "v"),
        ],
    }
    base.update(kw)
    return StructureView(**base)


def test_structures_csv_one_column_per_field_with_units_and_provenance() -> None:
    smoacs = _view(
        id="s2",
        rank=2,
        meta={"template_formula": "BaTiO3", "index": 17, "violations": ["space_groups"]},
        relaxed_cif="data_y",
    )
    text = structures_csv([_view(), smoacs])
    header = next(csv.reader(io.StringIO(text)))
    assert len(header) == len(set(header))
    assert sum("energy_above_hull" in h for h in header) == 1
    assert {
        "band_gap (eV)",
        "energy_above_hull (eV/atom)",
        "formation_energy (eV/atom)",
        "predicted band_gap (eV)",
    } <= set(header)
    rows = list(csv.DictReader(io.StringIO(text)))
    assert rows[0]["reference_material"] == "perov5-8273"
    assert rows[0]["reference_formula"] == "SrRuSO2"
    assert rows[0]["substitutions"] == "Ru4+->Ti4+"
    assert rows[0]["energy_above_hull (eV/atom)"] == "1.573"
    assert rows[0]["hit"] == "1" and rows[0]["relaxed_cif_file"] == ""
    assert rows[1]["template"] == "BaTiO3" and rows[1]["seed_index"] == "17"
    assert rows[1]["violations"] == "space_groups"
    assert rows[1]["relaxed_cif_file"].endswith("_relaxed.cif")
