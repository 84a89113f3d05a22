"""Several workers sharing one queue on PostgreSQL: every queued partition is built once.

Hundreds of single-partition backfill items of several datasets are queued; two
``lakeforge worker`` processes (and, in the second test, threads in one process) take them
at the same time. ``FOR UPDATE SKIP LOCKED`` must hand each item to exactly one worker, and
the datasets' advisory locks must keep two workers from building one dataset at once: in the
end every item ran once, every partition was committed exactly once, and the ledger says
every partition is built.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
import threading
from collections import Counter
from collections.abc import Callable
from pathlib import Path

import pytest

pytestmark = [pytest.mark.integration, pytest.mark.slow]

DATASETS = 4
DAYS = 60  # partitions per dataset: 240 items in all
MODEL = """
/* lakeforge
partitions: {{daily: {{start: 2024-01-01, end: 2024-03-01, column: day}}}}
*/
SELECT day, {i} AS dataset_no, count(*) AS n
FROM (SELECT DATE '2024-01-01' + CAST(range % 60 AS INTEGER) AS day FROM range(600))
WHERE day >= @start AND day < @end
GROUP BY day
"""


def make_project(root: Path, metadata_url: str) -> list[str]:
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text(f"name: workers\nmetadata_url: {metadata_url}\n")
    names = []
    for i in range(DATASETS):
        name = f"daily_{i}"
        (root / "models" / f"{name}.sql").write_text(textwrap.dedent(MODEL.format(i=i)))
        names.append(name)
    return names


def enqueue_partitions(root: Path, names: list[str]) -> list[int]:
    """One item per partition, interleaved across datasets (as a scheduler would)."""
    from lakeforge.graph.partitions import Daily
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.queue import RunQueue

    project = load_project(root)
    queue = RunQueue(MetadataStore(project.metadata_url))
    spec = project.graph[names[0]].config.partitions
    assert isinstance(spec, Daily)
    import datetime as dt

    keys = [p.key for p in spec.partitions(dt.datetime(2030, 1, 1))]
    ids = []
    for key in keys:
        for name in names:
            item = queue.enqueue(selection=[name], backfill={name: [key]}, reason=f"{name} {key}")
            assert item is not None
            ids.append(item)
    return ids


def check_built_once(root: Path, names: list[str], ids: list[int]) -> None:
    from deltalake import DeltaTable

    from lakeforge.metadata.intervals import IntervalLedger
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.queue import RunQueue

    project = load_project(root)
    metadata = MetadataStore(project.metadata_url)
    items = {i.id: i for i in RunQueue(metadata).items(limit=10_000)}
    assert sorted(items) == sorted(ids)
    assert Counter(i.status for i in items.values()) == Counter({"done": len(ids)})
    assert all(i.attempts == 1 for i in items.values())
    assert len({i.run_id for i in items.values()}) == len(ids)  # one run per item
    workers = Counter(i.claimed_by for i in items.values())
    assert len(workers) == 2, workers  # both workers took part
    ledger = IntervalLedger(metadata).read(names)
    for name in names:
        table = DeltaTable(str(root / "lakehouse" / name))
        commits = Counter(
            e["lakeforge"]["partition"]
            for e in table.history()
            if isinstance(e.get("lakeforge"), dict) and "partition" in e["lakeforge"]
        )
        assert set(commits.values()) == {1}, f"{name}: a partition was committed twice"
        assert len(commits) == DAYS
        rows = table.to_pyarrow_table().to_pylist()
        assert len(rows) == DAYS and all(r["n"] == 10 for r in rows)
        assert {e.status for e in ledger[name].values()} == {"built"}
        assert len(ledger[name]) == DAYS


def test_two_worker_processes_build_every_partition_once(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    root = tmp_path / "p"
    names = make_project(root, postgres_database())
    ids = enqueue_partitions(root, names)
    env = {**os.environ, "COLUMNS": "200"}
    procs = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "lakeforge",
                "worker",
                "--once",
                "--name",
                f"w{n}",
                "--poll",
                "0.05",
            ],
            cwd=root,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
        )
        for n in range(2)
    ]
    outputs = [p.communicate(timeout=600) for p in procs]
    for proc, (out, err) in zip(procs, outputs, strict=True):
        assert proc.returncode == 0, out + err
    check_built_once(root, names, ids)


def test_worker_threads_share_the_queue(
    tmp_path: Path, postgres_database: Callable[[], str]
) -> None:
    from lakeforge.metadata.store import MetadataStore
    from lakeforge.project.loader import load_project
    from lakeforge.scheduling.worker import Worker

    root = tmp_path / "p"
    names = make_project(root, postgres_database())[:2]
    for extra in (2, 3):
        (root / "models" / f"daily_{extra}.sql").unlink()
    ids = enqueue_partitions(root, names)
    project = load_project(root)
    metadata = MetadataStore(project.metadata_url)
    workers = [
        Worker(project, metadata=metadata, name=f"t{n}", poll_seconds=0.05) for n in range(2)
    ]
    stop = threading.Event()
    threads = [threading.Thread(target=w.run, args=(stop,), kwargs={"once": True}) for w in workers]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=600)
    assert sum(w.stats.done for w in workers) == len(ids)
    check_built_once(root, names, ids)
