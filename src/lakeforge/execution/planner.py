"""Decide, per dataset, whether it is up to date and say why not.

The truth is in the tables: each Lakeforge commit records the code fingerprint and the
input versions it was built from, so the planner needs no metadata store to decide. Input
versions are compared by *data version* (the newest commit that changed rows), so
compaction or vacuum of an upstream table does not make its consumers stale.
"""

from __future__ import annotations

import glob
import hashlib
import os
from dataclasses import dataclass, field
from pathlib import Path

from lakeforge.errors import SourceError
from lakeforge.graph.dag import Graph
from lakeforge.graph.fingerprint import fingerprint
from lakeforge.graph.spec import Dataset
from lakeforge.storage.delta import DeltaStore, TableState


@dataclass
class Assessment:
    """Whether a dataset needs building, and why."""

    dataset: str
    stale: bool
    reasons: list[str] = field(default_factory=list)
    fingerprint: str = ""
    external_state: dict[str, str] = field(default_factory=dict)
    state: TableState | None = None

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
    upstream_rebuilding: set[str] | None = None,
) -> Assessment:
    """Assess one table against its stored state.

    Args:
        upstream_rebuilding: inputs that will be rebuilt earlier in the same run (used when
            planning ahead, before those builds have produced new versions).
    """
    fp = fingerprint(ds, graph)
    ext = external_state(ds, root)
    result = Assessment(ds.name, stale=False, fingerprint=fp, external_state=ext)
    if ds.is_view:
        return result
    state = store.state(ds.name)
    result.state = state
    reasons = result.reasons
    if full_refresh:
        reasons.append("full refresh requested")
    if state is None:
        reasons.append("never built")
    elif state.last_commit is None:
        reasons.append("table has no Lakeforge commit (written by another tool)")
    elif ds.config.source is not None:
        # A source-fed table is built incrementally: new source data makes it stale; a code
        # or input change applies to the batches that come next (--full-refresh re-ingests).
        from lakeforge.sources import source_of

        source = source_of(ds, root)
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
        if pending:
            reasons.append(pending)
    else:
        last = state.last_commit
        if last.fingerprint != fp:
            reasons.append("code changed")
        for name in graph.materialized_inputs(ds.name):
            if upstream_rebuilding and name in upstream_rebuilding:
                reasons.append(f"upstream {name} is being rebuilt")
                continue
            up = store.state(name)
            if up is None:
                continue  # the executor reports a missing input precisely
            seen = last.input_versions.get(name)
            if seen is None:
                reasons.append(f"new input {name}")
            elif up.data_version > seen:
                reasons.append(f"new input version: {name} v{seen} → v{up.data_version}")
        for pattern, signature in ext.items():
            if last.external_state.get(pattern) != signature:
                reasons.append(f"files changed: {pattern}")
    result.stale = bool(reasons)
    return result


def plan(
    graph: Graph,
    store: DeltaStore,
    root: Path,
    names: list[str],
    *,
    full_refresh: bool = False,
) -> list[Assessment]:
    """Assess ``names`` in dependency order, propagating planned rebuilds downstream."""
    rebuilding: set[str] = set()
    out: list[Assessment] = []
    for name in graph.ordered(names):
        ds = graph[name]
        a = assess(
            ds, graph, store, root, full_refresh=full_refresh, upstream_rebuilding=rebuilding
        )
        if a.stale:
            rebuilding.add(name)
        out.append(a)
    return out
