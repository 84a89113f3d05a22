"""Crash test of the file source: ``kill -9`` of ``lakeforge run`` at random moments.

A project ingests NDJSON landing files into a bronze table, one file per batch; some files
carry a malformed line, which goes to the dead-letter table. Trial after trial,
``lakeforge run`` is started as a real process and SIGKILLed at a random moment — in
start-up, while it reads a file, while it commits, between commits — and landing files keep
arriving, some of them while a run is listing and reading the landing folder. After every
kill the table must hold whole files only and no record twice; at the end, one
uninterrupted run must leave every landing record in the table exactly once and every
malformed line in the dead-letter table exactly once (DESIGN §2.2, §2.4), with one app
transaction batch per data commit, and a further run must change nothing (§2.5).

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the log of the trials.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261122"))
DATASET = "raw_events"
DLQ = f"{DATASET}__dlq"
INITIAL_FILES = 30
RECORDS_PER_FILE = 20
BAD_FILE_SHARE = 0.2  # files with one malformed line (a dead letter)
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))  # more for a soak run
SCRATCH_FILES = 10
KILL_WINDOW_BATCHES = 6  # kills after a run's first commit spread over this many batches
MIN_BACKLOG = KILL_WINDOW_BATCHES + 2  # files waiting when a trial starts: work for the kill
MODEL = """/* lakeforge
source: {kind: files, path: "landing/*.ndjson", max_files_per_batch: 1}
*/
SELECT * FROM source
"""
# A failed run is acceptable only for these, and only when a rerun then succeeds: a writer
# that lost a commit race, or a lock held by another run.
RACE = re.compile(r"concurrent writer|commit conflict|lock", re.IGNORECASE)


@dataclass
class Landing:
    """The landing folder and everything the test wrote to it: the oracle."""

    folder: Path
    rng: random.Random
    payloads: dict[int, str] = field(default_factory=dict)  # good record id → payload
    files: dict[str, list[int]] = field(default_factory=dict)  # file → its good ids
    dead: dict[tuple[str, int], str] = field(default_factory=dict)  # (file, line) → text
    next_id: int = 0

    def add(self, count: int) -> None:
        """Write ``count`` new files, each atomically: a temp name outside the glob, then
        a rename, as a landing zone should be fed."""
        for _ in range(count):
            path = f"landing/events-{len(self.files):04d}.ndjson"
            bad_line = (
                self.rng.randrange(RECORDS_PER_FILE) if self.rng.random() < BAD_FILE_SHARE else -1
            )
            lines, ids = [], []
            for index in range(RECORDS_PER_FILE):
                rid, self.next_id = self.next_id, self.next_id + 1
                payload = f"p{rid}-{self.rng.getrandbits(64):016x}-é"
                line = json.dumps({"id": rid, "payload": payload}, ensure_ascii=False)
                if index == bad_line:
                    line = line[: -len(payload) - 3]  # cut inside the object: not JSON
                    self.dead[(path, index + 1)] = line
                else:
                    self.payloads[rid] = payload
                    ids.append(rid)
                lines.append(line)
            tmp = self.folder / f".{Path(path).name}.part"
            tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
            os.replace(tmp, self.folder.parent / path)
            self.files[path] = ids


def make_project(root: Path) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "landing").mkdir()
    (root / "lakeforge.yml").write_text("name: crash\n")
    (root / "models" / f"{DATASET}.sql").write_text(MODEL)
    return root


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One uninterrupted CLI call."""
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True, env=env(), timeout=300
    )


def delta_path(project: Path, name: str = DATASET) -> str:
    return str(project / "lakehouse" / name)


def version(project: Path, name: str = DATASET) -> int | None:
    from deltalake import DeltaTable

    path = delta_path(project, name)
    return DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None


def read(project: Path, name: str, columns: list[str]) -> list[dict[str, Any]]:
    """A table's rows read by delta-rs directly, not through Lakeforge ([] when absent)."""
    from deltalake import DeltaTable

    path = delta_path(project, name)
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table(columns=columns).to_pylist()


def read_bronze(project: Path) -> list[dict[str, Any]]:
    return read(project, DATASET, ["id", "payload", "_source_file"])


def read_dead_letters(project: Path) -> list[dict[str, Any]]:
    return read(project, DLQ, ["source_file", "line", "raw_text", "_lf_batch"])


def committed_batch(project: Path) -> int:
    from deltalake import DeltaTable

    path = delta_path(project)
    if not DeltaTable.is_deltatable(path):
        return 0
    return DeltaTable(path).transaction_version(f"lakeforge/{DATASET}") or 0


def checksum(pairs: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(pairs):
        digest.update(f"{key}\t{value}\n".encode())
    return digest.hexdigest()


def problems_in(rows: list[dict[str, Any]], landing: Landing) -> dict[str, Any]:
    """What must never be seen in bronze, even right after a kill: a record twice, a record
    not written to landing, a changed payload, or a file present only in part."""
    problems: dict[str, Any] = {}
    counts = Counter(r["id"] for r in rows)
    if duplicated := sorted(rid for rid, n in counts.items() if n > 1):
        problems["duplicated_ids"] = duplicated[:20]
    if unknown := sorted(rid for rid in counts if rid not in landing.payloads):
        problems["unknown_ids"] = unknown[:20]
    if wrong := sorted(r["id"] for r in rows if landing.payloads.get(r["id"]) != r["payload"]):
        problems["wrong_payload_ids"] = wrong[:20]
    by_file: dict[str, list[int]] = {}
    for r in rows:
        by_file.setdefault(r["_source_file"], []).append(r["id"])
    whole = landing.files
    if partial := {f: len(ids) for f, ids in by_file.items() if sorted(ids) != whole.get(f)}:
        problems["files_not_whole (file: rows)"] = partial
    return problems


def wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether ``proc`` ended before the monotonic ``deadline``."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_for_commit(proc: subprocess.Popen[bytes], log_dir: Path, after: int | None) -> bool:
    """Wait (deadline: a minute) until the commit after version ``after`` lands in the Delta
    log; False when the run ends first."""
    landed = log_dir / f"{0 if after is None else after + 1:020d}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if landed.exists():
            return True
        if wait(proc, time.monotonic() + 0.002):
            return landed.exists()
    return False


def measure_timing(root: Path) -> tuple[float, float]:
    """(seconds from start to the first commit, seconds a batch) of one uninterrupted run on
    a scratch project, measured now on this machine, from the commit timestamps."""
    from deltalake import DeltaTable

    scratch = make_project(root)
    Landing(scratch / "landing", random.Random(SEED)).add(SCRATCH_FILES)
    started = time.time()
    measured = lakeforge(scratch, "run")
    assert measured.returncode == 0, f"{measured.stdout}\n{measured.stderr}"
    stamps = sorted(e["timestamp"] / 1000 for e in DeltaTable(delta_path(scratch)).history())
    assert len(stamps) == SCRATCH_FILES, stamps
    shutil.rmtree(scratch)
    first_commit = max(stamps[0] - started, 0.05)
    return first_commit, max((stamps[-1] - stamps[0]) / (len(stamps) - 1), 0.01)


def test_kill_9_during_file_ingestion_loses_and_duplicates_nothing(tmp_path: Path) -> None:
    rng = random.Random(SEED)  # timing and arrivals; landing contents use their own
    log: list[str] = []

    def context() -> str:
        return f"seed={SEED} (set LAKEFORGE_CRASH_SEED to vary); trials:\n  " + "\n  ".join(log)

    first_commit, per_batch = measure_timing(tmp_path / "scratch")
    project = make_project(tmp_path / "project")
    landing = Landing(project / "landing", random.Random(SEED + 1))
    landing.add(INITIAL_FILES)
    failures: list[str] = []
    kills = Counter[str]()

    for trial in range(TRIALS):
        pending = len(landing.files) - len({r["_source_file"] for r in read_bronze(project)})
        if pending < MIN_BACKLOG:
            landing.add(MIN_BACKLOG - pending + rng.randint(0, 2))
        elif rng.random() < 0.3:
            landing.add(rng.randint(1, 3))
        # A third of the kills in start-up (up to the measured time of a first commit);
        # the rest after the run's first commit, over the reads and commits of the next
        # batches: during a commit, between two, between dead letters and the batch's data.
        in_start_up = rng.random() < 1 / 3
        delay = rng.uniform(0, first_commit if in_start_up else KILL_WINDOW_BATCHES * per_batch)
        # Sometimes files arrive while the run lists and reads the landing folder.
        arrival = rng.uniform(0, first_commit) if rng.random() < 0.4 else None
        arriving = rng.randint(1, 3)
        before = version(project)
        out, err = tmp_path / f"trial-{trial}.out", tmp_path / f"trial-{trial}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            start = time.monotonic()
            proc = subprocess.Popen(
                [*LAKEFORGE, "run"], cwd=project, stdout=stdout, stderr=stderr, env=env()
            )
            try:
                if arrival is not None:
                    wait(proc, start + arrival)
                    landing.add(arriving)
                if in_start_up:
                    kill_at: float | None = start + delay
                elif wait_for_commit(proc, Path(delta_path(project)) / "_delta_log", before):
                    kill_at = time.monotonic() + delay
                else:
                    kill_at = None
                if kill_at is not None and not wait(proc, kill_at):
                    proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        after = version(project)
        outcome = "killed" if code == -signal.SIGKILL else f"exit {code}"
        when = f"{delay:.2f}s after {'start' if in_start_up else 'its first commit'}"
        arrived = "" if arrival is None else f"{arriving} file(s) arrived at {arrival:.2f}s, "
        log.append(f"#{trial}: kill {when}, {arrived}{outcome}, v{before} → v{after}")
        dead_rows = read_dead_letters(project)
        if code == -signal.SIGKILL:
            kills["after a commit" if after != before else "before any commit"] += 1
            if any(r["_lf_batch"] > committed_batch(project) for r in dead_rows):
                kills["between a batch's dead letters and its data"] += 1
                log[-1] += " (dead letters of an uncommitted batch left)"
        elif code != 0:
            message = err.read_text(errors="replace") + out.read_text(errors="replace")
            rerun = lakeforge(project, "run")
            log[-1] += f", rerun exit {rerun.returncode}"
            if not (RACE.search(message) and rerun.returncode == 0):
                failures.append(
                    f"trial {trial}: `lakeforge run` after a kill failed ({outcome}):\n{message}"
                    f"\nrerun (exit {rerun.returncode}):\n{rerun.stdout}\n{rerun.stderr}"
                )
        problems = problems_in(read_bronze(project), landing)
        assert not problems, f"after trial {trial}: {problems}\n{context()}"
        dead = Counter((r["source_file"], r["line"]) for r in dead_rows)
        twice = sorted(key for key, n in dead.items() if n > 1)
        assert not twice, f"after trial {trial}: dead letters twice: {twice}\n{context()}"

    final = lakeforge(project, "run")
    assert final.returncode == 0, f"final run failed:\n{final.stdout}\n{final.stderr}\n{context()}"
    assert not failures, "\n\n".join(failures) + "\n" + context()

    # Every good landing record in bronze exactly once, with its payload.
    rows = read_bronze(project)
    ids = Counter(r["id"] for r in rows)
    expected = Counter(landing.payloads.keys())
    missing, extra = sorted((expected - ids).elements()), sorted((ids - expected).elements())
    assert not missing and not extra, (
        f"{len(missing)} missing ids {missing[:20]}, {len(extra)} extra ids {extra[:20]} "
        f"(of {len(expected)} records in {len(landing.files)} files)\n{context()}"
    )
    assert checksum((r["id"], r["payload"]) for r in rows) == checksum(landing.payloads.items()), (
        f"payload checksum differs: {problems_in(rows, landing)}\n{context()}"
    )
    # Every malformed line in the dead-letter table exactly once, with its raw text.
    dead_letters = read_dead_letters(project)
    dead = Counter((r["source_file"], r["line"]) for r in dead_letters)
    assert dead == Counter(landing.dead.keys()), (
        f"dead letters {sorted(dead.elements())} vs written {sorted(landing.dead)}\n{context()}"
    )
    assert {(r["source_file"], r["line"]): r["raw_text"] for r in dead_letters} == landing.dead

    # One app transaction batch per commit that carries data, numbered 1..n in log order,
    # and the newest commit's file ledger lists every landing file.
    from deltalake import DeltaTable

    table = DeltaTable(delta_path(project))
    history = sorted(table.history(), key=lambda entry: entry["version"])
    data_commits = [e for e in history if e.get("operationMetrics", {}).get("num_added_rows")]
    batches = [e.get("lakeforge", {}).get("batch") for e in data_commits]
    txn = table.transaction_version(f"lakeforge/{DATASET}")
    assert txn == len(data_commits), f"app transaction {txn}, data commits {len(data_commits)}"
    assert batches == list(range(1, len(data_commits) + 1)), f"batches {batches}\n{context()}"
    assert len(data_commits) == len(landing.files), context()  # one file a batch
    assert set(history[-1]["lakeforge"]["source_state"]["files"]) == set(landing.files)

    # A further run is a no-op: no new Delta version anywhere, nothing pending.
    versions = (table.version(), version(project, DLQ))
    again = lakeforge(project, "run")
    assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{context()}"
    assert (version(project), version(project, DLQ)) == versions, again.stdout
    sources = lakeforge(project, "sources", "--json")
    assert sources.returncode == 0, sources.stderr
    (status,) = json.loads(sources.stdout)
    assert (status["consumed"], status["pending"]) == (len(landing.files), 0), status

    # The test did what it claims: kills landed both before a run's first commit and after.
    assert kills["before any commit"] and kills["after a commit"], (
        f"kills {dict(kills)}: the timing did not cover both\n{context()}"
    )
    print(
        f"\nfirst commit after {first_commit:.2f}s, {per_batch:.3f}s a batch; kills "
        f"{dict(kills)}; {len(landing.files)} files, {len(landing.dead)} dead letters\n{context()}"
    )
