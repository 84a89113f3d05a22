"""The SQL database source against real PostgreSQL and MariaDB servers: incremental loads
by a timestamp cursor with ties, chunked commits, credentials from the environment."""

from __future__ import annotations

import datetime as dt
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest
import sqlalchemy as sa

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

T0 = dt.datetime(2026, 1, 1, 12, 0, 0)


def project(root: Path, env_var: str) -> None:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: db\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "raw_orders.sql").write_text(
        textwrap.dedent(
            f"""
            /* lakeforge
            source:
              kind: sql
              url_env: {env_var}
              table: orders
              cursor: updated_at
              primary_key: [id]
              chunk_rows: 3
            */
            SELECT * FROM source
            """
        ).lstrip()
    )


def load_and_check(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, customer VARCHAR(40), "
                "amount DECIMAL(10, 2), updated_at TIMESTAMP(6) NULL)"
            )
        )

    def add(rows: list[tuple[int, str, str, dt.datetime]]) -> None:
        with engine.begin() as conn:
            conn.execute(
                sa.text("INSERT INTO orders VALUES (:id, :c, :a, :t)"),
                [{"id": i, "c": c, "a": a, "t": t} for i, c, a, t in rows],
            )

    monkeypatch.setenv("LF_SHOP_DB", url)
    project(tmp_path, "LF_SHOP_DB")
    store = DeltaStore(str(tmp_path / "lakehouse"))
    tick = dt.timedelta(minutes=1)
    add([(i, f"c{i}", f"{i}.50", T0 + (i // 3) * tick) for i in range(1, 8)])
    first = Runner(load_project(tmp_path)).run()
    assert first.ok, [str(t.error) for t in first.tasks]
    # New rows, two of them tied with the watermark (T0 + 2 min).
    add([(8, "ä ö", "8.00", T0 + 2 * tick), (9, "x", "9.00", T0 + 2 * tick)])
    add([(10, "y", "10.00", T0 + 5 * tick)])
    result = Runner(load_project(tmp_path)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    table = store.read("raw_orders").to_table()
    assert sorted(table.column("id").to_pylist()) == list(range(1, 11))
    assert "ä ö" in table.column("customer").to_pylist()
    version = store.version("raw_orders")
    assert Runner(load_project(tmp_path)).run().tasks[0].status == "up_to_date"
    assert store.version("raw_orders") == version
    engine.dispose()


def test_postgres_incremental(
    postgres_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_and_check(postgres_database(), tmp_path, monkeypatch)


def test_mariadb_incremental(
    mariadb_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    load_and_check(mariadb_database(), tmp_path, monkeypatch)


def reconcile_and_check(url: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """Rows deleted in the database are flagged by a merge on a compound key; a rerun with
    nothing changed commits nothing."""
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(
            sa.text(
                "CREATE TABLE orders (id INTEGER NOT NULL, region VARCHAR(8) NOT NULL, "
                "amount DECIMAL(10, 2), updated_at TIMESTAMP(6) NULL, PRIMARY KEY (id, region))"
            )
        )

    def sql(statement: str, rows: list[dict[str, object]] | None = None) -> None:
        with engine.begin() as conn:
            conn.execute(sa.text(statement), *([rows] if rows else []))

    monkeypatch.setenv("LF_SHOP_DB", url)
    tmp_path.mkdir(parents=True, exist_ok=True)
    (tmp_path / "lakeforge.yml").write_text("name: db\n")
    (tmp_path / "models").mkdir(exist_ok=True)
    (tmp_path / "models" / "raw_orders.sql").write_text(
        textwrap.dedent(
            """
            /* lakeforge
            write: {strategy: merge, keys: [id, region], sequence_by: updated_at}
            source:
              kind: sql
              url_env: LF_SHOP_DB
              table: orders
              cursor: updated_at
              primary_key: [id, region]
              chunk_rows: 2
              reconcile: {every: 0}
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    tick = dt.timedelta(minutes=1)
    add = "INSERT INTO orders VALUES (:id, :r, :a, :t)"
    sql(
        add,
        [{"id": i, "r": r, "a": f"{i}.25", "t": T0 + i * tick} for i in (1, 2, 3) for r in "ab"],
    )
    store = DeltaStore(str(tmp_path / "lakehouse"))

    def run() -> None:
        result = Runner(load_project(tmp_path)).run()
        assert result.ok, [str(t.error) for t in result.tasks]

    def flags() -> dict[tuple[int, str], tuple[str, bool]]:
        table = store.read("raw_orders").to_table().to_pylist()
        return {(r["id"], r["region"]): (str(r["amount"]), r["_lf_deleted"]) for r in table}

    run()
    assert {v[1] for v in flags().values()} == {False} and len(flags()) == 6
    sql("DELETE FROM orders WHERE (id = 1 AND region = 'b') OR id = 3")
    update = "UPDATE orders SET amount = 9.99, updated_at = :t WHERE id = 2 AND region = 'a'"
    sql(update, [{"t": T0 + 10 * tick}])
    run()
    assert flags() == {
        (1, "a"): ("1.25", False),
        (1, "b"): ("1.25", True),
        (2, "a"): ("9.99", False),
        (2, "b"): ("2.25", False),
        (3, "a"): ("3.25", True),
        (3, "b"): ("3.25", True),
    }
    version = store.version("raw_orders")
    run()
    assert store.version("raw_orders") == version
    engine.dispose()


def test_postgres_reconcile(
    postgres_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcile_and_check(postgres_database(), tmp_path, monkeypatch)


def test_mariadb_reconcile(
    mariadb_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    reconcile_and_check(mariadb_database(), tmp_path, monkeypatch)


def test_mariadb_rows_that_cannot_be_typed_go_to_the_dead_letter_queue(
    mariadb_database: Callable[[], str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = mariadb_database()
    engine = sa.create_engine(url)
    with engine.begin() as conn:
        conn.execute(sa.text("SET SESSION sql_mode = ''"))  # let the zero date in
        conn.execute(
            sa.text(
                "CREATE TABLE orders (id INTEGER PRIMARY KEY, day DATE, "
                "big BIGINT UNSIGNED, updated_at TIMESTAMP(6) NULL)"
            )
        )
        conn.execute(
            sa.text("INSERT INTO orders VALUES (:id, :d, :b, :t)"),
            [
                {"id": 1, "d": "2026-01-01", "b": 1, "t": T0},
                {"id": 2, "d": "0000-00-00", "b": 2, "t": T0},  # returned as text
                {"id": 3, "d": "2026-01-03", "b": 2**64 - 1, "t": T0},  # over int64
                {"id": 4, "d": "2026-01-04", "b": 4, "t": T0 + dt.timedelta(minutes=1)},
            ],
        )
    engine.dispose()
    monkeypatch.setenv("LF_SHOP_DB", url)
    project(tmp_path, "LF_SHOP_DB")
    store = DeltaStore(str(tmp_path / "lakehouse"))
    result = Runner(load_project(tmp_path)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    assert sorted(store.read("raw_orders").to_table().column("id").to_pylist()) == [1, 4]
    dead = sorted(store.read("raw_orders__dlq").to_table().to_pylist(), key=lambda d: d["line"])
    assert [d["source_file"] for d in dead] == ["sql:orders", "sql:orders"]
    assert "'day'" in dead[0]["error"] and "'0000-00-00'" in dead[0]["error"]
    assert "'big'" in dead[1]["error"] and str(2**64 - 1) in dead[1]["raw_text"]
    assert result.tasks[0].metrics["rows_dlq"] == 2
    versions = (store.version("raw_orders"), store.version("raw_orders__dlq"))
    assert Runner(load_project(tmp_path)).run().tasks[0].status == "up_to_date"
    assert (store.version("raw_orders"), store.version("raw_orders__dlq")) == versions
