"""Crash test of backfills: ``kill -9`` of ``lakeforge backfill`` mid-way, then resume.

A daily-partitioned gold dataset is built, its code is changed, and a backfill of its whole
range is started as a real process and SIGKILLed at a random moment — in start-up, while a
partition is built, between commits. The same backfill is then run again: it must resume
(keep the partitions the killed run committed, settle the one it committed but did not
record) and finish, so that across both processes **every partition is committed exactly
once** and the table holds exactly the new code's result for every day (DESIGN §2.2, §2.5).

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the trial log.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261122"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "12"))
DAYS = 12
START = dt.date(2024, 1, 1)
GOLD = """/* lakeforge
partitions: {{daily: {{start: 2024-01-01, end: {end}, column: day}}}}
*/
SELECT day, count(*) AS n, sum(amount) * {factor} AS total
FROM events WHERE day >= @start AND day < @end GROUP BY day
"""


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True,
        env={**os.environ, "COLUMNS": "200"}, timeout=300,
    )  # fmt: skip


def make_project(root: Path, rng: random.Random) -> dict[str, tuple[int, int]]:
    """The project and the oracle: day → (rows, sum of amount)."""
    (root / "models" / "gold").mkdir(parents=True)
    (root / "landing").mkdir()
    (root / "lakeforge.yml").write_text("name: backfill_crash\n")
    (root / "models" / "events.sql").write_text(
        "SELECT id, CAST(day AS DATE) AS day, amount FROM read_json('landing/events.ndjson')\n"
    )
    oracle: dict[str, tuple[int, int]] = {}
    lines = []
    for i in range(DAYS * 40):
        day = START + dt.timedelta(days=rng.randrange(DAYS))
        amount = rng.randrange(1000)
        lines.append(json.dumps({"id": i, "day": day.isoformat(), "amount": amount}))
        n, total = oracle.get(day.isoformat(), (0, 0))
        oracle[day.isoformat()] = (n + 1, total + amount)
    (root / "landing" / "events.ndjson").write_text("\n".join(lines) + "\n")
    write_gold(root, factor=1)
    return oracle


def write_gold(root: Path, factor: int) -> None:
    end = (START + dt.timedelta(days=DAYS)).isoformat()
    (root / "models" / "gold" / "daily.sql").write_text(GOLD.format(end=end, factor=factor))


def commits(project: Path) -> list[tuple[int, dict[str, Any]]]:
    from deltalake import DeltaTable

    table = DeltaTable(str(project / "lakehouse" / "daily"))
    out = []
    for entry in table.history():
        meta = entry.get("lakeforge")
        if isinstance(meta, dict):
            out.append((int(entry["version"]), meta))
    return out


def content(project: Path) -> dict[str, tuple[int, int]]:
    from deltalake import DeltaTable

    rows = DeltaTable(str(project / "lakehouse" / "daily")).to_pyarrow_table().to_pylist()
    days = Counter(r["day"].isoformat() for r in rows)
    assert max(days.values()) == 1, f"a day appears twice: {days}"
    return {r["day"].isoformat(): (r["n"], r["total"]) for r in rows}


def newest_version(project: Path) -> int:
    return max(v for v, _ in commits(project))


def newest_backfill_status(project: Path, since: dt.datetime) -> str | None:
    """The recorded status of the newest backfill run started since ``since`` (None: none)."""
    from lakeforge.metadata.store import MetadataStore

    with MetadataStore(f"sqlite:///{project / '.lakeforge' / 'metadata.db'}") as store:
        runs = [
            r for r in store.list_runs(50) if r.options.get("backfill") and r.started_at >= since
        ]
    return runs[0].status if runs else None


def test_killed_backfill_resumes_and_builds_each_partition_once(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    project = tmp_path / "p"
    oracle = make_project(project, rng)
    first = lakeforge(project, "run")
    assert first.returncode == 0, first.stdout + first.stderr
    log: list[str] = []
    for trial in range(TRIALS):
        factor = trial + 2  # new code each trial: every partition's content changes
        write_gold(project, factor)
        before = newest_version(project)
        launched = dt.datetime.now(dt.UTC)
        proc = subprocess.Popen(
            [*LAKEFORGE, "backfill", "daily", "--concurrency", str(rng.choice([1, 2]))],
            cwd=project, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL,
            env={**os.environ, "COLUMNS": "200"},
        )  # fmt: skip
        if rng.random() < 0.8:
            # Mostly mid-backfill: after some partitions have been committed.
            want = rng.randrange(1, DAYS)
            deadline = time.monotonic() + 120
            while time.monotonic() < deadline and proc.poll() is None:
                if newest_version(project) - before >= want:
                    break
                time.sleep(0.01)
        time.sleep(rng.uniform(0, 0.3))
        proc.send_signal(signal.SIGKILL)
        # It may have finished before the kill, or recorded its success and been killed
        # on its way out: either way the next backfill is a new one, not a resumption.
        finished = proc.wait() == 0 or newest_backfill_status(project, launched) == "success"
        committed = newest_version(project) - before
        output = ""
        if not finished:
            resumed = lakeforge(project, "backfill", "daily")
            output = resumed.stdout + resumed.stderr
            assert resumed.returncode == 0, f"seed {SEED}\n" + "\n".join(log) + output
            if committed:
                assert "resuming backfill run" in output, output
        log.append(f"trial {trial}: killed after {committed} commit(s), finished: {finished}")
        context = f"seed {SEED}\n" + "\n".join(log) + "\n" + output
        per_partition = Counter(meta["partition"] for v, meta in commits(project) if v > before)
        assert per_partition == Counter({k: 1 for k in oracle}), context
        expected = {day: (n, total * factor) for day, (n, total) in oracle.items()}
        assert content(project) == expected, context
    # A further run changes nothing: the ledger says every partition is built.
    version = newest_version(project)
    again = lakeforge(project, "run")
    assert again.returncode == 0, again.stderr
    assert newest_version(project) == version
