"""The interval ledger, definitions by fingerprint, and the partition of a task.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models (see 0002).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_intervals`` and ``lf_definitions``; add ``lf_tasks.partition_key``."""
    op.create_table(
        "lf_intervals",
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("partition_key", sa.String(64), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=True),
        sa.Column("input_versions", JSON_DOC, nullable=False),
        sa.Column("rows", sa.BigInteger(), nullable=True),
        sa.Column("rows_before", sa.BigInteger(), nullable=True),
        sa.Column("version", sa.BigInteger(), nullable=True),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.Column("built_at", TIMESTAMP, nullable=True),
        sa.PrimaryKeyConstraint("dataset", "partition_key", name="pk_lf_intervals"),
    )
    op.create_table(
        "lf_definitions",
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("language", sa.String(16), nullable=False),
        sa.Column("definition", sa.Text(), nullable=False),
        sa.Column("created_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("fingerprint", "dataset", name="pk_lf_definitions"),
    )
    with op.batch_alter_table("lf_tasks") as batch:
        batch.add_column(sa.Column("partition_key", sa.String(64), nullable=True))


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    with op.batch_alter_table("lf_tasks") as batch:
        batch.drop_column("partition_key")
    op.drop_table("lf_definitions")
    op.drop_table("lf_intervals")
