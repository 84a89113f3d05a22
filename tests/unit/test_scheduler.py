"""The scheduler on a fake clock: cron ticks, catchup, sensors, two schedulers at once,
priorities and pools; and `lakeforge schedule --once` + `lakeforge worker --once` end to end.

Everything is real (SQLite metadata store, Delta tables, the run queue and workers); only
time is simulated: ``Scheduler.tick(now)`` is given the time, nothing sleeps.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import textwrap
import threading
from collections import Counter
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.errors import ConfigError
from lakeforge.execution.executor import Runner
from lakeforge.metadata.models import Base
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import Project, load_project
from lakeforge.scheduling.queue import RunQueue
from lakeforge.scheduling.scheduler import Enqueued, Scheduler, ScheduleState
from lakeforge.scheduling.worker import Worker
from lakeforge.storage.delta import DeltaStore
from lakeforge.storage.maintenance import optimize

UTC = dt.UTC
T0 = dt.datetime(2024, 1, 1, tzinfo=UTC)  # a Monday, midnight UTC


class FakeClock:
    """A clock that only moves when told to."""

    def __init__(self, start: dt.datetime) -> None:
        self.now = start

    def __call__(self) -> dt.datetime:
        return self.now

    def advance(self, **delta: float) -> dt.datetime:
        self.now += dt.timedelta(**delta)
        return self.now


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def project_with(root: Path, config: str, models: dict[str, str] | None = None) -> Project:
    write(root, "lakeforge.yml", config)
    for name, sql in (models or {"numbers": "SELECT range AS n FROM range(5)"}).items():
        write(root, f"models/{name}.sql", sql)
    return load_project(root)


def scheduler_for(project: Project, clock: FakeClock | None = None) -> Scheduler:
    return Scheduler(project, MetadataStore(project.metadata_url), clock=clock)


def ticks_of(queued: list[Enqueued], name: str) -> list[dt.datetime]:
    return [q.tick for q in queued if q.name == name and q.tick is not None]


def hours(*values: int, day: dt.datetime = T0) -> list[dt.datetime]:
    return [day + dt.timedelta(hours=h) for h in values]


# -- cron ------------------------------------------------------------------------------------


def test_cron_fires_exactly_the_expected_runs_over_a_simulated_day(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        name: cron
        schedules:
          - {name: hourly, cron: "0 * * * *", select: numbers}
          - {name: office, cron: "*/20 9-11 * * 1-5", select: [numbers], priority: 3}
          - {name: berlin_3am, cron: "0 3 * * *", timezone: Europe/Berlin, select: numbers}
          - {name: daily, cron: "@daily", select: "+numbers"}
        """,
    )
    clock = FakeClock(T0)
    scheduler = scheduler_for(project, clock)
    queued: list[Enqueued] = []
    # A scheduler ticking every 7 minutes (not a divisor of an hour) for a whole day.
    while clock.now < T0 + dt.timedelta(days=1):
        queued += scheduler.tick()
        assert scheduler.errors == []
        clock.advance(minutes=7)

    assert ticks_of(queued, "hourly") == hours(*range(24))
    office = [T0 + dt.timedelta(hours=h, minutes=m) for h in (9, 10, 11) for m in (0, 20, 40)]
    assert ticks_of(queued, "office") == office
    assert ticks_of(queued, "berlin_3am") == hours(2)  # 03:00 in Berlin is 02:00 UTC in winter
    assert ticks_of(queued, "daily") == [T0]  # the next one is tomorrow at 00:00
    assert len(queued) == 24 + 9 + 1 + 1

    items = {i.id: i for i in RunQueue(scheduler.metadata).items(limit=1000)}
    assert len(items) == len(queued)
    for q in queued:
        item = items[q.item]  # type: ignore[index]
        assert q.tick is not None
        # Queued at the first evaluation at or after its tick, never before it.
        assert q.tick <= item.enqueued_at < q.tick + dt.timedelta(minutes=7)
        assert item.dedupe_key == f"schedule:{q.name}:{q.tick.isoformat()}"
        assert item.reason == f"schedule {q.name} @ {q.tick.isoformat()}"
        assert item.selection == {"daily": ["+numbers"]}.get(q.name, ["numbers"])
        assert item.priority == (3 if q.name == "office" else 0)
        assert item.pool == "default"


def test_a_new_schedule_starts_from_when_it_is_first_seen(tmp_path: Path) -> None:
    project = project_with(
        tmp_path, 'schedules: [{name: hourly, cron: "@hourly", select: numbers, catchup: true}]\n'
    )
    scheduler = scheduler_for(project)
    assert scheduler.tick(T0 + dt.timedelta(minutes=30)) == []  # no past ticks are queued
    assert ticks_of(scheduler.tick(T0 + dt.timedelta(minutes=61)), "hourly") == hours(1)
    # The clock going back queues nothing and does not move the cursor back.
    assert scheduler.tick(T0) == []
    assert ticks_of(scheduler.tick(T0 + dt.timedelta(hours=2)), "hourly") == hours(2)


def test_a_timezone_schedule_follows_daylight_saving_time(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        "schedules: [{name: b, cron: '30 2 * * *', timezone: Europe/Berlin, select: numbers}]\n",
    )
    scheduler = scheduler_for(project)
    start = dt.datetime(2024, 3, 30, tzinfo=UTC)
    queued = [q for h in range(72) for q in scheduler.tick(start + dt.timedelta(hours=h))]
    assert [q.tick.isoformat() for q in queued if q.tick] == [
        "2024-03-30T01:30:00+00:00",  # 02:30 CET
        "2024-03-31T01:00:00+00:00",  # 02:30 does not exist that day: 03:00 CEST
        "2024-04-01T00:30:00+00:00",  # 02:30 CEST
    ]


def test_catchup_off_on_and_bounded(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        schedules:
          - {name: latest_only, cron: "0 * * * *", select: numbers}
          - {name: every_tick, cron: "0 * * * *", select: numbers, catchup: true}
          - {name: newest_3, cron: "0 * * * *", select: numbers, catchup: true, max_catchup: 3}
        """,
    )
    scheduler = scheduler_for(project)
    first = scheduler.tick(T0)
    assert sorted(q.name for q in first) == ["every_tick", "latest_only", "newest_3"]

    # The scheduler was down from 00:00 to 10:30: ticks 01:00 … 10:00 were missed.
    later = T0 + dt.timedelta(hours=10, minutes=30)
    queued = scheduler.tick(later)
    assert ticks_of(queued, "latest_only") == hours(10)
    assert ticks_of(queued, "every_tick") == hours(*range(1, 11))
    assert ticks_of(queued, "newest_3") == hours(8, 9, 10)
    assert scheduler.tick(later) == []  # handled: nothing twice

    status = {s.name: s for s in scheduler.status(later)}
    assert (status["latest_only"].fired, status["latest_only"].skipped) == (2, 9)
    assert (status["every_tick"].fired, status["every_tick"].skipped) == (11, 0)
    assert (status["newest_3"].fired, status["newest_3"].skipped) == (4, 7)
    assert status["newest_3"].next_at == hours(11)[0]
    assert status["newest_3"].last_fired == later
    assert "7 skipped by catchup" in status["newest_3"].state


def test_the_loop_ticks_until_stopped_and_wakes_for_the_next_tick(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        schedules: [{name: hourly, cron: "0 * * * *", select: numbers}]
        sensors: [{name: landing, files: "landing/*.csv", select: numbers, min_interval: 45s}]
        """,
    )
    clock = FakeClock(T0 + dt.timedelta(minutes=59, seconds=58))
    scheduler = scheduler_for(project, clock)
    # The next tick (01:00) comes before the interval ends; then the sensor's interval.
    assert scheduler._wait(clock.now, interval=10) == 2
    assert scheduler._wait(T0 + dt.timedelta(minutes=30), interval=60) == 45

    stop = threading.Event()
    reported: list[list[str]] = []

    def on_tick(queued: list[Enqueued], errors: list[object]) -> None:
        assert errors == []
        reported.append([q.reason for q in queued])
        clock.advance(minutes=30)
        if len(reported) == 4:
            stop.set()  # as SIGTERM does: the loop ends after this evaluation

    assert scheduler.run(stop, interval=0.05, on_tick=on_tick) == 4
    assert reported == [
        [],  # 00:59:58, first seen
        ["schedule hourly @ 2024-01-01T01:00:00+00:00"],  # 01:29:58
        [],  # 01:59:58
        ["schedule hourly @ 2024-01-01T02:00:00+00:00"],  # 02:29:58
    ]


def test_dry_run_reports_without_writing(tmp_path: Path) -> None:
    write(tmp_path, "landing/a.csv", "x\n1\n")
    project = project_with(
        tmp_path,
        """
        schedules: [{name: h, cron: "@hourly", select: numbers}]
        sensors: [{name: landing, files: "landing/*.csv", select: numbers}]
        """,
    )
    scheduler = scheduler_for(project)
    planned = scheduler.tick(T0, dry_run=True)
    assert [(q.name, q.item) for q in planned] == [("h", None), ("landing", None)]
    assert RunQueue(scheduler.metadata).items() == []
    assert scheduler.states() == {}
    assert [q.name for q in scheduler.tick(T0)] == ["h", "landing"]  # nothing was consumed


# -- sensors ---------------------------------------------------------------------------------


def test_a_file_sensor_fires_once_per_new_file_set(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        sensors:
          - {name: landing, files: "landing/**/*.csv", select: numbers, min_interval: 1m,
             priority: 7}
        """,
    )
    clock = FakeClock(T0)
    scheduler = scheduler_for(project, clock)
    landing = tmp_path / "landing"

    def fire() -> list[str]:
        queued = scheduler.tick()
        assert scheduler.errors == []
        clock.advance(minutes=1)
        return [q.reason for q in queued]

    assert fire() == []  # no files yet
    write(tmp_path, "landing/a.csv", "x\n1\n")
    assert scheduler.tick(T0 + dt.timedelta(seconds=30)) == []  # within min_interval
    assert fire() == ["sensor landing: 1 new or changed file(s): landing/a.csv"]
    assert fire() == []  # the same file set
    write(tmp_path, "landing/b.csv", "x\n2\n")
    write(tmp_path, "landing/2024/c.csv", "x\n3\n")
    assert fire() == ["sensor landing: 2 new or changed file(s): landing/2024/c.csv, landing/b.csv"]
    (landing / "a.csv").unlink()
    assert fire() == []  # a file removed does not fire
    os.utime(landing / "b.csv", ns=(1, 1_700_000_000_000_000_000))  # touched: changed
    assert fire() == ["sensor landing: 1 new or changed file(s): landing/b.csv"]
    (landing / "d.csv").touch()
    assert fire() == []  # empty: probably still being written
    (landing / "d.csv").write_text("x\n4\n")
    assert fire() == ["sensor landing: 1 new or changed file(s): landing/d.csv"]

    items = RunQueue(scheduler.metadata).items()
    assert len(items) == 4
    assert {(i.selection[0] if i.selection else None, i.priority) for i in items} == {
        ("numbers", 7)
    }
    assert len({i.dedupe_key for i in items}) == 4
    (status,) = scheduler.status()
    assert (status.fired, status.state) == (4, "3 file(s) seen")


def test_an_upstream_change_fires_exactly_when_a_data_version_changes(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        sensors: [{name: raw_view_watch, datasets: raw_v, select: doubled, min_interval: 0}]
        """,
        {
            "raw": """
                /* lakeforge
                source: {path: "landing/*.csv"}
                */
                SELECT * FROM source
                """,
            "raw_v": "/* lakeforge\nkind: view\n*/\nSELECT * FROM raw",
            "doubled": """
                /* lakeforge
                on_upstream_change: true
                */
                SELECT x * 2 AS y FROM raw
                """,
        },
    )
    clock = FakeClock(T0)
    scheduler = scheduler_for(project, clock)
    assert {s.name: s.watched for s in scheduler.sensors} == {
        "raw_view_watch": ["raw"],  # a view stands for the tables it reads
        "dataset:doubled": ["raw"],
    }
    runner = Runner(project, metadata=scheduler.metadata)

    def fired() -> list[str]:
        queued = scheduler.tick(clock.advance(minutes=1))
        assert scheduler.errors == []
        return sorted(f"{q.name}: {q.reason.split(': ', 1)[1]}" for q in queued)

    assert fired() == []  # the first evaluation records the versions (no table yet)
    write(tmp_path, "landing/a.csv", "x\n1\n")
    assert fired() == []  # new files, but the table did not change
    assert runner.run(["raw"]).ok
    assert fired() == [
        "dataset:doubled: raw (no table) → v0",
        "raw_view_watch: raw (no table) → v0",
    ]
    assert fired() == []
    assert runner.run(["raw"]).ok  # nothing new to ingest: no new version
    assert fired() == []
    write(tmp_path, "landing/b.csv", "x\n2\n")
    assert runner.run(["raw"]).ok
    assert fired() == ["dataset:doubled: raw v0 → v1", "raw_view_watch: raw v0 → v1"]
    store = DeltaStore(project.storage_root)
    compacted = optimize(store, "raw")
    assert compacted.version == 2 and compacted.files_removed == 2  # a maintenance commit
    assert fired() == []  # optimize changes no rows: no trigger
    write(tmp_path, "landing/c.csv", "x\n3\n")
    assert runner.run(["raw"]).ok
    assert fired() == ["dataset:doubled: raw v1 → v3", "raw_view_watch: raw v1 → v3"]

    # The queued runs build the dataset (two sensors per change: one run each, the
    # second finds it up to date).
    worker = Worker(project, metadata=scheduler.metadata, heartbeat_seconds=0.05)
    stats = worker.run(threading.Event(), once=True)
    assert (stats.done, stats.failed) == (6, 0)
    assert sorted(store.read("doubled").to_table().column("y").to_pylist()) == [2, 4, 6]


def test_python_sensors_decorated_and_referenced(tmp_path: Path) -> None:
    write(
        tmp_path,
        "pipelines/watch.py",
        """
        import lakeforge as lf

        @lf.sensor(select=["numbers"], min_interval="10m", pool="exports")
        def export_ready(context):
            marker = context.project_root / "exports" / "_READY"
            context.cursor = (context.cursor or 0) + 1  # evaluations so far
            if not marker.exists():
                return False
            return lf.RunRequest(key=marker.read_text().strip(), reason="export ready")

        @lf.sensor(name="broken")
        def broken_sensor():
            raise RuntimeError("the export API is down")
        """,
    )
    write(
        tmp_path,
        "sensor_checks/flags.py",
        """
        def flag_set(context):
            return (context.project_root / "flag").exists()
        """,
    )
    project = project_with(
        tmp_path,
        "sensors: [{name: flag, python: 'sensor_checks.flags:flag_set', select: [numbers], "
        "min_interval: 0}]\n",
    )
    clock = FakeClock(T0)
    scheduler = scheduler_for(project, clock)
    assert [s.name for s in scheduler.sensors] == ["flag", "export_ready", "broken"]

    def tick(**delta: float) -> list[tuple[str, str]]:
        return [(q.name, q.dedupe_key) for q in scheduler.tick(clock.advance(**delta))]

    assert tick() == []
    errors = {e.name: e.message for e in scheduler.errors}
    assert errors == {"broken": "RuntimeError: the export API is down"}
    write(tmp_path, "exports/_READY", "batch-1\n")
    (tmp_path / "flag").touch()
    assert tick(minutes=1) == [("flag", "sensor:flag:2024-01-01T00:01:00+00:00")]  # 10m apart
    assert tick(minutes=10) == [
        ("flag", "sensor:flag:2024-01-01T00:11:00+00:00"),
        ("export_ready", "sensor:export_ready:batch-1"),
    ]
    (tmp_path / "flag").unlink()
    assert tick(minutes=10) == []  # the same key is not requested twice
    write(tmp_path, "exports/_READY", "batch-2\n")
    assert tick(minutes=10) == [("export_ready", "sensor:export_ready:batch-2")]

    status = {s.name: s for s in scheduler.status()}
    assert status["export_ready"].state == "cursor 4, last key batch-2"
    assert status["export_ready"].pool == "exports"
    assert status["broken"].error == "RuntimeError: the export API is down"
    assert status["flag"].fired == 2
    items = RunQueue(scheduler.metadata).items()
    assert [i.reason for i in items if i.pool == "exports"] == ["export ready", "export ready"]


# -- concurrency, priorities, pools ----------------------------------------------------------


def test_two_schedulers_ticking_at_once_queue_each_tick_once(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        schedules:
          - {name: quarter, cron: "*/15 * * * *", select: numbers}
          - {name: hourly, cron: "0 * * * *", select: numbers, catchup: true}
        sensors: [{name: landing, files: "landing/*.csv", select: numbers, min_interval: 0}]
        """,
    )
    write(tmp_path, "landing/a.csv", "x\n1\n")
    times = [T0 + dt.timedelta(minutes=5 * i) for i in range(37)]  # 00:00 … 03:00
    MetadataStore(project.metadata_url).close()  # the schema, before the race
    barrier = threading.Barrier(2)
    queued: list[list[Enqueued]] = [[], []]
    failures: list[BaseException] = []

    def run(n: int) -> None:
        # Each scheduler has its own store (connections), as two processes would.
        scheduler = scheduler_for(load_project(tmp_path))
        try:
            for at in times:
                barrier.wait(timeout=30)
                queued[n] += scheduler.tick(at)
                assert scheduler.errors == []
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in (0, 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    both = queued[0] + queued[1]
    assert len(both) == 13 + 4 + 1  # each tick and the sensor's firing once, by either one
    assert sorted(ticks_of(both, "quarter")) == [
        T0 + dt.timedelta(minutes=15 * i) for i in range(13)
    ]
    assert sorted(ticks_of(both, "hourly")) == hours(0, 1, 2, 3)
    assert [q.name for q in both if q.kind == "sensor"] == ["landing"]
    items = RunQueue(MetadataStore(project.metadata_url)).items(limit=100)
    assert len(items) == 18
    assert Counter(i.dedupe_key for i in items).most_common(1)[0][1] == 1


class PausingScheduler(Scheduler):
    """A scheduler that stops right after reading one state row, until told to go on: the
    worst interleaving of two schedulers, made deterministic."""

    pause_on: tuple[str, str] = ("", "")

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.has_read = threading.Event()
        self.go_on = threading.Event()

    def _read(self, kind: str, name: str) -> ScheduleState | None:
        state = super()._read(kind, name)
        if (kind, name) == self.pause_on:
            self.has_read.set()
            assert self.go_on.wait(30)
        return state


@pytest.mark.parametrize(
    "backend", ["sqlite", pytest.param("postgresql", marks=pytest.mark.integration)]
)
def test_a_scheduler_holding_stale_state_queues_nothing_twice(
    tmp_path: Path, backend: str, request: pytest.FixtureRequest
) -> None:
    metadata = "" if backend == "sqlite" else request.getfixturevalue("postgres_database")()
    project = project_with(
        tmp_path,
        f"""
        metadata_url: {metadata or "null"}
        schedules: [{{name: hourly, cron: "0 * * * *", select: numbers}}]
        sensors: [{{name: landing, files: "landing/*.csv", select: numbers, min_interval: 0}}]
        """,
    )
    write(tmp_path, "landing/a.csv", "x\n1\n")
    fast = scheduler_for(project)
    slow = PausingScheduler(project, MetadataStore(project.metadata_url))
    queue = RunQueue(fast.metadata)

    def finish_all() -> None:
        # Workers finish the runs at once, which frees their dedupe keys: only the state
        # row can keep the slow scheduler from queueing them again.
        while (item := queue.claim("w")) is not None:
            queue.finish(item.id, status="done")

    def race(at: dt.datetime, pause_on: tuple[str, str]) -> tuple[list[str], list[str]]:
        slow.pause_on = pause_on
        slow.has_read.clear()
        slow.go_on.clear()
        result: list[Enqueued] = []
        thread = threading.Thread(target=lambda: result.extend(slow.tick(at)))
        thread.start()
        assert slow.has_read.wait(30)  # the slow one has read the state …
        first = [q.dedupe_key for q in fast.tick(at)]  # … the fast one queues meanwhile
        finish_all()
        slow.go_on.set()
        thread.join()
        assert slow.errors == [] and fast.errors == []
        return first, [q.dedupe_key for q in result]

    assert len(fast.tick(T0)) == 2  # 00:00 and a.csv
    finish_all()

    fast_one, slow_one = race(T0 + dt.timedelta(hours=1), ("schedule", "hourly"))
    assert fast_one == ["schedule:hourly:2024-01-01T01:00:00+00:00"]
    assert slow_one == []  # it read cursor 00:00, but recomputed under the lock

    write(tmp_path, "landing/b.csv", "x\n2\n")
    fast_two, slow_two = race(T0 + dt.timedelta(hours=2), ("sensor", "landing"))
    # The slow one got to the schedule first; the fast one to the sensor. The slow one
    # evaluated b.csv as new too, but another evaluation was recorded meanwhile.
    assert slow_two == ["schedule:hourly:2024-01-01T02:00:00+00:00"]
    assert [k.split(":")[0:2] for k in fast_two] == [["sensor", "landing"]]
    reasons = Counter(i.reason for i in queue.items(limit=100))
    assert reasons == {
        "schedule hourly @ 2024-01-01T00:00:00+00:00": 1,
        "schedule hourly @ 2024-01-01T01:00:00+00:00": 1,
        "schedule hourly @ 2024-01-01T02:00:00+00:00": 1,
        "sensor landing: 1 new or changed file(s): landing/a.csv": 1,
        "sensor landing: 1 new or changed file(s): landing/b.csv": 1,
    }


def test_priorities_and_pools_order_the_claims(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        """
        pools: {"tag:heavy": 1, etl: 5}
        schedules:
          - {name: low, cron: "@hourly", select: light}
          - {name: high, cron: "@hourly", select: light, priority: 10}
          - {name: heavy_a, cron: "@hourly", select: big, priority: 5}
          - {name: heavy_b, cron: "@hourly", select: "tag:heavy", priority: 5}
          - {name: pinned, cron: "@hourly", select: big, priority: 1, pool: etl}
        """,
        {
            "light": "SELECT 1 AS x",
            "big": "/* lakeforge\ntags: [heavy]\n*/\nSELECT 2 AS x",
        },
    )
    scheduler = scheduler_for(project)
    queued = {q.name: q for q in scheduler.tick(T0)}
    assert {n: q.pool for n, q in queued.items()} == {
        "low": "default",
        "high": "default",
        "heavy_a": "tag:heavy",  # routed by the tag of the dataset it runs
        "heavy_b": "tag:heavy",
        "pinned": "etl",  # an explicit pool wins
    }
    queue = RunQueue(scheduler.metadata)
    pools = dict(project.config.pools)

    def claim() -> str | None:
        item = queue.claim("w", pools=pools, now=T0)
        return None if item is None else (item.reason or "").split()[1]

    # Highest priority first; the second heavy run waits while the pool's one slot is taken.
    assert [claim() for _ in range(5)] == ["high", "heavy_a", "pinned", "low", None]
    running = {i.reason.split()[1]: i.id for i in queue.items(["claimed"]) if i.reason}
    queue.finish(running["heavy_a"], status="done")
    assert claim() == "heavy_b"

    # `lakeforge queue add` routes by tag the same way, unless told otherwise.
    for args, pool in (
        (["big"], "tag:heavy"),
        (["light"], "default"),
        (["big", "--pool", "etl"], "etl"),
    ):
        added = CliRunner().invoke(app, ["-C", str(tmp_path), "queue", "add", *args])
        assert added.exit_code == 0, added.output
        assert f"(pool {pool})" in added.output


# -- configuration ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("config", "message"),
    [
        (
            'schedules: [{name: x, cron: "0 25 * * *", select: numbers}]',
            "lakeforge.yml:1: schedules.0.cron: invalid cron expression '0 25 * * *'",
        ),
        (
            'schedules: [{name: x, cron: "@daily", timezone: Mars/Olympus, select: numbers}]',
            "schedules.0.timezone: unknown timezone 'Mars/Olympus'",
        ),
        (
            'schedules: [{name: x, cron: "@daily"}]',
            "schedules.0.select: Field required",
        ),
        (
            'schedules: [{name: "a:b", cron: "@daily", select: numbers}]',
            "schedules.0.name: String should match pattern",
        ),
        (
            "schedules: [{name: x, cron: '@daily', select: numbers},"
            " {name: x, cron: '@hourly', select: numbers}]",
            "two schedules are named 'x'",
        ),
        (
            "sensors: [{name: s, files: 'a/*', datasets: [numbers], select: numbers}]",
            "a sensor needs exactly one of files, datasets or python (found files, datasets)",
        ),
        (
            "sensors: [{name: s, files: 'a/*'}]",
            "a files sensor needs `select`",
        ),
        (
            "sensors: [{name: s, files: 's3://bucket/*.csv', select: numbers}]",
            "file sensors watch local paths only",
        ),
    ],
)
def test_config_errors_name_the_file_and_key(tmp_path: Path, config: str, message: str) -> None:
    write(tmp_path, "lakeforge.yml", config + "\n")
    write(tmp_path, "models/numbers.sql", "SELECT 1 AS n")
    with pytest.raises(ConfigError) as info:
        load_project(tmp_path)
    assert message in str(info.value)


def test_errors_found_when_the_scheduler_resolves_the_project(tmp_path: Path) -> None:
    write(tmp_path, "models/numbers.sql", "SELECT 1 AS n")
    write(tmp_path, "lakeforge.yml", "schedules: [{name: x, cron: '@daily', select: numbrs}]\n")
    with pytest.raises(ConfigError, match="schedule 'x' select: no dataset named 'numbrs'") as e:
        scheduler_for(load_project(tmp_path))
    assert e.value.hint == "did you mean 'numbers'?"

    write(tmp_path, "lakeforge.yml", "sensors: [{name: s, python: 'nowhere:f', select: [a]}]\n")
    with pytest.raises(ConfigError, match="sensor 's': cannot import 'nowhere'"):
        scheduler_for(load_project(tmp_path))

    write(tmp_path, "lakeforge.yml", "name: x\n")
    write(tmp_path, "models/numbers.sql", "/* lakeforge\non_upstream_change: true\n*/\nSELECT 1")
    with pytest.raises(ConfigError, match="'numbers' has on_upstream_change: true but reads no"):
        scheduler_for(load_project(tmp_path))

    write(
        tmp_path, "models/numbers.sql", "/* lakeforge\nkind: view\nschedule: '@daily'\n*/\nSELECT 1"
    )
    with pytest.raises(ConfigError, match="a view is computed when read: put schedule"):
        load_project(tmp_path)


def test_dataset_schedule_keys_are_not_fingerprinted(tmp_path: Path) -> None:
    from lakeforge.graph.fingerprint import fingerprint

    write(tmp_path, "lakeforge.yml", "name: x\n")
    write(tmp_path, "models/a.sql", "SELECT 1 AS n")
    write(tmp_path, "models/b.sql", "SELECT n FROM a")
    before = load_project(tmp_path).graph
    header = "on_upstream_change: true\nschedule: {cron: '0 3 * * *', timezone: Europe/Paris}"
    write(tmp_path, "models/b.sql", f"/* lakeforge\n{header}\n*/\nSELECT n FROM a")
    after = load_project(tmp_path).graph
    assert after["b"].config.schedule is not None
    assert after["b"].config.schedule.timezone == "Europe/Paris"
    assert fingerprint(after["b"], after) == fingerprint(before["b"], before)


def test_migration_0006_builds_exactly_the_model(tmp_path: Path) -> None:
    from lakeforge.metadata.store import _shipped_head

    url = f"sqlite:///{tmp_path / 'm.db'}"
    MetadataStore(url).close()
    engine = create_engine(url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "version_table": "lf_alembic_version",
                "include_object": lambda obj, name, type_, *_: (
                    type_ != "table" or name == "lf_schedule_state"
                ),
            },
        )
        assert context.get_current_heads() == (_shipped_head(),)  # 0006 or a later one
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


# -- end to end: the CLI ---------------------------------------------------------------------


def test_schedule_once_then_worker_once_builds_the_scheduled_datasets(tmp_path: Path) -> None:
    project = project_with(
        tmp_path,
        'schedules: [{name: nightly, cron: "0 2 * * *", select: "+daily", priority: 2}]\n',
        {
            "numbers": """
                /* lakeforge
                schedule: "0 * * * *"
                */
                SELECT range AS n FROM range(5)
                """,
            "daily": """
                /* lakeforge
                partitions: {daily: {start: 2024-01-01, end: 2024-01-04, column: day}}
                */
                SELECT DATE '2024-01-01' + CAST(n % 3 AS INTEGER) AS day, count(*) AS c
                FROM numbers
                WHERE DATE '2024-01-01' + CAST(n % 3 AS INTEGER) >= @start
                  AND DATE '2024-01-01' + CAST(n % 3 AS INTEGER) < @end
                GROUP BY ALL
                """,
        },
    )
    # A scheduler evaluated the project two days ago (the real clock is used below).
    now = dt.datetime.now(UTC)
    metadata = MetadataStore(project.metadata_url)
    seeded = Scheduler(project, metadata, clock=FakeClock(now - dt.timedelta(days=2)))
    seeded.tick()
    cli = CliRunner()

    listing = cli.invoke(app, ["-C", str(tmp_path), "schedule", "ls", "--json"])
    assert listing.exit_code == 0, listing.output
    listed = {s["name"]: s for s in json.loads(listing.output)}
    assert set(listed) == {"nightly", "dataset:numbers"}
    assert listed["nightly"]["trigger"] == "0 2 * * * (UTC)"
    assert listed["dataset:numbers"]["state"].endswith("tick(s) due")

    dry = cli.invoke(app, ["-C", str(tmp_path), "schedule", "--dry-run", "--json"])
    assert dry.exit_code == 0, dry.output
    assert json.loads(dry.output)["dry_run"] is True
    assert RunQueue(seeded.metadata).items() == []

    once = cli.invoke(app, ["-C", str(tmp_path), "schedule", "--once", "--json"])
    assert once.exit_code == 0, once.output
    out = json.loads(once.output)
    assert out["errors"] == []
    # Catchup is off: one run per schedule, for its newest missed tick.
    assert sorted(q["name"] for q in out["enqueued"]) == ["dataset:numbers", "nightly"]
    assert [q["selection"] for q in json.loads(dry.output)["enqueued"]] == [
        q["selection"] for q in out["enqueued"]
    ]
    again = cli.invoke(app, ["-C", str(tmp_path), "schedule", "--once", "--json"])
    assert json.loads(again.output)["enqueued"] == []

    worker = cli.invoke(app, ["-C", str(tmp_path), "worker", "--once"])
    assert worker.exit_code == 0, worker.output
    assert "2 done, 0 failed" in worker.output
    store = DeltaStore(project.storage_root)
    assert store.read("numbers").count_rows() == 5
    days = store.read("daily").to_table().sort_by("day").column("day").to_pylist()
    assert [str(d) for d in days] == ["2024-01-01", "2024-01-02", "2024-01-03"]
    items = RunQueue(seeded.metadata).items()
    assert [(i.status, i.priority) for i in items] == [("done", 2), ("done", 0)]


def test_schedule_cli_usage_and_failures(tmp_path: Path) -> None:
    write(tmp_path, "pipelines/s.py", """
        import lakeforge as lf

        @lf.sensor(select="numbers", min_interval=0)
        def failing(context):
            return 42
        """)  # fmt: skip
    project_with(tmp_path, "name: x\n")
    cli = CliRunner()
    usage = cli.invoke(app, ["-C", str(tmp_path), "schedule", "--json"])
    assert usage.exit_code == 2 and "--json needs --once or --dry-run" in usage.output
    failed = cli.invoke(app, ["-C", str(tmp_path), "schedule", "--once"])
    assert failed.exit_code == 1
    assert "sensor failing: sensor 'failing' returned int" in failed.output
    listing = cli.invoke(app, ["-C", str(tmp_path), "schedule", "ls"])
    assert listing.exit_code == 0 and "failing" in listing.output
