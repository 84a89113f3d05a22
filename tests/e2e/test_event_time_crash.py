"""Crash test of a windowed streaming table: ``kill -9`` of ``lakeforge run`` at random
moments while it turns NDJSON files into 1-minute tumbling-window aggregates.

A window is written once, when the watermark closes it, with its final content: so at any
moment — right after a kill too — every row of the table must equal the final aggregate of
its window in a plain-Python model, no window may be there twice and no late event twice in
``<table>__late``. At the end, one uninterrupted run must leave exactly the model's windows
and late events: the state snapshot, the output, the late events and the source position
of a batch land in one commit or not at all (DESIGN §2.2, §2.4).

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the log of the trials.
"""

from __future__ import annotations

import json
import os
import random
import signal
import subprocess
import sys
import time
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261203"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))
FILES, LATER_FILES, PER_FILE = 20, 8, 25
LATENESS, SIZE = 20, 60
BASE = 1_704_110_400  # 2024-01-01T12:00:00Z
MODEL = f"""/* lakeforge
mode: streaming
source: {{path: "landing/*.ndjson", max_files_per_batch: 1}}
event_time: ts
allowed_lateness: {LATENESS}s
window: {{tumbling: 1m, by: [device]}}
*/
SELECT device, window_start, window_end, count(*) AS n, sum(temp) AS total FROM source
GROUP BY ALL
"""


def make_files(rng: random.Random, first: int, count: int) -> list[list[dict[str, Any]]]:
    """Files whose event times advance ~30 s each, jittered back by up to 50 s: some events
    within the lateness, some beyond it."""
    files = []
    for f in range(first, first + count):
        events = []
        for i in range(PER_FILE):
            ts = BASE + f * 30 + rng.randint(-50, 25)
            events.append(
                {"id": f * PER_FILE + i, "device": rng.choice("abcd"), "ts": ts,
                 "temp": rng.randint(0, 50)}
            )  # fmt: skip
        files.append(events)
    return files


def land(project: Path, first: int, files: list[list[dict[str, Any]]]) -> None:
    for offset, events in enumerate(files):
        index = first + offset
        lines = [
            json.dumps({**e, "ts": datetime.fromtimestamp(e["ts"], UTC).isoformat()})
            for e in events
        ]
        tmp = project / "landing" / f".{index:04d}.part"
        tmp.write_text("\n".join(lines) + "\n")
        stamp = time.time() - 100_000 + index  # arrival order
        os.utime(tmp, (stamp, stamp))
        os.replace(tmp, project / "landing" / f"{index:04d}.ndjson")


def model(
    files: list[list[dict[str, Any]]],
) -> tuple[dict[tuple[str, int], tuple[int, int]], set[int]]:
    """Final closed windows {(device, start): (n, total)} and late ids, file by file."""
    watermark: int | None = None
    windows: dict[tuple[str, int], list[int]] = {}
    late: set[int] = set()
    for events in files:
        accepted = []
        for e in events:
            end = e["ts"] - e["ts"] % SIZE + SIZE
            if watermark is not None and end <= watermark:
                late.add(e["id"])
            else:
                accepted.append(e)
        if accepted:
            candidate = max(e["ts"] for e in accepted) - LATENESS
            watermark = candidate if watermark is None else max(watermark, candidate)
        for e in accepted:
            windows.setdefault((e["device"], e["ts"] - e["ts"] % SIZE), []).append(e["temp"])
    assert watermark is not None
    closed = {k: (len(v), sum(v)) for k, v in windows.items() if k[1] + SIZE <= watermark}
    return closed, late


def read(project: Path, name: str) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    path = str(project / "lakehouse" / name)
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table().to_pylist()


def committed_batch(project: Path) -> int:
    from deltalake import DeltaTable

    path = str(project / "lakehouse" / "agg")
    if not DeltaTable.is_deltatable(path):
        return 0
    return DeltaTable(path).transaction_version("lakeforge/agg") or 0


def table_version(project: Path) -> int:
    log = project / "lakehouse" / "agg" / "_delta_log"
    return max((int(p.stem) for p in log.glob("*.json")), default=-1) if log.exists() else -1


def wait_for_commit(proc: subprocess.Popen[bytes], project: Path, version: int) -> None:
    """Until the commit after ``version`` lands (or the run ends; deadline a minute)."""
    landed = project / "lakehouse" / "agg" / "_delta_log" / f"{version + 1:020d}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline and not landed.exists() and proc.poll() is None:
        time.sleep(0.002)


def table(project: Path) -> Counter[tuple[str, int, int, int]]:
    return Counter(
        (r["device"], int(r["window_start"].timestamp()), r["n"], r["total"])
        for r in read(project, "agg")
    )


def test_kill_9_of_a_windowed_stream_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "landing").mkdir()
    (project / "lakeforge.yml").write_text("name: windows_crash\n")
    (project / "models" / "agg.sql").write_text(MODEL)
    files = make_files(rng, 0, FILES)
    land(project, 0, files)
    final, late = model(files + make_files(random.Random(SEED + 1), FILES, LATER_FILES))
    log: list[str] = []
    kills = Counter[str]()
    env = {**os.environ, "COLUMNS": "200"}
    for trial in range(TRIALS):
        if trial == TRIALS // 2:  # more files arrive mid-way
            land(project, FILES, make_files(random.Random(SEED + 1), FILES, LATER_FILES))
        # A third of the kills in start-up; the rest once the run has committed a batch,
        # over its next batches: while it reads, writes the state snapshot, the late events,
        # the output, or between two commits.
        in_start_up = rng.random() < 1 / 3
        delay = rng.uniform(0.05, 1.5) if in_start_up else rng.uniform(0.0, 0.5)
        before = committed_batch(project)
        version = table_version(project)
        proc = subprocess.Popen(
            [*LAKEFORGE, "run"], cwd=project, env=env,
            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE,
        )  # fmt: skip
        try:
            if not in_start_up:
                wait_for_commit(proc, project, version)
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
        _, err = proc.communicate(timeout=120)
        killed = proc.returncode == -signal.SIGKILL
        after = committed_batch(project)
        kills["killed" if killed else "finished"] += 1
        if killed and after > before:
            kills["killed after a commit"] += 1
        outcome = "killed" if killed else f"exit {proc.returncode}"
        log.append(f"#{trial}: {delay:.2f}s, {outcome}, batch {before} → {after}")
        if not killed:
            assert proc.returncode == 0 or b"lock" in err, f"{err.decode()}\n{log}"
        rows = table(project)
        twice = [k for k, n in rows.items() if n > 1]
        assert not twice, f"seed {SEED}: windows twice {twice}\n{log}"
        wrong = [k for k in rows if final.get((k[0], k[1])) != (k[2], k[3])]
        assert not wrong, f"seed {SEED}: windows that differ from the model {wrong}\n{log}"
        late_ids = Counter(r["id"] for r in read(project, "agg__late"))
        assert all(n == 1 for n in late_ids.values()), f"seed {SEED}: late twice\n{log}"
    done = subprocess.run([*LAKEFORGE, "run"], cwd=project, env=env, capture_output=True)
    assert done.returncode == 0, done.stderr.decode()
    rows = table(project)
    assert {(d, s): (n, t) for d, s, n, t in rows} == final, f"seed {SEED}\n{log}"
    assert sum(rows.values()) == len(final)
    assert {r["id"] for r in read(project, "agg__late")} == late
    assert len(read(project, "agg__late")) == len(late)
    snapshots = list((project / "lakehouse" / "_lf_state" / "agg").iterdir())
    assert len(snapshots) == 1, snapshots  # superseded snapshots are deleted
    assert kills["killed"] >= TRIALS // 2, f"too few kills landed: {dict(kills)}\n{log}"
    assert kills["killed after a commit"], f"no kill landed mid-run: {dict(kills)}\n{log}"
    print(f"\nkills {dict(kills)}; seed {SEED}\n  " + "\n  ".join(log))
