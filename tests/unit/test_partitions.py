"""Time and static partitions: keys over ranges, configuration errors, macro expansion,
and builds over DATE, TIMESTAMP and TIMESTAMPTZ columns (real DuckDB and Delta tables)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest
from pydantic import ValidationError

import lakeforge as lf
from lakeforge.errors import ConfigError, SQLError
from lakeforge.execution.executor import Runner
from lakeforge.graph.partitions import (
    Daily,
    Hourly,
    Monthly,
    Partition,
    Static,
    delta_partition_predicate,
    expand_macros,
    partition_predicate,
    uses_macros,
)
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

UTC = dt.UTC


def keys(parts: list[Partition]) -> list[str]:
    return [p.key for p in parts]


# -- keys over ranges ----------------------------------------------------------------------


def test_daily_keys_over_a_leap_day_and_month_ends() -> None:
    daily = Daily(start="2024-02-27", column="d")
    parts = daily.partitions(dt.datetime(2024, 3, 2, 8, tzinfo=UTC))
    assert keys(parts) == ["2024-02-27", "2024-02-28", "2024-02-29", "2024-03-01"]
    leap = parts[2]
    assert (leap.start, leap.end) == (dt.datetime(2024, 2, 29), dt.datetime(2024, 3, 1))
    # 2023 has no 29 February.
    assert keys(Daily(start="2023-02-27", column="d").partitions(dt.datetime(2023, 3, 2))) == [
        "2023-02-27",
        "2023-02-28",
        "2023-03-01",
    ]


def test_daily_keys_across_the_year_boundary() -> None:
    parts = Daily(start="2023-12-30", column="d").partitions(dt.datetime(2024, 1, 2))
    assert keys(parts) == ["2023-12-30", "2023-12-31", "2024-01-01"]
    assert parts[1].end == dt.datetime(2024, 1, 1)


def test_monthly_keys_month_ends_and_year_boundary() -> None:
    monthly = Monthly(start="2023-11-01", column="d")
    parts = monthly.partitions(dt.datetime(2024, 3, 1, tzinfo=UTC))
    assert keys(parts) == ["2023-11", "2023-12", "2024-01", "2024-02"]
    assert [(p.start.date(), p.end.date()) for p in parts[1:] if p.start and p.end] == [
        (dt.date(2023, 12, 1), dt.date(2024, 1, 1)),
        (dt.date(2024, 1, 1), dt.date(2024, 2, 1)),
        (dt.date(2024, 2, 1), dt.date(2024, 3, 1)),  # 29 days in 2024
    ]


def test_hourly_keys_over_one_utc_day() -> None:
    hourly = Hourly(start="2024-03-10", column="ts")
    # 2024-03-10 is a DST change in the US; partitions are UTC hours: always 24 a day.
    now = dt.datetime(2024, 3, 10, 20, 30, tzinfo=dt.timezone(dt.timedelta(hours=-4)))
    parts = hourly.partitions(now)  # 2024-03-11 00:30 UTC
    assert len(parts) == 24
    assert parts[0].key == "2024-03-10T00" and parts[-1].key == "2024-03-10T23"
    assert parts[-1].end == dt.datetime(2024, 3, 11)
    assert all(p.end - p.start == dt.timedelta(hours=1) for p in parts if p.start and p.end)


def test_only_complete_partitions_exist_up_to_now() -> None:
    daily = Daily(start="2024-01-01", column="d")
    # Mid-day: today is not complete.
    assert keys(daily.partitions(dt.datetime(2024, 1, 3, 23, 59, tzinfo=UTC))) == [
        "2024-01-01",
        "2024-01-02",
    ]
    # Exactly at midnight the day before is complete.
    assert keys(daily.partitions(dt.datetime(2024, 1, 3, tzinfo=UTC)))[-1] == "2024-01-02"
    assert daily.partitions(dt.datetime(2024, 1, 1, 12, tzinfo=UTC)) == []
    # With an end, nothing after it, whatever now is.
    bounded = Daily(start="2024-01-01", end="2024-01-04", column="d")
    assert keys(bounded.partitions(dt.datetime(2030, 1, 1, tzinfo=UTC))) == [
        "2024-01-01",
        "2024-01-02",
        "2024-01-03",
    ]
    # ... and with an end in the future, only up to now.
    far = Daily(start="2024-01-01", end="2030-01-01", column="d")
    assert keys(far.partitions(dt.datetime(2024, 1, 3, 1, tzinfo=UTC))) == [
        "2024-01-01",
        "2024-01-02",
    ]


def test_a_range_is_inclusive_and_takes_the_partition_a_bound_is_in() -> None:
    daily = Daily(start="2024-01-01", column="d")
    now = dt.datetime(2024, 2, 1, tzinfo=UTC)
    got = daily.partitions(now, start="2024-01-10", end=dt.date(2024, 1, 12))
    assert keys(got) == ["2024-01-10", "2024-01-11", "2024-01-12"]
    got = daily.partitions(now, start="2024-01-10T13:00", end="2024-01-10T14:00")
    assert keys(got) == ["2024-01-10"]
    assert keys(daily.partitions(now, start="2023-06-01", end="2024-01-02")) == [
        "2024-01-01",
        "2024-01-02",
    ]
    assert keys(Monthly(start="2024-01-01", column="d").partitions(now, end="2024-01-31")) == [
        "2024-01"
    ]


def test_parse_key() -> None:
    assert Daily(start="2024-01-01", column="d").parse_key("2024-02-29").end == dt.datetime(
        2024, 3, 1
    )
    assert Hourly(start="2024-01-01", column="d").parse_key("2024-01-31T05").start == (
        dt.datetime(2024, 1, 31, 5)
    )
    assert Monthly(start="2024-01-01", column="d").parse_key("2024-12").end == dt.datetime(
        2025, 1, 1
    )
    with pytest.raises(ValueError, match="not a daily partition key"):
        Daily(start="2024-01-01", column="d").parse_key("2024-01")
    static = Static(column="region", values=["EU", 7])
    assert static.parse_key("7").value == 7
    with pytest.raises(ValueError, match="not one of the partitions"):
        static.parse_key("US")


def test_static_partitions_do_not_depend_on_time() -> None:
    static = Static(column="region", values=["EU", "US"])
    assert keys(static.partitions(dt.datetime(1970, 1, 1))) == ["EU", "US"]
    assert static.partitions(dt.datetime(2030, 1, 1)) == static.partitions(dt.datetime(1970, 1, 1))
    with pytest.raises(ValidationError, match="distinct"):
        Static(column="region", values=["EU", "EU"])


def test_lookback_and_boundaries_are_validated() -> None:
    assert Daily(start="2024-01-01", column="d", lookback=2).lookback == 2
    assert Daily(start="2024-01-01", column="d").lookback == 0
    with pytest.raises(ValidationError, match="greater than or equal to 0"):
        Daily(start="2024-01-01", column="d", lookback=-1)
    with pytest.raises(ValidationError, match=r"not on a hourly boundary \(did you mean "):
        Hourly(start="2024-01-01T05:30", column="ts")
    with pytest.raises(ValidationError, match=r"did you mean 2024-01-01\?"):
        Monthly(start="2024-01-15", column="d")
    with pytest.raises(ValidationError, match="end must be after start"):
        Daily(start="2024-01-05", end="2024-01-01", column="d")
    with pytest.raises(ValidationError, match="not on a daily boundary"):
        Daily(start="2024-01-01", end="2024-01-03T12:00", column="d")
    # A zoned start is converted to UTC before it is checked.
    assert Daily(start="2024-01-01T02:00+02:00", column="d").start == dt.datetime(2024, 1, 1)


# -- configuration in SQL headers ----------------------------------------------------------


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def model_with(root: Path, header: str, body: str = "SELECT DATE '2024-01-01' AS d\n") -> Path:
    write(root, "lakeforge.yml", "name: parts\n")
    write(root, "models/m.sql", f"/* lakeforge\n{header}\n*/\n{body}")
    return root


def test_yaml_shorthand_and_long_form(tmp_path: Path) -> None:
    model_with(tmp_path, "partitions: {daily: {start: 2024-01-01, column: d, lookback: 3}}")
    parts = load_project(tmp_path).graph["m"].config.partitions
    assert isinstance(parts, Daily)
    assert (parts.start, parts.column, parts.lookback, parts.end) == (
        dt.datetime(2024, 1, 1), "d", 3, None,
    )  # fmt: skip
    model_with(tmp_path, "partitions: {kind: static, column: region, values: [EU, US]}")
    static = load_project(tmp_path).graph["m"].config.partitions
    assert isinstance(static, Static) and static.values == ["EU", "US"]
    model_with(tmp_path, "partitions:\n  hourly: {start: '2024-01-01T05:00', column: ts}")
    assert isinstance(load_project(tmp_path).graph["m"].config.partitions, Hourly)


@pytest.mark.parametrize(
    ("header", "message"),
    [
        ("partitions: {daily: {start: notadate, column: d}}", "partitions.daily.start"),
        (
            "partitions: {monthly: {start: 2024-01-15, column: d}}",
            "not on a monthly boundary (did you mean 2024-01-01?)",
        ),
        (
            "partitions: {weekly: {start: 2024-01-01, column: d}}",
            "unknown partitions kind 'weekly': use one of daily, hourly, monthly, static",
        ),
        (
            "partitions: {kind: weekly, start: 2024-01-01, column: d}",
            "does not match any of the expected tags",
        ),
        ("partitions: {daily: {start: 2024-01-01}}", "partitions.daily.column: Field required"),
        ("partitions: {static: {column: r, values: []}}", "partitions.static.values"),
        ("partitions: {daily: {start: 2024-01-01, column: d, every: 2}}", "unknown key"),
        (
            "source: {path: 'landing/*.csv'}\npartitions: {daily: {start: 2024-01-01, column: d}}",
            "a dataset with a source is built batch by batch as data arrives: it takes no "
            "partitions",
        ),
        (
            "write: append\npartitions: {daily: {start: 2024-01-01, column: d}}",
            "write strategy append does not apply",
        ),
        (
            "write: {strategy: merge, keys: [d]}\npartitions: {daily: {start: 2024-01-01, "
            "column: d}}",
            "write strategy merge does not apply",
        ),
    ],
)
def test_partition_config_errors_are_clear(tmp_path: Path, header: str, message: str) -> None:
    model_with(tmp_path, header)
    with pytest.raises(ConfigError) as err:
        load_project(tmp_path)
    text = str(err.value)
    assert message in text
    assert "models/m.sql:2" in text  # file and line of the header key


def test_partitions_with_a_source_in_python_are_refused(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: parts\n")
    write(
        tmp_path,
        "pipelines/p.py",
        """
        import lakeforge as lf

        @lf.table(source={"path": "landing/*.csv"}, partitions=lf.Daily(start="2024-01-01",
                                                                         column="d"))
        def ingested(source):
            return source
        """,
    )
    with pytest.raises(ConfigError, match="takes no partitions"):
        load_project(tmp_path)


# -- macros ------------------------------------------------------------------------------

DAY = Partition("2024-02-29", dt.datetime(2024, 2, 29), dt.datetime(2024, 3, 1))
HOUR = Partition("2024-03-10T05", dt.datetime(2024, 3, 10, 5), dt.datetime(2024, 3, 10, 6))


def test_macros_are_replaced_outside_strings_and_comments() -> None:
    sql = (
        "SELECT '@start' AS s, \"@end\" AS q -- @end\n"
        "FROM t /* @start @partition */ WHERE d >= @START AND d < @End AND k = @partition"
    )
    assert expand_macros(sql, DAY, "DATE") == (
        "SELECT '@start' AS s, \"@end\" AS q -- @end\n"
        "FROM t /* @start @partition */ WHERE d >= DATE '2024-02-29' AND d < DATE '2024-03-01' "
        "AND k = '2024-02-29'"
    )
    assert uses_macros(sql) == {"start", "end", "partition"}
    assert uses_macros("SELECT '@start', @start_date, @ end FROM t -- @end") == set()


def test_timestamp_macros_for_hourly_partitions() -> None:
    assert expand_macros("ts >= @start AND ts < @end", HOUR, "TIMESTAMP") == (
        "ts >= TIMESTAMP '2024-03-10 05:00:00' AND ts < TIMESTAMP '2024-03-10 06:00:00'"
    )
    assert partition_predicate(Hourly(start="2024-01-01", column="ts"), HOUR) == (
        "\"ts\" >= TIMESTAMP '2024-03-10 05:00:00' AND \"ts\" < TIMESTAMP '2024-03-10 06:00:00'"
    )


def test_static_partition_macro_is_a_literal_of_its_value() -> None:
    eu = Partition("EU", value="EU")
    assert expand_macros("region = @partition", eu, "") == "region = 'EU'"
    assert expand_macros("shard = @partition", Partition("7", value=7), "") == "shard = 7"
    assert expand_macros("x = 'it''s @partition'", eu, "") == "x = 'it''s @partition'"
    with pytest.raises(ValueError, match="@start is not defined for this partition"):
        expand_macros("d >= @start", eu, "")
    static = Static(column="region", values=["EU"])
    assert partition_predicate(static, eu) == "\"region\" = 'EU'"


def test_delta_predicates_match_the_column_type() -> None:
    import pyarrow as pa

    daily = Daily(start="2024-01-01", column="d")
    assert delta_partition_predicate(daily, DAY, pa.date32()) == (
        "\"d\" >= DATE '2024-02-29' AND \"d\" < DATE '2024-03-01'"
    )
    assert delta_partition_predicate(daily, DAY, pa.timestamp("us")) == (
        "\"d\" >= '2024-02-29T00:00:00' AND \"d\" < '2024-03-01T00:00:00'"
    )
    hourly = Hourly(start="2024-01-01", column="ts")
    assert delta_partition_predicate(hourly, HOUR, pa.timestamp("us", tz="UTC")) == (
        "\"ts\" >= '2024-03-10T05:00:00Z' AND \"ts\" < '2024-03-10T06:00:00Z'"
    )


def test_a_query_using_macros_needs_partitions(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: parts\n")
    write(tmp_path, "models/m.sql", "SELECT 1 AS x\nFROM range(3)\nWHERE @start IS NOT NULL\n")
    with pytest.raises(SQLError, match="uses @start but the dataset declares no partitions") as e:
        load_project(tmp_path)
    assert e.value.location is not None and e.value.location.file == "models/m.sql"
    model_with(
        tmp_path,
        "partitions: {static: {column: r, values: [a]}}",
        "SELECT 'a' AS r WHERE @start IS NOT NULL\n",
    )
    with pytest.raises(SQLError, match="static partitions have no @start/@end"):
        load_project(tmp_path)
    # Inside strings and comments they are text, not macros.
    write(tmp_path, "models/m.sql", "SELECT '@start' AS s -- @end\n")
    assert load_project(tmp_path).graph["m"].config.partitions is None


# -- builds over column types --------------------------------------------------------------

NOW = dt.datetime(2024, 3, 5, 1, tzinfo=UTC)
EVENTS = """
SELECT i AS id,
       CAST(TIMESTAMP '2024-03-01 00:00:00' + INTERVAL (i) HOUR AS DATE) AS d,
       TIMESTAMP '2024-03-01 00:00:00' + INTERVAL (i) HOUR AS ts,
       CAST(TIMESTAMP '2024-03-01 00:00:00' + INTERVAL (i) HOUR AS TIMESTAMPTZ) AS tstz
FROM range(72) AS t(i)
"""


def typed_project(root: Path) -> Path:
    write(root, "lakeforge.yml", "name: typed\n")
    write(root, "models/events.sql", EVENTS)
    for name, kind, col in (
        ("by_date", "daily", "d"),
        ("by_timestamp", "daily", "ts"),
        ("by_hour", "hourly", "ts"),
        ("by_hour_tz", "hourly", "tstz"),
    ):
        # Two days; four hours across midnight.
        start, end = (
            ("2024-03-01", "2024-03-03")
            if kind == "daily"
            else ("'2024-03-01T22:00'", "'2024-03-02T02:00'")
        )
        write(
            root,
            f"models/{name}.sql",
            f"""
            /* lakeforge
            partitions: {{{kind}: {{start: {start}, end: {end}, column: {col}}}}}
            */
            SELECT id, {col} FROM events WHERE {col} >= @start AND {col} < @end
            """,
        )
    return root


def test_partition_builds_replace_rows_of_date_timestamp_and_zoned_columns(
    tmp_path: Path,
) -> None:
    root = typed_project(tmp_path)
    runner = Runner(load_project(root), clock=lambda: NOW)
    result = runner.run()
    assert result.ok, [t.error for t in result.tasks if t.error]
    store = DeltaStore(str(root / "lakehouse"))

    def ids(name: str) -> list[int]:
        return sorted(store.open(name).to_pyarrow_table().column("id").to_pylist())

    expected = {
        "by_date": list(range(48)),  # 2024-03-01 and 2024-03-02
        "by_timestamp": list(range(48)),
        "by_hour": [22, 23, 24, 25],  # 2024-03-01T22 … 2024-03-02T01
        "by_hour_tz": [22, 23, 24, 25],
    }
    for name, wanted_ids in expected.items():
        assert ids(name) == wanted_ids, name
    # Rebuilding partitions replaces them: a second write carries a typed predicate.
    targets = {
        "by_date": {"2024-03-02"},
        "by_timestamp": {"2024-03-01", "2024-03-02"},
        "by_hour": {"2024-03-01T23", "2024-03-02T01"},
        "by_hour_tz": {"2024-03-01T22", "2024-03-02T00"},
    }
    again = Runner(load_project(root), clock=lambda: NOW).run(list(targets), backfill=targets)
    assert again.ok, [t.error for t in again.tasks if t.error]
    for name, wanted in targets.items():
        task = next(t for t in again.tasks if t.dataset == name)
        assert sorted(p.key for p in task.partitions) == sorted(wanted)
        assert all(p.status == "success" for p in task.partitions)
        assert ids(name) == expected[name], name


def test_python_transform_receives_its_partition(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: py\n")
    write(tmp_path, "models/events.sql", EVENTS)
    write(
        tmp_path,
        "pipelines/p.py",
        """
        import lakeforge as lf

        @lf.table(partitions=lf.Daily(start="2024-03-01", end="2024-03-04", column="d"))
        def daily_counts(events, context):
            p = context.partition
            return events.filter(
                f"d >= DATE '{p.start:%Y-%m-%d}' AND d < DATE '{p.end:%Y-%m-%d}'"
            ).aggregate(
                f"d, count(*) AS n, '{p.key}' AS part, TIMESTAMP '{p.start}' AS part_start, "
                f"TIMESTAMP '{p.end}' AS part_end",
                "d",
            )

        @lf.table(partitions=lf.Static(column="half", values=["am", "pm"]))
        def halves(events, context):
            return events.aggregate(f"'{context.partition.value}' AS half, count(*) AS n")
        """,
    )
    project = load_project(tmp_path)
    assert isinstance(project.graph["daily_counts"].config.partitions, lf.Daily)
    result = Runner(project, clock=lambda: NOW).run()
    assert result.ok, [t.error for t in result.tasks if t.error]
    store = DeltaStore(str(tmp_path / "lakehouse"))
    rows = store.open("daily_counts").to_pyarrow_table().to_pylist()
    got = sorted((r["d"].isoformat(), r["n"], r["part"], r["part_start"], r["part_end"])
                 for r in rows)  # fmt: skip
    day = dt.datetime
    assert got == [
        ("2024-03-01", 24, "2024-03-01", day(2024, 3, 1), day(2024, 3, 2)),
        ("2024-03-02", 24, "2024-03-02", day(2024, 3, 2), day(2024, 3, 3)),
        ("2024-03-03", 24, "2024-03-03", day(2024, 3, 3), day(2024, 3, 4)),
    ]
    halves = store.open("halves").to_pyarrow_table().to_pylist()
    assert sorted((r["half"], r["n"]) for r in halves) == [("am", 72), ("pm", 72)]
