"""Metadata store: run and task history (SQLite by default, PostgreSQL to scale out).

Importing this package imports SQLAlchemy and Alembic, so callers on the CLI's start-up
path import it lazily.
"""

from __future__ import annotations

from lakeforge.metadata.store import MetadataStore, RunRecord, TaskRecord, mask_url

__all__ = ["MetadataStore", "RunRecord", "TaskRecord", "mask_url"]
