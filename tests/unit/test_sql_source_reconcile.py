"""The SQL source on SQLite: key reconciliation (rows deleted in the database) and the
dead-letter queue for rows that cannot be typed."""

from __future__ import annotations

import datetime as dt
import json
import sqlite3
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.sources import sql_reconcile
from lakeforge.storage.delta import DeltaStore

MERGE = "write: {strategy: merge, keys: [id], sequence_by: seq}\n"
HARD_DELETE = 'write: {strategy: merge, keys: [id], sequence_by: seq, delete_when: "_lf_deleted"}\n'


def project(
    root: Path,
    source: str,
    *,
    write: str = MERGE,
    ddl: str = "CREATE TABLE orders (id INTEGER PRIMARY KEY, amount REAL, seq INTEGER)",
    select: str = "SELECT * FROM source",
) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: db\n")
    db = root / "src.db"
    con = sqlite3.connect(db)
    con.execute(ddl)
    con.commit()
    con.close()
    (root / "models").mkdir(exist_ok=True)
    header = f'{write}source: {{kind: sql, url: "sqlite:///{db}", {source}}}\n'
    (root / "models" / "raw.sql").write_text(f"/* lakeforge\n{header}*/\n{select}\n")
    return db


def execute(db: Path, sql: str, rows: list[tuple[Any, ...]] | None = None) -> None:
    con = sqlite3.connect(db)
    if rows is None:
        con.execute(sql)
    else:
        con.executemany(sql, rows)
    con.commit()
    con.close()


def run(root: Path) -> Any:
    result = Runner(load_project(root)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    return result.tasks[0]


def store(root: Path) -> DeltaStore:
    return DeltaStore(str(root / "lakehouse"))


def rows(root: Path, name: str = "raw") -> dict[Any, dict[str, Any]]:
    table = store(root).read(name).to_table().to_pylist()
    return {r["id"]: r for r in table}


def deleted(root: Path) -> dict[Any, bool]:
    return {k: r["_lf_deleted"] for k, r in rows(root).items()}


ORDERS = "table: orders, cursor: seq, primary_key: [id]"


def test_deleted_rows_are_flagged_and_sources_shows_the_reconcile(tmp_path: Path) -> None:
    db = project(tmp_path, f"{ORDERS}, reconcile: {{every: 0}}")
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, i * 1.5, i) for i in range(1, 5)])
    first = run(tmp_path)
    assert deleted(tmp_path) == {1: False, 2: False, 3: False, 4: False}  # from the first commit
    assert first.metrics["source"]["batches"] == 1
    execute(db, "DELETE FROM orders WHERE id IN (2, 4)")
    execute(db, "INSERT INTO orders VALUES (5, 7.5, 5)")
    task = run(tmp_path)
    assert task.metrics["source"]["batches"] == 2  # the tombstones, then the new row
    assert deleted(tmp_path) == {1: False, 2: True, 3: False, 4: True, 5: False}
    assert rows(tmp_path)[2]["amount"] == 3.0  # the last-known row, flagged
    listed = CliRunner().invoke(app, ["-C", str(tmp_path), "sources", "--json"])
    assert listed.exit_code == 0, listed.output
    (status,) = json.loads(listed.output)
    assert status["deleted_keys"] == 2 and status["reconcile_every"] == 0
    assert dt.datetime.fromisoformat(status["reconciled_at"]).tzinfo is not None
    shown = CliRunner().invoke(app, ["-C", str(tmp_path), "sources"])
    assert "deleted" in shown.output and "reconciled" in shown.output


def test_merge_with_delete_when_deletes_the_rows(tmp_path: Path) -> None:
    db = project(tmp_path, f"{ORDERS}, reconcile: {{every: 0}}", write=HARD_DELETE)
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    run(tmp_path)
    execute(db, "DELETE FROM orders WHERE id = 2")
    task = run(tmp_path)
    assert sorted(rows(tmp_path)) == [1, 3] and task.metrics["deleted"] == 1
    version = store(tmp_path).version("raw")
    run(tmp_path)  # the key is gone from both: nothing to do
    assert store(tmp_path).version("raw") == version


def test_a_rerun_with_nothing_changed_makes_no_commit(tmp_path: Path) -> None:
    db = project(tmp_path, f"{ORDERS}, reconcile: {{every: 0}}")
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    run(tmp_path)
    version = store(tmp_path).version("raw")
    run(tmp_path)  # a reconcile that finds nothing
    assert store(tmp_path).version("raw") == version
    execute(db, "DELETE FROM orders WHERE id = 1")
    run(tmp_path)
    version = store(tmp_path).version("raw")
    again = run(tmp_path)  # the key is flagged already: not flagged again
    assert store(tmp_path).version("raw") == version
    assert again.reason.endswith("(nothing new to read)")


def test_a_deleted_key_inserted_again_comes_back_unflagged(tmp_path: Path) -> None:
    db = project(tmp_path, f"{ORDERS}, reconcile: {{every: 0}}")
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(1, 1.0, 1), (2, 2.0, 2)])
    run(tmp_path)
    execute(db, "DELETE FROM orders WHERE id = 2")
    run(tmp_path)
    assert deleted(tmp_path) == {1: False, 2: True}
    execute(db, "INSERT INTO orders VALUES (2, 20.0, 3)")
    run(tmp_path)
    assert deleted(tmp_path) == {1: False, 2: False}
    assert rows(tmp_path)[2]["amount"] == 20.0


def test_every_is_honoured(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    now = [dt.datetime(2026, 3, 1, 8, 0, tzinfo=dt.UTC)]
    monkeypatch.setattr(sql_reconcile, "clock", lambda: now[0])
    db = project(tmp_path, f'{ORDERS}, reconcile: {{every: "1d"}}')
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    run(tmp_path)  # the first load reads every row: it counts as a reconcile
    info = next(store(tmp_path).commit_infos("raw"))
    assert info.source_state is not None
    assert info.source_state["reconciled_at"] == now[0].isoformat()

    def plan() -> list[str]:
        return [a.reason for a in Runner(load_project(tmp_path)).plan() if a.stale]

    execute(db, "DELETE FROM orders WHERE id = 2")
    now[0] += dt.timedelta(hours=23)
    assert plan() == []  # not due: the deletion is not looked for
    execute(db, "INSERT INTO orders VALUES (4, 4.0, 4)")
    run(tmp_path)
    assert deleted(tmp_path) == {1: False, 2: False, 3: False, 4: False}
    now[0] += dt.timedelta(hours=2)
    assert plan() == ["reconcile due (last 2026-03-01T08:00:00+00:00)"]
    run(tmp_path)
    assert deleted(tmp_path) == {1: False, 2: True, 3: False, 4: False}
    info = next(store(tmp_path).commit_infos("raw"))
    assert info.source_state is not None
    assert info.source_state["reconciled_at"] == now[0].isoformat()
    assert info.source_state["deleted_keys"] == 1
    # Recorded in the tombstones' commit: the next run is up to date.
    version = store(tmp_path).version("raw")
    assert plan() == []
    assert run(tmp_path).status == "up_to_date" and store(tmp_path).version("raw") == version
    # Due again a day later; a reconcile that finds nothing commits nothing, so it stays due
    # until a run has something to commit.
    now[0] += dt.timedelta(days=1)
    run(tmp_path)
    assert store(tmp_path).version("raw") == version
    assert plan() == [f"reconcile due (last {(now[0] - dt.timedelta(days=1)).isoformat()})"]
    execute(db, "INSERT INTO orders VALUES (5, 5.0, 5)")
    run(tmp_path)
    assert plan() == []


def test_compound_keys_and_null_keys_with_an_append_write(tmp_path: Path) -> None:
    db = project(
        tmp_path,
        "table: lines, cursor: seq, primary_key: [order_id, line], reconcile: {every: 0}",
        write="",
        ddl="CREATE TABLE lines (order_id INTEGER, line TEXT, qty INTEGER, seq INTEGER)",
    )
    execute(
        db,
        "INSERT INTO lines VALUES (?, ?, ?, ?)",
        [(1, "a", 1, 1), (1, "b", 2, 2), (2, "a", 3, 3), (3, None, 4, 4)],
    )
    run(tmp_path)
    execute(db, "DELETE FROM lines WHERE order_id = 1 AND line = 'b'")
    run(tmp_path)

    def table() -> list[tuple[Any, ...]]:
        data = store(tmp_path).read("raw").to_table().to_pylist()
        return sorted((r["order_id"], r["line"] or "", r["qty"], r["_lf_deleted"]) for r in data)

    # Append: the tombstone is appended; (3, NULL) has a NULL key and is never matched.
    assert table() == [
        (1, "a", 1, False),
        (1, "b", 2, False),
        (1, "b", 2, True),
        (2, "a", 3, False),
        (3, "", 4, False),
    ]
    version = store(tmp_path).version("raw")
    run(tmp_path)  # the key's newest row is its tombstone: nothing appended again
    assert store(tmp_path).version("raw") == version


def test_source_keys_are_cast_to_the_table_key_type(tmp_path: Path) -> None:
    # The transform turns the integer key into text; the comparison casts the source's keys.
    db = project(
        tmp_path,
        f"{ORDERS}, reconcile: {{every: 0}}",
        select="SELECT CAST(id AS VARCHAR) AS id, amount, seq, _lf_deleted FROM source",
    )
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    run(tmp_path)
    execute(db, "DELETE FROM orders WHERE id = 3")
    run(tmp_path)
    assert deleted(tmp_path) == {"1": False, "2": False, "3": True}


def test_reconcile_configuration_errors() -> None:
    from lakeforge.graph.spec import DatasetConfig

    base = {"kind": "sql", "url": "sqlite://", "table": "t"}
    with pytest.raises(ValueError, match="reconcile needs a cursor and a primary_key"):
        DatasetConfig.model_validate({"source": {**base, "reconcile": {"every": "1d"}}})
    with pytest.raises(ValueError, match="reconcile needs a cursor and a primary_key"):
        DatasetConfig.model_validate(
            {"source": {**base, "cursor": "seq", "reconcile": {"every": "1d"}}}
        )
    with pytest.raises(ValueError, match="is not understood"):
        DatasetConfig.model_validate(
            {"source": {**base, "cursor": "s", "primary_key": ["id"], "reconcile": {"every": "x"}}}
        )
    with pytest.raises(ValueError, match="not scd2"):
        DatasetConfig.model_validate(
            {
                "write": {"strategy": "scd2", "keys": ["id"]},
                "source": {**base, "cursor": "s", "primary_key": ["id"], "reconcile": {}},
            }
        )


# -- rows that cannot be typed ---------------------------------------------------------------


def test_rows_that_cannot_be_typed_go_to_the_dead_letter_queue(tmp_path: Path) -> None:
    db = project(
        tmp_path,
        "table: items, cursor: seq, primary_key: [id], chunk_rows: 2",
        write="",
        ddl="CREATE TABLE items (id INTEGER PRIMARY KEY, name TEXT, price DECIMAL(5, 2), "
        "weight REAL, seq INTEGER)",
    )
    execute(
        db,
        "INSERT INTO items VALUES (?, ?, ?, ?, ?)",
        [
            (1, "ok", 1.5, 1.0, 1),
            (2, "ok", 2.25, 2.0, 2),
            (3, "too big", 12345.678, 3.0, 3),  # over DECIMAL(5, 2)
            (4, b"\xff\xfe", 4.0, 4.0, 3),  # bytes that are not UTF-8, in a text column
            (5, "ok", 5.0, "heavy", 5),  # text in a REAL column
            (6, "ok", 6.0, 6.0, 6),
        ],
    )
    task = run(tmp_path)
    assert sorted(rows(tmp_path)) == [1, 2, 6]
    assert str(rows(tmp_path)[2]["price"]) == "2.25"
    dead = sorted(store(tmp_path).read("raw__dlq").to_table().to_pylist(), key=lambda d: d["line"])
    assert [(d["source_file"], d["line"]) for d in dead] == [
        ("sql:items", 3),
        ("sql:items", 4),
        ("sql:items", 5),
    ]
    assert "'price'" in dead[0]["error"] and "decimal128(5, 2)" in dead[0]["error"]
    assert "12345.678" in dead[0]["error"]
    assert "'name'" in dead[1]["error"] and "string" in dead[1]["error"]
    assert "'weight'" in dead[2]["error"] and "'heavy'" in dead[2]["error"]
    assert json.loads(dead[1]["raw"]) == {
        "id": 4,
        "name": "b'\\xff\\xfe'",  # not JSON: its repr, so nothing is lost
        "price": 4.0,
        "weight": 4.0,
        "seq": 3,
    }
    # Nothing disappears: every row read is published or a dead letter.
    metrics = task.metrics
    assert task.rows_in == 6
    assert task.rows_in == (
        metrics["rows_published"]
        + metrics["rows_quarantined"]
        + metrics["rows_dropped"]
        + metrics["rows_dlq"]
    )
    assert metrics["rows_dlq"] == 3 and metrics["source"]["batches"] == 3
    # The rejected rows moved the watermark (the chunk of rows 3 and 4 published nothing).
    versions = (store(tmp_path).version("raw"), store(tmp_path).version("raw__dlq"))
    assert run(tmp_path).status == "up_to_date"
    assert (store(tmp_path).version("raw"), store(tmp_path).version("raw__dlq")) == versions
    execute(db, "INSERT INTO items VALUES (7, 'ok', 7.0, 7.0, 7)")
    run(tmp_path)
    assert sorted(rows(tmp_path)) == [1, 2, 6, 7]
    assert store(tmp_path).read("raw__dlq").count_rows() == 3
    # Replay refuses SQL dead letters and says what to do instead.
    replay = CliRunner().invoke(app, ["-C", str(tmp_path), "dlq", "replay", "raw"])
    assert replay.exit_code != 0
    assert "only the dead letters of file sources are replayed" in replay.output
    assert "update their cursor column" in replay.output


def test_a_query_column_of_mixed_types_keeps_its_first_type(tmp_path: Path) -> None:
    db = project(
        tmp_path,
        "query: \"SELECT id, CASE WHEN id = 2 THEN 'two' ELSE id * 10 END AS v, seq "
        'FROM orders", cursor: seq, primary_key: [id]',
        write="",
    )
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    task = run(tmp_path)
    assert {k: r["v"] for k, r in rows(tmp_path).items()} == {1: 10, 3: 30}
    (dead,) = store(tmp_path).read("raw__dlq").to_table().to_pylist()
    assert dead["source_file"] == "sql:query" and "'v'" in dead["error"]
    assert json.loads(dead["raw"]) == {"id": 2, "v": "two", "seq": 2}
    assert task.metrics["rows_dlq"] == 1


def test_reconcile_configured_on_an_existing_table(tmp_path: Path) -> None:
    db = project(tmp_path, ORDERS)
    execute(db, "INSERT INTO orders VALUES (?, ?, ?)", [(i, float(i), i) for i in range(1, 4)])
    run(tmp_path)
    model = tmp_path / "models" / "raw.sql"
    model.write_text(model.read_text().replace(ORDERS, f"{ORDERS}, reconcile: {{every: 0}}"))
    execute(db, "DELETE FROM orders WHERE id = 3")
    # Nothing new to read, but the first reconcile is due at once.
    assert [a.reason for a in Runner(load_project(tmp_path)).plan()] == [
        "reconcile due (never reconciled)"
    ]
    run(tmp_path)
    # Rows loaded before have no flag (NULL) until they change; the gone one is flagged.
    assert deleted(tmp_path) == {1: None, 2: None, 3: True}
    version = store(tmp_path).version("raw")
    run(tmp_path)
    assert store(tmp_path).version("raw") == version
