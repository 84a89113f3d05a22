"""Run-history retention: old runs leave the metadata store with their tasks and check results.

``lakeforge stream`` records a run per micro-batch: at a 1 s trigger that is 86,400 runs a
day, about 2 KB each with their task and check results. ``retention:`` in lakeforge.yml
bounds it — ``micro_batches`` (default 7 days) for stream runs, ``runs`` (default: keep) for
every run. The runner applies it after a run (at most every :data:`APPLY_EVERY` seconds per
process); ``lakeforge prune-history`` applies it on demand.

Never pruned: a run still ``running`` (its process may be alive, and a killed run's record
is the evidence of the kill), and a run the interval ledger names as the last build of a
partition (``lakeforge partitions`` and ``plan`` point at it). Delta tables are not touched.
"""

from __future__ import annotations

import logging
import threading
import time
from dataclasses import asdict, dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import and_, delete, func, or_, select

from lakeforge.metadata.models import CheckResultRow, IntervalRow, Run, Task

if TYPE_CHECKING:
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.config import RetentionConfig

log = logging.getLogger(__name__)

APPLY_EVERY = 600.0  # seconds between two automatic prunes in one process
CHUNK = 500  # runs deleted per transaction: short write locks, even on SQLite


@dataclass(frozen=True)
class Cutoffs:
    """Runs that started before ``runs`` go, and micro-batch runs before ``micro_batches``
    (None: no limit of that kind)."""

    runs: datetime | None = None
    micro_batches: datetime | None = None

    @classmethod
    def of(cls, config: RetentionConfig, now: datetime | None = None) -> Cutoffs:
        """The cutoffs of a project's ``retention:`` at ``now`` (default: the current time)."""
        from lakeforge.scheduling.spec import duration_seconds

        now = now or datetime.now(UTC)

        def before(limit: str | float | None) -> datetime | None:
            return None if limit is None else now - timedelta(seconds=duration_seconds(limit))

        return cls(before(config.runs), before(config.micro_batches))

    @property
    def empty(self) -> bool:
        return self.runs is None and self.micro_batches is None


@dataclass(frozen=True)
class Pruned:
    """What a prune deleted (or, with ``dry_run``, would delete)."""

    runs: int = 0
    tasks: int = 0
    check_results: int = 0
    dry_run: bool = False

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def prune_runs(store: MetadataStore, cutoffs: Cutoffs, *, dry_run: bool = False) -> Pruned:
    """Delete the runs ``cutoffs`` let go, with their tasks and check results.

    Deletes in transactions of :data:`CHUNK` runs, so a long history never holds the
    store's write lock for long; concurrent prunes (several workers) are harmless.

    Args:
        store: the metadata store.
        cutoffs: which runs are old enough.
        dry_run: count what would be deleted, delete nothing.
    """
    if cutoffs.empty:
        return Pruned(dry_run=dry_run)
    condition = _prunable(cutoffs)
    if dry_run:
        with store.session() as session:
            ids = select(Run.id).where(condition).scalar_subquery()
            return Pruned(
                runs=_count(session, select(Run.id).where(condition)),
                tasks=_count(session, select(Task.id).where(Task.run_id.in_(ids))),
                check_results=_count(
                    session, select(CheckResultRow.id).where(CheckResultRow.run_id.in_(ids))
                ),
                dry_run=True,
            )
    runs = tasks = results = 0
    while True:
        with store.session(write=True) as session:
            chunk = list(session.scalars(select(Run.id).where(condition).limit(CHUNK)))
            if not chunk:
                break
            # Children first: the foreign keys cascade, but only where the database
            # enforces them (SQLite needs PRAGMA foreign_keys on every connection).
            results += _deleted(
                session.execute(delete(CheckResultRow).where(CheckResultRow.run_id.in_(chunk)))
            )
            tasks += _deleted(session.execute(delete(Task).where(Task.run_id.in_(chunk))))
            runs += _deleted(session.execute(delete(Run).where(Run.id.in_(chunk))))
        if len(chunk) < CHUNK:
            break
    return Pruned(runs=runs, tasks=tasks, check_results=results)


class RetentionKeeper:
    """Applies a project's retention after runs, at most every :data:`APPLY_EVERY` seconds.

    A failed prune is logged and never fails the run that triggered it.
    """

    def __init__(self, store: MetadataStore, config: RetentionConfig) -> None:
        self.store = store
        self.config = config
        self._lock = threading.Lock()
        self._last: float | None = None

    def after_run(self) -> Pruned | None:
        """Prune if due; returns what was pruned (None: not due, nothing to apply, failed)."""
        with self._lock:
            now = time.monotonic()
            if self._last is not None and now - self._last < APPLY_EVERY:
                return None
            self._last = now
        cutoffs = Cutoffs.of(self.config)
        if cutoffs.empty:
            return None
        try:
            pruned = prune_runs(self.store, cutoffs)
        except Exception as exc:  # retention is housekeeping: the run's outcome stands
            log.warning("pruning the run history failed: %s: %s", type(exc).__name__, exc)
            return None
        if pruned.runs:
            log.info(
                "pruned %d run(s), %d task(s), %d check result(s) from the run history",
                pruned.runs,
                pruned.tasks,
                pruned.check_results,
            )
        return pruned


def _prunable(cutoffs: Cutoffs) -> Any:
    old = []
    if cutoffs.runs is not None:
        old.append(Run.started_at < cutoffs.runs)
    if cutoffs.micro_batches is not None:
        old.append(and_(Run.stream_id.is_not(None), Run.started_at < cutoffs.micro_batches))
    in_ledger = select(IntervalRow.run_id).where(IntervalRow.run_id.is_not(None))
    return and_(or_(*old), Run.status != "running", Run.id.not_in(in_ledger))


def _count(session: Any, query: Any) -> int:
    return int(session.scalar(select(func.count()).select_from(query.subquery())) or 0)


def _deleted(result: Any) -> int:
    return max(int(result.rowcount or 0), 0)
