"""The SQL database source on SQLite: incremental loads with ties at the watermark, chunked
commits, full loads, lookback with merge, and its errors."""

from __future__ import annotations

import sqlite3
import textwrap
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeforge.errors import ConfigError, SourceError
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

MODEL = """
/* lakeforge
{write}source: {{kind: sql, url: "sqlite:///{db}", table: orders{options}}}
*/
SELECT * FROM source
"""


def setup(root: Path, options: str, write: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: db\n")
    db = root / "src.db"
    con = sqlite3.connect(db)
    con.execute(
        "CREATE TABLE IF NOT EXISTS orders (id INTEGER PRIMARY KEY, amount REAL, seq INTEGER)"
    )
    con.commit()
    con.close()
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "raw_orders.sql").write_text(
        textwrap.dedent(MODEL.format(db=db, options=options, write=write)).lstrip()
    )
    return db


def insert(
    db: Path, rows: list[tuple[int, float, int]], sql: str = "INSERT INTO orders VALUES (?, ?, ?)"
) -> None:
    con = sqlite3.connect(db)
    con.executemany(sql, rows)
    con.commit()
    con.close()


def loaded(root: Path) -> list[tuple[Any, ...]]:
    table = DeltaStore(str(root / "lakehouse")).read("raw_orders").to_table()
    return sorted(zip(*(table.column(c).to_pylist() for c in ("id", "amount", "seq")), strict=True))


def run(root: Path, **kw: Any) -> Any:
    result = Runner(load_project(root)).run(**kw)
    assert result.ok, result.to_dict()
    return result


@settings(
    max_examples=15, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    steps=st.lists(st.lists(st.integers(0, 2), min_size=0, max_size=6), min_size=1, max_size=5),
    chunk=st.integers(1, 4),
)
def test_incremental_loads_read_every_row_once(
    tmp_path_factory: Any, steps: list[list[int]], chunk: int
) -> None:
    """Rows arrive between runs; cursor values never go down but repeat (ties)."""
    root = tmp_path_factory.mktemp("inc")
    db = setup(root, f", cursor: seq, primary_key: [id], chunk_rows: {chunk}")
    written: list[tuple[int, float, int]] = []
    seq = 0
    for step in steps:
        new = []
        for bump in step:
            seq += bump  # 0: a tie with the previous row, possibly with the watermark
            new.append((len(written) + len(new) + 1, float(len(written) + len(new)), seq))
        insert(db, new)
        written += new
        run(root)
        store = DeltaStore(str(root / "lakehouse"))
        assert (loaded(root) if store.exists("raw_orders") else []) == sorted(written)
    if written:
        version = store.version("raw_orders")
        assert Runner(load_project(root)).run().tasks[0].status == "up_to_date"
        assert store.version("raw_orders") == version


def test_chunks_are_commits_and_the_position_survives(tmp_path: Path) -> None:
    db = setup(tmp_path, ", cursor: seq, primary_key: [id], chunk_rows: 2")
    insert(db, [(i, float(i), i // 2) for i in range(1, 8)])
    result = run(tmp_path)
    assert result.tasks[0].metrics["source"]["batches"] == 4
    info = next(DeltaStore(str(tmp_path / "lakehouse")).commit_infos("raw_orders"))
    assert info.source_state is not None and info.source_state["watermark"] == 3
    assert info.source_state["at_watermark"] == ["6", "7"]  # both rows with seq 3
    assert len(loaded(tmp_path)) == 7


def test_full_load_replaces_the_table_each_run(tmp_path: Path) -> None:
    db = setup(tmp_path, ", chunk_rows: 2")
    insert(db, [(1, 1.0, 1), (2, 2.0, 2), (3, 3.0, 3)])
    run(tmp_path)
    con = sqlite3.connect(db)
    con.execute("DELETE FROM orders WHERE id = 2")
    con.commit()
    con.close()
    run(tmp_path)
    assert [r[0] for r in loaded(tmp_path)] == [1, 3]


def test_lookback_rereads_late_rows_and_merge_keeps_one(tmp_path: Path) -> None:
    db = setup(
        tmp_path,
        ", cursor: seq, lookback: 5",
        write="write: {strategy: merge, keys: [id], sequence_by: seq}\n",
    )
    insert(db, [(1, 1.0, 10), (2, 2.0, 20)])
    run(tmp_path)
    insert(db, [(3, 3.0, 17)])  # arrived late: below the watermark, inside the lookback
    # A late row alone does not make the table stale; the next run (here: a new row) re-reads
    # the lookback window and picks it up.
    assert [a.stale for a in Runner(load_project(tmp_path)).plan()] == [False]
    insert(db, [(4, 4.0, 25)])
    run(tmp_path)
    assert [r[0] for r in loaded(tmp_path)] == [1, 2, 3, 4]


def test_errors_say_what_to_do(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lakeforge.graph.spec import DatasetConfig

    with pytest.raises(ValueError, match="exactly one of url and url_env"):
        DatasetConfig.model_validate({"source": {"kind": "sql", "table": "t"}})
    with pytest.raises(ValueError, match="lookback needs a cursor"):
        DatasetConfig.model_validate(
            {"source": {"kind": "sql", "url": "sqlite://", "table": "t", "lookback": 3}}
        )
    setup(tmp_path, ", cursor: nope")
    (tmp_path / "models" / "raw_orders.sql").write_text(
        (tmp_path / "models" / "raw_orders.sql")
        .read_text()
        .replace('url: "sqlite:///', 'url_env: LF_DB, x: "')
    )
    monkeypatch.delenv("LF_DB", raising=False)
    with pytest.raises(ConfigError, match=r"unknown key 'source\.sql\.x'"):
        load_project(tmp_path)  # a stray key is refused at load, with file and line


def test_a_missing_cursor_column_fails_clearly(tmp_path: Path) -> None:
    db = setup(tmp_path, ", cursor: nope")
    insert(db, [(1, 1.0, 1)])
    result = Runner(load_project(tmp_path)).run()
    assert not result.ok
    error = result.tasks[0].error
    assert error is not None and ("nope" in str(error))


def test_url_env_is_read_at_run_time(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from lakeforge.sources.sql_db import SqlConfig

    config = SqlConfig(url_env="LF_TEST_DB", table="t")
    monkeypatch.delenv("LF_TEST_DB", raising=False)
    with pytest.raises(SourceError, match="LF_TEST_DB"):
        config.resolved_url("raw")
    monkeypatch.setenv("LF_TEST_DB", "sqlite://")
    assert config.resolved_url("raw") == "sqlite://"


def test_a_full_load_is_one_commit_and_an_empty_source_empties_the_table(tmp_path: Path) -> None:
    db = setup(tmp_path, ", chunk_rows: 1")
    insert(db, [(1, 1.0, 1), (2, 2.0, 2), (3, 3.0, 3)])
    store = DeltaStore(str(tmp_path / "lakehouse"))
    run(tmp_path)
    assert store.version("raw_orders") == 0  # one commit, however many chunks
    con = sqlite3.connect(db)
    con.execute("DELETE FROM orders")
    con.commit()
    con.close()
    run(tmp_path)
    assert loaded(tmp_path) == []


def test_lookback_alone_does_not_make_the_table_stale(tmp_path: Path) -> None:
    db = setup(
        tmp_path,
        ", cursor: seq, lookback: 5",
        write="write: {strategy: merge, keys: [id], sequence_by: seq}\n",
    )
    insert(db, [(1, 1.0, 10)])
    run(tmp_path)
    assert [a.stale for a in Runner(load_project(tmp_path)).plan()] == [False]


def test_an_unreachable_database_does_not_break_planning(tmp_path: Path) -> None:
    import json

    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    db = setup(tmp_path, ", cursor: seq")
    insert(db, [(1, 1.0, 1)])
    run(tmp_path)
    model = tmp_path / "models" / "raw_orders.sql"
    model.write_text(
        model.read_text().replace(
            f'url: "sqlite:///{db}"', 'url: "postgresql+psycopg2://nobody@127.0.0.1:9/none"'
        )
    )
    listed = CliRunner().invoke(app, ["-C", str(tmp_path), "ls", "--json"])
    assert listed.exit_code == 0, listed.output
    (row,) = json.loads(listed.output)
    assert row["status"] == "stale" and row["reason"].startswith("source not reachable")
    result = Runner(load_project(tmp_path)).run()
    assert not result.ok and "database unavailable" in str(result.tasks[0].error)
