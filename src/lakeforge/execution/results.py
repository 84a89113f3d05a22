"""What a run produces and how it reports progress: task and run results, run options,
the listener protocol the CLI's progress display implements."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, Protocol

if TYPE_CHECKING:
    from lakeforge.errors import LakeforgeError
    from lakeforge.execution.planner import Assessment
    from lakeforge.quality.results import CheckResult


def new_run_id() -> str:
    """A sortable, unique run id: UTC timestamp + random suffix."""
    return datetime.now(UTC).strftime("%Y%m%dT%H%M%S") + "-" + uuid.uuid4().hex[:8]


@dataclass
class PartitionResult:
    """The outcome of one partition built by a task."""

    key: str
    status: str  # success | failed
    reason: str
    duration: float = 0.0
    attempts: int = 0
    rows_before: int | None = None
    rows: int | None = None
    version: int | None = None
    error: str | None = None

    def to_dict(self) -> dict[str, Any]:
        return {
            "partition": self.key,
            "status": self.status,
            "reason": self.reason,
            "duration_seconds": round(self.duration, 3),
            "attempts": self.attempts,
            "rows_before": self.rows_before,
            "rows": self.rows,
            "version": self.version,
            "error": self.error,
        }


@dataclass
class TaskResult:
    """The outcome of one dataset in a run."""

    dataset: str
    layer: str | None
    status: str  # success | failed | up_to_date | upstream_failed | view | planned
    reason: str
    started_at: datetime
    finished_at: datetime
    attempts: int = 0
    rows_in: int | None = None
    rows_out: int | None = None
    input_versions: dict[str, int] = field(default_factory=dict)
    version_before: int | None = None
    output_version: int | None = None
    fingerprint: str = ""
    error: LakeforgeError | None = None
    traceback: str | None = None
    metrics: dict[str, Any] = field(default_factory=dict)
    checks: list[CheckResult] = field(default_factory=list)
    checks_recorded: int = 0  # leading results already stored (batches published earlier)
    task_id: int | None = None
    partitions: list[PartitionResult] = field(default_factory=list)

    @property
    def duration(self) -> float:
        return (self.finished_at - self.started_at).total_seconds()

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "layer": self.layer,
            "status": self.status,
            "reason": self.reason,
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round(self.duration, 3),
            "attempts": self.attempts,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "input_versions": self.input_versions,
            "version_before": self.version_before,
            "output_version": self.output_version,
            "fingerprint": self.fingerprint,
            "error": self.error.to_dict() if self.error else None,
            "metrics": self.metrics,
            "checks": [c.to_dict() for c in self.checks],
            "partitions": [p.to_dict() for p in self.partitions],
        }

    def check_counts(self) -> dict[str, int]:
        """This task's check and expectation results by status."""
        counts: dict[str, int] = {}
        for c in self.checks:
            counts[c.status] = counts.get(c.status, 0) + 1
        return counts


@dataclass
class RunResult:
    """The outcome of a run."""

    run_id: str
    status: str  # success | failed
    started_at: datetime
    finished_at: datetime
    tasks: list[TaskResult]
    dry_run: bool = False
    gate: bool = True

    @property
    def ok(self) -> bool:
        return self.status == "success"

    def check_counts(self) -> dict[str, int]:
        """All check and expectation results of the run by status."""
        counts: dict[str, int] = {}
        for task in self.tasks:
            for status, n in task.check_counts().items():
                counts[status] = counts.get(status, 0) + n
        return counts

    def to_dict(self) -> dict[str, Any]:
        return {
            "run_id": self.run_id,
            "status": self.status,
            "dry_run": self.dry_run,
            "gate": self.gate,
            "checks": self.check_counts(),
            "started_at": self.started_at.isoformat(),
            "finished_at": self.finished_at.isoformat(),
            "duration_seconds": round((self.finished_at - self.started_at).total_seconds(), 3),
            "tasks": [t.to_dict() for t in self.tasks],
        }


@dataclass(frozen=True)
class RunOptions:
    """How a run treats its tasks.

    Attributes:
        gate: blocking checks stop a publish (``--no-gate`` turns it off).
        replay: dataset → a source whose batches are ingested whatever the plan says (used
            to re-ingest dead letters).
        backfill: dataset → partition keys rebuilt whatever their state.
        concurrency: partitions of one dataset built at once.
        stop: asked between a source's batches; True ends the task after the batch just
            committed (``lakeforge stream`` stopping gracefully); the rest is read next time.
    """

    gate: bool = True
    replay: dict[str, Any] = field(default_factory=dict)
    backfill: dict[str, set[str]] = field(default_factory=dict)
    concurrency: int = 1
    stop: Callable[[], bool] | None = None


class RunListener(Protocol):
    """Receives progress events (the CLI's progress display implements it)."""

    def on_plan(self, names: list[str], assessments: list[Assessment]) -> None: ...
    def on_task_start(self, dataset: str, reason: str) -> None: ...
    def on_task_end(self, result: TaskResult) -> None: ...
    def on_partition_end(self, dataset: str, result: PartitionResult, total: int) -> None: ...


class SilentListener:
    def on_plan(self, names: list[str], assessments: list[Assessment]) -> None:
        return None

    def on_task_start(self, dataset: str, reason: str) -> None:
        return None

    def on_task_end(self, result: TaskResult) -> None:
        return None

    def on_partition_end(self, dataset: str, result: PartitionResult, total: int) -> None:
        return None
