"""The micro-batch loop behind ``lakeforge stream``: run streaming flows on their triggers.

A *flow* is a streaming table (``mode: streaming``). Each is due on its trigger: an
interval (``30s``; ``0`` means again as soon as the previous micro-batch ends) or
``available_now`` (one pass over what is available, then the flow is done). When flows are
due, the loop asks the planner which of them have something new (a source's pending data,
new upstream versions) and builds those in one run — the same executor, guarantees and
records as ``lakeforge run``: one Delta commit per source batch with its position, the
quality gate, dead letters, run and task records (the run's options carry the stream id),
alerts. Nothing new → no run, no record.

Stopping: :meth:`StreamLoop.run` returns once ``stop`` is set — a micro-batch in progress
finishes the source batch it is on, commits it and stops there (the rest is read by the
next micro-batch or the next ``lakeforge stream``). A failing flow is retried on its next
trigger, backing off (doubling, up to ``MAX_BACKOFF``) while it keeps failing.

The loop's clock and waiting are injectable, so tests drive it without sleeping.
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeforge.errors import GraphError

if TYPE_CHECKING:
    import threading

    from lakeforge.execution.executor import Runner
    from lakeforge.execution.results import RunResult, TaskResult

#: With a 0 s trigger and nothing new, how long to wait before asking again.
IDLE_POLL = 0.5
#: Longest wait before retrying a flow that keeps failing.
MAX_BACKOFF = 300.0
#: How long a stopping stream lets the alert delivery in progress finish.
ALERT_CLOSE_SECONDS = 15.0


@dataclass
class FlowProgress:
    """What one streaming flow has done since the loop started (and in its last batch).

    Attributes:
        dataset: the streaming table.
        trigger: its trigger (``available_now`` or an interval).
        micro_batches: runs that built it (nothing new → no micro-batch).
        batches: source batches committed (a micro-batch may commit several).
        rows_in / rows_out: source records read / rows published, in total.
        last: the last micro-batch's figures (``rows_in``, ``rows_out``, ``seconds``,
            ``input_rate`` (records/s since the micro-batch before), ``processing_rate``
            (records/s of processing), ``lag`` (the source's, when it reports one),
            ``run_id``, ``status``, ``at``; with ``event_time`` also ``watermark``,
            ``state_rows``, ``rows_late``, ``rows_deduplicated`` and ``latency`` (seconds from
            the newest event time of the last batch to its commit)).
        failures: consecutive failed micro-batches (0 after a success).
        error: the last failure's message, until a micro-batch succeeds.
        done: an ``available_now`` flow that has made its pass.
    """

    dataset: str
    trigger: str | float
    micro_batches: int = 0
    batches: int = 0
    rows_in: int = 0
    rows_out: int = 0
    last: dict[str, Any] = field(default_factory=dict)
    failures: int = 0
    error: str | None = None
    done: bool = False
    compaction: dict[str, Any] = field(default_factory=dict)
    next_due: float = 0.0
    _previous_start: float | None = None

    @property
    def interval(self) -> float | None:
        """Seconds between micro-batches; None for ``available_now``."""
        if self.trigger == "available_now":
            return None
        from lakeforge.scheduling.spec import duration_seconds

        return duration_seconds(self.trigger)

    def to_dict(self) -> dict[str, Any]:
        return {
            "dataset": self.dataset,
            "trigger": self.trigger,
            "micro_batches": self.micro_batches,
            "batches": self.batches,
            "rows_in": self.rows_in,
            "rows_out": self.rows_out,
            "last": self.last,
            "failures": self.failures,
            "error": self.error,
            "done": self.done,
            "compaction": self.compaction,
        }


class StreamLoop:
    """Runs the streaming flows of a selection until stopped (or all are ``available_now``
    and done)."""

    def __init__(
        self,
        runner: Runner,
        selection: str | list[str] | None = None,
        *,
        clock: Callable[[], float] = time.monotonic,
        on_batch: Callable[[FlowProgress, TaskResult, RunResult], None] | None = None,
        max_micro_batches: int | None = None,
    ) -> None:
        from lakeforge.graph.selection import select

        self.runner = runner
        self.clock = clock
        self.on_batch = on_batch
        self.max_micro_batches = max_micro_batches
        self.stream_id = uuid.uuid4().hex[:12]
        graph = runner.graph
        names = [n for n in select(graph, selection) if graph[n].config.mode == "streaming"]
        if not names:
            what = f"selection {selection!r}" if selection else "the project"
            raise GraphError(
                f"{what} has no streaming table",
                hint="declare one with mode: streaming (SQL header) or @lf.stream_table; "
                "`lakeforge run` builds batch tables",
            )
        self.flows = {n: FlowProgress(n, graph[n].config.trigger) for n in names}
        from lakeforge.streaming.compaction import Compactor

        settings = {n: c for n in names if (c := graph[n].config.compaction) is not None}
        self.compactor = Compactor(runner.store, settings)
        self.runs = 0

    @property
    def finished(self) -> bool:
        return all(f.done for f in self.flows.values()) or (
            self.max_micro_batches is not None and self.runs >= self.max_micro_batches
        )

    def run(self, stop: threading.Event) -> dict[str, FlowProgress]:
        """Loop until ``stop`` is set or every flow is done; returns the flows' progress."""
        dispatcher = None
        if self.runner.project.config.alerts and self.runner.alert_dispatcher is None:
            from lakeforge.scheduling.alert_dispatch import AlertDispatcher

            # A channel that is slow or down must not hold up the micro-batches.
            dispatcher = AlertDispatcher(self.runner.project, self.runner.metadata)
            self.runner.alert_dispatcher = dispatcher
        self.compactor.start()
        try:
            # Across micro-batches: tables are brought up to date from their log rather than
            # opened again, and a flow's DuckDB connection is kept (see DeltaStore).
            with self.runner.store.session(), self.runner.engine.session():
                self._loop(stop)
        finally:
            if dispatcher is not None:
                self.runner.alert_dispatcher = None
                dispatcher.close(ALERT_CLOSE_SECONDS)
            self.compactor.stop()  # finishes the compaction in progress
            for name, stats in self.compactor.stats.items():
                self.flows[name].compaction = stats.to_dict()
        return self.flows

    def _loop(self, stop: threading.Event) -> None:
        while not stop.is_set() and not self.finished:
            self.tick(stop)
            if stop.is_set() or self.finished:
                break
            upcoming = [f.next_due for f in self.flows.values() if not f.done]
            wait = max(0.0, min(upcoming) - self.clock()) if upcoming else 0.0
            if wait:
                stop.wait(wait)

    def tick(self, stop: threading.Event | None = None) -> RunResult | None:
        """Build the flows that are due and have something new; returns the run, if any."""
        now = self.clock()
        due = [f for f in self.flows.values() if not f.done and f.next_due <= now]
        if not due:
            return None
        assessments = self.runner.plan([f.dataset for f in due])
        stale = [a.dataset for a in assessments if a.stale]
        result = None
        if stale:
            started = self.clock()
            for name in stale:
                flow = self.flows[name]
                flow._previous_start, previous = started, flow._previous_start
                flow.last = {"input_window": None if previous is None else started - previous}
            result = self.runner.run(
                stale,
                options={"stream": self.stream_id},
                stop=None if stop is None else stop.is_set,
            )
            self.runs += 1
            for task in result.tasks:
                if task.dataset in self.flows:
                    self._record(self.flows[task.dataset], task, result)
        after = self.clock()
        for flow in due:
            if flow.trigger == "available_now":
                flow.done = True  # one pass over what was there, succeeded or not
                continue
            interval = flow.interval or 0.0
            if flow.failures:
                interval = min(MAX_BACKOFF, max(interval, 1.0) * 2 ** (flow.failures - 1))
                flow.next_due = after + interval
            elif not interval and flow.dataset not in stale:
                flow.next_due = after + IDLE_POLL
            else:
                # A fixed rate, as a processing-time trigger: every `interval` from when
                # the micro-batch was due to start; at once when it took longer than that.
                flow.next_due = max(after, now + interval)
        return result

    def _record(self, flow: FlowProgress, task: TaskResult, result: RunResult) -> None:
        seconds = (task.finished_at - task.started_at).total_seconds()
        rows_in = int(task.rows_in or 0)
        rows_out = int(task.metrics.get("rows_published", task.rows_out or 0) or 0)
        source = task.metrics.get("source") or {}
        window = flow.last.get("input_window")
        flow.last = {
            "run_id": result.run_id,
            "status": task.status,
            "at": datetime.now(UTC).isoformat(),
            "rows_in": rows_in,
            "rows_out": rows_out,
            "batches": int(source.get("batches", 0) or 0),
            "seconds": round(seconds, 3),
            "processing_rate": round(rows_in / seconds, 1) if seconds > 0 else None,
            "input_rate": round(rows_in / window, 1) if window else None,
            "lag": source.get("lag"),
        }
        stream = task.metrics.get("stream")
        if isinstance(stream, dict):
            flow.last.update(
                watermark=stream.get("watermark"),
                state_rows=stream.get("state_rows"),
                rows_late=int(task.metrics.get("rows_late", 0) or 0),
                rows_deduplicated=int(task.metrics.get("rows_deduplicated", 0) or 0),
                latency=_latency(stream.get("batch_max_event_time"), task.finished_at),
            )
        if task.status == "failed":
            flow.failures += 1
            flow.error = str(task.error) if task.error is not None else "failed"
        elif task.status in ("success", "up_to_date"):
            flow.failures, flow.error = 0, None
        if task.status == "success":
            self.compactor.request(flow.dataset)  # small files merged in the background
            flow.micro_batches += 1
            flow.batches += flow.last["batches"]
            flow.rows_in += rows_in
            flow.rows_out += rows_out
        if self.on_batch is not None:
            self.on_batch(flow, task, result)


def _latency(event_time: str | None, committed_at: datetime) -> float | None:
    """Seconds from an event time (ISO 8601) to the commit that published it."""
    if event_time is None:
        return None
    newest = datetime.fromisoformat(event_time)
    if newest.tzinfo is None:
        newest = newest.replace(tzinfo=UTC)
    return round((committed_at - newest).total_seconds(), 3)
