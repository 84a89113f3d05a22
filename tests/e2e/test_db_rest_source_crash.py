"""Crash tests of the SQL and REST sources: ``kill -9`` of ``lakeforge run`` at random moments.

Two projects ingest into a bronze table, many commits a run:

- a SQLite table read incrementally by a cursor column with ties (``chunk_rows`` small, so a
  run commits chunk after chunk); between trials rows are inserted, many of them sharing the
  current highest cursor value, so ties sit at the watermark (docs/sources.md, SQL databases);
- a REST API on 127.0.0.1 read incrementally (an inclusive ``since`` parameter, keyset
  cursor pagination, one page a commit, a ``merge`` write on ``id``); between trials records
  are added and updated with field values at or above the current highest (docs/sources.md,
  REST APIs).

Trial after trial, ``lakeforge run`` is started as a real process and SIGKILLed at a random
moment — in start-up, while it reads, while it commits, between commits. After every kill
the table must hold no row twice and no row that was never in the source; at the end, one
uninterrupted run must leave every source row in the table exactly once (ids and a
checksum), with one app transaction batch per data commit, and a further run must commit
nothing — for REST too, where the inclusive ``since`` sends the newest records again
(DESIGN §2.2, §2.5).

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
import sqlite3
import subprocess
import sys
import threading
import time
import urllib.parse
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261122"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))  # more for a soak run
DATASET = "raw"
CHUNK_ROWS = 3  # SQL rows per commit
PAGE_SIZE = 3  # REST records per page, and so per commit
KILL_WINDOW_BATCHES = 4  # kills after a run's first commit spread over this many batches
CLEAN_EVERY = 7  # an uninterrupted run after every seventh trial: the source read to its end
MIN_BACKLOG = (KILL_WINDOW_BATCHES + 2) * 3  # rows waiting when a trial starts
SCRATCH_ROWS = 10 * 3  # the timing run: ten commits
# A failed run is acceptable only for these, and only when a rerun then succeeds: a writer
# that lost a commit race, or a lock held by another run.
RACE = re.compile(r"concurrent writer|commit conflict|lock", re.IGNORECASE)


# -- the CLI and the table ----------------------------------------------------------------


def make_project(root: Path, header: str) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: crash\n")
    (root / "models" / f"{DATASET}.sql").write_text(
        f"/* lakeforge\n{header}*/\nSELECT * FROM source\n"
    )
    return root


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One uninterrupted CLI call."""
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True, env=env(), timeout=300
    )


def delta_path(project: Path) -> str:
    return str(project / "lakehouse" / DATASET)


def version(project: Path) -> int | None:
    from deltalake import DeltaTable

    path = delta_path(project)
    return DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None


def read_bronze(project: Path) -> list[dict[str, Any]]:
    """The table's rows read by delta-rs directly, not through Lakeforge ([] when absent)."""
    from deltalake import DeltaTable

    path = delta_path(project)
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table(columns=["id", "payload"]).to_pylist()


def checksum(pairs: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(pairs):
        digest.update(f"{key}\t{value}\n".encode())
    return digest.hexdigest()


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


def measure_timing(scratch: Path) -> tuple[float, float]:
    """(seconds from start to the first commit, seconds a batch) of one uninterrupted run on
    a scratch project fed with ``SCRATCH_ROWS`` rows, measured now on this machine, from the
    commit timestamps."""
    from deltalake import DeltaTable

    started = time.time()
    measured = lakeforge(scratch, "run")
    assert measured.returncode == 0, f"{measured.stdout}\n{measured.stderr}"
    stamps = sorted(e["timestamp"] / 1000 for e in DeltaTable(delta_path(scratch)).history())
    assert len(stamps) >= 5, stamps
    shutil.rmtree(scratch)
    first_commit = max(stamps[0] - started, 0.05)
    return first_commit, max((stamps[-1] - stamps[0]) / (len(stamps) - 1), 0.01)


@dataclass
class Trials:
    """Runs ``lakeforge run`` on a project trial after trial, each SIGKILLed at a random
    moment, and keeps the log that failure messages carry."""

    project: Path
    rng: random.Random
    first_commit: float
    per_batch: float
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)

    def context(self) -> str:
        return f"seed={SEED} (set LAKEFORGE_CRASH_SEED to vary); trials:\n  " + "\n  ".join(
            self.log
        )

    def run_and_kill(self, trial: int, out_dir: Path) -> None:
        # A third of the kills in start-up (up to the measured time of a first commit);
        # the rest after the run's first commit, over the reads and commits of the next
        # batches: during a commit, between two, while a chunk or page is read.
        rng, project = self.rng, self.project
        in_start_up = rng.random() < 1 / 3
        delay = rng.uniform(
            0, self.first_commit if in_start_up else KILL_WINDOW_BATCHES * self.per_batch
        )
        before = version(project)
        out, err = out_dir / f"trial-{trial}.out", out_dir / f"trial-{trial}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            start = time.monotonic()
            proc = subprocess.Popen(
                [*LAKEFORGE, "run"], cwd=project, stdout=stdout, stderr=stderr, env=env()
            )
            try:
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
        self.log.append(f"#{trial}: kill {when}, {outcome}, v{before} → v{after}")
        if code == -signal.SIGKILL:
            self.kills["after a commit" if after != before else "before any commit"] += 1
        elif code != 0:
            message = err.read_text(errors="replace") + out.read_text(errors="replace")
            rerun = lakeforge(project, "run")
            self.log[-1] += f", rerun exit {rerun.returncode}"
            if not (RACE.search(message) and rerun.returncode == 0):
                self.failures.append(
                    f"trial {trial}: `lakeforge run` after a kill failed ({outcome}):\n{message}"
                    f"\nrerun (exit {rerun.returncode}):\n{rerun.stdout}\n{rerun.stderr}"
                )

    def run_clean(self, trial: int) -> None:
        """An uninterrupted run between kills: the source is read to its end, so the next
        trial starts from a watermark that all rows read so far share or lie below."""
        before = version(self.project)
        clean = lakeforge(self.project, "run")
        self.log.append(
            f"#{trial}+: clean run, exit {clean.returncode}, v{before} → v{version(self.project)}"
        )
        assert clean.returncode == 0, f"{clean.stdout}\n{clean.stderr}\n{self.context()}"

    def finish(self, expected: dict[int, str]) -> None:
        """One clean run; then every source row in the table exactly once (``expected``: id
        → payload), one app transaction batch per data commit, and a further run that
        changes nothing."""
        from deltalake import DeltaTable

        project, context = self.project, self.context
        final = lakeforge(project, "run")
        assert final.returncode == 0, f"final run failed:\n{final.stdout}\n{final.stderr}"
        assert not self.failures, "\n\n".join(self.failures) + "\n" + context()

        rows = read_bronze(project)
        ids = Counter(r["id"] for r in rows)
        want = Counter(expected.keys())
        missing, extra = sorted((want - ids).elements()), sorted((ids - want).elements())
        assert not missing and not extra, (
            f"{len(missing)} missing ids {missing[:20]}, {len(extra)} extra ids {extra[:20]} "
            f"(of {len(expected)} rows)\n{context()}"
        )
        stale = sorted(r["id"] for r in rows if expected[r["id"]] != r["payload"])
        assert checksum((r["id"], r["payload"]) for r in rows) == checksum(expected.items()), (
            f"payload checksum differs, ids {stale[:20]}\n{context()}"
        )

        # One app transaction batch per commit that carries data, numbered 1..n in log order.
        table = DeltaTable(delta_path(project))
        history = sorted(table.history(), key=lambda entry: entry["version"])
        data_commits = [e for e in history if rows_written(e.get("operationMetrics", {}))]
        batches = [e.get("lakeforge", {}).get("batch") for e in data_commits]
        txn = table.transaction_version(f"lakeforge/{DATASET}")
        assert txn == len(data_commits), f"app transaction {txn}, data commits {len(data_commits)}"
        assert batches == list(range(1, len(data_commits) + 1)), f"batches {batches}\n{context()}"

        # A further run is a no-op: no new Delta version. An API whose parameter is
        # inclusive sends the records at the watermark again (docs/sources.md): they were
        # read before, so there is nothing to commit.
        before = table.version()
        again = lakeforge(project, "run")
        assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{context()}"
        assert version(project) == before, f"a further run committed:\n{again.stdout}"

        assert self.kills["before any commit"] and self.kills["after a commit"], (
            f"kills {dict(self.kills)}: the timing did not cover both\n{context()}"
        )
        print(
            f"\nfirst commit after {self.first_commit:.2f}s, {self.per_batch:.3f}s a batch; "
            f"kills {dict(self.kills)}; {len(expected)} rows, {len(data_commits)} data "
            f"commits\n{context()}"
        )


def rows_written(metrics: dict[str, Any]) -> int:
    """Rows a commit wrote: appended, or merged in (inserted or updated)."""
    if "num_source_rows" in metrics:
        return int(metrics["num_target_rows_inserted"] + metrics["num_target_rows_updated"])
    return int(metrics.get("num_added_rows") or 0)


def no_duplicates_or_strangers(
    rows: list[dict[str, Any]], allowed: Callable[[int, str], bool]
) -> dict[str, Any]:
    """What must never be seen in bronze, even right after a kill: a row twice, or a row
    (id and payload) that was never in the source."""
    problems: dict[str, Any] = {}
    counts = Counter(r["id"] for r in rows)
    if duplicated := sorted(rid for rid, n in counts.items() if n > 1):
        problems["duplicated_ids"] = duplicated[:20]
    if unknown := sorted(r["id"] for r in rows if not allowed(r["id"], r["payload"])):
        problems["unknown_rows"] = unknown[:20]
    return problems


# -- SQL ----------------------------------------------------------------------------------


@dataclass
class Database:
    """The SQLite source table and every row the test wrote to it: the oracle."""

    path: Path
    rng: random.Random
    rows: dict[int, tuple[str, int]] = field(default_factory=dict)  # id → (payload, seq)
    next_id: int = 1

    def __post_init__(self) -> None:
        with sqlite3.connect(self.path) as con:
            con.execute("CREATE TABLE orders (id INTEGER PRIMARY KEY, payload TEXT, seq INTEGER)")
        con.close()

    @property
    def top(self) -> int:
        return max((seq for _, seq in self.rows.values()), default=0)

    def add(self, count: int) -> None:
        """Insert ``count`` rows: about half share the current highest cursor value (ties at
        the watermark), the rest climb in small steps that tie among themselves."""
        seq, new = self.top, []
        for index in range(count):
            if index >= count // 2:
                seq += self.rng.choice((0, 0, 1, 2))
            rid, self.next_id = self.next_id, self.next_id + 1
            payload = f"p{rid}-{self.rng.getrandbits(64):016x}-é"
            new.append((rid, payload, seq))
            self.rows[rid] = (payload, seq)
        # Inserted in a shuffled id order: ties are read in whatever order the database likes.
        self.rng.shuffle(new)
        with sqlite3.connect(self.path) as con:
            con.executemany("INSERT INTO orders VALUES (?, ?, ?)", new)
        con.close()


def sql_project(root: Path, db: Path) -> Path:
    return make_project(
        root,
        f'source: {{kind: sql, url: "sqlite:///{db}", table: orders, cursor: seq, '
        f"primary_key: [id], chunk_rows: {CHUNK_ROWS}}}\n",
    )


def sql_problems(rows: list[dict[str, Any]], db: Database) -> dict[str, Any]:
    problems = no_duplicates_or_strangers(
        rows, lambda rid, payload: db.rows.get(rid, ("",))[0] == payload
    )
    # Rows are read in cursor order and new rows never sort below the source's highest
    # cursor value, so every row below the highest cursor in the table must be there.
    loaded = {r["id"] for r in rows}
    top = max((db.rows[rid][1] for rid in loaded if rid in db.rows), default=None)
    if top is not None:
        gap = sorted(rid for rid, (_, seq) in db.rows.items() if seq < top and rid not in loaded)
        if gap:
            problems[f"missing_below_cursor_{top}"] = gap[:20]
    return problems


def test_kill_9_during_sql_ingestion_with_ties_loses_and_duplicates_nothing(
    tmp_path: Path,
) -> None:
    rng = random.Random(SEED)  # timing and arrivals; row contents use their own
    scratch_db = Database(tmp_path / "scratch.db", random.Random(SEED))
    scratch_db.add(SCRATCH_ROWS)
    first_commit, per_batch = measure_timing(sql_project(tmp_path / "scratch", scratch_db.path))

    db = Database(tmp_path / "src.db", random.Random(SEED + 1))
    project = sql_project(tmp_path / "project", db.path)
    trials = Trials(project, rng, first_commit, per_batch)
    for trial in range(TRIALS):
        pending = len(db.rows) - len(read_bronze(project))
        db.add(max(0, MIN_BACKLOG - pending) + rng.randint(2, 8))
        trials.run_and_kill(trial, tmp_path)
        problems = sql_problems(read_bronze(project), db)
        assert not problems, f"after trial {trial}: {problems}\n{trials.context()}"
        if trial % CLEAN_EVERY == CLEAN_EVERY - 1:
            trials.run_clean(trial)
            assert len(read_bronze(project)) == len(db.rows), trials.context()

    trials.finish({rid: payload for rid, (payload, _) in db.rows.items()})
    from deltalake import DeltaTable

    newest = DeltaTable(delta_path(project)).history(limit=1)[0]["lakeforge"]["source_state"]
    at_top = sorted(str(rid) for rid, (_, seq) in db.rows.items() if seq == db.top)
    assert (newest["watermark"], newest["at_watermark"]) == (db.top, at_top), newest


# -- REST ---------------------------------------------------------------------------------


@dataclass
class Feed:
    """The API's records and every version the test published: the oracle. Records are
    served ordered by ``(updated, seq)``; an update moves a record to the end."""

    rng: random.Random
    current: dict[int, dict[str, Any]] = field(default_factory=dict)  # id → record
    versions: dict[int, set[str]] = field(default_factory=dict)  # id → every payload
    lock: threading.Lock = field(default_factory=threading.Lock)
    seq: int = 0
    next_id: int = 1

    @property
    def top(self) -> int:
        return max((r["updated"] for r in self.current.values()), default=0)

    def add(self, count: int, updates: int = 0) -> None:
        """Publish ``count`` new records and ``updates`` new versions of existing ones,
        with ``updated`` at the current highest value (ties) or a little above."""
        with self.lock:
            updated = self.top
            olds = self.rng.sample(sorted(self.current), min(updates, len(self.current)))
            fresh = list(range(self.next_id, self.next_id + count))
            self.next_id += count
            changes = olds + fresh
            self.rng.shuffle(changes)
            for rid in changes:
                updated += self.rng.choice((0, 0, 1))
                self.seq += 1
                payload = f"p{rid}.{self.seq}-{self.rng.getrandbits(32):08x}-é"
                self.current[rid] = {"id": rid, "updated": updated, "seq": self.seq}
                self.current[rid]["payload"] = payload
                self.versions.setdefault(rid, set()).add(payload)

    def page(self, since: float, after: tuple[int, int] | None) -> dict[str, Any]:
        """One page: records with ``updated >= since`` (inclusive, so ties at the
        watermark are sent again) past the keyset cursor ``after``."""
        with self.lock:
            found = sorted(
                (r for r in self.current.values() if r["updated"] >= since),
                key=lambda r: (r["updated"], r["seq"]),
            )
        if after is not None:
            found = [r for r in found if (r["updated"], r["seq"]) > after]
        page = found[:PAGE_SIZE]
        more = len(found) > PAGE_SIZE
        nxt = f"{page[-1]['updated']}:{page[-1]['seq']}" if more else None
        items = [{"id": r["id"], "updated": r["updated"], "payload": r["payload"]} for r in page]
        return {"items": items, "next": nxt}


class Api(BaseHTTPRequestHandler):
    server: ApiServer

    def log_message(self, *args: Any) -> None:  # quiet
        pass

    def do_GET(self) -> None:
        url = urllib.parse.urlsplit(self.path)
        q = dict(urllib.parse.parse_qsl(url.query))
        feed = self.server.feeds.get(url.path)
        if feed is None:
            status, body = 404, {"error": f"no feed {url.path}"}
        else:
            after = None
            if (cursor := q.get("cursor")) is not None:
                updated, seq = cursor.split(":")
                after = (int(updated), int(seq))
            status, body = 200, feed.page(float(q.get("since", "-inf")), after)
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)


class ApiServer(ThreadingHTTPServer):
    daemon_threads = True
    feeds: dict[str, Feed]


@pytest.fixture
def api() -> Iterator[ApiServer]:
    srv = ApiServer(("127.0.0.1", 0), Api)
    srv.feeds = {}
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()
    thread.join(timeout=10)


def rest_project(root: Path, api: ApiServer, path: str) -> Path:
    return make_project(
        root,
        f"source:\n  kind: rest\n  url: http://127.0.0.1:{api.server_port}\n  path: {path}\n"
        "  records: items\n  paginate: {style: cursor, path: next, param: cursor}\n"
        "  incremental: {param: since, field: updated, initial: 0}\n"
        "  pages_per_batch: 1\n  backoff_base: 0.01\n"
        "write: {strategy: merge, keys: [id]}\n",
    )


def test_kill_9_during_rest_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path, api: ApiServer
) -> None:
    rng = random.Random(SEED)  # timing and arrivals; record contents use their own
    api.feeds["/scratch"] = scratch_feed = Feed(random.Random(SEED))
    scratch_feed.add(SCRATCH_ROWS)
    first_commit, per_batch = measure_timing(rest_project(tmp_path / "scratch", api, "/scratch"))

    api.feeds["/events"] = feed = Feed(random.Random(SEED + 1))
    project = rest_project(tmp_path / "project", api, "/events")
    trials = Trials(project, rng, first_commit, per_batch)
    for trial in range(TRIALS):
        loaded = {r["id"]: r["payload"] for r in read_bronze(project)}
        pending = sum(r["payload"] != loaded.get(rid) for rid, r in feed.current.items())
        feed.add(max(0, MIN_BACKLOG - pending) + rng.randint(1, 4), updates=rng.randint(0, 3))
        trials.run_and_kill(trial, tmp_path)
        problems = no_duplicates_or_strangers(
            read_bronze(project), lambda rid, payload: payload in feed.versions.get(rid, ())
        )
        assert not problems, f"after trial {trial}: {problems}\n{trials.context()}"
        if trial % CLEAN_EVERY == CLEAN_EVERY - 1:
            trials.run_clean(trial)
            assert len(read_bronze(project)) == len(feed.current), trials.context()

    trials.finish({rid: r["payload"] for rid, r in feed.current.items()})
    # The test did what it claims: passes ended (the clean runs) and later ones started from
    # a watermark, where the records at it were sent again.
    from deltalake import DeltaTable

    history = DeltaTable(delta_path(project)).history()
    sent = {e["lakeforge"]["source_state"]["since"] for e in history if "lakeforge" in e}
    assert len(sent) >= 3, f"passes sent `since` {sorted(sent)}\n{trials.context()}"
