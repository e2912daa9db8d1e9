"""Jobs get an optional label (free text to find them by), indexed per owner.

Revision ID: 0002_job_label
Revises: 0001
Create Date: 2026-12-03
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002_job_label"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("jobs") as batch:
        batch.add_column(sa.Column("label", sa.String(200), nullable=True))
    op.create_index("ix_jobs_owner_label", "jobs", ["owner", "label"])


def downgrade() -> None:
    op.drop_index("ix_jobs_owner_label", table_name="jobs")
    with op.batch_alter_table("jobs") as batch:
        batch.drop_column("label")
