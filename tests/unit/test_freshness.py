"""Freshness SLAs: the pure judging with an explicit ``now``, the Delta log reading, and
``evaluate`` on real projects (unpartitioned and daily-partitioned tables)."""

from __future__ import annotations

import datetime as dt
import shutil
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from deltalake import DeltaTable, write_deltalake
from pydantic import ValidationError

from lakeforge.errors import ConfigError
from lakeforge.execution.executor import Runner
from lakeforge.graph.partitions import Daily
from lakeforge.metadata.intervals import IntervalLedger
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.scheduling import freshness
from lakeforge.scheduling.freshness import (
    evaluate,
    evaluate_partitions,
    evaluate_updates,
    format_age,
    judge,
    last_data_change,
)
from lakeforge.scheduling.spec import FreshnessSLA
from lakeforge.storage.delta import DeltaStore

UTC = dt.UTC
HOUR = dt.timedelta(hours=1)
SLA = FreshnessSLA(warn_after="2h", error_after="6h")
T0 = dt.datetime(2024, 1, 10, 12, tzinfo=UTC)


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


# -- judging ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("age", "status"),
    [
        (0, "fresh"),
        (7200, "fresh"),  # exactly at warn_after: not older than it
        (7200.001, "warn"),
        (21600, "warn"),  # exactly at error_after
        (21600.001, "error"),
        (10**9, "error"),
    ],
)
def test_judge_limits_are_exclusive(age: float, status: str) -> None:
    assert judge(age, SLA) == status


def test_warn_only_and_error_only_slas() -> None:
    warn_only = FreshnessSLA(warn_after="1h")
    assert [judge(a, warn_only) for a in (3600, 3601, 10**9)] == ["fresh", "warn", "warn"]
    error_only = FreshnessSLA(error_after=90)
    assert [judge(a, error_only) for a in (90, 91)] == ["fresh", "error"]
    assert warn_only.describe() == "warn 1h" and error_only.describe() == "error 90s"


def test_evaluate_updates_by_age() -> None:
    last = T0 - 3 * HOUR
    result = evaluate_updates("orders", SLA, last, T0)
    assert (result.status, result.age_seconds, result.last_update) == ("warn", 10800.0, last)
    assert result.breached and not result.partitioned
    assert result.detail == "last data change 3h ago (2024-01-10 09:00 UTC)"
    assert result.threshold == "warn 2h, error 6h"
    assert evaluate_updates("orders", SLA, T0 - 6 * HOUR, T0).status == "warn"  # at the limit
    assert evaluate_updates("orders", SLA, T0 - 7 * HOUR, T0).status == "error"
    # A commit stamped a little after `now` (clock skew between machines) is age 0.
    ahead = evaluate_updates("orders", SLA, T0 + dt.timedelta(seconds=5), T0)
    assert (ahead.status, ahead.age_seconds) == ("fresh", 0.0)
    assert ahead.to_dict()["age"] == "0s" and ahead.to_dict()["last_update"].startswith("2024")


def test_never_built_is_the_worst_level_the_sla_declares() -> None:
    never = evaluate_updates("orders", SLA, None, T0)
    assert (never.status, never.age_seconds, never.detail) == ("error", None, "never built")
    # A warn-only SLA never reaches error, not even for a table that was never built
    # (as for a partitioned table with nothing built).
    warn_only = FreshnessSLA(warn_after="2h")
    assert evaluate_updates("orders", warn_only, None, T0).status == "warn"
    daily = Daily(start="2024-01-01", column="day")
    assert evaluate_partitions("orders", warn_only, daily, {}, T0).status == "warn"


def test_evaluate_partitions_late_pending_and_edges() -> None:
    daily = Daily(start="2024-01-01", column="day")
    built = {f"2024-01-0{d}": "built" for d in range(1, 10)}  # up to 2024-01-09
    # 2024-01-10 12:00: the newest complete partition (01-09) is built.
    result = evaluate_partitions("daily", SLA, daily, built, T0)
    assert (result.status, result.age_seconds, result.partitioned) == ("fresh", 0.0, True)
    assert result.detail == "9 of 9 partition(s) built"
    # Today's partition is not complete: it is not judged, however late in the day.
    assert evaluate_partitions("daily", SLA, daily, built, T0 + 11 * HOUR).status == "fresh"
    # 2024-01-11 01:00: 01-10 is complete, 1h past its end, not built — within the SLA.
    pending = evaluate_partitions("daily", SLA, daily, built, T0 + 13 * HOUR)
    assert pending.status == "fresh" and pending.late_count == 0
    assert pending.detail == "9 of 10 partition(s) built, 1 within the SLA"
    at_limit = evaluate_partitions("daily", SLA, daily, built, T0 + 14 * HOUR)
    assert at_limit.status == "fresh"  # exactly warn_after past its end
    warn = evaluate_partitions("daily", SLA, daily, built, T0 + 15 * HOUR)
    assert (warn.status, warn.age_seconds) == ("warn", 3 * 3600)
    assert warn.late_partitions == ["2024-01-10"] and warn.late_count == 1
    error = evaluate_partitions("daily", SLA, daily, built, T0 + 19 * HOUR)
    assert error.status == "error"
    # A gap in the middle: the oldest late partition sets the lateness.
    gap = {**built, "2024-01-05": "failed", "2024-01-07": "running"}
    del gap["2024-01-03"]
    result = evaluate_partitions("daily", SLA, daily, gap, T0)
    assert result.status == "error"
    assert result.late_partitions == ["2024-01-03", "2024-01-05", "2024-01-07"]
    assert result.age_seconds == (T0.replace(tzinfo=None) - dt.datetime(2024, 1, 4)).total_seconds()
    assert result.detail == (
        "3 partition(s) not built: 2024-01-03, 2024-01-05, 2024-01-07; "
        "2024-01-03 is 6d 12h past its end"
    )


def test_evaluate_partitions_lists_a_bounded_number_of_keys() -> None:
    start = dt.datetime(2024, 1, 1, tzinfo=UTC)
    daily = Daily(start=start, column="day")
    now = start + dt.timedelta(days=100, hours=7)
    result = evaluate_partitions("d", SLA, daily, {}, now)
    assert result.late_count == 100
    assert len(result.late_partitions) == freshness.LATE_SHOWN
    assert result.late_partitions[0] == "2024-01-01"
    assert result.detail.startswith("100 partition(s) not built: 2024-01-01, 2024-01-02, ")


def test_no_complete_partition_yet() -> None:
    daily = Daily(start="2024-01-10", column="day")
    result = evaluate_partitions("d", SLA, daily, {}, T0)
    assert (result.status, result.detail) == ("fresh", "no complete partition yet")


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({}, "freshness needs warn_after, error_after or both"),
        ({"warn_after": "6h", "error_after": "2h"}, "warn_after (6h) must be shorter"),
        ({"warn_after": "2h", "error_after": "2h"}, "must be shorter than error_after"),
        ({"warn_after": "2x"}, "invalid duration '2x': use e.g. 90s"),
        ({"error_after": "0s"}, "must be longer than zero"),
        ({"error_after": -5}, "must be longer than zero"),
        ({"warn_after": 7200, "error_after": 3600}, "warn_after (7200s) must be shorter"),
        ({"warn_after": True}, "invalid duration True"),
        ({"warn_after": "1h", "error": "2h"}, "Extra inputs are not permitted"),
    ],
)
def test_invalid_slas_are_refused_with_a_clear_message(
    config: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValidationError, match=message.replace("(", r"\(").replace(")", r"\)")):
        FreshnessSLA.model_validate(config)


def test_an_invalid_sla_names_the_model_file_and_line(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: f\n")
    write(
        tmp_path,
        "models/orders.sql",
        """
        /* lakeforge
        layer: silver
        freshness: {warn_after: 6h, error_after: 2h}
        */
        SELECT 1 AS id
        """,
    )
    with pytest.raises(ConfigError) as caught:
        load_project(tmp_path)
    assert str(caught.value) == (
        "models/orders.sql:3: [orders] freshness: freshness warn_after (6h) must be shorter than "
        "error_after (2h)"
    )
    write(
        tmp_path,
        "models/orders.sql",
        """
        /* lakeforge
        kind: view
        freshness: {warn_after: 2h}
        */
        SELECT 1 AS id
        """,
    )
    with pytest.raises(ConfigError, match="a view is computed when read: put freshness on a"):
        load_project(tmp_path)


def test_format_age() -> None:
    assert [format_age(s) for s in (0, 45, 60, 3600, 3660, 7322, 90061, 86460)] == [
        "0s",
        "45s",
        "1m",
        "1h",
        "1h 1m",
        "2h 2m",
        "1d 1h",
        "1d 1m",
    ]


# -- reading the Delta log ----------------------------------------------------------------


def _commit_time(table: DeltaTable, version: int) -> dt.datetime:
    (entry,) = [h for h in table.history() if h["version"] == version]
    return dt.datetime.fromtimestamp(entry["timestamp"] / 1000, UTC)


def test_maintenance_and_empty_commits_are_not_data_changes(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "lake"))
    assert last_data_change(store, "t") is None
    uri = store.uri("t")
    rows = pa.table({"a": [1, 2]})
    write_deltalake(uri, rows)
    write_deltalake(uri, rows, mode="append")  # v1: the last change of the rows
    write_deltalake(uri, rows.schema.empty_table(), mode="append")  # v2: empty commit
    DeltaTable(uri).optimize.compact()  # v3: OPTIMIZE
    table = DeltaTable(uri)
    assert [h["operation"] for h in table.history()][:2] == ["OPTIMIZE", "WRITE"]
    assert last_data_change(store, "t") == _commit_time(table, 1)


def test_a_table_of_only_empty_commits_dates_from_its_creation(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path / "lake"))
    uri = store.uri("t")
    empty = pa.table({"a": pa.array([], pa.int64())})
    for _ in range(3):
        write_deltalake(uri, empty, mode="append")
    assert last_data_change(store, "t") == _commit_time(DeltaTable(uri), 0)


def test_the_log_tail_is_read_first(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    store = DeltaStore(str(tmp_path / "lake"))
    uri = store.uri("t")
    rows = pa.table({"a": [1]})
    for _ in range(freshness._RECENT + 5):
        write_deltalake(uri, rows, mode="append")
    newest = _commit_time(DeltaTable(uri), freshness._RECENT + 4)
    limits: list[int | None] = []
    history = DeltaTable.history

    def spy(self: DeltaTable, limit: int | None = None) -> list[dict[str, Any]]:
        limits.append(limit)
        return history(self, limit)

    monkeypatch.setattr(DeltaTable, "history", spy)
    assert last_data_change(store, "t") == newest
    assert limits == [freshness._RECENT]  # the whole log is not read for the newest commit
    # The change is older than the tail: then the whole log is read.
    for _ in range(freshness._RECENT + 1):
        write_deltalake(uri, rows.schema.empty_table(), mode="append")
    limits.clear()
    assert last_data_change(store, "t") == newest
    assert limits == [freshness._RECENT, None]


# -- evaluate on real projects ------------------------------------------------------------

DAILY = """
/* lakeforge
partitions: {daily: {start: 2024-01-01, column: day}}
freshness: {warn_after: 2h, error_after: 6h}
*/
SELECT day, count(*) AS n FROM events WHERE day >= @start AND day < @end GROUP BY day
"""
# Partitions are built as of this time: 2024-01-01 … 2024-01-03 are complete.
BUILT_AT = dt.datetime(2024, 1, 4, 12, tzinfo=UTC)


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "lakeforge.yml", "name: fresh\n")
    write(
        tmp_path,
        "models/events.sql",
        """
        /* lakeforge
        freshness: {warn_after: 2h, error_after: 6h}
        */
        SELECT DATE '2024-01-01' + CAST(range % 5 AS INTEGER) AS day, range AS id
        FROM range(20)
        """,
    )
    write(tmp_path, "models/daily.sql", DAILY)
    write(
        tmp_path,
        "models/regions.sql",
        """
        /* lakeforge
        partitions: {static: {column: region, values: [EU, US]}}
        freshness: {error_after: 1d}
        */
        SELECT @partition AS region, 1 AS n
        """,
    )
    write(tmp_path, "models/no_sla.sql", "SELECT 1 AS x")
    write(
        tmp_path,
        "models/never.sql",
        """
        /* lakeforge
        freshness: {warn_after: 1h}
        */
        SELECT 1 AS x
        """,
    )
    return tmp_path


def build(root: Path, *selection: str, clock: dt.datetime = BUILT_AT) -> dict[str, str]:
    result = Runner(load_project(root), clock=lambda: clock).run(list(selection) or None)
    return {t.dataset: t.status for t in result.tasks}


def by_name(root: Path, now: dt.datetime, **kw: Any) -> dict[str, Any]:
    return {r.dataset: r for r in evaluate(load_project(root), now=now, **kw)}


def test_evaluate_a_real_project(project: Path) -> None:
    assert build(project, "events", "daily", "regions") == {
        "events": "success",
        "daily": "success",
        "regions": "success",
    }
    store = DeltaStore(str(project / "lakehouse"))
    built = last_data_change(store, "events")
    assert built is not None
    assert abs((dt.datetime.now(UTC) - built).total_seconds()) < 60

    results = by_name(project, built + 3 * HOUR)
    # Only datasets with an SLA, in graph order; `never` was never built.
    assert list(results) == ["events", "never", "regions", "daily"]
    events = results["events"]
    assert (events.status, events.age_seconds, events.last_update) == ("warn", 3 * 3600, built)
    assert results["never"].status == "warn"  # its SLA only warns
    assert results["never"].detail == "never built"
    # A static partitioning is judged by the table's last data change.
    assert (results["regions"].status, results["regions"].partitioned) == ("fresh", False)
    # The daily partitions were built (for the clock of the run) up to 2024-01-03; judged
    # at the real time, every later complete day is missing.
    daily = results["daily"]
    assert daily.status == "error" and daily.partitioned
    assert daily.late_partitions[0] == "2024-01-04"

    assert by_name(project, built + 7 * HOUR)["events"].status == "error"
    only = evaluate(load_project(project), ["events", "no_sla"], now=built)
    assert [(r.dataset, r.status) for r in only] == [("events", "fresh")]

    # A run that finds the table up to date commits nothing: the age keeps growing.
    assert build(project, "events") == {"events": "up_to_date"}
    assert last_data_change(store, "events") == built


def test_evaluate_a_daily_partitioned_dataset_with_a_missing_partition(project: Path) -> None:
    build(project, "events", "daily")

    def daily(now: dt.datetime) -> Any:
        return by_name(project, now)["daily"]

    assert daily(BUILT_AT).detail == "3 of 3 partition(s) built"
    # 2024-01-04 is complete from midnight; not built yet.
    assert daily(dt.datetime(2024, 1, 5, 1, tzinfo=UTC)).status == "fresh"
    late = daily(dt.datetime(2024, 1, 5, 3, tzinfo=UTC))
    assert (late.status, late.late_partitions, late.age_seconds) == ("warn", ["2024-01-04"], 10800)
    assert daily(dt.datetime(2024, 1, 5, 7, tzinfo=UTC)).status == "error"
    # Build it: fresh again.
    assert build(project, "daily", clock=dt.datetime(2024, 1, 5, 7, tzinfo=UTC)) == {
        "daily": "success"
    }
    assert daily(dt.datetime(2024, 1, 5, 7, tzinfo=UTC)).detail == "4 of 4 partition(s) built"
    # A partition whose build failed and was never built before is missing.
    with MetadataStore(load_project(project).metadata_url) as metadata:
        IntervalLedger(metadata).forget("daily", ["2024-01-02"])
        IntervalLedger(metadata).finish(
            "daily", "2024-01-02", status="failed", at=BUILT_AT, error="boom"
        )
    gap = daily(dt.datetime(2024, 1, 5, 7, tzinfo=UTC))
    assert (gap.status, gap.late_partitions) == ("error", ["2024-01-02"])
    # The table removed by hand: all its partitions are gone, whatever the ledger says.
    shutil.rmtree(project / "lakehouse" / "daily")
    gone = daily(dt.datetime(2024, 1, 5, 7, tzinfo=UTC))
    assert gone.late_count == 4


def test_a_partition_being_rebuilt_or_failing_to_rebuild_is_still_built(project: Path) -> None:
    build(project, "events", "daily")
    now = dt.datetime(2024, 1, 4, 13, tzinfo=UTC)
    assert by_name(project, now)["daily"].status == "fresh"
    with MetadataStore(load_project(project).metadata_url) as metadata:
        # A rebuild in progress (lookback, backfill, upstream change): the data is there.
        IntervalLedger(metadata).start(
            "daily", "2024-01-02", run_id="r", fingerprint="f", at=BUILT_AT
        )
    assert by_name(project, now)["daily"].status == "fresh"
    # The code changes and every rebuild fails: the partitions built before stay.
    write(project, "models/daily.sql", DAILY.replace("count(*)", "count(no_such_column)"))
    assert build(project, "daily") == {"daily": "failed"}
    with MetadataStore(load_project(project).metadata_url) as metadata:
        statuses = {
            k: e.status for k, e in IntervalLedger(metadata).read(["daily"])["daily"].items()
        }
    assert statuses == {k: "failed" for k in ("2024-01-01", "2024-01-02", "2024-01-03")}
    result = by_name(project, now)["daily"]
    assert (result.status, result.detail) == ("fresh", "3 of 3 partition(s) built")


def test_an_unreadable_table_is_unknown_and_does_not_stop_the_others(project: Path) -> None:
    build(project, "events", "regions")
    log = project / "lakehouse" / "regions" / "_delta_log"
    for commit in log.glob("*.json"):
        commit.write_text("not json\n")
    results = by_name(project, dt.datetime.now(UTC))
    assert results["regions"].status == "unknown"
    assert results["regions"].age_seconds is None and results["regions"].detail
    assert results["events"].status == "fresh"
