"""Retries: a dataset's retry policy (how long to wait before the next attempt), and
``lakeforge retry RUN_ID`` (run again the failed part of a run).

A task (or a partition build) that fails with a transient error (``errors.Transient``:
a lost connection, a lost commit race, a rate limit) is attempted again up to ``retries``
times; a terminal error (bad SQL, bad data, a failed quality gate) never is. Between
attempts the executor waits:

- ``exponential`` (default): ``retry_delay · 2^(attempt-1)``;
- ``linear``: ``retry_delay · attempt``;
- ``constant``: ``retry_delay``;

capped at ``max_delay``. With ``jitter`` (default) the wait is drawn uniformly from
``[0, that]`` ("full jitter"), so workers that failed together do not retry together.

A run-level retry (:func:`plan_retry`) builds again only what a run did not finish: the
datasets whose task failed, was skipped because an upstream failed, or was interrupted —
and of a partitioned dataset, the partitions still failed.

Kept free of heavy imports: the configuration models import :data:`Backoff`.
"""

from __future__ import annotations

import random
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, Literal, Protocol

if TYPE_CHECKING:
    from lakeforge.metadata.intervals import IntervalLedger
    from lakeforge.metadata.store import MetadataStore

Backoff = Literal["exponential", "linear", "constant"]


class RetrySettings(Protocol):
    """The retry keys of a dataset's configuration."""

    backoff: Backoff
    retry_delay: str | float
    max_delay: str | float
    jitter: bool


def retry_wait(settings: RetrySettings, attempt: int, rng: random.Random | None = None) -> float:
    """Seconds to wait after failed attempt number ``attempt`` (1-based)."""
    from lakeforge.scheduling.spec import duration_seconds

    base = duration_seconds(settings.retry_delay)
    cap = duration_seconds(settings.max_delay)
    if settings.backoff == "exponential":
        # Past 2^60 the float still compares correctly with the cap; avoid overflow beyond.
        delay = base * 2.0 ** min(attempt - 1, 60)
    elif settings.backoff == "linear":
        delay = base * attempt
    else:
        delay = base
    delay = min(cap, delay)
    if settings.jitter:
        return (rng or random).uniform(0, delay)
    return delay


@dataclass
class RetryRequest:
    """What ``lakeforge retry RUN_ID`` runs again.

    Attributes:
        run_id: the run retried.
        datasets: datasets whose task failed, was skipped because an upstream failed, or
            was interrupted, in the order the run started them.
        partitions: per partitioned dataset, its partitions still failed in the interval
            ledger; a dataset not listed (none failed) is planned as usual.
        full_refresh / gate: the retried run's settings, kept.
        missing: datasets of the run that the project no longer defines.
    """

    run_id: str
    datasets: list[str] = field(default_factory=list)
    partitions: dict[str, set[str]] = field(default_factory=dict)
    full_refresh: bool = False
    gate: bool = True
    missing: list[str] = field(default_factory=list)

    def options(self) -> dict[str, Any]:
        return {"retry_of": self.run_id}


RETRIED_STATUSES = ("failed", "upstream_failed", "running")


def plan_retry(
    metadata: MetadataStore, ledger: IntervalLedger, known: Iterable[str], run: str
) -> RetryRequest:
    """The failed part of run ``run`` (an id or a unique prefix of one)."""
    record = metadata.get_run(run)
    names = set(known)
    request = RetryRequest(
        record.id,
        full_refresh=record.full_refresh,
        gate=not (record.options or {}).get("no_gate", False),
    )
    for task in record.tasks:
        if task.status not in RETRIED_STATUSES or task.dataset in request.datasets:
            continue
        if task.dataset not in names:
            request.missing.append(task.dataset)
            continue
        request.datasets.append(task.dataset)
    entries = ledger.read(request.datasets)
    for dataset, by_key in entries.items():
        # Still failed, whichever run failed them last (an earlier retry of this run, too).
        failed = {k for k, e in by_key.items() if e.status == "failed"}
        if failed:
            request.partitions[dataset] = failed
    return request
