"""Execute a run: build stale datasets in dependency order, in parallel where independent.

Per task: pin every input to its current Delta version, re-assess staleness against those
versions, transform, write one commit, record. Transient errors are retried with
exponential backoff and jitter; a failure skips only the datasets downstream of it.
"""

from __future__ import annotations

import time
import traceback
from collections import Counter
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeforge.engines.base import TransformContext
from lakeforge.errors import CommitConflict, DatasetNotFound, LakeforgeError, QualityGateFailed
from lakeforge.execution.column_impact import ColumnImpact
from lakeforge.execution.locks import DatasetLock
from lakeforge.execution.planner import Assessment, assess, plan
from lakeforge.execution.results import (
    RunListener,
    RunOptions,
    RunResult,
    SilentListener,
    TaskResult,
    new_run_id,
)
from lakeforge.execution.retry import retry_wait
from lakeforge.graph.selection import select
from lakeforge.metadata.intervals import IntervalLedger
from lakeforge.observability.runlog import RunLog, RunLogRecord
from lakeforge.project.config import STATE_DIR
from lakeforge.quality.checks import CheckTarget
from lakeforge.quality.gate import AuditOutcome, audit, check_dependencies, stage_candidate
from lakeforge.sources import source_of
from lakeforge.sources.base import SOURCE_INPUT, Source
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import (
    clear_quarantine_batch,
    clear_side_batch,
    dlq_table,
    late_table,
    write_dataset,
    write_quarantine,
    write_side_table,
)

if TYPE_CHECKING:
    from lakeforge.engines.base import Engine
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project
    from lakeforge.scheduling.alert_dispatch import AlertDispatcher
    from lakeforge.streaming.operator import EventTimeOperator, Step

_LOG_STATUS = {"up_to_date": "skipped", "upstream_failed": "skipped"}
CONFLICT_RETRIES = 3


class Runner:
    """Runs selections of a project's graph."""

    def __init__(
        self,
        project: Project,
        *,
        store: DeltaStore | None = None,
        engine: Engine | None = None,
        metadata: MetadataStore | None = None,
        listener: RunListener | None = None,
        sleep: Callable[[float], None] = time.sleep,
        clock: Callable[[], datetime] | None = None,
    ) -> None:
        from lakeforge.engines.duckdb import DuckDBEngine

        self.project = project
        self.graph = project.graph
        self.store = store or DeltaStore(project.storage_root, project.config.storage_options)
        self.engine: Engine = engine or DuckDBEngine(project.root)
        if metadata is None:
            from lakeforge.metadata.store import MetadataStore

            metadata = MetadataStore(project.metadata_url)
        self.metadata = metadata
        self.listener: RunListener = listener or SilentListener()
        self.runlog = RunLog(project.root / STATE_DIR)
        self.sleep = sleep
        # What time it is for partitions (only complete intervals are built); tests set it.
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self.ledger = IntervalLedger(self.metadata)
        from lakeforge.metadata.retention import RetentionKeeper

        self.retention = RetentionKeeper(self.metadata, project.config.retention)
        # Set by a long-running caller (the stream loop) to deliver alerts off its path.
        self.alert_dispatcher: AlertDispatcher | None = None

    def plan(
        self,
        selection: str | list[str] | None = None,
        *,
        full_refresh: bool = False,
        backfill: dict[str, set[str]] | None = None,
    ) -> list[Assessment]:
        names = select(self.graph, selection)
        return self._plan(names, full_refresh, backfill)

    def _plan(
        self, names: list[str], full_refresh: bool, backfill: dict[str, set[str]] | None
    ) -> list[Assessment]:
        return plan(
            self.graph, self.store, self.project.root, names, full_refresh=full_refresh,
            ledger=self.ledger, now=self.clock(), backfill=backfill,
        )  # fmt: skip

    def run(
        self,
        selection: str | list[str] | None = None,
        *,
        full_refresh: bool = False,
        dry_run: bool = False,
        threads: int | None = None,
        gate: bool = True,
        replay: dict[str, Any] | None = None,
        backfill: dict[str, set[str]] | None = None,
        concurrency: int = 1,
        options: dict[str, Any] | None = None,
        stop: Callable[[], bool] | None = None,
    ) -> RunResult:
        """Build what is stale in ``selection`` (everything when empty).

        ``gate=False`` (``--no-gate``) still evaluates every expectation and check, but no
        result blocks a publish; the run records that it was not gated. ``backfill`` names
        partitions to rebuild whatever their state; ``concurrency`` partitions of a dataset
        are built at once; ``options`` are recorded with the run; ``stop`` is asked between
        source batches (True: commit nothing more, leave the rest for the next run).
        """
        started = datetime.now(UTC)
        run_id = new_run_id()
        names = select(self.graph, selection)
        assessments = self._plan(names, full_refresh, backfill)
        self.listener.on_plan(names, assessments)
        if dry_run:
            tasks = [self._planned(a, started) for a in assessments]
            return RunResult(run_id, "success", started, datetime.now(UTC), tasks, dry_run=True)
        sel_text = selection if isinstance(selection, str) else " ".join(selection or [])
        self.metadata.start_run(
            run_id,
            project=self.project.name,
            selection=sel_text or None,
            full_refresh=full_refresh,
            started_at=started,
            options={"gate": gate, **(options or {})},
        )
        opts = RunOptions(
            gate=gate,
            replay=dict(replay or {}),
            backfill={k: set(v) for k, v in (backfill or {}).items()},
            concurrency=concurrency,
            stop=stop,
        )
        results = self._execute(run_id, started, names, full_refresh, threads, opts)
        failed = any(r.status in ("failed", "upstream_failed") for r in results.values())
        status = "failed" if failed else "success"
        finished = datetime.now(UTC)
        first_error = next((r.error for r in results.values() if r.error), None)
        self.metadata.finish_run(
            run_id,
            status=status,
            finished_at=finished,
            error=str(first_error) if first_error else None,
        )
        ordered = [results[n] for n in names]
        result = RunResult(run_id, status, started, finished, ordered, gate=gate)
        if self.alert_dispatcher is not None:  # `lakeforge stream`: sent in the background
            self.alert_dispatcher.notify(result)
        elif self.project.config.alerts:  # never raises; recorded in the run's options
            from lakeforge.scheduling.alerts import notify_run

            notify_run(self.project, self.metadata, result)
        self.retention.after_run()  # never raises; at most every few minutes
        return result

    def _planned(self, a: Assessment, at: datetime) -> TaskResult:
        ds = self.graph[a.dataset]
        status = "view" if ds.is_view else ("planned" if a.stale else "up_to_date")
        return TaskResult(
            a.dataset,
            ds.layer,
            status,
            a.reason if not ds.is_view else "view",
            at,
            at,
            fingerprint=a.fingerprint,
        )

    def _execute(
        self,
        run_id: str,
        started: datetime,
        names: list[str],
        full_refresh: bool,
        threads: int | None,
        opts: RunOptions,
    ) -> dict[str, TaskResult]:
        selected = set(names)
        pending = {n: {u for u in self.graph[n].inputs if u in selected} for n in names}
        for n in names:
            # Checks that read another dataset (relationships, check SQL) wait for it when it
            # builds in this run too — unless it waits (through inputs or other checks) for
            # this one: then the check reads its last published version instead of deadlocking.
            for dep in sorted(check_dependencies(self.graph[n].config.checks, n) & selected):
                if not _waits_for(pending, dep, n):
                    pending[n].add(dep)
        results: dict[str, TaskResult] = {}
        if len(names) == 1:
            # Nothing to run beside it: in this thread, which keeps what its sessions hold
            # (a stream's micro-batches reuse their open tables and DuckDB connection).
            return {names[0]: self._task(run_id, started, names[0], full_refresh, opts)}
        workers = threads or self.project.config.threads or 4
        with ThreadPoolExecutor(
            max_workers=max(1, workers), thread_name_prefix="lakeforge"
        ) as pool:
            running: dict[Future[TaskResult], str] = {}
            while pending or running:
                for name in [n for n, deps in pending.items() if not deps]:
                    del pending[name]
                    failed_up = [
                        u
                        for u in self.graph[name].inputs
                        if u in results and results[u].status in ("failed", "upstream_failed")
                    ]
                    if failed_up:
                        results[name] = self._record_skip(run_id, name, failed_up)
                        self._release(name, pending)
                        continue
                    task = pool.submit(self._task, run_id, started, name, full_refresh, opts)
                    running[task] = name
                if not running:
                    continue
                done, _ = wait(running, return_when=FIRST_COMPLETED)
                for fut in done:
                    name = running.pop(fut)
                    results[name] = fut.result()
                    self._release(name, pending)
        return results

    @staticmethod
    def _release(name: str, pending: dict[str, set[str]]) -> None:
        for deps in pending.values():
            deps.discard(name)

    def _record_skip(self, run_id: str, name: str, failed_up: list[str]) -> TaskResult:
        ds = self.graph[name]
        now = datetime.now(UTC)
        reason = f"upstream failed: {', '.join(failed_up)}"
        result = TaskResult(name, ds.layer, "upstream_failed", reason, now, now)
        self.metadata.record_task(
            run_id, dataset=name, layer=ds.layer, status="upstream_failed", reason=reason, at=now
        )
        self._log(run_id, result)
        self.listener.on_task_end(result)
        return result

    def _task(
        self, run_id: str, run_started: datetime, name: str, full_refresh: bool, opts: RunOptions
    ) -> TaskResult:
        ds = self.graph[name]
        started = datetime.now(UTC)
        if ds.is_view:
            # Views are not stored: nothing to build or record.
            result = TaskResult(
                name, ds.layer, "view", "views are computed when read", started, started
            )
            self.listener.on_task_end(result)
            return result
        with (
            DatasetLock(self.project.root / STATE_DIR, name, self.metadata, self.store.uri(name)),
            self.store.session(),  # the task's tables are opened once, then brought up to date
            self.engine.session(),  # and its batches are transformed in one connection
        ):
            return self._locked_task(run_id, run_started, ds, full_refresh, started, opts)

    def _locked_task(
        self,
        run_id: str,
        run_started: datetime,
        ds: Any,
        full_refresh: bool,
        started: datetime,
        opts: RunOptions,
    ) -> TaskResult:
        name = ds.name
        partitioned = None
        if ds.config.partitions is not None:
            from lakeforge.execution.partition_builds import PartitionedTask

            partitioned = PartitionedTask(self, run_id, run_started, opts)
            assessment = partitioned.assess(ds, full_refresh)
        else:
            assessment = assess(
                ds, self.graph, self.store, self.project.root, full_refresh=full_refresh,
                impact=ColumnImpact(self.store, self.ledger.definition), now=self.clock(),
            )  # fmt: skip
        if name in opts.replay:
            assessment.stale, assessment.reasons = True, [opts.replay[name].reason]
        if not assessment.stale:
            result = TaskResult(
                name,
                ds.layer,
                "up_to_date",
                "up to date",
                started,
                started,
                fingerprint=assessment.fingerprint,
            )
            self.metadata.record_task(
                run_id,
                dataset=name,
                layer=ds.layer,
                status="up_to_date",
                reason="up to date",
                at=started,
            )
            self._log(run_id, result)
            self.listener.on_task_end(result)
            return result
        self.listener.on_task_start(name, assessment.reason)
        if partitioned is not None:
            return self._partitioned_task(partitioned, ds, assessment, started)
        task_id = self.metadata.start_task(
            run_id, dataset=name, layer=ds.layer, reason=assessment.reason, started_at=started
        )
        result = TaskResult(
            name,
            ds.layer,
            "running",
            assessment.reason,
            started,
            started,
            fingerprint=assessment.fingerprint,
        )
        result.task_id = task_id
        attempt = 0
        while True:
            attempt += 1
            result.attempts = attempt
            try:
                self._build(run_id, run_started, ds, assessment, full_refresh, result, opts)
                result.status = "success"
                break
            except LakeforgeError as exc:
                if attempt <= allowed_retries(exc, ds.config.retries):
                    self.sleep(retry_wait(ds.config, attempt))
                    continue
                result.status, result.error = "failed", exc
                result.traceback = traceback.format_exc()
                break
            except Exception as exc:  # a bug or an unexpected library error: report, never hide
                result.status = "failed"
                result.error = LakeforgeError(
                    f"{name}: unexpected {type(exc).__name__}: {exc}",
                    dataset=name,
                    hint="run with --debug for the full traceback; please report it",
                )
                result.traceback = traceback.format_exc()
                break
        result.finished_at = datetime.now(UTC)
        if result.status == "success":
            # What this fingerprint stands for, so a later plan can show what changed.
            self.ledger.record_definition(
                name, assessment.fingerprint, ds.language, ds.sql or ds.source_text,
                result.finished_at,
            )  # fmt: skip
        self.metadata.finish_task(
            task_id,
            status=result.status,
            finished_at=result.finished_at,
            attempts=result.attempts,
            rows_in=result.rows_in,
            rows_out=result.rows_out,
            input_versions=result.input_versions,
            output_version=result.output_version,
            fingerprint=result.fingerprint,
            error=str(result.error) if result.error else None,
            metrics=result.metrics,
        )
        unrecorded = result.checks[result.checks_recorded :]
        if unrecorded:
            self.metadata.record_check_results(
                [
                    c.to_record(
                        run_id=run_id,
                        task_id=task_id,
                        dataset=name,
                        published=result.status == "success",
                        at=result.finished_at,
                    )
                    for c in unrecorded
                ]
            )
        self._log(run_id, result)
        self.listener.on_task_end(result)
        return result

    def _partitioned_task(
        self, partitioned: Any, ds: Any, assessment: Assessment, started: datetime
    ) -> TaskResult:
        """Each partition is its own task in the store; the run shows one per dataset."""
        result = TaskResult(
            ds.name, ds.layer, "running", assessment.reason, started, started,
            fingerprint=assessment.fingerprint,
        )  # fmt: skip
        try:
            partitioned.build(ds, assessment, result)
            result.status = "success"
        except LakeforgeError as exc:
            result.status, result.error = "failed", exc
            result.traceback = result.traceback or traceback.format_exc()
        result.attempts = max((p.attempts for p in result.partitions), default=1)
        result.finished_at = datetime.now(UTC)
        self._log(partitioned.run_id, result)
        self.listener.on_task_end(result)
        return result

    def _build(
        self,
        run_id: str,
        run_started: datetime,
        ds: Any,
        assessment: Assessment,
        full_refresh: bool,
        result: TaskResult,
        opts: RunOptions,
    ) -> None:
        # Pin every input at task start: the whole task reads one consistent snapshot.
        pinned: dict[str, int] = {}
        for up in self.graph.materialized_inputs(ds.name):
            version = self.store.version(up)
            if version is None:
                raise DatasetNotFound(
                    f"{ds.name} reads {up}, which has never been built",
                    dataset=ds.name,
                    hint=f"build it first: `lakeforge run +{ds.name}`",
                )
            pinned[up] = version
        result.input_versions = pinned
        inputs = {up: self.store.read(up, v) for up, v in pinned.items()}
        result.rows_in = sum(d.count_rows() for d in inputs.values())
        target_version = self.store.version(ds.name)
        result.version_before = target_version
        context = TransformContext(
            run_id=run_id,
            dataset=ds.name,
            started_at=run_started,
            full_refresh=full_refresh,
            input_versions=pinned,
            vars=dict(self.project.config.vars),
        )
        views = [self.graph[v] for v in self.graph.views_needed(ds.name)]
        gate = opts.gate
        source = opts.replay.get(ds.name) or source_of(ds, self.project.root, self.store)
        if source is not None:
            self._ingest(run_id, run_started, ds, assessment, full_refresh, result, gate,
                         source, inputs, views, context, opts.stop)  # fmt: skip
            return
        data = self.engine.transform(ds, inputs, views, context)
        target = None if full_refresh else target_version
        outcome = self._audit(run_id, ds, data, target, result, gate)
        self._commit(run_id, run_started, ds, assessment, result, outcome, target, full_refresh)

    def _commit(
        self,
        run_id: str,
        run_started: datetime,
        ds: Any,
        assessment: Assessment,
        result: TaskResult,
        outcome: AuditOutcome,
        target_version: int | None,
        full_refresh: bool,
        source_state: dict[str, Any] | None = None,
        rejected: Any = None,
        stream: EventTimeOperator | None = None,
        late: Any = None,
    ) -> CommitInfo:
        """Dead letters, late events and quarantine (if any), then the dataset: the batch's
        one commit. An event-time ``stream`` writes its state snapshot first, named in the
        commit's source state."""
        batch = self.store.committed_batch(ds.name) + 1
        if stream is not None and source_state is not None:
            source_state = stream.state_to_commit(batch, source_state)
        info = CommitInfo(
            run_id=run_id,
            dataset=ds.name,
            fingerprint=assessment.fingerprint,
            batch=batch,
            input_versions=result.input_versions,
            external_state=assessment.external_state,
            full_refresh=full_refresh,
            source_state=source_state,
            change=assessment.change.to_metadata() if assessment.change is not None else None,
        )
        if outcome.quarantined is not None:
            # Before the dataset's commit: a published batch never lacks its quarantined rows.
            result.metrics["quarantine_version"] = write_quarantine(
                self.store, ds.name, outcome.quarantined, info, datetime.now(UTC)
            )
        elif ds.config.expect:
            # An earlier attempt of this batch may have quarantined rows and then failed.
            cleared = clear_quarantine_batch(self.store, ds.name, info)
            if cleared is not None:
                result.metrics["quarantine_version"] = cleared
        if rejected is not None and rejected.num_rows:
            # Dead letters first, for the same reason as the quarantine.
            result.metrics["dlq_version"] = write_side_table(
                self.store, dlq_table(ds.name), rejected, info, datetime.now(UTC),
                at_column="_lf_rejected_at",
            )  # fmt: skip
        elif source_state is not None:
            cleared = clear_side_batch(self.store, dlq_table(ds.name), info)
            if cleared is not None:
                result.metrics["dlq_version"] = cleared
        if late is not None and late.num_rows:
            result.metrics["late_version"] = write_side_table(
                self.store, late_table(ds.name), late, info, datetime.now(UTC),
                at_column="_lf_late_at",
            )  # fmt: skip
        elif stream is not None:
            cleared = clear_side_batch(self.store, late_table(ds.name), info)
            if cleared is not None:
                result.metrics["late_version"] = cleared
        written = write_dataset(
            self.store, ds, outcome.published, info, target_version=target_version, now=run_started
        )
        result.output_version = written.version
        result.rows_out = (result.rows_out or 0) + outcome.published.num_rows
        for key, value in {
            "rows_written": written.rows_written,
            "inserted": written.inserted,
            "updated": written.updated,
            "deleted": written.deleted,
            "stale_records": written.stale_records,
        }.items():
            result.metrics[key] = int(result.metrics.get(key, 0)) + value
        for key, cols in (
            ("added_columns", written.added_columns),
            ("rescued_columns", written.rescued_columns),
        ):
            result.metrics[key] = sorted({*result.metrics.get(key, []), *cols})
        return info

    def _ingest(
        self,
        run_id: str,
        run_started: datetime,
        ds: Any,
        assessment: Assessment,
        full_refresh: bool,
        result: TaskResult,
        gate: bool,
        source: Source,
        inputs: dict[str, Any],
        views: list[Any],
        context: TransformContext,
        stop: Callable[[], bool] | None = None,
    ) -> None:
        """Read what is new from the source, one commit per batch (state in the commit)."""
        import pyarrow.dataset as pads

        from lakeforge.storage.delta import PinnedTable
        from lakeforge.streaming.operator import EventTimeOperator

        # Event time (a streaming table's windows, late data, dedup): its state is recovered
        # from the newest commit too, and advances with each batch's commit.
        stream = EventTimeOperator.of(ds, self.store)
        if full_refresh:
            position = source.fresh()
        else:
            committed = self.store.commit_infos(ds.name)
            position = source.recover(i.source_state for i in committed if i.source_state)
            if stream is not None:
                committed = self.store.commit_infos(ds.name)
                stream.recover(i.source_state for i in committed if i.source_state)
        # A source may compare with what it ingested (a SQL reconcile): the table as the task
        # found it, pinned now; none on --full-refresh, which rebuilds it from scratch.
        found = None if full_refresh else self.store.version(ds.name)
        source.target = lambda: None if found is None else self.store.read(ds.name, found)
        # Totals of the batches committed; kept when a later batch fails or is blocked.
        totals: dict[str, Any] = {"source": {"batches": 0, "units": 0}}
        if stream is not None:
            totals.update(rows_late=0, rows_deduplicated=0, rows_events=0, windows=0)
        result.rows_in = 0
        try:
            for batches, batch in enumerate(source.batches(position), start=1):
                totals["source"]["batches"] = batches
                totals["source"]["units"] += batch.units
                # Records read = records typed + dead letters (DESIGN §2.4's identity).
                dead = 0 if batch.rejected is None else batch.rejected.num_rows
                result.rows_in += batch.data.num_rows + dead
                rejected, step = batch.rejected, None
                if batch.transformed:  # rows of the table itself (a reconcile's tombstones)
                    data = batch.data
                elif stream is not None:  # late split, dedup, windows, before the transform
                    step = stream.before(batch.data, self.clock())
                    rejected = _with_dead_letters(batch.rejected, step.rejected)
                    data = self._stream_transform(ds, inputs, views, context, source, step)
                    stream.check_output(data)
                else:
                    pinned = PinnedTable(SOURCE_INPUT, -1, [pads.dataset(batch.data)])
                    batch_inputs = {**inputs, source.input_name: pinned}
                    data = self.engine.transform(ds, batch_inputs, views, context)
                # The first batch replaces the table on --full-refresh, and on every run of a
                # source that reads everything each time (a full load).
                replaces = full_refresh or source.replaces_table
                target = None if replaces and batches == 1 else self.store.version(ds.name)
                unpublished = f"this batch ({batch.description}) was not published"
                if batches > 1:
                    unpublished += f"; the {batches - 1} batch(es) before it were"
                outcome = self._audit(run_id, ds, data, target, result, gate, unpublished)
                for key in ("rows_candidate", "rows_published", "rows_quarantined", "rows_dropped"):
                    totals[key] = totals.get(key, 0) + int(result.metrics[key])
                totals["rows_dlq"] = totals.get("rows_dlq", 0) + (
                    0 if rejected is None else rejected.num_rows
                )
                if step is not None:
                    _add_step(totals, step)
                info = self._commit(
                    run_id, run_started, ds, assessment, result, outcome, target, full_refresh,
                    source_state=batch.state, rejected=rejected,
                    stream=stream if step is not None else None,
                    late=None if step is None else step.late,
                )  # fmt: skip
                if step is not None and stream is not None:
                    stream.committed(info.batch)
                source.committed(batch.state)  # acknowledge only what the table holds
                # This batch is published: its results are final whatever later batches do.
                at = datetime.now(UTC)
                self.metadata.record_check_results(
                    [
                        c.to_record(run_id=run_id, task_id=result.task_id, dataset=ds.name,
                                    published=True, at=at)
                        for c in outcome.results
                    ]
                )  # fmt: skip
                result.checks_recorded = len(result.checks)
                if stop is not None and stop():
                    result.reason += " (stopped after this batch; the rest is read next time)"
                    break
            if stream is not None and not totals["source"]["batches"] and not full_refresh:
                self._idle_batch(run_id, run_started, ds, assessment, result, gate, source,
                                 inputs, views, context, stream, totals)  # fmt: skip
        finally:
            result.metrics.update(totals)
            if stream is not None:
                result.metrics["stream"] = stream.metrics()
                stream.close()
        result.metrics["checks"] = dict(Counter(c.status for c in result.checks))
        result.metrics["source"]["changed_files"] = source.changed(position)
        result.metrics["source"].update(source.metrics())  # e.g. a broker's lag, a slot's
        if totals["source"]["batches"] == 0 and not totals.get("idle_batches"):
            result.reason += " (nothing new to read)"

    def _stream_transform(
        self,
        ds: Any,
        inputs: dict[str, Any],
        views: list[Any],
        context: TransformContext,
        source: Source,
        step: Step,
    ) -> Any:
        """The transform over an event-time step's input (windowed events), read under the
        source's input name."""
        import pyarrow.dataset as pads

        from lakeforge.storage.delta import PinnedTable

        pinned = PinnedTable(SOURCE_INPUT, -1, [pads.dataset(step.events)])
        return self.engine.transform(ds, {**inputs, source.input_name: pinned}, views, context)

    def _idle_batch(
        self,
        run_id: str,
        run_started: datetime,
        ds: Any,
        assessment: Assessment,
        result: TaskResult,
        gate: bool,
        source: Source,
        inputs: dict[str, Any],
        views: list[Any],
        context: TransformContext,
        stream: EventTimeOperator,
        totals: dict[str, Any],
    ) -> None:
        """Nothing new to read, but the stream has been idle for its ``idle_timeout``:
        processing time advances the watermark and closes windows, in a commit of its own
        (no source position; its source state holds only the stream's)."""
        from lakeforge.streaming.operator import IDLE_KIND

        step = stream.idle_step(self.clock())
        if step is None:
            return
        data = self._stream_transform(ds, inputs, views, context, source, step)
        stream.check_output(data)
        target = self.store.version(ds.name)
        unpublished = "the idle batch was not published"
        outcome = self._audit(run_id, ds, data, target, result, gate, unpublished)
        for key in ("rows_candidate", "rows_published", "rows_quarantined", "rows_dropped"):
            totals[key] = totals.get(key, 0) + int(result.metrics[key])
        _add_step(totals, step)
        info = self._commit(
            run_id, run_started, ds, assessment, result, outcome, target, False,
            source_state={"kind": IDLE_KIND}, stream=stream,
        )  # fmt: skip
        stream.committed(info.batch)
        totals["idle_batches"] = totals.get("idle_batches", 0) + 1
        result.reason += " (idle: processing time closed windows)"

    def _audit(
        self,
        run_id: str,
        ds: Any,
        data: Any,
        target_version: int | None,
        result: TaskResult,
        gate: bool,
        unpublished: str = "nothing published",
        replaces: str | None = None,
    ) -> AuditOutcome:
        """Expectations and checks on the candidate; raises when the gate blocks it."""
        outcome = audit(
            ds,
            data,
            store=self.store,
            target_version=target_version,
            extra_checks=self._contract_checks(ds),
            contract_types=self._contract_types(ds),
            history=lambda name, window: self.metadata.metric_history(
                ds.name, name, limit=window, before_run=run_id
            ),
            sample_size=self.project.config.quality.sample_rows,
            replaces=replaces,
        )
        result.checks = [*result.checks[: result.checks_recorded], *outcome.results]
        result.metrics.update(
            {
                "rows_candidate": outcome.rows_in,
                "rows_published": outcome.published.num_rows,
                "rows_quarantined": outcome.quarantined_rows,
                "rows_dropped": outcome.dropped,
                "checks": outcome.counts(),
            }
        )
        if outcome.read_versions:
            result.metrics["check_input_versions"] = outcome.read_versions
        blocking = outcome.blocking
        if blocking and gate:
            path = stage_candidate(self.project.root / STATE_DIR, run_id, ds.name, data)
            result.metrics["candidate"] = str(path.relative_to(self.project.root))
            shown = "; ".join(f"{r.name}: {r.message}" for r in blocking[:3])
            more = f" (+{len(blocking) - 3} more)" if len(blocking) > 3 else ""
            raise QualityGateFailed(
                f"{ds.name}: {len(blocking)} blocking check(s) failed, {unpublished} — "
                f"{shown}{more}",
                dataset=ds.name,
                location=ds.location,
                hint=f"`lakeforge checks show {run_id}` shows the failures with samples; the "
                f"candidate is kept in {result.metrics['candidate']}",
            )
        if blocking:
            result.metrics["gate_overridden"] = [r.name for r in blocking]
        return outcome

    def _contract_types(self, ds: Any) -> Callable[[dict[str, str]], list[str]] | None:
        contract = self.project.contracts.get(ds.name)
        if contract is None:
            return None
        return lambda columns: contract.type_violations(ds.name, columns)

    def _contract_checks(self, ds: Any) -> list[CheckTarget]:
        contract = self.project.contracts.get(ds.name)
        if contract is None:
            return []
        return [CheckTarget(check, "contract") for check in contract.checks_for(ds.name)]

    def _log(self, run_id: str, r: TaskResult) -> None:
        self.runlog.write(
            RunLogRecord(
                pipeline_name=self.project.name,
                run_id=run_id,
                started_at=r.started_at.isoformat(),
                completed_at=r.finished_at.isoformat(),
                status=_LOG_STATUS.get(r.status, r.status),
                stage=f"{r.layer}.{r.dataset}" if r.layer else r.dataset,
                dataset=r.dataset,
                layer=r.layer,
                reason=r.reason,
                rows_extracted=r.rows_in or 0,
                rows_transformed=r.rows_out or 0,
                rows_loaded=int(r.metrics.get("rows_written", 0)),
                rows_rejected=int(r.metrics.get("rows_quarantined", 0))
                + int(r.metrics.get("rows_dropped", 0)),
                quality_checks_passed=sum(1 for c in r.checks if c.status == "pass"),
                quality_checks_failed=sum(1 for c in r.checks if c.status != "pass"),
                duration_seconds=round(r.duration, 3),
                error_message=str(r.error) if r.error else "",
                watermark_before="" if r.version_before is None else f"v{r.version_before}",
                watermark_after="" if r.output_version is None else f"v{r.output_version}",
                input_versions=r.input_versions,
                output_version=r.output_version,
                fingerprint=r.fingerprint,
                attempts=r.attempts,
            )
        )


def _with_dead_letters(rejected: Any, more: Any) -> Any:
    """The source's dead letters and the event-time ones of the same batch, together."""
    if more is None or not more.num_rows:
        return rejected
    if rejected is None or not rejected.num_rows:
        return more
    import pyarrow as pa

    return pa.concat_tables([rejected, more.cast(rejected.schema)])


def _add_step(totals: dict[str, Any], step: Step) -> None:
    """Add an event-time step's counts to the task's totals (rows in = published +
    quarantined + dropped + dead letters + late + deduplicated, at the event level)."""
    for key, value in (
        ("rows_late", step.rows_late),
        ("rows_deduplicated", step.rows_deduplicated),
        ("rows_events", step.rows_events),
        ("windows", step.windows),
    ):
        totals[key] = totals.get(key, 0) + value


def _waits_for(pending: dict[str, set[str]], start: str, target: str) -> bool:
    """Whether ``start`` (transitively) waits for ``target`` in ``pending``."""
    stack, seen = [start], set()
    while stack:
        cur = stack.pop()
        if cur == target:
            return True
        if cur not in seen:
            seen.add(cur)
            stack.extend(pending.get(cur, ()))
    return False


def allowed_retries(exc: LakeforgeError, configured: int) -> int:
    """How many retries an error deserves: none when terminal; a lost commit race always
    gets a few, since retrying it is safe and usually succeeds."""
    if not exc.retryable:
        return 0
    if isinstance(exc, CommitConflict):
        return max(configured, CONFLICT_RETRIES)
    return configured
