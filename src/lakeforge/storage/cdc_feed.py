"""A change feed as the ``cdc`` write strategy sees it: the configuration resolved against a
batch's columns, the delete/truncate flags and the checks every batch must pass before
anything is written (see :mod:`lakeforge.storage.cdc_apply`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import sqlglot
from sqlglot import exp

from lakeforge.engines import connection
from lakeforge.engines.duckdb import fetch_arrow
from lakeforge.errors import ConfigError, DataError, SchemaError
from lakeforge.graph.spec import CDC, Dataset
from lakeforge.storage.write import q

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

# Columns flags_sql adds: the record is a delete / a truncate.
IS_DELETE, IS_TRUNCATE = "__lf_d", "__lf_t"


@dataclass(frozen=True)
class Feed:
    """A CDC configuration resolved against the columns of a batch."""

    keys: list[str]
    seq: str
    columns: list[str]  # written to the table, in feed order
    values: list[str]  # columns other than keys and seq
    tracked: list[str]
    delete: str  # DuckDB boolean expressions ("FALSE": never)
    truncate: str


def resolve_feed(ds: Dataset, c: CDC, names: list[str]) -> Feed:
    """Check that the columns ``c`` names exist in ``names``; the columns written etc."""
    _require(ds, names, [*c.keys, c.sequence_by], "cdc")
    op_used = c.op_column is not None and (c.delete_when is None or c.truncate_when is None)
    if op_used:
        assert c.op_column is not None
        _require(
            ds,
            names,
            [c.op_column],
            "op_column",
            hint="name the column holding the operation (op_column), or set op_column: null "
            "when every record is an upsert",
        )
    if c.except_columns is not None:
        _require(ds, names, c.except_columns, "except_columns")
        dropped = set(c.except_columns)
    else:
        dropped = {c.op_column} if c.op_column is not None else set()
    if c.unchanged_column is not None:
        dropped.add(c.unchanged_column)  # read by apply_changes, never written
    columns = [n for n in names if n not in dropped]
    if c.scd_type == 2:
        clash = [b for b in (c.valid_from, c.valid_to, c.is_current) if b in columns]
        if clash:
            raise SchemaError(
                f"the change feed already has SCD2 bookkeeping column(s) {', '.join(clash)}",
                dataset=ds.name,
                column=clash[0],
                location=ds.location,
                hint="add it to except_columns, or rename the bookkeeping columns with "
                "valid_from/valid_to/is_current",
            )
    values = [n for n in columns if n not in c.keys and n != c.sequence_by]
    tracked = list(c.track_columns) if c.track_columns is not None else values
    missing_hint = None
    if any(t in dropped for t in tracked):
        missing_hint = "a tracked column cannot also be in except_columns"
    _require(ds, columns, tracked, "track_columns", hint=missing_hint)
    op = c.op_column
    return Feed(
        keys=list(c.keys),
        seq=c.sequence_by,
        columns=columns,
        values=values,
        tracked=tracked,
        delete=_condition(ds, "delete_when", c.delete_when, op, ("d", "D")),
        truncate=_condition(ds, "truncate_when", c.truncate_when, op, ("t", "T")),
    )


def _require(
    ds: Dataset, names: list[str], wanted: list[str], role: str, hint: str | None = None
) -> None:
    for col in wanted:
        if col not in names:
            raise SchemaError(
                f"{role} column {col!r} is not in the output",
                dataset=ds.name,
                column=col,
                expected=col,
                found=", ".join(names) or "no columns",
                location=ds.location,
                hint=hint,
            )


def _condition(
    ds: Dataset, field: str, text: str | None, op: str | None, ops: tuple[str, str]
) -> str:
    if text is None:
        if op is None:
            return "FALSE"
        return exp.column(op, quoted=True).isin(*ops).sql("duckdb")
    try:
        tree = sqlglot.parse_one(text, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ConfigError(
            f"{field} does not parse: "
            + str(exc.errors[0].get("description") if exc.errors else exc),
            dataset=ds.name,
            location=ds.location,
            hint="a SQL condition over the feed's columns, e.g. op = 'd'",
        ) from None
    return tree.sql("duckdb")


def connect(data: pa.Table) -> duckdb.DuckDBPyConnection:

    con = connection.connect(threads=2)
    # Tombstone keys are the key as JSON text: timestamps must render the same on every machine.
    con.execute("SET TimeZone = 'UTC'")
    con.register("batch", data)
    return con


def check_conditions(con: duckdb.DuckDBPyConnection, ds: Dataset, c: CDC, feed: Feed) -> None:
    import duckdb

    for field, sql in (("delete_when", feed.delete), ("truncate_when", feed.truncate)):
        try:
            types = [str(t) for t in con.sql(f"SELECT ({sql}) FROM batch").types]
        except duckdb.Error as exc:
            raise ConfigError(
                f"{field} does not run on the change feed: {str(exc).splitlines()[0]}",
                dataset=ds.name,
                location=ds.location,
                hint="a SQL condition over the feed's columns, e.g. op = 'd'",
            ) from None
        if types[0] not in ("BOOLEAN", '"NULL"'):
            raise ConfigError(
                f"{field} must be a condition (BOOLEAN), found {types[0]}: {sql}",
                dataset=ds.name,
                location=ds.location,
                expected="BOOLEAN",
                found=types[0],
                hint="compare the operation column, e.g. op = 'd'",
            )


def flags_sql(feed: Feed, batch: str) -> str:
    """The batch with ``__lf_t`` (a truncate) and ``__lf_d`` (a delete) flags."""
    trunc = f"coalesce(({feed.truncate}), false)"
    delete = f"NOT {trunc} AND coalesce(({feed.delete}), false)"
    return f"SELECT *, {trunc} AS {IS_TRUNCATE}, {delete} AS {IS_DELETE} FROM {batch}"


def check_records(con: duckdb.DuckDBPyConnection, ds: Dataset, feed: Feed) -> None:
    s = q(feed.seq)
    null_key = " OR ".join(f"{q(k)} IS NULL" for k in feed.keys)
    counts = con.execute(
        f"SELECT count(*) FILTER (WHERE {s} IS NULL), "
        f"count(*) FILTER (WHERE NOT {IS_TRUNCATE} AND ({null_key})) FROM b"
    ).fetchall()[0]
    if counts[0]:
        raise DataError(
            f"{counts[0]} change record(s) have a null sequence_by value ({feed.seq})",
            dataset=ds.name,
            column=feed.seq,
            location=ds.location,
            expected="non-null sequence values",
            found=f"{counts[0]} null",
            hint="every change needs its position in the feed (an LSN, a commit time): fill "
            "or filter them upstream",
        )
    if counts[1]:
        raise DataError(
            f"{counts[1]} change record(s) have a null key ({', '.join(feed.keys)})",
            dataset=ds.name,
            column=feed.keys[0],
            location=ds.location,
            expected="non-null keys (only a truncate may have none)",
            found=f"{counts[1]} null",
            hint="filter or fix them upstream (a null key cannot be matched)",
        )
    keys = ", ".join(q(k) for k in [*feed.keys, feed.seq])
    con.execute(
        f"CREATE TEMP TABLE __lf_ties AS SELECT {keys} FROM b WHERE NOT {IS_TRUNCATE} "
        "GROUP BY ALL HAVING count(*) > 1"
    )
    if not con.execute("SELECT count(*) FROM __lf_ties").fetchall()[0][0]:
        return
    # Identical records (a replayed change) are one change; different ones are ambiguous.
    found = fetch_arrow(
        con,
        f"SELECT {keys}, count(*) AS n FROM (SELECT DISTINCT b.* FROM b "
        f"SEMI JOIN __lf_ties USING ({keys})) GROUP BY ALL HAVING count(*) > 1 "
        "ORDER BY n DESC LIMIT 3",
    )
    if not found.num_rows:
        return
    names = [*feed.keys, feed.seq]
    rows = list(zip(*(col.to_pylist() for col in found.columns), strict=True))
    examples = "; ".join(
        ", ".join(f"{k}={v!r}" for k, v in zip(names, r, strict=False)) + f" ({r[-1]} records)"
        for r in rows
    )
    raise DataError(
        f"different change records share a key and {feed.seq}: {examples}",
        dataset=ds.name,
        column=feed.seq,
        location=ds.location,
        expected=f"one change per key and {feed.seq}",
        found="conflicting records",
        hint=f"{feed.seq} must order the changes of a key: use a finer sequence (an LSN, or "
        "commit time plus the position in the transaction)",
    )


def match_sql(feed: Feed, left: str, right: str) -> str:
    """``left.k = right.k AND …`` over the keys."""
    return " AND ".join(f"{left}.{q(k)} = {right}.{q(k)}" for k in feed.keys)
