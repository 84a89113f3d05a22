"""Key reconciliation of the SQL source: find the rows deleted in the database.

An incremental load follows a cursor and never sees a row that was deleted. With
``reconcile: {every: 1d}`` the source, when a reconcile is due, reads every primary key the
source has now (the key columns only, streamed in chunks), compares them in DuckDB with the
keys of the dataset's own table (an anti-join), and yields one batch of *tombstones*: the
table's last-known row of each key that is gone, with ``_lf_deleted = true``. The write
decides what a tombstone does: ``merge`` on the key flags the row (a soft delete), ``merge``
with ``delete_when: _lf_deleted`` deletes it, ``append`` appends the tombstone. Every batch
of a reconciled source carries ``_lf_deleted`` (false for rows read normally), so the
column exists from the first commit.

A reconcile runs before the run's incremental batches, against the table as the task found
it, so the run's batches carry the reconcile time in their state. A key already flagged in
the table is not flagged again, and a reconcile that finds nothing yields nothing: a rerun
with nothing changed makes no commit (the time of a clean reconcile is then recorded by the
next batch that has something to commit).
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Iterable
from typing import TYPE_CHECKING

from pydantic import BaseModel, ConfigDict, field_validator

from lakeforge.engines.connection import connect
from lakeforge.errors import SourceError

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.storage.delta import PinnedTable

DELETED = "_lf_deleted"
KEY_CHUNK_ROWS = 100_000  # keys per fetch from the source


class ReconcileConfig(BaseModel):
    """``reconcile: {every: 1d}``: how often the source's keys are compared with the table's.

    Args:
        every: a duration (``12h``, ``1d``; a number is seconds); ``0`` reconciles on every
            run.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    every: str | float = "1d"

    @field_validator("every")
    @classmethod
    def _a_duration(cls, value: str | float) -> str | float:
        from lakeforge.quality.spec import parse_duration

        if parse_duration(value) < 0:
            raise ValueError("reconcile every must not be negative")
        return value

    @property
    def seconds(self) -> float:
        from lakeforge.quality.spec import parse_duration

        return parse_duration(self.every)


def clock() -> dt.datetime:
    """Now, in UTC (tests replace it to move time without sleeping)."""
    return dt.datetime.now(dt.UTC)


def is_due(config: ReconcileConfig, last: str | None, now: dt.datetime) -> bool:
    """Whether a reconcile is due ``now``, the last one having been at ``last`` (ISO)."""
    if last is None:
        return True
    return (now - dt.datetime.fromisoformat(last)).total_seconds() >= config.seconds


def flag(data: pa.Table, deleted: bool) -> pa.Table:
    """``data`` with its ``_lf_deleted`` column set to ``deleted``."""
    import pyarrow as pa

    column = pa.array([deleted] * data.num_rows, pa.bool_())
    if DELETED in data.column_names:
        return data.set_column(data.column_names.index(DELETED), DELETED, column)
    return data.append_column(DELETED, column)


def gone_rows(
    dataset: str,
    target: PinnedTable,
    source_keys: Iterable[pa.Table],
    keys: list[str],
    cursor: str | None,
) -> pa.Table:
    """Tombstones: the table's last-known row of each key that the source no longer has.

    Args:
        dataset: the dataset (for errors).
        target: the dataset's table.
        source_keys: the source's current keys, in chunks (columns ``keys``).
        keys: the primary key columns (same names in the source and the table).
        cursor: the cursor column: among several rows of a key (an append write), the one
            with the greatest cursor is the last-known one.

    Rows with a NULL key are never matched, so never reported. A key whose last-known row is
    already flagged deleted is left alone; source keys are cast to the table's key types.
    """

    from lakeforge.engines.duckdb import register_table

    con = connect()
    try:
        register_table(con, "lf_target", target)
        types = {name: typ for name, typ, *_ in con.execute("DESCRIBE lf_target").fetchall()}
        missing = [k for k in keys if k not in types]
        if missing:
            raise SourceError(
                f"{dataset}: reconcile: the table has no column {missing[0]!r} of the primary "
                "key, so deleted rows cannot be matched",
                dataset=dataset,
                column=missing[0],
                hint="keep the primary key columns (and _lf_deleted) in the transform's output",
            )
        cols = ", ".join(_q(k) for k in keys)
        con.execute(
            "CREATE TEMP TABLE lf_keys (" + ", ".join(f"{_q(k)} {types[k]}" for k in keys) + ")"
        )
        casts = ", ".join(f"TRY_CAST({_q(k)} AS {types[k]})" for k in keys)
        for chunk in source_keys:
            con.register("lf_chunk", chunk)
            con.execute(f"INSERT INTO lf_keys SELECT {casts} FROM lf_chunk")
            con.unregister("lf_chunk")
        flagged = f"coalesce({_q(DELETED)}, false)" if DELETED in types else "false"
        newest = f"{_q(cursor)} DESC NULLS LAST, " if cursor and cursor in types else ""
        on = " AND ".join(f"t.{_q(k)} = s.{_q(k)}" for k in keys)
        not_null = " AND ".join(f"t.{_q(k)} IS NOT NULL" for k in keys)
        # Anti-join first (cheap, hash join), then pick each gone key's last-known row: with
        # an append write a key has several, and a tombstone ties with the row it flags.
        sql = f"""
            WITH gone AS (
                SELECT t.* FROM lf_target AS t ANTI JOIN lf_keys AS s ON {on}
                WHERE {not_null}
            ), ranked AS (
                SELECT *, row_number() OVER (
                    PARTITION BY {cols} ORDER BY {newest}{flagged} DESC
                ) AS __lf_rank
                FROM gone
            )
            SELECT * EXCLUDE (__lf_rank) FROM ranked WHERE __lf_rank = 1 AND NOT {flagged}
        """
        rows = con.sql(sql).to_arrow_table()
    finally:
        con.close()
    return flag(rows, True)


def _q(name: str) -> str:
    from sqlglot import exp

    return exp.to_identifier(name, quoted=True).sql("duckdb")
