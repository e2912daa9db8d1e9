"""Service settings, read from the environment (prefix ``MATDESIGN_``).

With no configuration at all the service runs on the embedded default: a SQLite file under
``./var/`` and an in-process worker, single user, no API key needed.
"""

from __future__ import annotations

from functools import lru_cache
from typing import Annotated

from pydantic import Field, field_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict

EMBEDDED_BROKER = "embedded"
# Most candidates a GPU worker's default over-generation asks a method for (one GPU pass; a
# 1,024-candidate smoacs job with relaxation and scoring takes 105 s on an H200, RESULTS).
OVERSAMPLE_BUDGET = 1024


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="MATDESIGN_", extra="ignore")

    # --- storage and queue -------------------------------------------------------------
    database_url: str = "sqlite:///./var/matdesign.db"
    # "embedded": jobs run on worker threads inside `matdesign serve`; else a Celery broker
    # URL such as redis://127.0.0.1:6379/0 (then `matdesign worker` processes run the jobs).
    broker_url: str = EMBEDDED_BROKER
    auto_migrate: bool = True  # `serve` brings the schema to head on start
    embedded_workers: int = Field(default=1, ge=1, le=16)

    # --- HTTP ---------------------------------------------------------------------------
    require_api_key: bool = False
    cors_origins: Annotated[list[str], NoDecode] = Field(default_factory=list)
    max_body_bytes: int = Field(default=4 * 1024 * 1024, ge=1024)
    page_limit_default: int = Field(default=50, ge=1)
    page_limit_max: int = Field(default=500, ge=1)
    # Structure pages of finished jobs kept serialized per API process (0 turns it off).
    page_cache_mb: float = Field(default=64.0, ge=0)
    score_max_cifs: int = Field(default=64, ge=1)
    # POST /v1/score runs in a pool of worker processes (outside the API's memory), capped
    # in atoms per CIF and per request, and killed after the timeout.
    score_max_atoms_per_cif: int = Field(default=500, ge=1)
    score_max_atoms_per_request: int = Field(default=2000, ge=1)
    score_timeout_s: float = Field(default=120.0, gt=0)
    score_processes: int = Field(default=1, ge=1, le=16)
    score_max_waiting: int = Field(default=4, ge=0)  # more waiting requests get 503
    # Keys (by name, `matdesign keys create --name`) that see /readyz details.
    admin_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # An Idempotency-Key is remembered this long, then may be used again for a new job.
    idempotency_key_ttl_s: float = Field(default=24 * 3600, gt=0)
    # Sent as Retry-After with 503 when the database or the broker is unreachable.
    unavailable_retry_after_s: int = Field(default=5, ge=1)

    # --- rate limits and quotas per API key (429 + Retry-After) -------------------------
    # None: on with a Celery broker, off on the single-user embedded default.
    limits_enabled: bool | None = None
    # Requests per key (per client address without a key); `limits` syntax.
    rate_limit: str = "20/second;600/minute"
    # Counters' storage: default the Redis broker; "memory://" keeps them per process.
    rate_limit_storage_url: str | None = None
    quota_active_jobs: int = Field(default=100, ge=1)  # queued or running jobs per key
    quota_active_candidates: int = Field(default=50_000, ge=1)  # their num_candidates summed

    # --- limits of one job (may only lower the request schema's hard limits) ------------
    max_candidates: int = Field(default=10_000, ge=1)
    max_atoms: int = Field(default=200, ge=1)
    job_time_limit_s: float = Field(default=6 * 3600, gt=0)
    max_attempts: int = Field(default=3, ge=1)

    # --- defaults of a request that leaves them out ------------------------------------
    # None: fit the deployment. The embedded server runs jobs on this machine's CPU, where
    # CHGNet relaxation takes seconds per candidate: off there, and few candidates; on
    # Celery (GPU) workers relaxation is on and 64 candidates are the default.
    default_relax: bool | None = None
    default_num_candidates: int | None = Field(default=None, ge=1)
    # Over-generation factor (DesignRequest.oversample): scoring 4x the candidates costs
    # seconds on a GPU and buys a best-of-4 selection; on a laptop's CPU it would not.
    default_oversample: int | None = Field(default=None, ge=1, le=16)  # ml.request.MAX_OVERSAMPLE

    # --- liveness -----------------------------------------------------------------------
    heartbeat_interval_s: float = Field(default=10.0, gt=0)
    heartbeat_stale_after_s: float = Field(default=60.0, gt=0)
    progress_interval_s: float = Field(default=2.0, ge=0)
    cancel_poll_interval_s: float = Field(default=1.0, ge=0)
    sweeper_enabled: bool = True
    sweeper_interval_s: float = Field(default=15.0, gt=0)
    # A queued job whose message may have been lost is re-enqueued after this long, then
    # after twice as long, and so on (duplicates are harmless: a job is claimed only once).
    requeue_queued_after_s: float = Field(default=300.0, gt=0)
    # ... but never waits longer than this between re-sends while the job stays queued
    # (the doubling alone would reach 64 x the delay).
    requeue_queued_max_s: float = Field(default=1800.0, gt=0)

    # --- Celery -------------------------------------------------------------------------
    # Design tasks go to this queue ("gpu"); a separate name isolates deployments (and test
    # sessions) that share one Redis.
    queue_name: str = "gpu"
    worker_pool: str = "prefork"
    # Load oracles and reference tables when a worker (or embedded server) starts.
    worker_warm_up: bool = True
    broker_visibility_timeout_s: int = Field(default=7200, ge=60)
    # A worker whose queue holds messages while it has a free slot for this long has a
    # stalled consumer (seen after Redis restarts): it reconnects it. 0 turns the check off.
    consumer_stall_after_s: float = Field(default=60.0, ge=0)
    readyz_worker_timeout_s: float = Field(default=1.0, gt=0)
    # Sharding (Celery only): a job of at least ``shard_min_candidates`` candidates (0: never)
    # runs as shard tasks of ``shard_candidates`` candidates each, joined by a chord.
    shard_min_candidates: int = Field(default=2048, ge=0)
    shard_candidates: int = Field(default=512, ge=1)

    @field_validator("cors_origins", "admin_keys", mode="before")
    @classmethod
    def _split_origins(cls, v: object) -> object:
        if isinstance(v, str):
            return [o.strip() for o in v.split(",") if o.strip()]
        return v

    @field_validator("default_relax", "default_num_candidates", "default_oversample", mode="before")
    @classmethod
    def _empty_is_unset(cls, v: object) -> object:
        # MATDESIGN_DEFAULT_RELAX= (empty) means "fit the deployment", as when unset.
        return None if isinstance(v, str) and v.strip() == "" else v

    @field_validator("database_url")
    @classmethod
    def _psycopg3(cls, v: str) -> str:
        # Only psycopg 3 is a dependency: plain postgresql:// URLs would ask for psycopg2.
        for prefix in ("postgresql://", "postgres://"):
            if v.startswith(prefix):
                return "postgresql+psycopg://" + v[len(prefix) :]
        return v

    @property
    def embedded(self) -> bool:
        return self.broker_url == EMBEDDED_BROKER

    @property
    def relax_default(self) -> bool:
        return self.default_relax if self.default_relax is not None else not self.embedded

    @property
    def num_candidates_default(self) -> int:
        if self.default_num_candidates is not None:
            return min(self.default_num_candidates, self.max_candidates)
        return min(8 if self.embedded else 64, self.max_candidates)

    def oversample_default(self, num_candidates: int) -> int:
        """A lab-size job on GPU workers is the best of 4x; larger jobs over-generate only up
        to ``OVERSAMPLE_BUDGET`` candidates (a 256-candidate job 4x, 512 2x, 1,024 and
        screening-size jobs, sharded on Celery, return what they generate)."""
        if self.default_oversample is not None:
            return self.default_oversample
        if self.embedded or (
            self.shard_min_candidates and num_candidates >= self.shard_min_candidates
        ):
            return 1
        return max(1, min(4, OVERSAMPLE_BUDGET // max(num_candidates, 1)))

    @property
    def limits_on(self) -> bool:
        return self.limits_enabled if self.limits_enabled is not None else not self.embedded

    @property
    def limits_storage(self) -> str:
        if self.rate_limit_storage_url:
            return self.rate_limit_storage_url
        if self.broker_url.startswith(("redis://", "rediss://")):
            return self.broker_url
        return "memory://"


@lru_cache(maxsize=1)
def get_settings() -> Settings:
    return Settings()
