"""The run queue shared by workers, and concurrency pools.

Revision ID: 0005
Revises: 0004
Create Date: 2026-11-22 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models (see 0002).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_queue`` and ``lf_pools``."""
    op.create_table(
        "lf_queue",
        sa.Column("id", sa.Integer(), autoincrement=True, nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("selection", JSON_DOC, nullable=True),
        sa.Column("backfill", JSON_DOC, nullable=True),
        sa.Column("full_refresh", sa.Boolean(), nullable=False),
        sa.Column("priority", sa.Integer(), nullable=False),
        sa.Column("pool", sa.String(64), nullable=False),
        sa.Column("reason", sa.Text(), nullable=True),
        sa.Column("dedupe_key", sa.String(255), nullable=True),
        sa.Column("not_before", TIMESTAMP, nullable=True),
        sa.Column("enqueued_at", TIMESTAMP, nullable=False),
        sa.Column("claimed_by", sa.String(255), nullable=True),
        sa.Column("claimed_at", TIMESTAMP, nullable=True),
        sa.Column("heartbeat_at", TIMESTAMP, nullable=True),
        sa.Column("finished_at", TIMESTAMP, nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_lf_queue"),
        sa.UniqueConstraint("dedupe_key", name="uq_lf_queue_dedupe_key"),
    )
    op.create_index("ix_lf_queue_status_priority", "lf_queue", ["status", "priority", "id"])
    op.create_table(
        "lf_pools",
        sa.Column("name", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("name", name="pk_lf_pools"),
    )


def downgrade() -> None:
    """Drop what :func:`upgrade` created."""
    op.drop_table("lf_pools")
    op.drop_index("ix_lf_queue_status_priority", table_name="lf_queue")
    op.drop_table("lf_queue")
