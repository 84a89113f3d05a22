"""Initial schema: runs and tasks.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models: a migration must keep meaning what it
# meant when it was written, whatever the models become.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_runs`` and ``lf_tasks``."""
    op.create_table(
        "lf_runs",
        sa.Column("id", sa.String(64), nullable=False),
        sa.Column("project", sa.String(255), nullable=False),
        sa.Column("selection", sa.Text(), nullable=True),
        sa.Column("full_refresh", sa.Boolean(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("started_at", TIMESTAMP, nullable=False),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("options", JSON_DOC, nullable=False),
        sa.Column("counts", JSON_DOC, nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_lf_runs"),
    )
    op.create_index("ix_lf_runs_started_at", "lf_runs", ["started_at"])
    op.create_table(
        "lf_tasks",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("layer", sa.String(32), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("started_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("rows_in", sa.BigInteger(), nullable=True),
        sa.Column("rows_out", sa.BigInteger(), nullable=True),
        sa.Column("input_versions", JSON_DOC, nullable=False),
        sa.Column("output_version", sa.BigInteger(), nullable=True),
        sa.Column("fingerprint", sa.String(128), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("metrics", JSON_DOC, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["lf_runs.id"],
            name="fk_lf_tasks_run_id_lf_runs",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lf_tasks"),
    )
    op.create_index("ix_lf_tasks_run_id", "lf_tasks", ["run_id"])
    op.create_index("ix_lf_tasks_dataset_started_at", "lf_tasks", ["dataset", "started_at"])


def downgrade() -> None:
    """Drop ``lf_tasks`` and ``lf_runs``."""
    op.drop_index("ix_lf_tasks_dataset_started_at", table_name="lf_tasks")
    op.drop_index("ix_lf_tasks_run_id", table_name="lf_tasks")
    op.drop_table("lf_tasks")
    op.drop_index("ix_lf_runs_started_at", table_name="lf_runs")
    op.drop_table("lf_runs")
