"""The run queue: runs waiting for a worker, in the metadata store.

The scheduler (cron, sensors), ``lakeforge queue add`` and backfills put runs in the
queue; ``lakeforge worker`` processes take them. With PostgreSQL several workers share one
queue: an item is claimed with ``SELECT … FOR UPDATE SKIP LOCKED`` so two workers never
take the same one, and a pool's row is locked while its running items are counted, so a
pool's capacity holds across workers. SQLite serializes writers (``BEGIN IMMEDIATE``),
which gives the same guarantees on one machine.

A worker heartbeats the item it runs; an item whose worker stopped heartbeating (killed)
is put back in the queue by the next worker that looks. Builds are idempotent and every
dataset is locked while it is built (``execution/locks.py``), so an item run twice after
such a recovery builds nothing twice.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import func, select, update
from sqlalchemy.exc import IntegrityError

from lakeforge.metadata.models import PoolRow, QueueItemRow

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lakeforge.graph.dag import Graph
    from lakeforge.metadata.store import MetadataStore

QUEUE_STATUSES = ("queued", "claimed", "done", "failed", "cancelled")
DEFAULT_POOL = "default"
_CANDIDATES = 20  # queued items looked at per claim (the first ones may be in full pools)


@dataclass(frozen=True)
class QueueItem:
    """One queued run.

    Attributes:
        selection: what to run (``lakeforge run`` syntax); None: everything.
        backfill: dataset → partition keys to rebuild whatever their state.
        priority: higher first; ties in order of arrival.
        pool: the concurrency pool the item counts against.
        reason: why it was queued (``cron nightly @ 2024-01-02T02:00``, ``sensor …``).
        dedupe_key: at most one queued or running item per key.
        not_before: not claimed before this time (retries with backoff).
    """

    id: int
    status: str
    selection: list[str] | None
    backfill: dict[str, list[str]] | None
    full_refresh: bool
    priority: int
    pool: str
    reason: str | None
    dedupe_key: str | None
    not_before: datetime | None
    enqueued_at: datetime
    claimed_by: str | None
    claimed_at: datetime | None
    heartbeat_at: datetime | None
    finished_at: datetime | None
    attempts: int
    run_id: str | None
    error: str | None

    @classmethod
    def of(cls, row: QueueItemRow) -> QueueItem:
        return cls(
            id=row.id,
            status=row.status,
            selection=list(row.selection) if row.selection is not None else None,
            backfill={k: list(v) for k, v in row.backfill.items()} if row.backfill else None,
            full_refresh=row.full_refresh,
            priority=row.priority,
            pool=row.pool,
            reason=row.reason,
            dedupe_key=row.dedupe_key,
            not_before=row.not_before,
            enqueued_at=row.enqueued_at,
            claimed_by=row.claimed_by,
            claimed_at=row.claimed_at,
            heartbeat_at=row.heartbeat_at,
            finished_at=row.finished_at,
            attempts=row.attempts,
            run_id=row.run_id,
            error=row.error,
        )

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key, value in out.items():
            if isinstance(value, datetime):
                out[key] = value.isoformat()
        return out


def route_pool(
    graph: Graph, datasets: list[str], pools: Mapping[str, int], explicit: str | None = None
) -> str:
    """The pool a run of ``datasets`` goes to: ``explicit`` when given; else the first pool
    of ``pools:`` named ``tag:<t>`` whose tag a dataset of the run carries; else
    ``default``."""
    if explicit:
        return explicit
    tags = {t for name in datasets if name in graph for t in graph[name].config.tags}
    for pool in pools:
        if pool.startswith("tag:") and pool.removeprefix("tag:") in tags:
            return pool
    return DEFAULT_POOL


class RunQueue:
    """The queue in a :class:`MetadataStore`; safe to share between threads and processes."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata

    def enqueue(
        self,
        *,
        selection: list[str] | None = None,
        backfill: dict[str, list[str]] | None = None,
        full_refresh: bool = False,
        priority: int = 0,
        pool: str = DEFAULT_POOL,
        reason: str | None = None,
        dedupe_key: str | None = None,
        not_before: datetime | None = None,
        now: datetime | None = None,
        session: Session | None = None,
    ) -> int | None:
        """Queue a run; returns its id, or None when an item with ``dedupe_key`` is already
        queued or running.

        With ``session`` the item is added in that transaction (under a savepoint), so a
        caller can queue runs and record why in one commit — the scheduler does, holding its
        schedule's state row locked."""
        row = QueueItemRow(
            status="queued",
            selection=list(selection) if selection is not None else None,
            backfill={k: sorted(v) for k, v in backfill.items()} if backfill else None,
            full_refresh=full_refresh,
            priority=priority,
            pool=pool,
            reason=reason,
            dedupe_key=dedupe_key,
            not_before=not_before,
            enqueued_at=now or datetime.now(UTC),
            attempts=0,
        )
        if session is not None:
            try:
                with session.begin_nested():
                    session.add(row)
            except IntegrityError:
                if dedupe_key is None:
                    raise
                return None
            return row.id
        try:
            with self.metadata.session(write=True) as own:
                own.add(row)
                own.flush()
                return row.id
        except IntegrityError:
            if dedupe_key is None:
                raise
            return None

    def claim(
        self,
        worker: str,
        *,
        pools: dict[str, int] | None = None,
        only_pools: list[str] | None = None,
        now: datetime | None = None,
    ) -> QueueItem | None:
        """Take the next item (highest priority, oldest) whose pool has room, or None.

        Args:
            worker: who claims it (recorded; heartbeats name it).
            pools: pool → capacity (items running at once, over all workers); a pool not
                listed is unlimited.
            only_pools: take items of these pools only.
        """
        at = now or datetime.now(UTC)
        capacities = pools or {}
        with self.metadata.session(write=True) as session:
            postgres = session.bind is not None and session.bind.dialect.name == "postgresql"
            query = (
                select(QueueItemRow)
                .where(QueueItemRow.status == "queued")
                .where((QueueItemRow.not_before.is_(None)) | (QueueItemRow.not_before <= at))
                .order_by(QueueItemRow.priority.desc(), QueueItemRow.id)
                .limit(_CANDIDATES)
            )
            if only_pools:
                query = query.where(QueueItemRow.pool.in_(only_pools))
            if postgres:
                query = query.with_for_update(skip_locked=True)
            for row in session.scalars(query):
                capacity = capacities.get(row.pool)
                if capacity is not None and not self._room(session, row.pool, capacity, postgres):
                    continue
                row.status = "claimed"
                row.claimed_by = worker
                row.claimed_at = at
                row.heartbeat_at = at
                row.attempts += 1
                session.flush()
                return QueueItem.of(row)
        return None

    @staticmethod
    def _room(session: Any, pool: str, capacity: int, postgres: bool) -> bool:
        """Whether ``pool`` runs fewer than ``capacity`` items (its row locked meanwhile)."""
        # The pool's row serializes the count-then-claim of workers sharing the pool.
        if postgres and session.get(PoolRow, pool, with_for_update=True) is None:
            try:
                with session.begin_nested():
                    session.add(PoolRow(name=pool))
            except IntegrityError:
                pass
            session.get(PoolRow, pool, with_for_update=True)
        running = session.scalar(
            select(func.count())
            .select_from(QueueItemRow)
            .where(QueueItemRow.pool == pool, QueueItemRow.status == "claimed")
        )
        return int(running or 0) < capacity

    def heartbeat(self, item_id: int, worker: str, now: datetime | None = None) -> bool:
        """Say the item is still being run; False when it was taken away from ``worker``."""
        with self.metadata.session(write=True) as session:
            done = session.execute(
                update(QueueItemRow)
                .where(QueueItemRow.id == item_id, QueueItemRow.claimed_by == worker,
                       QueueItemRow.status == "claimed")
                .values(heartbeat_at=now or datetime.now(UTC))
            )  # fmt: skip
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def finish(
        self,
        item_id: int,
        *,
        status: str,
        run_id: str | None = None,
        error: str | None = None,
        now: datetime | None = None,
    ) -> None:
        """Close an item (``done``, ``failed`` or ``cancelled``); its dedupe key is freed."""
        if status not in ("done", "failed", "cancelled"):
            raise ValueError(f"unknown final queue status {status!r}")
        with self.metadata.session(write=True) as session:
            row = session.get(QueueItemRow, item_id)
            if row is None:
                raise ValueError(f"no queue item {item_id}")
            row.status = status
            row.run_id = run_id
            row.error = error
            row.finished_at = now or datetime.now(UTC)
            row.dedupe_key = None

    def cancel(self, item_id: int, now: datetime | None = None) -> bool:
        """Cancel a queued item; False when it is not queued (running or finished)."""
        with self.metadata.session(write=True) as session:
            done = session.execute(
                update(QueueItemRow)
                .where(QueueItemRow.id == item_id, QueueItemRow.status == "queued")
                .values(status="cancelled", dedupe_key=None, finished_at=now or datetime.now(UTC))
            )
            return bool(done.rowcount)  # type: ignore[attr-defined]

    def release_stale(self, older_than: timedelta, now: datetime | None = None) -> list[int]:
        """Put back items whose worker stopped heartbeating ``older_than`` ago."""
        limit = (now or datetime.now(UTC)) - older_than
        with self.metadata.session(write=True) as session:
            query = select(QueueItemRow).where(
                QueueItemRow.status == "claimed", QueueItemRow.heartbeat_at < limit
            )
            if session.bind is not None and session.bind.dialect.name == "postgresql":
                query = query.with_for_update(skip_locked=True)
            released = []
            for row in session.scalars(query):
                row.status = "queued"
                row.error = f"worker {row.claimed_by} stopped heartbeating; queued again"
                row.claimed_by = None
                released.append(row.id)
            return released

    def items(self, statuses: list[str] | None = None, limit: int = 100) -> list[QueueItem]:
        """Items, queued ones first by the order they will be taken, then the newest."""
        with self.metadata.session() as session:
            query = select(QueueItemRow)
            if statuses:
                query = query.where(QueueItemRow.status.in_(statuses))
            query = query.order_by(
                (QueueItemRow.status != "queued"),
                QueueItemRow.priority.desc(),
                QueueItemRow.id.desc(),
            ).limit(limit)
            return [QueueItem.of(row) for row in session.scalars(query)]
