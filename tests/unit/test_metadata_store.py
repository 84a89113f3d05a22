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
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
from alembic import command
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy import create_engine

from lakeforge.errors import LakeforgeError
from lakeforge.metadata import MetadataStore, RunRecord, mask_url
from lakeforge.metadata.models import Base

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
        assert context.get_current_heads() == ("0001",)
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
                    type_ != "table" or name.startswith("lf_runs") or name.startswith("lf_tasks")
                ),
            },
        )
        assert compare_metadata(context, Base.metadata) == []
    engine.dispose()


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
