"""Alert state: one row per alert condition (event, dataset, subject).

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-23 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models (see 0002).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_alerts``."""
    op.create_table(
        "lf_alerts",
        sa.Column("event", sa.String(32), nullable=False),
        sa.Column("dataset", sa.String(255), nullable=False),
        sa.Column("subject", sa.String(512), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("severity", sa.String(16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", JSON_DOC, nullable=False),
        sa.Column("run_id", sa.String(64), nullable=True),
        sa.Column("first_fired", TIMESTAMP, nullable=False),
        sa.Column("last_fired", TIMESTAMP, nullable=False),
        sa.Column("resolved_at", TIMESTAMP, nullable=True),
        sa.Column("last_sent", TIMESTAMP, nullable=True),
        sa.Column("count", sa.Integer(), nullable=False),
        sa.Column("deliveries", JSON_DOC, nullable=False),
        sa.Column("undelivered", sa.Boolean(), nullable=False),
        sa.PrimaryKeyConstraint("event", "dataset", "subject", name="pk_lf_alerts"),
    )
    op.create_index("ix_lf_alerts_undelivered", "lf_alerts", ["undelivered"])


def downgrade() -> None:
    """Drop ``lf_alerts``."""
    op.drop_index("ix_lf_alerts_undelivered", table_name="lf_alerts")
    op.drop_table("lf_alerts")
