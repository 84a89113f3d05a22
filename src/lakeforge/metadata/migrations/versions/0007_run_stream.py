"""Runs name the ``lakeforge stream`` they are a micro-batch of, in an indexed column.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    """Add ``lf_runs.stream_id`` and fill it from the runs' options (``{"stream": id}``)."""
    op.add_column("lf_runs", sa.Column("stream_id", sa.String(64), nullable=True))
    op.create_index("ix_lf_runs_stream_id_started_at", "lf_runs", ["stream_id", "started_at"])
    bind = op.get_bind()
    if bind.dialect.name == "postgresql":  # options is JSONB there
        stream = "options ->> 'stream'"
    else:
        stream = "json_extract(options, '$.stream')"
    op.execute(f"UPDATE lf_runs SET stream_id = {stream} WHERE {stream} IS NOT NULL")


def downgrade() -> None:
    """Drop what :func:`upgrade` added; the options still hold the stream ids."""
    op.drop_index("ix_lf_runs_stream_id_started_at", table_name="lf_runs")
    with op.batch_alter_table("lf_runs") as batch:
        batch.drop_column("stream_id")
