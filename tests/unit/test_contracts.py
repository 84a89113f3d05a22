"""Data contracts: ODCS v3 parsing, checks, compatibility diff, versions, drafting, CLI."""

from __future__ import annotations

import copy
import json
import subprocess
import textwrap
from collections.abc import Callable
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
import typer
import yaml
from deltalake import write_deltalake
from typer.testing import CliRunner

from lakeforge.errors import ConfigError
from lakeforge.graph.spec import DatasetConfig
from lakeforge.quality.contracts import (
    Contract,
    check_version_bump,
    diff_contracts,
    draft_contract,
    index_contracts,
    load_contract,
    load_contracts,
    parse_contract,
    profile_table,
    required_bump,
    type_change,
    type_family,
)
from lakeforge.quality.spec import (
    AcceptedValues,
    Check,
    CustomSQL,
    Freshness,
    NotNull,
    Regex,
    RowCount,
    SchemaCheck,
    SqlValue,
    Unique,
)
from lakeforge.storage.delta import DeltaStore

HEADER = """\
apiVersion: v3.1.0
kind: DataContract
id: orders-contract
version: 1.0.0
status: active
"""

FULL_EXAMPLE = """\
# What this contract is about
apiVersion: v3.1.0
kind: DataContract
id: urn:lakeforge:shop:orders
name: Orders
version: 1.2.0
status: active
domain: sales
dataProduct: shop analytics
tenant: acme
tags: [sales, orders]
description:
  purpose: One row per customer order.
  usage: Revenue reporting.
  limitations: Orders before 2020 are not loaded.
  authoritativeDefinitions:
    - type: businessDefinition
      url: https://example.com/orders
servers:
  - server: local
    type: duckdb
    path: ./lakehouse
team:
  - username: alice
    role: Owner
    dateIn: 2024-01-01
  - username: bob
    role: Data Engineer
roles:
  - role: analyst
    access: read
support:
  - channel: "#orders"
    tool: slack
price:
  priceAmount: 0
  priceCurrency: EUR
  priceUnit: gigabyte
schema:
  - name: orders_table
    physicalName: orders
    physicalType: table
    businessName: Customer orders
    description: Orders as placed in the shop.
    dataGranularityDescription: one row per order
    properties:
      - name: order_id
        businessName: order number
        logicalType: integer
        physicalType: BIGINT
        primaryKey: true
        primaryKeyPosition: 1
        description: The order number.
        criticalDataElement: true
        examples: [1, 2]
      - name: customer_email
        physicalName: email
        logicalType: string
        physicalType: VARCHAR
        required: true
        classification: restricted
        tags: [pii]
        logicalTypeOptions:
          format: email
        customProperties:
          - property: masking
            value: hash
      - name: amount
        logicalType: number
        physicalType: DECIMAL(12,2)
      - name: placed_at
        logicalType: timestamp
        physicalType: TIMESTAMP WITH TIME ZONE
        partitioned: true
        partitionKeyPosition: 1
    quality:
      - type: text
        description: Every paid order is here.
      - type: custom
        engine: soda
        implementation: "type: row_count"
slaDefaultElement: orders_table.placed_at
slaProperties:
  - property: latency
    value: 2
    unit: d
  - property: retention
    value: 3
    unit: y
    element: orders_table.placed_at
customProperties:
  - property: costCentre
    value: 42
contractCreatedTs: 2024-01-01T00:00:00Z
"""


def contract(
    body: str = "", *, header: str = HEADER, file: str = "contracts/orders.yml"
) -> Contract:
    return parse_contract(header + textwrap.dedent(body), file)


def schema_with(properties: str = "", quality: str = "", name: str = "orders") -> str:
    """A one-object schema section with the given (dedented) properties and quality."""
    out = f"schema:\n  - name: {name}\n"
    if properties:
        out += "    properties:\n" + textwrap.indent(textwrap.dedent(properties), "      ")
    if quality:
        out += "    quality:\n" + textwrap.indent(textwrap.dedent(quality), "      ")
    return out


# --------------------------------------------------------------------------- parsing


def test_full_odcs_v3_contract_parses(tmp_path: Path) -> None:
    path = tmp_path / "orders.yml"
    path.write_text(FULL_EXAMPLE)
    c = load_contract(path, display="contracts/orders.yml")
    assert c.id == "urn:lakeforge:shop:orders"
    assert c.file == "contracts/orders.yml"
    assert c.datasets == ["orders"]  # physicalName binds, not name
    assert c.owner == "alice"  # the team member whose role is Owner
    obj = c.object_for("orders")
    assert obj is not None and obj.name == "orders_table"
    assert [p.column for p in obj.properties] == ["order_id", "email", "amount", "placed_at"]
    assert obj.primary_key == ["order_id"]
    assert c.custom_properties[0].key == "costCentre"
    # text and custom rules are documentation; retention is not a freshness SLA
    names = [check.label for check in c.checks_for("orders")]
    assert names == [
        "contract:required(order_id)",
        "contract:required(email)",
        "contract:primary_key(order_id)",
        "contract:schema",
        "contract:freshness(placed_at)",
    ]
    assert c.checks_for("customers") == []


def test_team_object_form_gives_owner() -> None:
    c = contract("team:\n  name: sales-data\n  members:\n    - username: alice\n")
    assert c.owner == "sales-data"


@pytest.mark.parametrize(
    ("body", "line", "expected"),
    [
        ("owner: me\n", 6, "unknown key 'owner'"),
        ("slaPropertes: []\n", 6, "did you mean 'slaProperties'"),
        (
            schema_with("- name: a\n  logicalTyp: string\n"),
            10,
            "unknown key 'logicalTyp' in schema[0].properties[0]; did you mean 'logicalType'",
        ),
        (schema_with("- name: a\n  logicalType: text\n"), 10, "logicalType: Input should be"),
        (schema_with("- name: a\n  physicalType: BIGNIT\n"), 10, "not a DuckDB type"),
        (
            schema_with("- name: a\n  logicalType: string\n  physicalType: BIGINT\n"),
            9,
            "logicalType string does not match physicalType BIGINT",
        ),
        (
            schema_with(
                "- name: a\n  quality:\n    - metric: nullValues\n      mustBe: 0\n"
                "      mustBeLessThan: 3\n"
            ),
            11,
            "exactly one operator",
        ),
        (
            schema_with("- name: a\n  quality:\n    - metric: nulls\n      mustBe: 0\n"),
            11,
            "metric: Input should be 'nullValues'",
        ),
        (
            schema_with(
                "- name: a\n  quality:\n    - metric: nullValues\n      mustBe: 0\n"
                "      severity: meh\n"
            ),
            13,
            "severity 'meh' is not one of",
        ),
        (
            schema_with(
                "- name: a\n  quality:\n    - metric: nullValues\n      mustNotBeBetween: [1, 3]\n"
            ),
            12,
            "mustNotBeBetween is not supported for nullValues",
        ),
        (schema_with(quality="- metric: rowCount\n  mustBeLessThan: 0\n"), 10, "can never pass"),
        (schema_with("- name: a\n- name: a\n"), 7, "column 'a' is described twice"),
        ("team:\n  nme: x\n", 7, "unknown key 'nme' in team; did you mean 'name'?"),
        ("team:\n  - username: a\n    rol: owner\n", 8, "unknown key 'rol' in team[0]"),
        ("description:\n  purpos: x\n", 7, "unknown key 'purpos' in description"),
        ("schema:\n  - physicalName: t\n", 7, "schema[0].name: this key is required"),
        (
            schema_with("- name: a\n")
            + "slaProperties:\n  - property: latency\n    value: 3\n    unit: d\n"
            "    element: orders.b\n",
            14,
            "orders has no property 'b'",
        ),
        (
            "slaProperties:\n  - property: latency\n    value: 3\n    unit: d\n",
            7,
            "needs an element",
        ),
        ("schema: [\n", 7, "invalid YAML"),
    ],
)
def test_invalid_contract_names_file_line_and_problem(body: str, line: int, expected: str) -> None:
    with pytest.raises(ConfigError) as err:
        contract(body)
    assert err.value.location is not None
    assert err.value.location.file == "contracts/orders.yml"
    assert err.value.location.line == line, str(err.value)
    assert expected in str(err.value)


@pytest.mark.parametrize(
    ("header", "expected"),
    [
        (HEADER.replace("1.0.0", "1.0"), "version 1.0 is not semantic versioning"),
        (HEADER.replace("id: orders-contract\n", ""), "id: this key is required"),
        (HEADER.replace("DataContract", "Contract"), "kind: Input should be 'DataContract'"),
        (HEADER.replace("v3.1.0", "v2.2.0"), "is not ODCS v3"),
    ],
)
def test_invalid_fundamentals(header: str, expected: str) -> None:
    with pytest.raises(ConfigError, match=r"contracts/orders\.yml:") as err:
        contract(header=header)
    assert expected in str(err.value)


def test_docs_example_contract_loads() -> None:
    docs = Path(__file__).parents[2] / "docs" / "contracts.md"
    example = docs.read_text().split("```yaml\n", 1)[1].split("```", 1)[0]
    c = parse_contract(example, "docs/contracts.md")
    assert c.datasets == ["orders"] and len(c.checks_for("orders")) == 11


def test_unknown_key_hint_lists_allowed_odcs_names() -> None:
    with pytest.raises(ConfigError) as err:
        contract("owner: me\n")
    assert err.value.hint is not None
    assert "slaProperties" in err.value.hint and "customProperties" in err.value.hint


def _project_contracts(root: Path, files: dict[str, str]) -> None:
    (root / "contracts").mkdir(parents=True, exist_ok=True)
    for name, text in files.items():
        (root / "contracts" / name).write_text(text)


def test_two_contracts_binding_one_dataset_name_both_files(tmp_path: Path) -> None:
    _project_contracts(
        tmp_path,
        {
            "a.yml": HEADER.replace("orders-contract", "a") + schema_with("- name: x\n"),
            "b.yaml": HEADER.replace("orders-contract", "b")
            + "schema:\n  - name: orders_v2\n    physicalName: orders\n",
            "notes.txt": "not a contract",
        },
    )
    with pytest.raises(ConfigError) as err:
        load_contracts(tmp_path)
    message = str(err.value)
    assert "contracts/a.yml" in message and "contracts/b.yaml" in message
    assert err.value.location is not None and err.value.location.file == "contracts/b.yaml"


def test_two_contracts_sharing_an_id_is_an_error() -> None:
    a = contract(schema_with("- name: x\n"), file="contracts/a.yml")
    b = contract(schema_with("- name: x\n", name="other"), file="contracts/b.yml")
    with pytest.raises(ConfigError, match="share the id"):
        index_contracts([a, b])
    assert load_contracts(Path("/nonexistent-project")) == []


# --------------------------------------------------------------------------- checks

PREFIX = "contract:"


def rule(prop: str, rules: str) -> list[Check]:
    """The checks of a contract whose only property ``prop`` has these quality rules."""
    c = contract(schema_with(f"- name: {prop}\n  quality:\n" + textwrap.indent(rules, "    ")))
    return [ch for ch in c.checks_for("orders") if not isinstance(ch, SchemaCheck)]


def test_structure_maps_to_not_null_unique_primary_key_and_schema() -> None:
    c = contract(
        schema_with(
            """\
            - name: line_no
              physicalType: int
              primaryKey: true
              primaryKeyPosition: 2
            - name: order_id
              physicalType: BIGINT
              primaryKey: true
              primaryKeyPosition: 1
              required: true
            - name: sku
              logicalType: string
              unique: true
              required: true
            - name: note
            """
        )
    )
    assert c.checks_for("orders") == [
        NotNull(name=PREFIX + "required(line_no)", column="line_no"),
        NotNull(name=PREFIX + "required(order_id)", column="order_id"),
        NotNull(name=PREFIX + "required(sku)", column="sku"),
        Unique(
            name=PREFIX + "primary_key(order_id, line_no)",
            columns=["order_id", "line_no"],
            scope="table",
        ),
        Unique(name=PREFIX + "unique(sku)", columns=["sku"], scope="table"),
        SchemaCheck(
            name=PREFIX + "schema",
            columns={"line_no": "INTEGER", "order_id": "BIGINT", "sku": None, "note": None},
        ),
    ]
    rules = c.rules_for("orders")
    assert rules[0].location.line == 11  # primaryKey of line_no
    assert rules[3].contract_id == "orders-contract"


def test_rules_keep_where_and_why() -> None:
    c = contract(
        schema_with(
            "- name: a\n  quality:\n    - metric: nullValues\n      mustBe: 0\n"
            "      dimension: completeness\n      description: no gaps\n"
        )
    )
    (_schema, rule_) = c.rules_for("orders")
    assert (rule_.dimension, rule_.description) == ("completeness", "no gaps")
    assert str(rule_.location) == "contracts/orders.yml:11"


@pytest.mark.parametrize(
    ("rules", "expected"),
    [
        (
            "- metric: nullValues\n  mustBeLessThan: 5\n",
            [NotNull(name=PREFIX + "null_values(a)", column="a", error_if=">= 5", scope="table")],
        ),
        (
            "- metric: nullValues\n  mustBe: 0\n  dimension: completeness\n",
            [NotNull(name=PREFIX + "null_values(a)", column="a", error_if="!= 0")],
        ),
        (
            "- metric: nullValues\n  mustBeLessThan: 1\n  unit: percent\n  severity: warning\n",
            [
                NotNull(
                    name=PREFIX + "null_values(a)",
                    column="a",
                    severity="warn",
                    warn_if=">= 1%",
                    scope="table",
                )
            ],
        ),
        (
            "- metric: nullValues\n  mustBeBetween: [2, 10]\n",
            [
                NotNull(
                    name=PREFIX + "null_values(a)[lower]", column="a", error_if="< 2", scope="table"
                ),
                NotNull(
                    name=PREFIX + "null_values(a)[upper]",
                    column="a",
                    error_if="> 10",
                    scope="table",
                ),
            ],
        ),
        (
            "- metric: duplicateValues\n  mustBeLessOrEqualTo: 0.5\n  unit: percent\n",
            [
                Unique(
                    name=PREFIX + "duplicate_values(a)",
                    columns=["a"],
                    error_if="> 0.5%",
                    scope="table",
                )
            ],
        ),
        (
            "- metric: invalidValues\n  arguments:\n    validValues: [kg, lb]\n  mustBe: 0\n",
            [
                AcceptedValues(
                    name=PREFIX + "invalid_values(a)",
                    column="a",
                    values=["kg", "lb"],
                    error_if="!= 0",
                )
            ],
        ),
        (
            "- name: iban\n  metric: invalidValues\n  arguments:\n    pattern: '^[A-Z]{2}[0-9]+$'\n"
            "  mustBeLessThan: 10\n  severity: error\n",
            [
                Regex(
                    name=PREFIX + "iban",
                    column="a",
                    pattern="^[A-Z]{2}[0-9]+$",
                    error_if=">= 10",
                    scope="table",
                )
            ],
        ),
        (
            "- metric: missingValues\n  arguments:\n    missingValues: [null, '', N/A]\n"
            "  mustBe: 0\n",
            [
                CustomSQL(
                    name=PREFIX + "missing_values(a)",
                    sql="SELECT * FROM orders WHERE a IS NULL OR a IN ('', 'N/A')",
                    error_if="!= 0",
                )
            ],
        ),
        (
            "- metric: missingValues\n  arguments:\n    missingValues: ['']\n  mustBeLessThan: 5\n"
            "  unit: percent\n",
            [
                SqlValue(
                    name=PREFIX + "missing_values(a)",
                    sql="SELECT COALESCE(100.0 * COUNT(*) FILTER(WHERE a IN ('')) / "
                    "NULLIF(COUNT(*), 0), 0) FROM orders",
                    error_if=">= 5",
                    scope="table",
                )
            ],
        ),
        (
            "- type: sql\n  query: SELECT count(*) FROM ${object} WHERE {property} < 0\n"
            "  mustBe: 0\n",
            [
                SqlValue(
                    name=PREFIX + "sql(a)",
                    sql="SELECT count(*) FROM orders WHERE a < 0",
                    error_if="!= 0",
                    scope="table",
                )
            ],
        ),
        (
            "- type: sql\n  name: late\n  query: SELECT max(x) FROM {object};\n"
            "  mustBeLessThan: 10\n",
            [
                SqlValue(
                    name=PREFIX + "late",
                    sql="SELECT max(x) FROM orders",
                    error_if=">= 10",
                    scope="table",
                )
            ],
        ),
        (
            "- type: sql\n  query: SELECT avg(x) FROM {table}\n  mustBeBetween: [1, 2.5]\n"
            "  severity: warning\n",
            [
                SqlValue(
                    name=PREFIX + "sql(a)[lower]",
                    sql="SELECT avg(x) FROM orders",
                    severity="warn",
                    warn_if="< 1",
                    scope="table",
                ),
                SqlValue(
                    name=PREFIX + "sql(a)[upper]",
                    sql="SELECT avg(x) FROM orders",
                    severity="warn",
                    warn_if="> 2.5",
                    scope="table",
                ),
            ],
        ),
        (
            "- type: sql\n  query: SELECT min(x) FROM {object}\n  mustBeGreaterThan: -5\n",
            [
                SqlValue(
                    name=PREFIX + "sql(a)",
                    sql="SELECT CASE WHEN value > -5.0 THEN 0 ELSE 1 END FROM "
                    "(SELECT min(x) FROM orders) AS odcs_rule(value)",
                    error_if="!= 0",
                    scope="table",
                )
            ],
        ),
        ("- type: text\n  description: Looks right.\n", []),
    ],
)
def test_property_quality_rule_maps_to_check(rules: str, expected: list[Check]) -> None:
    assert rule("a", rules) == expected


@pytest.mark.parametrize(
    ("quality", "expected"),
    [
        (
            "- metric: rowCount\n  mustBeGreaterThan: 100\n",
            RowCount(name=PREFIX + "row_count", min=101, scope="table"),
        ),
        (
            "- metric: rowCount\n  mustBeBetween: [100, 120]\n",
            RowCount(name=PREFIX + "row_count", min=100, max=120, scope="table"),
        ),
        (
            "- metric: rowCount\n  mustBeLessOrEqualTo: 7\n",
            RowCount(name=PREFIX + "row_count", max=7, scope="table"),
        ),
        (
            "- metric: rowCount\n  mustBe: 3\n  severity: warning\n",
            RowCount(name=PREFIX + "row_count", min=3, max=3, severity="warn", scope="table"),
        ),
        (
            "- metric: rowCount\n  mustNotBe: 0\n",
            SqlValue(
                name=PREFIX + "row_count",
                sql="SELECT COUNT(*) FROM orders",
                error_if="== 0",
                scope="table",
            ),
        ),
        (
            "- metric: duplicateValues\n  arguments:\n    properties: [tenant, id]\n  mustBe: 0\n",
            Unique(
                name=PREFIX + "duplicate_values(tenant, id)",
                columns=["tenant", "id"],
                error_if="!= 0",
                scope="table",
            ),
        ),
    ],
)
def test_object_quality_rule_maps_to_check(quality: str, expected: Check) -> None:
    c = contract(schema_with(quality=quality))
    assert c.checks_for("orders") == [expected]


def test_latency_sla_maps_to_freshness() -> None:
    c = contract(
        schema_with("- name: updated_at\n  logicalType: timestamp\n") + "slaProperties:\n"
        "  - property: latency\n    value: 4\n    unit: hours\n    element: orders.updated_at\n"
        "  - property: freshness\n    value: 1\n    unit: y\n    element: updated_at\n"
        "  - property: frequency\n    value: 1\n    unit: d\n"
    )
    fresh = [ch for ch in c.checks_for("orders") if isinstance(ch, Freshness)]
    assert fresh == [
        Freshness(
            name=PREFIX + "freshness(updated_at)",
            column="updated_at",
            error_after="4h",
            scope="table",
        ),
        Freshness(
            name=PREFIX + "freshness(updated_at)#2",
            column="updated_at",
            error_after="365d",
            scope="table",
        ),
    ]


def test_generated_sql_runs_on_duckdb() -> None:
    checks = rule(
        "a",
        "- metric: missingValues\n  arguments:\n    missingValues: [null, '']\n  mustBe: 0\n"
        "- metric: missingValues\n  arguments:\n    missingValues: ['']\n  mustBeLessThan: 50\n"
        "  unit: percent\n"
        "- type: sql\n  query: SELECT min(a) FROM {object}\n  mustNotBeBetween: [-1, 1]\n"
        "- type: sql\n  query: SELECT min(length(a)) > 0 FROM {object}\n  mustBe: true\n",
    )
    con = duckdb.connect()
    con.sql("CREATE TABLE orders AS SELECT * FROM (VALUES ('x'), (''), (NULL), ('yy')) t(a)")
    missing_rows = con.sql(checks[0].sql).fetchall()  # type: ignore[union-attr]
    assert len(missing_rows) == 2
    (share,) = con.sql(checks[1].sql).fetchall()[0]  # type: ignore[union-attr]
    assert share == 25.0
    con.sql("CREATE OR REPLACE TABLE orders AS SELECT * FROM (VALUES (5), (3)) t(a)")
    assert con.sql(checks[2].sql).fetchall() == [(0,)]  # type: ignore[union-attr]
    con.sql("CREATE OR REPLACE TABLE orders AS SELECT * FROM (VALUES (0), (3)) t(a)")
    assert con.sql(checks[2].sql).fetchall() == [(1,)]  # type: ignore[union-attr]
    con.sql("CREATE OR REPLACE TABLE orders AS SELECT * FROM (VALUES ('ab')) t(a)")
    assert con.sql(checks[3].sql).fetchall() == [(0,)]  # type: ignore[union-attr]


def test_type_violations_judge_logical_types_by_family() -> None:
    c = contract(
        schema_with(
            """\
            - name: id
              logicalType: integer
            - name: price
              logicalType: number
            - name: at
              logicalType: timestamp
            - name: tags
              logicalType: array
            - name: pinned
              logicalType: string
              physicalType: VARCHAR
            """
        )
    )
    actual = {
        "id": "BIGINT",
        "price": "DECIMAL(12,2)",
        "at": "TIMESTAMP WITH TIME ZONE",
        "tags": "VARCHAR[]",
        "pinned": "INTEGER",  # physicalType: the schema check's business
    }
    assert c.type_violations("orders", actual) == []
    actual.update(id="DOUBLE", at="DATE")
    problems = c.type_violations("orders", actual)
    assert len(problems) == 2
    assert "column 'id'" in problems[0] and "DOUBLE (number family)" in problems[0]
    assert "column 'at'" in problems[1]
    assert c.type_violations("missing", actual) == []


@pytest.mark.parametrize(
    ("type_name", "family"),
    [
        ("BIGINT", "integer"),
        ("UTINYINT", "integer"),
        ("DECIMAL(12,2)", "number"),
        ("double", "number"),
        ("VARCHAR", "string"),
        ("UUID", "string"),
        ("DATE", "date"),
        ("TIMESTAMP", "timestamp"),
        ("TIMESTAMP WITH TIME ZONE", "timestamp"),
        ("TIMESTAMP_NS", "timestamp"),
        ("BOOLEAN", "boolean"),
        ("STRUCT(a INTEGER)", "object"),
        ("MAP(VARCHAR, BIGINT)", "object"),
        ("INTEGER[]", "array"),
        ("STRUCT(a INTEGER)[]", "array"),
        ("BLOB", "binary"),
    ],
)
def test_type_family(type_name: str, family: str) -> None:
    assert type_family(type_name) == family


# --------------------------------------------------------------------------- diff

BASE: dict[str, Any] = {
    "apiVersion": "v3.1.0",
    "kind": "DataContract",
    "id": "urn:t:orders",
    "version": "1.0.0",
    "status": "active",
    "team": {"name": "sales"},
    "schema": [
        {
            "name": "orders",
            "properties": [
                {"name": "order_id", "physicalType": "INTEGER", "required": True},
                {
                    "name": "status",
                    "logicalType": "string",
                    "quality": [
                        {
                            "metric": "invalidValues",
                            "arguments": {"validValues": ["placed", "shipped"]},
                            "mustBe": 0,
                        }
                    ],
                },
                {
                    "name": "amount",
                    "physicalType": "DECIMAL(10,2)",
                    "quality": [{"metric": "nullValues", "mustBeLessThan": 5}],
                },
                {"name": "weight", "physicalType": "FLOAT"},
                {"name": "count", "logicalType": "integer"},
                {
                    "name": "note",
                    "id": "note_prop",
                    "physicalType": "VARCHAR",
                    "classification": "internal",
                },
                {"name": "updated_at", "physicalType": "TIMESTAMP"},
            ],
        }
    ],
    "slaProperties": [
        {"property": "latency", "value": 4, "unit": "h", "element": "orders.updated_at"}
    ],
}


def build(data: dict[str, Any]) -> Contract:
    return parse_contract(yaml.safe_dump(data, sort_keys=False), "contracts/orders.yml")


def props(data: dict[str, Any]) -> list[dict[str, Any]]:
    return data["schema"][0]["properties"]


def prop(data: dict[str, Any], name: str) -> dict[str, Any]:
    return next(p for p in props(data) if p["name"] == name)


def _drop(name: str) -> Callable[[dict[str, Any]], None]:
    return lambda d: props(d).remove(prop(d, name))


def _set(name: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: prop(d, name).update(values)


def _rename(old: str, new: str, *, required: bool = False) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        prop(d, old).update(name=new, required=required)
        prop(d, new).pop("id", None)  # without a stable id a rename is remove + add

    return edit


def _rename_by_id(d: dict[str, Any]) -> None:
    prop(d, "note")["name"] = "memo"  # the property keeps its id


def _quality(column: str, **values: Any) -> Callable[[dict[str, Any]], None]:
    return lambda d: prop(d, column)["quality"][0].update(values)


def _replace_operator(name: str, **operator: Any) -> Callable[[dict[str, Any]], None]:
    def edit(d: dict[str, Any]) -> None:
        q = prop(d, name)["quality"][0]
        for key in [k for k in q if k.startswith("must")]:
            del q[key]
        q.update(operator)

    return edit


def _sla(value: float) -> Callable[[dict[str, Any]], None]:
    return lambda d: d["slaProperties"][0].update(value=value)


def _add_object(d: dict[str, Any]) -> None:
    d["schema"].append({"name": "customers", "properties": [{"name": "id"}]})


# (row of the compatibility table, edit of BASE, expected [(kind, compatibility)], overall)
DIFF_TABLE: list[tuple[str, Callable[[dict[str, Any]], None], list[tuple[str, str]], str]] = [
    (
        "add optional column",
        lambda d: props(d).append({"name": "coupon"}),
        [("column_added", "full")],
        "full",
    ),
    (
        "add required column",
        lambda d: props(d).append({"name": "channel", "required": True}),
        [("column_added", "forward")],
        "forward",
    ),
    ("remove column", _drop("note"), [("column_removed", "backward")], "backward"),
    (
        "optional -> required",
        _set("note", required=True),
        [("required_changed", "forward")],
        "forward",
    ),
    (
        "required -> optional",
        _set("order_id", required=False),
        [("required_changed", "backward")],
        "backward",
    ),
    (
        "widen INTEGER -> BIGINT",
        _set("order_id", physicalType="BIGINT"),
        [("type_changed", "backward")],
        "backward",
    ),
    (
        "widen FLOAT -> DOUBLE",
        _set("weight", physicalType="DOUBLE"),
        [("type_changed", "backward")],
        "backward",
    ),
    (
        "widen decimal precision",
        _set("amount", physicalType="DECIMAL(12,2)"),
        [("type_changed", "backward")],
        "backward",
    ),
    (
        "widen integer -> number (logical)",
        _set("count", logicalType="number"),
        [("type_changed", "backward")],
        "backward",
    ),
    (
        "narrow INTEGER -> SMALLINT",
        _set("order_id", physicalType="SMALLINT"),
        [("type_changed", "forward")],
        "forward",
    ),
    (
        "narrow decimal precision",
        _set("amount", physicalType="DECIMAL(8,2)"),
        [("type_changed", "forward")],
        "forward",
    ),
    ("same type, other spelling", _set("weight", physicalType="float4"), [], "full"),
    (
        "incompatible INTEGER -> VARCHAR",
        _set("order_id", physicalType="VARCHAR"),
        [("type_changed", "breaking")],
        "breaking",
    ),
    (
        "incompatible TIMESTAMP -> TIMESTAMPTZ",
        _set("updated_at", physicalType="TIMESTAMPTZ"),
        [("type_changed", "breaking")],
        "breaking",
    ),
    (
        "incompatible logical string -> integer",
        _set("status", logicalType="integer"),
        [("type_changed", "breaking")],
        "breaking",
    ),
    (
        "type pinned: logical -> physical",
        _set("count", logicalType=None, physicalType="BIGINT"),
        [("type_changed", "forward")],
        "forward",
    ),
    (
        "rename optional (remove + add)",
        _rename("note", "memo"),
        [("column_removed", "backward"), ("column_added", "full")],
        "backward",
    ),
    (
        "rename required (remove + add)",
        _rename("note", "memo", required=True),
        [("column_removed", "backward"), ("column_added", "forward")],
        "breaking",
    ),
    ("rename by property id", _rename_by_id, [("column_renamed", "breaking")], "breaking"),
    ("unique added", _set("note", unique=True), [("unique_changed", "forward")], "forward"),
    (
        "primary key added",
        _set("order_id", primaryKey=True),
        [("primary_key_changed", "forward")],
        "forward",
    ),
    (
        "quality rule added",
        lambda d: prop(d, "note").update(quality=[{"metric": "nullValues", "mustBe": 0}]),
        [("quality_rule_added", "forward")],
        "forward",
    ),
    (
        "warning rule added",
        lambda d: prop(d, "note").update(
            quality=[{"metric": "nullValues", "mustBe": 0, "severity": "warning"}]
        ),
        [("quality_rule_added", "full")],
        "full",
    ),
    (
        "quality rule removed",
        lambda d: prop(d, "amount").update(quality=[]),
        [("quality_rule_removed", "backward")],
        "backward",
    ),
    (
        "quality rule tightened",
        _quality("amount", mustBeLessThan=3),
        [("quality_rule_changed", "forward")],
        "forward",
    ),
    (
        "quality rule loosened",
        _quality("amount", mustBeLessThan=10),
        [("quality_rule_changed", "backward")],
        "backward",
    ),
    (
        "quality rule between, tighter",
        _replace_operator("amount", mustBeBetween=[0, 4]),
        [("quality_rule_changed", "forward")],
        "forward",
    ),
    (
        "quality rule crossed",
        _replace_operator("amount", mustBeGreaterThan=7),
        [("quality_rule_changed", "breaking")],
        "breaking",
    ),
    (
        "valid value added (looser)",
        _quality("status", arguments={"validValues": ["placed", "shipped", "lost"]}),
        [("quality_rule_changed", "backward")],
        "backward",
    ),
    (
        "valid value removed (tighter)",
        _quality("status", arguments={"validValues": ["placed"]}),
        [("quality_rule_changed", "forward")],
        "forward",
    ),
    (
        "error -> warning",
        _quality("amount", severity="warning"),
        [("quality_rule_changed", "backward")],
        "backward",
    ),
    (
        "rule described",
        _quality("amount", description="few nulls"),
        [("quality_rule_changed", "full")],
        "full",
    ),
    (
        "rule named (matched by what it measures)",
        _quality("amount", name="few_nulls"),
        [("quality_rule_changed", "full")],
        "full",
    ),
    (
        "description changed",
        _set("note", description="free text"),
        [("description_changed", "full")],
        "full",
    ),
    (
        "classification changed",
        _set("note", classification="restricted"),
        [("classification_changed", "full")],
        "full",
    ),
    (
        "owner changed",
        lambda d: d.update(team={"name": "finance"}),
        [("owner_changed", "full")],
        "full",
    ),
    (
        "status changed",
        lambda d: d.update(status="deprecated"),
        [("status_changed", "full")],
        "full",
    ),
    ("latency tightened", _sla(2), [("sla_changed", "forward")], "forward"),
    ("latency loosened", _sla(8), [("sla_changed", "backward")], "backward"),
    ("object added", _add_object, [("object_added", "forward")], "forward"),
    (
        "object removed",
        lambda d: d.update(schema=[], slaProperties=[]),
        [("object_removed", "backward"), ("sla_removed", "backward")],
        "backward",
    ),
]


@pytest.mark.parametrize(
    ("edit", "expected", "overall"),
    [pytest.param(edit, expected, overall, id=row) for row, edit, expected, overall in DIFF_TABLE],
)
def test_diff_classification(
    edit: Callable[[dict[str, Any]], None], expected: list[tuple[str, str]], overall: str
) -> None:
    new = copy.deepcopy(BASE)
    edit(new)
    result = diff_contracts(build(BASE), build(new))
    assert [(c.kind, c.compatibility) for c in result.changes] == expected
    assert result.compatibility == overall


@pytest.mark.parametrize(
    ("edit", "expected"),
    [
        (_set("note", unique=True), [("unique_changed", "backward")]),
        (_set("order_id", primaryKey=True), [("primary_key_changed", "backward")]),
    ],
)
def test_diff_removing_a_guarantee_is_backward(
    edit: Callable[[dict[str, Any]], None], expected: list[tuple[str, str]]
) -> None:
    old = copy.deepcopy(BASE)
    edit(old)
    result = diff_contracts(build(old), build(BASE))
    assert [(c.kind, c.compatibility) for c in result.changes] == expected


@pytest.mark.parametrize(
    ("old_key", "new_key", "compatibility"),
    [
        (["order_id"], ["order_id", "note"], "backward"),  # a wider key promises less
        (["order_id", "note"], ["order_id"], "forward"),
        (["order_id"], ["note"], "breaking"),
        (["order_id", "note"], ["note", "order_id"], "full"),
    ],
)
def test_diff_primary_key_composition(
    old_key: list[str], new_key: list[str], compatibility: str
) -> None:
    def keyed(columns: list[str]) -> dict[str, Any]:
        data = copy.deepcopy(BASE)
        for position, name in enumerate(columns, 1):
            prop(data, name).update(primaryKey=True, primaryKeyPosition=position)
        prop(data, "note")["required"] = True  # keep `required` out of the comparison
        return data

    result = diff_contracts(build(keyed(old_key)), build(keyed(new_key)))
    assert result.compatibility == compatibility
    assert all(c.kind == "primary_key_changed" for c in result.changes)


def test_diff_overall_is_the_intersection() -> None:
    new = copy.deepcopy(BASE)
    props(new).append({"name": "coupon"})  # full
    prop(new, "note")["required"] = True  # forward
    assert diff_contracts(build(BASE), build(new)).compatibility == "forward"
    prop(new, "order_id")["physicalType"] = "BIGINT"  # backward
    result = diff_contracts(build(BASE), build(new))
    assert result.compatibility == "breaking"  # forward-only and backward-only together
    assert not result.compatible("forward") and not result.compatible("backward")
    assert diff_contracts(build(BASE), build(BASE)).compatibility == "full"


@pytest.mark.parametrize(
    ("old", "new", "relation"),
    [
        ("INTEGER", "BIGINT", "widening"),
        ("UINTEGER", "BIGINT", "widening"),
        ("BIGINT", "UBIGINT", "incompatible"),
        ("INTEGER", "DECIMAL(12,0)", "widening"),
        ("BIGINT", "DECIMAL(12,0)", "incompatible"),
        ("INTEGER", "DOUBLE", "widening"),
        ("DECIMAL(10,2)", "DECIMAL(11,3)", "widening"),
        ("DECIMAL(10,2)", "DECIMAL(10,3)", "incompatible"),
        ("DATE", "TIMESTAMP", "widening"),
        ("TIMESTAMP_MS", "TIMESTAMP", "widening"),
        ("INTEGER[]", "BIGINT[]", "widening"),
        ("VARCHAR", "UUID", "narrowing"),
        ("BIGINT", "BIGINT", "same"),
    ],
)
def test_type_change(old: str, new: str, relation: str) -> None:
    assert type_change(old, new) == relation


# --------------------------------------------------------------------------- versions


def _versioned(edit: Callable[[dict[str, Any]], None] | None, version: str) -> Contract:
    data = copy.deepcopy(BASE)
    if edit is not None:
        edit(data)
    data["version"] = version
    return build(data)


@pytest.mark.parametrize(
    ("edit", "version", "mode", "needed", "problem"),
    [
        (None, "1.0.0", "forward", "none", None),
        (_set("note", description="x"), "1.0.0", "forward", "patch", "version is still 1.0.0"),
        (_set("note", description="x"), "1.0.1", "forward", "patch", None),
        (
            lambda d: props(d).append({"name": "coupon"}),
            "1.0.1",
            "forward",
            "minor",
            "need a minor bump (e.g. 1.1.0)",
        ),
        (lambda d: props(d).append({"name": "coupon"}), "1.1.0", "forward", "minor", None),
        (_set("note", required=True), "1.1.0", "forward", "minor", None),
        (_set("note", required=True), "1.1.0", "backward", "major", "not backward-compatible"),
        (_set("note", required=True), "2.0.0", "backward", "major", None),
        (_drop("note"), "1.1.0", "forward", "major", "needs a major bump (e.g. 2.0.0)"),
        (_drop("note"), "2.0.0", "forward", "major", None),
        (_drop("note"), "1.1.0", "backward", "minor", None),
        (_drop("note"), "1.1.0", "full", "major", "not full-compatible"),
        (_set("note", description="x"), "0.9.0", "forward", "patch", "version went down"),
    ],
)
def test_version_bump_rules(
    edit: Callable[[dict[str, Any]], None] | None,
    version: str,
    mode: Any,
    needed: str,
    problem: str | None,
) -> None:
    old, new = build(BASE), _versioned(edit, version)
    assert required_bump(diff_contracts(old, new), mode) == needed
    problems = check_version_bump(old, new, mode)
    if problem is None:
        assert problems == []
    else:
        assert len(problems) == 1 and problem in problems[0], problems


def test_below_one_a_minor_bump_may_break() -> None:
    old = _versioned(None, "0.1.0")
    assert check_version_bump(old, _versioned(_drop("note"), "0.2.0")) == []
    problems = check_version_bump(old, _versioned(_drop("note"), "0.1.1"))
    assert problems and "needs a minor bump (e.g. 0.2.0)" in problems[0]


# --------------------------------------------------------------------------- drafting


ORDERS = pa.table(
    {
        "order_id": pa.array([1, 2, 3, 4], pa.int64()),
        "email": pa.array(["a@x.io", "b@x.io", "c@x.io", "d@x.io"]),
        "status": pa.array(["placed", "placed", "shipped", None]),
        "amount": pa.array([10.5, 3.0, 3.0, 7.25], pa.float64()),
        "placed_at": pa.array([1_700_000_000_000_000] * 4, pa.timestamp("us", tz="UTC")),
        "items": pa.array([[1], [2, 3], [], [4]], pa.list_(pa.int32())),
    }
)
ORDERS_CONFIG = DatasetConfig.model_validate(
    {
        "owner": "sales-data",
        "description": "One row per order.",
        "tags": ["sales"],
        "columns": {
            "email": {"description": "Who ordered", "pii": True},
            "status": {"description": "Order state"},
        },
        "write": {"strategy": "merge", "keys": ["order_id"]},
    }
)


def evaluate(con: duckdb.DuckDBPyConnection, table: str, check: Check) -> bool:
    """Whether ``check`` passes on ``table``: a plain DuckDB query per check type."""
    quoted = f'"{table}"'
    if isinstance(check, NotNull):
        (nulls,) = con.sql(
            f'SELECT count(*) FROM {quoted} WHERE "{check.column}" IS NULL'
        ).fetchall()[0]
        return bool(nulls == 0)
    if isinstance(check, Unique):
        cols = ", ".join(f'"{c}"' for c in check.columns)
        query = (
            f"SELECT count(*) FROM (SELECT {cols} FROM {quoted} GROUP BY ALL HAVING count(*) > 1)"
        )
        return bool(con.sql(query).fetchall()[0][0] == 0)
    if isinstance(check, SchemaCheck):
        rel = con.sql(f"SELECT * FROM {quoted}")
        actual = {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
        return all(
            name in actual and (expected is None or expected == actual[name])
            for name, expected in check.columns.items()
        )
    raise AssertionError(f"unexpected check {check!r}")


def test_draft_contract_from_a_delta_table_round_trips(tmp_path: Path) -> None:
    write_deltalake(str(tmp_path / "orders"), ORDERS)
    store = DeltaStore(str(tmp_path))
    pinned = store.read("orders")
    stats = profile_table(pinned)
    assert stats["rows"] == 4 and stats["version"] == 0
    assert stats["columns"]["status"] == {"type": "VARCHAR", "nulls": 1, "distinct": 2}
    assert stats["columns"]["items"]["distinct"] is None
    schema = store.schema("orders")
    assert schema is not None

    text = draft_contract("orders", schema, stats, ORDERS_CONFIG, project="shop")
    c = parse_contract(text, "contracts/orders.yml")
    assert "observed: no NULL in 4 rows" in text and "observed: 4 distinct values" in text
    assert (c.id, c.version, c.status, c.owner) == (
        "urn:lakeforge:shop:orders",
        "0.1.0",
        "draft",
        "sales-data",
    )
    obj = c.objects[0]
    by = {p.name: p for p in obj.properties}
    assert obj.primary_key == ["order_id"]  # the merge key
    assert (by["order_id"].logical_type, by["order_id"].physical_type) == ("integer", "BIGINT")
    assert by["email"].classification == "restricted" and by["email"].description == "Who ordered"
    assert by["email"].required and by["email"].unique
    assert not by["status"].required and not by["status"].unique
    assert by["amount"].required and not by["amount"].unique  # floats are not keys
    assert (by["placed_at"].logical_type, by["placed_at"].physical_type) == (
        "timestamp",
        "TIMESTAMP WITH TIME ZONE",
    )
    assert (by["items"].logical_type, by["items"].physical_type) == ("array", "INTEGER[]")

    con = duckdb.connect()
    con.register("orders", pinned.to_table())
    checks = c.checks_for("orders")
    assert {type(ch) for ch in checks} == {NotNull, Unique, SchemaCheck}
    assert all(evaluate(con, "orders", ch) for ch in checks)
    rel = con.sql("FROM orders")
    actual = {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
    assert c.type_violations("orders", actual) == []

    # The same checks catch data that breaks what was observed.
    con.sql(
        "CREATE TABLE bad AS SELECT * REPLACE "
        "(CASE WHEN order_id = 2 THEN NULL ELSE email END AS email) FROM orders"
    )
    failing = [ch.label for ch in checks if not evaluate(con, "bad", ch)]
    assert failing == ["contract:required(email)"]


def test_draft_of_an_empty_table_claims_nothing_observed(tmp_path: Path) -> None:
    write_deltalake(str(tmp_path / "orders"), ORDERS.slice(0, 0))
    store = DeltaStore(str(tmp_path))
    schema = store.schema("orders")
    assert schema is not None
    config = DatasetConfig.model_validate({"columns": {"order_id": {"nullable": False}}})
    text = draft_contract("orders", schema, profile_table(store.read("orders")), config)
    c = parse_contract(text, "x.yml")
    assert [p.name for p in c.objects[0].properties if p.required] == ["order_id"]
    assert "declared: nullable: false" in text
    assert not any(p.unique for p in c.objects[0].properties)


# --------------------------------------------------------------------------- CLI


def cli() -> typer.Typer:
    """The contract commands under the real root callback and error handling."""
    from lakeforge.cli import app as app_module
    from lakeforge.cli import contract as contract_cli

    test_app = typer.Typer(cls=app_module._Group, no_args_is_help=True)
    test_app.callback()(app_module._global)
    contract_cli.register(test_app)
    return test_app


def run_cli(root: Path, *args: str) -> Any:
    return CliRunner().invoke(cli(), ["-C", str(root), "contract", *args])


def write_contract(path: Path, data: dict[str, Any]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))


def test_cli_diff_prints_changes_and_exits_zero(tmp_path: Path) -> None:
    new = copy.deepcopy(BASE)
    props(new).remove(prop(new, "note"))
    new["version"] = "1.1.0"
    write_contract(tmp_path / "old.yml", BASE)
    write_contract(tmp_path / "new.yml", new)
    result = run_cli(
        tmp_path, "diff", str(tmp_path / "old.yml"), str(tmp_path / "new.yml"), "--json"
    )
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["compatibility"] == "backward" and data["required_bump"] == "major"
    assert data["changes"][0]["kind"] == "column_removed"
    assert "needs a major bump" in data["problems"][0]
    table = run_cli(tmp_path, "diff", str(tmp_path / "old.yml"), str(tmp_path / "new.yml"))
    assert table.exit_code == 0
    assert "column_removed" in table.stdout and "backward" in table.stdout
    backward = run_cli(
        tmp_path,
        "diff",
        str(tmp_path / "old.yml"),
        str(tmp_path / "new.yml"),
        "--mode",
        "backward",
        "--json",
    )
    assert json.loads(backward.stdout)["problems"] == []
    bad_mode = run_cli(
        tmp_path, "diff", str(tmp_path / "old.yml"), str(tmp_path / "new.yml"), "--mode", "sideways"
    )
    assert bad_mode.exit_code == 2


def git(root: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@example.com", *args],
        cwd=root,
        check=True,
        capture_output=True,
    )


def test_cli_check_against_git_ref(tmp_path: Path) -> None:
    root = tmp_path / "analytics"  # the project is a sub-folder of the repository
    root.mkdir()
    (root / "lakeforge.yml").write_text("name: shop\n")
    path = root / "contracts" / "orders.yml"
    write_contract(path, BASE)
    git(tmp_path, "init", "-q")
    git(tmp_path, "add", ".")
    git(tmp_path, "commit", "-q", "-m", "contract")

    unchanged = run_cli(root, "check", "--json")
    assert unchanged.exit_code == 0, unchanged.output
    assert json.loads(unchanged.stdout)["contracts"][0]["status"] == "unchanged"

    removed = copy.deepcopy(BASE)
    props(removed).remove(prop(removed, "note"))
    write_contract(path, removed)  # a column removed, version untouched
    result = run_cli(root, "check")
    assert result.exit_code == 1
    assert "version is still 1.0.0" in result.output
    assert "failed the forward compatibility check against HEAD" in result.output

    removed["version"] = "1.1.0"  # not enough for an incompatible change
    write_contract(path, removed)
    result = run_cli(root, "check", "--against", "HEAD")
    assert result.exit_code == 1 and "needs a major bump (e.g. 2.0.0)" in result.output
    assert run_cli(root, "check", "--mode", "backward").exit_code == 0

    removed["version"] = "2.0.0"
    write_contract(path, removed)
    result = run_cli(root, "check", "--json")
    assert result.exit_code == 0, result.output
    entry = json.loads(result.stdout)["contracts"][0]
    assert (entry["status"], entry["compatibility"], entry["required_bump"]) == (
        "changed",
        "backward",
        "major",
    )

    # A moved file is matched by its id; a new contract needs no baseline.
    moved = root / "contracts" / "orders_v2.yml"
    path.rename(moved)
    other = copy.deepcopy(BASE)
    other.update(id="urn:t:customers", schema=[{"name": "customers"}], slaProperties=[])
    write_contract(root / "contracts" / "customers.yml", other)
    result = run_cli(root, "check", "--json")
    assert result.exit_code == 0, result.output
    statuses = {e["file"]: e["status"] for e in json.loads(result.stdout)["contracts"]}
    assert statuses == {"contracts/customers.yml": "new", "contracts/orders_v2.yml": "changed"}

    # Deleting a contract breaks its consumers, unless it was deprecated first.
    moved.unlink()
    result = run_cli(root, "check")
    assert result.exit_code == 1 and "was deleted" in result.output
    assert run_cli(root, "check", "--mode", "backward").exit_code == 0

    missing_ref = run_cli(root, "check", "--against", "no-such-branch")
    assert missing_ref.exit_code == 1 and "does not exist" in missing_ref.output


def test_cli_check_outside_git_says_so(tmp_path: Path) -> None:
    (tmp_path / "lakeforge.yml").write_text("name: shop\n")
    result = run_cli(tmp_path, "check")
    assert result.exit_code == 1 and "inside a git checkout" in result.output


def make_shop(root: Path) -> None:
    (root / "lakeforge.yml").write_text("name: shop\n")
    (root / "models").mkdir()
    (root / "models" / "orders.sql").write_text(
        textwrap.dedent(
            """\
            /* lakeforge
            owner: sales-data
            write: {strategy: merge, keys: [order_id]}
            columns:
              email: {description: Who ordered, pii: true}
            */
            SELECT 1 AS order_id
            """
        )
    )
    (root / "models" / "recent.sql").write_text(
        "/* lakeforge\nkind: view\n*/\nSELECT * FROM orders\n"
    )
    write_deltalake(str(root / "lakehouse" / "orders"), ORDERS)


def test_cli_init_validate_and_ls(tmp_path: Path) -> None:
    make_shop(tmp_path)
    result = run_cli(tmp_path, "init", "orders")
    assert result.exit_code == 0, result.output
    target = tmp_path / "contracts" / "orders.yml"
    drafted = load_contract(target)
    assert drafted.id == "urn:lakeforge:shop:orders" and drafted.owner == "sales-data"
    assert drafted.objects[0].primary_key == ["order_id"]

    again = run_cli(tmp_path, "init", "orders")
    assert again.exit_code == 1 and "already exists" in again.output and "--force" in again.output
    assert run_cli(tmp_path, "init", "orders", "--force").exit_code == 0
    elsewhere = run_cli(tmp_path, "init", "orders", "--output", str(tmp_path / "o.yml"))
    assert elsewhere.exit_code == 1 and "already has a contract" in elsewhere.output
    assert run_cli(tmp_path, "init", "recent").exit_code == 1  # a view

    validated = run_cli(tmp_path, "validate")
    assert validated.exit_code == 0, validated.output
    assert "1 contract valid, binding 1 dataset" in validated.stdout

    listed = run_cli(tmp_path, "ls", "--json")
    assert listed.exit_code == 0
    (row,) = json.loads(listed.stdout)
    assert (row["file"], row["datasets"], row["status"]) == (
        "contracts/orders.yml",
        ["orders"],
        "draft",
    )

    stray = copy.deepcopy(BASE)
    stray.update(id="urn:t:x", schema=[{"name": "customers"}], slaProperties=[])
    write_contract(tmp_path / "contracts" / "customers.yml", stray)
    failed = run_cli(tmp_path, "validate")
    assert failed.exit_code == 1
    assert "contracts/customers.yml:" in failed.output and "'customers'" in failed.output
