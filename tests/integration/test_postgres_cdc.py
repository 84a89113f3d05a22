"""The PostgreSQL CDC source against real servers.

Log-based capture needs ``wal_level=logical``; the shared server on 5432 runs ``replica``
and is not restarted, so these tests use a cluster of their own (``postgres_logical`` in
conftest) — and the 5432 server for the real ``wal_level`` error.

The main test drives a workload through three runs — inserts, updates (to NULL too),
deletes, primary-key changes, a truncate, a large TOASTed text left unchanged by an update
of another column, a column added mid-stream, transactions over several tables, one larger
than a batch, a writer busy while a run reads — and checks that the change feed holds
exactly the changes made, in commit order, and that replaying it by ``seq`` (and applying it
with ``lf.CDC``) gives back every table exactly.
"""

from __future__ import annotations

import datetime as dt
import json
import random
import textwrap
import threading
import time
import uuid
from collections.abc import Iterator
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

KEYS = {"public.customers": "id", "public.orders": "order_id", "public.docs": "doc_id"}
SEED = 20261203


# -- the database ------------------------------------------------------------------------------


class Db:
    """A database of the logical cluster, and the changes a test made to it: the oracle."""

    def __init__(self, cluster: Any, name: str) -> None:
        self.cluster, self.name = cluster, name
        self.url = cluster.url(name)
        self.conn = cluster.connect(name)
        #: per committed transaction, in commit order: [(table, op, key), ...]
        self.expected: list[list[tuple[str, str, Any]]] = []

    def execute(self, sql: str, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(sql, params)
            return list(cur.fetchall()) if cur.description else []

    def transaction(self, steps: list[tuple[str, Any, list[tuple[str, str, Any]]]]) -> None:
        """Run (sql, params, expected records) steps as one transaction."""
        self.execute("BEGIN")
        records: list[tuple[str, str, Any]] = []
        for sql, params, expect in steps:
            self.execute(sql, params)
            records.extend(expect)
        self.execute("COMMIT")
        if records:
            self.expected.append(records)

    def rows(self, table: str) -> dict[Any, dict[str, Any]]:
        key = KEYS[table]
        with self.conn.cursor() as cur:
            cur.execute(f"SELECT * FROM {table}")
            names = [d[0] for d in cur.description]
            return {r[names.index(key)]: dict(zip(names, r, strict=True)) for r in cur.fetchall()}


@pytest.fixture
def db(postgres_logical: Any) -> Iterator[Db]:
    name = postgres_logical.create_database()
    database = Db(postgres_logical, name)
    yield database
    database.conn.close()
    admin = postgres_logical.connect()
    with admin.cursor() as cur:
        cur.execute(
            "SELECT pg_drop_replication_slot(slot_name) FROM pg_replication_slots "
            "WHERE database = %s AND NOT active",
            (name,),
        )
        cur.execute(f'DROP DATABASE "{name}" WITH (FORCE)')
    admin.close()


# -- the project -------------------------------------------------------------------------------


def write_project(root: Path, url: str, source: str, models: dict[str, str] | None = None) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: cdc\n")
    (root / "models").mkdir(exist_ok=True)
    header = f"source:\n  kind: postgres_cdc\n  url: {url}\n" + textwrap.indent(source, "  ")
    (root / "models" / "raw.sql").write_text(f"/* lakeforge\n{header}*/\nSELECT * FROM source\n")
    for name, text in (models or {}).items():
        (root / "models" / f"{name}.sql").write_text(textwrap.dedent(text).lstrip())


def run(root: Path, select: str | None = None) -> Any:
    result = Runner(load_project(root)).run(select)
    assert result.ok, [f"{t.dataset}: {t.error}" for t in result.tasks if t.error]
    return result


def feed(root: Path) -> list[dict[str, Any]]:
    return DeltaStore(str(root / "lakehouse")).read("raw").to_table().to_pylist()


def history(root: Path) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    return sorted(DeltaTable(str(root / "lakehouse" / "raw")).history(), key=lambda e: e["version"])


def replay(records: list[dict[str, Any]], columns: dict[str, list[str]]) -> dict[str, dict]:
    """The tables a feed describes: its records by ``seq``; a column in ``_unchanged_cols``
    keeps the value the row has (the documented contract)."""
    tables: dict[str, dict[Any, dict[str, Any]]] = {t: {} for t in columns}
    for r in sorted(records, key=lambda r: r["seq"]):
        rows = tables[r["table"]]
        key = r[KEYS[r["table"]]]
        if r["op"] == "t":
            rows.clear()
        elif r["op"] == "d":
            rows.pop(key, None)
        else:
            row = {c: r.get(c) for c in columns[r["table"]]}
            for c in r["_unchanged_cols"] or []:
                row[c] = rows[key][c]
            rows[key] = row
    return tables


def normalized(value: Any, column: str) -> Any:
    if isinstance(value, memoryview):
        return bytes(value)
    if isinstance(value, dt.datetime) and value.tzinfo is not None:
        return value.astimezone(dt.UTC)
    if column == "meta" and isinstance(value, str):
        return json.loads(value)
    return value


def assert_tables_equal(db: Db, tables: dict[str, dict], what: str) -> None:
    for table in KEYS:
        want = db.rows(table)
        got = tables[table]
        assert sorted(got) == sorted(want), f"{what}: keys of {table} differ"
        for key, row in want.items():
            for col, value in row.items():
                a, b = normalized(got[key].get(col), col), normalized(value, col)
                assert a == b, f"{what}: {table}[{key}].{col}: {a!r} != {b!r}"


# -- the workload ------------------------------------------------------------------------------

BIG = 60_000  # characters: stored out of line (TOAST), incompressible


def create_tables(db: Db) -> None:
    db.execute(
        "CREATE TABLE customers (id int PRIMARY KEY, name text, tier smallint, "
        "balance numeric(12,2), born date, seen timestamptz, meta jsonb, photo bytea, "
        "active boolean, uid uuid, score float8)"
    )
    db.execute(
        "CREATE TABLE orders (order_id bigint PRIMARY KEY, customer_id int, "
        "amount numeric(10,2), note text, placed timestamp)"
    )
    db.execute("ALTER TABLE orders REPLICA IDENTITY FULL")
    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("CREATE TABLE audit (x int)")  # not captured


class Workload:
    """Random single-row statements over the captured tables, each with the change
    record(s) it must produce."""

    def __init__(self, db: Db, rng: random.Random) -> None:
        self.db, self.rng = db, rng
        self.next_id = 1
        self.customers: set[int] = set()
        self.orders: set[int] = set()
        self.docs: set[int] = set()
        self.has_email = False

    def _id(self) -> int:
        self.next_id += 1
        return self.next_id

    def big(self) -> str:
        return f"{self.rng.getrandbits(4 * BIG):0{BIG}x}"  # random hex: does not compress

    def customer_values(self) -> dict[str, Any]:
        r = self.rng
        maybe = lambda v: None if r.random() < 0.2 else v  # noqa: E731
        values = {
            "name": maybe(f"name-{r.randint(0, 10**6)}-é"),
            "tier": maybe(r.randint(-5, 5)),
            "balance": maybe(Decimal(r.randint(-10**8, 10**8)) / 100),
            "born": maybe(dt.date(1950, 1, 1) + dt.timedelta(days=r.randint(0, 20000))),
            "seen": maybe(dt.datetime(2026, 1, 1, tzinfo=dt.UTC) + dt.timedelta(
                microseconds=r.randint(0, 10**13))),
            "meta": maybe(json.dumps({"k": r.randint(0, 9), "l": [1, "x"]})),
            "photo": maybe(bytes(r.getrandbits(8) for _ in range(r.randint(0, 8)))),
            "active": maybe(r.random() < 0.5),
            "uid": maybe(str(uuid.UUID(int=r.getrandbits(128)))),
            "score": maybe(r.choice([0.1, 1e300, -2.5, float("inf")])),
        }  # fmt: skip
        if self.has_email:
            values["email"] = maybe(f"u{r.randint(0, 999)}@example.com")
        return values

    def step(self) -> list[tuple[str, Any, list[tuple[str, str, Any]]]]:
        """One random statement (or two, for a primary-key change)."""
        r = self.rng
        kind = r.choice(
            ["ins_c", "ins_c", "upd_c", "upd_c", "del_c", "move_c", "ins_o", "ins_o", "upd_o",
             "del_o", "ins_d", "title_d", "body_d", "audit"]
        )  # fmt: skip
        if kind == "upd_c" and self.customers:
            cid = r.choice(sorted(self.customers))
            values = self.customer_values()
            cols = r.sample(sorted(values), r.randint(1, 3))
            sets = ", ".join(f"{c} = %({c})s" for c in cols)
            params = {c: values[c] for c in cols} | {"id": cid}
            return [(f"UPDATE customers SET {sets} WHERE id = %(id)s", params,
                     [("public.customers", "u", cid)])]  # fmt: skip
        if kind == "del_c" and self.customers:
            cid = r.choice(sorted(self.customers))
            self.customers.discard(cid)
            return [
                ("DELETE FROM customers WHERE id = %s", (cid,), [("public.customers", "d", cid)])
            ]
        if kind == "move_c" and self.customers:
            old, new = r.choice(sorted(self.customers)), self._id()
            self.customers.discard(old)
            self.customers.add(new)
            return [("UPDATE customers SET id = %s, tier = 9 WHERE id = %s", (new, old),
                     [("public.customers", "d", old), ("public.customers", "c", new)])]  # fmt: skip
        if kind == "upd_o" and self.orders:
            oid = r.choice(sorted(self.orders))
            note = None if r.random() < 0.3 else f"note {r.randint(0, 99)}"
            return [("UPDATE orders SET note = %s, amount = amount + 1 WHERE order_id = %s",
                     (note, oid), [("public.orders", "u", oid)])]  # fmt: skip
        if kind == "del_o" and self.orders:
            oid = r.choice(sorted(self.orders))
            self.orders.discard(oid)
            return [
                ("DELETE FROM orders WHERE order_id = %s", (oid,), [("public.orders", "d", oid)])
            ]
        if kind == "title_d" and self.docs:
            # Only the title changes: the TOASTed body is not sent (kind 'u').
            did = r.choice(sorted(self.docs))
            return [("UPDATE docs SET title = %s WHERE doc_id = %s", (f"t{r.random()}", did),
                     [("public.docs", "u", did)])]  # fmt: skip
        if kind == "body_d" and self.docs:
            did = r.choice(sorted(self.docs))
            return [("UPDATE docs SET body = %s WHERE doc_id = %s", (self.big(), did),
                     [("public.docs", "u", did)])]  # fmt: skip
        if kind == "ins_d":
            did = self._id()
            self.docs.add(did)
            return [("INSERT INTO docs VALUES (%s, %s, %s)", (did, "new", self.big()),
                     [("public.docs", "c", did)])]  # fmt: skip
        if kind == "audit":
            return [("INSERT INTO audit VALUES (1)", None, [])]
        if kind.endswith("_o") and self.customers:
            oid = self._id()
            self.orders.add(oid)
            return [("INSERT INTO orders VALUES (%s, %s, %s, %s, %s)",
                     (oid, r.choice(sorted(self.customers)), Decimal(r.randint(0, 99999)) / 100,
                      "first", dt.datetime(2026, 5, 1, 12) + dt.timedelta(seconds=oid)),
                     [("public.orders", "c", oid)])]  # fmt: skip
        return self.insert_customer()

    def insert_customer(self) -> list[tuple[str, Any, list[tuple[str, str, Any]]]]:
        cid = self._id()
        self.customers.add(cid)
        values = self.customer_values()
        cols = ", ".join(["id", *values])
        marks = ", ".join(["%(id)s", *(f"%({c})s" for c in values)])
        return [(f"INSERT INTO customers ({cols}) VALUES ({marks})", {"id": cid, **values},
                 [("public.customers", "c", cid)])]  # fmt: skip

    def transactions(self, count: int) -> None:
        for _ in range(count):
            steps: list[Any] = []
            for _ in range(self.rng.choice([1, 1, 2, 3, 4])):
                steps.extend(self.step())
            self.db.transaction(steps)

    def truncate_orders(self) -> None:
        self.orders.clear()
        self.db.transaction([("TRUNCATE orders", None, [("public.orders", "t", None)])])


def streamed_transactions(records: list[dict[str, Any]]) -> list[list[tuple[str, str, Any]]]:
    out: list[list[tuple[str, str, Any]]] = []
    last = None
    for r in sorted((r for r in records if r["op"] != "r"), key=lambda r: r["seq"]):
        if r["lsn"] != last:
            out.append([])
            last = r["lsn"]
        key = None if r["op"] == "t" else r[KEYS[r["table"]]]
        out[-1].append((r["table"], r["op"], key))
    return out


SILVER = {
    "silver_customers": """
        /* lakeforge
        write: {strategy: cdc, keys: [id], sequence_by: seq}
        */
        -- every column of customers, the one added mid-stream (email) too
        SELECT * EXCLUDE ("table", lsn, ordinal, commit_ts, tx_id, before, _unchanged_cols,
                          order_id, customer_id, amount, note, placed, doc_id, title, body)
        FROM raw WHERE "table" = 'public.customers'
    """,
    "silver_orders": """
        /* lakeforge
        write: {strategy: cdc, keys: [order_id], sequence_by: seq}
        */
        SELECT op, seq, order_id, customer_id, amount, note, placed
        FROM raw WHERE "table" = 'public.orders'
    """,
    # docs' body may come unchanged (TOAST, REPLICA IDENTITY DEFAULT): NULL + _unchanged_cols.
    # The CDC apply reads _unchanged_cols (its unchanged_column) and keeps the row's body.
    "silver_docs": """
        /* lakeforge
        write: {strategy: cdc, keys: [doc_id], sequence_by: seq}
        */
        SELECT op, seq, doc_id, title, body, _unchanged_cols
        FROM raw WHERE "table" = 'public.docs'
    """,
}


def silver_tables(root: Path) -> dict[str, dict]:
    store = DeltaStore(str(root / "lakehouse"))
    out = {}
    for table, key in KEYS.items():
        rows = store.read("silver_" + table.split(".")[1]).to_table().to_pylist()
        out[table] = {r[key]: {c: v for c, v in r.items() if c != "seq"} for r in rows}
    return out


def test_change_feed_is_complete_ordered_and_reproduces_the_tables(db: Db, tmp_path: Path) -> None:
    rng = random.Random(SEED)
    create_tables(db)
    work = Workload(db, rng)
    for _ in range(12):
        db.transaction(work.insert_customer())
    for _ in range(3):
        db.transaction(work.step())  # orders, docs …
    db.transaction([("INSERT INTO docs VALUES (1, 'big one', %s)", (work.big(),), [])])
    work.docs.add(1)
    db.expected.clear()  # those rows come with the snapshot, not the stream

    root = tmp_path / "p"
    source = "tables: [public.customers, public.orders, public.docs]\nsnapshot_chunk_rows: 5\n"
    source += "max_changes_per_batch: 20\n"
    write_project(root, db.url, source, SILVER)
    run(root)
    first = feed(root)
    assert {r["op"] for r in first} == {"r"}
    assert len(first) == sum(len(db.rows(t)) for t in KEYS)

    # Round 2: mixed transactions, a big one (split over batches), TOAST left unchanged,
    # a truncate, a column added mid-stream.
    # First, before the run's stream has seen doc 1: its body is not sent, nor known.
    db.transaction([("UPDATE docs SET title = 'renamed' WHERE doc_id = 1", None,
                     [("public.docs", "u", 1)])])  # fmt: skip
    work.transactions(25)
    db.transaction([s for _ in range(30) for s in work.insert_customer()])  # > a batch
    work.truncate_orders()
    work.transactions(10)
    db.execute("ALTER TABLE customers ADD COLUMN email text")
    work.has_email = True
    work.transactions(15)
    run(root)

    # Round 3: a writer keeps committing while the run reads; the next run gets the rest.
    def writer() -> None:
        for _ in range(20):
            work.transactions(1)
            time.sleep(0.02)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        run(root, "raw")
    finally:
        thread.join(timeout=60)
    run(root)

    records = feed(root)
    # Complete and ordered: exactly the transactions made, in commit order, each change once.
    assert streamed_transactions(records) == db.expected
    streamed = [(r["lsn"], r["ordinal"]) for r in records if r["op"] != "r"]
    assert len(streamed) == len(set(streamed))
    # The feed reproduces every table, value for value.
    columns = {t: list(next(iter(db.rows(t).values()), {}).keys()) for t in KEYS}
    columns["public.orders"] = ["order_id", "customer_id", "amount", "note", "placed"]
    assert_tables_equal(db, replay(records, columns), "replayed feed")
    # The test did what it claims.
    unchanged = [r for r in records if r["_unchanged_cols"] == ["body"]]
    assert unchanged and all(r["body"] is None for r in unchanged)
    assert any(r["op"] == "t" for r in records) and "email" in records[0]
    states = [e["lakeforge"]["source_state"] for e in history(root) if "lakeforge" in e]
    assert any(s["partial"] for s in states), "no transaction was split over batches"
    # lf.CDC applies the feed to silver tables equal to the source tables.
    assert_tables_equal(db, silver_tables(root), "silver (lf.CDC)")
    # Nothing new: a further run commits nothing.
    version = DeltaStore(str(root / "lakehouse")).version("raw")
    run(root, "raw")
    assert DeltaStore(str(root / "lakehouse")).version("raw") == version


def test_a_snapshot_cut_short_resumes_on_a_new_snapshot_exactly(db: Db, tmp_path: Path) -> None:
    """A batch of the snapshot fails (a blocking expectation): the chunks before it are
    committed. Rows change, before and after the last key read; the next run reads the rest
    on a new snapshot, and streams from the first one: the feed is still exact."""
    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    for i in range(1, 11):
        db.execute("INSERT INTO docs VALUES (%s, %s, 'b')", (i, "poison" if i == 6 else "ok"))
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\nsnapshot_chunk_rows: 2\n")
    (root / "models" / "raw.sql").write_text(
        (root / "models" / "raw.sql")
        .read_text()
        .replace("*/", "expect: {no_poison: \"title <> 'poison'\"}\non_violation: fail\n*/")
    )
    failed = Runner(load_project(root)).run()
    assert not failed.ok and "no_poison" in str(failed.tasks[0].error)
    read = {r["doc_id"]: r["lsn"] for r in feed(root)}
    assert sorted(read) == [1, 2, 3, 4]
    db.execute("UPDATE docs SET title = 'fixed' WHERE doc_id = 6")
    db.execute("DELETE FROM docs WHERE doc_id IN (2, 8)")
    db.execute("INSERT INTO docs VALUES (11, 'late', 'b'), (0, 'low', 'b')")
    db.execute("UPDATE docs SET title = 'changed' WHERE doc_id = 3")
    run(root)
    records = feed(root)
    snap = [(r["doc_id"], r["lsn"]) for r in records if r["op"] == "r"]
    assert len({k for k, _ in snap}) == len(snap), "a row was read twice by the snapshots"
    first_lsn = read[1]
    assert {k for k, lsn in snap if lsn == first_lsn} == {1, 2, 3, 4}
    assert {k for k, lsn in snap if lsn > first_lsn} == {5, 6, 7, 9, 10, 11}
    tables = replay(records, {"public.docs": ["doc_id", "title", "body"]})
    want = db.rows("public.docs")
    assert tables["public.docs"] == want


def test_resnapshot_and_status_commands(db: Db, tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("INSERT INTO docs SELECT i, 't' || i, 'b' FROM generate_series(1, 5) i")
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\n")
    run(root)
    db.execute("UPDATE docs SET title = 'x' WHERE doc_id = 2")
    cli = CliRunner()
    done = cli.invoke(app, ["-C", str(root), "cdc", "resnapshot", "raw", "docs", "--json"])
    assert done.exit_code == 0, done.output
    assert json.loads(done.output)["status"] == "success"
    records = feed(root)
    snaps = sorted({r["lsn"] for r in records if r["op"] == "r"})
    assert len(snaps) == 2 and sum(r["op"] == "r" for r in records) == 10
    assert sum(r["op"] == "u" for r in records) == 1  # the update, streamed too
    tables = replay(records, {"public.docs": ["doc_id", "title", "body"]})
    assert tables["public.docs"] == db.rows("public.docs")

    status = cli.invoke(app, ["-C", str(root), "cdc", "status", "--json"])
    assert status.exit_code == 0, status.output
    (row,) = json.loads(status.output)
    assert row["slot"] == "lakeforge_raw" and row["slot_exists"] and row["lag_guard"] == "ok"
    assert row["snapshot"]["public.docs"]["done"] and row["lag_bytes"] >= 0
    assert row["changes"] == 1 and row["confirmed_lsn"]
    table = cli.invoke(app, ["-C", str(root), "cdc", "status"])
    assert table.exit_code == 0 and "postgres CDC" in table.output and "done" in table.output
    sources = cli.invoke(app, ["-C", str(root), "sources", "--json"])
    assert json.loads(sources.output)[0]["kind"] == "postgres_cdc"
    wrong = cli.invoke(app, ["-C", str(root), "cdc", "resnapshot", "raw", "public.nope"])
    assert wrong.exit_code == 1 and "does not capture public.nope" in wrong.output


def test_without_snapshot_only_later_changes_are_read(db: Db, tmp_path: Path) -> None:
    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("INSERT INTO docs VALUES (1, 'before', 'b')")
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\nsnapshot: false\n")
    run(root)  # creates the slot and commits where it starts
    assert feed(root) == []
    db.execute("INSERT INTO docs VALUES (2, 'after', 'b')")
    run(root)
    assert [(r["op"], r["doc_id"]) for r in feed(root)] == [("c", 2)]


def test_a_streaming_table_reads_the_slot_micro_batch_by_micro_batch(
    db: Db, tmp_path: Path
) -> None:
    """`lakeforge stream` runs the source as catch-up micro-batches on its trigger, and a
    silver cdc table downstream follows it."""
    from lakeforge.streaming.loop import StreamLoop

    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("INSERT INTO docs VALUES (1, 'first', 'b')")
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\n")
    raw = root / "models" / "raw.sql"
    raw.write_text(raw.read_text().replace("/* lakeforge\n", "/* lakeforge\nmode: streaming\n"))

    class Clock:
        now = 0.0

        def __call__(self) -> float:
            return self.now

    clock = Clock()
    loop = StreamLoop(Runner(load_project(root)), clock=clock)
    assert list(loop.flows) == ["raw"]
    assert loop.tick() is not None  # the snapshot
    assert [(r["op"], r["doc_id"]) for r in feed(root)] == [("r", 1)]
    db.execute("INSERT INTO docs VALUES (2, 'second', 'b')")
    db.execute("UPDATE docs SET title = 'renamed' WHERE doc_id = 1")
    clock.now += 10  # the default trigger: 10 s
    result = loop.tick()
    assert result is not None and result.ok
    ops = [(r["op"], r["doc_id"]) for r in sorted(feed(root), key=lambda r: r["seq"])]
    assert ops == [("r", 1), ("c", 2), ("u", 1)]
    before = len(feed(root))
    clock.now += 10
    # The server's WAL moves on with other databases' work (other tests share the
    # cluster): the slot may be stale and a micro-batch may run, but it reads no change.
    third = loop.tick()
    assert third is None or third.ok
    assert len(feed(root)) == before
    flow = loop.flows["raw"]
    assert flow.rows_in == 3


# -- setup errors ------------------------------------------------------------------------------


def failure(root: Path) -> Any:
    result = Runner(load_project(root)).run()
    assert not result.ok
    return result.tasks[0].error


def test_wal_level_replica_says_what_to_set(postgres_url: str, tmp_path: Path) -> None:
    """The shared server runs wal_level=replica: the real error message."""
    import sqlalchemy as sa

    engine = sa.create_engine(postgres_url)
    with engine.begin() as conn:
        conn.execute(sa.text("CREATE TABLE docs (doc_id int PRIMARY KEY)"))
    engine.dispose()
    url = postgres_url.replace("+psycopg2", "")
    write_project(tmp_path, url, "tables: [docs]\n")
    error = failure(tmp_path)
    assert "wal_level is 'replica'" in str(error) and "wal_level = logical" in str(error)
    assert "restart PostgreSQL" in (error.hint or "")


def test_setup_errors_name_what_is_missing(db: Db, tmp_path: Path, postgres_logical: Any) -> None:
    db.execute("CREATE TABLE a (id int PRIMARY KEY)")
    db.execute("CREATE TABLE b (id int PRIMARY KEY)")
    db.execute("CREATE TABLE nokey (id int)")
    db.execute("CREATE TABLE clash (id int PRIMARY KEY, op text)")
    db.execute("CREATE PUBLICATION mine FOR TABLE a")
    cases: list[tuple[str, str, str]] = [
        ("tables: [a, b]\npublication: mine\n", "publication mine does not include public.b",
         "ALTER PUBLICATION mine ADD TABLE public.b"),
        ("tables: [nokey]\n", "public.nokey has no primary key", "REPLICA IDENTITY USING INDEX"),
        ("tables: [clash]\n", "column(s) op", "rename"),
        ("tables: [missing]\n", "table public.missing does not exist", "schema.table"),
    ]  # fmt: skip
    for i, (source, message, hint) in enumerate(cases):
        root = tmp_path / f"p{i}"
        write_project(root, db.url, source)
        error = failure(root)
        assert message in str(error), str(error)
        assert hint in (error.hint or ""), error.hint
    # A role without the REPLICATION attribute.
    db.execute("CREATE ROLE lf_plain LOGIN")
    root = tmp_path / "role"
    url = db.url.replace("postgres@", "lf_plain@")
    write_project(root, url, "tables: [a]\n")
    error = failure(root)
    assert "may not use replication" in str(error)
    assert 'ALTER ROLE "lf_plain" WITH REPLICATION' in (error.hint or "")
    db.execute("DROP ROLE lf_plain")


# -- heartbeat and lag -------------------------------------------------------------------------


def cdc_source(root: Path) -> Any:
    from lakeforge.sources import source_of

    project = load_project(root)
    return source_of(project.graph["raw"], project.root)


def test_wal_of_other_tables_is_confirmed_without_a_commit(db: Db, tmp_path: Path) -> None:
    """An idle slot does not hold WAL: a run that finds only WAL of tables not captured
    commits nothing but moves the slot past it."""
    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("CREATE TABLE other (i int)")
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\n")
    run(root)
    version = DeltaStore(str(root / "lakehouse")).version("raw")
    db.execute("INSERT INTO other SELECT generate_series(1, 5000)")
    ((wal,),) = db.execute("SELECT pg_current_wal_flush_lsn()")
    run(root)
    assert DeltaStore(str(root / "lakehouse")).version("raw") == version
    ((confirmed, wanted),) = db.execute(
        "SELECT confirmed_flush_lsn, %s::pg_lsn FROM pg_replication_slots "
        "WHERE slot_name = 'lakeforge_raw'",
        (wal,),
    )
    ((behind,),) = db.execute("SELECT %s::pg_lsn - %s::pg_lsn", (wanted, confirmed))
    assert behind <= 0, f"the slot still holds {behind} bytes of WAL it had nothing to read in"


def test_lag_guard_warns_and_stops(db: Db, tmp_path: Path) -> None:
    from lakeforge.errors import SourceError

    db.execute(
        "CREATE TABLE docs (doc_id int PRIMARY KEY, title text NOT NULL, body text NOT NULL)"
    )
    db.execute("CREATE TABLE other (i int) WITH (autovacuum_enabled = false)")
    root = tmp_path / "p"
    write_project(root, db.url, "tables: [docs]\nmax_lag: {warn: 1kB, stop: 64kB}\n")
    run(root)
    db.execute("INSERT INTO other SELECT generate_series(1, 100)")  # a few kB of WAL
    source = cdc_source(root)
    with source.server() as server:
        source.check_lag(server, "start")
        assert source.metrics()["lag_guard"] == "warn"
        assert 1024 < source.metrics()["lag_bytes_start"] <= 64 * 1024
        db.execute("INSERT INTO other SELECT generate_series(1, 20000)")  # ~1 MB
        with pytest.raises(SourceError, match=r"more than max_lag\.stop \(64\.0 kB\)"):
            source.check_lag(server, "end")
        source.check_lag(server, "start")  # a run starting that far behind reads on
        assert source.metrics()["lag_guard"] == "stop"
    run(root)  # catching up clears it
    with source.server() as server:
        source.check_lag(server, "end")
        assert source.metrics()["lag_guard"] == "ok"
