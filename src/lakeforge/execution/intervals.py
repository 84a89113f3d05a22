"""Which partitions of a partitioned dataset need building, and why.

A partition is stale when it is

- **missing** — never built (or its table is gone);
- **failed** — its last build failed, or was interrupted before it committed;
- **code changed** — built from another fingerprint of the dataset's definition;
- **upstream changed** — for an input partitioned the same way, that input's partition was
  rebuilt after this one read it; for any other input, the input has a newer data version
  and the partition is one of the newest ``lookback + 1`` (late data lands in recent
  partitions; older ones are brought up to date by ``lakeforge backfill``);
- requested — ``--full-refresh`` or a backfill of its range.

Only the interval ledger (``metadata/intervals.py``) and upstream data versions are read,
so planning a project with many partitions stays fast.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lakeforge.graph.partitions import Partition

if TYPE_CHECKING:
    from lakeforge.execution.column_impact import ColumnImpact
    from lakeforge.execution.executor import Runner
    from lakeforge.graph.dag import Graph
    from lakeforge.graph.spec import Dataset
    from lakeforge.metadata.intervals import IntervalLedger, IntervalRecord
    from lakeforge.sql.changes import Change
    from lakeforge.storage.delta import DeltaStore


@dataclass(slots=True)
class PartitionPlan:
    """One partition and why it must be built (no reasons: it is up to date)."""

    partition: Partition
    reasons: list[str] = field(default_factory=list)
    entry: IntervalRecord | None = None
    change: Change | None = None  # the only reason is this non-breaking code change

    @property
    def key(self) -> str:
        return self.partition.key

    @property
    def stale(self) -> bool:
        return bool(self.reasons)


@dataclass
class PartitionAssessment:
    """The partitions of one dataset, oldest first, with what each needs."""

    dataset: str
    partitions: list[PartitionPlan]
    notes: list[str] = field(default_factory=list)

    @property
    def stale(self) -> list[PartitionPlan]:
        return [p for p in self.partitions if p.reasons]  # p.stale, without a call each

    def summary(self) -> list[str]:
        """Reasons counted over partitions: ``["3 partition(s) missing", …]``."""
        counts: dict[str, int] = {}
        for plan in self.stale:
            label = plan.reasons[0].split(":")[0]
            counts[label] = counts.get(label, 0) + 1
        return [f"{n} partition(s) {label}" for label, n in counts.items()]


def aligned(ds: Dataset, up: Dataset) -> bool:
    """Whether partition ``k`` of ``ds`` reads partition ``k`` of ``up``."""
    mine, theirs = ds.config.partitions, up.config.partitions
    return mine is not None and theirs is not None and mine.kind == theirs.kind


def assess_partitions(
    ds: Dataset,
    graph: Graph,
    fingerprint: str,
    ledger: dict[str, dict[str, IntervalRecord]],
    data_version: Callable[[str], int | None],
    now: datetime,
    *,
    table_exists: bool,
    full_refresh: bool = False,
    rebuilding: dict[str, set[str] | None] | None = None,
    only: set[str] | None = None,
    impact: ColumnImpact | None = None,
    additions: dict[str, tuple[str, ...]] | None = None,
) -> PartitionAssessment:
    """Assess every partition of ``ds`` up to ``now``.

    Args:
        ledger: interval entries by dataset (``ds`` and its partitioned inputs).
        data_version: an input's current data version (None: never built).
        table_exists: whether ``ds``'s table exists (a table removed by hand loses its
            partitions, whatever the ledger says).
        rebuilding: inputs rebuilt earlier in the same run: partition keys for partitioned
            ones, None for the others.
        only: build exactly these partition keys, whatever their state (a backfill's range).
        impact: classifies code changes; tells input changes that only add unread columns.
        additions: inputs rebuilt in this run only to add columns → those columns.
    """
    from lakeforge.execution.column_impact import upstream_skip

    additions = additions or {}
    changes: dict[str, Change | None] = {}
    parts = ds.config.partitions
    assert parts is not None
    entries = ledger.get(ds.name, {}) if table_exists else {}
    plans = [PartitionPlan(p, entry=entries.get(p.key)) for p in parts.partitions(now)]
    window = {p.key for p in plans[-(parts.lookback + 1) :]} if plans else set()
    result = PartitionAssessment(ds.name, plans)
    if not table_exists and ledger.get(ds.name):
        result.notes.append("the table does not exist: every partition is rebuilt")
    rebuilding = rebuilding or {}
    # What does not depend on the partition is looked up once per input, not per partition:
    # (name, aligned, being rebuilt, the keys rebuilt (None: all), its ledger entries).
    inputs = [
        (
            name,
            aligned(ds, graph[name]),
            name in rebuilding,
            rebuilding.get(name),
            ledger.get(name, {}),
        )
        for name in graph.materialized_inputs(ds.name)
    ]
    skips: dict[str, tuple[str, ...] | None] = {}

    def skip(name: str) -> tuple[str, ...] | None:
        if name not in skips:
            skips[name] = upstream_skip(ds, additions.get(name))
        return skips[name]

    versions: dict[str, int | None] = {}
    behind_outside_window: dict[str, int] = {}
    for plan in plans:
        entry, key, reasons = plan.entry, plan.key, plan.reasons
        if only is not None:
            # A backfill builds its range, and only its range.
            if key in only:
                reasons.append("requested: backfill")
            continue
        if full_refresh:
            reasons.append("requested: full refresh")
            continue
        if entry is None:
            reasons.append("missing")
            continue
        if entry.status == "failed":
            reasons.append(f"failed before: {(entry.error or 'unknown error').splitlines()[0]}")
            continue
        if entry.status == "running":
            reasons.append(f"interrupted: run {entry.run_id} did not finish it")
            continue
        if entry.fingerprint != fingerprint:
            old = entry.fingerprint or ""
            if old not in changes:
                changes[old] = impact.classify(ds, old) if impact is not None else None
            change = changes[old]
            if change is not None and change.non_breaking:
                reasons.append(f"code changed ({change.describe()})")
                plan.change = change
            else:
                reasons.append("code changed")
            continue
        seen_versions = entry.input_versions
        for name, is_aligned, in_rebuilding, planned, theirs_by_key in inputs:
            seen = seen_versions.get(name)
            if is_aligned:
                if in_rebuilding and (planned is None or key in planned):
                    if skip(name):
                        continue
                    reasons.append(f"upstream changed: {name} partition {key} is being rebuilt")
                    break
                theirs = theirs_by_key.get(key)
                if (
                    theirs is not None
                    and theirs.version is not None
                    and (seen is None or theirs.version > seen)
                ):
                    if (
                        seen is not None
                        and impact is not None
                        and impact.unread_additions(ds, name, seen, theirs.version, partition=key)
                    ):
                        continue
                    reasons.append(f"upstream changed: {name} partition {key} was rebuilt")
                    break
                continue
            if in_rebuilding:
                if skip(name):
                    continue
                if key in window:
                    reasons.append(f"upstream changed: {name} is being rebuilt")
                    break
                behind_outside_window[name] = behind_outside_window.get(name, 0) + 1
                continue
            if name not in versions:
                versions[name] = data_version(name)
            current = versions[name]
            if current is None or (seen is not None and current <= seen):
                continue
            if (
                seen is not None
                and impact is not None
                and impact.unread_additions(ds, name, seen, current)
            ):
                continue
            if key in window:
                shown = "new" if seen is None else f"v{seen} → v{current}"
                reasons.append(f"upstream changed: {name} {shown}")
                break
            behind_outside_window[name] = behind_outside_window.get(name, 0) + 1
    for name, count in behind_outside_window.items():
        result.notes.append(
            f"{count} older partition(s) read an older {name}; outside lookback "
            f"({parts.lookback}): `lakeforge backfill {ds.name}` updates them"
        )
    return result


def settle_interrupted(
    ds: Dataset, ledger: IntervalLedger, store: DeltaStore, entries: dict[str, IntervalRecord]
) -> dict[str, IntervalRecord]:
    """Settle entries left ``running`` by a process that died, from the table's commits.

    A build whose commit landed is recorded as built (its commit names the partition and
    the run); one whose commit did not land is recorded as failed — interrupted. Call it
    only while holding the dataset's lock, so no live build is settled.
    """
    from datetime import UTC

    running = {k: e for k, e in entries.items() if e.status == "running"}
    if not running:
        return entries
    landed: dict[tuple[str, str], Any] = {}
    versions = store.commits(ds.name)
    for version, info in versions:
        if info.partition is not None and (info.partition, info.run_id) not in landed:
            landed[(info.partition, info.run_id)] = (version, info)
        if all((k, e.run_id) in landed for k, e in running.items()):
            break
    now = datetime.now(UTC)
    for key, entry in running.items():
        found = landed.get((key, entry.run_id or ""))
        if found is not None:
            version, info = found
            ledger.finish(
                ds.name, key, status="built", at=now, version=version,
                fingerprint=info.fingerprint, input_versions=info.input_versions,
                run_id=info.run_id,
            )  # fmt: skip
        else:
            ledger.finish(
                ds.name, key, status="failed", at=now,
                error=f"interrupted: run {entry.run_id} stopped before committing",
            )  # fmt: skip
    return ledger.read([ds.name]).get(ds.name, {})


def settle_locked(ds: Dataset, runner: Runner) -> None:
    """:func:`settle_interrupted` under the dataset's lock (waits for a live build)."""
    from lakeforge.execution.locks import DatasetLock
    from lakeforge.project.config import STATE_DIR

    entries = runner.ledger.read([ds.name]).get(ds.name, {})
    if not any(e.status == "running" for e in entries.values()):
        return
    state_dir = runner.project.root / STATE_DIR
    with DatasetLock(state_dir, ds.name, runner.metadata, runner.store.uri(ds.name)):
        entries = runner.ledger.read([ds.name]).get(ds.name, {})
        settle_interrupted(ds, runner.ledger, runner.store, entries)
