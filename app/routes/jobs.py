"""Jobs: submit, read, list, cancel, structures of a job, archive."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Depends, Header, Query, Response
from fastapi.responses import StreamingResponse

from app import jobs as jobs_service
from app.archive import write_archive
from app.auth import current_owner
from app.errors import BadRequest
from app.hygiene import check_storable
from app.metrics import ENQUEUE_FAILURES, JOBS_SUBMITTED
from app.models import JOB_STATES
from app.queue import enqueue_quietly
from app.routes.deps import Services, page_limit, services
from app.routes.responses import INVALID, KEYED, NOT_FOUND
from app.schemas import JobOut, JobPage, MessageOut, StructurePage, ValidationErrorOut
from app.serialize import job_out, structure_out
from ml.request import DesignRequest
from workers.sweeper import mark_unsent

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(services)]

_ERRORS: dict[int | str, dict[str, Any]] = {**KEYED, **NOT_FOUND, **INVALID}


@router.post(
    "",
    status_code=202,
    response_model=JobOut,
    responses={
        **KEYED,
        **INVALID,
        400: {"model": MessageOut, "description": "Empty Idempotency-Key, or unparseable body"},
        409: {
            "model": MessageOut,
            "description": "A request with this Idempotency-Key is still being processed",
        },
        413: {"model": MessageOut, "description": "Request body too large"},
        422: {
            "model": ValidationErrorOut,
            "description": "Invalid field (named in `field`), or Idempotency-Key already used "
            "with another body (`header.Idempotency-Key`)",
        },
        429: {
            **KEYED[429],
            "description": "Rate limit, or quota of queued/running jobs or candidates per key "
            "(`MATDESIGN_QUOTA_ACTIVE_JOBS`, `MATDESIGN_QUOTA_ACTIVE_CANDIDATES`)",
        },
    },
    summary="Submit a design job",
    description="Idempotency-Key (optional, 1-255 characters): the same key with the same "
    "body returns the first job (header `Idempotent-Replayed: true`) for "
    "`MATDESIGN_IDEMPOTENCY_KEY_TTL_S` (24 h); afterwards the key names a new job.",
)
def submit_job(
    body: DesignRequest,
    response: Response,
    owner: Owner,
    svc: Svc,
    idempotency_key: Annotated[str | None, Header(alias="Idempotency-Key", max_length=255)] = None,
) -> dict[str, Any]:
    if idempotency_key is not None and not idempotency_key.strip():
        raise BadRequest("Idempotency-Key must not be empty")
    check_storable(body.model_dump(mode="python"))
    jobs_service.validate_design(body, svc.settings)
    with jobs_service.idempotency_guard(svc.db, owner, idempotency_key):
        job, created = jobs_service.submit_job(
            svc.db, owner, body, idempotency_key, settings=svc.settings
        )
        if created:
            JOBS_SUBMITTED.labels(job.method).inc()
            if not enqueue_quietly(svc.queue, job.id):
                ENQUEUE_FAILURES.inc()
                mark_unsent(svc.db, job.id)  # the next sweep sends it
    if not created:
        response.headers["Idempotent-Replayed"] = "true"
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_out(job)


@router.get("", response_model=JobPage, responses=_ERRORS, summary="List your jobs, newest first")
def list_jobs(
    owner: Owner,
    svc: Svc,
    status: Literal[JOB_STATES] | None = None,  # type: ignore[valid-type]
    method: str | None = None,
    limit: Annotated[int | None, Query()] = None,
    cursor: str | None = None,
) -> dict[str, Any]:
    jobs, next_cursor = jobs_service.list_jobs(
        svc.db, owner, status=status, method=method, limit=page_limit(limit, svc), cursor=cursor
    )
    return {"items": [job_out(j) for j in jobs], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS, summary="One job")
def get_job(job_id: str, owner: Owner, svc: Svc) -> dict[str, Any]:
    return job_out(jobs_service.get_job(svc.db, owner, job_id))


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    responses={**_ERRORS, 409: {"model": MessageOut, "description": "Job already finished"}},
    summary="Cancel a job (cancelling, then cancelled once the worker stops)",
)
def cancel_job(job_id: str, owner: Owner, svc: Svc) -> dict[str, Any]:
    return job_out(jobs_service.cancel_job(svc.db, owner, job_id))


@router.get(
    "/{job_id}/structures",
    response_model=StructurePage,
    responses=_ERRORS,
    summary="Structures of a job, best rank first",
)
def list_structures(
    job_id: str,
    owner: Owner,
    svc: Svc,
    sort: Literal["rank", "created"] = "rank",
    limit: Annotated[int | None, Query()] = None,
    cursor: str | None = None,
    hits_only: bool = False,
) -> dict[str, Any]:
    rows, next_cursor = jobs_service.list_structures(
        svc.db,
        owner,
        job_id,
        sort=sort,
        limit=page_limit(limit, svc),
        cursor=cursor,
        hits_only=hits_only,
    )
    return {"items": [structure_out(r) for r in rows], "next_cursor": next_cursor}


@router.get(
    "/{job_id}/archive",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"application/zip": {}}}},
    summary="Zip of the job's CIFs plus summary.json and structures.csv",
)
def archive(job_id: str, owner: Owner, svc: Svc) -> StreamingResponse:
    job = jobs_service.get_job(svc.db, owner, job_id)
    rows = jobs_service.all_structures(svc.db, job_id)
    buf = write_archive(job, rows)

    def chunks() -> Any:
        try:
            while chunk := buf.read(1 << 16):
                yield chunk
        finally:
            buf.close()

    return StreamingResponse(
        chunks(),
        media_type="application/zip",
        headers={"Content-Disposition": f'attachment; filename="matdesign-{job_id}.zip"'},
    )
