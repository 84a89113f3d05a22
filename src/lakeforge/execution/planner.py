"""Decide, per dataset, whether it is up to date and say why not.

The truth is in the tables: each Lakeforge commit records the code fingerprint and the
input versions it was built from, so the planner needs no metadata store to decide. Input
versions are compared by *data version* (the newest commit that changed rows), so
compaction or vacuum of an upstream table does not make its consumers stale.
"""

from __future__ import annotations

import gc
import glob
import hashlib
import os
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING

from lakeforge.errors import SourceError
from lakeforge.execution.column_impact import ColumnImpact, upstream_skip
from lakeforge.execution.intervals import PartitionAssessment, assess_partitions
from lakeforge.graph.dag import Graph
from lakeforge.graph.fingerprint import fingerprint
from lakeforge.graph.spec import Dataset
from lakeforge.storage.delta import DeltaStore, TableState

if TYPE_CHECKING:
    from lakeforge.metadata.intervals import IntervalLedger, IntervalRecord
    from lakeforge.sql.changes import Change


@dataclass
class Assessment:
    """Whether a dataset needs building, and why."""

    dataset: str
    stale: bool
    reasons: list[str] = field(default_factory=list)
    fingerprint: str = ""
    external_state: dict[str, str] = field(default_factory=dict)
    state: TableState | None = None
    partitions: PartitionAssessment | None = None
    # Set when the only reason to build is a non-breaking code change (added columns).
    change: Change | None = None
    notes: list[str] = field(default_factory=list)

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons) if self.reasons else "up to date"


def external_state(ds: Dataset, root: Path) -> dict[str, str]:
    """A signature of the files each external path pattern matches (names, sizes, mtimes)."""
    out: dict[str, str] = {}
    for pattern in ds.external_paths:
        if "://" in pattern:
            out[pattern] = "remote"  # object-store listings are tracked by file sources
            continue
        full = pattern if os.path.isabs(pattern) else str(root / pattern)
        digest = hashlib.sha256()
        count = 0
        for path in sorted(glob.glob(full, recursive=True)):
            try:
                st = os.stat(path)
            except OSError:
                continue
            digest.update(f"{path}\0{st.st_size}\0{st.st_mtime_ns}\n".encode())
            count += 1
        out[pattern] = f"{count}:{digest.hexdigest()[:16]}"
    return out


def assess(
    ds: Dataset,
    graph: Graph,
    store: DeltaStore,
    root: Path,
    *,
    full_refresh: bool = False,
    upstream_rebuilding: dict[str, set[str] | None] | None = None,
    ledger: dict[str, dict[str, IntervalRecord]] | None = None,
    now: datetime | None = None,
    data_version: Callable[[str], int | None] | None = None,
    only_partitions: set[str] | None = None,
    impact: ColumnImpact | None = None,
    additions: dict[str, tuple[str, ...]] | None = None,
) -> Assessment:
    """Assess one table against its stored state.

    Args:
        upstream_rebuilding: inputs that will be rebuilt earlier in the same run (used when
            planning ahead, before those builds have produced new versions), with the
            partition keys rebuilt for partitioned ones (None: the whole dataset).
        ledger: interval entries of partitioned datasets (``ds`` and its inputs).
        now: the time partitions are counted up to (default: now).
        data_version: an input's data version (default: read from its table).
        only_partitions: partitions to rebuild whatever their state (a backfill).
        impact: classifies code changes and tells unread column additions upstream.
        additions: inputs rebuilt in this run only for a non-breaking change → the columns
            they add.
    """
    additions = additions or {}
    fp = fingerprint(ds, graph)
    ext = external_state(ds, root)
    result = Assessment(ds.name, stale=False, fingerprint=fp, external_state=ext)
    if ds.is_view:
        return result
    if ds.config.partitions is not None:
        if data_version is None:
            data_version = _data_version_reader(store)
        parts = assess_partitions(
            ds,
            graph,
            fp,
            ledger or {},
            data_version,
            now or datetime.now(UTC),
            table_exists=store.exists(ds.name),
            full_refresh=full_refresh,
            rebuilding=upstream_rebuilding,
            only=only_partitions,
            impact=impact,
            additions=additions,
        )
        result.partitions = parts
        result.reasons = parts.summary()
        result.stale = bool(result.reasons)
        return result
    state = store.state(ds.name)
    result.state = state
    reasons = result.reasons
    change: Change | None = None
    if full_refresh:
        reasons.append("full refresh requested")
    if state is None:
        reasons.append("never built")
    elif state.last_commit is None:
        reasons.append("table has no Lakeforge commit (written by another tool)")
    elif ds.config.source is not None or ds.config.mode == "streaming":
        # A source-fed (or streaming) table is built incrementally: new source data makes it
        # stale; a code or input change applies to the batches that come next
        # (--full-refresh re-ingests).
        from lakeforge.sources import source_of

        source = source_of(ds, root, store)
        assert source is not None
        position = source.recover(
            info.source_state for info in store.commit_infos(ds.name) if info.source_state
        )
        try:
            pending = source.pending(position)
        except SourceError as exc:
            # Planning must not fail on an unreachable source: say so; the build then
            # reports (and retries) the error precisely.
            pending = f"source not reachable: {str(exc).split(': ', 1)[-1]}"
        if not pending and ds.config.idle_timeout is not None:
            # An event-time stream gone quiet: processing time closes its last windows.
            from lakeforge.streaming.operator import idle_reason

            states = (i.source_state for i in store.commit_infos(ds.name) if i.source_state)
            pending = idle_reason(ds, states, now or datetime.now(UTC))
        if pending:
            reasons.append(pending)
    else:
        last = state.last_commit
        if last.fingerprint != fp:
            change = impact.classify(ds, last.fingerprint) if impact is not None else None
            shown = f" ({change.describe()})" if change is not None and change.non_breaking else ""
            reasons.append(f"code changed{shown}")
        for name in graph.materialized_inputs(ds.name):
            if upstream_rebuilding and name in upstream_rebuilding:
                added = upstream_skip(ds, additions.get(name))
                if added:
                    result.notes.append(f"{name} adds {', '.join(added)}, not read here")
                    continue
                reasons.append(f"upstream {name} is being rebuilt")
                continue
            up = store.state(name)
            if up is None:
                continue  # the executor reports a missing input precisely
            seen = last.input_versions.get(name)
            if seen is None:
                reasons.append(f"new input {name}")
            elif up.data_version > seen:
                added = (
                    impact.unread_additions(ds, name, seen, up.data_version)
                    if impact is not None
                    else None
                )
                if added:
                    result.notes.append(f"{name} added {', '.join(added)}, not read here")
                    continue
                reasons.append(f"new input version: {name} v{seen} → v{up.data_version}")
        for pattern, signature in ext.items():
            if last.external_state.get(pattern) != signature:
                reasons.append(f"files changed: {pattern}")
    result.stale = bool(reasons)
    if change is not None and change.non_breaking and len(reasons) == 1:
        result.change = change
    return result


def plan(
    graph: Graph,
    store: DeltaStore,
    root: Path,
    names: list[str],
    *,
    full_refresh: bool = False,
    ledger: IntervalLedger | None = None,
    now: datetime | None = None,
    backfill: dict[str, set[str]] | None = None,
    impact: ColumnImpact | None = None,
) -> list[Assessment]:
    """Assess ``names`` in dependency order, propagating planned rebuilds downstream.

    Args:
        ledger: the interval ledger (partitioned datasets; read once for all of them).
        backfill: partition keys to rebuild per dataset, whatever their state.
    """
    with cycle_collector_paused():
        rebuilding: dict[str, set[str] | None] = {}
        out: list[Assessment] = []
        ordered = graph.ordered(names)
        entries = read_ledger(graph, ordered, ledger)
        at = now or datetime.now(UTC)
        data_version = _data_version_reader(store)
        if impact is None:
            impact = ColumnImpact(store, ledger.definition if ledger is not None else None)
        additions: dict[str, tuple[str, ...]] = {}
        for name in ordered:
            ds = graph[name]
            a = assess(
                ds, graph, store, root, full_refresh=full_refresh,
                upstream_rebuilding=rebuilding, ledger=entries, now=at,
                data_version=data_version, only_partitions=(backfill or {}).get(name),
                impact=impact, additions=additions,
            )  # fmt: skip
            if a.stale:
                rebuilding[name] = (
                    {p.key for p in a.partitions.stale} if a.partitions is not None else None
                )
                added = _only_additions(a)
                if added:
                    additions[name] = added
            out.append(a)
        return out


@contextmanager
def cycle_collector_paused() -> Iterator[None]:
    """Planning makes a few objects per partition (ledger entries, plans: 500 datasets ×
    365 days is over a million), none in a reference cycle, all alive until the plan is
    done. CPython's cycle collector traverses them again each time they move up a
    generation, which took as long as the planning itself; reference counting frees them
    either way, so the collector is paused meanwhile (not resumed if it was off)."""
    enabled = gc.isenabled()
    gc.disable()
    try:
        yield
    finally:
        if enabled:
            gc.enable()


def _only_additions(a: Assessment) -> tuple[str, ...] | None:
    """The added columns when ``a`` is rebuilt only for a non-breaking change."""
    if a.partitions is None:
        return a.change.added if a.change is not None else None
    changes = {p.change for p in a.partitions.stale}
    if len(changes) == 1:
        (change,) = changes
        if change is not None and all(len(p.reasons) == 1 for p in a.partitions.stale):
            return change.added
    return None


def read_ledger(
    graph: Graph, names: list[str], ledger: IntervalLedger | None
) -> dict[str, dict[str, IntervalRecord]]:
    """Ledger entries of the partitioned datasets among ``names`` and their inputs."""
    wanted = {
        n
        for name in names
        for n in (name, *graph[name].inputs)
        if n in graph and graph[n].config.partitions is not None
    }
    if not wanted or ledger is None:
        return {}
    return ledger.read(wanted)


def _data_version_reader(store: DeltaStore) -> Callable[[str], int | None]:
    """An input's data version, read once per planning pass."""
    seen: dict[str, int | None] = {}

    def data_version(name: str) -> int | None:
        if name not in seen:
            state = store.state(name)
            seen[name] = None if state is None else state.data_version
        return seen[name]

    return data_version
