"""The non-JSON answers of ``GET /v1/jobs/{id}/structures?format=``: extxyz and OPTIMADE."""

from __future__ import annotations

import json
from typing import Any, Literal

from fastapi import Response

from app import jobs as jobs_service
from app.formats import to_extxyz, to_optimade
from app.routes.deps import Services

ExportFormat = Literal["json", "extxyz", "optimade"]

FORMAT_HELP = (
    "json: pages of structures (default); extxyz: every structure as an extended XYZ frame with "
    "its scores and flags in the frame's info (ASE reads it); optimade: an OPTIMADE structures "
    "document with _matdesign_ scores and flags. The geometry is the relaxed one when the job "
    "relaxed, else the proposed one."
)
MEDIA_TYPES = {"extxyz": "chemical/x-extxyz", "optimade": "application/vnd.api+json"}
SUFFIXES = {"extxyz": "extxyz", "optimade": "optimade.json"}

# For the route's OpenAPI entry.
EXPORT_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "content": {
            "chemical/x-extxyz": {},
            "application/vnd.api+json": {},
        },
        "description": "format=json (default): a page of structures. format=extxyz or "
        "format=optimade: every structure of the job (hits_only applies, paging does not).",
    }
}


def export_response(
    svc: Services, owner: str, job_id: str, fmt: ExportFormat, hits_only: bool
) -> Response:
    jobs_service.get_job(svc.db, owner, job_id)
    rows = jobs_service.all_structures(svc.db, job_id)
    if hits_only:
        rows = [r for r in rows if r.flags.get("hit")]
    body = to_extxyz(rows) if fmt == "extxyz" else json.dumps(to_optimade(rows), indent=1)
    name = f"matdesign-{job_id}.{SUFFIXES[fmt]}"
    return Response(
        body,
        media_type=MEDIA_TYPES[fmt],
        headers={"Content-Disposition": f'attachment; filename="{name}"'},
    )
