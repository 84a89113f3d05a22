"""Cron schedules: when their ticks fall, which ticks are due, and catchup.

A schedule comes from ``schedules:`` in lakeforge.yml or from a dataset's ``schedule:``
key (shorthand for a schedule named ``dataset:<name>`` that selects that one dataset).
Each tick is a point in time given by a croniter expression read in the schedule's
timezone. The scheduler (``scheduler.py``) remembers, per schedule, the time up to which
ticks were handled (its *cursor*); the ticks after the cursor and at or before *now* are
due. Catchup decides how many of them are queued:

- ``catchup: false`` (default): only the newest due tick; older ones are skipped.
- ``catchup: true``: every due tick, but at most the newest ``max_catchup``.

Everything here is pure: time is a parameter. croniter is imported when a schedule is
first evaluated, never when the CLI starts.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from datetime import UTC, datetime, timedelta
from functools import cached_property
from typing import TYPE_CHECKING, Any

from lakeforge.errors import ConfigError, LakeforgeError, Location

if TYPE_CHECKING:
    from zoneinfo import ZoneInfo

    from lakeforge.project.loader import Project
    from lakeforge.scheduling.spec import CronTrigger

SKIPPED_COUNT_LIMIT = 1000  # older due ticks counted one by one up to this many
_JUST_BEFORE = timedelta(microseconds=1)


@dataclass(frozen=True)
class DueTicks:
    """The due ticks of a schedule between its cursor and now.

    Attributes:
        queue: the ticks to queue, oldest first (UTC).
        skipped: due ticks not queued (catchup off, or beyond ``max_catchup``); counting
            stops at ``SKIPPED_COUNT_LIMIT`` (``skipped_more`` then says there are more).
    """

    queue: list[datetime]
    skipped: int = 0
    skipped_more: bool = False


@dataclass(frozen=True)
class Schedule:
    """A schedule of the project, its selection resolved against the graph.

    Attributes:
        name: ``hourly_gold`` (lakeforge.yml) or ``dataset:orders`` (a dataset's key).
        trigger: cron, timezone, catchup, priority, pool.
        selection: selection terms, as queued (the worker resolves them when it runs).
        datasets: the datasets the selection resolves to now (pool routing by tag).
        origin: where it is declared, for messages.
    """

    name: str
    trigger: CronTrigger
    selection: list[str]
    datasets: list[str]
    origin: str

    @cached_property
    def zone(self) -> ZoneInfo:
        from zoneinfo import ZoneInfo

        return ZoneInfo(self.trigger.timezone)

    def _iter(self, start: datetime) -> Any:
        from croniter import croniter

        return croniter(self.trigger.cron, start.astimezone(self.zone))

    def ticks_back(self, until: datetime) -> Iterator[datetime]:
        """Ticks at or before ``until``, newest first (UTC; an endless iterator)."""
        it = self._iter(until + _JUST_BEFORE)
        while True:
            yield _utc(it.get_prev(datetime))

    def next_tick(self, after: datetime) -> datetime | None:
        """The first tick strictly after ``after`` (UTC); None when the expression never
        fires again (e.g. ``0 0 30 2 *``)."""
        from croniter import CroniterError

        try:
            return _utc(self._iter(after).get_next(datetime))
        except CroniterError:
            return None

    def due(self, cursor: datetime | None, now: datetime) -> DueTicks:
        """The ticks in ``(cursor, now]`` to queue, applying catchup.

        Without a cursor (the schedule was never evaluated) only a tick exactly at ``now``
        is due: a new schedule starts from the time it is first seen, it does not queue the
        past.
        """
        from croniter import CroniterError

        after = now - _JUST_BEFORE if cursor is None else cursor
        if after >= now:
            return DueTicks([])
        keep = self.trigger.max_catchup if self.trigger.catchup else 1
        newest: list[datetime] = []
        skipped = 0
        try:
            for tick in self.ticks_back(now):
                if tick <= after:
                    break
                if len(newest) < keep:
                    newest.append(tick)
                    continue
                skipped += 1
                if skipped >= SKIPPED_COUNT_LIMIT:
                    return DueTicks(newest[::-1], skipped, skipped_more=True)
        except CroniterError:
            pass  # the expression has no tick before this one (e.g. a fixed date)
        return DueTicks(newest[::-1], skipped)

    def describe(self) -> str:
        """``0 * * * * (UTC), catchup 24``."""
        t = self.trigger
        return f"{t.cron} ({t.timezone})" + (f", catchup {t.max_catchup}" if t.catchup else "")


def _utc(value: datetime) -> datetime:
    return value.astimezone(UTC)


def schedules_of(project: Project) -> list[Schedule]:
    """The project's schedules: ``schedules:`` of lakeforge.yml, then each dataset's
    ``schedule:`` in dependency order; selections are checked against the graph.

    Raises:
        ConfigError: a selection names no dataset of the project.
    """
    from lakeforge.graph.selection import select

    config_file = Location(str(project.root / "lakeforge.yml"))
    out: list[Schedule] = []
    for s in project.config.schedules:
        try:
            names = select(project.graph, s.select)
        except LakeforgeError as exc:
            raise ConfigError(
                f"schedule {s.name!r} select: {exc.message}", location=config_file, hint=exc.hint
            ) from None
        out.append(Schedule(s.name, s, list(s.select), names, "lakeforge.yml"))
    for name in project.graph.order:
        ds = project.graph[name]
        if ds.config.schedule is not None:
            out.append(
                Schedule(f"dataset:{name}", ds.config.schedule, [name], [name], str(ds.location))
            )
    return out
