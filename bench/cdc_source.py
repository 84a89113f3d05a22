"""PostgreSQL CDC → bronze Delta: changes/s of a catch-up, and end-to-end lag at a fixed rate.

The server: ``LAKEFORGE_BENCH_PG`` (a ``postgresql://`` URL of a database on a server with
``wal_level=logical``, the REPLICATION attribute), else a temporary cluster of its own
(``initdb`` + ``pg_ctl`` from ``LAKEFORGE_PG_BIN``, default ``/usr/lib/postgresql/15/bin``;
as the ``postgres`` OS user when run as root), stopped at the end.

A pgbench-style table ``accounts(aid int PRIMARY KEY, bid int, abalance int, filler
char(84))`` with 100,000 rows at scale 1, and pgbench's update: ``UPDATE accounts SET
abalance = abalance + δ WHERE aid = …``, one committed transaction each (50,000 at scale 1,
committed by a server-side procedure).

**Throughput** (the ratio). Each repetition creates both slots, commits the transactions,
then times each path reading all the changes into a Delta table, ``BATCH`` a commit:

- **Lakeforge**: a project whose bronze model reads ``kind: postgres_cdc`` (``snapshot:
  false``, ``max_changes_per_batch: BATCH``), timed as one ``Runner.run()`` — a catch-up:
  pgoutput decoded in-process, typed, transformed (DuckDB), audited, committed with its
  position, the slot confirmed after each commit.
- **by hand** (the baseline): psycopg2's replication cursor on its own slot, a minimal
  pgoutput parser (Relation / Begin / Update / Commit, text values), ``pyarrow`` (ints cast
  from text), ``deltalake.write_deltalake`` a batch, ``send_feedback`` after each write. No
  snapshot handover, no other message types, no exactly-once bookkeeping, no transform or
  checks.

**Lag** (Lakeforge only). A writer commits updates at a fixed rate (200 a second) for a few
seconds while Lakeforge runs catch-up after catch-up (``Runner.run()`` in a loop:
continuous streaming is not built); each change's lag is the commit time of the Delta
version holding it minus its ``commit_ts`` in PostgreSQL; reported p50 / p99.
"""

from __future__ import annotations

import os
import select
import shutil
import socket
import statistics
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path
from typing import Any

from bench.harness import Pair, table_rows, write_result

DEFAULT_REPEATS = 3
NAME = "cdc_source"
TARGET_RATIO = 2.0
DEFAULT_ACCOUNTS = 100_000
DEFAULT_CHANGES = 50_000
BATCH = 10_000
LAG_RATE = 200  # updates a second
URL = os.environ.get("LAKEFORGE_BENCH_PG")
PG_BIN = Path(os.environ.get("LAKEFORGE_PG_BIN", "/usr/lib/postgresql/15/bin"))
#: What the benchmark needs (the bench smoke test probes it first).
SERVICE = "PostgreSQL with wal_level=logical (LAKEFORGE_BENCH_PG, or initdb + pg_ctl)"


def probe() -> None:
    """Raise unless a logical server is configured or a temporary one can be made."""
    if URL:
        import psycopg2

        conn = psycopg2.connect(URL, connect_timeout=3)
        with conn.cursor() as cur:
            cur.execute("SHOW wal_level")
            (level,) = cur.fetchone()
        conn.close()
        if level != "logical":
            raise RuntimeError(f"wal_level is {level!r} at LAKEFORGE_BENCH_PG")
        return
    for tool in ("initdb", "pg_ctl"):
        if not (PG_BIN / tool).exists():
            raise FileNotFoundError(f"{PG_BIN / tool} (set LAKEFORGE_PG_BIN)")


class Cluster:
    """A temporary PostgreSQL cluster with wal_level=logical on a free port."""

    def __init__(self) -> None:
        self.root = Path(tempfile.mkdtemp(prefix="lf-bench-pg-"))
        self.as_postgres = ["runuser", "-u", "postgres", "--"] if os.geteuid() == 0 else []
        if self.as_postgres:
            shutil.chown(self.root, user="postgres")
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = sock.getsockname()[1]
        run = {"check": True, "capture_output": True, "timeout": 120}
        data = str(self.root / "data")
        initdb = [str(PG_BIN / "initdb"), "-D", data, "-U", "postgres", "-A", "trust", "-E", "UTF8"]
        subprocess.run([*self.as_postgres, *initdb, "--no-locale"], **run)
        settings = (
            f"-c wal_level=logical -c port={self.port} -c listen_addresses=127.0.0.1 "
            f"-c unix_socket_directories={self.root} -c max_replication_slots=10 "
            "-c max_wal_senders=10 -c shared_buffers=256MB"
        )
        pg_ctl = [str(PG_BIN / "pg_ctl"), "-D", data, "-l", str(self.root / "log"), "-w"]
        subprocess.run([*self.as_postgres, *pg_ctl, "-o", settings, "start"], **run)
        self.url = f"postgresql://postgres@127.0.0.1:{self.port}/postgres"

    def stop(self) -> None:
        subprocess.run([*self.as_postgres, str(PG_BIN / "pg_ctl"), "-D", str(self.root / "data"),
                        "-m", "fast", "-w", "stop"], capture_output=True, timeout=120)  # fmt: skip
        shutil.rmtree(self.root, ignore_errors=True)


def _connect(url: str) -> Any:
    import psycopg2

    conn = psycopg2.connect(url)
    conn.autocommit = True
    return conn


def prepare(url: str, accounts: int) -> None:
    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute("DROP TABLE IF EXISTS accounts")
        cur.execute(
            "CREATE TABLE accounts (aid int PRIMARY KEY, bid int, abalance int, filler char(84))"
        )
        cur.execute(
            "INSERT INTO accounts SELECT i, 1 + i / 100000, 0, '' FROM generate_series(1, %s) i",
            (accounts,),
        )
        cur.execute(
            "CREATE OR REPLACE PROCEDURE lf_bench_updates(n int, total int) LANGUAGE plpgsql "
            "AS $$ BEGIN FOR i IN 1..n LOOP "
            "UPDATE accounts SET abalance = abalance + (i % 101) - 50 "
            "WHERE aid = 1 + (i::bigint * 7919) % total; COMMIT; END LOOP; END $$"
        )
        cur.execute("DROP PUBLICATION IF EXISTS lf_bench")
        cur.execute("CREATE PUBLICATION lf_bench FOR TABLE accounts")
    conn.close()


def commit_updates(url: str, count: int, accounts: int) -> None:
    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute("CALL lf_bench_updates(%s, %s)", (count, accounts))
    conn.close()


def _wal_lsn(url: str) -> int:
    from lakeforge.sources.pgoutput import parse_lsn

    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute("SELECT pg_current_wal_flush_lsn()::text")
        (text,) = cur.fetchone()
    conn.close()
    return parse_lsn(text)


# -- the baseline ------------------------------------------------------------------------------

_SLOT = "lf_bench_baseline"


def baseline_slot(url: str) -> None:
    import psycopg2
    import psycopg2.extras

    conn = _connect(url)
    with conn.cursor() as cur:
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE slot_name = %s",
            (_SLOT,),
        )
    conn.close()
    repl = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    repl.cursor().create_replication_slot(_SLOT, output_plugin="pgoutput")
    repl.close()


def _tuple(data: bytes, pos: int) -> tuple[list[str | None], int]:
    (count,) = struct.unpack_from(">h", data, pos)
    pos += 2
    values: list[str | None] = []
    for _ in range(count):
        kind = data[pos]
        pos += 1
        if kind == 0x74:  # 't'
            (size,) = struct.unpack_from(">i", data, pos)
            values.append(data[pos + 4 : pos + 4 + size].decode())
            pos += 4 + size
        else:
            values.append(None)
    return values, pos


def baseline_load(url: str, out: Path, batch: int) -> int:
    """Hand-written: read the slot to the WAL position at the start, write_deltalake a batch."""
    import psycopg2
    import psycopg2.extras
    import pyarrow as pa
    from deltalake import write_deltalake

    target = _wal_lsn(url)
    conn = psycopg2.connect(url, connection_factory=psycopg2.extras.LogicalReplicationConnection)
    cur = conn.cursor()
    options = {"proto_version": "1", "publication_names": "lf_bench"}
    cur.start_replication(slot_name=_SLOT, decode=False, options=options)
    names: list[str] = []
    rows: list[list[str | None]] = []
    written, in_tx, first, end = 0, False, True, 0

    def flush() -> None:
        nonlocal rows, written, first
        columns = list(zip(*rows, strict=True))
        table = pa.table({n: pa.array(c, pa.string()) for n, c in zip(names, columns, strict=True)})
        table = table.cast(pa.schema([pa.field(n, pa.string() if n == "filler" else pa.int64())
                                      for n in names]))  # fmt: skip
        write_deltalake(str(out), table, mode="overwrite" if first else "append")
        cur.send_feedback(flush_lsn=end, force=True)
        written += len(rows)
        rows, first = [], False

    while True:
        msg = cur.read_message()
        if msg is None:
            if not in_tx and cur.wal_end >= target:
                break
            select.select([cur], [], [], 0.2)
            continue
        data = msg.payload
        kind = data[0]
        if kind == 0x42:  # Begin
            in_tx = True
        elif kind == 0x43:  # Commit
            in_tx = False
            (end,) = struct.unpack_from(">Q", data, 10)
            if len(rows) >= batch:
                flush()
            if end >= target:
                break
        elif kind == 0x52:  # Relation
            pos = 5
            pos = data.index(b"\x00", pos) + 1  # namespace
            pos = data.index(b"\x00", pos) + 1  # name
            pos += 1  # replica identity
            (count,) = struct.unpack_from(">h", data, pos)
            pos += 2
            names = []
            for _ in range(count):
                stop = data.index(b"\x00", pos + 1)
                names.append(data[pos + 1 : stop].decode())
                pos = stop + 1 + 8
        elif kind in (0x55, 0x49):  # Update, Insert
            pos = 5
            if data[pos] in (0x4B, 0x4F):  # an old key / row: skip it
                pos = _tuple(data, pos + 1)[1]
            values, _ = _tuple(data, pos + 1)
            rows.append(values)
    if rows:
        flush()
    conn.close()
    return written


# -- lag ---------------------------------------------------------------------------------------


def measure_lag(url: str, root: Path, accounts: int, seconds: float) -> dict[str, Any]:
    """Lakeforge catch-ups in a loop while a writer commits LAG_RATE updates a second."""
    from deltalake import DeltaTable

    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    write_project(root, url, batch=BATCH, seconds=0.5)
    runner = Runner(load_project(root))
    runner.run()  # the slot
    done = threading.Event()

    def writer() -> None:
        conn = _connect(url)
        with conn.cursor() as cur:
            start = time.monotonic()
            for i in range(int(LAG_RATE * seconds)):
                wait = start + i / LAG_RATE - time.monotonic()
                if wait > 0:
                    time.sleep(wait)
                cur.execute("UPDATE accounts SET abalance = abalance + 1 WHERE aid = %s",
                            (1 + (i * 31) % accounts,))  # fmt: skip
        conn.close()
        done.set()

    thread = threading.Thread(target=writer)
    thread.start()
    runs = 0
    while not done.is_set():
        runner.run()
        runs += 1
    thread.join()
    runner.run()
    path = runner.store.uri("raw")
    history = {e["version"]: e["timestamp"] / 1000 for e in DeltaTable(path).history()}
    lags: list[float] = []
    seen: set[str] = set()
    for v in sorted(history):
        table = DeltaTable(path, version=v)
        new = [f for f in table.file_uris() if f not in seen]
        seen.update(new)
        if not new:
            continue
        import pyarrow.dataset as pads

        stamps = pads.dataset(new, format="parquet").to_table(columns=["commit_ts"])
        for ts in stamps.column("commit_ts").to_pylist():
            if ts is not None:
                lags.append(history[v] - ts.timestamp())
    lags.sort()
    if not lags:
        return {"changes": 0}
    return {
        "rate_per_second": LAG_RATE,
        "seconds": seconds,
        "changes": len(lags),
        "catch_up_runs": runs + 1,
        "p50": round(statistics.median(lags), 3),
        "p99": round(lags[min(len(lags) - 1, round(0.99 * (len(lags) - 1)))], 3),
        "max": round(lags[-1], 3),
    }


def write_project(root: Path, url: str, batch: int, seconds: float = 30) -> None:
    shutil.rmtree(root, ignore_errors=True)
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: cdc_bench\n", encoding="utf-8")
    (root / "models" / "raw.sql").write_text(
        f"/* lakeforge\nlayer: bronze\nsource: {{kind: postgres_cdc, url: '{url}', "
        f"tables: [accounts], snapshot: false, max_changes_per_batch: {batch}, "
        f"max_batch_seconds: {seconds}}}\n*/\nSELECT * FROM source\n",
        encoding="utf-8",
    )


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    accounts = max(1_000, round(DEFAULT_ACCOUNTS * scale))
    changes = max(500, round(DEFAULT_CHANGES * scale))
    batch = min(BATCH, max(100, changes // 10))
    cluster = None if URL else Cluster()
    url = URL or (cluster.url if cluster else "")
    pair = Pair()
    try:
        prepare(url, accounts)
        for i in range(repeats + 1):  # the first is a warm-up
            root = workdir / "project"
            write_project(root, url, batch)
            runner = Runner(load_project(root))
            if not runner.run().ok:  # creates the slot (no snapshot)
                raise RuntimeError("lakeforge could not create its slot")
            baseline_slot(url)
            commit_updates(url, changes, accounts)
            base_out = workdir / "baseline"
            shutil.rmtree(base_out, ignore_errors=True)

            def lakeforge(runner: Any = runner) -> float:
                started = time.perf_counter()
                result = runner.run()
                if not result.ok:
                    raise RuntimeError(f"lakeforge CDC catch-up failed: {result.to_dict()}")
                return time.perf_counter() - started

            def baseline(out: Path = base_out) -> float:
                started = time.perf_counter()
                read = baseline_load(url, out, batch)
                assert read == changes, f"baseline read {read} of {changes}"
                return time.perf_counter() - started

            first, second = (lakeforge, baseline) if i % 2 else (baseline, lakeforge)
            times = {f.__name__: f() for f in (first, second)}
            lf_rows = table_rows(runner.store.uri("raw"))
            assert lf_rows == changes, f"lakeforge wrote {lf_rows} of {changes}"
            if i == 0:
                print("  warm-up done", flush=True)
                continue
            pair.lakeforge.append(times["lakeforge"])
            pair.baseline.append(times["baseline"])
            print(
                f"  run {i}: lakeforge {times['lakeforge']:.3f}s, "
                f"baseline {times['baseline']:.3f}s",
                flush=True,
            )
        lag = measure_lag(url, workdir / "lag", accounts, seconds=max(1.0, 10 * min(scale, 1)))
    finally:
        if cluster is not None:
            cluster.stop()
    summary = pair.summary()
    result: dict[str, Any] = {
        "description": f"{changes:,} single-row update transactions (pgbench-style, "
        f"{accounts:,} accounts) → bronze, {batch:,} a commit",
        "lakeforge": "Runner(project).run(): postgres_cdc catch-up (snapshot: false)",
        "baseline": "psycopg2 replication + minimal pgoutput parser + pyarrow + write_deltalake",
        "scale": scale,
        "changes": changes,
        "batch": batch,
        "changes_per_second": {
            "lakeforge": round(changes / summary["lakeforge_median"]),
            "baseline": round(changes / summary["baseline_median"]),
        },
        "end_to_end_lag_seconds": lag,
        **summary,
    }
    cps = result["changes_per_second"]
    print(
        f"  changes/s (median): lakeforge {cps['lakeforge']:,}, baseline {cps['baseline']:,}; "
        f"lag at {LAG_RATE}/s: p50 {lag.get('p50')}s, p99 {lag.get('p99')}s"
    )
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
