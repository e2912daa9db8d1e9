"""Initial schema: api_keys, jobs, structures, oracle_scores.

Revision ID: 0001
Revises:
Create Date: 2026-11-23
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

from app.db import UTCDateTime

revision: str = "0001"
down_revision: str | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

JSONType = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")


def upgrade() -> None:
    op.create_table(
        "api_keys",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("prefix", sa.String(16), nullable=False),
        sa.Column("key_hash", sa.String(64), nullable=False, unique=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("revoked_at", UTCDateTime(), nullable=True),
    )
    op.create_table(
        "jobs",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("method", sa.String(64), nullable=False),
        sa.Column("request", JSONType, nullable=False),
        sa.Column("request_hash", sa.String(64), nullable=False),
        sa.Column("idempotency_key", sa.String(255), nullable=True),
        sa.Column("progress", JSONType, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("summary", JSONType, nullable=True),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("started_at", UTCDateTime(), nullable=True),
        sa.Column("finished_at", UTCDateTime(), nullable=True),
        sa.Column("enqueued_at", UTCDateTime(), nullable=True),
        sa.Column("enqueue_count", sa.Integer(), nullable=False),
        sa.Column("claim", sa.String(36), nullable=True),
        sa.Column("worker", sa.String(255), nullable=True),
        sa.Column("heartbeat_at", UTCDateTime(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.UniqueConstraint("owner", "idempotency_key", name="uq_jobs_owner_idempotency_key"),
    )
    op.create_index("ix_jobs_owner_created", "jobs", ["owner", "created_at", "id"])
    op.create_index("ix_jobs_status", "jobs", ["status"])
    op.create_table(
        "structures",
        sa.Column("id", sa.String(36), primary_key=True),
        sa.Column(
            "job_id", sa.String(36), sa.ForeignKey("jobs.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("rank", sa.Integer(), nullable=True),
        sa.Column("formula", sa.String(128), nullable=False),
        sa.Column("n_atoms", sa.Integer(), nullable=False),
        sa.Column("space_group", sa.Integer(), nullable=True),
        sa.Column("cif", sa.Text(), nullable=False),
        sa.Column("relaxed_cif", sa.Text(), nullable=True),
        sa.Column("crystal", JSONType, nullable=False),
        sa.Column("relaxed", JSONType, nullable=True),
        sa.Column("method_score", sa.Float(), nullable=True),
        sa.Column("objective_loss", sa.Float(), nullable=True),
        sa.Column("energy_above_hull", sa.Float(), nullable=True),
        sa.Column("flags", JSONType, nullable=False),
        sa.Column("hit", sa.Boolean(), nullable=False),
        sa.Column("predicted", JSONType, nullable=False),
        sa.Column("meta", JSONType, nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.UniqueConstraint("job_id", "fingerprint", name="uq_structures_job_fingerprint"),
    )
    op.create_index("ix_structures_job_rank", "structures", ["job_id", "rank", "seq"])
    op.create_index("ix_structures_job_seq", "structures", ["job_id", "seq"])
    op.create_table(
        "oracle_scores",
        sa.Column("id", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column(
            "structure_id",
            sa.String(36),
            sa.ForeignKey("structures.id", ondelete="CASCADE"),
            nullable=False,
        ),
        sa.Column("property", sa.String(64), nullable=False),
        sa.Column("oracle", sa.String(128), nullable=False),
        sa.Column("version", sa.String(255), nullable=False),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("unit", sa.String(32), nullable=False),
        sa.UniqueConstraint(
            "structure_id", "property", name="uq_oracle_scores_structure_property"
        ),
    )


def downgrade() -> None:
    op.drop_table("oracle_scores")
    op.drop_table("structures")
    op.drop_table("jobs")
    op.drop_table("api_keys")
