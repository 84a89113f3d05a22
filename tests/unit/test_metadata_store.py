"""Metadata store on real SQLite files: round trips, lookups, migrations, concurrency."""

from __future__ import annotations

import socket
import sqlite3
import subprocess
import sys
import textwrap
import threading
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import replace
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import sqlalchemy as sa
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.config import Config
from alembic.runtime.migration import MigrationContext
from alembic.script import ScriptDirectory
from sqlalchemy import Engine, create_engine, event, text

from lakeforge.errors import LakeforgeError
from lakeforge.metadata import MetadataStore, RunRecord, mask_url
from lakeforge.metadata.models import Base, CheckResultRecord, JSONDocument, UTCDateTime
from lakeforge.metadata.store import MIGRATIONS_DIR


def _head() -> str:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS_DIR))
    head = ScriptDirectory.from_config(config).get_current_head()
    assert head is not None
    return head


HEAD = _head()  # the newest migration shipped with the store

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def db_url(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'state' / 'nested' / 'metadata.db'}"


@pytest.fixture
def store(db_url: str) -> Iterator[MetadataStore]:
    opened = MetadataStore(db_url)
    yield opened
    opened.close()


def start(store: MetadataStore, run_id: str, at: datetime = T0, **kw: object) -> None:
    store.start_run(
        run_id,
        project=str(kw.get("project", "demo")),
        selection=kw.get("selection"),  # type: ignore[arg-type]
        full_refresh=bool(kw.get("full_refresh", False)),
        started_at=at,
        options=kw.get("options"),  # type: ignore[arg-type]
    )


def test_run_and_task_round_trip(store: MetadataStore) -> None:
    cet = timezone(timedelta(hours=2))
    start(store, "run-1", selection="+orders", full_refresh=True, options={"no_gate": False})
    task_id = store.start_task(
        "run-1", dataset="orders", layer="silver", reason="new input version", started_at=T0
    )
    store.finish_task(
        task_id,
        status="success",
        finished_at=(T0 + timedelta(seconds=5)).astimezone(cet),
        attempts=2,
        rows_in=10,
        rows_out=9,
        input_versions={"raw_orders": 3},
        output_version=4,
        fingerprint="abc",
        metrics={"quarantined": 1, "seconds": 1.5},
    )
    skipped = store.record_task(
        "run-1", dataset="gold", layer="gold", status="upstream_failed", reason="x failed", at=T0
    )
    store.finish_run("run-1", status="partial", finished_at=T0 + timedelta(minutes=1), error="e")

    run = store.get_run("run-1")
    assert (run.id, run.project, run.selection, run.full_refresh) == (
        "run-1",
        "demo",
        "+orders",
        True,
    )
    assert (run.status, run.error, run.options) == ("partial", "e", {"no_gate": False})
    assert run.started_at == T0 and run.started_at.tzinfo is UTC
    assert run.finished_at == T0 + timedelta(minutes=1)
    assert run.counts == {"success": 1, "upstream_failed": 1}
    done, not_run = run.tasks
    assert done.id == task_id and not_run.id == skipped
    assert (done.dataset, done.layer, done.status, done.reason) == (
        "orders",
        "silver",
        "success",
        "new input version",
    )
    # Stored in UTC whatever the caller's zone.
    assert done.finished_at == T0 + timedelta(seconds=5)
    assert done.finished_at is not None and done.finished_at.tzinfo is UTC
    assert (done.attempts, done.rows_in, done.rows_out, done.output_version) == (2, 10, 9, 4)
    assert done.input_versions == {"raw_orders": 3}
    assert done.metrics == {"quarantined": 1, "seconds": 1.5}
    assert (done.fingerprint, done.error) == ("abc", None)
    assert (not_run.status, not_run.attempts) == ("upstream_failed", 0)
    assert not_run.started_at == not_run.finished_at == T0


def test_running_task_and_run_have_no_finish(store: MetadataStore) -> None:
    start(store, "r")
    store.start_task("r", dataset="d", layer=None, reason=None, started_at=T0)
    run = store.get_run("r")
    assert run.status == "running" and run.finished_at is None
    assert [(t.status, t.finished_at, t.attempts, t.layer) for t in run.tasks] == [
        ("running", None, 1, None)
    ]


def test_get_run_by_unique_prefix(store: MetadataStore) -> None:
    start(store, "20240501-aaaa")
    start(store, "20240501-abbb")
    start(store, "2024_x")
    assert store.get_run("20240501-aa").id == "20240501-aaaa"
    with pytest.raises(LakeforgeError, match="ambiguous") as ambiguous:
        store.get_run("20240501-a")
    assert "20240501-aaaa" in str(ambiguous.value) and ambiguous.value.hint
    with pytest.raises(LakeforgeError, match="no run 'zzz'") as missing:
        store.get_run("zzz")
    assert missing.value.hint
    # LIKE wildcards in the prefix are literal characters.
    assert store.get_run("2024_").id == "2024_x"
    with pytest.raises(LakeforgeError, match="no run"):
        store.get_run("%")


def test_listings_are_newest_first(store: MetadataStore) -> None:
    assert store.latest_run() is None
    assert store.list_runs() == []
    for i in range(5):
        at = T0 + timedelta(minutes=i)
        start(store, f"run-{i}", at=at)
        store.record_task(
            f"run-{i}", dataset="a", layer=None, status="up_to_date", reason=None, at=at
        )
        store.record_task(f"run-{i}", dataset="b", layer=None, status="skipped", reason=None, at=at)

    runs = store.list_runs(limit=3)
    assert [r.id for r in runs] == ["run-4", "run-3", "run-2"]
    assert all(isinstance(r, RunRecord) and r.tasks == [] for r in runs)
    latest = store.latest_run()
    assert latest is not None and latest.id == "run-4"
    assert [t.dataset for t in latest.tasks] == ["a", "b"]

    a_tasks = store.list_tasks("a", limit=10)
    assert [t.run_id for t in a_tasks] == [f"run-{i}" for i in range(4, -1, -1)]
    assert {t.dataset for t in a_tasks} == {"a"}
    newest = store.list_tasks(limit=3)
    assert [(t.run_id, t.dataset) for t in newest] == [
        ("run-4", "b"),
        ("run-4", "a"),
        ("run-3", "b"),
    ]


def test_write_errors_are_clear(store: MetadataStore) -> None:
    start(store, "r")
    with pytest.raises(LakeforgeError, match="already exists"):
        start(store, "r")
    with pytest.raises(LakeforgeError, match="no run 'nope'"):
        store.start_task("nope", dataset="d", layer=None, reason=None, started_at=T0)
    with pytest.raises(LakeforgeError, match="no run 'nope'"):
        store.finish_run("nope", status="success", finished_at=T0)
    with pytest.raises(LakeforgeError, match="no task with id 999"):
        store.finish_task(999, status="success", finished_at=T0)
    with pytest.raises(LakeforgeError, match="invalid run status"):
        store.finish_run("r", status="done", finished_at=T0)
    with pytest.raises(LakeforgeError, match="invalid task status"):
        store.record_task("r", dataset="d", layer=None, status="running", reason=None, at=T0)
    with pytest.raises(ValueError, match="naive datetime"):
        store.start_task("r", dataset="d", layer=None, reason=None, started_at=datetime(2024, 1, 1))
    assert store.get_run("r").tasks == []


def test_sqlite_file_is_created_in_wal_mode(db_url: str, tmp_path: Path) -> None:
    MetadataStore(db_url).close()
    path = tmp_path / "state" / "nested" / "metadata.db"
    with sqlite3.connect(path) as conn:
        assert conn.execute("PRAGMA journal_mode").fetchone()[0] == "wal"
        tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master")}
    assert {"lf_runs", "lf_tasks", "lf_alembic_version"} <= tables


def test_reopen_is_idempotent_and_skips_alembic(
    db_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    first = MetadataStore(db_url)
    start(first, "kept")
    first.close()

    def fail_upgrade(*args: object, **kwargs: object) -> None:
        raise AssertionError("upgrade ran on an up-to-date database")

    monkeypatch.setattr(command, "upgrade", fail_upgrade)
    began = time.perf_counter()
    second = MetadataStore(db_url)
    assert time.perf_counter() - began < 1.0
    assert [r.id for r in second.list_runs()] == ["kept"]
    second.close()

    engine = create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"version_table": "lf_alembic_version"})
        assert context.get_current_heads() == (HEAD,)
    engine.dispose()


def test_migrations_build_exactly_the_models(db_url: str) -> None:
    MetadataStore(db_url).close()
    engine = create_engine(db_url)
    with engine.connect() as conn:
        context = MigrationContext.configure(
            conn,
            opts={
                "compare_type": True,
                "include_object": lambda obj, name, type_, *_: (
                    type_ != "table" or (name.startswith("lf_") and name != "lf_alembic_version")
                ),
            },
        )
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


def test_migrations_build_every_model_table(db_url: str) -> None:
    MetadataStore(db_url).close()
    engine = create_engine(db_url)
    tables = set(sa.inspect(engine).get_table_names())
    engine.dispose()
    assert set(Base.metadata.tables) <= tables


def test_threads_write_concurrently(store: MetadataStore) -> None:
    start(store, "busy")

    def work(worker: int) -> list[int]:
        ids = []
        for i in range(25):
            at = T0 + timedelta(seconds=i)
            task_id = store.start_task(
                "busy", dataset=f"d{worker}", layer=None, reason=None, started_at=at
            )
            store.finish_task(task_id, status="success", finished_at=at, rows_out=i)
            ids.append(task_id)
        return ids

    with ThreadPoolExecutor(max_workers=8) as pool:
        all_ids = [i for ids in pool.map(work, range(8)) for i in ids]
    store.finish_run("busy", status="success", finished_at=T0 + timedelta(minutes=1))

    run = store.get_run("busy")
    assert len(set(all_ids)) == 200
    assert sorted(t.id for t in run.tasks) == sorted(all_ids)
    assert run.counts == {"success": 200}
    assert all(t.finished_at is not None for t in run.tasks)


def test_threads_open_fresh_files_at_once(tmp_path: Path) -> None:
    # Half the threads share one file, the rest each have their own: upgrades of the same
    # file must serialise, upgrades of different files must not trip over each other.
    threads = 8
    paths = [tmp_path / "shared.db"] * 4 + [tmp_path / f"own{i}.db" for i in range(4)]
    barrier = threading.Barrier(threads, timeout=30)

    def open_and_write(me: int) -> None:
        barrier.wait()
        with MetadataStore(f"sqlite:///{paths[me]}") as opened:
            start(opened, f"t{me}")

    with ThreadPoolExecutor(max_workers=threads) as pool:
        list(pool.map(open_and_write, range(threads)))
    for path in set(paths):
        with MetadataStore(f"sqlite:///{path}") as opened:
            expected = sorted(f"t{me}" for me in range(threads) if paths[me] == path)
            assert sorted(run.id for run in opened.list_runs()) == expected


OPENER = textwrap.dedent(
    """
    import sys, time
    from datetime import datetime, timezone
    from pathlib import Path
    from lakeforge.metadata import MetadataStore

    me, workers, rounds = (int(arg) for arg in sys.argv[1:4])
    root = Path(sys.argv[4])
    for r in range(rounds):
        # Rendezvous: every process is ready before any opens round r's fresh file.
        (root / f"ready-{r}-{me}").touch()
        deadline = time.monotonic() + 60
        while len(list(root.glob(f"ready-{r}-*"))) < workers:
            if time.monotonic() > deadline:
                sys.exit("rendezvous timed out")
            time.sleep(0.001)
        store = MetadataStore(f"sqlite:///{root / f'db{r}' / 'metadata.db'}")
        now, run_id = datetime.now(timezone.utc), f"r{r}-p{me}"
        store.start_run(run_id, project="p", selection=None, full_refresh=False, started_at=now)
        store.record_task(run_id, dataset="d", layer=None, status="skipped", reason=None, at=now)
        store.close()
    """
)


def test_processes_open_a_fresh_file_at_once(tmp_path: Path) -> None:
    workers, rounds = 4, 5
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", OPENER, str(me), str(workers), str(rounds), str(tmp_path)],
            stderr=subprocess.PIPE,
            text=True,
        )
        for me in range(workers)
    ]
    errors = [p.communicate(timeout=120)[1] for p in procs]
    assert [p.returncode for p in procs] == [0] * workers, "\n".join(errors)
    for r in range(rounds):
        with MetadataStore(f"sqlite:///{tmp_path / f'db{r}' / 'metadata.db'}") as store:
            runs = store.list_runs()
            assert sorted(run.id for run in runs) == [f"r{r}-p{me}" for me in range(workers)]
            assert len(store.list_tasks()) == workers


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_unreachable_server_names_url_without_password() -> None:
    url = f"postgresql+psycopg2://lf:s3cret@127.0.0.1:{_closed_port()}/meta"
    with pytest.raises(LakeforgeError) as info:
        MetadataStore(url)
    message = str(info.value)
    assert "s3cret" not in message and "s3cret" not in str(info.value.hint)
    assert "lf:***@127.0.0.1" in message and "unavailable" in message
    assert info.value.hint and "LAKEFORGE_METADATA_URL" in info.value.hint


@pytest.mark.parametrize(
    ("url", "match"),
    [
        ("not a url", "invalid metadata store URL"),
        ("nosuchdb://u:pw@host/x", "unsupported metadata store URL"),
    ],
)
def test_bad_urls_are_reported(url: str, match: str) -> None:
    with pytest.raises(LakeforgeError, match=match) as info:
        MetadataStore(url)
    assert "pw@" not in str(info.value) and info.value.hint


def test_sqlite_path_under_a_file_is_reported(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    with pytest.raises(LakeforgeError, match="cannot create the folder") as info:
        MetadataStore(f"sqlite:///{blocker / 'sub' / 'metadata.db'}")
    assert info.value.hint


def test_not_a_database_is_reported(tmp_path: Path) -> None:
    bogus = tmp_path / "metadata.db"
    bogus.write_bytes(b"this is not sqlite" * 100)
    with pytest.raises(LakeforgeError, match="unavailable") as info:
        MetadataStore(f"sqlite:///{bogus}")
    assert info.value.hint


def test_mask_url_hides_passwords() -> None:
    assert mask_url("postgresql+psycopg2://u:pw@h:5432/db") == (
        "postgresql+psycopg2://u:***@h:5432/db"
    )
    in_query = mask_url("postgresql://h/db?user=u&password=pw")
    assert "password=***" in in_query and "pw" not in in_query
    assert mask_url("sqlite:///x.db") == "sqlite:///x.db"


def test_importing_lakeforge_does_not_import_sqlalchemy() -> None:
    code = "import sys, lakeforge; sys.exit(bool({'sqlalchemy', 'alembic'} & set(sys.modules)))"
    assert subprocess.run([sys.executable, "-c", code], check=False).returncode == 0


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


def schema_revision(url: str) -> tuple[str, ...]:
    engine = create_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"version_table": "lf_alembic_version"})
            return tuple(context.get_current_heads())
    finally:
        engine.dispose()


def seed_revision_0001(url: str) -> None:
    """Two finished runs with tasks, written in the 0001 schema (before check results)."""
    runs = sa.table(
        "lf_runs",
        *(sa.column(c) for c in ("id", "project", "selection", "full_refresh", "status")),
        sa.column("started_at", UTCDateTime()),
        sa.column("finished_at", UTCDateTime()),
        sa.column("error"),
        sa.column("options", JSONDocument),
        sa.column("counts", JSONDocument),
    )
    tasks = sa.table(
        "lf_tasks",
        *(sa.column(c) for c in ("run_id", "dataset", "layer", "status", "reason", "attempts")),
        sa.column("started_at", UTCDateTime()),
        sa.column("finished_at", UTCDateTime()),
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
                    selection=None,
                    full_refresh=False,
                    status="success",
                    started_at=at,
                    finished_at=at + timedelta(minutes=1),
                    error=None,
                    options={"no_gate": bool(i)},
                    counts={"success": 1},
                )
            )
            conn.execute(
                tasks.insert().values(
                    run_id=f"old-{i}",
                    dataset="orders",
                    layer="silver",
                    status="success",
                    reason="new input",
                    attempts=1,
                    started_at=at,
                    finished_at=at + timedelta(seconds=30),
                    input_versions={"raw": i},
                    metrics={"rows": 10 * i},
                )
            )
    engine.dispose()


def test_upgrade_from_0001_keeps_runs_and_downgrade_drops_check_results(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    migrate(db_url, "upgrade", "0001")
    seed_revision_0001(db_url)
    assert schema_revision(db_url) == ("0001",)

    with MetadataStore(db_url) as opened:
        assert schema_revision(db_url) == (HEAD,)
        assert [r.id for r in opened.list_runs()] == ["old-1", "old-0"]
        old = opened.get_run("old-1")
        assert (old.status, old.options, old.counts) == (
            "success",
            {"no_gate": True},
            {"success": 1},
        )
        assert old.started_at == T0 + timedelta(hours=1)
        (task,) = old.tasks
        assert (task.dataset, task.input_versions, task.metrics) == (
            "orders",
            {"raw": 1},
            {"rows": 10},
        )
        opened.record_check_results([check_result("old-1", task_id=task.id, value=10.0)])
        assert [(c.run_id, c.task_id) for c in opened.list_check_results()] == [("old-1", task.id)]

    migrate(db_url, "downgrade", "0001")
    assert schema_revision(db_url) == ("0001",)
    engine = create_engine(db_url)
    inspector = sa.inspect(engine)
    assert "lf_check_results" not in inspector.get_table_names()
    with engine.connect() as conn:
        assert conn.execute(text("SELECT id FROM lf_runs ORDER BY id")).scalars().all() == [
            "old-0",
            "old-1",
        ]
        assert conn.execute(text("SELECT count(*) FROM lf_tasks")).scalar_one() == 2
    engine.dispose()

    # Upgrading again recreates an empty table next to the untouched runs.
    with MetadataStore(db_url) as reopened:
        assert reopened.list_check_results() == []
        assert len(reopened.get_run("old-0").tasks) == 1
    assert schema_revision(db_url) == (HEAD,)


def test_check_results_round_trip(store: MetadataStore) -> None:
    start(store, "r")
    task_id = store.start_task("r", dataset="orders", layer="silver", reason=None, started_at=T0)
    cet = timezone(timedelta(hours=2))
    full = check_result(
        "r",
        at=(T0 + timedelta(seconds=1)).astimezone(cet),
        task_id=task_id,
        name="amount_in_range",
        check_type="range",
        origin="expectation",
        severity="warn",
        status="warn",
        scope="batch",
        value=0.125,
        failing=5_000_000_000,
        total=40_000_000_000,
        threshold="warn > 0.1, error > 0.5",
        message="12.5% of rows out of range",
        sample=[{"id": 1, "amount": -3.5}],
        published=False,
    )
    store.record_check_results([full, check_result("r", status="skipped")])
    store.record_check_results([])  # nothing to do, no error

    newest, oldest = store.list_check_results()
    assert newest.id is not None and oldest.id is not None and newest.id != oldest.id
    # Read back in UTC, whatever zone it was written in; every other field as given.
    assert newest == replace(full, created_at=T0 + timedelta(seconds=1), id=newest.id)
    assert newest.created_at.tzinfo is UTC
    assert (oldest.status, oldest.task_id, oldest.value, oldest.sample) == (
        "skipped",
        None,
        None,
        None,
    )
    assert full.id is None  # the caller's record is left alone


def test_list_check_results_filters_and_orders(store: MetadataStore) -> None:
    start(store, "r1")
    start(store, "r2", at=T0 + timedelta(hours=1))
    store.record_check_results(
        [
            check_result("r2", T0 + timedelta(hours=1), name="not_null_id", status="fail"),
            check_result("r1", T0, name="not_null_id", status="pass"),
            check_result("r1", T0 + timedelta(seconds=1), name="row_count", status="warn"),
            check_result("r2", T0 + timedelta(hours=1), dataset="customers", status="error"),
            check_result("r2", T0 + timedelta(hours=1, seconds=1), name="row_count", status="pass"),
        ]
    )

    def listed(**filters: Any) -> list[tuple[str, str, str, str]]:
        return [
            (c.run_id, c.dataset, c.name, c.status) for c in store.list_check_results(**filters)
        ]

    # Newest first; equal timestamps fall back to the insertion order, newest first.
    assert listed() == [
        ("r2", "orders", "row_count", "pass"),
        ("r2", "customers", "row_count", "error"),
        ("r2", "orders", "not_null_id", "fail"),
        ("r1", "orders", "row_count", "warn"),
        ("r1", "orders", "not_null_id", "pass"),
    ]
    assert listed(run_id="r1") == [
        ("r1", "orders", "row_count", "warn"),
        ("r1", "orders", "not_null_id", "pass"),
    ]
    assert listed(dataset="customers") == [("r2", "customers", "row_count", "error")]
    assert listed(dataset="orders", name="not_null_id") == [
        ("r2", "orders", "not_null_id", "fail"),
        ("r1", "orders", "not_null_id", "pass"),
    ]
    assert listed(status="fail") == [("r2", "orders", "not_null_id", "fail")]
    assert listed(status=("fail", "error"), run_id="r2") == [
        ("r2", "customers", "row_count", "error"),
        ("r2", "orders", "not_null_id", "fail"),
    ]
    assert listed(status=["warn", "pass"], limit=2) == [
        ("r2", "orders", "row_count", "pass"),
        ("r1", "orders", "row_count", "warn"),
    ]
    assert listed(run_id="r") == []  # run ids are matched exactly, not as prefixes
    assert listed(name="nope") == []


def seed_metric_history(store: MetadataStore) -> None:
    """orders/row_count over three runs; r3 is the run being judged."""
    for i, run_id in enumerate(("r1", "r2", "r3")):
        start(store, run_id, at=T0 + timedelta(hours=i))
    h = timedelta(hours=1)
    store.record_check_results(
        [
            # Recorded out of time order: the history must follow created_at.
            check_result("r3", T0 + 2 * h, value=99.0),
            check_result("r1", T0, value=10.0),
            check_result("r1", T0 + timedelta(minutes=1), value=11.0, published=False),
            check_result("r2", T0 + h, value=None, status="skipped"),
            check_result("r2", T0 + h + timedelta(seconds=1), value=12.0),
            # Same timestamp: the one recorded last is the newest.
            check_result("r2", T0 + h + timedelta(seconds=2), value=13.0),
            check_result("r2", T0 + h + timedelta(seconds=2), value=14.0),
            # Same check on another dataset, another check on the same dataset.
            check_result("r2", T0 + h, dataset="customers", value=500.0),
            check_result("r2", T0 + h, name="null_fraction", value=0.5),
        ]
    )


def test_metric_history_order_limit_and_filters(store: MetadataStore) -> None:
    seed_metric_history(store)
    history = store.metric_history
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
    assert history("orders", "row_count", limit=10, before_run="r2") == [99.0, 10.0]
    assert history("customers", "row_count", limit=10) == [500.0]
    assert history("orders", "null_fraction", limit=10) == [0.5]
    assert history("orders", "missing", limit=10) == []
    assert history("orders", "row_count", limit=0) == []


def test_nan_values_are_left_out_of_history(store: MetadataStore) -> None:
    start(store, "r")
    store.record_check_results(
        [
            check_result("r", T0, value=1.0),
            check_result("r", T0 + timedelta(seconds=1), value=float("nan")),
            check_result("r", T0 + timedelta(seconds=2), value=float("inf")),
        ]
    )
    assert store.metric_history("orders", "row_count", limit=5) == [float("inf"), 1.0]
    assert [c.value for c in store.list_check_results()] == [float("inf"), None, 1.0]


def test_metric_history_reads_the_index(store: MetadataStore, db_url: str) -> None:
    seed_metric_history(store)
    statements: list[tuple[str, Any]] = []

    def capture(conn: Any, cursor: Any, statement: str, parameters: Any, *_: Any) -> None:
        if "FROM lf_check_results" in statement:
            statements.append((statement, parameters))

    event.listen(Engine, "before_cursor_execute", capture)
    try:
        assert store.metric_history("orders", "row_count", limit=3, before_run="r3")
    finally:
        event.remove(Engine, "before_cursor_execute", capture)
    ((statement, parameters),) = statements
    engine = create_engine(db_url)
    with engine.connect() as conn:
        plan = [
            row[-1] for row in conn.exec_driver_sql("EXPLAIN QUERY PLAN " + statement, parameters)
        ]
    engine.dispose()
    # The index answers both the filter and the ORDER BY (its rows end with the rowid, which
    # is the id), so SQLite stops after ``limit`` rows instead of sorting the history.
    assert plan == [
        "SEARCH lf_check_results USING INDEX ix_lf_check_results_dataset_name_created_at "
        "(dataset=? AND name=?)"
    ]


SAMPLE = {
    "rows": [
        {"id": 1, "name": "Zoë Ångström", "city": "東京", "emoji": "🚀🧪", "tags": ["a", "ß"]},
        {"id": 2, "name": None, "nested": {"deep": {"deeper": [1, 2.5, None, True, {"x": "ü"}]}}},
    ],
    "quoted": 'say "hi"\n\ttab \\ backslash',
    "empty": {},
    "big": 2**53,
}


def test_json_samples_round_trip(store: MetadataStore, db_url: str) -> None:
    start(store, "r")
    store.record_check_results(
        [
            check_result("r", T0, name="dict", sample=SAMPLE, message="échec: 東京 🚀"),
            check_result("r", T0 + timedelta(seconds=1), name="list", sample=[1, "二", [None]]),
            check_result("r", T0 + timedelta(seconds=2), name="none", sample=None),
        ]
    )
    by_name = {c.name: c for c in store.list_check_results()}
    assert by_name["dict"].sample == SAMPLE and by_name["dict"].message == "échec: 東京 🚀"
    assert by_name["list"].sample == [1, "二", [None]]
    assert by_name["none"].sample is None
    engine = create_engine(db_url)
    with engine.connect() as conn:
        # No sample is SQL NULL, not the JSON document "null".
        null_names = conn.execute(
            text("SELECT name FROM lf_check_results WHERE sample IS NULL")
        ).scalars()
        assert list(null_names) == ["none"]
    engine.dispose()


def test_deleting_a_run_deletes_its_check_results(store: MetadataStore, db_url: str) -> None:
    # The store has no delete yet; this pins the schema's ON DELETE CASCADE for pruning.
    start(store, "gone")
    start(store, "kept")
    task_id = store.start_task("gone", dataset="orders", layer=None, reason=None, started_at=T0)
    store.record_check_results(
        [
            check_result("gone", task_id=task_id),
            check_result("gone"),
            check_result("kept", name="kept_check"),
        ]
    )
    engine = create_engine(db_url)
    with engine.begin() as conn:
        conn.exec_driver_sql("PRAGMA foreign_keys=ON")
        conn.execute(text("DELETE FROM lf_runs WHERE id = 'gone'"))
    engine.dispose()
    assert [(c.run_id, c.name) for c in store.list_check_results()] == [("kept", "kept_check")]
    assert store.list_tasks() == []


def test_record_check_results_rejects_bad_input_atomically(store: MetadataStore) -> None:
    start(store, "r")
    good = check_result("r")
    cases: list[tuple[CheckResultRecord, str]] = [
        (check_result("nope"), "no run 'nope'"),
        (check_result("r", task_id=12345), "no task with id 12345"),
        (check_result("r", status="passed"), "invalid check status 'passed'"),
        (check_result("r", origin="rule"), "invalid check origin 'rule'"),
        (check_result("r", name="n" * 513), "name is 513 characters long"),
        (check_result("r", severity="critical-ish-long"), "severity is 17 characters long"),
    ]
    for bad, match in cases:
        with pytest.raises(LakeforgeError, match=match) as info:
            store.record_check_results([good, bad])
        assert info.value.hint or info.value.expected
    with pytest.raises(ValueError, match="naive datetime"):
        store.record_check_results([good, check_result("r", at=datetime(2024, 1, 1))])
    # Every batch failed as a whole: the good result of each was not kept either.
    assert store.list_check_results() == []


def test_threads_record_check_results_concurrently(store: MetadataStore) -> None:
    workers, batches, per_batch = 8, 15, 5
    for w in range(workers):
        start(store, f"run-{w}")
    barrier = threading.Barrier(workers, timeout=30)

    def work(worker: int) -> list[float]:
        barrier.wait()
        seen: list[float] = []
        for b in range(batches):
            at = T0 + timedelta(seconds=b)
            store.record_check_results(
                [
                    check_result(f"run-{worker}", at, dataset=f"d{worker}", name=f"c{i}", value=b)
                    for i in range(per_batch)
                ]
            )
            # Readers interleave with the other threads' writers.
            seen = store.metric_history(f"d{worker}", "c0", limit=3)
        return seen

    with ThreadPoolExecutor(max_workers=workers) as pool:
        last_seen = list(pool.map(work, range(workers)))

    assert last_seen == [[14.0, 13.0, 12.0]] * workers
    results = store.list_check_results()
    assert len(results) == workers * batches * per_batch
    assert len({c.id for c in results}) == len(results)
    for w in range(workers):
        assert len(store.list_check_results(run_id=f"run-{w}")) == batches * per_batch
        assert store.metric_history(f"d{w}", f"c{per_batch - 1}", limit=batches) == [
            float(b) for b in reversed(range(batches))
        ]


def seed_runs_before_0007(url: str) -> None:
    """Two runs in the 0006 schema: one a stream's micro-batch (``options.stream``)."""
    runs = sa.table(
        "lf_runs",
        *(sa.column(c) for c in ("id", "project", "selection", "full_refresh", "status")),
        sa.column("started_at", UTCDateTime()),
        sa.column("options", JSONDocument),
        sa.column("counts", JSONDocument),
    )
    engine = create_engine(url)
    with engine.begin() as conn:
        for i, options in enumerate(({"gate": True}, {"gate": True, "stream": "s-1"})):
            conn.execute(
                runs.insert().values(
                    id=f"old-{i}", project="demo", selection=None, full_refresh=False,
                    status="success", started_at=T0 + timedelta(hours=i), options=options,
                    counts={},
                )
            )  # fmt: skip
    engine.dispose()


def test_upgrade_to_0007_fills_stream_ids_from_the_options(tmp_path: Path) -> None:
    db_url = f"sqlite:///{tmp_path / 'metadata.db'}"
    migrate(db_url, "upgrade", "0006")
    seed_runs_before_0007(db_url)
    with MetadataStore(db_url) as opened:
        assert [(r.id, r.stream_id) for r in opened.list_runs()] == [
            ("old-1", "s-1"),
            ("old-0", None),
        ]
        (stream,) = opened.list_streams()
        assert (stream.stream_id, stream.micro_batches, stream.last.id) == ("s-1", 1, "old-1")
    migrate(db_url, "downgrade", "0006")
    engine = create_engine(db_url)
    columns = {c["name"] for c in sa.inspect(engine).get_columns("lf_runs")}
    engine.dispose()
    assert "stream_id" not in columns and "options" in columns
