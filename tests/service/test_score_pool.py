"""POST /v1/score runs in a bounded process pool (issue 19): capped in atoms per CIF and per
request (422 naming the CIF), stopped after the timeout (503 + Retry-After), and the API
process stays responsive meanwhile."""

from __future__ import annotations

import threading
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient

from app.main import create_app
from app.migrate import upgrade
from app.settings import Settings
from ml.crystal import Crystal

pytestmark = pytest.mark.filterwarnings("ignore::UserWarning")


def _cif(n_cells: int) -> str:
    """A rock-salt supercell with 2 * n_cells atoms."""
    lattice = np.diag([5.64 * n_cells, 5.64, 5.64])
    frac = [[i / n_cells, 0, 0] for i in range(n_cells)]
    frac += [[(i + 0.5) / n_cells, 0.5, 0.5] for i in range(n_cells)]
    return Crystal(lattice, frac, [11] * n_cells + [17] * n_cells).to_cif()


def _client(tmp_path: object, **update: object) -> TestClient:
    s = Settings(database_url=f"sqlite:///{tmp_path}/score.db", **update)  # type: ignore[arg-type]
    upgrade(s.database_url)
    return TestClient(create_app(s))


def test_atom_caps_per_cif_and_per_request(tmp_path: object) -> None:
    client = _client(tmp_path, score_max_atoms_per_cif=8, score_max_atoms_per_request=12)
    try:
        body = {"cifs": [_cif(1), _cif(5)], "oracles": ["density"]}  # 2 and 10 atoms
        r = client.post("/v1/score", json=body)
        assert r.status_code == 422
        assert r.json()["detail"][0]["field"] == "body.cifs.1"
        assert "10 atoms; at most 8 per CIF" in r.json()["detail"][0]["msg"]
        body = {"cifs": [_cif(3), _cif(2), _cif(1)], "oracles": ["density"]}  # 6 + 4 + 2
        assert client.post("/v1/score", json=body).status_code == 200
        body = {"cifs": [_cif(3), _cif(3), _cif(1)], "oracles": ["density"]}  # 6 + 6 + 2
        r = client.post("/v1/score", json=body)
        assert r.status_code == 422 and r.json()["detail"][0]["field"] == "body.cifs"
    finally:
        client.app.state.score_pool.stop()


def test_timeout_stops_the_scoring_process_and_answers_503(tmp_path: object) -> None:
    # 0.05 s: not even enough to start the process and parse; it is killed and replaced.
    client = _client(tmp_path, score_timeout_s=0.05)
    try:
        done: dict[str, object] = {}

        def slow() -> None:
            done["r"] = client.post("/v1/score", json={"cifs": [_cif(4)], "oracles": ["density"]})

        t = threading.Thread(target=slow)
        t.start()
        # Meanwhile the API answers other requests at once.
        t0 = time.monotonic()
        assert client.get("/healthz").status_code == 200
        assert time.monotonic() - t0 < 2.0
        t.join(timeout=60)
        r = done["r"]
        assert r.status_code == 503  # type: ignore[attr-defined]
        assert int(r.headers["retry-after"]) >= 1  # type: ignore[attr-defined]
        assert "longer than 0.05 s" in r.json()["detail"]  # type: ignore[attr-defined]
    finally:
        client.app.state.score_pool.stop()


def test_pool_full_answers_503(tmp_path: object) -> None:
    client = _client(tmp_path, score_max_waiting=0, score_timeout_s=30)
    pool = client.app.state.score_pool
    try:
        assert pool._slots.acquire(blocking=False)  # one request in flight
        r = client.post("/v1/score", json={"cifs": [_cif(1)], "oracles": ["density"]})
        assert r.status_code == 503 and "busy" in r.json()["detail"]
        assert r.headers["retry-after"]
        pool._slots.release()
        assert client.post("/v1/score", json={"cifs": [_cif(1)], "oracles": ["density"]}).is_success
    finally:
        pool.stop()
