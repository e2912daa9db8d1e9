"""The FastAPI application: ``create_app(settings)``; ``matdesign serve`` runs it."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from fastapi.middleware.cors import CORSMiddleware
from starlette.concurrency import run_in_threadpool

from app import __version__
from app.auth import KeyResolver
from app.db import Database
from app.errors import install_error_handlers
from app.hygiene import UnstorableInputMiddleware
from app.middleware import BodyLimitMiddleware, MetricsMiddleware
from app.openapi import install_openapi
from app.page_cache import PageCache
from app.ratelimit import RateLimitMiddleware
from app.readiness import models_data_check
from app.routes import catalog, events, health, jobs, structures
from app.routes.deps import Services
from app.routes.web import install_web
from app.scoring import ScorePool
from app.settings import Settings, get_settings

log = logging.getLogger(__name__)

DESCRIPTION = """Inverse design of inorganic crystals. Submit a design request (objectives,
constraints, method), poll the job, read back ranked and scored structures as CIF.
Authentication: `X-API-Key` (a key sees only its own jobs).

Units: energies per atom in eV/atom (formation_energy, energy_above_hull), band gaps in eV,
density in g/cm^3, lengths in Å. Every structure carries `flags` (schema `Flags`): valid,
charge_neutral, unique, novel, stable (E_hull <= 0), metastable (E_hull <= 0.1 eV/atom),
constraints (all constraints met) and hit (valid, all constraints and objectives met).
`GET /v1/methods` gives each method's params; `GET /v1/oracles` the property oracles."""


def _startup(svc: Services) -> object | None:
    """Migrate, start the embedded worker, recover queued jobs, start the sweeper."""
    from app.queue import queued_job_ids
    from workers.sweeper import Sweeper, sweep

    ok, detail = models_data_check()
    if not ok:
        # /readyz details go to admin keys only: the terminal that started the server is
        # where a new user finds out why every job would fail.
        log.warning("not ready, every job would fail: %s", detail)
    if svc.settings.auto_migrate:
        from app.migrate import upgrade

        upgrade(svc.settings.database_url)
    if svc.settings.embedded:
        svc.queue.start()
        # The in-process queue died with the last server: hand its queued jobs over again.
        for job_id in queued_job_ids(svc.db):
            svc.queue.enqueue(job_id)
    if not svc.settings.sweeper_enabled:
        return None
    sweep(svc.db, svc.settings, svc.queue.resend)
    sweeper = Sweeper(svc.db, svc.settings, svc.queue.resend)
    sweeper.start()
    return sweeper


def create_app(settings: Settings | None = None) -> FastAPI:
    # The composition root: the one place the API picks the queue implementation.
    from workers.queues import make_queue

    settings = settings or get_settings()
    db = Database(settings.database_url)
    svc = Services(
        settings=settings,
        db=db,
        queue=make_queue(settings, db),
        pages=PageCache(int(settings.page_cache_mb * 2**20)),
    )

    @asynccontextmanager
    async def lifespan(_: FastAPI) -> AsyncIterator[None]:
        sweeper = await run_in_threadpool(_startup, svc)
        try:
            yield
        finally:
            if sweeper is not None:
                sweeper.stop()  # type: ignore[attr-defined]
            svc.queue.stop()
            score_pool.stop()
            db.dispose()

    app = FastAPI(
        title="matdesign",
        version=__version__,
        description=DESCRIPTION,
        lifespan=lifespan,
        # Served by install_web from vendored assets (no CDN).
        docs_url=None,
        redoc_url=None,
    )
    install_openapi(app, settings)
    score_pool = ScorePool(settings)
    app.state.services = svc
    app.state.score_pool = score_pool
    app.state.keys = KeyResolver(db, settings.require_api_key, settings.admin_keys)
    install_error_handlers(app)
    app.include_router(jobs.router)
    app.include_router(structures.router)
    app.include_router(catalog.router)
    app.include_router(events.router)
    app.include_router(health.router)
    install_web(app)

    # Added innermost first: metrics see every response, 413s and 429s included; CORS
    # headers go on 429s too.
    app.add_middleware(BodyLimitMiddleware, max_bytes=settings.max_body_bytes)
    app.add_middleware(UnstorableInputMiddleware)
    if settings.limits_on:
        app.add_middleware(RateLimitMiddleware, settings=settings)
    if settings.cors_origins:
        app.add_middleware(
            CORSMiddleware,
            allow_origins=settings.cors_origins,
            allow_methods=["GET", "POST", "DELETE", "OPTIONS"],
            allow_headers=["X-API-Key", "Idempotency-Key", "Content-Type"],
            expose_headers=["Location", "Idempotent-Replayed", "Retry-After"],
        )
    app.add_middleware(MetricsMiddleware)
    return app
