"""The run queue and workers on SQLite: order, dedupe, pools, heartbeats, recovery."""

from __future__ import annotations

import datetime as dt
import textwrap
import threading
from pathlib import Path

import pytest

from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.scheduling.queue import RunQueue
from lakeforge.scheduling.worker import Worker
from lakeforge.storage.delta import DeltaStore

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


@pytest.fixture
def queue(tmp_path: Path) -> RunQueue:
    return RunQueue(MetadataStore(f"sqlite:///{tmp_path / 'm.db'}"))


def test_claims_by_priority_then_arrival_and_never_twice(queue: RunQueue) -> None:
    a = queue.enqueue(selection=["a"], now=T0)
    b = queue.enqueue(selection=["b"], priority=5, now=T0)
    c = queue.enqueue(selection=["c"], now=T0)
    claimed = [queue.claim("w1", now=T0), queue.claim("w2", now=T0), queue.claim("w1", now=T0)]
    assert [i.id for i in claimed if i] == [b, a, c]
    assert queue.claim("w2", now=T0) is None
    assert claimed[0] is not None and claimed[0].claimed_by == "w1" and claimed[0].attempts == 1


def test_dedupe_key_holds_while_queued_or_running(queue: RunQueue) -> None:
    first = queue.enqueue(selection=["a"], dedupe_key="cron:nightly@1", now=T0)
    assert first is not None
    assert queue.enqueue(selection=["a"], dedupe_key="cron:nightly@1", now=T0) is None
    item = queue.claim("w", now=T0)
    assert item is not None
    assert queue.enqueue(selection=["a"], dedupe_key="cron:nightly@1", now=T0) is None
    queue.finish(item.id, status="done", run_id="r1")
    # Finished: the key is free again (a later tick of the same name may be queued).
    assert queue.enqueue(selection=["a"], dedupe_key="cron:nightly@1", now=T0) is not None


def test_pool_capacity_and_only_pools(queue: RunQueue) -> None:
    queue.enqueue(selection=["a"], pool="heavy", now=T0)
    queue.enqueue(selection=["b"], pool="heavy", now=T0)
    light = queue.enqueue(selection=["c"], now=T0)
    first = queue.claim("w1", pools={"heavy": 1}, now=T0)
    assert first is not None and first.pool == "heavy"
    second = queue.claim("w2", pools={"heavy": 1}, now=T0)
    assert second is not None and second.id == light  # the heavy pool is full: skipped
    assert queue.claim("w3", pools={"heavy": 1}, now=T0) is None
    queue.finish(first.id, status="done")
    third = queue.claim("w3", pools={"heavy": 1}, now=T0)
    assert third is not None and third.pool == "heavy"
    queue.enqueue(selection=["d"], pool="other", now=T0)
    assert queue.claim("w4", only_pools=["default"], now=T0) is None


def test_not_before_and_cancel(queue: RunQueue) -> None:
    later = queue.enqueue(selection=["a"], not_before=T0 + dt.timedelta(hours=1), now=T0)
    assert queue.claim("w", now=T0) is None
    assert queue.cancel(later)  # type: ignore[arg-type]
    assert not queue.cancel(later)  # type: ignore[arg-type]
    assert queue.claim("w", now=T0 + dt.timedelta(hours=2)) is None


def test_a_dead_workers_item_is_queued_again(queue: RunQueue) -> None:
    queue.enqueue(selection=["a"], now=T0)
    item = queue.claim("dead", now=T0)
    assert item is not None
    assert queue.heartbeat(item.id, "dead", now=T0 + dt.timedelta(seconds=10))
    assert queue.release_stale(dt.timedelta(seconds=60), now=T0 + dt.timedelta(seconds=30)) == []
    released = queue.release_stale(dt.timedelta(seconds=60), now=T0 + dt.timedelta(seconds=90))
    assert released == [item.id]
    assert not queue.heartbeat(item.id, "dead")  # the dead worker no longer owns it
    again = queue.claim("alive", now=T0 + dt.timedelta(seconds=91))
    assert again is not None and again.id == item.id and again.attempts == 2


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def test_worker_runs_queued_items(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: q\n")
    write(tmp_path, "models/numbers.sql", "SELECT range AS n FROM range(5)")
    write(tmp_path, "models/broken.sql", "SELECT no_such_column FROM numbers")
    project = load_project(tmp_path)
    metadata = MetadataStore(project.metadata_url)
    queue = RunQueue(metadata)
    ok = queue.enqueue(selection=["numbers"], reason="by hand")
    bad = queue.enqueue(selection=["broken"], reason="by hand")
    worker = Worker(project, metadata=metadata, heartbeat_seconds=0.05)
    stats = worker.run(threading.Event(), once=True)
    assert (stats.done, stats.failed) == (1, 1)
    items = {i.id: i for i in queue.items()}
    assert items[ok].status == "done" and items[ok].run_id  # type: ignore[index]
    assert items[bad].status == "failed" and "no_such_column" in (items[bad].error or "")  # type: ignore[index]
    assert DeltaStore(str(tmp_path / "lakehouse")).version("numbers") == 0
    run = metadata.get_run(items[ok].run_id or "")  # type: ignore[index]
    assert run.options["queue_item"] == ok and run.options["worker"] == worker.name
