"""Schedule and sensor state: one row per schedule or sensor.

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-24 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Spelled out rather than imported from models (see 0002).
JSON_DOC = sa.JSON().with_variant(postgresql.JSONB(), "postgresql")
TIMESTAMP = sa.DateTime(timezone=True)


def upgrade() -> None:
    """Create ``lf_schedule_state``."""
    op.create_table(
        "lf_schedule_state",
        sa.Column("kind", sa.String(16), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("cursor", TIMESTAMP, nullable=True),
        sa.Column("state", JSON_DOC, nullable=False),
        sa.Column("last_evaluated", TIMESTAMP, nullable=True),
        sa.Column("last_fired", TIMESTAMP, nullable=True),
        sa.Column("last_tick", TIMESTAMP, nullable=True),
        sa.Column("last_item", sa.Integer(), nullable=True),
        sa.Column("fired", sa.Integer(), nullable=False),
        sa.Column("skipped", sa.Integer(), nullable=False),
        sa.Column("last_error", sa.Text(), nullable=True),
        sa.Column("updated_at", TIMESTAMP, nullable=False),
        sa.PrimaryKeyConstraint("kind", "name", name="pk_lf_schedule_state"),
    )


def downgrade() -> None:
    """Drop ``lf_schedule_state``."""
    op.drop_table("lf_schedule_state")
