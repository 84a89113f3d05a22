"""Backfills: rebuild a range of partitions (and, on request, the same range downstream).

A backfill is a run that rebuilds the partitions of its range whatever their state,
newest first. It is recorded with its range in the run's options, so running the same
backfill again after a crash resumes it: partitions the interrupted backfill already
rebuilt — with the same code — are not rebuilt again (``--restart`` rebuilds them all).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any

from lakeforge.errors import ConfigError
from lakeforge.execution.intervals import settle_locked
from lakeforge.graph.fingerprint import fingerprint

if TYPE_CHECKING:
    from lakeforge.execution.executor import Runner
    from lakeforge.metadata.models import RunRecord
    from lakeforge.metadata.store import MetadataStore

_RUNS_SEARCHED = 200  # an interrupted backfill is looked for among this many recent runs


@dataclass(frozen=True)
class BackfillSpec:
    """What a backfill covers: ``dataset``'s partitions from ``start`` to ``end``
    (inclusive; None: the first / the newest complete one), and ``downstream``."""

    dataset: str
    start: str | None = None
    end: str | None = None
    downstream: bool = False

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass
class BackfillPlan:
    """Partition keys to rebuild per dataset, the selection to run, and what was resumed."""

    targets: dict[str, set[str]]
    selection: list[str]
    resumed_from: str | None = None
    already_done: dict[str, int] | None = None


def plan_backfill(runner: Runner, spec: BackfillSpec, *, restart: bool = False) -> BackfillPlan:
    """The partitions ``spec`` covers, minus those an interrupted run of it already built."""
    graph, metadata, ledger = runner.graph, runner.metadata, runner.ledger
    now = runner.clock()
    if spec.dataset not in graph:
        raise ConfigError(f"no dataset named {spec.dataset!r}", dataset=spec.dataset)
    ds = graph[spec.dataset]
    if ds.config.partitions is None:
        raise ConfigError(
            f"{spec.dataset} has no partitions: a backfill rebuilds a range of partitions",
            dataset=spec.dataset,
            location=ds.location,
            hint=f"rebuild it whole with `lakeforge run {spec.dataset} --full-refresh`",
        )
    names = [spec.dataset]
    if spec.downstream:
        below = graph.ordered(graph.downstream_closure(spec.dataset))
        names += [n for n in below if n != spec.dataset]
    targets: dict[str, set[str]] = {}
    for name in names:
        parts = graph[name].config.partitions
        if parts is None:
            continue  # rebuilt by the run when its inputs changed, like any dataset
        keys = {p.key for p in parts.partitions(now, start=spec.start, end=spec.end)}
        if keys:
            targets[name] = keys
    if not targets.get(spec.dataset):
        raise ConfigError(
            f"{spec.dataset}: no complete partition between {spec.start or 'the start'} and "
            f"{spec.end or 'now'}",
            dataset=spec.dataset,
            hint=f"its partitions: {ds.config.partitions.describe()}",
        )
    plan = BackfillPlan(targets, [n for n in names if not graph[n].is_view])
    if restart:
        return plan
    interrupted = _interrupted_run(metadata, spec)
    if interrupted is None:
        return plan
    plan.resumed_from = interrupted.id
    plan.already_done = {}
    for name in targets:
        # Builds the interrupted run committed but did not record count as done.
        settle_locked(graph[name], runner)
    entries = ledger.read(targets)
    for name, keys in targets.items():
        fp = fingerprint(graph[name], graph)
        done = {
            key
            for key in keys
            if (e := entries.get(name, {}).get(key)) is not None
            and e.status == "built"
            and e.fingerprint == fp
            and e.built_at is not None
            and e.built_at >= interrupted.started_at
        }
        keys -= done
        plan.already_done[name] = len(done)
    plan.targets = {n: k for n, k in targets.items() if k}
    return plan


def _interrupted_run(metadata: MetadataStore, spec: BackfillSpec) -> RunRecord | None:
    """The newest run of this very backfill, if it did not succeed."""
    wanted = spec.to_dict()
    for run in metadata.list_runs(limit=_RUNS_SEARCHED):
        if run.options.get("backfill") == wanted:
            return None if run.status == "success" else run
    return None
