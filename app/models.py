"""SQLAlchemy 2 models: jobs, structures, oracle_scores, api_keys.

The Alembic revisions in ``migrations/`` create exactly these tables (a test compares them).
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

from app.db import UTCDateTime

JSONType = JSON().with_variant(JSONB(), "postgresql")

# Job states. "cancelling": asked to stop, the worker has not stopped yet.
QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED = (
    "queued",
    "running",
    "succeeded",
    "failed",
    "cancelling",
    "cancelled",
)
JOB_STATES = (QUEUED, RUNNING, SUCCEEDED, FAILED, CANCELLING, CANCELLED)
FINISHED_STATES = (SUCCEEDED, FAILED, CANCELLED)
# Owner of jobs submitted without a key on a server that does not require one.
ANONYMOUS = "anonymous"


class Base(DeclarativeBase):
    pass


class ApiKey(Base):
    __tablename__ = "api_keys"

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    name: Mapped[str] = mapped_column(String(200))
    # First characters of the key, shown in listings so a key can be recognised.
    prefix: Mapped[str] = mapped_column(String(16))
    # SHA-256 of the whole key; the key itself is never stored.
    key_hash: Mapped[str] = mapped_column(String(64), unique=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    revoked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class Job(Base):
    __tablename__ = "jobs"
    __table_args__ = (
        UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
        Index("ix_jobs_owner_created", "owner", "created_at", "id"),
        Index("ix_jobs_status", "status"),
        Index("ix_jobs_owner_label", "owner", "label"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    status: Mapped[str] = mapped_column(String(16))
    method: Mapped[str] = mapped_column(String(64))
    # The request's label, copied into a column so job lists can filter on it.
    label: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request: Mapped[dict[str, Any]] = mapped_column(JSONType)
    request_hash: Mapped[str] = mapped_column(String(64))
    idempotency_key: Mapped[str | None] = mapped_column(String(255), nullable=True)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    summary: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Queue bookkeeping: when the job was last handed to the queue and how often.
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    enqueue_count: Mapped[int] = mapped_column(Integer, default=0)
    # Lease of the worker running it: a random claim token plus a heartbeat.
    claim: Mapped[str | None] = mapped_column(String(36), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)

    structures: Mapped[list[Structure]] = relationship(
        back_populates="job", cascade="all, delete-orphan", passive_deletes=True
    )


class Structure(Base):
    __tablename__ = "structures"
    __table_args__ = (
        # Re-running a job (after a worker died) never stores a candidate twice.
        UniqueConstraint("job_id", "fingerprint", name="uq_structures_job_fingerprint"),
        Index("ix_structures_job_rank", "job_id", "rank", "seq"),
        Index("ix_structures_job_seq", "job_id", "seq"),
    )

    id: Mapped[str] = mapped_column(String(36), primary_key=True)
    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"))
    # Insertion order inside the job.
    seq: Mapped[int] = mapped_column(Integer)
    fingerprint: Mapped[str] = mapped_column(String(128))
    rank: Mapped[int | None] = mapped_column(Integer, nullable=True)
    formula: Mapped[str] = mapped_column(String(128))
    n_atoms: Mapped[int] = mapped_column(Integer)
    space_group: Mapped[int | None] = mapped_column(Integer, nullable=True)
    cif: Mapped[str] = mapped_column(Text)
    relaxed_cif: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Exact arrays (lattice, frac_coords, numbers) so re-ranking needs no CIF parsing.
    crystal: Mapped[dict[str, Any]] = mapped_column(JSONType)
    relaxed: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    method_score: Mapped[float | None] = mapped_column(Float, nullable=True)
    objective_loss: Mapped[float | None] = mapped_column(Float, nullable=True)
    energy_above_hull: Mapped[float | None] = mapped_column(Float, nullable=True)
    flags: Mapped[dict[str, bool]] = mapped_column(JSONType)
    hit: Mapped[bool] = mapped_column(Boolean, default=False)
    predicted: Mapped[dict[str, float]] = mapped_column(JSONType)
    meta: Mapped[dict[str, Any]] = mapped_column(JSONType)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime())

    job: Mapped[Job] = relationship(back_populates="structures")
    scores: Mapped[list[OracleScore]] = relationship(
        back_populates="structure",
        cascade="all, delete-orphan",
        passive_deletes=True,
        order_by="OracleScore.property",
    )


class OracleScore(Base):
    __tablename__ = "oracle_scores"
    __table_args__ = (
        UniqueConstraint("structure_id", "property", name="uq_oracle_scores_structure_property"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    structure_id: Mapped[str] = mapped_column(ForeignKey("structures.id", ondelete="CASCADE"))
    property: Mapped[str] = mapped_column(String(64))
    oracle: Mapped[str] = mapped_column(String(128))
    version: Mapped[str] = mapped_column(String(255))
    value: Mapped[float | None] = mapped_column(Float, nullable=True)
    unit: Mapped[str] = mapped_column(String(32))

    structure: Mapped[Structure] = relationship(back_populates="scores")


class JobShard(Base):
    """One shard of a sharded job: candidates ``lo`` to ``hi - 1`` of the method's stream.

    A shard is claimed like a job (conditional UPDATE, claim token, heartbeat), so a
    redelivered shard message is harmless; its structures are rows of the job itself."""

    __tablename__ = "job_shards"

    job_id: Mapped[str] = mapped_column(ForeignKey("jobs.id", ondelete="CASCADE"), primary_key=True)
    shard: Mapped[int] = mapped_column(Integer, primary_key=True)
    lo: Mapped[int] = mapped_column(Integer)
    hi: Mapped[int] = mapped_column(Integer)
    status: Mapped[str] = mapped_column(String(16))
    claim: Mapped[str | None] = mapped_column(String(36), nullable=True)
    worker: Mapped[str | None] = mapped_column(String(255), nullable=True)
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    progress: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    timings: Mapped[dict[str, Any] | None] = mapped_column(JSONType, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
