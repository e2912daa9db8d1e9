"""Status code of each bad input of tests/service/test_bad_input.py (issue 19) from the code on
PYTHONPATH, on a scratch database of the Postgres at 127.0.0.1:5432 (created and dropped
here) and the Redis at 127.0.0.1:6379. Run from a checkout's root, e.g. against the branch
base and against this branch, and compare:

    PYTHONPATH=$PWD python benchmarks/bad_input_probe.py
"""

import json
import logging
import uuid
import warnings

import psycopg
from fastapi.testclient import TestClient

from app.main import create_app
from app.settings import Settings
from tests.service.test_bad_input import BAD_INPUTS, SMALL_JOB, STRUCTURE_CURSORS, _cursor

warnings.simplefilter("ignore")
logging.disable(logging.CRITICAL)

name = f"matdesign_i19_probe_{uuid.uuid4().hex[:8]}"
admin = "postgresql://postgres@127.0.0.1:5432/postgres"
with psycopg.connect(admin, autocommit=True) as c:
    c.execute(f'CREATE DATABASE "{name}"')
try:
    s = Settings(
        database_url=f"postgresql://postgres@127.0.0.1:5432/{name}",
        broker_url="redis://127.0.0.1:6379/0",
        queue_name=f"probe-{name}",
        sweeper_enabled=False,
        rate_limit="10000/second",  # ignored by the branch base
    )
    with TestClient(create_app(s), raise_server_exceptions=False) as client:
        for label, method, path, body, _, _ in BAD_INPUTS:
            h = {"Content-Type": "application/json"} if body is not None else {}
            r = client.request(method, path, content=body, headers=h)
            print(f"{label}\t{method} {path[:60]}\t{r.status_code}")
        job = client.post("/v1/jobs", json=SMALL_JOB).json()["id"]
        for label, value in STRUCTURE_CURSORS:
            r = client.get(f"/v1/jobs/{job}/structures?cursor={_cursor(value)}")
            shown = f"GET /v1/jobs/{{id}}/structures?cursor={json.dumps(value)}"
            print(f"structures cursor {label}\t{shown}\t{r.status_code}")
finally:
    with psycopg.connect(admin, autocommit=True) as c:
        c.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
