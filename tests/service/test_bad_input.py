"""Inputs that used to pass validation and then fail in Postgres with a 500 (issue 19), on
the real Postgres: each now gets a 4xx naming the field (404 for an impossible path id)."""

from __future__ import annotations

import base64
import json
from typing import Any

import pytest
from fastapi.testclient import TestClient

from app.jobs import encode_cursor

from .conftest import SMALL_JOB

pytestmark = pytest.mark.integration


def _cursor(value: Any) -> str:
    return base64.urlsafe_b64encode(json.dumps(value).encode()).decode().rstrip("=")


def _job_text(value_token: str, field: str = "value") -> str:
    """SMALL_JOB as JSON text with a raw token (NaN, Infinity, 1e999) in objectives[0]."""
    body = json.dumps(SMALL_JOB)
    obj = json.dumps(SMALL_JOB["objectives"][0])
    bad = obj.replace(f'"{field}": 0.5', f'"{field}": {value_token}', 1)
    if bad == obj:
        bad = obj.replace(f'"{field}": 1.5', f'"{field}": {value_token}', 1)
    return body.replace(obj, bad, 1)


TEMPLATE = (
    "data_NaCl\n_cell_length_a 5.64\n_cell_length_b 5.64\n_cell_length_c 5.64\n"
    "_cell_angle_alpha 90\n_cell_angle_beta 90\n_cell_angle_gamma 90\n"
    "_symmetry_space_group_name_H-M 'P 1'\nloop_\n_atom_site_label\n_atom_site_type_symbol\n"
    "_atom_site_fract_x\n_atom_site_fract_y\n_atom_site_fract_z\n"
    "Na1 Na 0 0 0\nCl1 Cl 0.5 0.5 0.5\n"
)

# (name, HTTP method, path, raw JSON body or None, expected status, field named or None)
BAD_INPUTS: list[tuple[str, str, str, str | None, int, str | None]] = [
    ("NaN objective value", "POST", "/v1/jobs", _job_text("NaN"), 422, "body.objectives.0.value"),
    (
        "Infinity objective value",
        "POST",
        "/v1/jobs",
        _job_text("Infinity"),
        422,
        "body.objectives.0.value",
    ),
    ("-Infinity value", "POST", "/v1/jobs", _job_text("-Infinity"), 422, "body.objectives.0.value"),
    (
        "1e999 objective value",
        "POST",
        "/v1/jobs",
        _job_text("1e999"),
        422,
        "body.objectives.0.value",
    ),
    (
        "NaN tolerance",
        "POST",
        "/v1/jobs",
        _job_text("NaN", "tolerance"),
        422,
        "body.objectives.0.tolerance",
    ),
    (
        "NaN in a method parameter",
        "POST",
        "/v1/jobs",
        json.dumps({**SMALL_JOB, "params": {**SMALL_JOB["params"], "temperature": 1}}).replace(
            '"temperature": 1', '"temperature": NaN'
        ),
        422,
        "body.params.temperature",
    ),
    (
        "Infinity in a method parameter",
        "POST",
        "/v1/jobs",
        json.dumps({**SMALL_JOB, "params": {**SMALL_JOB["params"], "temperature": 1}}).replace(
            '"temperature": 1', '"temperature": Infinity'
        ),
        422,
        "body.params.temperature",
    ),
    (
        "lone surrogate inside a template CIF",
        "POST",
        "/v1/jobs",
        json.dumps(
            {
                **SMALL_JOB,
                "constraints": {**SMALL_JOB["constraints"], "templates": [f"#X\n{TEMPLATE}"]},
            }
        ).replace("#X", "#\\ud800"),
        422,
        "body.constraints.templates.0",
    ),
    (
        "NUL inside a template CIF",
        "POST",
        "/v1/jobs",
        json.dumps(
            {
                **SMALL_JOB,
                "constraints": {
                    **SMALL_JOB["constraints"],
                    "templates": [TEMPLATE.replace("Na1 Na", "Na1\u0000 Na")],
                },
            }
        ),
        422,
        "body.constraints.templates.0",
    ),
    # What a new user tripped over (issue 23): each was a 500 or a misleading message.
    *[
        (name, "POST", "/v1/jobs", json.dumps({**SMALL_JOB, **change}), 422, field)
        for name, change, field in [
            (
                "conditional with an unknown element",
                {"method": "conditional", "params": {}, "constraints": {"composition": "LiFeQO4"}},
                "body.constraints.composition",
            ),
            (
                "LiFePO4 in Pnma within 20 atoms",
                {
                    "method": "conditional",
                    "params": {},
                    "constraints": {"composition": "LiFePO4", "space_groups": [62]},
                },
                "body.constraints.space_groups",
            ),
            (
                "anion allowed but excluded",
                {"constraints": {"elements": {"allowed": ["Ba", "Ti", "O"], "excluded": ["O"]}}},
                "body.constraints.elements.excluded",
            ),
            ("label of 201 characters", {"label": "x" * 201}, "body.label"),
            ("NUL in a label", {"label": "a\u0000b"}, "body.label"),
        ]
    ],
    ("NUL in ?label=", "GET", "/v1/jobs?label=a%00b", None, 422, "query.label"),
    ("NUL in a job id", "GET", "/v1/jobs/abc%00def", None, 404, None),
    ("NUL in a job id (structures)", "GET", "/v1/jobs/abc%00def/structures", None, 404, None),
    ("NUL in a job id (archive)", "GET", "/v1/jobs/abc%00def/archive", None, 404, None),
    ("NUL in a job id (cancel)", "DELETE", "/v1/jobs/abc%00def", None, 404, None),
    ("NUL in a structure id", "GET", "/v1/structures/abc%00def", None, 404, None),
    ("NUL in a structure id (CIF)", "GET", "/v1/structures/abc%00def.cif", None, 404, None),
    ("invalid UTF-8 in a job id", "GET", "/v1/jobs/abc%FFdef", None, 404, None),
    ("NUL in ?method=", "GET", "/v1/jobs?method=%00", None, 422, "query.method"),
    ("NUL in ?cursor=", "GET", "/v1/jobs?cursor=a%00b", None, 422, "query.cursor"),
    ("invalid UTF-8 in ?method=", "GET", "/v1/jobs?method=%C3%28", None, 422, "query.method"),
    (
        "cursor with an int id",
        "GET",
        "/v1/jobs?cursor=" + _cursor(["2026-01-01T00:00:00+00:00", 5]),
        None,
        422,
        "query.cursor",
    ),
    (
        "cursor as an object",
        "GET",
        "/v1/jobs?cursor=" + _cursor({"a": 1}),
        None,
        422,
        "query.cursor",
    ),
    (
        "cursor with a naive time",
        "GET",
        "/v1/jobs?cursor=" + _cursor(["2026-01-01T00:00:00", "x"]),
        None,
        422,
        "query.cursor",
    ),
]

# Structure-list cursors need an existing job: the path is completed in the test.
STRUCTURE_CURSORS: list[tuple[str, Any]] = [
    ("10^30 rank", [10**30, 1]),
    ("string rank", ["1", 1]),
    ("bool rank", [True, 1]),
    ("float seq", [1, 1.5]),
    ("negative seq", [1, -1]),
    ("three values", [1, 1, 1]),
]


@pytest.mark.parametrize(
    ("name", "method", "path", "body", "status", "field"),
    BAD_INPUTS,
    ids=[b[0] for b in BAD_INPUTS],
)
def test_bad_input_is_4xx_naming_the_field(
    pg_client: TestClient,
    name: str,
    method: str,
    path: str,
    body: str | None,
    status: int,
    field: str | None,
) -> None:
    headers = {"Content-Type": "application/json"} if body is not None else {}
    r = pg_client.request(method, path, content=body, headers=headers)
    assert r.status_code == status, (name, r.text)
    assert r.headers["content-type"].startswith("application/json")
    if field is not None:
        assert field in [e["field"] for e in r.json()["detail"]], r.json()


@pytest.mark.parametrize(
    ("name", "value"), STRUCTURE_CURSORS, ids=[c[0] for c in STRUCTURE_CURSORS]
)
def test_bad_structure_cursor_is_422(pg_client: TestClient, name: str, value: Any) -> None:
    job_id = pg_client.post("/v1/jobs", json={**SMALL_JOB, "seed": 901}).json()["id"]
    for sort in ("rank", "created"):
        r = pg_client.get(f"/v1/jobs/{job_id}/structures?sort={sort}&cursor={_cursor(value)}")
        assert r.status_code == 422, (name, sort, r.text)
        assert r.json()["detail"][0]["field"] == "query.cursor"


def test_good_cursors_still_work(pg_client: TestClient) -> None:
    job_id = pg_client.post("/v1/jobs", json={**SMALL_JOB, "seed": 902}).json()["id"]
    r = pg_client.get(f"/v1/jobs/{job_id}/structures?cursor={encode_cursor([1, 1])}")
    assert r.status_code == 200 and r.json()["items"] == []
    r = pg_client.get(f"/v1/jobs/{job_id}/structures?sort=created&cursor={encode_cursor([3])}")
    assert r.status_code == 200
    page = pg_client.get("/v1/jobs?limit=1").json()
    assert page["next_cursor"]
    assert pg_client.get(f"/v1/jobs?limit=1&cursor={page['next_cursor']}").status_code == 200
