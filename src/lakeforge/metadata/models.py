"""Models of the metadata store: ORM tables (a row per run, per task and per data-quality
check result) and the plain records the store hands out.

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
    Float,
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
INTERVAL_STATUSES = ("running", "built", "failed")
ALERT_STATUSES = ("firing", "resolved")
CHECK_STATUSES = ("pass", "warn", "fail", "error", "skipped")
# Where a check result comes from: a dataset's expectations, its checks, or its contract.
CHECK_ORIGINS = ("expectation", "check", "contract")

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
    __table_args__ = (Index("ix_lf_runs_stream_id_started_at", "stream_id", "started_at"),)

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
    # The `lakeforge stream` this run is a micro-batch of (None: any other run); indexed so
    # that history can fold a stream's micro-batches and retention can prune them.
    stream_id: Mapped[str | None] = mapped_column(String(64))

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
    partition_key: Mapped[str | None] = mapped_column(String(64))
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


class CheckResultRow(Base):
    """The outcome of one data-quality check on one dataset within a run."""

    __tablename__ = "lf_check_results"
    __table_args__ = (
        # Serves metric_history: one check's values on one dataset, newest first.
        Index("ix_lf_check_results_dataset_name_created_at", "dataset", "name", "created_at"),
    )

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    run_id: Mapped[str] = mapped_column(
        String(64), ForeignKey("lf_runs.id", ondelete="CASCADE"), index=True
    )
    # Indexed so that deleting tasks (or runs, which cascade to tasks) does not scan the
    # whole result history once per task.
    task_id: Mapped[int | None] = mapped_column(
        Integer, ForeignKey("lf_tasks.id", ondelete="CASCADE"), index=True
    )
    dataset: Mapped[str] = mapped_column(String(255))
    name: Mapped[str] = mapped_column(String(512))
    check_type: Mapped[str] = mapped_column(String(64))
    origin: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    status: Mapped[str] = mapped_column(String(16))
    scope: Mapped[str | None] = mapped_column(String(16))
    value: Mapped[float | None] = mapped_column(Float)
    failing: Mapped[int | None] = mapped_column(BigInteger)
    total: Mapped[int | None] = mapped_column(BigInteger)
    threshold: Mapped[str | None] = mapped_column(Text)
    message: Mapped[str | None] = mapped_column(Text)
    sample: Mapped[Any] = mapped_column(JSONDocument, nullable=True)
    published: Mapped[bool] = mapped_column(Boolean)
    created_at: Mapped[datetime]


class IntervalRow(Base):
    """The interval ledger: the latest state of one partition of a partitioned dataset."""

    __tablename__ = "lf_intervals"

    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    partition_key: Mapped[str] = mapped_column(String(64), primary_key=True)
    status: Mapped[str] = mapped_column(String(16))
    fingerprint: Mapped[str | None] = mapped_column(String(128))
    input_versions: Mapped[dict[str, int]] = mapped_column(default=dict)
    rows: Mapped[int | None] = mapped_column(BigInteger)
    rows_before: Mapped[int | None] = mapped_column(BigInteger)
    version: Mapped[int | None] = mapped_column(BigInteger)
    run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]
    built_at: Mapped[datetime | None]


class DefinitionRow(Base):
    """A dataset definition by fingerprint, so a plan can show what changed in the code."""

    __tablename__ = "lf_definitions"

    fingerprint: Mapped[str] = mapped_column(String(128), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    language: Mapped[str] = mapped_column(String(16))
    definition: Mapped[str] = mapped_column(Text)
    created_at: Mapped[datetime]


class AlertRow(Base):
    """The state of one alert condition (event, dataset, subject): firing or resolved, and
    what each channel was told (``scheduling/alert_book.py``)."""

    __tablename__ = "lf_alerts"

    event: Mapped[str] = mapped_column(String(32), primary_key=True)
    dataset: Mapped[str] = mapped_column(String(255), primary_key=True)
    subject: Mapped[str] = mapped_column(String(512), primary_key=True)  # "" when none
    status: Mapped[str] = mapped_column(String(16))
    severity: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text)
    details: Mapped[dict[str, Any]] = mapped_column(default=dict)
    run_id: Mapped[str | None] = mapped_column(String(64))
    first_fired: Mapped[datetime]
    last_fired: Mapped[datetime]
    resolved_at: Mapped[datetime | None]
    last_sent: Mapped[datetime | None]
    count: Mapped[int] = mapped_column(Integer, default=1)
    # Per channel: what it was told, what it is owed, its last error.
    deliveries: Mapped[dict[str, Any]] = mapped_column(default=dict)
    undelivered: Mapped[bool] = mapped_column(Boolean, default=False, index=True)


class QueueItemRow(Base):
    """A run waiting in (or taken from) the run queue that workers share."""

    __tablename__ = "lf_queue"
    __table_args__ = (Index("ix_lf_queue_status_priority", "status", "priority", "id"),)

    id: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    status: Mapped[str] = mapped_column(String(16))
    selection: Mapped[list[str] | None] = mapped_column(JSONDocument, nullable=True)
    backfill: Mapped[dict[str, Any] | None] = mapped_column(JSONDocument, nullable=True)
    full_refresh: Mapped[bool] = mapped_column(Boolean, default=False)
    priority: Mapped[int] = mapped_column(Integer, default=0)
    pool: Mapped[str] = mapped_column(String(64))
    reason: Mapped[str | None] = mapped_column(Text)
    # Unique while the item is queued or claimed; cleared when it finishes.
    dedupe_key: Mapped[str | None] = mapped_column(String(255), unique=True)
    not_before: Mapped[datetime | None]
    enqueued_at: Mapped[datetime]
    claimed_by: Mapped[str | None] = mapped_column(String(255))
    claimed_at: Mapped[datetime | None]
    heartbeat_at: Mapped[datetime | None]
    finished_at: Mapped[datetime | None]
    attempts: Mapped[int] = mapped_column(Integer, default=0)
    run_id: Mapped[str | None] = mapped_column(String(64))
    error: Mapped[str | None] = mapped_column(Text)


class PoolRow(Base):
    """A concurrency pool: locked while a worker counts its running items."""

    __tablename__ = "lf_pools"

    name: Mapped[str] = mapped_column(String(64), primary_key=True)


class ScheduleStateRow(Base):
    """The state of one schedule or sensor (``scheduling/scheduler.py``): how far its ticks
    were handled, its sensor cursor, when it last fired. Locked while a scheduler enqueues
    for it, so two schedulers never queue the same tick or sensor firing."""

    __tablename__ = "lf_schedule_state"

    kind: Mapped[str] = mapped_column(String(16), primary_key=True)  # schedule | sensor
    name: Mapped[str] = mapped_column(String(255), primary_key=True)
    # Schedules: every tick at or before this time was handled (queued or skipped).
    cursor: Mapped[datetime | None]
    # Sensors: what the last evaluation saw (file set, input versions, a custom cursor).
    state: Mapped[dict[str, Any]] = mapped_column(default=dict)
    last_evaluated: Mapped[datetime | None]
    last_fired: Mapped[datetime | None]
    last_tick: Mapped[datetime | None]  # schedules: the newest tick queued
    last_item: Mapped[int | None] = mapped_column(Integer)  # the queue item it last added
    fired: Mapped[int] = mapped_column(Integer, default=0)
    skipped: Mapped[int] = mapped_column(Integer, default=0)  # ticks dropped by catchup rules
    last_error: Mapped[str | None] = mapped_column(Text)
    updated_at: Mapped[datetime]


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
        partition_key: the partition built (partitioned datasets).
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
    partition_key: str | None = None

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
            partition_key=task.partition_key,
        )


@dataclass(kw_only=True)
class CheckResultRecord:
    """One data-quality check result, as recorded or to be recorded.

    Built with keywords only; the optional fields default to ``None`` and ``id`` is
    assigned by the store (any value given to :meth:`MetadataStore.record_check_results`
    is ignored).

    Attributes:
        run_id: the run the check ran in.
        task_id: the task that ran it, if any.
        dataset: the dataset checked.
        name: the check's name, unique within the dataset; its history is keyed by
            ``(dataset, name)``.
        check_type: the kind of check, e.g. ``not_null`` or ``row_count``.
        origin: where the check was declared: expectation, check or contract.
        severity: the declared severity, e.g. ``error`` or ``warn``.
        status: pass, warn, fail, error or skipped.
        scope: what was checked, e.g. ``batch`` or ``table``.
        value: the measured metric (failing fraction, row count, …), when there is one.
        failing: number of rows failing the check.
        total: number of rows checked.
        threshold: the thresholds the value was compared with, as text.
        message: a human-readable outcome or error message.
        sample: a JSON value (typically a few failing rows) to show what went wrong.
        published: whether the data the check ran on was published; only published
            results make up the baseline of history-based checks.
        created_at: when the check ran (UTC).
        id: store-assigned id; ``None`` until recorded.
    """

    run_id: str
    task_id: int | None = None
    dataset: str
    name: str
    check_type: str
    origin: str
    severity: str
    status: str
    scope: str | None = None
    value: float | None = None
    failing: int | None = None
    total: int | None = None
    threshold: str | None = None
    message: str | None = None
    sample: Any = None
    published: bool
    created_at: datetime
    id: int | None = None

    @classmethod
    def of(cls, row: CheckResultRow) -> CheckResultRecord:
        """Detach a stored check result from its session."""
        return cls(
            id=row.id,
            run_id=row.run_id,
            task_id=row.task_id,
            dataset=row.dataset,
            name=row.name,
            check_type=row.check_type,
            origin=row.origin,
            severity=row.severity,
            status=row.status,
            scope=row.scope,
            value=row.value,
            failing=row.failing,
            total=row.total,
            threshold=row.threshold,
            message=row.message,
            sample=row.sample,
            published=row.published,
            created_at=row.created_at,
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
        stream_id: the ``lakeforge stream`` the run is a micro-batch of, if any.
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
    stream_id: str | None = None
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
            stream_id=run.stream_id,
            tasks=[TaskRecord.of(task) for task in run.tasks] if with_tasks else [],
            counts=dict(run.counts or {}),
        )


@dataclass
class StreamSummary:
    """The micro-batch runs one ``lakeforge stream`` recorded, folded into one entry.

    Attributes:
        stream_id: the stream's id (in its runs' options and ``stream_id``).
        micro_batches: its runs still in the store (retention prunes old ones).
        failed: how many of them failed.
        first_started_at: when the oldest of them started.
        last: the newest of them.
    """

    stream_id: str
    micro_batches: int
    failed: int
    first_started_at: datetime
    last: RunRecord
