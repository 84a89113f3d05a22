"""The scheduler: decides when runs happen and puts them in the run queue.

``lakeforge schedule`` calls :meth:`Scheduler.tick` every few seconds; each tick looks at
every schedule (``schedules.py``) and sensor (``sensors.py``) of the project and queues
the runs that are due with :class:`~lakeforge.scheduling.queue.RunQueue` — priority, pool
and a dedupe key each. ``lakeforge worker`` processes execute them.

State lives in ``lf_schedule_state`` (one row per schedule or sensor): a schedule's
cursor (ticks up to it are handled), a sensor's last observation and evaluation time.
Several schedulers may run at once (for availability, or by mistake): a schedule's row is
locked (``SELECT … FOR UPDATE`` on PostgreSQL; SQLite's ``BEGIN IMMEDIATE`` write lock)
while its due ticks are computed from the cursor, queued and the cursor advanced, all in
one transaction — so a tick is queued by exactly one of them. A sensor is evaluated
without the lock (it may read files or tables for a while); its result is recorded only if
no other scheduler recorded an evaluation meanwhile. Queue items carry the dedupe key
``schedule:<name>:<tick>`` / ``sensor:<name>:<key>`` as well, so a tick cannot be queued
twice while its first item is waiting or running.

The clock is injectable (``clock=``, or ``tick(now)``): tests drive a day of ticks in
milliseconds.
"""

from __future__ import annotations

import threading
from collections.abc import Callable
from dataclasses import dataclass, replace
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from sqlalchemy import select as sql_select
from sqlalchemy.exc import IntegrityError

from lakeforge.errors import LakeforgeError
from lakeforge.metadata.models import ScheduleStateRow
from lakeforge.scheduling.queue import RunQueue, route_pool
from lakeforge.scheduling.schedules import Schedule, schedules_of
from lakeforge.scheduling.sensors import Evaluation, Sensor, describe_state, evaluate, sensors_of

if TYPE_CHECKING:
    from sqlalchemy.orm import Session

    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import Project
    from lakeforge.storage.delta import DeltaStore

MIN_WAIT = 0.05  # seconds: the loop never spins faster than this


@dataclass(frozen=True)
class Enqueued:
    """A run a tick queued (or, in a dry run, would queue).

    Attributes:
        kind: ``schedule`` or ``sensor``.
        name: the schedule's or sensor's name.
        item: the queue item's id (None in a dry run).
        tick: the schedule tick the run is for (schedules only).
    """

    kind: str
    name: str
    item: int | None
    selection: list[str]
    priority: int
    pool: str
    reason: str
    dedupe_key: str
    tick: datetime | None = None

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        out["tick"] = None if self.tick is None else self.tick.isoformat()
        return out


@dataclass(frozen=True)
class AutomationError:
    """A schedule or sensor that could not be evaluated in a tick (the others went on)."""

    kind: str
    name: str
    message: str

    def to_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass(frozen=True)
class ScheduleState:
    """One row of ``lf_schedule_state``, detached from its session."""

    kind: str
    name: str
    cursor: datetime | None
    state: dict[str, Any]
    last_evaluated: datetime | None
    last_fired: datetime | None
    last_tick: datetime | None
    last_item: int | None
    fired: int
    skipped: int
    last_error: str | None

    @classmethod
    def of(cls, row: ScheduleStateRow) -> ScheduleState:
        return cls(
            kind=row.kind,
            name=row.name,
            cursor=row.cursor,
            state=dict(row.state or {}),
            last_evaluated=row.last_evaluated,
            last_fired=row.last_fired,
            last_tick=row.last_tick,
            last_item=row.last_item,
            fired=row.fired,
            skipped=row.skipped,
            last_error=row.last_error,
        )


@dataclass(frozen=True)
class AutomationStatus:
    """A schedule or sensor as ``lakeforge schedule ls`` shows it.

    Attributes:
        trigger: ``0 * * * * (UTC)``, ``files landing/*.csv``, ``upstream orders`` …
        next_at: schedules: the next tick; sensors: the next evaluation.
        state: what it last saw / how far it is (one line).
    """

    kind: str
    name: str
    trigger: str
    selection: list[str]
    priority: int
    pool: str
    next_at: datetime | None
    last_fired: datetime | None
    last_item: int | None
    fired: int
    skipped: int
    state: str
    error: str | None
    origin: str

    def to_dict(self) -> dict[str, Any]:
        out = dict(self.__dict__)
        for key in ("next_at", "last_fired"):
            value = out[key]
            out[key] = None if value is None else value.isoformat()
        return out


class Scheduler:
    """Evaluates a project's schedules and sensors and queues their runs.

    Args:
        project: the loaded project (its schedules and sensors are resolved here: a bad
            selection or an unimportable sensor raises ConfigError now).
        metadata: the metadata store holding the queue and the scheduler's state.
        clock: what time it is (UTC-aware); tests pass a fake one.
        store: the Delta tables (upstream sensors read their versions).
    """

    def __init__(
        self,
        project: Project,
        metadata: MetadataStore | None = None,
        *,
        clock: Callable[[], datetime] | None = None,
        store: DeltaStore | None = None,
    ) -> None:
        if metadata is None:
            from lakeforge.metadata.store import MetadataStore

            metadata = MetadataStore(project.metadata_url)
        self.project = project
        self.metadata = metadata
        self.queue = RunQueue(metadata)
        self.clock: Callable[[], datetime] = clock or (lambda: datetime.now(UTC))
        self._store = store
        self.schedules: list[Schedule] = schedules_of(project)
        self.sensors: list[Sensor] = sensors_of(project)
        self.errors: list[AutomationError] = []  # of the last tick

    @property
    def store(self) -> DeltaStore:
        if self._store is None:
            from lakeforge.storage.delta import DeltaStore

            self._store = DeltaStore(self.project.storage_root, self.project.config.storage_options)
        return self._store

    # -- one evaluation -------------------------------------------------------------------

    def tick(self, now: datetime | None = None, *, dry_run: bool = False) -> list[Enqueued]:
        """Evaluate every schedule and sensor at ``now`` (default: the clock) and queue what
        is due. Returns the runs queued — in a dry run, the runs that would be, with nothing
        written. A schedule or sensor that fails is recorded in :attr:`errors` (and on its
        state row) and the others go on."""
        at = now or self.clock()
        if at.tzinfo is None:
            raise ValueError("Scheduler.tick needs a timezone-aware time")
        self.errors = []
        out: list[Enqueued] = []
        for schedule in self.schedules:
            try:
                out.extend(self._tick_schedule(schedule, at, dry_run))
            except LakeforgeError as exc:
                self.errors.append(AutomationError("schedule", schedule.name, str(exc)))
        for sensor in self.sensors:
            try:
                out.extend(self._tick_sensor(sensor, at, dry_run))
            except LakeforgeError as exc:  # the store is unreachable, …
                self.errors.append(AutomationError("sensor", sensor.name, str(exc)))
        return out

    def _tick_schedule(self, s: Schedule, now: datetime, dry_run: bool) -> list[Enqueued]:
        known = self._read("schedule", s.name)
        if dry_run:
            due = s.due(known.cursor if known else None, now)
            return [self._schedule_run(s, tick) for tick in due.queue]
        if known is not None and not s.due(known.cursor, now).queue:
            return []  # nothing due: nothing to write
        out: list[Enqueued] = []
        with self.metadata.session(write=True) as session:
            row, _ = _lock(session, "schedule", s.name, now)
            due = s.due(row.cursor, now)  # from the cursor as it is under the lock
            for tick in due.queue:
                run = self._schedule_run(s, tick)
                item = self._enqueue(session, run, now)
                if item is not None:
                    out.append(replace(run, item=item))
            if row.cursor is None or row.cursor < now:
                row.cursor = now
            row.skipped += due.skipped
            if due.queue:
                row.last_tick = due.queue[-1]
                row.last_fired = now
            if out:
                row.fired += len(out)
                row.last_item = out[-1].item
            row.updated_at = now
        return out

    def _schedule_run(self, s: Schedule, tick: datetime) -> Enqueued:
        stamp = tick.isoformat()
        return Enqueued(
            kind="schedule",
            name=s.name,
            item=None,
            selection=list(s.selection),
            priority=s.trigger.priority,
            pool=self._pool(s.datasets, s.trigger.pool),
            reason=f"schedule {s.name} @ {stamp}",
            dedupe_key=f"schedule:{s.name}:{stamp}",
            tick=tick,
        )

    def _tick_sensor(self, s: Sensor, now: datetime, dry_run: bool) -> list[Enqueued]:
        known = self._read("sensor", s.name)
        seen = known.last_evaluated if known else None
        if seen is not None and (now - seen).total_seconds() < s.config.min_interval_seconds:
            return []
        run: Enqueued | None = None
        error: str | None = None
        evaluation: Evaluation | None = None
        try:
            evaluation = evaluate(
                s,
                known.state if known else {},
                now=now,
                last_fired=known.last_fired if known else None,
                project=self.project,
                store=lambda: self.store,
            )
            if evaluation.fire:
                run = self._sensor_run(s, evaluation)
        except Exception as exc:  # a sensor's own code may raise anything: recorded, go on
            error = str(exc) if isinstance(exc, LakeforgeError) else f"{type(exc).__name__}: {exc}"
        if dry_run:
            if error is not None:
                self.errors.append(AutomationError("sensor", s.name, error))
            return [] if run is None else [run]
        with self.metadata.session(write=True) as session:
            row, created = _lock(session, "sensor", s.name, now)
            if not created and row.last_evaluated != seen:
                return []  # another scheduler evaluated it meanwhile: its result stands
            row.last_evaluated = now
            row.updated_at = now
            if error is not None or evaluation is None:
                row.last_error = error
                self.errors.append(AutomationError("sensor", s.name, error or "no result"))
                return []
            row.last_error = None
            row.state = evaluation.state
            if run is None:
                return []
            item = self._enqueue(session, run, now)
            if item is None:
                return []  # the same run is already queued or running
            row.last_fired = now
            row.fired += 1
            row.last_item = item
            return [replace(run, item=item)]

    def _sensor_run(self, s: Sensor, evaluation: Evaluation) -> Enqueued:
        from lakeforge.graph.selection import select

        selection = evaluation.selection or s.selection
        datasets = select(self.project.graph, selection) if evaluation.selection else s.datasets
        return Enqueued(
            kind="sensor",
            name=s.name,
            item=None,
            selection=list(selection),
            priority=s.config.priority,
            pool=self._pool(datasets, s.config.pool),
            reason=evaluation.reason,
            dedupe_key=f"sensor:{s.name}:{evaluation.key}"[:255],
        )

    def _pool(self, datasets: list[str], explicit: str | None) -> str:
        return route_pool(self.project.graph, datasets, self.project.config.pools, explicit)

    def _enqueue(self, session: Session, run: Enqueued, now: datetime) -> int | None:
        return self.queue.enqueue(
            selection=run.selection,
            priority=run.priority,
            pool=run.pool,
            reason=run.reason,
            dedupe_key=run.dedupe_key,
            now=now,
            session=session,
        )

    # -- state ----------------------------------------------------------------------------

    def _read(self, kind: str, name: str) -> ScheduleState | None:
        with self.metadata.session() as session:
            row = session.get(ScheduleStateRow, (kind, name))
            return None if row is None else ScheduleState.of(row)

    def states(self) -> dict[tuple[str, str], ScheduleState]:
        """Every stored state by (kind, name), including those of removed schedules."""
        with self.metadata.session() as session:
            rows = session.scalars(sql_select(ScheduleStateRow))
            return {(r.kind, r.name): ScheduleState.of(r) for r in rows}

    def status(self, now: datetime | None = None) -> list[AutomationStatus]:
        """Every schedule and sensor: trigger, next fire / evaluation, last fire, state."""
        at = now or self.clock()
        states = self.states()
        out: list[AutomationStatus] = []
        for s in self.schedules:
            st = states.get(("schedule", s.name))
            if st is None:
                text = "never evaluated"
            else:
                due = s.due(st.cursor, at)
                waiting = len(due.queue) + due.skipped
                more = "+" if due.skipped_more else ""
                text = f"{waiting}{more} tick(s) due" if waiting else "up to date"
                if st.skipped:
                    text += f", {st.skipped} skipped by catchup"
            out.append(
                AutomationStatus(
                    kind="schedule",
                    name=s.name,
                    trigger=s.describe(),
                    selection=s.selection,
                    priority=s.trigger.priority,
                    pool=self._pool(s.datasets, s.trigger.pool),
                    next_at=s.next_tick(at),
                    last_fired=st.last_fired if st else None,
                    last_item=st.last_item if st else None,
                    fired=st.fired if st else 0,
                    skipped=st.skipped if st else 0,
                    state=text,
                    error=None,
                    origin=s.origin,
                )
            )
        for sensor in self.sensors:
            st = states.get(("sensor", sensor.name))
            interval = timedelta(seconds=sensor.config.min_interval_seconds)
            next_at = at
            if st is not None and st.last_evaluated is not None:
                next_at = max(at, st.last_evaluated + interval)
            out.append(
                AutomationStatus(
                    kind="sensor",
                    name=sensor.name,
                    trigger=sensor.describe(),
                    selection=sensor.selection,
                    priority=sensor.config.priority,
                    pool=self._pool(sensor.datasets, sensor.config.pool),
                    next_at=next_at,
                    last_fired=st.last_fired if st else None,
                    last_item=st.last_item if st else None,
                    fired=st.fired if st else 0,
                    skipped=0,
                    state=describe_state(sensor, st.state if st else {}),
                    error=st.last_error if st else None,
                    origin=sensor.origin,
                )
            )
        return out

    # -- the loop -------------------------------------------------------------------------

    def run(
        self,
        stop: threading.Event,
        *,
        interval: float = 10.0,
        on_tick: Callable[[list[Enqueued], list[AutomationError]], None] | None = None,
    ) -> int:
        """Tick until ``stop`` is set; returns the number of ticks.

        Between ticks it waits ``interval`` seconds, or less when a schedule's next tick
        or a sensor's next evaluation comes sooner, so cron ticks are queued on time.
        """
        ticks = 0
        while not stop.is_set():
            queued = self.tick()
            ticks += 1
            if on_tick is not None:
                on_tick(queued, self.errors)
            stop.wait(self._wait(self.clock(), interval))
        return ticks

    def _wait(self, now: datetime, interval: float) -> float:
        wait = interval
        for s in self.schedules:
            upcoming = s.next_tick(now)
            if upcoming is not None:
                wait = min(wait, (upcoming - now).total_seconds())
        for sensor in self.sensors:
            wait = min(wait, sensor.config.min_interval_seconds)
        return max(MIN_WAIT, wait)


def _lock(session: Session, kind: str, name: str, now: datetime) -> tuple[ScheduleStateRow, bool]:
    """The state row of (kind, name), locked for this transaction; created when missing.
    Returns the row and whether this call created it."""
    key = (kind, name)
    row = session.get(ScheduleStateRow, key, with_for_update=True, populate_existing=True)
    if row is not None:
        return row, False
    fresh = ScheduleStateRow(kind=kind, name=name, state={}, fired=0, skipped=0, updated_at=now)
    try:
        with session.begin_nested():
            session.add(fresh)
        return fresh, True
    except IntegrityError:  # another scheduler created it first (PostgreSQL)
        row = session.get(ScheduleStateRow, key, with_for_update=True, populate_existing=True)
        if row is None:
            raise
        return row, False
