"""Write–audit–publish through real runs: blocked publishes, quarantine tables, --no-gate,
recorded results, anomaly history, SQL-declared checks and the `checks` command."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path

import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import quarantine_table, write_quarantine

CUSTOMERS = """
/* lakeforge
layer: silver
*/
SELECT * FROM read_csv('landing/customers.csv')
"""

ORDERS = """
/* lakeforge
layer: silver
write: {strategy: merge, keys: [order_id]}
columns:
  email: {pii: true}
expect:
  positive_amount: amount > 0
  known_status: {expr: "status IN ('new', 'paid')", action: drop}
on_violation: quarantine
checks:
  - not_null: [order_id, customer_id]
  - {type: relationships, column: customer_id, to: customers}
  - {type: anomaly, metric: volume, min_history: 3, method: relative, max_change: 1.0}
*/
SELECT * FROM read_csv('landing/orders.csv')
"""

GOLD = """
SELECT count(*) AS n, sum(amount) AS revenue FROM orders
"""


def write(root: Path, rel: str, text: str) -> None:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))


def orders_csv(root: Path, rows: list[tuple[object, ...]]) -> None:
    lines = ["order_id,customer_id,amount,status,email"]
    lines += [",".join("" if v is None else str(v) for v in row) for row in rows]
    write(root, "landing/orders.csv", "\n".join(lines) + "\n")


@pytest.fixture
def project(tmp_path: Path) -> Path:
    write(tmp_path, "lakeforge.yml", "name: shop\nthreads: 2\n")
    write(tmp_path, "landing/customers.csv", "customer_id,name\n1,Ann\n2,Bo\n")
    write(tmp_path, "models/customers.sql", CUSTOMERS)
    write(tmp_path, "models/orders.sql", ORDERS)
    write(tmp_path, "models/gold_orders.sql", GOLD)
    orders_csv(
        tmp_path,
        [
            (1, 1, 10.0, "new", "a@x.io"),
            (2, 2, -3.0, "paid", "b@x.io"),  # quarantined
            (3, 1, 5.0, "lost", "c@x.io"),  # dropped
            (4, 2, 7.5, "paid", "d@x.io"),
        ],
    )
    return tmp_path


def store_of(root: Path) -> DeltaStore:
    return DeltaStore(str(root / "lakehouse"))


def test_quarantine_drop_and_accounting_in_a_run(project: Path) -> None:
    result = Runner(load_project(project)).run()
    assert result.ok, result.to_dict()
    task = {t.dataset: t for t in result.tasks}["orders"]
    m = task.metrics
    assert (m["rows_candidate"], m["rows_published"], m["rows_quarantined"], m["rows_dropped"]) == (
        4,
        2,
        1,
        1,
    )
    store = store_of(project)
    assert sorted(store.read("orders").to_table().column("order_id").to_pylist()) == [1, 4]
    quarantined = store.read(quarantine_table("orders")).to_table().to_pylist()
    assert len(quarantined) == 1
    row = quarantined[0]
    assert row["order_id"] == 2 and row["email"] == "b@x.io"  # the original row, unmasked
    assert row["_lf_failed_expectations"] == ["positive_amount"]
    assert row["_lf_run_id"] == result.run_id and row["_lf_quarantined_at"] is not None
    # results recorded, samples with PII masked
    with MetadataStore(load_project(project).metadata_url) as meta:
        recorded = {r.name: r for r in meta.list_check_results(run_id=result.run_id)}
    assert recorded["positive_amount"].failing == 1
    assert recorded["positive_amount"].sample == [
        {"order_id": 2, "customer_id": 2, "amount": -3.0, "status": "paid", "email": "***"}
    ]
    assert all(r.published for r in recorded.values())
    # a second run changes nothing: no new version of either table
    versions = (store.version("orders"), store.version(quarantine_table("orders")))
    again = Runner(load_project(project)).run()
    assert {t.status for t in again.tasks} == {"up_to_date"}
    assert (store.version("orders"), store.version(quarantine_table("orders"))) == versions


def test_blocking_failure_publishes_nothing_and_skips_downstream(project: Path) -> None:
    assert Runner(load_project(project)).run().ok
    store = store_of(project)
    before = store.version("orders"), store.version("gold_orders")
    orders_csv(project, [(5, 1, 3.0, "new", "e@x.io"), (6, 77, 4.0, "new", "f@x.io")])
    result = Runner(load_project(project)).run()
    tasks = {t.dataset: t for t in result.tasks}
    assert tasks["orders"].status == "failed"
    assert "relationships" in str(tasks["orders"].error)
    assert tasks["gold_orders"].status == "upstream_failed"
    assert (store.version("orders"), store.version("gold_orders")) == before
    candidate = project / tasks["orders"].metrics["candidate"]
    assert candidate.is_file()
    cli = CliRunner().invoke(app, ["-C", str(project), "checks", "show", result.run_id, "--json"])
    assert cli.exit_code == 0, cli.output
    shown = json.loads(cli.output)
    failing = {f["name"]: f for f in shown["failures"]}
    rel = failing["relationships(customer_id → customers.customer_id)"]
    assert rel["status"] == "fail" and rel["sample"][0]["customer_id"] == 77
    assert not rel["published"]
    assert shown["candidates"] == {"orders": tasks["orders"].metrics["candidate"]}
    text = CliRunner().invoke(app, ["-C", str(project), "checks", "show", result.run_id])
    assert "nothing was published" in text.output and "77" in text.output


def test_no_gate_publishes_and_is_recorded(project: Path) -> None:
    orders_csv(project, [(5, 1, 3.0, "new", "e@x.io"), (6, 77, 4.0, "new", "f@x.io")])
    result = Runner(load_project(project)).run(gate=False)
    assert result.ok and not result.gate
    task = {t.dataset: t for t in result.tasks}["orders"]
    assert task.metrics["gate_overridden"] == ["relationships(customer_id → customers.customer_id)"]
    assert sorted(store_of(project).read("orders").to_table().column("order_id").to_pylist()) == [
        5,
        6,
    ]
    with MetadataStore(load_project(project).metadata_url) as meta:
        assert meta.get_run(result.run_id).options["gate"] is False


def test_anomaly_history_comes_from_published_runs(project: Path) -> None:
    assert Runner(load_project(project)).run("customers").ok  # the relationships target
    for n in (10, 11, 9, 10):
        orders_csv(project, [(i, 1, 1.0, "new", "x@y.z") for i in range(1, n + 1)])
        assert Runner(load_project(project)).run("orders").ok
    orders_csv(project, [(i, 1, 1.0, "new", "x@y.z") for i in range(1, 60)])
    result = Runner(load_project(project)).run("orders")
    assert result.ok  # anomaly checks warn by default
    (anomaly,) = [c for c in result.tasks[0].checks if c.check_type == "anomaly"]
    assert anomaly.status == "warn" and anomaly.value == 59
    assert "change from the trailing median 10" in anomaly.message


def test_checks_command_lists_latest_and_history(project: Path) -> None:
    assert Runner(load_project(project)).run().ok
    orders_csv(project, [(9, 1, 2.0, "new", "z@x.io")])
    assert Runner(load_project(project)).run().ok
    runner = CliRunner()
    latest = json.loads(
        runner.invoke(app, ["-C", str(project), "checks", "orders", "--json"]).output
    )
    names = [r["name"] for r in latest]
    assert len(names) == len(set(names)) and "positive_amount" in names
    history = json.loads(
        runner.invoke(
            app,
            [
                "-C",
                str(project),
                "checks",
                "orders",
                "--history",
                "--check",
                "positive_amount",
                "--json",
            ],
        ).output
    )
    assert [h["failing"] for h in history] == [0, 1]  # newest first
    unknown = runner.invoke(app, ["-C", str(project), "checks", "ordrs"])
    assert unknown.exit_code == 1 and "did you mean 'orders'" in unknown.output


def test_quarantine_rewrite_of_the_same_batch_replaces_it(tmp_path: Path) -> None:
    import pyarrow as pa

    store = DeltaStore(str(tmp_path / "lake"))
    info = CommitInfo("run-1", "orders", "f", 3)
    at = __import__("datetime").datetime.now(__import__("datetime").UTC)
    write_quarantine(store, "orders", pa.table({"id": [1, 2]}), info, at)
    write_quarantine(store, "orders", pa.table({"id": [2], "extra": ["x"]}), info, at)
    write_quarantine(
        store, "orders", pa.table({"id": [7]}), CommitInfo("run-2", "orders", "f", 4), at
    )
    rows = store.read(quarantine_table("orders")).to_table().to_pylist()
    assert sorted((r["_lf_batch"], r["id"]) for r in rows) == [(3, 2), (4, 7)]


def test_checks_reading_each_other_do_not_deadlock(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: loop\nthreads: 2\n")
    for me, other in (("a", "b"), ("b", "a")):
        write(
            tmp_path,
            f"models/{me}.sql",
            f"""
            /* lakeforge
            checks:
              - {{type: relationships, column: id, to: {other}, severity: warn}}
            */
            SELECT 1 AS id
            """,
        )
    result = Runner(load_project(tmp_path)).run()
    assert result.ok and {t.status for t in result.tasks} == {"success"}


def test_a_failed_attempt_leaves_no_quarantined_rows_behind(project: Path) -> None:
    assert Runner(load_project(project)).run().ok
    store = store_of(project)
    # Batch 2: one row quarantined, then the merge refuses the duplicate key 7.
    orders_csv(
        project, [(8, 1, -1.0, "new", "q@x.io"), (7, 1, 1.0, "new", "a"), (7, 2, 2.0, "paid", "b")]
    )
    failed = Runner(load_project(project)).run("orders")
    assert not failed.ok and "duplicate keys" in str(failed.tasks[0].error)
    held = store.read(quarantine_table("orders")).to_table().to_pylist()
    assert sorted(r["order_id"] for r in held) == [2, 8]  # batch 1's row and the failed attempt's
    # Batch 2 again, fixed and clean: the failed attempt's quarantined row goes away.
    orders_csv(project, [(7, 1, 1.0, "new", "a")])
    assert Runner(load_project(project)).run("orders").ok
    held = store.read(quarantine_table("orders")).to_table().to_pylist()
    assert [r["order_id"] for r in held] == [2]


def test_checks_status_filter_applies_to_the_latest_result(project: Path) -> None:
    orders_csv(project, [(1, 1, -1.0, "new", "a@x.io")])
    first = Runner(load_project(project)).run()
    assert first.ok
    orders_csv(project, [(1, 1, 5.0, "new", "a@x.io")])
    assert Runner(load_project(project)).run().ok
    runner = CliRunner()
    warned = runner.invoke(app, ["-C", str(project), "checks", "--status", "warn", "--json"])
    assert "positive_amount" not in [r["name"] for r in json.loads(warned.output)]
    bogus = runner.invoke(app, ["-C", str(project), "checks", "--status", "bad"])
    assert bogus.exit_code == 1 and "unknown status" in bogus.output
    prefix = runner.invoke(app, ["-C", str(project), "checks", "show", first.run_id[:20], "--json"])
    assert prefix.exit_code == 0 and json.loads(prefix.output)["run_id"] == first.run_id
    assert json.loads(prefix.output)["results"] > 0


CONTRACT = """
apiVersion: v3.1.0
kind: DataContract
id: urn:test:orders
version: 1.0.0
status: active
schema:
  - name: {dataset}
    properties:
      - {{name: order_id, logicalType: integer, primaryKey: true}}
      - {{name: email, logicalType: string, required: true}}
      - {{name: amount, logicalType: string}}
"""


def test_a_contract_is_enforced_before_the_commit(project: Path) -> None:
    write(project, "contracts/orders.yml", CONTRACT.format(dataset="orders"))
    orders_csv(project, [(1, 1, 1.0, "new", None)])
    result = Runner(load_project(project)).run()
    task = {t.dataset: t for t in result.tasks}["orders"]
    assert task.status == "failed" and store_of(project).version("orders") is None
    failed = {c.name: c for c in task.checks if c.status != "pass"}
    assert failed["contract:required(email)"].origin == "contract"
    # amount is a DOUBLE, the contract says string: judged by type family
    assert "amount" in failed["contract:logical_types"].message


def test_a_contract_binding_an_unknown_dataset_fails_the_load(project: Path) -> None:
    from lakeforge.errors import GraphError

    write(project, "contracts/orders.yml", CONTRACT.format(dataset="ordrs"))
    with pytest.raises(GraphError, match="binds 'ordrs'") as err:
        load_project(project)
    assert err.value.hint == "did you mean 'orders'?"
