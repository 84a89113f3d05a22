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
