"""The interval ledger, partition builds, plans, status and backfills on a real project
(DuckDB, Delta tables on disk, the SQLite metadata store, the CLI through Typer)."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import textwrap
from collections import Counter
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.errors import DataError
from lakeforge.execution.executor import Runner
from lakeforge.execution.results import RunResult, TaskResult
from lakeforge.graph.fingerprint import fingerprint
from lakeforge.metadata.intervals import IntervalLedger, IntervalRecord
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import write_partition

NOW = dt.datetime(2024, 2, 1, 12, tzinfo=dt.UTC)
DAYS = [f"2024-01-0{d}" for d in range(1, 7)]  # the complete partitions: end is 2024-01-07
DAILY = """
/* lakeforge
partitions: {{daily: {{start: 2024-01-01, end: {end}, column: day, lookback: 1}}}}
*/
SELECT day, count(*) AS n, sum(amount){factor} AS total
FROM events
WHERE day >= @start AND day < @end
GROUP BY day
"""
ENRICHED = """
/* lakeforge
partitions: {daily: {start: 2024-01-01, end: 2024-01-07, column: day}}
*/
SELECT d.day, d.total * r.factor AS scaled
FROM daily AS d CROSS JOIN rates AS r
WHERE d.day >= @start AND d.day < @end
"""
FLAKY = """
from pathlib import Path

import lakeforge as lf

FAIL_ON = Path(__file__).resolve().parent.parent / "fail_on.txt"


@lf.table(partitions=lf.Daily(start="2024-01-01", end="2024-01-07", column="day"))
def flaky(events, context):
    p = context.partition
    if FAIL_ON.exists() and p.key in FAIL_ON.read_text().split():
        raise RuntimeError(f"source outage on {p.key}")
    return events.filter(f"day >= DATE '{p.start:%Y-%m-%d}' AND day < DATE '{p.end:%Y-%m-%d}'")
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def write_events(root: Path, rows: list[tuple[int, str, int]]) -> None:
    lines = "".join(f"{i},{day},{amount}\n" for i, day, amount in rows)
    write(root, "landing/events.csv", "id,day,amount\n" + lines)


def write_daily(root: Path, *, factor: str = "", end: str = "2024-01-07") -> None:
    write(root, "models/daily.sql", DAILY.format(end=end, factor=factor))


EVENTS = [(i, DAYS[i % 6], 10 * i) for i in range(24)]


@pytest.fixture
def project(tmp_path: Path) -> Path:
    """events (unpartitioned) → daily (lookback 1) → enriched (aligned, also reads rates)
    and summary (unpartitioned); flaky (Python, daily) reads events."""
    root = tmp_path / "p"
    write(root, "lakeforge.yml", "name: ledger\n")
    write_events(root, EVENTS)
    write(root, "landing/rates.csv", "factor\n2\n")
    write(
        root,
        "models/events.sql",
        "SELECT id, CAST(day AS DATE) AS day, amount FROM read_csv('landing/events.csv')\n",
    )
    write(root, "models/rates.sql", "SELECT factor FROM read_csv('landing/rates.csv')\n")
    write_daily(root)
    write(root, "models/enriched.sql", ENRICHED)
    write(root, "models/summary.sql", "SELECT count(*) AS days, sum(total) AS total FROM daily\n")
    write(root, "pipelines/flaky.py", FLAKY)
    return root


def runner(root: Path) -> Runner:
    return Runner(load_project(root), clock=lambda: NOW)


def run(root: Path, selection: Any = None, *, ok: bool = True, **kwargs: Any) -> RunResult:
    result = runner(root).run(selection, **kwargs)
    if ok:
        assert result.ok, [t.error for t in result.tasks if t.error]
    return result


def task(result: RunResult, name: str) -> TaskResult:
    return next(t for t in result.tasks if t.dataset == name)


def cli(root: Path, *args: str, code: int = 0) -> str:
    out = CliRunner().invoke(app, ["-C", str(root), *args])
    assert out.exit_code == code, out.output
    return out.output


def store(root: Path) -> DeltaStore:
    return DeltaStore(str(root / "lakehouse"))


def ledger(root: Path, name: str) -> dict[str, IntervalRecord]:
    with MetadataStore(load_project(root).metadata_url) as metadata:
        return IntervalLedger(metadata).read([name]).get(name, {})


def partition_commits(root: Path, name: str) -> list[tuple[int, str | None]]:
    """(version, partition) of the dataset's Lakeforge commits, oldest first."""
    return sorted((v, info.partition) for v, info in store(root).commits(name))


def rows(root: Path, name: str) -> list[dict[str, Any]]:
    table = store(root).open(name).to_pyarrow_table()
    return sorted(table.to_pylist(), key=lambda r: sorted((k, str(v)) for k, v in r.items()))


def daily_rows(events: list[tuple[int, str, int]], factor: int = 1) -> dict[str, tuple[int, int]]:
    out: dict[str, tuple[int, int]] = {}
    for _, day, amount in events:
        n, total = out.get(day, (0, 0))
        out[day] = (n + 1, total + amount * factor)
    return out


def daily_table(root: Path) -> dict[str, tuple[int, int]]:
    return {r["day"].isoformat(): (r["n"], r["total"]) for r in rows(root, "daily")}


# -- the ledger ---------------------------------------------------------------------------


def test_first_run_builds_every_partition_once_and_records_it(project: Path) -> None:
    result = run(project)
    daily = task(result, "daily")
    # Newest first, one task per partition, each committed exactly once.
    assert [p.key for p in daily.partitions] == DAYS[::-1]
    assert {p.reason for p in daily.partitions} == {"missing"}
    commits = partition_commits(project, "daily")
    assert Counter(k for _, k in commits) == Counter(DAYS)
    assert [k for _, k in commits] == DAYS[::-1]  # committed newest first too
    version_of = {k: v for v, k in commits}
    proj = load_project(project)
    fp = fingerprint(proj.graph["daily"], proj.graph)
    events_version = store(project).version("events")
    entries = ledger(project, "daily")
    assert sorted(entries) == DAYS
    for key, entry in entries.items():
        assert entry.status == "built"
        assert entry.fingerprint == fp
        assert entry.input_versions == {"events": events_version}
        assert entry.rows == 1 and entry.rows_before is None
        assert entry.version == version_of[key]
        assert entry.run_id == result.run_id
        assert entry.error is None and entry.built_at is not None
    assert daily_table(project) == daily_rows(EVENTS)
    enriched = ledger(project, "enriched")
    assert enriched["2024-01-03"].input_versions == {
        "daily": store(project).version("daily"),
        "rates": store(project).version("rates"),
    }


def test_rerun_builds_nothing(project: Path) -> None:
    run(project)
    versions = {n: store(project).version(n) for n in ("daily", "enriched", "flaky", "summary")}
    before = ledger(project, "daily")
    again = run(project)
    assert {t.status for t in again.tasks} == {"up_to_date"}
    assert all(not t.partitions for t in again.tasks)
    assert {n: store(project).version(n) for n in versions} == versions
    assert ledger(project, "daily") == before


def test_code_change_makes_every_partition_stale_and_plan_shows_the_diff(project: Path) -> None:
    run(project)
    write_daily(project, factor=" * 2")
    plan = {a.dataset: a for a in runner(project).plan()}
    daily = plan["daily"].partitions
    assert daily is not None
    assert [p.reasons for p in daily.partitions] == [["code changed"]] * 6
    assert plan["daily"].reasons == ["6 partition(s) code changed"]
    enriched = plan["enriched"].partitions
    assert enriched is not None
    assert [p.reasons for p in enriched.stale] == [
        [f"upstream changed: daily partition {k} is being rebuilt"] for k in DAYS
    ]
    assert plan["summary"].reasons == ["upstream daily is being rebuilt"]
    assert not plan["flaky"].stale and not plan["events"].stale
    report = {r["dataset"]: r for r in json.loads(cli(project, "plan", "--json"))}
    item = report["daily"]
    assert item["stale"] and item["partitions"]["total"] == 6
    assert item["partitions"]["to_build"] == 6
    assert item["partitions"]["ranges"] == [
        {"first": "2024-01-01", "last": "2024-01-06", "count": 6, "reason": "code changed"}
    ]
    diff = item["code_diff"]
    assert any(line.startswith("-") and "sum(amount) AS total" in line for line in diff), diff
    assert any(line.startswith("+") and "sum(amount) * 2 AS total" in line for line in diff), diff
    assert "code_diff" not in report["enriched"]
    text = cli(project, "plan")
    assert "2024-01-01 … 2024-01-06" in text and "code changed" in text
    # Building it brings everything up to date, with the new code's result.
    result = run(project)
    assert sorted(p.key for p in task(result, "daily").partitions) == DAYS
    assert daily_table(project) == daily_rows(EVENTS, factor=2)
    assert not any(a.stale for a in runner(project).plan())


def test_upstream_change_rebuilds_only_the_lookback_partitions(project: Path) -> None:
    run(project)
    before = daily_table(project)
    # Late data for an old day and for the newest one.
    events = [*EVENTS, (100, "2024-01-02", 5), (101, "2024-01-06", 7)]
    write_events(project, events)
    plan = {a.dataset: a for a in runner(project).plan()}
    daily = plan["daily"].partitions
    assert daily is not None
    assert {p.key: p.reasons for p in daily.stale} == {
        "2024-01-05": ["upstream changed: events is being rebuilt"],
        "2024-01-06": ["upstream changed: events is being rebuilt"],
    }
    assert daily.notes == [
        "4 older partition(s) read an older events; outside lookback (1): "
        "`lakeforge backfill daily` updates them"
    ]
    enriched = plan["enriched"].partitions
    assert enriched is not None
    assert [p.key for p in enriched.stale] == ["2024-01-05", "2024-01-06"]
    result = run(project)
    assert [p.key for p in task(result, "daily").partitions] == ["2024-01-06", "2024-01-05"]
    assert [p.key for p in task(result, "enriched").partitions] == ["2024-01-06", "2024-01-05"]
    expected = daily_rows(events)
    after = daily_table(project)
    assert after["2024-01-06"] == expected["2024-01-06"]
    assert after["2024-01-02"] == before["2024-01-02"] != expected["2024-01-02"]
    # The next run does not rebuild the older partitions on every run ...
    assert all(not t.partitions for t in run(project).tasks)
    # ... a backfill brings them up to date.
    cli(project, "backfill", "daily", "--start", "2024-01-02", "--end", "2024-01-02")
    assert daily_table(project) == expected


def test_input_of_another_kind_changes_only_the_newest_partition(project: Path) -> None:
    run(project)
    write(project, "landing/rates.csv", "factor\n3\n")
    result = run(project)
    assert task(result, "rates").status == "success"
    assert [(p.key, p.reason) for p in task(result, "enriched").partitions] == [
        ("2024-01-06", "upstream changed: rates v0 → v1")  # lookback 0
    ]
    assert task(result, "daily").status == "up_to_date"


def test_failed_partition_is_retried_by_the_next_run(project: Path) -> None:
    (project / "fail_on.txt").write_text("2024-01-03\n")
    result = run(project, ok=False)
    flaky = task(result, "flaky")
    assert flaky.status == "failed"
    assert {p.key: p.status for p in flaky.partitions} == {
        k: "failed" if k == "2024-01-03" else "success" for k in DAYS
    }
    assert "1 of 6 partition(s) failed" in str(flaky.error)
    entries = ledger(project, "flaky")
    assert entries["2024-01-03"].status == "failed"
    assert "source outage on 2024-01-03" in (entries["2024-01-03"].error or "")
    assert {k for k, e in entries.items() if e.status == "built"} == set(DAYS) - {"2024-01-03"}
    states = json.loads(cli(project, "status", "flaky", "--json"))
    assert states["partition_states"] == {
        k: "failed" if k == "2024-01-03" else "built" for k in DAYS
    }
    assert states["partitions"] == {"total": 6, "built": 5, "failed": 1}
    (project / "fail_on.txt").unlink()
    again = run(project)
    retried = task(again, "flaky").partitions
    assert [p.key for p in retried] == ["2024-01-03"]
    assert retried[0].reason.startswith("failed before: ")
    assert "source outage on 2024-01-03" in retried[0].reason
    assert {e.status for e in ledger(project, "flaky").values()} == {"built"}


def test_interrupted_build_is_settled_and_rebuilt(project: Path) -> None:
    run(project)
    proj = load_project(project)
    fp = fingerprint(proj.graph["daily"], proj.graph)
    with MetadataStore(proj.metadata_url) as metadata:
        IntervalLedger(metadata).start(
            "daily", "2024-01-04", run_id="dead-run", fingerprint=fp, at=NOW
        )
    result = run(project)
    (rebuilt,) = task(result, "daily").partitions
    assert rebuilt.key == "2024-01-04"
    assert rebuilt.reason == "failed before: interrupted: run dead-run stopped before committing"
    assert ledger(project, "daily")["2024-01-04"].status == "built"


def test_status_json_partition_states(project: Path) -> None:
    run(project, ["+daily"])
    write_daily(project, factor=" * 2", end="2024-01-08")  # new code, one more day
    states = json.loads(cli(project, "status", "daily", "--json"))
    assert states["partition_states"] == {**dict.fromkeys(DAYS, "stale"), "2024-01-07": "missing"}
    assert states["partitions"] == {"total": 7, "stale": 6, "missing": 1}
    assert states["stale"] and states["reasons"] == [
        "6 partition(s) code changed",
        "1 partition(s) missing",
    ]
    listing = {r["dataset"]: r for r in json.loads(cli(project, "status", "--json"))}
    assert "partition_states" not in listing["daily"]
    assert listing["daily"]["partitions"]["total"] == 7
    grid = cli(project, "status", "daily")
    assert "0 built, 6 stale, 0 failed, 1 missing of 7" in grid


# -- what one partition build writes ------------------------------------------------------


def test_a_partition_build_replaces_exactly_its_partition(project: Path) -> None:
    # Rows written before the dataset was partitioned, one of them before its start.
    events = [*EVENTS, (50, "2023-12-31", 99)]
    write_events(project, events)
    unpartitioned = DAILY.format(end="", factor="").split("*/\n")[1]
    write(
        project,
        "models/daily.sql",
        unpartitioned.replace("WHERE day >= @start AND day < @end\n", ""),
    )
    run(project, ["+daily"])
    assert set(daily_table(project)) == {"2023-12-31", *DAYS}
    write_daily(project)
    result = run(project, ["+daily"])
    assert sorted(p.key for p in task(result, "daily").partitions) == DAYS  # all missing
    assert daily_table(project) == daily_rows(events)
    snapshot = rows(project, "daily")
    # New data for one day; rebuild that partition alone.
    changed = [(i, d, a + 1 if d == "2024-01-03" else a) for i, d, a in events]
    write_events(project, changed)
    cli(project, "run", "events")
    version = store(project).version("daily")
    cli(project, "backfill", "daily", "--start", "2024-01-03", "--end", "2024-01-03")
    assert store(project).version("daily") == version + 1
    after = rows(project, "daily")
    untouched = [r for r in snapshot if r["day"].isoformat() != "2024-01-03"]
    assert [r for r in after if r["day"].isoformat() != "2024-01-03"] == untouched
    assert daily_table(project)["2024-01-03"] == daily_rows(changed)["2024-01-03"]
    assert daily_table(project)["2024-01-03"] != daily_rows(events)["2024-01-03"]


def test_rows_outside_the_partition_fail_the_build(project: Path) -> None:
    text = DAILY.format(end="2024-01-07", factor="").replace("day < @end", "day <= @end")
    write(project, "models/daily.sql", text)
    result = run(project, ["+daily"], ok=False)
    daily = task(result, "daily")
    failed = {p.key: p.error for p in daily.partitions if p.status == "failed"}
    assert sorted(failed) == DAYS[:-1]  # the last day has no next day in the data
    message = failed["2024-01-02"] or ""
    assert "partition 2024-01-02: 1 row(s) have day outside the partition" in message
    assert "e.g. '2024-01-03'" in message
    entries = ledger(project, "daily")
    assert entries["2024-01-02"].status == "failed"
    assert entries["2024-01-06"].status == "built"
    assert set(daily_table(project)) == {"2024-01-06"}  # nothing else was written


def test_write_partition_refuses_rows_outside_with_a_data_error(project: Path) -> None:
    proj = load_project(project)
    ds = proj.graph["daily"]
    parts = ds.config.partitions
    assert parts is not None
    data = pa.table(
        {"day": pa.array([dt.date(2024, 1, 2), dt.date(2024, 1, 9)]), "n": [1, 1], "total": [1, 1]}
    )
    info = CommitInfo(run_id="r", dataset="daily", fingerprint="f", batch=1, partition="2024-01-02")
    with pytest.raises(DataError) as err:
        write_partition(
            store(project), ds, data, info, target_version=None,
            predicate="\"day\" >= DATE '2024-01-02' AND \"day\" < DATE '2024-01-03'",
            partition_key="2024-01-02",
        )  # fmt: skip
    assert err.value.dataset == "daily" and err.value.column == "day"
    assert "1 row(s) have day outside the partition (e.g. '2024-01-09')" in str(err.value)
    assert "WHERE day >= @start AND day < @end" in (err.value.hint or "")
    assert not store(project).exists("daily")


# -- backfills ----------------------------------------------------------------------------


def test_backfill_dry_run_lists_partitions_newest_first(project: Path) -> None:
    run(project)
    plan = json.loads(
        cli(project, "backfill", "daily", "--start", "2024-01-02", "--end", "2024-01-04",
            "--dry-run", "--json")
    )  # fmt: skip
    assert plan == {
        "targets": {"daily": ["2024-01-04", "2024-01-03", "2024-01-02"]},
        "resumed_from": None,
    }
    text = cli(project, "backfill", "daily", "--start", "2024-01-02", "--end", "2024-01-04",
               "--dry-run")  # fmt: skip
    assert "daily: 2024-01-04, 2024-01-03, 2024-01-02" in text
    downstream = json.loads(
        cli(project, "backfill", "daily", "--start", "2024-01-05", "--downstream", "--dry-run",
            "--json")
    )  # fmt: skip
    assert downstream["targets"] == {
        "daily": ["2024-01-06", "2024-01-05"],
        "enriched": ["2024-01-06", "2024-01-05"],
    }
    before = store(project).version("daily")
    assert store(project).version("daily") == before  # a dry run builds nothing
    out = cli(project, "backfill", "summary", code=1)
    assert "summary has no partitions" in out


def test_backfill_downstream_rebuilds_the_range_below(project: Path) -> None:
    run(project)
    write(project, "landing/rates.csv", "factor\n5\n")
    cli(project, "run", "rates")
    before = {n: store(project).version(n) for n in ("daily", "enriched", "summary", "flaky")}
    out = json.loads(
        cli(project, "backfill", "daily", "--start", "2024-01-02", "--end", "2024-01-04",
            "--downstream", "--json")
    )  # fmt: skip
    tasks = {t["dataset"]: t for t in out["tasks"]}
    for name in ("daily", "enriched"):
        assert [p["partition"] for p in tasks[name]["partitions"]] == [
            "2024-01-04", "2024-01-03", "2024-01-02",
        ], name  # fmt: skip
        assert {p["reason"] for p in tasks[name]["partitions"]} == {"requested: backfill"}
    assert tasks["summary"]["status"] == "success"  # unpartitioned: its input changed
    assert store(project).version("flaky") == before["flaky"]  # not downstream of daily
    commits = partition_commits(project, "enriched")
    assert [k for v, k in commits if v > before["enriched"]] == [
        "2024-01-04", "2024-01-03", "2024-01-02",
    ]  # fmt: skip
    scaled = {r["day"].isoformat(): r["scaled"] for r in rows(project, "enriched")}
    totals = daily_rows(EVENTS)
    assert all(scaled[k] == totals[k][1] * 5 for k in ("2024-01-02", "2024-01-03", "2024-01-04"))
    assert all(scaled[k] == totals[k][1] * 2 for k in ("2024-01-01", "2024-01-05", "2024-01-06"))
    entries = ledger(project, "enriched")
    assert {entries[k].run_id for k in ("2024-01-02", "2024-01-03", "2024-01-04")} == {
        out["run_id"]
    }


def test_backfill_with_concurrency_equals_serial(project: Path, tmp_path: Path) -> None:
    run(project)
    other = tmp_path / "copy"
    shutil.copytree(project, other)
    results = {}
    for root, extra in ((project, []), (other, ["--concurrency", "2"])):
        write_daily(root, factor=" * 3")
        before = store(root).version("daily")
        results[root] = json.loads(cli(root, "backfill", "daily", *extra, "--json"))
        new = [k for v, k in partition_commits(root, "daily") if v > (before or 0)]
        assert Counter(new) == Counter(DAYS)  # each partition committed exactly once
        assert {p["status"] for p in results[root]["tasks"][0]["partitions"]} == {"success"}
    assert rows(other, "daily") == rows(project, "daily")
    assert daily_table(project) == daily_rows(EVENTS, factor=3)

    def figures(root: Path) -> dict[str, tuple[str, int | None, int | None]]:
        return {k: (e.status, e.rows, e.rows_before) for k, e in ledger(root, "daily").items()}

    assert figures(other) == figures(project)


# -- the ledger API -------------------------------------------------------------------------


def test_ledger_keeps_the_last_build_figures_until_a_build_replaces_them(tmp_path: Path) -> None:
    t0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)
    with MetadataStore(f"sqlite:///{tmp_path / 'm.db'}") as metadata:
        book = IntervalLedger(metadata)
        book.start("ds", "2024-01-01", run_id="r1", fingerprint="f1", at=t0)
        assert book.read()["ds"]["2024-01-01"].status == "running"
        book.finish("ds", "2024-01-01", status="built", at=t0, fingerprint="f1",
                    input_versions={"up": 3}, rows=10, rows_before=None, version=0,
                    run_id="r1")  # fmt: skip
        book.start("ds", "2024-01-01", run_id="r2", fingerprint="f2", at=t0)
        running = book.read(["ds"])["ds"]["2024-01-01"]
        assert (running.status, running.rows, running.version, running.run_id) == (
            "running", 10, 0, "r2",
        )  # fmt: skip
        later = t0 + dt.timedelta(hours=1)
        book.finish("ds", "2024-01-01", status="failed", at=later, error="boom", run_id="r2")
        failed = book.read(["ds"])["ds"]["2024-01-01"]
        assert (failed.status, failed.error, failed.built_at, failed.updated_at) == (
            "failed", "boom", t0, later,
        )  # fmt: skip
        assert failed.input_versions == {"up": 3}
        with pytest.raises(ValueError, match="unknown interval status"):
            book.finish("ds", "2024-01-01", status="done", at=t0)
        book.finish("ds", "2024-01-02", status="built", at=t0, rows=1)
        book.finish("other", "EU", status="built", at=t0, rows=1)
        assert sorted(book.read(["ds"])["ds"]) == ["2024-01-01", "2024-01-02"]
        assert set(book.read()) == {"ds", "other"}
        assert book.forget("ds", ["2024-01-02"]) == 1
        assert sorted(book.read(["ds"])["ds"]) == ["2024-01-01"]
        assert book.forget("ds") == 1 and book.read(["ds"]) == {}
        book.record_definition("ds", "f1", "sql", "SELECT 1", t0)
        book.record_definition("ds", "f1", "sql", "SELECT 2", t0)  # kept once
        assert book.definition("ds", "f1") == "SELECT 1"
        assert book.definition("ds", "nope") is None
