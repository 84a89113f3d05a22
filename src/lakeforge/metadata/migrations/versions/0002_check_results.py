"""Data-quality check results.

Revision ID: 0002
Revises: 0001
Create Date: 2025-02-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models: a migration must keep meaning what it
# meant when it was written, whatever the models become.
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_check_results``."""
    op.create_table(
        "lf_check_results",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=False),
        sa.Column("task_id", sa.Integer(), nullable=True),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("name", sa.String(512), nullable=False),
        sa.Column("check_type", sa.String(64), nullable=False),
        sa.Column("origin", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("scope", sa.String(16), nullable=True),
        sa.Column("value", sa.Float(), nullable=True),
        sa.Column("failing", sa.BigInteger(), nullable=True),
        sa.Column("total", sa.BigInteger(), nullable=True),
        sa.Column("threshold", sa.Text(), nullable=True),
        sa.Column("message", sa.Text(), nullable=True),
        sa.Column("sample", JSON_DOC, nullable=True),
        sa.Column("published", sa.Boolean(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.ForeignKeyConstraint(
            ["run_id"],
            ["lf_runs.id"],
            name="fk_lf_check_results_run_id_lf_runs",
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["task_id"],
            ["lf_tasks.id"],
            name="fk_lf_check_results_task_id_lf_tasks",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name="pk_lf_check_results"),
    )
    op.create_index("ix_lf_check_results_run_id", "lf_check_results", ["run_id"])
    op.create_index("ix_lf_check_results_task_id", "lf_check_results", ["task_id"])
    op.create_index(
        "ix_lf_check_results_dataset_name_created_at",
        "lf_check_results",
        ["dataset", "name", "created_at"],
    )


def downgrade() -> None:
    """Drop ``lf_check_results``."""
    op.drop_index("ix_lf_check_results_dataset_name_created_at", table_name="lf_check_results")
    op.drop_index("ix_lf_check_results_task_id", table_name="lf_check_results")
    op.drop_index("ix_lf_check_results_run_id", table_name="lf_check_results")
    op.drop_table("lf_check_results")
