"""Alerts: turn run results and freshness evaluations into deduplicated notifications.

Events:

- ``run_failed`` — a dataset's task failed (not because of a check: that is
  ``check_failed``); one per dataset; resolved by its next successful (or up-to-date) task.
- ``check_failed`` — a blocking check or expectation failed; one per dataset and check;
  resolved when that check passes (or only warns) again.
- ``freshness`` — a dataset breached its freshness SLA (``warn`` / ``error``); resolved when
  ``lakeforge freshness --alert`` finds it fresh again.
- ``stream_lag`` — a table with ``lag_alert`` read its source and is further behind it
  than ``warn_after`` / ``error_after`` (messages, or WAL bytes for Postgres CDC); resolved
  by a run that finds it within the limits.

:func:`notify_run` is the one call the executor makes at the end of a run (only when
``alerts:`` is configured); it never raises. State and dedup: ``alert_book.py``; messages
and channels: ``channels.py``.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Iterable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from lakeforge.errors import QualityGateFailed
from lakeforge.scheduling.alert_book import AlertBook, Observation, Outcome
from lakeforge.scheduling.channels import SendResult, alert_payload, probe_payload, send

if TYPE_CHECKING:
    from lakeforge.execution.results import RunResult, TaskResult
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project
    from lakeforge.scheduling.freshness import FreshnessResult

log = logging.getLogger(__name__)
_MESSAGE = 500  # characters of an error message put in an alert


@dataclass(frozen=True)
class Delivery:
    """One message sent (or not) to one channel."""

    channel: str
    event: str
    dataset: str
    subject: str
    kind: str  # firing | escalated | repeat | resolved
    severity: str
    ok: bool
    detail: str

    def to_dict(self) -> dict[str, Any]:
        return {
            "channel": self.channel,
            "event": self.event,
            "dataset": self.dataset,
            "subject": self.subject or None,
            "kind": self.kind,
            "severity": self.severity,
            "ok": self.ok,
            "detail": self.detail,
        }


def notify_run(
    project: Project,
    metadata: MetadataStore,
    result: RunResult,
    *,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> dict[str, Any] | None:
    """Alert on a finished run: failed tasks, blocking checks, and what they resolved.

    Never raises: a problem is logged as a warning and recorded in the run's options
    (``alerts``), with the deliveries that failed (they stay owed and are retried by the
    next evaluation).
    """
    if not project.config.alerts or result.dry_run:
        return None
    try:
        observed = run_alert_observations(project, result)
        deliveries = evaluate(project, metadata, observed, now=now, sleep=sleep)
        summary: dict[str, Any] = summarize(deliveries)
    except Exception as exc:  # alerting must never fail the run it reports on
        summary = error_summary(exc, f"alerts for run {result.run_id}")
    return report(metadata, result.run_id, summary)


def run_alert_observations(project: Project, result: RunResult) -> list[Observation]:
    """What a finished run fires or resolves: failed tasks, blocking checks, source lag."""
    return run_observations(result) + lag_observations(project, result)


def error_summary(exc: Exception, what: str) -> dict[str, Any]:
    """``{"error": ...}`` for a run's options, logged as a warning."""
    summary = {"error": f"{type(exc).__name__}: {exc}".splitlines()[0]}
    log.warning("%s failed: %s", what, summary["error"])
    return summary


def report(metadata: MetadataStore, run_id: str, summary: dict[str, Any]) -> dict[str, Any]:
    """Log the deliveries that failed and record the outcome in the run's options."""
    for failed in summary.get("failed", []):
        log.warning(
            "alert %s of %s not delivered to %s: %s",
            failed["event"],
            failed["dataset"],
            failed["channel"],
            failed["detail"],
        )
    if summary.get("sent") or summary.get("failed") or summary.get("error"):
        _record(metadata, run_id, summary)
    return summary


def run_observations(result: RunResult) -> list[Observation]:
    """What a run says about each alert condition of the datasets it ran."""
    out: list[Observation] = []
    for task in result.tasks:
        if task.status not in ("success", "failed", "up_to_date"):
            continue  # views, upstream failures: nothing learnt about the dataset
        out += _check_observations(task, result.run_id)
        blocked = any(c.blocking for c in task.checks)
        if task.status == "failed":
            # Under --no-gate no check blocks a build: whatever failed it is a run failure.
            by_gate = isinstance(task.error, QualityGateFailed) or (
                bool(task.partitions) and blocked and result.gate
            )
            if not by_gate:  # a gate failure is reported per check, as check_failed
                out.append(_run_failed(task, result.run_id))
        else:
            done = "built" if task.status == "success" else "up to date"
            out.append(
                Observation(
                    "run_failed",
                    task.dataset,
                    firing=False,
                    run_id=result.run_id,
                    message=f"{task.dataset} {done}",  # the message adds "(run …)"
                )
            )
    return out


def source_lag(metrics: dict[str, Any]) -> tuple[int, str] | None:
    """A source's lag after a task, in its own unit, from ``metrics.source``: messages not
    yet read (``lag_total``, or an integer ``lag``), or bytes of WAL (``lag_bytes_end``)."""
    source = metrics.get("source") or {}
    if isinstance(source.get("lag_total"), int):
        return int(source["lag_total"]), "messages"
    if isinstance(source.get("lag"), int) and not isinstance(source.get("lag"), bool):
        return int(source["lag"]), "messages"
    if isinstance(source.get("lag_bytes_end"), int):
        return int(source["lag_bytes_end"]), "bytes"
    return None


def lag_observations(project: Project, result: RunResult) -> list[Observation]:
    """``stream_lag`` of each dataset with a ``lag_alert`` whose task read its source."""
    out: list[Observation] = []
    for task in result.tasks:
        if task.status != "success" or task.dataset not in project.graph:
            continue
        sla = project.graph[task.dataset].config.lag_alert
        measured = source_lag(task.metrics) if sla is not None else None
        if sla is None or measured is None:
            continue
        lag, unit = measured
        severity = sla.judge(lag)
        details = {"lag": lag, "unit": unit, "warn_after": sla.warn_after}
        details["error_after"] = sla.error_after
        out.append(
            Observation(
                "stream_lag",
                task.dataset,
                firing=severity is not None,
                severity=severity or "error",
                run_id=result.run_id,
                message=f"{task.dataset} is {lag:,} {unit} behind its source"
                if severity is not None
                else f"{task.dataset} caught up ({lag:,} {unit} behind)",
                details=details,
            )
        )
    return out


def _run_failed(task: TaskResult, run_id: str) -> Observation:
    error = str(task.error) if task.error is not None else "failed"
    failed = [p.key for p in task.partitions if p.status == "failed"]
    details: dict[str, Any] = {"error": error[:_MESSAGE], "attempts": task.attempts}
    if task.reason:
        details["reason"] = task.reason
    if failed:
        details["failed_partitions"] = failed[:20]
        details["failed_partition_count"] = len(failed)
    return Observation(
        "run_failed",
        task.dataset,
        firing=True,
        severity="error",
        run_id=run_id,
        message=error.splitlines()[0][:_MESSAGE],
        details=details,
    )


def _check_observations(task: TaskResult, run_id: str) -> list[Observation]:
    blocking = {c.name: c for c in task.checks if c.blocking}
    passing = {c.name for c in task.checks if c.status in ("pass", "warn")} - set(blocking)
    out = [
        Observation(
            "check_failed",
            task.dataset,
            firing=True,
            subject=name,
            severity="error",
            run_id=run_id,
            message=(c.message or c.status)[:_MESSAGE],
            details={
                "check_type": c.check_type,
                "origin": c.origin,
                "status": c.status,
                "value": c.value,
                "failing": c.failing,
                "total": c.total,
                "threshold": c.threshold,
                "published": task.status == "success",
            },
        )
        for name, c in blocking.items()
    ]
    out += [
        Observation(
            "check_failed",
            task.dataset,
            firing=False,
            subject=name,
            run_id=run_id,
            message=f"{name} passes again",
        )
        for name in sorted(passing)
    ]
    return out


def freshness_observations(results: Iterable[FreshnessResult]) -> list[Observation]:
    """``warn``/``error`` fire the dataset's freshness alert, ``fresh`` clears it."""
    out = []
    for r in results:
        if r.status == "unknown":
            continue  # could not be read: neither breached nor fresh
        out.append(
            Observation(
                "freshness",
                r.dataset,
                firing=r.breached,
                severity=r.status if r.breached else "warn",
                message=r.detail if r.breached else f"fresh again: {r.detail}",
                details=r.to_dict(),
            )
        )
    return out


def notify_freshness(
    project: Project,
    metadata: MetadataStore,
    results: Sequence[FreshnessResult],
    *,
    evaluated_all: bool,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Alert on a freshness evaluation. With ``evaluated_all``, a freshness alert of a
    dataset that no longer declares an SLA (or no longer exists) is resolved too."""
    observations = freshness_observations(results)
    if evaluated_all:
        seen = {r.dataset for r in results}
        book = AlertBook(metadata, project.config.alerts)
        observations += [
            Observation(
                "freshness", a.dataset, firing=False, message="no freshness SLA declared any more"
            )
            for a in book.records()
            if a.event == "freshness" and a.dataset not in seen
        ]
    return evaluate(project, metadata, observations, now=now, sleep=sleep)


def evaluate(
    project: Project,
    metadata: MetadataStore,
    observations: Sequence[Observation],
    *,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Record ``observations``, then deliver everything owed (including earlier failures)."""
    book = AlertBook(metadata, project.config.alerts)
    book.observe(observations, now or datetime.now(UTC))
    return deliver(project, book, now=now, sleep=sleep)


def deliver(
    project: Project,
    book: AlertBook,
    *,
    now: datetime | None = None,
    sleep: Callable[[float], None] = time.sleep,
) -> list[Delivery]:
    """Send every message owed to a configured channel; record what was delivered."""
    from lakeforge.project.config import STATE_DIR

    claims = book.claim(now or datetime.now(UTC))

    def send_in_order(mine: list[int]) -> list[tuple[int, SendResult]]:
        results = []
        for i in mine:
            claim = claims[i]
            payload = alert_payload(project.name, claim.alert, claim.kind, claim.previous_severity)
            channel = book.channels[claim.channel]
            results.append(
                (i, send(channel, payload, root=project.root, state_dir=STATE_DIR, sleep=sleep))
            )
        return results

    # One thread per channel: a slow or unreachable channel (timeouts, retries) does not
    # hold up the others; each channel still gets its messages in order.
    by_channel: dict[str, list[int]] = {}
    for i, claim in enumerate(claims):
        by_channel.setdefault(claim.channel, []).append(i)
    results: dict[int, SendResult] = {}
    if len(by_channel) <= 1:
        for mine in by_channel.values():
            results.update(send_in_order(mine))
    else:
        with ThreadPoolExecutor(len(by_channel), thread_name_prefix="lakeforge-alert") as pool:
            for done in pool.map(send_in_order, by_channel.values()):
                results.update(done)
    outcomes: list[Outcome] = []
    deliveries: list[Delivery] = []
    for i, claim in enumerate(claims):
        sent = results[i]
        outcomes.append(Outcome(claim, sent.ok, None if sent.ok else sent.detail))
        a = claim.alert
        deliveries.append(
            Delivery(
                claim.channel,
                a.event,
                a.dataset,
                a.subject,
                claim.kind,
                a.severity,
                sent.ok,
                sent.detail,
            )
        )
    book.settle(outcomes, now or datetime.now(UTC))
    return deliveries


def send_probes(project: Project) -> list[tuple[Any, Any]]:
    """``lakeforge alerts test``: a test message to every channel → (channel, SendResult)."""
    from lakeforge.project.config import STATE_DIR

    return [
        (c, send(c, probe_payload(project.name, c.label), root=project.root, state_dir=STATE_DIR))
        for c in project.config.alerts
    ]


def summarize(deliveries: Sequence[Delivery]) -> dict[str, Any]:
    """``{"sent": n, "failed": [...]}`` for the run's options and ``--json``."""
    return {
        "sent": sum(d.ok for d in deliveries),
        "failed": [d.to_dict() for d in deliveries if not d.ok],
    }


def _record(metadata: MetadataStore, run_id: str, summary: dict[str, Any]) -> None:
    from lakeforge.metadata.models import Run

    try:
        with metadata.session(write=True) as session:
            run = session.get(Run, run_id)
            if run is not None:
                run.options = {**(run.options or {}), "alerts": summary}
    except Exception as exc:  # the run is already recorded; this is a footnote to it
        log.warning("could not record alert outcome on run %s: %s", run_id, exc)
