"""Crash test of the PostgreSQL CDC source: ``kill -9`` of ``lakeforge run`` at random moments.

A database with two captured tables (400 + 60 rows to snapshot, 25 rows a snapshot batch,
12 changes a streamed batch) on the test session's own ``wal_level=logical`` cluster.
Trial after trial, transactions are committed (inserts, updates, deletes over both tables,
one now and then larger than a batch, a truncate) and ``lakeforge run`` — every sixth
trial ``lakeforge cdc resnapshot raw public.tags`` — is started as a real process and
SIGKILLed at a random moment: in start-up, while the initial snapshot is read (the next run
resumes it on a new snapshot), while the stream is read or committed, between commits.

After every kill the change feed must hold no change twice (``(lsn, ordinal)``) and no
snapshot row twice (``(table, key, lsn)``). At the end, after one uninterrupted run: the
streamed changes are exactly the transactions committed since the slot was created, in
commit order, each once; replaying the feed by ``seq`` gives back both tables exactly; each
Lakeforge commit is one app transaction batch; a further run commits nothing.

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the log of the trials.
"""

from __future__ import annotations

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

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261203"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))
KEYS = {"public.items": "id", "public.tags": "tag_id"}
CLEAN_EVERY = 7
RESNAPSHOT_EVERY = 6


class Source:
    """The database and every transaction committed to it after the slot's start."""

    def __init__(self, cluster: Any, name: str, rng: random.Random) -> None:
        self.conn = cluster.connect(name)
        self.rng = rng
        self.items: set[int] = set()
        self.tags: set[int] = set()
        self.next_id = 10_000
        self.expected: list[list[tuple[str, str, int | None]]] = []
        self.recording = False  # transactions before the slot's start come with the snapshot

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def setup(self) -> None:
        self.execute("CREATE TABLE items (id int PRIMARY KEY, payload text, n int)")
        self.execute("CREATE TABLE tags (tag_id int PRIMARY KEY, label text NOT NULL)")
        self.execute("INSERT INTO items SELECT i, 'p' || i, i FROM generate_series(1, 400) i")
        self.execute("INSERT INTO tags SELECT i, 'l' || i FROM generate_series(1, 60) i")
        self.items, self.tags = set(range(1, 401)), set(range(1, 61))

    def _new(self) -> int:
        self.next_id += 1
        return self.next_id

    def transaction(self, size: int) -> None:
        r = self.rng
        records: list[tuple[str, str, int | None]] = []
        self.execute("BEGIN")
        for _ in range(size):
            kind = r.choice(["ins_i", "upd_i", "upd_i", "del_i", "ins_t", "upd_t", "del_t"])
            if kind == "upd_i" and self.items:
                key = r.choice(sorted(self.items))
                self.execute("UPDATE items SET n = n + 1, payload = %s WHERE id = %s",
                             (f"u{r.getrandbits(32)}", key))  # fmt: skip
                records.append(("public.items", "u", key))
            elif kind == "del_i" and self.items:
                key = r.choice(sorted(self.items))
                self.items.discard(key)
                self.execute("DELETE FROM items WHERE id = %s", (key,))
                records.append(("public.items", "d", key))
            elif kind == "upd_t" and self.tags:
                key = r.choice(sorted(self.tags))
                self.execute("UPDATE tags SET label = %s WHERE tag_id = %s", (f"x{key}", key))
                records.append(("public.tags", "u", key))
            elif kind == "del_t" and self.tags:
                key = r.choice(sorted(self.tags))
                self.tags.discard(key)
                self.execute("DELETE FROM tags WHERE tag_id = %s", (key,))
                records.append(("public.tags", "d", key))
            elif kind == "ins_t":
                key = self._new()
                self.tags.add(key)
                self.execute("INSERT INTO tags VALUES (%s, %s)", (key, f"n{key}"))
                records.append(("public.tags", "c", key))
            else:
                key = self._new()
                self.items.add(key)
                self.execute("INSERT INTO items VALUES (%s, %s, 0)", (key, f"n{key}"))
                records.append(("public.items", "c", key))
        self.execute("COMMIT")
        if self.recording:
            self.expected.append(records)

    def truncate_tags(self) -> None:
        self.tags.clear()
        self.execute("TRUNCATE tags")
        if self.recording:
            self.expected.append([("public.tags", "t", None)])

    def rows(self, table: str) -> dict[int, dict[str, Any]]:
        key = KEYS[table]
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            return {r[names.index(key)]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


def delta_path(project: Path) -> str:
    return str(project / "lakehouse" / "raw")


def version(project: Path) -> int | None:
    from deltalake import DeltaTable

    path = delta_path(project)
    return DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None


def feed(project: Path) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    path = delta_path(project)
    return DeltaTable(path).to_pyarrow_table().to_pylist() if DeltaTable.is_deltatable(path) else []


def newest_state(project: Path) -> dict[str, Any] | None:
    from deltalake import DeltaTable

    if version(project) is None:
        return None
    for entry in DeltaTable(delta_path(project)).history():
        state = entry.get("lakeforge", {}).get("source_state")
        if state:
            return dict(state)
    return None


def problems(records: list[dict[str, Any]]) -> dict[str, Any]:
    """What must never be in the feed, even right after a kill."""
    out: dict[str, Any] = {}
    changes = Counter((r["lsn"], r["ordinal"]) for r in records if r["op"] != "r")
    if twice := [k for k, n in changes.items() if n > 1]:
        out["change_twice"] = twice[:10]
    reads = Counter((r["table"], r[KEYS[r["table"]]], r["lsn"]) for r in records if r["op"] == "r")
    if twice := [k for k, n in reads.items() if n > 1]:
        out["snapshot_row_twice"] = twice[:10]
    return out


def replay(records: list[dict[str, Any]]) -> dict[str, dict[int, dict[str, Any]]]:
    columns = {"public.items": ["id", "payload", "n"], "public.tags": ["tag_id", "label"]}
    tables: dict[str, dict[int, dict[str, Any]]] = {t: {} for t in columns}
    for r in sorted(records, key=lambda r: r["seq"]):
        rows = tables[r["table"]]
        if r["op"] == "t":
            rows.clear()
        elif r["op"] == "d":
            rows.pop(r[KEYS[r["table"]]], None)
        else:
            rows[r[KEYS[r["table"]]]] = {c: r[c] for c in columns[r["table"]]}
    return tables


def streamed(records: list[dict[str, Any]]) -> list[list[tuple[str, str, int | None]]]:
    out: list[list[tuple[str, str, int | None]]] = []
    last = None
    for r in sorted((r for r in records if r["op"] != "r"), key=lambda r: r["seq"]):
        if r["lsn"] != last:
            out.append([])
            last = r["lsn"]
        out[-1].append((r["table"], r["op"], None if r["op"] == "t" else r[KEYS[r["table"]]]))
    return out


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True, env=env(), timeout=300
    )


def wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_for_commit(proc: subprocess.Popen[bytes], project: Path, after: int | None) -> bool:
    landed = (
        Path(delta_path(project)) / "_delta_log" / f"{0 if after is None else after + 1:020d}.json"
    )
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if landed.exists():
            return True
        if wait(proc, time.monotonic() + 0.005):
            return landed.exists()
    return False


def test_kill_9_during_cdc_snapshot_and_stream_loses_and_duplicates_nothing(
    postgres_logical: Any, tmp_path: Path
) -> None:
    rng = random.Random(SEED)
    name = postgres_logical.create_database()
    db = Source(postgres_logical, name, random.Random(SEED + 1))
    db.setup()
    project = tmp_path / "project"
    (project / "models").mkdir(parents=True)
    (project / "lakeforge.yml").write_text("name: crash\n")
    (project / "models" / "raw.sql").write_text(
        "/* lakeforge\nsource:\n  kind: postgres_cdc\n"
        f"  url: {postgres_logical.url(name)}\n  tables: [items, tags]\n"
        "  snapshot_chunk_rows: 25\n  max_changes_per_batch: 12\n*/\nSELECT * FROM source\n"
    )
    log: list[str] = []
    kills: Counter[str] = Counter()

    def context() -> str:
        return f"seed={SEED} (LAKEFORGE_CRASH_SEED to vary); trials:\n  " + "\n  ".join(log)

    try:
        for trial in range(TRIALS):
            if newest_state(project) is not None:
                # The slot's start is committed: from now on every transaction must be
                # streamed (before, the slot may still be created again).
                db.recording = True
                for _ in range(rng.randint(2, 6)):
                    db.transaction(rng.choice([1, 2, 3, 20]))
                if rng.random() < 0.1:
                    db.truncate_tags()
            args = ["run"]
            if trial % RESNAPSHOT_EVERY == RESNAPSHOT_EVERY - 1:
                args = ["cdc", "resnapshot", "raw", "public.tags"]
            before = version(project)
            state = newest_state(project)
            snapshotting = state is None or not all(t["done"] for t in state["tables"].values())
            in_start_up = rng.random() < 0.25
            delay = rng.uniform(0.3, 2.5) if in_start_up else rng.uniform(0.0, 0.6)
            out = (tmp_path / f"trial-{trial}.log").open("wb")
            proc = subprocess.Popen([*LAKEFORGE, *args], cwd=project, stdout=out, stderr=out,
                                    env=env())  # fmt: skip
            try:
                start = time.monotonic()
                if in_start_up:
                    kill_at: float | None = start + delay
                elif wait_for_commit(proc, project, before):
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
                out.close()
            phase = "snapshot" if snapshotting else "stream"
            if args[0] == "cdc":
                phase = "resnapshot"
            outcome = "killed" if code == -signal.SIGKILL else f"exit {code}"
            log.append(
                f"#{trial} {' '.join(args)}: kill {delay:.2f}s after "
                f"{'start' if in_start_up else 'a commit'} ({phase}), {outcome}, "
                f"v{before} → v{version(project)}"
            )
            if code == -signal.SIGKILL:
                kills[phase] += 1
            else:
                text = (tmp_path / f"trial-{trial}.log").read_text(errors="replace")
                assert code == 0, f"trial {trial} failed:\n{text}\n{context()}"
            found = problems(feed(project))
            assert not found, f"after trial {trial}: {found}\n{context()}"
            if trial % CLEAN_EVERY == CLEAN_EVERY - 1:
                clean = lakeforge(project, "run")
                log.append(f"#{trial}+ clean run: exit {clean.returncode}")
                assert clean.returncode == 0, f"{clean.stdout}\n{clean.stderr}\n{context()}"

        final = lakeforge(project, "run")
        assert final.returncode == 0, f"{final.stdout}\n{final.stderr}\n{context()}"
        records = feed(project)
        assert not problems(records), context()
        # Complete, in commit order, each change once.
        got = streamed(records)
        assert got == db.expected, (
            f"{len(got)} streamed transactions, {len(db.expected)} committed\n{context()}"
        )
        # The feed gives back both tables.
        tables = replay(records)
        for table in KEYS:
            want = db.rows(table)
            assert tables[table] == want, f"{table} differs from the feed's replay\n{context()}"
        # One app transaction batch per Lakeforge commit, 1..n.
        from deltalake import DeltaTable

        table = DeltaTable(delta_path(project))
        history = sorted(table.history(), key=lambda e: e["version"])
        batches = [e["lakeforge"]["batch"] for e in history if "lakeforge" in e]
        assert batches == list(range(1, len(batches) + 1)), batches
        assert table.transaction_version("lakeforge/raw") == len(batches)
        # A further run commits nothing.
        again = lakeforge(project, "run")
        assert again.returncode == 0 and version(project) == table.version(), again.stdout
        assert kills["snapshot"] and kills["stream"], f"kills {dict(kills)}\n{context()}"
        print(
            f"\nkills {dict(kills)}; {len(records)} records, {len(got)} transactions\n{context()}"
        )
    finally:
        db.conn.close()
