"""Breaking vs non-breaking changes: a model that only adds columns does not force its
consumers to rebuild unless they read the added columns (column-level dependencies)."""

from __future__ import annotations

import datetime as dt
import textwrap
from pathlib import Path

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.sql.changes import classify_change, column_use
from lakeforge.storage.delta import DeltaStore

NOW = dt.datetime(2024, 1, 6, 12, tzinfo=dt.UTC)


@pytest.mark.parametrize(
    ("old", "new", "added"),
    [
        ("SELECT a, b FROM t WHERE x > 1", "SELECT a, b, c + 1 AS c2 FROM t WHERE x > 1", ("c2",)),
        ("SELECT a FROM t", "SELECT a, count(*) OVER () AS n FROM t", ("n",)),
        ("select a from t -- old", "SELECT a,\n  b FROM t", ("b",)),
    ],
)
def test_only_added_columns_are_non_breaking(old: str, new: str, added: tuple[str, ...]) -> None:
    change = classify_change(old, new)
    assert change.non_breaking and change.added == added


@pytest.mark.parametrize(
    ("old", "new"),
    [
        ("SELECT a, b FROM t", "SELECT a, c FROM t"),  # a column removed
        ("SELECT a, b FROM t WHERE x > 1", "SELECT a, b, c FROM t WHERE x > 2"),  # filter
        ("SELECT a, b FROM t", "SELECT a, b + 1 AS b FROM t"),  # an expression changed
        ("SELECT a FROM t", "SELECT a, t.* FROM t"),  # a star: unknown columns
        ("SELECT a FROM t", "SELECT a, b FROM t JOIN u USING (k)"),  # a join
        ("SELECT a FROM t", "SELECT a FROM t"),  # same text: a configuration change
        ("SELECT a FROM t", "SELECT a, 1 + 1 FROM t"),  # unnamed: no stable column name
        (None, "SELECT a, b FROM t"),  # the old definition is unknown
    ],
)
def test_anything_else_is_breaking(old: str | None, new: str) -> None:
    assert not classify_change(old, new).non_breaking


def test_column_use() -> None:
    use = column_use("SELECT d, count(*) AS n, sum(o.amount) FROM orders o GROUP BY d")
    assert not use.everything and use.names >= {"d", "amount"}
    assert not use.reads_any(["amount2"]) and use.reads_any(["AMOUNT"])
    assert column_use("SELECT * FROM orders").everything
    assert column_use("SELECT o.* FROM orders o").everything
    assert column_use(None).everything  # a Python transform


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


ORDERS = "SELECT id, day, amount{extra} FROM read_csv('landing/orders.csv')\n"


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "lakeforge.yml", "name: changes\n")
    rows = "\n".join(f"{i},2024-01-0{1 + i % 5},{i * 10}" for i in range(20))
    write(tmp_path, "landing/orders.csv", "id,day,amount\n" + rows + "\n")
    write(tmp_path, "models/orders.sql", ORDERS.format(extra=""))
    write(
        tmp_path, "models/totals.sql", "SELECT day, sum(amount) AS total FROM orders GROUP BY day"
    )
    write(tmp_path, "models/everything.sql", "SELECT * FROM orders")
    write(
        tmp_path,
        "models/daily.sql",
        """
        /* lakeforge
        partitions: {daily: {start: 2024-01-01, column: day, lookback: 1}}
        */
        SELECT day, count(*) AS n FROM orders WHERE day >= @start AND day < @end GROUP BY day
        """,
    )
    write(
        tmp_path,
        "pipelines/p.py",
        """
        import lakeforge as lf

        @lf.table
        def in_python(orders):
            return orders.aggregate("count(*) AS n")
        """,
    )
    return tmp_path


def run(root: Path) -> dict[str, str]:
    result = Runner(load_project(root), clock=lambda: NOW).run()
    assert result.ok, [t.error for t in result.tasks if t.error]
    return {t.dataset: t.status for t in result.tasks}


def test_added_column_rebuilds_only_consumers_that_read_it(project: Path) -> None:
    assert set(run(project).values()) == {"success"}
    store = DeltaStore(str(project / "lakehouse"))
    totals_version = store.version("totals")
    write(project, "models/orders.sql", ORDERS.format(extra=", amount * 2 AS doubled"))
    plan = {a.dataset: a for a in Runner(load_project(project), clock=lambda: NOW).plan()}
    assert plan["orders"].reasons == ["code changed (non-breaking: adds doubled)"]
    assert not plan["totals"].stale and plan["totals"].notes
    assert not plan["daily"].stale
    assert plan["everything"].stale  # SELECT * reads the new column
    assert plan["in_python"].stale  # a Python transform may read anything
    statuses = run(project)
    assert statuses == {
        "orders": "success",
        "totals": "up_to_date",
        "everything": "success",
        "daily": "up_to_date",
        "in_python": "success",
    }
    assert store.version("totals") == totals_version
    # The skipped consumers stay up to date on the next run too (the commit says why).
    assert set(run(project).values()) == {"up_to_date"}
    # A consumer that starts reading the added column is rebuilt (its own code changed).
    write(
        project, "models/totals.sql", "SELECT day, sum(doubled) AS total FROM orders GROUP BY day"
    )
    assert run(project)["totals"] == "success"
    totals = store.open("totals").to_pyarrow_table().to_pylist()
    assert sum(r["total"] for r in totals) == 2 * sum(i * 10 for i in range(20))


def test_non_breaking_change_with_new_data_still_rebuilds_consumers(project: Path) -> None:
    run(project)
    write(project, "models/orders.sql", ORDERS.format(extra=", amount * 2 AS doubled"))
    with (project / "landing/orders.csv").open("a") as f:
        f.write("99,2024-01-05,5\n")
    statuses = run(project)
    assert statuses["totals"] == "success"  # the new row changes the totals


def test_breaking_change_rebuilds_consumers(project: Path) -> None:
    run(project)
    write(
        project,
        "models/orders.sql",
        "SELECT id, day, amount + 1 AS amount FROM read_csv('landing/orders.csv')\n",
    )
    plan = {a.dataset: a for a in Runner(load_project(project), clock=lambda: NOW).plan()}
    assert plan["orders"].reasons == ["code changed"]
    statuses = run(project)
    assert statuses["totals"] == "success"
    assert statuses["daily"] == "success"
