"""Drafting a contract from a live table: profile it, then describe what was declared and
observed as ODCS v3 YAML to review and commit.
"""

from __future__ import annotations

import json
import re
from typing import TYPE_CHECKING, Any

from lakeforge.engines.connection import connect
from lakeforge.quality.contracts.column_types import logical_type_of, type_family
from lakeforge.quality.contracts.model import API_VERSION

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.graph.spec import DatasetConfig
    from lakeforge.storage.delta import PinnedTable


def profile_table(pinned_table: PinnedTable) -> dict[str, Any]:
    """Row count, and per column its DuckDB type, NULL count and distinct count, from one
    aggregate query over a pinned table.

    Returns:
        ``{"version": v, "rows": n, "columns": {name: {"type", "nulls", "distinct"}}}``;
        ``distinct`` is None for STRUCT/MAP/LIST columns.
    """
    from sqlglot import exp

    from lakeforge.engines.duckdb import register_table

    con = connect()
    try:
        register_table(con, "profiled", pinned_table)
        probe = con.sql("SELECT * FROM profiled LIMIT 0")
        names, types = probe.columns, [str(t) for t in probe.types]
        select: list[Any] = [exp.alias_(exp.Count(this=exp.Star()), "n")]
        for i, (name, type_name) in enumerate(zip(names, types, strict=True)):
            col = exp.column(name, quoted=True)
            select.append(exp.alias_(exp.Count(this=col.copy()), f"c{i}"))
            if type_family(type_name) not in ("object", "array"):
                distinct = exp.Count(this=exp.Distinct(expressions=[col.copy()]))
                select.append(exp.alias_(distinct, f"d{i}"))
        query = exp.select(*select).from_(exp.to_identifier("profiled"))
        result = con.sql(query.sql("duckdb"))
        row = dict(zip(result.columns, result.fetchall()[0], strict=True))
    finally:
        con.close()
    rows = int(row["n"])
    return {
        "version": pinned_table.version,
        "rows": rows,
        "columns": {
            name: {
                "type": type_name,
                "nulls": rows - int(row[f"c{i}"]),
                "distinct": None if f"d{i}" not in row else int(row[f"d{i}"]),
            }
            for i, (name, type_name) in enumerate(zip(names, types, strict=True))
        },
    }


def arrow_duckdb_types(arrow_schema: pa.Schema) -> dict[str, str]:
    """Column → DuckDB type name, as DuckDB reads an Arrow schema."""

    con = connect()
    try:
        rel = con.from_arrow(arrow_schema.empty_table())
        return {name: str(t) for name, t in zip(rel.columns, rel.types, strict=True)}
    finally:
        con.close()


def draft_contract(
    dataset_name: str,
    arrow_schema: pa.Schema,
    stats: dict[str, Any],
    dataset_config: DatasetConfig,
    *,
    project: str = "lakeforge",
) -> str:
    """ODCS v3 YAML describing a live table, to review and commit as a contract.

    Types come from the table (``logicalType`` + ``physicalType``); descriptions, PII and
    the owner from the dataset's declaration. PII columns get ``classification:
    restricted``; other columns get none (Lakeforge cannot know a column is public). A
    column is ``required`` when it is declared non-nullable or no NULL was observed in a
    non-empty table, ``unique`` when a single integer or string column held as many
    distinct values as rows (two rows or more), and a merge key is the primary key. What
    was observed rather than declared is marked in a comment. The draft starts at
    ``status: draft``, version 0.1.0, id ``urn:lakeforge:<project>:<dataset>``.
    """
    from lakeforge.graph.spec import Merge

    types = arrow_duckdb_types(arrow_schema)
    rows = int(stats.get("rows", 0))
    column_stats: dict[str, dict[str, Any]] = stats.get("columns", {})
    keys = list(dataset_config.write.keys) if isinstance(dataset_config.write, Merge) else []
    comments: dict[tuple[str | int, ...], str] = {}
    properties: list[dict[str, Any]] = []
    for j, name in enumerate(arrow_schema.names):
        path = ("schema", 0, "properties", j)
        spec = dataset_config.columns.get(name)
        seen = column_stats.get(name, {})
        type_name = types[name]
        prop: dict[str, Any] = {"name": name}
        logical = logical_type_of(type_name)
        if logical:
            prop["logicalType"] = logical
        prop["physicalType"] = type_name
        if spec and spec.description:
            prop["description"] = spec.description
        if name in keys:
            prop["primaryKey"] = True
            prop["primaryKeyPosition"] = keys.index(name) + 1
            comments[(*path, "primaryKey")] = "declared: a merge key"
        nulls = seen.get("nulls")
        if spec is not None and not spec.nullable:
            prop["required"] = True
            comments[(*path, "required")] = "declared: nullable: false"
        elif rows > 0 and nulls == 0:
            prop["required"] = True
            comments[(*path, "required")] = f"observed: no NULL in {rows:,} rows"
        distinct = seen.get("distinct")
        if (
            rows >= 2
            and distinct == rows
            and nulls == 0
            and type_family(type_name) in ("integer", "string")
            and keys != [name]
        ):
            prop["unique"] = True
            comments[(*path, "unique")] = f"observed: {distinct:,} distinct values in {rows:,} rows"
        if spec is not None and spec.pii:
            prop["classification"] = "restricted"
            comments[(*path, "classification")] = "declared: pii"
        properties.append(prop)
    obj: dict[str, Any] = {"name": dataset_name, "physicalType": "table"}
    if dataset_config.description:
        obj["description"] = dataset_config.description
    obj["properties"] = properties
    doc: dict[str, Any] = {
        "apiVersion": API_VERSION,
        "kind": "DataContract",
        "id": f"urn:lakeforge:{project}:{dataset_name}",
        "name": dataset_name,
        "version": "0.1.0",
        "status": "draft",
    }
    if dataset_config.description:
        doc["description"] = {"purpose": dataset_config.description}
    if dataset_config.owner:
        doc["team"] = {"name": dataset_config.owner}
    if dataset_config.tags:
        doc["tags"] = list(dataset_config.tags)
    doc["schema"] = [obj]
    version = stats.get("version")
    header = [
        f"# Data contract for {dataset_name} (ODCS {API_VERSION}), drafted by "
        f"`lakeforge contract init` from the table"
        + (f" at version {version}" if version is not None else "")
        + f" ({rows:,} rows).",
        "# 'observed' facts held for that data only: keep the ones you promise, then set",
        "# status: active and version 1.0.0.",
    ]
    return "\n".join([*header, *_emit_yaml(doc, 0, (), comments)]) + "\n"


_PLAIN = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_ .:/@-]*$")


def _scalar(value: Any) -> str:
    if isinstance(value, bool) or value is None:
        return json.dumps(value)
    if isinstance(value, int | float):
        return str(value)
    text = str(value)
    if _PLAIN.match(text) and ": " not in text and not text.endswith((":", " ")):
        import yaml

        if yaml.safe_load(text) == text:
            return text
    return json.dumps(text, ensure_ascii=False)


def _emit_yaml(
    value: Any, indent: int, path: tuple[str | int, ...], comments: dict[tuple[str | int, ...], str]
) -> list[str]:
    pad = " " * indent
    lines: list[str] = []
    if isinstance(value, dict):
        for key, item in value.items():
            sub = (*path, key)
            note = f"  # {comments[sub]}" if sub in comments else ""
            nested = isinstance(item, list) and bool(item) and isinstance(item[0], dict)
            if (isinstance(item, dict) and item) or nested:
                lines.append(f"{pad}{key}:{note}")
                lines += _emit_yaml(item, indent + 2, sub, comments)
            elif isinstance(item, list):
                lines.append(f"{pad}{key}: [{', '.join(_scalar(v) for v in item)}]{note}")
            else:
                lines.append(f"{pad}{key}: {_scalar(item)}{note}")
        return lines
    for i, item in enumerate(value):
        inner = _emit_yaml(item, indent + 2, (*path, i), comments)
        lines.append(f"{pad}- {inner[0].lstrip()}")
        lines += inner[1:]
    return lines
