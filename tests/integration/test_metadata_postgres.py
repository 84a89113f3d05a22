"""Metadata store on a real PostgreSQL server: same behaviour as on SQLite."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime, timedelta, timezone

import pytest
from alembic import command
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url

from lakeforge.errors import LakeforgeError
from lakeforge.metadata import MetadataStore

pytestmark = pytest.mark.integration

T0 = datetime(2024, 5, 1, 12, 0, tzinfo=UTC)


@pytest.fixture
def store(postgres_url: str) -> Iterator[MetadataStore]:
    opened = MetadataStore(postgres_url)
    yield opened
    opened.close()


@pytest.fixture
def fresh_store(postgres_database: Callable[[], str]) -> Iterator[MetadataStore]:
    """A store on its own empty database, for tests that look at every row."""
    opened = MetadataStore(postgres_database())
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
        types = dict(
            conn.execute(
                text(
                    "SELECT column_name, data_type FROM information_schema.columns "
                    "WHERE table_name = 'lf_tasks'"
                )
            ).all()
        )
        version = conn.execute(text("SELECT version_num FROM lf_alembic_version")).scalar_one()
    engine.dispose()
    assert types["metrics"] == "jsonb"
    assert types["started_at"] == "timestamp with time zone"
    assert types["rows_in"] == "bigint"
    assert version == "0001"


def test_missing_database_is_reported(postgres_url: str) -> None:
    url = make_url(postgres_url).set(password="hunter2", database=f"missing_{new_id()}")
    with pytest.raises(LakeforgeError, match="unavailable") as info:
        MetadataStore(url.render_as_string(hide_password=False))
    assert "hunter2" not in str(info.value) and "***" in str(info.value)
    assert info.value.hint
