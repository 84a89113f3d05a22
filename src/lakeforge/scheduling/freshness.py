"""Freshness SLAs: how old is each dataset's data, judged against ``freshness:``.

- **Unpartitioned** (and static-partitioned) tables: the age is the time since the newest
  commit that changed rows (maintenance and empty commits do not count) — a dead-man's
  switch: a table nobody refreshed goes ``warn`` then ``error``. A table never built is at
  the worst level its SLA declares ("never built": ``error``, or ``warn`` for a warn-only
  SLA).
- **Time-partitioned** tables: each complete partition must be built within the SLA after
  its interval ended. A partition never built successfully (no ``built_at`` in the interval
  ledger; a rebuild that is running or failed keeps the data built before)
  ``warn_after`` / ``error_after`` past its end is late; the result names the late
  partitions and the worst lateness.

The judging functions are pure (``now`` is a parameter); :func:`evaluate` reads the Delta
log and the interval ledger.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from lakeforge.graph.spec import Dataset
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project
    from lakeforge.scheduling.spec import FreshnessSLA
    from lakeforge.storage.delta import DeltaStore

STATUSES = ("fresh", "warn", "error", "unknown")
LATE_SHOWN = 20  # partition keys listed per dataset; the count covers all of them
_RECENT = 25  # log entries read first when looking for the newest data change
# Operation metrics that count files a commit added or removed (write, merge, delete …).
_FILE_METRICS = (
    "num_added_files",
    "num_removed_files",
    "num_target_files_added",
    "num_target_files_removed",
)


@dataclass
class FreshnessResult:
    """How fresh one dataset is.

    Attributes:
        status: ``fresh``, ``warn``, ``error`` or ``unknown`` (could not be read).
        age_seconds: time since the data last changed; for a time-partitioned table, the
            worst lateness (now − end of the oldest late partition, 0 when none is late).
        threshold: the SLA as written (``warn 2h, error 6h``).
        detail: one line a person can act on.
        last_update: when the data last changed (unpartitioned tables).
        late_partitions: keys of late partitions, oldest first (at most ``LATE_SHOWN``).
        late_count: how many partitions are late.
    """

    dataset: str
    status: str
    age_seconds: float | None
    threshold: str
    detail: str
    warn_after: float | None = None
    error_after: float | None = None
    last_update: datetime | None = None
    partitioned: bool = False
    late_partitions: list[str] = field(default_factory=list)
    late_count: int = 0

    @property
    def breached(self) -> bool:
        return self.status in ("warn", "error")

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "status": self.status,
            "age_seconds": None if self.age_seconds is None else round(self.age_seconds, 3),
            "age": None if self.age_seconds is None else format_age(self.age_seconds),
            "threshold": self.threshold,
            "warn_after_seconds": self.warn_after,
            "error_after_seconds": self.error_after,
            "detail": self.detail,
            "last_update": None if self.last_update is None else self.last_update.isoformat(),
            "partitioned": self.partitioned,
            "late_partitions": self.late_partitions,
            "late_count": self.late_count,
        }


def judge(age_seconds: float, sla: FreshnessSLA) -> str:
    """``error`` past ``error_after``, ``warn`` past ``warn_after``, else ``fresh``."""
    if sla.error_seconds is not None and age_seconds > sla.error_seconds:
        return "error"
    if sla.warn_seconds is not None and age_seconds > sla.warn_seconds:
        return "warn"
    return "fresh"


def evaluate_updates(
    dataset: str, sla: FreshnessSLA, last_update: datetime | None, now: datetime
) -> FreshnessResult:
    """Judge a table by the time its data last changed (None: never built)."""
    base = _base(dataset, sla)
    if last_update is None:  # infinitely old: the worst level the SLA declares
        status = judge(math.inf, sla)
        return FreshnessResult(**base, status=status, age_seconds=None, detail="never built")
    age = max(0.0, (now - last_update).total_seconds())
    status = judge(age, sla)
    detail = f"last data change {format_age(age)} ago ({last_update:%Y-%m-%d %H:%M} UTC)"
    return FreshnessResult(
        **base, status=status, age_seconds=age, detail=detail, last_update=last_update
    )


def evaluate_partitions(
    dataset: str,
    sla: FreshnessSLA,
    partitioning: Any,
    statuses: Mapping[str, str],
    now: datetime,
) -> FreshnessResult:
    """Judge a time-partitioned table by its complete partitions that are not built.

    Args:
        partitioning: the dataset's ``Daily``/``Hourly``/``Monthly`` partitioning.
        statuses: partition key → ``built`` for the partitions whose data is there (built
            successfully at least once); any other value or absent: not built.
    """
    base = _base(dataset, sla, partitioned=True)
    limit = min(s for s in (sla.warn_seconds, sla.error_seconds) if s is not None)
    naive_now = now.astimezone(UTC).replace(tzinfo=None)
    partitions = partitioning.partitions(now)
    late: list[tuple[str, float]] = []
    pending = 0
    for p in partitions:
        if statuses.get(p.key) == "built":
            continue
        lateness = (naive_now - p.end).total_seconds()
        if lateness > limit:
            late.append((p.key, lateness))
        else:
            pending += 1
    if not late:
        if not partitions:
            detail = "no complete partition yet"
        else:
            detail = f"{len(partitions) - pending} of {len(partitions)} partition(s) built"
            if pending:
                detail += f", {pending} within the SLA"
        return FreshnessResult(**base, status="fresh", age_seconds=0.0, detail=detail)
    worst_key, worst = late[0]  # oldest first: the oldest late partition is the latest
    shown = ", ".join(key for key, _ in late[:3]) + (" …" if len(late) > 3 else "")
    detail = (
        f"{len(late)} partition(s) not built: {shown}; {worst_key} is {format_age(worst)} "
        "past its end"
    )
    return FreshnessResult(
        **base,
        status=judge(worst, sla),
        age_seconds=worst,
        detail=detail,
        late_partitions=[key for key, _ in late[:LATE_SHOWN]],
        late_count=len(late),
    )


def unknown(dataset: str, sla: FreshnessSLA, reason: str) -> FreshnessResult:
    """A dataset whose freshness could not be read."""
    return FreshnessResult(**_base(dataset, sla), status="unknown", age_seconds=None, detail=reason)


def _base(dataset: str, sla: FreshnessSLA, *, partitioned: bool = False) -> dict[str, Any]:
    return {
        "dataset": dataset,
        "threshold": sla.describe(),
        "warn_after": sla.warn_seconds,
        "error_after": sla.error_seconds,
        "partitioned": partitioned,
    }


# -- reading ------------------------------------------------------------------------------


def last_data_change(store: DeltaStore, dataset: str) -> datetime | None:
    """When the rows of ``dataset`` last changed: the newest commit that is not
    maintenance and added or removed files (None: no table). Reads the log's tail first:
    the whole log only when no commit of the tail changed rows."""
    if not store.exists(dataset):
        return None
    table = store.open(dataset)
    entries = table.history(_RECENT)
    found = _newest_change(entries)
    if found is None and len(entries) >= _RECENT:
        entries = table.history()
        found = _newest_change(entries)
    if found is not None:
        return _timestamp(found)
    # Only empty commits: the table's data dates from its creation.
    return _timestamp(entries[-1]) if entries else None


def _newest_change(entries: list[dict[str, Any]]) -> dict[str, Any] | None:
    from lakeforge.storage.delta import _MAINTENANCE_OPERATIONS

    for entry in entries:  # newest first
        if entry.get("operation") in _MAINTENANCE_OPERATIONS:
            continue
        if _changes_rows(entry.get("operationMetrics")):
            return entry
    return None


def _changes_rows(metrics: Any) -> bool:
    if not isinstance(metrics, dict):
        return True  # another writer's commit without metrics: assume it changed rows
    counted = [metrics[k] for k in _FILE_METRICS if k in metrics]
    if not counted:
        return True
    return any(int(v or 0) > 0 for v in counted)


def _timestamp(entry: dict[str, Any]) -> datetime | None:
    ms = entry.get("timestamp")
    return None if ms is None else datetime.fromtimestamp(int(ms) / 1000, UTC)


def evaluate(
    project: Project,
    names: list[str] | None = None,
    *,
    now: datetime | None = None,
    store: DeltaStore | None = None,
    metadata: MetadataStore | None = None,
) -> list[FreshnessResult]:
    """Freshness of every dataset among ``names`` (default all) that declares an SLA, in
    graph order. The interval ledger is read only when a time-partitioned dataset is
    among them (``metadata`` is then opened from the project when not given)."""
    from lakeforge.storage.delta import DeltaStore

    now = now or datetime.now(UTC)
    chosen = [project.graph[n] for n in (names if names is not None else project.graph.order)]
    chosen = [ds for ds in chosen if ds.config.freshness is not None and not ds.is_view]
    if not chosen:
        return []
    store = store or DeltaStore(project.storage_root, project.config.storage_options)
    timed = [ds.name for ds in chosen if _time_partitioned(ds)]
    ledger: dict[str, dict[str, str]] = {}
    if timed:
        ledger = _ledger_statuses(project, metadata, timed)
    out = []
    for ds in chosen:
        sla = ds.config.freshness
        assert sla is not None
        try:
            if _time_partitioned(ds):
                # A table removed by hand has lost its partitions, whatever the ledger says.
                statuses = ledger.get(ds.name, {}) if store.exists(ds.name) else {}
                out.append(evaluate_partitions(ds.name, sla, ds.config.partitions, statuses, now))
            else:
                out.append(evaluate_updates(ds.name, sla, last_data_change(store, ds.name), now))
        except Exception as exc:  # storage unreachable, corrupt log …: report, keep going
            out.append(unknown(ds.name, sla, f"{type(exc).__name__}: {exc}".splitlines()[0]))
    return out


def _time_partitioned(ds: Dataset) -> bool:
    parts = ds.config.partitions
    return parts is not None and parts.kind != "static"


def _ledger_statuses(
    project: Project, metadata: MetadataStore | None, names: list[str]
) -> dict[str, dict[str, str]]:
    from lakeforge.metadata.intervals import IntervalLedger

    if metadata is not None:
        entries = IntervalLedger(metadata).read(names)
    else:
        from lakeforge.metadata.store import MetadataStore

        with MetadataStore(project.metadata_url) as opened:
            entries = IntervalLedger(opened).read(names)
    # A partition built once keeps its data while a rebuild runs or after a rebuild failed
    # (nothing is committed then): only a partition never built successfully is missing.
    return {
        ds: {k: "built" if e.built_at is not None else e.status for k, e in parts.items()}
        for ds, parts in entries.items()
    }


def format_age(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 5m``, ``2d 4h`` — two units at most."""
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    units = (("d", 86400), ("h", 3600), ("m", 60), ("s", 1))
    parts = []
    for name, size in units:
        if s >= size:
            parts.append(f"{s // size}{name}")
            s %= size
        if len(parts) == 2 or (parts and s == 0):
            break
    return " ".join(parts)
