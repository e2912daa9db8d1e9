"""Jobs: submit, read, list, cancel, structures of a job, archive."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from fastapi import APIRouter, Body, Depends, Header, Path, Query, Response
from fastapi.responses import StreamingResponse
from pydantic import TypeAdapter

from app import jobs as jobs_service
from app.archive import write_archive
from app.auth import current_owner
from app.errors import BadRequest
from app.examples import request_examples
from app.hygiene import check_storable
from app.metrics import ENQUEUE_FAILURES, JOBS_SUBMITTED
from app.models import FINISHED_STATES, JOB_STATES
from app.queue import enqueue_quietly, mark_unsent
from app.routes.deps import Services, page_limit, services
from app.routes.exports import EXPORT_RESPONSES, FORMAT_HELP, ExportFormat, export_response
from app.routes.responses import INVALID, KEYED, NOT_FOUND
from app.schemas import JobOut, JobPage, MessageOut, StructurePage, ValidationErrorOut
from app.serialize import job_out, structure_out
from ml.request import DesignRequest

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(services)]
JobId = Annotated[str, Path(description="Job id (UUID), from POST /v1/jobs.")]
_LIMIT = "Page size (default and maximum: MATDESIGN_PAGE_LIMIT_DEFAULT / _MAX)."
_CURSOR = "next_cursor of the previous page; leave out for the first page."

_ERRORS: dict[int | str, dict[str, Any]] = {**KEYED, **NOT_FOUND, **INVALID}
_PAGE = TypeAdapter(StructurePage)


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
            "description": "Idempotency-Key already used with another body, or a request "
            "with it is still being processed",
        },
        413: {"model": MessageOut, "description": "Request body too large"},
        422: {
            "model": ValidationErrorOut,
            "description": "Invalid field (named in `field`)",
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
    body: Annotated[DesignRequest, Body(openapi_examples=request_examples())],
    response: Response,
    owner: Owner,
    svc: Svc,
    idempotency_key: Annotated[
        str | None,
        Header(
            alias="Idempotency-Key",
            max_length=255,
            description="Any unique string: resubmitting the same body with the same key "
            "returns the first job (Idempotent-Replayed: true) instead of a new one.",
        ),
    ] = None,
) -> dict[str, Any]:
    if idempotency_key is not None and not idempotency_key.strip():
        raise BadRequest("Idempotency-Key must not be empty")
    check_storable(body.model_dump(mode="python"))
    body = jobs_service.validate_design(body, svc.settings)
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
    status: Annotated[
        Literal[JOB_STATES] | None,  # type: ignore[valid-type]
        Query(description="Only jobs in this state."),
    ] = None,
    method: Annotated[str | None, Query(description="Only jobs of this method.")] = None,
    limit: Annotated[int | None, Query(description=_LIMIT)] = None,
    cursor: Annotated[str | None, Query(description=_CURSOR)] = None,
    label: Annotated[
        str | None, Query(max_length=200, description="Only jobs with exactly this label.")
    ] = None,
) -> dict[str, Any]:
    jobs, next_cursor = jobs_service.list_jobs(
        svc.db,
        owner,
        status=status,
        method=method,
        limit=page_limit(limit, svc),
        cursor=cursor,
        label=label,
    )
    return {"items": [job_out(j) for j in jobs], "next_cursor": next_cursor}


@router.get("/{job_id}", response_model=JobOut, responses=_ERRORS, summary="One job")
def get_job(job_id: JobId, owner: Owner, svc: Svc) -> dict[str, Any]:
    return job_out(jobs_service.get_job(svc.db, owner, job_id))


@router.delete(
    "/{job_id}",
    response_model=JobOut,
    responses={
        **_ERRORS,
        204: {"description": "purge=true: the job and its structures are deleted"},
        409: {
            "model": MessageOut,
            "description": "Cancel: job already finished. Purge: job not finished yet",
        },
    },
    summary="Cancel a job (cancelling, then cancelled once the worker stops); "
    "with purge=true delete a finished job and its structures",
)
def cancel_job(
    job_id: JobId,
    owner: Owner,
    svc: Svc,
    purge: Annotated[
        bool,
        Query(
            description="Delete the finished (succeeded, failed or cancelled) job, its "
            "structures and their scores for good, instead of cancelling it."
        ),
    ] = False,
) -> Any:
    if purge:
        jobs_service.purge_job(svc.db, owner, job_id)
        return Response(status_code=204)
    return job_out(jobs_service.cancel_job(svc.db, owner, job_id))


@router.get(
    "/{job_id}/structures",
    response_model=StructurePage,
    responses={**_ERRORS, **EXPORT_RESPONSES},
    summary="Structures of a job, best rank first (JSON pages, extxyz or OPTIMADE JSON)",
)
def list_structures(
    job_id: JobId,
    owner: Owner,
    svc: Svc,
    sort: Annotated[
        Literal["rank", "created"],
        Query(
            description="rank: best first (unranked ones of a running job after, in arrival "
            "order); created: arrival order."
        ),
    ] = "rank",
    limit: Annotated[int | None, Query(description=_LIMIT)] = None,
    cursor: Annotated[str | None, Query(description=_CURSOR)] = None,
    hits_only: Annotated[
        bool, Query(description="Only structures flagged hit (all objectives and constraints).")
    ] = False,
    format: Annotated[ExportFormat, Query(description=FORMAT_HELP)] = "json",
) -> Any:
    if format != "json":
        return export_response(svc, owner, job_id, format, hits_only)
    size = page_limit(limit, svc)
    key = None
    if svc.pages.max_bytes:
        state = jobs_service.job_state(svc.db, owner, job_id)
        if state.status in FINISHED_STATES:
            key = (job_id, state.finished_at, sort, size, cursor, hits_only)
            if (page := svc.pages.get(key)) is not None:
                return Response(page, media_type="application/json")
    rows, next_cursor = jobs_service.list_structures(
        svc.db, owner, job_id, sort=sort, limit=size, cursor=cursor, hits_only=hits_only
    )
    page = _PAGE.dump_json(
        StructurePage.model_validate(
            {"items": [structure_out(r) for r in rows], "next_cursor": next_cursor}
        )
    )
    if key is not None:
        svc.pages.put(key, page)
    return Response(page, media_type="application/json")


@router.get(
    "/{job_id}/archive",
    response_class=StreamingResponse,
    responses={**_ERRORS, 200: {"content": {"application/zip": {}}}},
    summary="Zip of the job's CIFs plus summary.json, structures.csv, structures.extxyz and "
    "structures.optimade.json",
)
def archive(job_id: JobId, owner: Owner, svc: Svc) -> StreamingResponse:
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
