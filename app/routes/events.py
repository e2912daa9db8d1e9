"""``GET /v1/jobs/{id}/events``: a job's progress as Server-Sent Events.

Events: ``candidates`` (the structures stored since the last event, in brief), ``progress``
(status and progress, whenever either changes), ``end`` (the finished job, then the stream
closes). The stream reads the job row, like a polling client would; polling stays supported.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Depends, Request
from fastapi.encoders import jsonable_encoder
from fastapi.responses import StreamingResponse
from starlette.concurrency import run_in_threadpool

from app import jobs as jobs_service
from app.auth import current_owner
from app.jobs import StructureView
from app.models import FINISHED_STATES
from app.routes.deps import Services, services
from app.routes.jobs import JobId
from app.schemas import MessageOut
from app.serialize import job_out

router = APIRouter(prefix="/v1/jobs", tags=["jobs"])

Owner = Annotated[str, Depends(current_owner)]
Svc = Annotated[Services, Depends(services)]

POLL_S = 0.5
KEEPALIVE_S = 15.0
BATCH = 200


def sse(event: str, data: Any, event_id: int) -> str:
    """One event in the text/event-stream format (data is JSON on a single line)."""
    return f"id: {event_id}\nevent: {event}\ndata: {json.dumps(jsonable_encoder(data))}\n\n"


def brief(row: StructureView) -> dict[str, Any]:
    return {
        "id": row.id,
        "seq": row.seq,
        "formula": row.formula,
        "n_atoms": row.n_atoms,
        "scores": {sc.property: sc.value for sc in row.scores},
        "energy_above_hull": row.energy_above_hull,
        "flags": row.flags,
    }


async def job_events(
    request: Request, svc: Services, owner: str, job_id: str
) -> AsyncIterator[str]:
    n = 0
    last_state: Any = None
    cursor: str | None = None
    last_sent = time.monotonic()
    yield f"retry: {int(POLL_S * 4000)}\n\n"
    while True:
        job = await run_in_threadpool(jobs_service.get_job, svc.db, owner, job_id)
        while True:
            rows, next_cursor = await run_in_threadpool(
                jobs_service.list_structures,
                svc.db,
                owner,
                job_id,
                sort="created",
                limit=BATCH,
                cursor=cursor,
                hits_only=False,
            )
            if not rows:
                break
            cursor = jobs_service.encode_cursor([rows[-1].seq])
            n += 1
            stored = rows[-1].seq  # seq counts from 1
            yield sse("candidates", {"stored": stored, "items": [brief(r) for r in rows]}, n)
            last_sent = time.monotonic()
            if next_cursor is None:
                break
        state = (job.status, job.progress)
        if state != last_state:
            last_state = state
            n += 1
            yield sse("progress", {"status": job.status, "progress": job.progress}, n)
            last_sent = time.monotonic()
        if job.status in FINISHED_STATES:
            n += 1
            yield sse("end", job_out(job), n)
            return
        if time.monotonic() - last_sent > KEEPALIVE_S:
            yield ": keep-alive\n\n"
            last_sent = time.monotonic()
        if await request.is_disconnected():
            return
        await asyncio.sleep(POLL_S)


@router.get(
    "/{job_id}/events",
    response_class=StreamingResponse,
    responses={
        200: {"content": {"text/event-stream": {}}, "description": "progress, candidates, end"},
        401: {"model": MessageOut},
        404: {"model": MessageOut},
    },
    summary="Live progress of a job as Server-Sent Events",
)
async def events(job_id: JobId, request: Request, owner: Owner, svc: Svc) -> StreamingResponse:
    # A 404 before the stream starts, not an error event inside it.
    await run_in_threadpool(jobs_service.get_job, svc.db, owner, job_id)
    return StreamingResponse(
        job_events(request, svc, owner, job_id),
        media_type="text/event-stream",
        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"},
    )
