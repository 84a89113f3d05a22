"""Two schedulers sharing a PostgreSQL metadata store: every tick and every sensor firing is
queued exactly once, even though both evaluate the same times at the same moment (state rows
are created concurrently and locked with ``SELECT … FOR UPDATE``), and even when the queued
runs finish at once and free their dedupe keys."""

from __future__ import annotations

import datetime as dt
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.scheduling.queue import RunQueue
from lakeforge.scheduling.scheduler import Enqueued, Scheduler

pytestmark = pytest.mark.integration

T0 = dt.datetime(2024, 1, 1, tzinfo=dt.UTC)


def test_two_schedulers_on_postgres_queue_each_tick_once(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    url = postgres_database()
    (tmp_path / "models").mkdir()
    (tmp_path / "landing").mkdir()
    (tmp_path / "models" / "numbers.sql").write_text("SELECT range AS n FROM range(3)")
    (tmp_path / "landing" / "a.csv").write_text("x\n1\n")
    (tmp_path / "lakeforge.yml").write_text(
        textwrap.dedent(
            f"""
            metadata_url: {url}
            schedules:
              - {{name: quarter, cron: "*/15 * * * *", select: numbers}}
              - {{name: hourly, cron: "0 * * * *", select: numbers, catchup: true}}
            sensors:
              - {{name: landing, files: "landing/*.csv", select: numbers, min_interval: 0}}
            """
        )
    )
    MetadataStore(url).close()
    times = [T0 + dt.timedelta(minutes=5 * i) for i in range(37)]  # 00:00 … 03:00
    barrier = threading.Barrier(2)
    queued: list[Enqueued] = []
    failures: list[BaseException] = []
    lock = threading.Lock()

    def run(n: int) -> None:
        scheduler = Scheduler(load_project(tmp_path), MetadataStore(url))
        queue = RunQueue(scheduler.metadata)
        try:
            for i, at in enumerate(times):
                barrier.wait(timeout=60)
                got = scheduler.tick(at)
                assert scheduler.errors == []
                with lock:
                    queued.extend(got)
                if i % 3 == 0:  # workers finish runs now and then: dedupe keys are freed
                    while (item := queue.claim("w")) is not None:
                        queue.finish(item.id, status="done")
                if i == 12 and n == 0:  # a new file arrives (written once)
                    (tmp_path / "landing" / "b.csv").write_text("x\n2\n")
        except BaseException as exc:
            failures.append(exc)
            barrier.abort()

    threads = [threading.Thread(target=run, args=(n,)) for n in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert failures == []
    keys = Counter(q.dedupe_key for q in queued)
    assert keys.most_common(1)[0][1] == 1
    assert sum(q.name == "quarter" for q in queued) == 13
    assert sum(q.name == "hourly" for q in queued) == 4
    assert sum(q.name == "landing" for q in queued) == 2  # a.csv, then b.csv
    items = RunQueue(MetadataStore(url)).items(limit=100)
    assert len(items) == 19
