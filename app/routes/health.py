"""Liveness, readiness and Prometheus metrics."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Depends
from fastapi.responses import JSONResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST

from app import jobs as jobs_service
from app.metrics import render
from app.readiness import models_data_check
from app.routes.deps import Services, services
from app.schemas import HealthOut

router = APIRouter(tags=["health"])
Svc = Annotated[Services, Depends(services)]


@router.get("/healthz", response_model=HealthOut, summary="The process is up")
def healthz() -> dict[str, Any]:
    return {"status": "ok", "checks": {}}


@router.get(
    "/readyz",
    response_model=HealthOut,
    responses={503: {"model": HealthOut}},
    summary="Database, broker and at least one worker reachable; models and data present",
)
def readyz(svc: Svc) -> JSONResponse:
    checks: dict[str, Any] = {}
    try:
        svc.db.ping()
        checks["database"] = {"ok": True, "detail": svc.db.engine.dialect.name}
    except Exception as exc:
        checks["database"] = {"ok": False, "detail": f"{type(exc).__name__}: {exc}"[:500]}
    ok, detail = svc.queue.broker_ok()
    checks["broker"] = {"ok": ok, "detail": detail}
    ok, detail = svc.queue.workers_ok() if ok else (False, "broker unreachable")
    checks["workers"] = {"ok": ok, "detail": detail}
    ok, detail = models_data_check()
    checks["models_data"] = {"ok": ok, "detail": detail}
    ready = all(c["ok"] for c in checks.values())
    return JSONResponse(
        {"status": "ready" if ready else "not ready", "checks": checks},
        status_code=200 if ready else 503,
    )


@router.get("/metrics", response_class=Response, summary="Prometheus metrics")
def metrics(svc: Svc) -> Response:
    return Response(render(jobs_service.job_counts(svc.db)), media_type=CONTENT_TYPE_LATEST)
