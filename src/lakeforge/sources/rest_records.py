"""Records of REST pages: who a record is, and records as Arrow with their declared types.

- **Identity** (:func:`record_id`): the ``incremental.key`` field(s) of a record as JSON,
  or, without a key, a hash of the record's canonical JSON (sorted keys) — so a record
  changed in place is another record. It tells the records read at the incremental
  watermark from those not read yet.
- **Declared types** (``schema:``): column → DuckDB type, spelled and parsed as everywhere
  else in Lakeforge (the file source's ``columns`` reader option, contracts'
  ``physicalType``). Each record's declared fields are cast by DuckDB as ``read_json``
  casts JSON values (``"12"`` and ``12`` to ``INTEGER``, ISO 8601 text to ``TIMESTAMP``; a
  ``STRUCT`` must have exactly its declared keys). A record whose value does not cast, or
  that lacks a ``required`` field, is a dead letter (raw JSON, error, page URL, index in
  the page); the others go on. Undeclared fields are kept, their types inferred.
- Without ``schema:`` types are inferred from every record (:func:`to_arrow`).
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

from lakeforge.engines.connection import connect

MISSING = object()
_FOUND = 80  # characters of a value shown in an error
_REASON = 160  # characters of DuckDB's reason shown in an error

# (raw bytes, error, origin, line): a row of ``dead_letters.rejects``
Reject = tuple[bytes | None, str, str, int | None]
# (record, origin, line): a record and where it came from
Entry = tuple[dict[str, Any], str, int]


def at_path(body: Any, path: str) -> Any:
    """The value at a dot path (``data.items``, ``meta.0.next``), or ``MISSING``."""
    value = body
    for part in path.split("."):
        if isinstance(value, dict) and part in value:
            value = value[part]
        elif isinstance(value, list) and part.isdigit() and int(part) < len(value):
            value = value[int(part)]
        else:
            return MISSING
    return value


def canonical_json(value: Any) -> str:
    """JSON with sorted keys and no spaces: equal records, equal text (any int size)."""
    return json.dumps(value, sort_keys=True, separators=(",", ":"), ensure_ascii=False)


def record_id(record: dict[str, Any], key: list[str]) -> str:
    """Who ``record`` is: its ``key`` field(s) as JSON, or a hash of its content (no key, or
    a key field missing)."""
    if key:
        values = [at_path(record, k) for k in key]
        if all(v is not MISSING for v in values):
            return "k:" + canonical_json(values[0] if len(values) == 1 else values)
    return "h:" + hashlib.sha256(canonical_json(record).encode()).hexdigest()[:32]


def declared_types(schema: dict[str, str]) -> dict[str, str]:
    """Column → DuckDB's spelling of its type; ValueError for a type DuckDB does not know."""
    from lakeforge.quality.contracts.column_types import canonical_type

    types = {}
    for name, text in schema.items():
        try:
            types[name] = canonical_type(text)
        except ValueError as exc:
            reason = str(exc).removeprefix("physicalType ")
            raise ValueError(f"schema: column {name!r}: {reason}") from None
    return types


def read_records(
    entries: list[Entry], types: dict[str, str], required: list[str]
) -> tuple[Any, list[Reject]]:
    """(the records as Arrow, the rejected ones) — with ``types`` and ``required`` applied."""
    rejected: list[Reject] = []
    kept: list[Entry] = []
    for entry in entries:
        lacking = [f for f in required if entry[0].get(f) is None]
        if lacking:
            error = ", ".join(repr(f) for f in lacking) + " required, missing or null"
            rejected.append(_reject(entry, error))
        else:
            kept.append(entry)
    if not types:
        return to_arrow([record for record, _, _ in kept]), rejected
    import duckdb
    import pyarrow as pa

    con = connect()
    try:
        good = kept
        try:
            table = _cast(con, [r for r, _, _ in kept], types)
        except duckdb.Error:  # some records do not cast: find them, cast the others
            failed = _failures(con, [r for r, _, _ in kept], types)
            good = [e for i, e in enumerate(kept) if i not in failed]
            rejected += [_reject(kept[i], error) for i, error in sorted(failed.items())]
            table = _cast(con, [r for r, _, _ in good], types)
    finally:
        con.close()
    rest = [{k: v for k, v in r.items() if k not in types} for r, _, _ in good]
    if any(rest):
        inferred = to_arrow(rest)
        for name in inferred.column_names:
            table = table.append_column(name, inferred.column(name))
    assert isinstance(table, pa.Table)
    return table, rejected


def _reject(entry: Entry, error: str) -> Reject:
    record, origin, line = entry
    return (json.dumps(record, ensure_ascii=False).encode(), error, origin, line)


def _struct(types: dict[str, str]) -> str:
    from sqlglot import exp

    fields = (f"{exp.to_identifier(n, quoted=True).sql('duckdb')} {t}" for n, t in types.items())
    return "STRUCT(" + ", ".join(fields) + ")"


def _run(con: Any, records: list[dict[str, Any]], types: dict[str, str]) -> Any:
    """The declared fields of ``records`` cast to ``types`` (raises duckdb.Error)."""
    import pyarrow as pa

    # Every declared key, null when absent: a STRUCT cast of JSON wants them all.
    texts = [json.dumps({n: r.get(n) for n in types}, ensure_ascii=False) for r in records]
    con.register("lf_records", pa.table({"i": range(len(texts)), "r": pa.array(texts)}))
    try:
        sql = f"SELECT CAST(CAST(r AS JSON) AS {_struct(types)}) AS r FROM lf_records ORDER BY i"
        column = con.execute(sql).to_arrow_table().column("r").combine_chunks()
    finally:
        con.unregister("lf_records")
    return pa.Table.from_struct_array(column)


def _cast(con: Any, records: list[dict[str, Any]], types: dict[str, str]) -> Any:
    if records:
        return _run(con, records, types)
    return _run(con, [{}], types).slice(0, 0)  # no rows, the declared columns


def _failures(con: Any, records: list[dict[str, Any]], types: dict[str, str]) -> dict[int, str]:
    """Index → why, for the records that do not cast: the whole list in one query, and on
    failure halves of it, down to the records at fault."""
    import duckdb

    def search(indices: list[int]) -> dict[int, str]:
        try:
            _run(con, [records[i] for i in indices], types)
            return {}
        except duckdb.Error:
            if len(indices) > 1:
                half = len(indices) // 2
                return {**search(indices[:half]), **search(indices[half:])}
        return {indices[0]: _why(con, records[indices[0]], types)}

    return search(list(range(len(records)))) if records else {}


def _why(con: Any, record: dict[str, Any], types: dict[str, str]) -> str:
    """Which declared fields of ``record`` do not cast: field, expected type, value found."""
    import duckdb

    problems = []
    for name, typ in types.items():
        try:
            _run(con, [record], {name: typ})
        except duckdb.Error as exc:
            reason = str(exc).splitlines()[0].split("Error: ", 1)[-1]
            problems.append(
                f"column {name!r}: expected {typ}, found {_excerpt(record.get(name))} "
                f"({_shorten(reason, _REASON)})"
            )
    return "; ".join(problems) or "the record does not cast to the declared schema"


def _excerpt(value: Any) -> str:
    return _shorten(json.dumps(value, ensure_ascii=False), _FOUND)


def _shorten(text: str, size: int) -> str:
    return text if len(text) <= size else text[: size - 1] + "…"


def to_arrow(records: list[dict[str, Any]]) -> Any:
    """Records as Arrow: the columns of every record (not just the first), nested values as
    structs and lists; columns whose types clash become text (``dead_letters.unify``), and
    columns that are only ever null are strings (Delta has no null type)."""
    import pyarrow as pa

    from lakeforge.sources.dead_letters import unify

    if not records:
        return pa.table({})
    try:
        table = pa.Table.from_struct_array(pa.array(records))
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        table = unify([pa.Table.from_struct_array(pa.array([r])) for r in records])
    for i, fld in enumerate(table.schema):
        if pa.types.is_null(fld.type):
            table = table.set_column(i, fld.name, table.column(i).cast(pa.string()))
    return table
