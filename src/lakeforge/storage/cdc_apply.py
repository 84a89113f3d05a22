"""AUTO-CDC apply: a change feed applied to a table of current rows (SCD1) or of versions (SCD2).

A change record carries a key, a sequence value (``sequence_by``: an LSN, a commit time) and an
operation: an upsert, a delete (``delete_when``) or a truncate of the whole table
(``truncate_when``, its key may be NULL). Records may arrive out of order, more than once and
in any batching. One rule orders everything: **a change applies only if its sequence is
greater than everything already applied to its key** — the key's row (SCD1) or versions
(SCD2), the key's last delete and the last truncate. So an older change never overwrites a
newer one and a replayed change is a no-op. Within one batch, identical records are one
record and two different records of a key with the same sequence are an error (ambiguous).

Deletes and truncates leave nothing in the table to compare a late change with, so they are
remembered as **tombstones** in a side table, ``<dataset>__cdc_tombstones``: one row per
deleted key (``_lf_key`` = the key as JSON, the key columns, ``_lf_seq`` = the delete's
sequence) and one truncate watermark (``_lf_key = ''``, ``_lf_kind = 'truncate'``). A batch
commits in this order:

1. the tombstone table (only when it changes): the batch's deletes and truncate are upserted
   (greatest sequence wins), tombstones older than a new truncate or than
   ``tombstone_retention`` are purged. It comes first so a published delete is always
   remembered; tombstones are facts about the feed, so an attempt that dies after this step
   leaves only true ones, and its replay writes the same ones again.
2. the dataset: exactly one ``MERGE`` carrying the batch's app transaction and metadata (an
   empty commit when nothing changed, so the batch is still recorded).
3. the tombstone table, when the dataset's commit has landed: tombstones of keys this batch
   wrote again with a newer change are dropped (the row now orders later changes). A crash
   before this step leaves a redundant tombstone, never a missing one.

The table therefore holds at most one tombstone per key currently deleted, plus the
watermark.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lakeforge.engines import connection
from lakeforge.engines.duckdb import fetch_arrow, register_table
from lakeforge.errors import ConfigError
from lakeforge.graph.spec import CDC, RESCUE_COLUMN, Dataset
from lakeforge.storage.cdc_feed import (
    IS_DELETE,
    IS_TRUNCATE,
    Feed,
    check_conditions,
    check_records,
    connect,
    flags_sql,
    match_sql,
    resolve_feed,
)
from lakeforge.storage.cdc_history import applied_changes_sql, events_sql, versions_sql
from lakeforge.storage.cdc_tombstones import (
    SEQ_COL,
    deleted_by_key_sql,
    empty_tombstones_sql,
    forget_tombstones,
    load_tombstones,
    record_tombstones,
    register_tombstones,
    tombstone_changes,
    tombstone_table,
    watermark_sql,
)
from lakeforge.storage.delta import CommitInfo, DeltaStore, translate_commit_errors
from lakeforge.storage.schema import align, normalize_for_delta
from lakeforge.storage.write import WriteResult, q

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

__all__ = ["CdcScope", "apply_changes", "cdc_scope", "table_after_cdc_sql", "tombstone_table"]

# Working columns: the ignore_null_updates reset point, SCD2 merge keys.
_RESET, _MK = "__lf_reset", "__lf_mk_"


def apply_changes(
    store: DeltaStore,
    ds: Dataset,
    c: CDC,
    data: pa.Table,
    info: CommitInfo,
    target_version: int | None,
    now: datetime,
) -> WriteResult:
    """Apply a batch of change records to ``ds`` (one commit; see the module docstring)."""
    data = normalize_for_delta(data, ds.name)
    data = _fill_unchanged(store, ds, c, data, target_version)
    feed = resolve_feed(ds, c, data.column_names)
    con = connect(data)
    try:
        check_conditions(con, ds, c, feed)
        con.execute(f"CREATE TEMP VIEW b AS {flags_sql(feed, 'batch')}")
        check_records(con, ds, feed)
        fresh = target_version is None
        load_tombstones(con, store, ds.name, feed, fresh)
        con.execute(f"CREATE TEMP TABLE __lf_w AS {watermark_sql(feed, 'b', '__lf_tomb')}")
        new_truncate = bool(con.execute("SELECT __lf_new FROM __lf_w").fetchall()[0][0])
        if target_version is not None:
            register_table(con, "__lf_target", store.read(ds.name, target_version))
        if c.scd_type == 1:
            plan = _plan_scd1(con, ds, c, feed, fresh, new_truncate)
        else:
            plan = _plan_scd2(con, ds, c, feed, fresh, new_truncate)
        last = _last_change_sql(feed, c)
        puts, purges, superseded = tombstone_changes(con, feed, c, now, new_truncate, fresh, last)
    finally:
        con.close()
    record_tombstones(store, ds, info, now, puts, purges, fresh)
    if plan.mode == "scd1":
        result = _commit_scd1(store, ds, c, feed, plan, info, target_version)
    else:
        result = _commit_scd2(store, ds, c, feed, plan, info, target_version)
    if superseded.num_rows and not fresh:
        forget_tombstones(store, ds, info, superseded)
    return result


def _fill_unchanged(
    store: DeltaStore, ds: Dataset, c: CDC, data: pa.Table, target_version: int | None
) -> pa.Table:
    """Changes that did not carry some values (``unchanged_column`` lists them, e.g. TOAST
    values a Postgres update left alone) take them from the key's row in the table (SCD2:
    its current version); the list column is dropped."""
    column = c.unchanged_column
    if column is None or column not in data.column_names:
        return data
    changes, data = data, data.drop_columns([column])
    if target_version is None or not any(changes.column(column).to_pylist()):
        return data
    schema = store.schema(ds.name, target_version)
    names = set(schema.names) if schema is not None else set()
    fillable = [n for n in data.column_names if n in names and n not in c.keys]
    if not fillable:
        return data
    from sqlglot import exp

    con = connection.connect(threads=2)
    try:
        con.register("__lf_changes", changes)
        register_table(con, "__lf_rows", store.read(ds.name, target_version))
        rows = "__lf_rows"
        if c.scd_type == 2 and c.is_current in names:
            rows = f"(SELECT * FROM __lf_rows WHERE {q(c.is_current)})"
        filled = ", ".join(
            f"CASE WHEN list_contains(u.{q(column)}, {exp.Literal.string(n).sql('duckdb')}) "
            f"THEN t.{q(n)} ELSE u.{q(n)} END AS {q(n)}"
            for n in fillable
        )
        on = " AND ".join(f"u.{q(k)} IS NOT DISTINCT FROM t.{q(k)}" for k in c.keys)
        sql = (
            f"SELECT u.* EXCLUDE ({', '.join(q(n) for n in [*fillable, column])}), {filled} "
            f"FROM __lf_changes AS u LEFT JOIN {rows} AS t ON {on}"
        )
        out = fetch_arrow(con, sql)
    finally:
        con.close()
    return out.select(data.column_names).cast(data.schema)


# ---------------------------------------------------------------------------------------------
# SCD1: the newest change per key


def scd1_net_sql(
    feed: Feed, ignore_nulls: bool, b: str, w: str, tomb: str, target: str | None
) -> str:
    """Per key, the newest change that is not void (older than the key's tombstone or the
    truncate watermark). With ``ignore_nulls`` changes not newer than the key's row in
    ``target`` are dropped first, the NULLs of the newest are filled from the key's earlier
    changes since its last delete, and ``__lf_reset`` holds the newest delete/truncate that
    came before it (a target row older than that is no base for the NULLs). Without it, the
    merge compares with the row."""
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    live = (
        f"SELECT c.*, CASE WHEN w.__lf_new THEN w.__lf_wb END AS __lf_tw FROM {b} AS c "
        f"CROSS JOIN {w} AS w LEFT JOIN ({deleted_by_key_sql(feed, tomb)}) AS d "
        f"ON {match_sql(feed, 'c', 'd')} WHERE NOT c.{IS_TRUNCATE} "
        f"AND (w.__lf_w IS NULL OR c.{s} > w.__lf_w) "
        f"AND (d.{SEQ_COL} IS NULL OR c.{s} > d.{SEQ_COL})"
    )
    if ignore_nulls and target is not None:
        # A change the row already supersedes must not lend its values to a newer one.
        rows = f"SELECT {keys}, max({s}) AS __lf_rs FROM {target} GROUP BY ALL"
        live = (
            f"SELECT c.* FROM ({live}) AS c LEFT JOIN ({rows}) AS r ON {match_sql(feed, 'c', 'r')} "
            f"WHERE r.__lf_rs IS NULL OR c.{s} > r.__lf_rs"
        )
    newest = f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {s} DESC) = 1"
    if not ignore_nulls:
        return f"SELECT * EXCLUDE (__lf_tw) FROM ({live}) {newest}"
    filled = ", ".join(
        f"last_value(CASE WHEN NOT {IS_DELETE} THEN {q(v)} END IGNORE NULLS) OVER g AS {q(v)}"
        for v in feed.values
    )
    replace = f" REPLACE ({filled})" if filled else ""
    prior_delete = (
        f"max(CASE WHEN {IS_DELETE} THEN {s} END) OVER (PARTITION BY {keys} ORDER BY {s} "
        "ROWS BETWEEN UNBOUNDED PRECEDING AND 1 PRECEDING)"
    )
    return (
        f"SELECT * EXCLUDE (__lf_g, __lf_tw){replace}, greatest({prior_delete}, __lf_tw) "
        f"AS {_RESET} FROM (SELECT *, sum({IS_DELETE}::INT) OVER (PARTITION BY {keys} ORDER BY {s} "
        f"ROWS UNBOUNDED PRECEDING) AS __lf_g FROM ({live})) "
        f"WINDOW g AS (PARTITION BY {keys}, __lf_g ORDER BY {s} ROWS UNBOUNDED PRECEDING) {newest}"
    )


@dataclass
class _Plan:
    mode: str
    source: pa.Table  # rows to merge (or to write on a first build)
    stale: int  # change records not applied (older than what their key already has)


def _count(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    return int(con.execute(sql).fetchall()[0][0])


def _plan_scd1(
    con: duckdb.DuckDBPyConnection,
    ds: Dataset,
    c: CDC,
    feed: Feed,
    fresh: bool,
    new_truncate: bool,
) -> _Plan:
    con.execute(
        "CREATE TEMP TABLE __lf_net AS "
        + scd1_net_sql(
            feed,
            c.ignore_null_updates,
            "b",
            "__lf_w",
            "__lf_tomb",
            None if fresh else "__lf_target",
        )
    )
    cols = ", ".join(q(col) for col in feed.columns)
    internal = f"{IS_DELETE}" + (f", {_RESET}" if c.ignore_null_updates else "")
    # Void records: those the watermark or a tombstone voids (the merge skips the ones older
    # than their row without reporting them).
    s = q(feed.seq)
    distinct = ", ".join(f"c.{q(col)}" for col in [*feed.keys, feed.seq])
    stale = _count(
        con,
        f"SELECT count(DISTINCT ({distinct})) FROM b AS c CROSS JOIN __lf_w AS w LEFT JOIN "
        f"({deleted_by_key_sql(feed, '__lf_tomb')}) AS d ON {match_sql(feed, 'c', 'd')} "
        f"WHERE NOT c.{IS_TRUNCATE} AND (c.{s} <= w.__lf_w OR c.{s} <= d.{SEQ_COL})",
    )
    if fresh:
        rows = fetch_arrow(con, f"SELECT {cols} FROM __lf_net WHERE NOT {IS_DELETE}")
        return _Plan("scd1", rows, stale)
    sql = f"SELECT {cols}, {internal} FROM __lf_net"
    if new_truncate:
        # Every row older than the truncate goes, unless this batch writes its key anyway.
        keys = ", ".join(f"t.{q(k)}" for k in feed.keys)
        sql += (
            f" UNION ALL BY NAME SELECT {keys}, w.__lf_wb AS {s}, TRUE AS {IS_DELETE} "
            f"FROM __lf_target AS t CROSS JOIN __lf_w AS w WHERE coalesce(t.{s} < w.__lf_wb, true) "
            f"AND NOT EXISTS (SELECT 1 FROM __lf_net AS n WHERE {match_sql(feed, 'n', 't')})"
        )
    return _Plan("scd1", fetch_arrow(con, sql), stale)


def _commit_scd1(
    store: DeltaStore,
    ds: Dataset,
    c: CDC,
    feed: Feed,
    plan: _Plan,
    info: CommitInfo,
    target_version: int | None,
) -> WriteResult:
    internal = [IS_DELETE, _RESET] if c.ignore_null_updates else [IS_DELETE]
    if target_version is None:
        return _first_build(store, ds, plan, info)
    rows = plan.source.drop_columns(internal)
    aligned = align(
        rows, store.schema(ds.name, target_version), ds.config.schema_evolution, ds.name
    )
    if rows.num_rows == 0:
        version = store.commit_empty(ds.name, aligned.data.schema, info)
        return WriteResult(version=version, stale_records=plan.stale)
    source = aligned.data
    for name in internal:
        source = source.append_column(name, plan.source.column(name))
    s = q(feed.seq)
    newer = f"(t.{s} IS NULL OR t.{s} < s.{s})"
    table = store.open(ds.name, target_version)
    merger = table.merge(
        source,
        predicate=match_sql(feed, "t", "s"),
        source_alias="s",
        target_alias="t",
        merge_schema=aligned.schema_mode == "merge",
        commit_properties=store.commit_properties(info),
    ).when_matched_delete(predicate=f"s.{IS_DELETE} AND {newer}")
    if c.ignore_null_updates:
        # A NULL keeps the row's value, unless a delete or truncate came in between.
        kept_base = f"(s.{_RESET} IS NULL OR (t.{s} IS NOT NULL AND t.{s} >= s.{_RESET}))"
        updates = {
            col: f"s.{q(col)}"
            if col in feed.keys or col == feed.seq
            else f"CASE WHEN {kept_base} THEN coalesce(s.{q(col)}, t.{q(col)}) ELSE s.{q(col)} END"
            for col in aligned.data.column_names
        }
        merger = merger.when_matched_update(updates, predicate=f"NOT s.{IS_DELETE} AND {newer}")
    else:
        merger = merger.when_matched_update_all(
            predicate=f"NOT s.{IS_DELETE} AND {newer}", except_cols=internal
        )
    with translate_commit_errors(ds.name):
        metrics = merger.when_not_matched_insert_all(
            predicate=f"NOT s.{IS_DELETE}", except_cols=internal
        ).execute()
    if table.version() == target_version:
        # delta-rs makes no commit for a merge that changes no rows: record the batch anyway.
        store.commit_empty(ds.name, aligned.data.schema, info)
    return WriteResult(
        version=store.open(ds.name).version(),
        rows_written=int(metrics.get("num_source_rows", source.num_rows)),
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        deleted=int(metrics.get("num_target_rows_deleted", 0)),
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
        stale_records=plan.stale,
    )


def _first_build(store: DeltaStore, ds: Dataset, plan: _Plan, info: CommitInfo) -> WriteResult:
    aligned = align(plan.source, None, ds.config.schema_evolution, ds.name)
    version = store.write(
        ds.name,
        aligned.data,
        info,
        mode="overwrite",
        partition_by=ds.config.partition_by,
        schema_mode="overwrite" if store.exists(ds.name) else None,
    )
    n = aligned.data.num_rows
    return WriteResult(version=version, rows_written=n, inserted=n, stale_records=plan.stale)


# ---------------------------------------------------------------------------------------------
# SCD2: a version per change


def _plan_scd2(
    con: duckdb.DuckDBPyConnection,
    ds: Dataset,
    c: CDC,
    feed: Feed,
    fresh: bool,
    new_truncate: bool,
) -> _Plan:
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    vf, vt, cur = q(c.valid_from), q(c.valid_to), q(c.is_current)
    cols = ", ".join(q(col) for col in feed.columns)
    shape = f"SELECT {cols}, {s} AS {vf}, {s} AS {vt}, TRUE AS {cur} FROM batch WHERE false"
    if fresh:
        con.execute(f"CREATE TEMP TABLE __lf_hist AS {shape}")
    else:
        present = set(con.sql("SELECT * FROM __lf_target").columns)
        have = ", ".join(
            q(col) for col in [*feed.columns, c.valid_from, c.valid_to] if col in present
        )
        # The versions of the batch's keys; on a new truncate, every current version too.
        relevant = (
            f"EXISTS (SELECT 1 FROM b WHERE NOT b.{IS_TRUNCATE} AND {match_sql(feed, 'b', 't')})"
        )
        if new_truncate:
            relevant = f"(t.{cur} OR {relevant})"
        con.execute(
            f"CREATE TEMP TABLE __lf_hist AS SELECT {have}, t.{cur} FROM __lf_target AS t "
            f"WHERE {relevant} UNION ALL BY NAME {shape}"
        )
    con.execute(
        f"CREATE TEMP TABLE __lf_hi AS SELECT {keys}, greatest(max({s}), max({vt})) AS __lf_hi "
        "FROM __lf_hist GROUP BY ALL"
    )
    con.execute(f"CREATE TEMP TABLE __lf_ch AS {applied_changes_sql(feed)}")
    distinct = ", ".join(q(col) for col in [*feed.keys, feed.seq])
    stale = _count(
        con, f"SELECT count(DISTINCT ({distinct})) FROM b WHERE NOT {IS_TRUNCATE}"
    ) - _count(con, "SELECT count(*) FROM __lf_ch")
    con.execute(f"CREATE TEMP TABLE __lf_ev AS {events_sql(feed, c, new_truncate)}")
    con.execute(f"CREATE TEMP TABLE __lf_versions AS {versions_sql(feed, c)}")
    mk = ", ".join(f"CASE WHEN __lf_first = 0 THEN {q(k)} END AS {q(_MK + k)}" for k in feed.keys)
    source = fetch_arrow(
        con,
        f"SELECT {cols}, __lf_vf AS {vf}, __lf_vt AS {vt}, __lf_vt IS NULL AS {cur}, {mk} "
        f"FROM __lf_versions WHERE __lf_first <> 0 OR __lf_changed",
    )
    return _Plan("scd2", source, stale)


def _commit_scd2(
    store: DeltaStore,
    ds: Dataset,
    c: CDC,
    feed: Feed,
    plan: _Plan,
    info: CommitInfo,
    target_version: int | None,
) -> WriteResult:
    marks = [_MK + k for k in feed.keys]
    rows = plan.source.drop_columns(marks)
    if target_version is None:
        return _first_build(store, ds, _Plan("scd2", rows, plan.stale), info)
    aligned = align(
        rows, store.schema(ds.name, target_version), ds.config.schema_evolution, ds.name
    )
    if rows.num_rows == 0:
        version = store.commit_empty(ds.name, aligned.data.schema, info)
        return WriteResult(version=version, stale_records=plan.stale)
    source = aligned.data
    for name in marks:
        source = source.append_column(name, plan.source.column(name))
    on = " AND ".join(f"t.{q(k)} = s.{q(_MK + k)}" for k in feed.keys)
    # A version being closed or absorbing changes keeps the table's other columns.
    own = {*rows.column_names, *aligned.added_columns, RESCUE_COLUMN}
    updates = {col: f"s.{q(col)}" for col in aligned.data.column_names if col in own}
    inserts = {col: f"s.{q(col)}" for col in aligned.data.column_names}
    table = store.open(ds.name, target_version)
    with translate_commit_errors(ds.name):
        metrics: dict[str, Any] = (
            table.merge(
                source,
                predicate=f"{on} AND t.{q(c.is_current)}",
                source_alias="s",
                target_alias="t",
                merge_schema=aligned.schema_mode == "merge",
                commit_properties=store.commit_properties(info),
            )
            .when_matched_update(updates)
            .when_not_matched_insert(inserts, predicate=f"s.{q(marks[0])} IS NULL")
            .execute()
        )
    return WriteResult(
        version=store.open(ds.name).version(),
        rows_written=source.num_rows,
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
        stale_records=plan.stale,
    )


def _last_change_sql(feed: Feed, c: CDC) -> str:
    """Per key, the outcome of the batch: its newest applied change and whether it deletes."""
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    if c.scd_type == 1:
        return f"SELECT {keys}, {s}, {IS_DELETE} FROM __lf_net"
    return (
        f"SELECT {keys}, {s}, __lf_o = 2 AS {IS_DELETE} FROM __lf_ev WHERE __lf_o > 0 "
        f"QUALIFY row_number() OVER (PARTITION BY {keys} ORDER BY {s} DESC, __lf_o DESC) = 1"
    )


# ---------------------------------------------------------------------------------------------
# The table after a write, for `scope: table` checks


@dataclass(frozen=True)
class CdcScope:
    """What a ``scope: table`` projection of a cdc write needs besides relation names."""

    feed: Feed
    tombstones: str | None  # relation of the table's tombstones, if it has any
    current_columns: list[str]


def cdc_scope(
    con: duckdb.DuckDBPyConnection,
    store: DeltaStore,
    ds: Dataset,
    batch: str,
    current: str | None,
) -> CdcScope:
    """Resolve ``ds``'s cdc write against the batch registered as ``batch`` and expose the
    table's tombstones; ``current`` is the registered table (None: rebuilt from scratch)."""
    assert isinstance(ds.config.write, CDC)
    feed = resolve_feed(ds, ds.config.write, con.sql(f"SELECT * FROM {q(batch)}").columns)
    if current is None:
        return CdcScope(feed, None, [])
    columns = con.sql(f"SELECT * FROM {q(current)}").columns
    return CdcScope(feed, register_tombstones(con, store, ds.name), columns)


def table_after_cdc_sql(
    ds: Dataset, c: CDC, batch: str, current: str | None, scope: CdcScope
) -> str:
    """A DuckDB query for an SCD1 table as it will be once ``batch`` is applied to
    ``current`` (None: rebuilt from scratch): the same rules as :func:`apply_changes`."""
    if c.scd_type == 2:
        raise ConfigError(
            f"{ds.name}: checks with scope: table are not available for cdc writes with "
            "scd_type: 2",
            dataset=ds.name,
            location=ds.location,
            hint="check the batch (the default scope), or check a view of the current rows "
            "downstream",
        )
    feed = scope.feed
    tomb = f"SELECT * FROM {scope.tombstones}" if current is not None and scope.tombstones else ""
    ctes = [
        f"__lf_b AS ({flags_sql(feed, batch)})",
        f"__lf_tb AS ({tomb or empty_tombstones_sql(feed, batch)})",
        f"__lf_w AS ({watermark_sql(feed, '__lf_b', '__lf_tb')})",
        "__lf_n AS ("
        + scd1_net_sql(feed, c.ignore_null_updates, "__lf_b", "__lf_w", "__lf_tb", current)
        + ")",
    ]
    cols = ", ".join(q(col) for col in feed.columns)
    if current is None:
        return f"WITH {', '.join(ctes)} SELECT {cols} FROM __lf_n WHERE NOT {IS_DELETE}"
    s = q(feed.seq)
    ctes.append(
        f"__lf_a AS (SELECT n.* FROM __lf_n AS n LEFT JOIN {current} AS t "
        f"ON {match_sql(feed, 'n', 't')} WHERE t.{s} IS NULL OR t.{s} < n.{s})"
    )
    kept = (
        f"SELECT t.* FROM {current} AS t CROSS JOIN __lf_w AS w "
        f"WHERE NOT (w.__lf_new AND coalesce(t.{s} < w.__lf_wb, true)) "
        f"AND NOT EXISTS (SELECT 1 FROM __lf_a AS n WHERE {match_sql(feed, 'n', 't')})"
    )
    values = [f"n.{q(col)}" for col in feed.columns]
    if c.ignore_null_updates:
        kept_base = f"(n.{_RESET} IS NULL OR (t.{s} IS NOT NULL AND t.{s} >= n.{_RESET}))"
        values = [
            f"CASE WHEN {kept_base} THEN coalesce(n.{q(col)}, t.{q(col)}) ELSE n.{q(col)} END "
            f"AS {q(col)}"
            if col in feed.values and col in scope.current_columns
            else f"n.{q(col)}"
            for col in feed.columns
        ]
    written = (
        f"SELECT {', '.join(values)} FROM __lf_a AS n LEFT JOIN {current} AS t "
        f"ON {match_sql(feed, 'n', 't')} WHERE NOT n.{IS_DELETE}"
    )
    return f"WITH {', '.join(ctes)} {kept} UNION ALL BY NAME {written}"
