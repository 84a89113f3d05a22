"""The example shop project of ``lakeforge init``: template, generated data, and its models."""

from __future__ import annotations

from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import duckdb
import pytest

from lakeforge.engines.duckdb import register_table, to_arrow
from lakeforge.errors import ConfigError
from lakeforge.project.config import load_config
from lakeforge.project.loader import load_project
from lakeforge.project.scaffold import ScaffoldResult, generate_shop_data, scaffold_project
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import write_dataset

SIZE = 3000

EXPECTED_EDGES = {
    ("raw_customers", "customers"),
    ("raw_products", "products"),
    ("raw_orders", "orders"),
    ("raw_order_lines", "order_lines"),
    ("orders", "gold_daily_revenue"),
    ("order_lines", "gold_daily_revenue"),
    ("products", "gold_daily_revenue"),
    ("customers", "gold_customer_lifetime_value"),
    ("orders", "gold_customer_lifetime_value"),
    ("order_lines", "gold_customer_lifetime_value"),
}


@pytest.fixture(scope="module")
def shop(tmp_path_factory: pytest.TempPathFactory) -> ScaffoldResult:
    return scaffold_project(tmp_path_factory.mktemp("shop") / "shop", size=SIZE, seed=7)


@pytest.fixture()
def con(shop: ScaffoldResult) -> Iterator[duckdb.DuckDBPyConnection]:
    connection = duckdb.connect(config={"file_search_path": str(shop.root)})
    yield connection
    connection.close()


def _landing_bytes(root: Path) -> dict[str, bytes]:
    landing = root / "landing"
    return {str(p.relative_to(landing)): p.read_bytes() for p in landing.rglob("*") if p.is_file()}


def _one(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.sql(sql).fetchall()[0][0])


def test_scaffold_copies_the_template_and_names_the_project(shop: ScaffoldResult) -> None:
    rel = {str(p.relative_to(shop.root)) for p in shop.files}
    assert {
        "lakeforge.yml",
        "README.md",
        ".gitignore",
        "pipelines/order_lines.py",
        "models/bronze/raw_orders.sql",
        "models/silver/customers.sql",
        "models/gold/gold_daily_revenue.sql",
        "landing/products/products.csv",
        "landing/customers/customers_2024-01-01.csv",
    } <= rel
    assert all(p.is_file() and p.is_absolute() for p in shop.files)
    assert not any("__pycache__" in r for r in rel)
    config = load_config(shop.root)
    assert config.name == "shop"
    assert config.storage == "./lakehouse"
    assert config.defaults.owner == "shop-data"


def test_explicit_name_stays_a_string(tmp_path: Path) -> None:
    scaffold_project(tmp_path / "p", size=100, name="true")
    assert load_config(tmp_path / "p").name == "true"


def test_rows_follow_the_size(shop: ScaffoldResult, con: duckdb.DuckDBPyConnection) -> None:
    lines = "read_csv('landing/order_lines/*.csv')"
    orders = "read_json('landing/orders/*.ndjson', format = 'newline_delimited')"
    assert _one(con, f"SELECT count(*) FROM (SELECT DISTINCT * FROM {lines})") == SIZE
    assert _one(con, f"SELECT count(DISTINCT order_id) FROM {orders}") == SIZE // 3
    customers = "read_csv('landing/customers/customers_2024-01-01.csv')"
    assert _one(con, f"SELECT count(*) FROM {customers}") == max(50, SIZE // 3 // 10)
    assert _one(con, "SELECT count(*) FROM read_csv('landing/products/products.csv')") == 200
    assert shop.rows["order_lines"] > SIZE  # the duplicates are landed too
    assert set(shop.rows) == {"customers", "products", "orders", "order_lines"}


def test_same_seed_same_bytes_other_seed_other_bytes(tmp_path: Path) -> None:
    first = scaffold_project(tmp_path / "a", size=SIZE, seed=11)
    second = scaffold_project(tmp_path / "b", size=SIZE, seed=11)
    assert _landing_bytes(first.root) == _landing_bytes(second.root)
    assert first.rows == second.rows
    generate_shop_data(tmp_path / "c", order_lines=SIZE, seed=12)
    other = {
        str(p.relative_to(tmp_path / "c")): p.read_bytes() for p in (tmp_path / "c").rglob("*.*")
    }
    assert other != _landing_bytes(first.root)


def test_orders_have_duplicates_late_updates_and_null_coupons(
    shop: ScaffoldResult, con: duckdb.DuckDBPyConnection
) -> None:
    con.sql(
        "CREATE TABLE o AS SELECT * FROM "
        "read_json('landing/orders/*.ndjson', format = 'newline_delimited')"
    )
    total = _one(con, "SELECT count(*) FROM o")
    distinct = _one(con, "SELECT count(*) FROM (SELECT DISTINCT * FROM o)")
    assert 0 < total - distinct < total * 0.03
    # Late updates: the same order again, later, with another status.
    late = _one(
        con,
        "SELECT count(*) FROM (SELECT order_id FROM o GROUP BY order_id "
        "HAVING count(DISTINCT updated_at) > 1 AND count(DISTINCT status) > 1)",
    )
    orders = _one(con, "SELECT count(DISTINCT order_id) FROM o")
    assert orders * 0.01 < late < orders * 0.06
    assert _one(con, "SELECT count(*) FROM o WHERE coupon IS NULL") > 0
    assert _one(con, "SELECT count(*) FROM o WHERE coupon IS NOT NULL") > 0
    text = "".join(p.read_text() for p in (shop.root / "landing/orders").glob("*.ndjson"))
    assert '"coupon":null' in text
    assert any('"coupon"' not in line for line in text.splitlines())
    assert len(list((shop.root / "landing/orders").glob("orders_*.ndjson"))) >= 12


def test_customers_move_and_some_emails_are_missing(con: duckdb.DuckDBPyConnection) -> None:
    con.sql(
        "CREATE TABLE c0 AS SELECT * FROM "
        "read_csv('landing/customers/customers_2024-01-01.csv', all_varchar = true)"
    )
    con.sql(
        "CREATE TABLE c1 AS SELECT * FROM "
        "read_csv('landing/customers/customers_2024-10-01.csv', all_varchar = true)"
    )
    customers = _one(con, "SELECT count(*) FROM c0")
    moved = _one(con, "SELECT count(*) FROM c1")
    assert 1 <= moved <= max(1, customers * 0.05)
    changed = _one(
        con,
        "SELECT count(*) FROM c1 JOIN c0 USING (customer_id) "
        "WHERE c1.street <> c0.street AND c1.updated_at::TIMESTAMP > c0.updated_at::TIMESTAMP",
    )
    assert changed == moved
    assert _one(con, "SELECT count(*) FROM c0 WHERE email IS NULL") > 0
    assert _one(con, "SELECT count(*) FROM c0 WHERE email <> lower(trim(email))") > 0


def test_order_lines_have_duplicates(con: duckdb.DuckDBPyConnection) -> None:
    con.sql("CREATE TABLE l AS SELECT * FROM read_csv('landing/order_lines/*.csv')")
    total = _one(con, "SELECT count(*) FROM l")
    distinct = _one(con, "SELECT count(*) FROM (SELECT DISTINCT * FROM l)")
    assert 0 < total - distinct <= total * 0.01
    assert _one(con, "SELECT count(*) FROM l WHERE line_no < 1 OR quantity < 0") == 0
    # A few lines come with quantity 0: the silver table quarantines them.
    assert 0 < _one(con, "SELECT count(*) FROM l WHERE quantity = 0") <= total * 0.003


def test_project_loads_with_the_expected_graph(shop: ScaffoldResult) -> None:
    graph = load_project(shop.root).graph
    edges = {(up, ds.name) for ds in graph.datasets.values() for up in ds.inputs}
    assert edges == EXPECTED_EDGES
    layers = {name: ds.layer for name, ds in graph.datasets.items()}
    assert layers == {
        "raw_customers": "bronze",
        "raw_products": "bronze",
        "raw_orders": "bronze",
        "raw_order_lines": "bronze",
        "customers": "silver",
        "products": "silver",
        "orders": "silver",
        "order_lines": "silver",
        "gold_daily_revenue": "gold",
        "gold_customer_lifetime_value": "gold",
    }
    strategies = {name: ds.config.write.strategy for name, ds in graph.datasets.items()}
    assert strategies["customers"] == "scd2"
    assert strategies["orders"] == strategies["order_lines"] == "merge"
    assert strategies["raw_orders"] == strategies["gold_daily_revenue"] == "overwrite"
    assert graph["order_lines"].language == "python"
    assert graph["raw_orders"].external_paths == ["landing/orders/*.ndjson"]
    assert all(ds.config.owner == "shop-data" for ds in graph.datasets.values())


def test_models_build_and_clean_the_data(shop: ScaffoldResult, tmp_path: Path) -> None:
    """Every model runs in DuckDB and is written with its real strategy, in graph order."""
    project = load_project(shop.root)
    store = DeltaStore(str(tmp_path / "lakehouse"))
    now = datetime.now(UTC)
    for name in project.graph.order:
        ds = project.graph[name]
        con = duckdb.connect(config={"file_search_path": str(shop.root)})
        for up in ds.inputs:
            register_table(con, up, store.read(up))
        if ds.sql is not None:
            data = con.sql(ds.sql).to_arrow_table()
        else:
            assert ds.function is not None
            data = to_arrow(ds.function(**{up: con.table(up) for up in ds.inputs}), ds)
        info = CommitInfo(run_id="r1", dataset=name, fingerprint="f", batch=1)
        write_dataset(store, ds, data, info, target_version=None, now=now)
        con.close()

    con = duckdb.connect()
    for name in project.graph.order:
        register_table(con, name, store.read(name))
    # Duplicates are gone and late updates won.
    assert _one(con, "SELECT count(*) FROM orders") == SIZE // 3
    assert _one(con, "SELECT count(*) FROM order_lines") == SIZE
    newest = (
        "SELECT count(*) FROM orders o JOIN (SELECT order_id, max(updated_at) AS m "
        "FROM raw_orders GROUP BY 1) r USING (order_id) "
        "WHERE o.updated_at <> r.m AT TIME ZONE 'UTC'"
    )
    assert _one(con, newest) == 0
    # SCD2: every mover has a closed and a current version.
    moved = _one(con, "SELECT count(*) FROM customers WHERE NOT is_current")
    assert moved > 0
    assert _one(con, "SELECT count(*) FROM customers WHERE is_current") == _one(
        con, "SELECT count(DISTINCT customer_id) FROM customers"
    )
    assert _one(con, "SELECT count(*) FROM customers WHERE email <> lower(trim(email))") == 0
    assert _one(con, "SELECT count(DISTINCT category) FROM products") == 10
    # Gold agrees with silver.
    revenue = con.sql("SELECT sum(revenue_amount) FROM gold_daily_revenue").fetchall()[0][0]
    expected = con.sql(
        "SELECT sum(l.line_amount) FROM order_lines l JOIN orders o USING (order_id) "
        "WHERE o.status <> 'cancelled'"
    ).fetchall()[0][0]
    assert revenue > 0
    assert revenue == expected
    clv = con.sql(
        "SELECT count(*), sum(lifetime_revenue_amount) FROM gold_customer_lifetime_value"
    ).fetchall()[0]
    assert clv == (_one(con, "SELECT count(*) FROM customers WHERE is_current"), expected)


def test_non_empty_target_is_refused(tmp_path: Path) -> None:
    (tmp_path / "keep.txt").write_text("mine")
    with pytest.raises(ConfigError, match="not empty") as info:
        scaffold_project(tmp_path, size=100)
    assert info.value.hint
    assert [p.name for p in tmp_path.iterdir()] == ["keep.txt"]


def test_file_target_and_tiny_size_are_refused(tmp_path: Path) -> None:
    (tmp_path / "f").write_text("")
    with pytest.raises(ConfigError, match="is a file"):
        scaffold_project(tmp_path / "f", size=100)
    with pytest.raises(ConfigError, match="at least"):
        scaffold_project(tmp_path / "small", size=10)
    assert not (tmp_path / "small").exists()


def test_empty_existing_folder_is_used(tmp_path: Path) -> None:
    result = scaffold_project(tmp_path, size=100)
    assert result.root == tmp_path.resolve()
    assert (tmp_path / "lakeforge.yml").is_file()
