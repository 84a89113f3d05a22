"""Expectations and dataset checks on candidate batches: every action, every check type,
nulls, empty and all-failing batches, thresholds, scopes, samples and the row accounting."""

from __future__ import annotations

import datetime as dt
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lakeforge.errors import ConfigError, SQLError
from lakeforge.graph.spec import Dataset, DatasetConfig
from lakeforge.quality.anomaly import score_value
from lakeforge.quality.expectations import FAILED_COLUMN, apply_expectations
from lakeforge.quality.gate import audit
from lakeforge.storage.delta import CommitInfo, DeltaStore

NOW = dt.datetime(2026, 1, 10, 12, 0, tzinfo=dt.UTC)


def dataset(name: str = "orders", **config: Any) -> Dataset:
    from lakeforge.errors import Location

    return Dataset(name, DatasetConfig.model_validate(config), Location("pipelines/p.py", 3))


def orders() -> pa.Table:
    return pa.table(
        {
            "order_id": [1, 2, 3, 3, 5, None],
            "store": ["a", "a", "b", "b", "a", "b"],
            "customer_id": [10, 11, 99, 12, None, 10],
            "status": ["new", "paid", "lost", "new", None, "new"],
            "amount": [5.0, -1.0, 20.0, 1000.5, None, 7.0],
            "email": ["x@a.io", "bad", None, "y@b.io", "z@c.io", "q@d.io"],
            "ts": pa.array(
                [NOW - dt.timedelta(hours=h) for h in (1, 2, 3, 4, 5, 30)],
                pa.timestamp("us", tz="UTC"),
            ),
        }
    )


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    s = DeltaStore(str(tmp_path / "lake"))
    customers = pa.table({"customer_id": [10, 11, 12, 13]})
    s.write("customers", customers, CommitInfo("r0", "customers", "f", 1), mode="overwrite")
    return s


def run_checks(store: DeltaStore, checks: list[Any], data: pa.Table | None = None, **kw: Any):
    ds = dataset(checks=checks, **kw)
    return audit(ds, orders() if data is None else data, store=store, target_version=None, now=NOW)


def by_name(outcome: Any) -> dict[str, Any]:
    return {r.name: r for r in outcome.results}


# --- expectations ---------------------------------------------------------------------


def test_each_action_and_the_row_accounting() -> None:
    ds = dataset(
        expect={
            "positive": {"expr": "amount > 0", "action": "quarantine"},
            "known_status": {"expr": "status IN ('new', 'paid')", "action": "drop"},
            "has_email": {"expr": "email LIKE '%@%'", "action": "warn"},
        }
    )
    con = duckdb.connect()
    split = apply_expectations(con, ds, orders(), sample_size=20, pii_columns=set())
    results = {r.name: r for r in split.results}
    # amount -1 → quarantine; status 'lost' → drop; NULL amount/status/email pass (CHECK semantics)
    assert results["positive"].failing == 1
    assert results["known_status"].failing == 1
    assert results["has_email"].failing == 1 and results["has_email"].status == "warn"
    assert split.quarantined_rows == 1 and split.dropped == 1
    assert split.published.num_rows == 4
    assert split.rows_in == split.published.num_rows + split.quarantined_rows + split.dropped
    assert split.quarantined is not None
    row = split.quarantined.to_pylist()[0]
    assert row["order_id"] == 2 and row[FAILED_COLUMN] == ["positive", "has_email"]


def test_a_row_failing_drop_and_quarantine_is_quarantined_not_dropped() -> None:
    ds = dataset(
        expect={
            "a": {"expr": "amount < 100", "action": "drop"},
            "b": {"expr": "amount < 500", "action": "quarantine"},
        }
    )
    split = apply_expectations(duckdb.connect(), ds, orders(), sample_size=5, pii_columns=set())
    assert split.dropped == 0 and split.quarantined_rows == 1
    assert split.quarantined is not None
    assert split.quarantined.column(FAILED_COLUMN).to_pylist() == [["a", "b"]]


def test_fail_action_marks_a_blocking_result(store: DeltaStore) -> None:
    ds = dataset(expect={"positive": "amount > 0"}, on_violation="fail")
    outcome = audit(ds, orders(), store=store, target_version=None)
    assert [r.name for r in outcome.blocking] == ["positive"]
    assert outcome.published.num_rows == 6  # nothing excluded: the whole batch is refused


def test_bad_expression_names_the_expectation() -> None:
    ds = dataset(expect={"typo": "amount_x > 0"})
    with pytest.raises(SQLError) as err:
        apply_expectations(duckdb.connect(), ds, orders(), sample_size=5, pii_columns=set())
    assert "typo" in str(err.value) and "amount" in (err.value.hint or "")
    with pytest.raises(ConfigError, match="not a query"):
        apply_expectations(
            duckdb.connect(),
            dataset(expect={"q": "SELECT 1"}),
            orders(),
            sample_size=5,
            pii_columns=set(),
        )


ACTIONS = ["warn", "drop", "quarantine"]


@settings(max_examples=60, deadline=None)
@given(
    values=st.lists(st.one_of(st.none(), st.integers(-50, 50)), max_size=40),
    rules=st.lists(
        st.tuples(st.integers(-50, 50), st.sampled_from(ACTIONS)), min_size=1, max_size=4
    ),
)
def test_split_matches_a_row_by_row_model(values: list[int | None], rules: list[Any]) -> None:
    expect = {f"r{i}": {"expr": f"x > {lo}", "action": a} for i, (lo, a) in enumerate(rules)}
    data = pa.table({"x": pa.array(values, pa.int64()), "row": list(range(len(values)))})
    split = apply_expectations(
        duckdb.connect(), dataset(expect=expect), data, sample_size=3, pii_columns=set()
    )
    published, quarantined, dropped = [], [], 0
    for i, x in enumerate(values):
        failed = [a for lo, a in rules if x is not None and not x > lo]
        if "quarantine" in failed:
            quarantined.append(i)
        elif "drop" in failed:
            dropped += 1
        else:
            published.append(i)
    assert split.published.column("row").to_pylist() == published
    got_q = [] if split.quarantined is None else split.quarantined.column("row").to_pylist()
    assert got_q == quarantined
    assert split.dropped == dropped
    assert split.rows_in == len(values) == len(published) + len(quarantined) + dropped
    for r in split.results:
        assert (r.failing is not None and r.sample is not None) or r.failing == 0
        assert len(r.sample or []) <= 3


# --- dataset checks -------------------------------------------------------------------


def test_every_check_type_counts_exactly(store: DeltaStore) -> None:
    outcome = run_checks(
        store,
        [
            {"not_null": ["order_id", "amount"]},
            {"unique": "order_id"},
            {"unique": ["order_id", "store"]},
            {"type": "accepted_values", "column": "status", "values": ["new", "paid"]},
            {"type": "range", "column": "amount", "min": 0, "max": 1000},
            {"type": "regex", "column": "email", "pattern": r"[^@]+@[^@]+\.[a-z]+"},
            {"type": "relationships", "column": "customer_id", "to": "customers"},
            {"type": "row_count", "min": 1, "max": 5},
            {"type": "freshness", "column": "ts", "warn_after": "30m", "error_after": "6h"},
            {"type": "schema", "columns": {"order_id": "BIGINT", "amount": "DOUBLE", "nope": None}},
            {"type": "custom_sql", "sql": "SELECT * FROM orders WHERE amount > 100"},
            {"type": "sql_value", "sql": "SELECT count(*) FROM customers", "error_if": "< 4"},
        ],
    )
    r = by_name(outcome)
    assert r["not_null(order_id)"].failing == 1
    assert r["not_null(amount)"].failing == 1
    assert r["unique(order_id)"].failing == 2  # both rows with order_id 3; NULL not compared
    assert r["unique(order_id, store)"].failing == 2
    assert r["accepted_values(status)"].failing == 1  # 'lost'; NULL status passes
    assert r["range(amount)"].failing == 2  # -1 and 1000.5
    assert r["regex(email)"].failing == 1  # 'bad'
    assert r["relationships(customer_id → customers.customer_id)"].failing == 1  # 99
    assert r["row_count"].status == "fail" and r["row_count"].value == 6
    assert r["freshness(ts)"].status == "warn" and r["freshness(ts)"].value == 3600
    assert r["schema"].status == "fail" and "missing column nope" in r["schema"].message
    assert r["custom_sql"].failing == 1
    assert r["sql_value"].status == "pass" and r["sql_value"].value == 4
    assert outcome.read_versions == {"customers": 0}
    for result in outcome.results:
        if result.failing and result.check_type != "schema":  # schema failures are not rows
            assert result.sample and len(result.sample) == min(result.failing, 20)


def test_samples_are_capped_and_pii_is_masked(store: DeltaStore) -> None:
    data = pa.table({"order_id": [None] * 100, "email": ["a@b.c"] * 100})
    ds = dataset(checks=[{"not_null": "order_id"}], columns={"email": {"pii": True}})
    outcome = audit(ds, data, store=store, target_version=None)
    (result,) = outcome.results
    assert result.failing == 100 and len(result.sample or []) == 20
    assert {row["email"] for row in result.sample or []} == {"***"}


def test_empty_and_all_failing_batches(store: DeltaStore) -> None:
    checks = [{"not_null": "order_id"}, {"unique": "order_id"}, {"type": "row_count", "min": 1}]
    empty = orders().slice(0, 0)
    r = by_name(run_checks(store, checks, empty))
    assert r["not_null(order_id)"].status == "pass" and r["not_null(order_id)"].total == 0
    assert r["row_count"].status == "fail"
    bad = pa.table({"order_id": pa.array([None, None, None], pa.int64())})
    r = by_name(run_checks(store, checks, bad))
    assert r["not_null(order_id)"].failing == 3 and r["not_null(order_id)"].status == "fail"
    assert r["unique(order_id)"].failing == 0  # nulls are not duplicates


def test_thresholds_in_percent_and_severity(store: DeltaStore) -> None:
    checks = [
        {"name": "lenient", "type": "not_null", "column": "amount", "error_if": "> 20%"},
        {"name": "warned", "type": "not_null", "column": "amount", "warn_if": "> 10%"},
        {"name": "soft", "type": "not_null", "column": "amount", "severity": "warn"},
    ]
    r = by_name(run_checks(store, checks))
    assert r["lenient"].status == "pass"  # 1 of 6 = 16.7%
    assert r["warned"].status == "warn"
    assert r["soft"].status == "warn" and not r["soft"].blocking


def test_a_check_that_cannot_run_is_an_error_and_does_not_hide_others(
    store: DeltaStore,
) -> None:
    r = by_name(
        run_checks(
            store,
            [
                {"not_null": "order_id"},
                {"type": "range", "column": "no_such_column", "min": 0},
                {"type": "custom_sql", "sql": "SELECT * FROM orders WHERE nope > 1"},
            ],
        )
    )
    assert r["not_null(order_id)"].failing == 1
    assert r["range(no_such_column)"].status == "error" and r["range(no_such_column)"].blocking
    assert r["custom_sql"].status == "error"


def test_where_filters_the_checked_rows(store: DeltaStore) -> None:
    checks = [{"type": "not_null", "column": "amount", "where": "store = 'b'"}]
    (result,) = run_checks(store, checks).results
    assert result.total == 3 and result.failing == 0


def test_table_scope_sees_the_table_after_an_append(store: DeltaStore, tmp_path: Path) -> None:
    first = pa.table({"id": [1, 2]})
    store.write("events", first, CommitInfo("r1", "events", "f", 1), mode="overwrite")
    ds = dataset(
        "events",
        write="append",
        checks=[
            {"name": "batch", "unique": "id"},
            {"name": "table", "type": "unique", "columns": ["id"], "scope": "table"},
        ],
    )
    outcome = audit(ds, pa.table({"id": [2, 3]}), store=store, target_version=0)
    r = by_name(outcome)
    assert r["batch"].status == "pass"
    assert r["table"].failing == 2 and r["table"].status == "fail"


def test_table_scope_follows_merge_semantics(store: DeltaStore) -> None:
    current = pa.table({"id": [1, 2], "v": [5, 5], "amount": [1.0, 2.0]})
    store.write("m", current, CommitInfo("r1", "m", "f", 1), mode="overwrite")
    ds = dataset(
        "m",
        write={
            "strategy": "merge",
            "keys": ["id"],
            "sequence_by": "v",
            "delete_when": "amount < 0",
        },
        checks=[{"type": "row_count", "min": 2, "max": 2, "scope": "table"}],
    )
    # id 1: older record (v 4) does not apply; id 2 deleted; id 3 inserted → ids {1, 3}
    batch = pa.table({"id": [1, 2, 3], "v": [4, 6, 1], "amount": [9.0, -1.0, 3.0]})
    (result,) = audit(ds, batch, store=store, target_version=0).results
    assert result.value == 2 and result.status == "pass"


def test_relationships_to_a_dataset_without_a_table_is_an_error(store: DeltaStore) -> None:
    checks = [{"type": "relationships", "column": "customer_id", "to": "ghosts", "field": "id"}]
    (result,) = run_checks(store, checks).results
    assert result.status == "error" and "ghosts" in result.message


# --- anomaly --------------------------------------------------------------------------


def test_anomaly_score_detects_a_spike_and_ignores_noise() -> None:
    import random

    rng = random.Random(7)
    history = [1000 + rng.gauss(0, 30) for _ in range(20)]
    for normal in (1000, 1040, 955):
        assert not score_value(
            normal, history, method="zscore", sensitivity=3.5, max_change=0.5
        ).anomalous
    spike = score_value(2500, history, method="zscore", sensitivity=3.5, max_change=0.5)
    assert spike.anomalous and spike.score > 3.5
    drop = score_value(100, history, method="relative", sensitivity=3.5, max_change=0.5)
    assert drop.anomalous
    constant = [500.0] * 10
    assert not score_value(
        510, constant, method="zscore", sensitivity=3.5, max_change=0.5
    ).anomalous
    assert score_value(900, constant, method="zscore", sensitivity=3.5, max_change=0.5).anomalous


def test_anomaly_check_learns_then_flags(store: DeltaStore) -> None:
    check = {"type": "anomaly", "metric": "volume", "min_history": 3, "severity": "error"}
    ds = dataset(checks=[check])
    learning = audit(ds, orders(), store=store, target_version=None, history=lambda n, w: [6.0])
    assert learning.results[0].status == "pass" and "learning" in learning.results[0].message
    calm = audit(ds, orders(), store=store, target_version=None, history=lambda n, w: [6, 7, 5, 6])
    assert calm.results[0].status == "pass"
    spiky = pa.concat_tables([orders()] * 20)
    flagged = audit(ds, spiky, store=store, target_version=None, history=lambda n, w: [6, 7, 5, 6])
    assert flagged.results[0].status == "fail" and flagged.results[0].blocking


def test_anomaly_metrics_null_rate_distinct_and_mean(store: DeltaStore) -> None:
    checks = [
        {"type": "anomaly", "metric": m, "column": "amount", "min_history": 2}
        for m in ("null_rate", "distinct_count", "mean")
    ]
    outcome = run_checks(store, checks)
    values = {r.name: r.value for r in outcome.results}
    assert values["anomaly_null_rate(amount)"] == pytest.approx(1 / 6)
    assert values["anomaly_distinct_count(amount)"] == 5
    assert values["anomaly_mean(amount)"] == pytest.approx((5 - 1 + 20 + 1000.5 + 7) / 5)


# --- declaration errors ---------------------------------------------------------------


def test_check_declarations_are_validated() -> None:
    with pytest.raises(ValueError, match="threshold"):
        DatasetConfig.model_validate({"checks": [{"not_null": "a"} | {"error_if": "lots"}]})
    with pytest.raises(ValueError, match="range check needs"):
        DatasetConfig.model_validate({"checks": [{"type": "range", "column": "a"}]})
    with pytest.raises(ValueError, match="two checks are named"):
        DatasetConfig.model_validate({"checks": [{"not_null": "a"}, {"not_null": "a"}]})
    with pytest.raises(ValueError, match="not a valid RE2 regular expression"):
        DatasetConfig.model_validate({"checks": [{"type": "regex", "column": "a", "pattern": "("}]})
    with pytest.raises(ValueError, match="needs a column"):
        DatasetConfig.model_validate({"checks": [{"type": "anomaly", "metric": "mean"}]})


def test_freshness_honours_severity_and_where(store: DeltaStore) -> None:
    checks = [
        {
            "name": "soft",
            "type": "freshness",
            "column": "ts",
            "error_after": "30m",
            "severity": "warn",
        },
        {
            "name": "recent_b",
            "type": "freshness",
            "column": "ts",
            "error_after": "2h",
            "where": "store = 'b'",
        },
    ]
    r = by_name(run_checks(store, checks))
    assert r["soft"].status == "warn" and not r["soft"].blocking
    assert r["recent_b"].value == 3 * 3600 and r["recent_b"].status == "fail"


def test_row_count_bounds_are_shown_even_when_zero(store: DeltaStore) -> None:
    (result,) = run_checks(store, [{"type": "row_count", "min": 0, "max": 0}]).results
    assert result.threshold == "rows in [0, 0]" and result.status == "fail"


def test_declarations_refused_at_load() -> None:
    with pytest.raises(ValueError, match="RE2"):
        DatasetConfig.model_validate(
            {"checks": [{"type": "regex", "column": "a", "pattern": "(?=x)x"}]}
        )
    with pytest.raises(ValueError, match="row count"):
        DatasetConfig.model_validate(
            {"checks": [{"type": "custom_sql", "sql": "SELECT 1", "error_if": "> 5%"}]}
        )
    with pytest.raises(ValueError, match="does not apply"):
        DatasetConfig.model_validate(
            {"checks": [{"type": "schema", "columns": ["a"], "where": "a > 1"}]}
        )
    with pytest.raises(ValueError, match="scd2"):
        DatasetConfig.model_validate(
            {
                "write": {"strategy": "scd2", "keys": ["id"]},
                "checks": [{"type": "row_count", "min": 1, "scope": "table"}],
            }
        )


def test_table_scope_of_a_first_merge_is_the_newest_record_per_key(store: DeltaStore) -> None:
    ds = dataset(
        "m2",
        write={"strategy": "merge", "keys": ["id"], "sequence_by": "v"},
        checks=[{"type": "unique", "columns": ["id"], "scope": "table"}],
    )
    batch = pa.table({"id": [1, 1, 2], "v": [1, 2, 1]})
    (result,) = audit(ds, batch, store=store, target_version=None).results
    assert result.total == 2 and result.status == "pass"


def test_unique_nulls_distinct_or_equal(store: DeltaStore) -> None:
    data = pa.table({"a": [1, 1, 2, None, None], "b": [None, None, 3, None, None]})
    checks = [
        {"name": "sql", "type": "unique", "columns": ["a", "b"]},
        {"name": "grouped", "type": "unique", "columns": ["a", "b"], "nulls_distinct": False},
    ]
    r = by_name(run_checks(store, checks, data))
    assert r["sql"].failing == 0  # a key holding a NULL is never a duplicate
    assert r["grouped"].failing == 2  # (1, NULL) twice; all-NULL keys are skipped
    assert [row["a"] for row in r["grouped"].sample or []] == [1, 1]


def test_samples_are_the_failing_rows_in_order(store: DeltaStore) -> None:
    data = pa.table({"id": list(range(100)), "v": [i if i % 7 else -i for i in range(100)]})
    checks = [{"type": "range", "column": "v", "min": 0}, {"unique": "v"}]
    r = by_name(run_checks(store, checks, data))
    sample = r["range(v)"].sample or []
    assert [row["id"] for row in sample] == [7 * k for k in range(1, 15)]
    assert r["unique(v)"].failing == 0
