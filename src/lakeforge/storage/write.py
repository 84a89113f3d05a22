"""Write strategies: each turns a candidate batch into exactly one Delta commit.

``append``, ``overwrite`` and ``replace_partitions`` are single ``write_deltalake`` calls;
``merge`` and ``scd2`` prepare their source in DuckDB (deduplication, delete flags, version
chains) and apply it with one ``DeltaTable.merge``. A write that would change no rows still
commits once, empty, so the table records which inputs it has consumed. A batch whose
sequence number is already committed is skipped (exactly-once replay).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

import sqlglot
from sqlglot import exp

from lakeforge.engines.connection import connect
from lakeforge.engines.duckdb import register_table
from lakeforge.errors import ConfigError, DataError, SchemaError
from lakeforge.graph.partitions import delta_partition_predicate
from lakeforge.graph.spec import CDC, SCD2, Dataset, Merge, ReplacePartitions
from lakeforge.storage.delta import CommitInfo, DeltaStore, translate_commit_errors
from lakeforge.storage.schema import align, normalize_for_delta

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.storage.cdc_apply import CdcScope

_DELETE_FLAG = "__lf_delete"
_MERGE_KEY = "__lf_mk_"
_CLOSE_AT = "__lf_close_at"


@dataclass
class WriteResult:
    """What a write did."""

    version: int | None
    rows_written: int = 0
    inserted: int = 0
    updated: int = 0
    deleted: int = 0
    skipped: str | None = None
    added_columns: list[str] = field(default_factory=list)
    rescued_columns: list[str] = field(default_factory=list)
    stale_records: int = 0


def q(name: str) -> str:
    """Quote an identifier for DuckDB / DataFusion SQL."""
    return exp.to_identifier(name, quoted=True).sql("duckdb")


def write_dataset(
    store: DeltaStore,
    ds: Dataset,
    data: pa.Table,
    info: CommitInfo,
    *,
    target_version: int | None,
    now: datetime,
) -> WriteResult:
    """Write ``data`` to ``ds``'s table as one commit, by its strategy.

    Args:
        store: the project's Delta store.
        ds: the dataset.
        data: the candidate batch (already checked).
        info: commit metadata; ``info.batch`` must be greater than the committed batch.
        target_version: the table version pinned at task start (None: absent, or rebuilt
            from scratch on ``--full-refresh``).
        now: the run's start time (SCD2 ``valid_from`` when no ``sequence_by``).
    """
    if store.committed_batch(ds.name) >= info.batch:
        return WriteResult(version=None, skipped=f"batch {info.batch} is already committed")
    strategy = ds.config.write
    if isinstance(strategy, Merge):
        return _merge(store, ds, strategy, data, info, target_version)
    if isinstance(strategy, SCD2):
        return _scd2(store, ds, strategy, data, info, target_version, now)
    if isinstance(strategy, CDC):
        from lakeforge.storage.cdc_apply import apply_changes

        return apply_changes(store, ds, strategy, data, info, target_version, now)
    return _file_write(store, ds, data, info, target_version)


def write_partition(
    store: DeltaStore,
    ds: Dataset,
    data: pa.Table,
    info: CommitInfo,
    *,
    target_version: int | None,
    predicate: str,
    partition_key: str,
) -> WriteResult:
    """Replace exactly one partition's rows (``predicate``) with ``data`` in one commit.

    Every row must fall inside the partition: a row outside it would either be lost (not
    replaced by the next build of its own partition) or duplicated, so it is an error.
    """
    if store.committed_batch(ds.name) >= info.batch:
        return WriteResult(version=None, skipped=f"batch {info.batch} is already committed")
    parts = ds.config.partitions
    assert parts is not None
    _check_columns(ds, data, [parts.column, *ds.config.partition_by], "partition")
    con = _duckdb(data)
    try:
        outside = con.execute(
            f"SELECT count(*), any_value(CAST({q(parts.column)} AS VARCHAR)) "
            f"FROM batch WHERE NOT coalesce(({predicate}), false)"
        ).fetchone()
    finally:
        con.close()
    assert outside is not None
    if outside[0]:
        raise DataError(
            f"{ds.name}: partition {partition_key}: {outside[0]:,} row(s) have {parts.column} "
            f"outside the partition (e.g. {outside[1]!r})",
            dataset=ds.name,
            column=parts.column,
            location=ds.location,
            hint="select the partition's rows: WHERE "
            f"{parts.column} >= @start AND {parts.column} < @end"
            if parts.kind != "static"
            else f"select the partition's rows: WHERE {parts.column} = @partition",
        )
    data = normalize_for_delta(data, ds.name)
    aligned = align(
        data, _target_schema(store, ds, target_version), ds.config.schema_evolution, ds.name
    )
    exists = store.exists(ds.name)
    replaced = delta_partition_predicate(
        parts, parts.parse_key(partition_key), aligned.data.schema.field(parts.column).type
    )
    version = store.write(
        ds.name,
        aligned.data,
        info,
        mode="overwrite",
        partition_by=ds.config.partition_by,
        schema_mode=aligned.schema_mode if exists and target_version is not None else None,
        predicate=replaced if exists else None,
    )
    return WriteResult(
        version=version,
        rows_written=aligned.data.num_rows,
        inserted=aligned.data.num_rows,
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
    )


def _target_schema(store: DeltaStore, ds: Dataset, target_version: int | None) -> pa.Schema | None:
    return None if target_version is None else store.schema(ds.name, target_version)


def _check_columns(ds: Dataset, data: pa.Table, columns: list[str], role: str) -> None:
    for col in columns:
        if col not in data.column_names:
            raise SchemaError(
                f"{role} column {col!r} is not in the output",
                dataset=ds.name,
                column=col,
                expected=col,
                found=", ".join(data.column_names) or "no columns",
                location=ds.location,
            )


def _file_write(
    store: DeltaStore, ds: Dataset, data: pa.Table, info: CommitInfo, target_version: int | None
) -> WriteResult:
    strategy = ds.config.write.strategy
    _check_columns(ds, data, ds.config.partition_by, "partition_by")
    aligned = align(
        data, _target_schema(store, ds, target_version), ds.config.schema_evolution, ds.name
    )
    predicate = None
    mode: Literal["append", "overwrite"]
    schema_mode: Literal["merge", "overwrite"] | None
    if target_version is None:
        mode, schema_mode = "overwrite", "overwrite"
    elif strategy == "append":
        mode, schema_mode = "append", aligned.schema_mode
    elif isinstance(ds.config.write, ReplacePartitions):
        mode, schema_mode = "overwrite", aligned.schema_mode
        if aligned.data.num_rows == 0:
            version = store.commit_empty(ds.name, aligned.data.schema, info)
            return WriteResult(version=version, added_columns=aligned.added_columns)
        predicate = partition_predicate(aligned.data, ds.config.partition_by)
    else:
        mode, schema_mode = "overwrite", aligned.schema_mode
    if not store.exists(ds.name):
        schema_mode = None
    version = store.write(
        ds.name,
        aligned.data,
        info,
        mode=mode,
        partition_by=ds.config.partition_by,
        schema_mode=schema_mode,
        predicate=predicate,
    )
    return WriteResult(
        version=version,
        rows_written=aligned.data.num_rows,
        inserted=aligned.data.num_rows,
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
    )


def partition_predicate(data: pa.Table, columns: list[str]) -> str:
    """A DataFusion predicate matching exactly the partitions present in ``data``."""
    distinct = data.select(columns).group_by(columns).aggregate([]).to_pylist()
    terms: list[exp.Expr] = []
    for row in distinct:
        parts: list[exp.Expr] = []
        for col in columns:
            ident = exp.column(col, quoted=True)
            value = row[col]
            if value is None:
                parts.append(exp.Is(this=ident, expression=exp.Null()))
            elif isinstance(value, bool):
                parts.append(ident.eq(exp.Boolean(this=value)))
            elif isinstance(value, int | float):
                parts.append(ident.eq(exp.Literal.number(value)))
            else:
                parts.append(ident.eq(exp.Literal.string(str(value))))
        terms.append(exp.and_(*parts))
    return exp.or_(*terms).sql("postgres")


QUARANTINE_SUFFIX = "__quarantine"


def quarantine_table(dataset: str) -> str:
    """The table holding ``dataset``'s quarantined rows."""
    return dataset + QUARANTINE_SUFFIX


def write_quarantine(
    store: DeltaStore, dataset: str, rows: pa.Table, info: CommitInfo, at: datetime
) -> int:
    """Commit quarantined rows (original columns + failed expectation names) in one commit.

    Written before the dataset's own commit, as an overwrite of exactly this batch's rows:
    an attempt that crashed between the two commits is replaced, never duplicated, when
    the batch is built again; and a batch whose rows were quarantined is never committed
    without them.
    """
    return write_side_table(
        store, quarantine_table(dataset), rows, info, at, at_column="_lf_quarantined_at"
    )


DLQ_SUFFIX = "__dlq"


def dlq_table(dataset: str) -> str:
    """The table holding the records ``dataset``'s source could not read."""
    return dataset + DLQ_SUFFIX


LATE_SUFFIX = "__late"


def late_table(dataset: str) -> str:
    """The table holding the events that reached streaming table ``dataset`` too late for
    its watermark (``streaming/operator.py``)."""
    return dataset + LATE_SUFFIX


def write_side_table(
    store: DeltaStore,
    name: str,
    rows: pa.Table,
    info: CommitInfo,
    at: datetime,
    *,
    at_column: str,
) -> int:
    """Commit rows set aside from batch ``info.batch`` (quarantine, dead letters) to ``name``,
    replacing whatever an earlier attempt of the same batch left there."""
    import pyarrow as pa

    data = normalize_for_delta(rows, name)
    n = data.num_rows
    data = (
        data.append_column("_lf_run_id", pa.array([info.run_id] * n, pa.string()))
        .append_column("_lf_batch", pa.array([info.batch] * n, pa.int64()))
        .append_column(at_column, pa.array([at] * n, pa.timestamp("us", tz="UTC")))
    )
    side = CommitInfo(
        run_id=info.run_id,
        dataset=name,
        fingerprint=info.fingerprint,
        batch=info.batch,
        input_versions=info.input_versions,
    )
    if not store.exists(name):
        return store.write(name, data, side, mode="overwrite")
    return store.write(
        name,
        data,
        side,
        mode="overwrite",
        schema_mode="merge",
        predicate=f"_lf_batch = {int(info.batch)}",
    )


def clear_quarantine_batch(store: DeltaStore, dataset: str, info: CommitInfo) -> int | None:
    """Remove quarantined rows an earlier, unpublished attempt of ``info.batch`` left behind.

    Called when the batch being published quarantines nothing: its quarantine must then hold
    nothing either. Returns the new version, or None when there was nothing to remove.
    """
    return clear_side_batch(store, quarantine_table(dataset), info)


def clear_side_batch(store: DeltaStore, name: str, info: CommitInfo) -> int | None:
    """Remove the rows of batch ``info.batch`` from side table ``name`` (None: none there)."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    if not store.exists(name):
        return None
    pinned = store.read(name)
    stale = sum(
        part.count_rows(filter=pads.field("_lf_batch") == info.batch) for part in pinned.parts
    )
    if not stale:
        return None
    schema = pa.schema(store.open(name).schema().to_arrow())
    qinfo = CommitInfo(
        run_id=info.run_id,
        dataset=name,
        fingerprint=info.fingerprint,
        batch=info.batch,
        input_versions=info.input_versions,
    )
    return store.write(
        name,
        schema.empty_table(),
        qinfo,
        mode="overwrite",
        predicate=f"_lf_batch = {int(info.batch)}",
    )


def table_after_write_sql(
    ds: Dataset,
    batch: str,
    current: str | None,
    replaces: str | None = None,
    cdc: CdcScope | None = None,
) -> str:
    """A DuckDB query for the table as it will be once ``batch`` is written to ``current``.

    Used to check ``scope: table`` rules before the commit. ``current`` is None when the
    write replaces the table from scratch. Follows each strategy's semantics: append adds,
    replace_partitions swaps the batch's partitions, merge applies the newest record per
    key unless the table holds a newer one (``sequence_by``) and honours ``delete_when``;
    cdc (SCD1) applies the change feed, given ``cdc`` (:func:`~lakeforge.storage.cdc_apply.
    cdc_scope`).
    """
    strategy = ds.config.write
    if isinstance(strategy, CDC):
        from lakeforge.storage.cdc_apply import table_after_cdc_sql

        if cdc is None:
            raise TypeError("table_after_write_sql needs cdc= (cdc_scope) for a cdc write")
        return table_after_cdc_sql(ds, strategy, batch, current, cdc)
    if replaces is not None and current is not None:  # a partition build
        return (
            f"SELECT * FROM {current} WHERE NOT coalesce(({replaces}), false) "
            f"UNION ALL BY NAME SELECT * FROM {batch}"
        )
    if strategy.strategy == "overwrite" or (current is None and not isinstance(strategy, Merge)):
        return f"SELECT * FROM {batch}"
    if strategy.strategy == "append":
        return f"SELECT * FROM {current} UNION ALL BY NAME SELECT * FROM {batch}"
    if isinstance(strategy, ReplacePartitions):
        same = " AND ".join(
            f"c.{q(col)} IS NOT DISTINCT FROM b.{q(col)}" for col in ds.config.partition_by
        )
        return (
            f"SELECT * FROM {current} AS c WHERE NOT EXISTS (SELECT 1 FROM {batch} AS b "
            f"WHERE {same}) UNION ALL BY NAME SELECT * FROM {batch}"
        )
    if isinstance(strategy, Merge):
        keys = ", ".join(q(k) for k in strategy.keys)
        match = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in strategy.keys)
        order = f"ORDER BY {q(strategy.sequence_by)} DESC" if strategy.sequence_by else ""
        newest = (
            f"SELECT * FROM {batch} QUALIFY row_number() OVER (PARTITION BY {keys} {order}) = 1"
        )
        wins = "TRUE"
        if strategy.sequence_by:
            seq = q(strategy.sequence_by)
            wins = f"(t.{seq} IS NULL OR s.{seq} >= t.{seq})"
        delete = (
            f"coalesce(({_delete_expression(ds, strategy.delete_when)}), false)"
            if strategy.delete_when
            else "false"
        )
        if current is None:  # a first build or full refresh: the newest record per key
            return (
                f"SELECT * EXCLUDE ({_DELETE_FLAG}) FROM (SELECT *, {delete} AS {_DELETE_FLAG} "
                f"FROM ({newest})) WHERE NOT {_DELETE_FLAG}"
            )
        return (
            f"WITH s AS (SELECT *, {delete} AS {_DELETE_FLAG} FROM ({newest})), "
            f"applied AS (SELECT s.* FROM s LEFT JOIN {current} AS t ON {match} "
            f"WHERE t.{q(strategy.keys[0])} IS NULL OR {wins}) "
            f"SELECT t.* FROM {current} AS t ANTI JOIN applied AS s ON {match} "
            f"UNION ALL BY NAME SELECT * EXCLUDE ({_DELETE_FLAG}) FROM applied "
            f"WHERE NOT {_DELETE_FLAG}"
        )
    raise ConfigError(f"{ds.name}: no table projection for write strategy {strategy.strategy}")


def _duckdb(data: pa.Table) -> duckdb.DuckDBPyConnection:

    con = connect(threads=2)
    con.register("batch", data)
    return con


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    rows = con.execute(sql).fetchall()
    return int(rows[0][0]) if rows else 0


def _keys_not_null(
    con: duckdb.DuckDBPyConnection, ds: Dataset, keys: list[str], sequence_by: str | None
) -> None:
    cond = " OR ".join(f"{q(k)} IS NULL" for k in keys)
    nulls = _scalar(con, f"SELECT count(*) FROM batch WHERE {cond}")
    if sequence_by is not None:
        # A null sequence cannot be ordered against anything: it would win or lose by accident.
        null_seq = _scalar(con, f"SELECT count(*) FROM batch WHERE {q(sequence_by)} IS NULL")
        if null_seq:
            raise DataError(
                f"{null_seq} row(s) have a null sequence_by value ({sequence_by})",
                dataset=ds.name,
                column=sequence_by,
                expected="non-null sequence values",
                found=f"{null_seq} null",
                hint="filter or fill them upstream, e.g. COALESCE with a load timestamp",
            )
    if nulls:
        raise DataError(
            f"{nulls} row(s) have a null key ({', '.join(keys)})",
            dataset=ds.name,
            column=keys[0],
            expected="non-null keys",
            found=f"{nulls} null",
            hint="filter or fix them upstream (a null key cannot be matched)",
        )


def _duplicate_examples(
    con: duckdb.DuckDBPyConnection, relation: str, ds: Dataset, keys: list[str], also: str = ""
) -> None:
    cols = ", ".join(q(k) for k in [*keys, *([also] if also else [])])
    # Through Arrow: DuckDB's own Python conversion of TIMESTAMPTZ needs pytz.
    found = con.sql(
        f"SELECT {cols}, count(*) AS n FROM {relation} GROUP BY ALL HAVING count(*) > 1 "
        "ORDER BY n DESC LIMIT 3"
    ).to_arrow_table()
    rows = list(zip(*(column.to_pylist() for column in found.columns), strict=True))
    if rows:
        examples = "; ".join(
            ", ".join(
                f"{k}={v!r}" for k, v in zip([*keys, *([also] if also else [])], r, strict=False)
            )
            + f" ({r[-1]}×)"
            for r in rows
        )
        raise DataError(
            f"duplicate keys within one batch: {examples}",
            dataset=ds.name,
            column=keys[0],
            expected="one row per key" + (f" and {also}" if also else ""),
            found="duplicates",
            hint="set sequence_by so the newest record wins, or deduplicate in the transform",
        )


def _delete_expression(ds: Dataset, condition: str) -> str:
    try:
        tree = sqlglot.parse_one(condition, dialect="duckdb")
    except sqlglot.errors.ParseError as exc:
        raise ConfigError(
            "delete_when does not parse: "
            + str(exc.errors[0].get("description") if exc.errors else exc),
            dataset=ds.name,
            location=ds.location,
        ) from None
    return tree.sql("duckdb")


def _merge(
    store: DeltaStore,
    ds: Dataset,
    m: Merge,
    data: pa.Table,
    info: CommitInfo,
    target_version: int | None,
) -> WriteResult:
    data = normalize_for_delta(data, ds.name)
    _check_columns(ds, data, [*m.keys, *([m.sequence_by] if m.sequence_by else [])], "merge")
    con = _duckdb(data)
    _keys_not_null(con, ds, m.keys, m.sequence_by)
    keys = ", ".join(q(k) for k in m.keys)
    if m.sequence_by:
        seq = q(m.sequence_by)
        # Among duplicates, the greatest sequence wins; exact ties are ambiguous.
        ranked = (
            f"SELECT * FROM batch QUALIFY row_number() OVER (PARTITION BY {keys} "
            f"ORDER BY {seq} DESC NULLS LAST) = 1"
        )
        tie_check = f"SELECT {keys}, {seq} FROM batch WHERE {seq} IS NOT NULL"
        con.sql(f"CREATE TEMP VIEW seqd AS {tie_check}")
        _duplicate_examples(con, "seqd", ds, m.keys, also=m.sequence_by)
    else:
        ranked = "SELECT * FROM batch"
        _duplicate_examples(con, "batch", ds, m.keys)
    flag = (
        f"coalesce(({_delete_expression(ds, m.delete_when)}), false)" if m.delete_when else "false"
    )
    prepared = con.sql(f"SELECT *, {flag} AS {_DELETE_FLAG} FROM ({ranked})").to_arrow_table()
    con.close()
    deletes = prepared.column(_DELETE_FLAG)
    rows = prepared.drop_columns([_DELETE_FLAG])
    target_schema = _target_schema(store, ds, target_version)
    aligned = align(rows, target_schema, ds.config.schema_evolution, ds.name)
    if target_version is None:
        import pyarrow.compute as pc

        inserts = aligned.data.filter(pc.invert(deletes))
        version = store.write(
            ds.name,
            inserts,
            info,
            mode="overwrite",
            partition_by=ds.config.partition_by,
            schema_mode="overwrite" if store.exists(ds.name) else None,
        )
        return WriteResult(
            version=version, rows_written=inserts.num_rows, inserted=inserts.num_rows
        )
    source = aligned.data.append_column(_DELETE_FLAG, deletes)
    on = " AND ".join(f"t.{q(k)} = s.{q(k)}" for k in m.keys)
    newer = "TRUE"
    if m.sequence_by:
        seq = q(m.sequence_by)
        newer = f"(t.{seq} IS NULL OR s.{seq} >= t.{seq})"
    table = store.open(ds.name, target_version)
    with translate_commit_errors(ds.name):
        metrics = (
            table.merge(
                source,
                predicate=on,
                source_alias="s",
                target_alias="t",
                merge_schema=aligned.schema_mode == "merge",
                commit_properties=store.commit_properties(info),
            )
            .when_matched_delete(predicate=f"s.{q(_DELETE_FLAG)} AND {newer}")
            .when_matched_update_all(
                predicate=f"NOT s.{q(_DELETE_FLAG)} AND {newer}", except_cols=[_DELETE_FLAG]
            )
            .when_not_matched_insert_all(
                predicate=f"NOT s.{q(_DELETE_FLAG)}", except_cols=[_DELETE_FLAG]
            )
            .execute()
        )
    if table.version() == target_version:
        # delta-rs skips the commit of a merge that changes no rows; the batch must still be
        # recorded (txn + metadata) or it is replayed and its inputs look unconsumed.
        store.commit_empty(ds.name, aligned.data.schema, info)
    return WriteResult(
        version=store.open(ds.name).version(),
        rows_written=int(metrics.get("num_source_rows", source.num_rows)),
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        deleted=int(metrics.get("num_target_rows_deleted", 0)),
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
    )


def _scd2(
    store: DeltaStore,
    ds: Dataset,
    s: SCD2,
    data: pa.Table,
    info: CommitInfo,
    target_version: int | None,
    now: datetime,
) -> WriteResult:
    data = normalize_for_delta(data, ds.name)
    bookkeeping = [s.valid_from, s.valid_to, s.is_current]
    clash = [c for c in bookkeeping if c in data.column_names]
    if clash:
        raise SchemaError(
            f"the output already has SCD2 bookkeeping column(s) {', '.join(clash)}",
            dataset=ds.name,
            column=clash[0],
            hint="drop them from the query or rename them with valid_from/valid_to/is_current",
        )
    _check_columns(ds, data, [*s.keys, *([s.sequence_by] if s.sequence_by else [])], "scd2")
    tracked = s.track_columns or [
        c for c in data.column_names if c not in s.keys and c != s.sequence_by
    ]
    _check_columns(ds, data, tracked, "track_columns")
    con = _duckdb(data)
    _keys_not_null(con, ds, s.keys, s.sequence_by)
    keys = ", ".join(q(k) for k in s.keys)
    vf = q(s.sequence_by) if s.sequence_by else "$now::TIMESTAMPTZ"
    con.execute(
        f"CREATE TEMP TABLE b AS SELECT *, {vf} AS __lf_vf FROM batch",
        {"now": now} if not s.sequence_by else None,
    )
    _duplicate_examples(con, "b", ds, [*s.keys, "__lf_vf"])
    has_target = target_version is not None
    if has_target:
        register_table(con, "target", store.read(ds.name, target_version))
        con.sql(
            f"CREATE TEMP TABLE cur AS SELECT * EXCLUDE ({', '.join(q(c) for c in bookkeeping)}), "
            f"{q(s.valid_from)} AS __lf_vf FROM target WHERE {q(s.is_current)}"
        )
    else:
        con.sql("CREATE TEMP TABLE cur AS SELECT * FROM b LIMIT 0")
    join = " AND ".join(f"b.{q(k)} = c.{q(k)}" for k in s.keys)
    # Records not newer than the current version are already superseded: counted, not applied.
    con.sql(
        f"CREATE TEMP TABLE fresh AS SELECT b.* FROM b LEFT JOIN cur c ON {join} "
        "WHERE c.__lf_vf IS NULL OR b.__lf_vf > c.__lf_vf"
    )
    stale = _scalar(con, "SELECT count(*) FROM b") - _scalar(con, "SELECT count(*) FROM fresh")
    changed = " OR ".join(f"{q(c)} IS DISTINCT FROM lag({q(c)}) OVER w" for c in tracked) or "FALSE"
    con.sql(
        "CREATE TEMP TABLE versions AS SELECT * EXCLUDE (__lf_cur, __lf_changed) FROM ("
        f"SELECT *, (row_number() OVER w = 1 OR {changed}) AS __lf_changed FROM ("
        "SELECT *, TRUE AS __lf_cur FROM cur "
        "UNION ALL BY NAME SELECT *, FALSE AS __lf_cur FROM fresh"
        f") WINDOW w AS (PARTITION BY {keys} ORDER BY __lf_vf, __lf_cur DESC)"
        ") WHERE __lf_changed AND NOT __lf_cur"
    )
    inserts = con.sql(
        f"SELECT * EXCLUDE (__lf_vf), __lf_vf AS {q(s.valid_from)}, "
        f"lead(__lf_vf) OVER (PARTITION BY {keys} ORDER BY __lf_vf) AS {q(s.valid_to)}, "
        f"{q(s.valid_to)} IS NULL AS {q(s.is_current)} FROM versions"
    ).to_arrow_table()
    close_sql = (
        f"SELECT {', '.join(f'v.{q(k)}' for k in s.keys)}, min(v.__lf_vf) AS {_CLOSE_AT} "
        f"FROM versions v SEMI JOIN cur c ON {join.replace('b.', 'v.')} GROUP BY ALL"
    )
    if s.close_missing and has_target:
        close_sql += (
            f" UNION ALL SELECT {', '.join(f'c.{q(k)}' for k in s.keys)}, "
            f"CAST($now AS {_vf_type(con)}) FROM cur c ANTI JOIN b ON {join}"
        )
        closes = con.sql(close_sql, params={"now": now}).to_arrow_table()
    else:
        closes = con.sql(close_sql).to_arrow_table()
    con.close()
    schema = _target_schema(store, ds, target_version)
    aligned = align(inserts, schema, ds.config.schema_evolution, ds.name)
    if not has_target:
        version = store.write(
            ds.name,
            aligned.data,
            info,
            mode="overwrite",
            partition_by=ds.config.partition_by,
            schema_mode="overwrite" if store.exists(ds.name) else None,
        )
        return WriteResult(
            version=version,
            rows_written=aligned.data.num_rows,
            inserted=aligned.data.num_rows,
            stale_records=stale,
        )
    if aligned.data.num_rows == 0 and closes.num_rows == 0:
        version = store.commit_empty(ds.name, aligned.data.schema, info)
        return WriteResult(version=version, stale_records=stale)
    source = _scd2_source(aligned.data, closes, s.keys)
    on = " AND ".join(f"t.{q(k)} = s.{q(_MERGE_KEY + k)}" for k in s.keys)
    table = store.open(ds.name, target_version)
    inserts_cols = {c: f"s.{q(c)}" for c in aligned.data.column_names}
    with translate_commit_errors(ds.name):
        metrics: dict[str, Any] = (
            table.merge(
                source,
                predicate=f"{on} AND t.{q(s.is_current)}",
                source_alias="s",
                target_alias="t",
                merge_schema=aligned.schema_mode == "merge",
                commit_properties=store.commit_properties(info),
            )
            .when_matched_update({s.valid_to: f"s.{q(_CLOSE_AT)}", s.is_current: "FALSE"})
            .when_not_matched_insert(
                inserts_cols, predicate=f"s.{q(_MERGE_KEY + s.keys[0])} IS NULL"
            )
            .execute()
        )
    return WriteResult(
        version=store.open(ds.name).version(),
        rows_written=aligned.data.num_rows,
        inserted=int(metrics.get("num_target_rows_inserted", 0)),
        updated=int(metrics.get("num_target_rows_updated", 0)),
        added_columns=aligned.added_columns,
        rescued_columns=aligned.rescued_columns,
        stale_records=stale,
    )


def _vf_type(con: duckdb.DuckDBPyConnection) -> str:
    rows = con.execute("SELECT typeof(__lf_vf) FROM b LIMIT 1").fetchall()
    return str(rows[0][0]) if rows else "TIMESTAMPTZ"


def _scd2_source(inserts: pa.Table, closes: pa.Table, keys: list[str]) -> pa.Table:
    """Close rows carry the merge key; insert rows carry a null merge key (never match)."""
    import pyarrow as pa

    n_ins, n_close = inserts.num_rows, closes.num_rows
    columns: dict[str, pa.Array | pa.ChunkedArray] = {}
    for k in keys:
        typ = closes.schema.field(k).type
        columns[_MERGE_KEY + k] = pa.concat_arrays(
            [pa.nulls(n_ins, typ), closes.column(k).combine_chunks().cast(typ)]
        )
    close_type = closes.schema.field(_CLOSE_AT).type
    columns[_CLOSE_AT] = pa.concat_arrays(
        [pa.nulls(n_ins, close_type), closes.column(_CLOSE_AT).combine_chunks()]
    )
    for name in inserts.column_names:
        typ = inserts.schema.field(name).type
        columns[name] = pa.concat_arrays(
            [inserts.column(name).combine_chunks().cast(typ), pa.nulls(n_close, typ)]
        )
    return pa.table(columns)
