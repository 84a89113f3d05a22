"""Build the stale partitions of a partitioned dataset: one task and one commit each.

Partitions are built newest first (the backfill protocol: the most recent data matters
most and is checked first), up to ``concurrency`` at a time. Transforms and checks run in
parallel; commits to the table are taken one at a time. Each partition's build is recorded
in the interval ledger before it starts (``running``) and after its commit (``built``) or
failure; the commit itself names the partition and the run, so a build interrupted between
its commit and the ledger update is settled from the table on the next run.
"""

from __future__ import annotations

import threading
import time
import traceback
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeforge.engines.base import TransformContext
from lakeforge.errors import CommitConflict, DatasetNotFound, LakeforgeError, PartitionsFailed
from lakeforge.execution.column_impact import ColumnImpact
from lakeforge.execution.executor import allowed_retries
from lakeforge.execution.intervals import PartitionPlan, settle_interrupted
from lakeforge.execution.results import PartitionResult, RunOptions, TaskResult
from lakeforge.execution.retry import retry_wait
from lakeforge.graph.partitions import partition_predicate
from lakeforge.metadata.intervals import IntervalLedger
from lakeforge.storage.delta import CommitInfo
from lakeforge.storage.write import clear_quarantine_batch, write_partition, write_quarantine

if TYPE_CHECKING:
    from lakeforge.execution.executor import Runner
    from lakeforge.execution.planner import Assessment

CONFLICT_RETRIES = 3


class PartitionedTask:
    """One dataset's partitions within a run."""

    def __init__(self, runner: Runner, run_id: str, run_started: datetime, opts: RunOptions):
        self.runner = runner
        self.run_id = run_id
        self.run_started = run_started
        self.opts = opts
        self.ledger = IntervalLedger(runner.metadata)
        self._commit_lock = threading.Lock()

    def assess(self, ds: Any, full_refresh: bool) -> Assessment:
        """Assess ``ds``'s partitions, settling builds a dead process left unfinished."""
        from lakeforge.execution.planner import assess, read_ledger

        r = self.runner
        entries = read_ledger(r.graph, [ds.name], self.ledger)
        if entries.get(ds.name):
            entries[ds.name] = settle_interrupted(ds, self.ledger, r.store, entries[ds.name])
        return assess(
            ds, r.graph, r.store, r.project.root, full_refresh=full_refresh, ledger=entries,
            now=r.clock(), only_partitions=self.opts.backfill.get(ds.name),
            impact=ColumnImpact(r.store, self.ledger.definition),
        )  # fmt: skip

    def build(self, ds: Any, assessment: Assessment, result: TaskResult) -> None:
        """Build every stale partition; ``result`` aggregates them."""
        r = self.runner
        assert assessment.partitions is not None
        stale = sorted(assessment.partitions.stale, key=lambda p: p.partition, reverse=True)
        self.ledger.record_definition(
            ds.name, assessment.fingerprint, ds.language, ds.sql or ds.source_text,
            datetime.now(UTC),
        )  # fmt: skip
        pinned: dict[str, int] = {}
        for up in r.graph.materialized_inputs(ds.name):
            version = r.store.version(up)
            if version is None:
                raise DatasetNotFound(
                    f"{ds.name} reads {up}, which has never been built",
                    dataset=ds.name,
                    hint=f"build it first: `lakeforge run +{ds.name}`",
                )
            pinned[up] = version
        result.input_versions = pinned
        result.version_before = r.store.version(ds.name)
        done: list[PartitionResult] = []
        lock = threading.Lock()

        def one(plan: PartitionPlan) -> PartitionResult:
            outcome = self._partition(ds, assessment, plan, pinned, result)
            with lock:
                done.append(outcome)
                r.listener.on_partition_end(ds.name, outcome, len(stale))
            return outcome

        workers = max(1, min(self.opts.concurrency, len(stale)))
        if workers == 1:
            for plan in stale:
                one(plan)
        else:
            with ThreadPoolExecutor(workers, thread_name_prefix=f"lakeforge-{ds.name}") as pool:
                list(pool.map(one, stale))
        order = {p.key: i for i, p in enumerate(stale)}
        result.partitions = sorted(done, key=lambda p: order[p.key])
        built = [p for p in result.partitions if p.status == "success"]
        failed = [p for p in result.partitions if p.status == "failed"]
        result.rows_out = sum(p.rows or 0 for p in built)
        result.output_version = r.store.version(ds.name)
        result.metrics["partitions"] = {"built": len(built), "failed": len(failed)}
        result.metrics["checks"] = dict(Counter(c.status for c in result.checks))
        if failed:
            first = failed[0]
            raise PartitionsFailed(
                f"{ds.name}: {len(failed)} of {len(stale)} partition(s) failed; "
                f"first: {first.key}: {first.error}",
                dataset=ds.name,
                hint="the partitions built are kept; `lakeforge run` retries the failed ones",
            )

    def _partition(
        self,
        ds: Any,
        assessment: Assessment,
        plan: PartitionPlan,
        pinned: dict[str, int],
        task: TaskResult,
    ) -> PartitionResult:
        r = self.runner
        key = plan.key
        reason = plan.reasons[0]
        started = datetime.now(UTC)
        clock = time.monotonic()
        task_id = r.metadata.start_task(
            self.run_id, dataset=ds.name, layer=ds.layer, reason=reason, started_at=started,
            partition_key=key,
        )  # fmt: skip
        self.ledger.start(
            ds.name, key, run_id=self.run_id, fingerprint=assessment.fingerprint, at=started
        )
        sub = TaskResult(ds.name, ds.layer, "running", reason, started, started)
        sub.task_id = task_id
        sub.input_versions = pinned
        rows_before = plan.entry.rows if plan.entry is not None else None
        attempt = 0
        error: LakeforgeError | None = None
        version: int | None = None
        while True:
            attempt += 1
            try:
                version = self._build_one(ds, assessment, plan, pinned, sub)
                error = None
                break
            except LakeforgeError as exc:
                if attempt <= allowed_retries(exc, ds.config.retries):
                    r.sleep(retry_wait(ds.config, attempt))
                    continue
                error = exc
                sub.traceback = traceback.format_exc()
                break
            except Exception as exc:  # a bug or an unexpected library error: report it
                error = LakeforgeError(
                    f"{ds.name}: partition {key}: unexpected {type(exc).__name__}: {exc}",
                    dataset=ds.name,
                    hint="run with --debug for the full traceback; please report it",
                )
                sub.traceback = traceback.format_exc()
                break
        finished = datetime.now(UTC)
        status = "failed" if error is not None else "success"
        if error is None:
            self.ledger.finish(
                ds.name, key, status="built", at=finished, fingerprint=assessment.fingerprint,
                input_versions=pinned, rows=sub.rows_out, rows_before=rows_before,
                version=version, run_id=self.run_id,
            )  # fmt: skip
        else:
            self.ledger.finish(
                ds.name, key, status="failed", at=finished, error=str(error), run_id=self.run_id
            )
        r.metadata.finish_task(
            task_id, status=status, finished_at=finished, attempts=attempt,
            rows_in=sub.rows_in, rows_out=sub.rows_out, input_versions=pinned,
            output_version=version, fingerprint=assessment.fingerprint,
            error=str(error) if error else None, metrics=sub.metrics,
        )  # fmt: skip
        checks = sub.checks[sub.checks_recorded :]
        if checks:
            r.metadata.record_check_results(
                [
                    c.to_record(run_id=self.run_id, task_id=task_id, dataset=ds.name,
                                published=error is None, at=finished)
                    for c in checks
                ]
            )  # fmt: skip
        with self._commit_lock:  # the task's totals are shared by the partition threads
            task.checks.extend(sub.checks)
            task.checks_recorded = len(task.checks)
            task.rows_in = (task.rows_in or 0) + (sub.rows_in or 0)
            if task.traceback is None and sub.traceback is not None:
                task.traceback = sub.traceback
        return PartitionResult(
            key=key,
            status=status,
            reason=reason,
            duration=time.monotonic() - clock,
            attempts=attempt,
            rows_before=rows_before,
            rows=sub.rows_out if error is None else None,
            version=version,
            error=None if error is None else str(error),
        )

    def _build_one(
        self,
        ds: Any,
        assessment: Assessment,
        plan: PartitionPlan,
        pinned: dict[str, int],
        sub: TaskResult,
    ) -> int | None:
        r = self.runner
        parts = ds.config.partitions
        predicate = partition_predicate(parts, plan.partition)
        inputs = {up: r.store.read(up, v) for up, v in pinned.items()}
        sub.rows_in = sum(d.count_rows() for d in inputs.values())
        context = TransformContext(
            run_id=self.run_id,
            dataset=ds.name,
            started_at=self.run_started,
            input_versions=pinned,
            vars=dict(r.project.config.vars),
            partition=plan.partition,
        )
        views = [r.graph[v] for v in r.graph.views_needed(ds.name)]
        data = r.engine.transform(ds, inputs, views, context)
        for attempt in range(1, CONFLICT_RETRIES + 1):
            with self._commit_lock:
                target = r.store.version(ds.name)
                outcome = r._audit(
                    self.run_id, ds, data, target, sub, self.opts.gate,
                    f"partition {plan.key} was not published", replaces=predicate,
                )  # fmt: skip
                info = CommitInfo(
                    run_id=self.run_id,
                    dataset=ds.name,
                    fingerprint=assessment.fingerprint,
                    batch=r.store.committed_batch(ds.name) + 1,
                    input_versions=pinned,
                    external_state=assessment.external_state,
                    partition=plan.key,
                    change=plan.change.to_metadata() if plan.change is not None else None,
                )
                try:
                    if outcome.quarantined is not None:
                        sub.metrics["quarantine_version"] = write_quarantine(
                            r.store, ds.name, outcome.quarantined, info, datetime.now(UTC)
                        )
                    elif ds.config.expect:
                        clear_quarantine_batch(r.store, ds.name, info)
                    written = write_partition(
                        r.store, ds, outcome.published, info, target_version=target,
                        predicate=predicate, partition_key=plan.key,
                    )  # fmt: skip
                except CommitConflict:
                    if attempt == CONFLICT_RETRIES:
                        raise
                    continue  # someone else committed to the table: audit again on top of it
            sub.rows_out = outcome.published.num_rows
            sub.metrics["rows_written"] = written.rows_written
            if written.added_columns:
                sub.metrics["added_columns"] = written.added_columns
            return written.version
        return None
