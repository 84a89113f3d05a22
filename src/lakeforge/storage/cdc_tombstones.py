"""Tombstones of the ``cdc`` write strategy: the deletes and the truncate watermark a change
feed must remember, in the side table ``<dataset>__cdc_tombstones`` (one row per deleted key,
``_lf_key`` = the key as JSON; one ``_lf_key = ''`` row for the last truncate). Why and when
they are written: :mod:`lakeforge.storage.cdc_apply`."""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import TYPE_CHECKING, Any

from lakeforge.engines.duckdb import fetch_arrow, register_table
from lakeforge.graph.spec import CDC, Dataset
from lakeforge.storage.cdc_feed import IS_DELETE, IS_TRUNCATE, Feed, match_sql
from lakeforge.storage.delta import CommitInfo, DeltaStore, translate_commit_errors
from lakeforge.storage.schema import align, normalize_for_delta
from lakeforge.storage.write import q

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

TOMBSTONES_SUFFIX = "__cdc_tombstones"
KEY_COL, KIND_COL, SEQ_COL, AT_COL = "_lf_key", "_lf_kind", "_lf_seq", "_lf_recorded_at"
_PUT = "__lf_put"  # a merge source row to upsert (else: to purge)


def tombstone_table(dataset: str) -> str:
    """The side table remembering ``dataset``'s deletes and truncates."""
    return dataset + TOMBSTONES_SUFFIX


def load_tombstones(
    con: duckdb.DuckDBPyConnection, store: DeltaStore, dataset: str, feed: Feed, fresh: bool
) -> None:
    """Expose the tombstones a write must honour as ``__lf_tomb`` (none when ``fresh``)."""
    name = tombstone_table(dataset)
    if not fresh and store.exists(name):
        register_table(con, "__lf_tomb", store.read(name))
        return
    # None yet, or a rebuild from scratch (--full-refresh forgets the old table's deletes).
    con.execute(f"CREATE TEMP TABLE __lf_tomb AS {empty_tombstones_sql(feed, 'b')}")


def register_tombstones(
    con: duckdb.DuckDBPyConnection, store: DeltaStore, dataset: str
) -> str | None:
    """Expose ``dataset``'s tombstones to DuckDB (for ``scope: table`` checks); the relation
    name, or None when the dataset has none."""
    name = tombstone_table(dataset)
    if not store.exists(name):
        return None
    register_table(con, "__lf_cdc_tombstones", store.read(name))
    return "__lf_cdc_tombstones"


def empty_tombstones_sql(feed: Feed, batch: str) -> str:
    """An empty tombstone relation typed like ``batch``'s keys and sequence."""
    keys = ", ".join(q(k) for k in feed.keys)
    return (
        f"SELECT ''::VARCHAR AS {KEY_COL}, {keys}, ''::VARCHAR AS {KIND_COL}, "
        f"{q(feed.seq)} AS {SEQ_COL}, NULL::TIMESTAMPTZ AS {AT_COL} FROM {batch} WHERE false"
    )


def watermark_sql(feed: Feed, b: str, tomb: str) -> str:
    """One row: the remembered truncate (w0), the batch's latest (wb), the greater (w), and
    whether the batch truncates anew."""
    s = q(feed.seq)
    w0 = f"(SELECT max({SEQ_COL}) FROM {tomb} WHERE {KIND_COL} = 'truncate')"
    wb = f"(SELECT max({s}) FROM {b} WHERE {IS_TRUNCATE})"
    return (
        f"SELECT w0 AS __lf_w0, wb AS __lf_wb, greatest(w0, wb) AS __lf_w, "
        f"coalesce(wb > w0, wb IS NOT NULL) AS __lf_new FROM (SELECT {w0} AS w0, {wb} AS wb)"
    )


def deleted_by_key_sql(feed: Feed, tomb: str) -> str:
    """Per deleted key, the sequence of its last delete."""
    keys = ", ".join(q(k) for k in feed.keys)
    return (
        f"SELECT {keys}, max({SEQ_COL}) AS {SEQ_COL} FROM {tomb} "
        f"WHERE {KIND_COL} = 'delete' GROUP BY ALL"
    )


def tombstone_changes(
    con: duckdb.DuckDBPyConnection,
    feed: Feed,
    c: CDC,
    now: datetime,
    new_truncate: bool,
    fresh: bool,
    last: str,
) -> tuple[pa.Table, pa.Table, pa.Table]:
    """What the batch adds to the tombstones, purges from them, and (once its commit has
    landed) makes redundant; ``last`` is a query for each key's outcome: its newest applied
    change (keys, sequence) and whether that deletes (``__lf_d``)."""
    keys = ", ".join(q(k) for k in feed.keys)
    s = q(feed.seq)
    con.execute(f"CREATE TEMP TABLE __lf_last AS {last}")
    pack = ", ".join(f"{q(k)} := {q(k)}" for k in feed.keys)
    puts_sql = (
        f"SELECT to_json(struct_pack({pack}))::VARCHAR AS {KEY_COL}, {keys}, "
        f"'delete'::VARCHAR AS {KIND_COL}, {s} AS {SEQ_COL} FROM __lf_last WHERE {IS_DELETE}"
    )
    if new_truncate:
        puts_sql += (
            f" UNION ALL BY NAME SELECT ''::VARCHAR AS {KEY_COL}, "
            f"'truncate'::VARCHAR AS {KIND_COL}, __lf_wb AS {SEQ_COL} FROM __lf_w"
        )
    puts = fetch_arrow(con, puts_sql)
    expired = []
    params: dict[str, Any] = {}
    if new_truncate:
        expired.append(f"d.{SEQ_COL} <= (SELECT __lf_wb FROM __lf_w)")
    if c.tombstone_retention is not None:
        from lakeforge.scheduling.spec import duration_seconds

        expired.append(f"d.{AT_COL} < $cutoff")
        params["cutoff"] = now - timedelta(seconds=duration_seconds(c.tombstone_retention))
    empty_keys = fetch_arrow(con, f"SELECT {KEY_COL} FROM __lf_tomb WHERE false")
    purges = empty_keys
    if expired and not fresh:
        purges = fetch_arrow(
            con,
            f"SELECT d.{KEY_COL} FROM __lf_tomb AS d WHERE d.{KIND_COL} = 'delete' "
            f"AND ({' OR '.join(expired)}) AND NOT EXISTS (SELECT 1 FROM __lf_last AS n "
            f"WHERE n.{IS_DELETE} AND {match_sql(feed, 'n', 'd')})",
            params or None,
        )
    superseded = fetch_arrow(
        con,
        f"SELECT d.{KEY_COL}, n.{s} AS {SEQ_COL} FROM __lf_last AS n JOIN __lf_tomb AS d "
        f"ON {match_sql(feed, 'n', 'd')} WHERE NOT n.{IS_DELETE} AND d.{KIND_COL} = 'delete' "
        f"AND d.{SEQ_COL} < n.{s}",
    )
    return puts, purges, superseded


def _side_info(info: CommitInfo, name: str) -> CommitInfo:
    return CommitInfo(
        run_id=info.run_id,
        dataset=name,
        fingerprint=info.fingerprint,
        batch=info.batch,
        input_versions=info.input_versions,
    )


def record_tombstones(
    store: DeltaStore,
    ds: Dataset,
    info: CommitInfo,
    now: datetime,
    puts: pa.Table,
    purges: pa.Table,
    fresh: bool,
) -> None:
    """Step 1: remember the batch's deletes and truncate before the dataset's commit."""
    import pyarrow as pa

    name = tombstone_table(ds.name)
    exists = store.exists(name)
    if not puts.num_rows and not purges.num_rows and not (fresh and exists):
        return
    n = puts.num_rows
    puts = normalize_for_delta(puts, name).append_column(
        AT_COL, pa.array([now] * n, pa.timestamp("us", tz="UTC"))
    )
    puts = puts.append_column("_lf_batch", pa.array([info.batch] * n, pa.int64()))
    side = _side_info(info, name)
    if fresh or not exists:
        store.write(name, puts, side, mode="overwrite", schema_mode="overwrite" if exists else None)
        return
    aligned = align(puts, store.schema(name), "add_columns", name).data
    drops = pa.table(
        {
            f.name: purges.column(KEY_COL)
            if f.name == KEY_COL
            else pa.nulls(purges.num_rows, f.type)
            for f in aligned.schema
        }
    )
    source = pa.concat_tables([aligned, drops])
    source = source.append_column(
        _PUT, pa.array([True] * aligned.num_rows + [False] * drops.num_rows, pa.bool_())
    )
    with translate_commit_errors(name):
        (
            store.open(name)
            .merge(
                source,
                predicate=f"t.{KEY_COL} = s.{KEY_COL}",
                source_alias="s",
                target_alias="t",
                merge_schema=True,
                commit_properties=store.commit_properties(side),
            )
            .when_matched_delete(predicate=f"NOT s.{_PUT}")
            .when_matched_update_all(
                predicate=f"s.{_PUT} AND s.{SEQ_COL} > t.{SEQ_COL}", except_cols=[_PUT]
            )
            .when_not_matched_insert_all(predicate=f"s.{_PUT}", except_cols=[_PUT])
            .execute()
        )


def forget_tombstones(
    store: DeltaStore, ds: Dataset, info: CommitInfo, superseded: pa.Table
) -> None:
    """Step 3: drop tombstones of keys the committed batch wrote again with a newer change."""
    name = tombstone_table(ds.name)
    with translate_commit_errors(name):
        (
            store.open(name)
            .merge(
                superseded,
                predicate=f"t.{KEY_COL} = s.{KEY_COL}",
                source_alias="s",
                target_alias="t",
                commit_properties=store.commit_properties(_side_info(info, name)),
            )
            .when_matched_delete(predicate=f"t.{SEQ_COL} < s.{SEQ_COL}")
            .execute()
        )
