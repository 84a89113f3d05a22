"""Models of the metadata store: ORM tables (a row per run, a row per task) and the plain
records the store hands out.

Tables are prefixed ``lf_`` so the store can share a database with other applications;
the Alembic version table is prefixed the same way (see ``migrations/env.py``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    BigInteger,
    Boolean,
    DateTime,
    Dialect,
    ForeignKey,
    Index,
    Integer,
    MetaData,
    String,
    Text,
    TypeDecorator,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import DeclarativeBase, Mapped, mapped_column, relationship

RUN_STATUSES = ("running", "success", "failed", "partial")
TASK_STATUSES = ("running", "success", "failed", "skipped", "up_to_date", "upstream_failed")

# JSONB on PostgreSQL so documents can be indexed and compared later; plain JSON elsewhere.
JSONDocument = JSON().with_variant(JSONB(), "postgresql")


class UTCDateTime(TypeDecorator[datetime]):
    """A timestamp stored in UTC and always read back as a timezone-aware UTC datetime.

    SQLite has no timezone type, so values are normalised to UTC before they are written
    (which also keeps the stored strings sortable) and tagged UTC when read. Naive values
    are rejected: guessing their zone would silently corrupt run history.
    """

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"naive datetime {value.isoformat()} given to the metadata store; "
                "pass a timezone-aware value, e.g. datetime.now(timezone.utc)"
            )
        utc = value.astimezone(UTC)
        # SQLite would store the offset text; store bare UTC so ordering is lexicographic.
        return utc.replace(tzinfo=None) if dialect.name == "sqlite" else utc

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


# Named constraints let future migrations alter them, including SQLite batch migrations.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Declarative base of the metadata store's tables."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)
    type_annotation_map: dict[Any, Any] = {  # noqa: RUF012 - SQLAlchemy reads it as a class attr
        datetime: UTCDateTime(),
        dict[str, Any]: JSONDocument,
        dict[str, int]: JSONDocument,
    }


class Run(Base):
    """One execution of a selection of the dataset graph."""

    __tablename__ = "lf_runs"

    id: Mapped[str] = mapped_column(String(64), primary_key=True)
    project: Mapped[str] = mapped_column(String(255))
    selection: Mapped[str | None] = mapped_column(Text)
    full_refresh: Mapped[bool] = mapped_column(Boolean, default=False)
    status: Mapped[str] = mapped_column(String(16))
    started_at: Mapped[datetime] = mapped_column(index=True)
    finished_at: Mapped[datetime | None]
    error: Mapped[str | None] = mapped_column(Text)
    options: Mapped[dict[str, Any]] = mapped_column(default=dict)
    counts: Mapped[dict[str, int]] = mapped_column(default=dict)

    tasks: Mapped[list[Task]] = relationship(
        back_populates="run", order_by="Task.id", cascade="all, delete-orphan"
    )


class Task(Base):
    """One flow executed (or deliberately not executed) for a dataset within a run."""

    __tablename__ = "lf_tasks"
    __table_args__ = (Index("ix_lf_tasks_dataset_started_at", "dataset", "started_at"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("lf_runs.id", ondelete="CASCADE"), index=True
    )
    dataset: Mapped[str] = mapped_column(String(255))
    layer: Mapped[str | None] = mapped_column(String(32))
    status: Mapped[str] = mapped_column(String(16))
    reason: Mapped[str | None] = mapped_column(Text)
    started_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    rows_in: Mapped[int | None] = mapped_column(BigInteger)
    rows_out: Mapped[int | None] = mapped_column(BigInteger)
    input_versions: Mapped[dict[str, int]] = mapped_column(default=dict)
    output_version: Mapped[int | None] = mapped_column(BigInteger)
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    error: Mapped[str | None] = mapped_column(Text)
    metrics: Mapped[dict[str, Any]] = mapped_column(default=dict)

    run: Mapped[Run] = relationship(back_populates="tasks")


# Plain records handed out by the store, detached from any session (safe across threads).


@dataclass
class TaskRecord:
    """One task of a run, as stored.

    Attributes:
        id: store-assigned task id.
        run_id: the run the task belongs to.
        dataset: dataset the task builds.
        layer: the dataset's layer (bronze/silver/gold), if any.
        status: running, success, failed, skipped, up_to_date or upstream_failed.
        reason: why the task ran or was skipped.
        started_at: when it started (UTC).
        finished_at: when it finished (UTC); ``None`` while running.
        attempts: executions attempted (0 for tasks that did not execute).
        rows_in: rows read.
        rows_out: rows published.
        input_versions: Delta version each input was pinned to.
        output_version: Delta version the task committed.
        fingerprint: code fingerprint of the transform.
        error: error message when failed.
        metrics: free-form task metrics.
    """

    id: int
    run_id: str
    dataset: str
    layer: str | None
    status: str
    reason: str | None
    started_at: datetime | None
    finished_at: datetime | None
    attempts: int
    rows_in: int | None
    rows_out: int | None
    input_versions: dict[str, int]
    output_version: int | None
    fingerprint: str | None
    error: str | None
    metrics: dict[str, Any]

    @classmethod
    def of(cls, task: Task) -> TaskRecord:
        """Detach a stored task from its session."""
        return cls(
            id=task.id,
            run_id=task.run_id,
            dataset=task.dataset,
            layer=task.layer,
            status=task.status,
            reason=task.reason,
            started_at=task.started_at,
            finished_at=task.finished_at,
            attempts=task.attempts,
            rows_in=task.rows_in,
            rows_out=task.rows_out,
            input_versions=dict(task.input_versions or {}),
            output_version=task.output_version,
            fingerprint=task.fingerprint,
            error=task.error,
            metrics=dict(task.metrics or {}),
        )


@dataclass
class RunRecord:
    """One run, as stored.

    Attributes:
        id: the run id.
        project: project name.
        selection: the selection expression the run was started with.
        full_refresh: whether the run rebuilt everything.
        status: running, success, failed or partial.
        started_at: when it started (UTC).
        finished_at: when it finished (UTC); ``None`` while running.
        error: run-level error message.
        options: run options, e.g. ``{"no_gate": False}``.
        tasks: the run's tasks in start order (filled by ``get_run``/``latest_run`` only).
        counts: number of tasks per status, computed when the run finishes.
    """

    id: str
    project: str
    selection: str | None
    full_refresh: bool
    status: str
    started_at: datetime
    finished_at: datetime | None
    error: str | None
    options: dict[str, Any]
    tasks: list[TaskRecord] = field(default_factory=list)
    counts: dict[str, int] = field(default_factory=dict)

    @classmethod
    def of(cls, run: Run, *, with_tasks: bool) -> RunRecord:
        """Detach a stored run (and, if asked, its loaded tasks) from its session."""
        return cls(
            id=run.id,
            project=run.project,
            selection=run.selection,
            full_refresh=run.full_refresh,
            status=run.status,
            started_at=run.started_at,
            finished_at=run.finished_at,
            error=run.error,
            options=dict(run.options or {}),
            tasks=[TaskRecord.of(task) for task in run.tasks] if with_tasks else [],
            counts=dict(run.counts or {}),
        )
