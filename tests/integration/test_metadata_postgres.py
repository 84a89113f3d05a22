"""Metadata store on a real PostgreSQL server: same behaviour as on SQLite."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.config import Config
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text
from sqlalchemy.engine import make_url

from lakeforge.errors import LakeforgeError
from lakeforge.metadata import MetadataStore
from lakeforge.metadata.models import CheckResultRecord, JSONDocument, UTCDateTime
from lakeforge.metadata.store import MIGRATIONS_DIR

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(postgres_url: str) -> Iterator[MetadataStore]:
    opened = MetadataStore(postgres_url)
    yield opened
    opened.close()


@pytest.fixture
def fresh_url(postgres_database: Callable[[], str]) -> str:
    """URL of an empty database private to the test (the one ``fresh_store`` opens)."""
    return postgres_database()


@pytest.fixture
def fresh_store(fresh_url: str) -> Iterator[MetadataStore]:
    """A store on its own empty database, for tests that look at every row."""
    opened = MetadataStore(fresh_url)
    yield opened
    opened.close()


def new_id() -> str:
    return uuid.uuid4().hex


def test_round_trip_with_prefix_lookup(store: MetadataStore) -> None:
    run_id = new_id()
    store.start_run(
        run_id,
        project="demo",
        selection="tag:daily",
        full_refresh=False,
        started_at=T0.astimezone(timezone(timedelta(hours=-5))),
        options={"no_gate": True},
    )
    task_id = store.start_task(
        run_id, dataset="orders", layer="silver", reason="code changed", started_at=T0
    )
    store.finish_task(
        task_id,
        status="failed",
        finished_at=T0 + timedelta(seconds=3),
        attempts=3,
        rows_in=5_000_000_000,
        input_versions={"raw": 7},
        fingerprint="f" * 64,
        error="boom",
        metrics={"nested": {"a": [1, 2]}},
    )
    store.record_task(
        run_id, dataset="gold", layer="gold", status="upstream_failed", reason="orders", at=T0
    )
    store.finish_run(run_id, status="failed", finished_at=T0 + timedelta(seconds=4), error="boom")

    run = store.get_run(run_id[:12])
    assert run.id == run_id and run.options == {"no_gate": True}
    assert run.started_at == T0 and run.started_at.tzinfo is UTC
    assert (run.status, run.error, run.counts) == (
        "failed",
        "boom",
        {"failed": 1, "upstream_failed": 1},
    )
    failed, skipped = run.tasks
    assert (failed.id, failed.attempts, failed.rows_in, failed.rows_out) == (
        task_id,
        3,
        5_000_000_000,
        None,
    )
    assert failed.input_versions == {"raw": 7} and failed.metrics == {"nested": {"a": [1, 2]}}
    assert failed.finished_at == T0 + timedelta(seconds=3)
    assert failed.finished_at is not None and failed.finished_at.tzinfo is UTC
    assert (skipped.status, skipped.attempts, skipped.started_at) == ("upstream_failed", 0, T0)

    with pytest.raises(LakeforgeError, match="no run"):
        store.get_run("not-" + run_id)
    with pytest.raises(LakeforgeError, match="no run"):
        store.start_task("not-" + run_id, dataset="d", layer=None, reason=None, started_at=T0)


def test_listings_are_newest_first(fresh_store: MetadataStore) -> None:
    for i in range(4):
        at = T0 + timedelta(hours=i)
        fresh_store.start_run(
            f"r{i}", project="p", selection=None, full_refresh=False, started_at=at
        )
        fresh_store.record_task(
            f"r{i}", dataset="d", layer=None, status="skipped", reason=None, at=at
        )
    assert [r.id for r in fresh_store.list_runs(limit=2)] == ["r3", "r2"]
    latest = fresh_store.latest_run()
    assert latest is not None and latest.id == "r3" and len(latest.tasks) == 1
    assert [t.run_id for t in fresh_store.list_tasks("d", limit=3)] == ["r3", "r2", "r1"]
    assert fresh_store.list_tasks("other") == []
    with pytest.raises(LakeforgeError, match="ambiguous"):
        fresh_store.get_run("r")


def test_threads_write_concurrently(fresh_store: MetadataStore) -> None:
    fresh_store.start_run("busy", project="p", selection=None, full_refresh=False, started_at=T0)

    def work(worker: int) -> int:
        for i in range(20):
            task_id = fresh_store.start_task(
                "busy", dataset=f"d{worker}", layer=None, reason=None, started_at=T0
            )
            fresh_store.finish_task(task_id, status="success", finished_at=T0, rows_out=i)
        return worker

    with ThreadPoolExecutor(max_workers=8) as pool:
        assert sorted(pool.map(work, range(8))) == list(range(8))
    fresh_store.finish_run("busy", status="success", finished_at=T0)
    assert fresh_store.get_run("busy").counts == {"success": 160}


def test_concurrent_openers_of_a_fresh_database(postgres_database: Callable[[], str]) -> None:
    openers = 4
    for _ in range(3):
        url = postgres_database()
        barrier = threading.Barrier(openers, timeout=30)

        def open_and_write(me: int, url: str = url, barrier: threading.Barrier = barrier) -> str:
            barrier.wait()
            with MetadataStore(url) as opened:
                opened.start_run(
                    f"p{me}", project="p", selection=None, full_refresh=False, started_at=T0
                )
            return f"p{me}"

        with ThreadPoolExecutor(max_workers=openers) as pool:
            written = sorted(pool.map(open_and_write, range(openers)))
        with MetadataStore(url) as check:
            assert sorted(r.id for r in check.list_runs()) == written


def test_schema_uses_native_types_and_reopen_skips_alembic(
    postgres_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    MetadataStore(postgres_url).close()

    def fail_upgrade(*args: object, **kwargs: object) -> None:
        raise AssertionError("upgrade ran on an up-to-date database")

    monkeypatch.setattr(command, "upgrade", fail_upgrade)
    MetadataStore(postgres_url).close()

    engine = create_engine(postgres_url)
    with engine.connect() as conn:
        types: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'lf_tasks'"
                )
            ).all()
        )
        check_types: dict[str, str] = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'lf_check_results'"
                )
            ).all()
        )
        version = conn.execute(text("SELECT version_num FROM lf_alembic_version")).scalar_one()
    engine.dispose()
    assert types["metrics"] == "jsonb"
    assert types["started_at"] == "timestamp with time zone"
    assert types["rows_in"] == "bigint"
    assert check_types["sample"] == "jsonb"
    assert check_types["value"] == "double precision"
    assert check_types["created_at"] == "timestamp with time zone"
    assert (check_types["failing"], check_types["total"]) == ("bigint", "bigint")
    assert check_types["published"] == "boolean"
    assert version == head_revision()


def test_missing_database_is_reported(postgres_url: str) -> None:
    url = make_url(postgres_url).set(password="hunter2", database=f"missing_{new_id()}")
    with pytest.raises(LakeforgeError, match="unavailable") as info:
        MetadataStore(url.render_as_string(hide_password=False))
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    assert info.value.hint


# -- data-quality check results ------------------------------------------------------------


def check_result(run_id: str, at: datetime = T0, **kw: Any) -> CheckResultRecord:
    """A check result with plausible defaults; keywords override any field."""
    fields: dict[str, Any] = {
        "run_id": run_id,
        "dataset": "orders",
        "name": "row_count",
        "check_type": "row_count",
        "origin": "check",
        "severity": "error",
        "status": "pass",
        "published": True,
        "created_at": at,
    }
    fields.update(kw)
    return CheckResultRecord(**fields)


def start(store: MetadataStore, run_id: str, at: datetime = T0) -> None:
    store.start_run(run_id, project="p", selection=None, full_refresh=False, started_at=at)


def head_revision() -> str:
    """The newest migration revision shipped with the store."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


def migrate(url: str, action: str, revision: str) -> None:
    """Run ``alembic upgrade|downgrade revision`` on the store's migrations."""
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    engine = create_engine(url)
    try:
        with engine.begin() as conn:
            config.attributes["connection"] = conn
            getattr(command, action)(config, revision)
    finally:
        engine.dispose()


def test_upgrade_from_0001_keeps_runs_and_downgrade_drops_later_tables(
    postgres_database: Callable[[], str],
) -> None:
    url = postgres_database()
    migrate(url, "upgrade", "0001")
    runs = sa.table(
        "lf_runs",
        *(sa.column(c) for c in ("id", "project", "selection", "full_refresh", "status")),
        sa.column("started_at", UTCDateTime()),
        sa.column("options", JSONDocument),
        sa.column("counts", JSONDocument),
    )
    tasks = sa.table(
        "lf_tasks",
        *(sa.column(c) for c in ("run_id", "dataset", "status", "attempts")),
        sa.column("started_at", UTCDateTime()),
        sa.column("input_versions", JSONDocument),
        sa.column("metrics", JSONDocument),
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        for i in range(2):
            at = T0 + timedelta(hours=i)
            conn.execute(
                runs.insert().values(
                    id=f"old-{i}",
                    project="demo",
                    selection="tag:daily",
                    full_refresh=False,
                    status="success",
                    started_at=at,
                    options={"no_gate": bool(i)},
                    counts={"success": 1},
                )
            )
            conn.execute(
                tasks.insert().values(
                    run_id=f"old-{i}",
                    dataset="orders",
                    status="success",
                    attempts=1,
                    started_at=at,
                    input_versions={"raw": i},
                    metrics={"nested": {"rows": [i]}},
                )
            )

    with MetadataStore(url) as opened:
        assert [r.id for r in opened.list_runs()] == ["old-1", "old-0"]
        old = opened.get_run("old-1")
        assert (old.selection, old.options, old.started_at) == (
            "tag:daily",
            {"no_gate": True},
            T0 + timedelta(hours=1),
        )
        (task,) = old.tasks
        assert (task.input_versions, task.metrics) == ({"raw": 1}, {"nested": {"rows": [1]}})
        opened.record_check_results([check_result("old-1", task_id=task.id, value=1.0)])
        assert [(c.run_id, c.task_id) for c in opened.list_check_results()] == [("old-1", task.id)]
    with engine.connect() as conn:
        version = conn.execute(text("SELECT version_num FROM lf_alembic_version")).scalar_one()
        assert version == head_revision()

    migrate(url, "downgrade", "0001")
    with engine.connect() as conn:
        tables = set(sa.inspect(conn).get_table_names())
        later = {"lf_check_results", "lf_intervals", "lf_definitions", "lf_alerts"}
        later |= {"lf_queue", "lf_pools"}
        assert not tables & later, tables & later
        leftover_indexes = conn.execute(
            text("SELECT indexname FROM pg_indexes WHERE indexname LIKE 'ix_lf_check_results%'")
        ).all()
        assert leftover_indexes == []
        version = conn.execute(text("SELECT version_num FROM lf_alembic_version")).scalar_one()
        assert version == "0001"
        assert conn.execute(text("SELECT id FROM lf_runs ORDER BY id")).scalars().all() == [
            "old-0",
            "old-1",
        ]
        assert conn.execute(text("SELECT count(*) FROM lf_tasks")).scalar_one() == 2
    engine.dispose()

    with MetadataStore(url) as reopened:
        assert reopened.list_check_results() == []
        assert len(reopened.get_run("old-0").tasks) == 1


SAMPLE = {
    "rows": [
        {"id": 1, "name": "Zoë Ångström", "city": "東京", "emoji": "🚀🧪", "tags": ["a", "ß"]},
        {"id": 2, "name": None, "nested": {"deep": {"deeper": [1, 2.5, None, True, {"x": "ü"}]}}},
    ],
    "quoted": 'say "hi"\n\ttab \\ backslash',
    "empty": {},
    "big": 2**53,
}


def test_check_results_round_trip_with_jsonb_samples(
    fresh_store: MetadataStore, fresh_url: str
) -> None:
    start(fresh_store, "r")
    task_id = fresh_store.start_task(
        "r", dataset="orders", layer="silver", reason=None, started_at=T0
    )
    full = check_result(
        "r",
        at=(T0 + timedelta(seconds=1)).astimezone(timezone(timedelta(hours=-5))),
        task_id=task_id,
        name="amount_in_range",
        check_type="range",
        origin="contract",
        severity="warn",
        status="warn",
        scope="table",
        value=0.125,
        failing=5_000_000_000,
        total=40_000_000_000,
        threshold="warn > 0.1",
        message="échec: 東京 🚀",
        sample=SAMPLE,
        published=False,
    )
    fresh_store.record_check_results(
        [
            full,
            check_result("r", name="list", sample=[1, "二", [None]]),
            check_result("r", name="none", sample=None, status="skipped"),
        ]
    )
    by_name = {c.name: c for c in fresh_store.list_check_results()}
    stored = by_name["amount_in_range"]
    assert stored == replace(full, created_at=T0 + timedelta(seconds=1), id=stored.id)
    assert stored.created_at.tzinfo is UTC and stored.id is not None
    assert by_name["list"].sample == [1, "二", [None]]
    assert by_name["none"].sample is None
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        # No sample is SQL NULL, not the JSON document "null"; JSONB can be queried.
        assert conn.execute(
            text("SELECT name FROM lf_check_results WHERE sample IS NULL")
        ).scalars().all() == ["none"]
        assert (
            conn.execute(
                text("SELECT sample #>> '{rows,0,city}' FROM lf_check_results WHERE name = :n"),
                {"n": "amount_in_range"},
            ).scalar_one()
            == "東京"
        )
    engine.dispose()


def test_list_check_results_filters_and_orders(fresh_store: MetadataStore) -> None:
    start(fresh_store, "r1")
    start(fresh_store, "r2", at=T0 + timedelta(hours=1))
    h = timedelta(hours=1)
    fresh_store.record_check_results(
        [
            check_result("r2", T0 + h, name="not_null_id", status="fail"),
            check_result("r1", T0, name="not_null_id", status="pass"),
            check_result("r1", T0 + timedelta(seconds=1), status="warn"),
            check_result("r2", T0 + h, dataset="customers", status="error"),
            check_result("r2", T0 + h + timedelta(seconds=1), status="pass"),
        ]
    )

    def listed(**filters: Any) -> list[tuple[str, str, str, str]]:
        return [
            (c.run_id, c.dataset, c.name, c.status)
            for c in fresh_store.list_check_results(**filters)
        ]

    assert listed() == [
        ("r2", "orders", "row_count", "pass"),
        ("r2", "customers", "row_count", "error"),
        ("r2", "orders", "not_null_id", "fail"),
        ("r1", "orders", "row_count", "warn"),
        ("r1", "orders", "not_null_id", "pass"),
    ]
    assert listed(run_id="r1", status="pass") == [("r1", "orders", "not_null_id", "pass")]
    assert listed(dataset="orders", name="not_null_id", limit=1) == [
        ("r2", "orders", "not_null_id", "fail")
    ]
    assert listed(status=["fail", "error"]) == [
        ("r2", "customers", "row_count", "error"),
        ("r2", "orders", "not_null_id", "fail"),
    ]
    assert listed(dataset="nope") == []


def test_metric_history_order_limit_and_filters(fresh_store: MetadataStore) -> None:
    for i, run_id in enumerate(("r1", "r2", "r3")):
        start(fresh_store, run_id, at=T0 + timedelta(hours=i))
    h = timedelta(hours=1)
    fresh_store.record_check_results(
        [
            check_result("r3", T0 + 2 * h, value=99.0),
            check_result("r1", T0, value=10.0),
            check_result("r1", T0 + timedelta(minutes=1), value=11.0, published=False),
            check_result("r2", T0 + h, value=None, status="skipped"),
            # NaN is stored as NULL (PostgreSQL would keep it, SQLite would not).
            check_result("r2", T0 + h, value=float("nan"), status="error"),
            check_result("r2", T0 + h + timedelta(seconds=1), value=12.0),
            check_result("r2", T0 + h + timedelta(seconds=2), value=13.0),
            check_result("r2", T0 + h + timedelta(seconds=2), value=14.0),
            check_result("r2", T0 + h, dataset="customers", value=500.0),
            check_result("r2", T0 + h, name="null_fraction", value=0.5),
        ]
    )
    history = fresh_store.metric_history
    assert history("orders", "row_count", limit=10) == [99.0, 14.0, 13.0, 12.0, 10.0]
    assert history("orders", "row_count", limit=10, before_run="r3") == [14.0, 13.0, 12.0, 10.0]
    assert history("orders", "row_count", limit=2, before_run="r3") == [14.0, 13.0]
    assert history("orders", "row_count", limit=10, published_only=False, before_run="r3") == [
        14.0,
        13.0,
        12.0,
        11.0,
        10.0,
    ]
    assert history("customers", "row_count", limit=10) == [500.0]
    assert history("orders", "missing", limit=10) == []
    assert [c.value for c in fresh_store.list_check_results(status="error")] == [None]


def test_metric_history_reads_the_index(fresh_store: MetadataStore, fresh_url: str) -> None:
    start(fresh_store, "r")
    fresh_store.record_check_results(
        [check_result("r", T0 + timedelta(seconds=i), value=float(i)) for i in range(5)]
    )
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM lf_check_results" in statement:
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        assert fresh_store.metric_history("orders", "row_count", limit=2) == [4.0, 3.0]
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    engine = create_engine(fresh_url)
    with engine.connect() as conn:
        # A five-row table is cheapest to scan; forbid that to see which index would serve.
        conn.exec_driver_sql("SET enable_seqscan = off")
        plan = "\n".join(row[0] for row in conn.exec_driver_sql("EXPLAIN " + statement, parameters))
    engine.dispose()
    assert "Index Scan Backward using ix_lf_check_results_dataset_name_created_at" in plan, plan


def test_deleting_a_run_deletes_its_check_results(
    fresh_store: MetadataStore, fresh_url: str
) -> None:
    # The store has no delete yet; this pins the schema's ON DELETE CASCADE for pruning.
    start(fresh_store, "gone")
    start(fresh_store, "kept")
    task_id = fresh_store.start_task(
        "gone", dataset="orders", layer=None, reason=None, started_at=T0
    )
    fresh_store.record_check_results(
        [check_result("gone", task_id=task_id), check_result("kept", name="kept_check")]
    )
    engine = create_engine(fresh_url)
    with engine.begin() as conn:
        conn.execute(text("DELETE FROM lf_runs WHERE id = 'gone'"))
    engine.dispose()
    assert [(c.run_id, c.name) for c in fresh_store.list_check_results()] == [
        ("kept", "kept_check")
    ]


def test_record_check_results_rejects_bad_input_atomically(fresh_store: MetadataStore) -> None:
    start(fresh_store, "r")
    good = check_result("r")
    cases: list[tuple[CheckResultRecord, str]] = [
        (check_result("nope"), "no run 'nope'"),
        (check_result("r", task_id=12345), "no task with id 12345"),
        (check_result("r", status="passed"), "invalid check status"),
        # PostgreSQL enforces column lengths; the store says so instead of "unavailable".
        (check_result("r", dataset="d" * 256), "dataset is 256 characters long"),
        (check_result("r", scope="x" * 17), "scope is 17 characters long"),
    ]
    for bad, match in cases:
        with pytest.raises(LakeforgeError, match=match):
            fresh_store.record_check_results([good, bad])
    assert fresh_store.list_check_results() == []


def test_threads_record_check_results_concurrently(fresh_store: MetadataStore) -> None:
    workers, batches, per_batch = 8, 10, 5
    for w in range(workers):
        start(fresh_store, f"run-{w}")
    barrier = threading.Barrier(workers, timeout=30)

    def work(worker: int) -> list[float]:
        barrier.wait()
        seen: list[float] = []
        for b in range(batches):
            at = T0 + timedelta(seconds=b)
            fresh_store.record_check_results(
                [
                    check_result(f"run-{worker}", at, dataset=f"d{worker}", name=f"c{i}", value=b)
                    for i in range(per_batch)
                ]
            )
            seen = fresh_store.metric_history(f"d{worker}", "c0", limit=3)
        return seen

    with ThreadPoolExecutor(max_workers=workers) as pool:
        last_seen = list(pool.map(work, range(workers)))

    assert last_seen == [[9.0, 8.0, 7.0]] * workers
    results = fresh_store.list_check_results()
    assert len(results) == workers * batches * per_batch
    assert len({c.id for c in results}) == len(results)
    for w in range(workers):
        assert len(fresh_store.list_check_results(run_id=f"run-{w}")) == batches * per_batch


def test_upgrade_to_0007_fills_stream_ids_and_prunes_on_postgres(
    postgres_database: Callable[[], str],
) -> None:
    from lakeforge.metadata.retention import Cutoffs, Pruned, prune_runs

    url = postgres_database()
    migrate(url, "upgrade", "0006")
    runs = sa.table(
        "lf_runs",
        *(sa.column(c) for c in ("id", "project", "selection", "full_refresh", "status")),
        sa.column("started_at", UTCDateTime()),
        sa.column("options", JSONDocument),
        sa.column("counts", JSONDocument),
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        for i, options in enumerate(({"gate": True}, {"stream": "s-1"}, {"stream": "s-1"})):
            conn.execute(
                runs.insert().values(
                    id=f"old-{i}", project="demo", selection=None, full_refresh=False,
                    status="success", started_at=T0 + timedelta(hours=i), options=options,
                    counts={},
                )
            )  # fmt: skip
    engine.dispose()
    with MetadataStore(url) as opened:
        assert [(r.id, r.stream_id) for r in opened.list_runs()] == [
            ("old-2", "s-1"),
            ("old-1", "s-1"),
            ("old-0", None),
        ]
        (stream,) = opened.list_streams()
        assert (stream.micro_batches, stream.failed, stream.last.id) == (2, 0, "old-2")
        assert stream.first_started_at == T0 + timedelta(hours=1)
        cutoffs = Cutoffs(micro_batches=T0 + timedelta(hours=1, minutes=30))
        assert prune_runs(opened, cutoffs, dry_run=True) == Pruned(1, 0, 0, dry_run=True)
        assert prune_runs(opened, cutoffs) == Pruned(runs=1)
        assert [r.id for r in opened.list_runs()] == ["old-2", "old-0"]
    migrate(url, "downgrade", "0006")
