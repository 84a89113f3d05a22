"""The SQL database source: full or incremental loads from PostgreSQL, MariaDB/MySQL, SQLite.

Incremental loads follow a cursor column (``updated_at``, an id …). The position is the
high watermark plus the keys of the rows already read *at* the watermark: each read takes
``cursor >= watermark`` in cursor order and skips those keys, so rows that share the
watermark value — including ones committed after the previous read — are read exactly once,
never lost by a ``>`` and never duplicated by a ``>=``. ``lookback`` re-reads a window
below the watermark for sources whose cursor values arrive late (rows are then read again:
pair it with a ``merge`` write keyed on the primary key).

Rows are streamed (server-side cursors where the driver has them) and committed in chunks
of ``chunk_rows``, each chunk one Delta commit carrying the position after it. A row with a
value that does not fit its column's type (a decimal over its precision, bytes that are not
UTF-8 in a text column, an integer over 64 bits …) goes to the dataset's dead-letter queue
with its values and the reason; the rest of the chunk is published, and the position moves
past the rejected row all the same.

Rows deleted in the database are found by an optional periodic key reconciliation
(``reconcile:``, see ``sql_reconcile``).
"""

from __future__ import annotations

import datetime as dt
import hashlib
import os
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from decimal import Decimal
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, model_validator

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.sources import sql_reconcile
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.sql_reconcile import ReconcileConfig


class SqlConfig(BaseModel):
    """``source: {kind: sql, url_env: SHOP_DB, table: orders, cursor: updated_at}``.

    Args:
        url / url_env: SQLAlchemy URL, or the environment variable holding it (keeps
            credentials out of the project).
        table / query: a table (optionally ``schema``-qualified) or a SELECT to read.
        cursor: column ordering new rows (incremental); none: every run reads everything.
        primary_key: columns identifying a row (ties at the watermark); default: all columns.
        lookback: re-read this far below the watermark (number, or duration for timestamps).
        chunk_rows: rows per commit.
        reconcile: compare the source's primary keys with the table's this often, to find
            deleted rows (``{every: 1d}``); needs ``cursor`` and ``primary_key``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["sql"] = "sql"
    url: str | None = None
    url_env: str | None = None
    table: str | None = None
    schema_name: str | None = Field(default=None, alias="schema")
    query: str | None = None
    cursor: str | None = None
    primary_key: list[str] = Field(default_factory=list)
    lookback: str | float | None = None
    chunk_rows: int = Field(default=100_000, ge=1)
    reconcile: ReconcileConfig | None = None

    @model_validator(mode="after")
    def _one_of(self) -> SqlConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        if self.lookback is not None and self.cursor is None:
            raise ValueError("lookback needs a cursor")
        if self.reconcile is not None and (self.cursor is None or not self.primary_key):
            raise ValueError(
                "reconcile needs a cursor and a primary_key: it compares the keys of an "
                "incremental load (a full load, without cursor, drops deleted rows anyway)"
            )
        return self

    @property
    def origin(self) -> str:
        """Where rows come from, as dead letters name it: ``sql:<table>`` or ``sql:query``."""
        if self.table is None:
            return "sql:query"
        return f"sql:{self.schema_name}.{self.table}" if self.schema_name else f"sql:{self.table}"

    def resolved_url(self, dataset: str) -> str:
        if self.url is not None:
            return self.url
        assert self.url_env is not None
        value = os.environ.get(self.url_env)
        if not value:
            raise SourceError(
                f"{dataset}: environment variable {self.url_env} (the database URL) is not set",
                dataset=dataset,
                hint=f"export {self.url_env}=postgresql+psycopg2://user@host/db",
            )
        return value


@dataclass
class Position:
    """Watermark and the keys read at it (``None``: nothing read yet), and the reconcile's
    last time (ISO, UTC) and how many deleted keys reconciles have found."""

    watermark: Any = None
    at_watermark: set[str] = field(default_factory=set)
    loads: int = 0
    reconciled_at: str | None = None
    deleted_keys: int = 0


class SqlSource(Source):
    """Rows of a table or query, incrementally by a cursor column or in full."""

    kind = "sql"
    replay_refusal = (
        "a SQL source's dead letters are not replayed: the rows are still in the database. "
        "Fix the cause (the column's declared type, or a CAST in a `query:`), then have them "
        "read again: update their cursor column so that the next run reads them, or run "
        "with --full-refresh"
    )

    def __init__(self, dataset: str, project_root: Path, config: SqlConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self._engine: Any = None

    @property
    def replaces_table(self) -> bool:
        """A full load (no cursor) replaces the table; an incremental one adds to it."""
        return self.config.cursor is None

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # the newest commit holds the whole position
            if state.get("kind") == self.kind:
                return Position(
                    _decode(state.get("watermark")),
                    set(state.get("at_watermark", [])),
                    int(state.get("loads", 0)),
                    state.get("reconciled_at"),
                    int(state.get("deleted_keys", 0)),
                )
        return Position()

    def fresh(self) -> Position:
        return Position()

    # -- reading --------------------------------------------------------------------------

    def _connect(self) -> Any:
        if self._engine is None:
            import sqlalchemy as sa

            url = self.config.resolved_url(self.dataset)  # its own clear error when unset
            try:
                self._engine = sa.create_engine(url)
            except Exception as exc:  # a malformed URL or a missing driver
                raise SourceError(
                    f"{self.dataset}: cannot use the database URL: {exc}",
                    dataset=self.dataset,
                    hint="postgresql+psycopg2://…, mysql+pymysql://…, sqlite:///path",
                ) from None
        return self._engine

    def _relation(self) -> Any:
        import sqlalchemy as sa

        if self.config.query is not None:
            return sa.text(f"({self.config.query.strip().rstrip(';')}) AS lf_src")
        assert self.config.table is not None
        return sa.table(self.config.table, schema=self.config.schema_name)

    def _select(
        self, position: Position | None, *, lookback: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        import sqlalchemy as sa

        query = sa.select(sa.text("*")).select_from(self._relation())
        params: dict[str, Any] = {}
        cursor = self.config.cursor
        if cursor is not None:
            col: Any = sa.column(cursor)
            if position is not None and position.watermark is not None:
                low = (
                    _minus(position.watermark, self.config.lookback)
                    if lookback
                    else position.watermark
                )
                query = query.where(col >= sa.bindparam("low"))
                params["low"] = low
            query = query.order_by(col)
        return query, params

    def _arrow_schema(self, conn: Any) -> dict[str, Any]:
        """Column → Arrow type from the table's declared types, so every chunk has the same
        schema (inferring from values would give DECIMAL(3,2) here and DECIMAL(4,2) there).
        Queries, which cannot be reflected, get inferred types (see ``_to_arrow``)."""
        if self.config.table is None:
            return {}
        import sqlalchemy as sa

        try:
            columns = sa.inspect(conn).get_columns(
                self.config.table, schema=self.config.schema_name
            )
        except sa.exc.NoSuchTableError:
            raise SourceError(
                f"{self.dataset}: table {self.config.table!r} does not exist",
                dataset=self.dataset,
            ) from None
        types = {c["name"]: _arrow_type(c["type"]) for c in columns}
        return {name: typ for name, typ in types.items() if typ is not None}

    def pending(self, position: Any) -> str | None:
        if self.config.cursor is None:
            return "full load"
        import sqlalchemy as sa

        # Staleness looks for rows past what was read; the lookback window is re-read when a
        # run happens, but alone it does not make the table stale (it always has rows).
        query, params = self._select(position, lookback=False)
        probe = sa.select(sa.func.count()).select_from(query.order_by(None).subquery())
        try:
            with self._connect().connect() as conn:
                found = int(conn.execute(probe, params).scalar() or 0)
        except sa.exc.OperationalError as exc:
            raise TransientSourceError(
                f"{self.dataset}: database unavailable: {str(exc).splitlines()[0]}",
                dataset=self.dataset,
            ) from None
        fresh = found - (len(position.at_watermark) if position.watermark is not None else 0)
        if fresh > 0:
            return f"{fresh} new row(s)"
        return self._reconcile_due(position)

    def _reconcile_due(self, pos: Position, now: dt.datetime | None = None) -> str | None:
        """Why a reconcile is due (None: it is not, or nothing was read to compare with)."""
        config = self.config.reconcile
        if config is None or pos.watermark is None:
            return None
        if not sql_reconcile.is_due(config, pos.reconciled_at, now or sql_reconcile.clock()):
            return None
        last = pos.reconciled_at
        return f"reconcile due (last {last})" if last else "reconcile due (never reconciled)"

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        import sqlalchemy as sa

        pos: Position = position
        # The position after each batch of this run (which is one more load).
        after = Position(
            pos.watermark, set(pos.at_watermark), pos.loads + 1, pos.reconciled_at,
            pos.deleted_keys,
        )  # fmt: skip
        try:
            with self._connect().connect() as conn:
                # Reflect before streaming: an unbuffered result (MySQL) blocks the connection.
                schema = self._arrow_schema(conn)
                yield from self._reconcile(conn, schema, after)
                yield from self._load(conn, schema, pos, after)
        except sa.exc.OperationalError as exc:
            raise TransientSourceError(
                f"{self.dataset}: database unavailable: {str(exc).splitlines()[0]}",
                dataset=self.dataset,
            ) from None
        except sa.exc.DBAPIError as exc:
            raise SourceError(
                f"{self.dataset}: the source query failed: {str(exc.orig).splitlines()[0]}",
                dataset=self.dataset,
            ) from None

    def _reconcile(
        self, conn: Any, schema: dict[str, Any], after: Position
    ) -> Iterator[SourceBatch]:
        """The tombstones of the rows deleted in the source, as one batch (none when nothing
        is gone). Runs before the incremental read, so that the run's batches carry its time;
        a clean reconcile in a run with nothing new is recorded by the next batch."""
        if self.config.reconcile is None:
            return
        now = sql_reconcile.clock()
        if after.watermark is None:
            # Nothing read yet (a first load, --full-refresh): this run reads every row.
            after.reconciled_at = now.isoformat()
            return
        if self._reconcile_due(after, now) is None:
            return
        after.reconciled_at = now.isoformat()
        table = None if self.target is None else self.target()
        if table is None:
            return
        keys, cursor = self.config.primary_key, self.config.cursor
        gone = sql_reconcile.gone_rows(self.dataset, table, self._keys(conn, schema), keys, cursor)
        if not gone.num_rows:
            return
        after.deleted_keys += gone.num_rows
        yield SourceBatch(
            gone,
            self._state(after),
            f"{gone.num_rows:,} deleted row(s)",
            units=gone.num_rows,
            transformed=True,
        )

    def _keys(self, conn: Any, schema: dict[str, Any]) -> Iterator[Any]:
        """The source's primary keys now, in chunks. A key that cannot be typed is left out:
        its row went to the dead-letter queue, so the table does not have it either."""
        import sqlalchemy as sa

        keys = self.config.primary_key
        query: Any = sa.select(*(sa.column(k) for k in keys)).select_from(self._relation())
        result = conn.execution_options(stream_results=True).execute(query)
        while rows := result.fetchmany(sql_reconcile.KEY_CHUNK_ROWS):
            yield _typed(rows, keys, schema, self.config.origin, None)[0]

    def _load(
        self, conn: Any, schema: dict[str, Any], pos: Position, after: Position
    ) -> Iterator[SourceBatch]:
        """What is new since ``pos``: one batch per chunk (one in all for a full load)."""
        query, params = self._select(pos)
        key_cols = self.config.primary_key
        cursor = self.config.cursor
        result = conn.execution_options(stream_results=True).execute(query, params)
        names = list(result.keys())
        for name in [*key_cols, *([cursor] if cursor else [])]:
            if name not in names:
                raise SourceError(
                    f"{self.dataset}: column {name!r} is not in the source's rows",
                    dataset=self.dataset,
                    hint="found: " + ", ".join(names),
                )
        skip_seen = pos.watermark is not None and self.config.lookback is None
        loaded = False
        read = 0  # rows fetched by this run: a dead letter's ``line``
        while True:
            # A full load replaces the table: one batch, one commit, so readers never see a
            # table half replaced. Incremental loads commit chunk by chunk.
            rows = result.fetchall() if cursor is None else result.fetchmany(self.config.chunk_rows)
            if not rows:
                if cursor is None and not loaded:
                    # The source is empty: the full load makes the table empty too.
                    data = _to_arrow([], names, schema)
                    empty: dict[str, Any] = {"kind": self.kind, "loads": after.loads}
                    yield SourceBatch(data, empty, "0 rows (source is empty)")
                break
            loaded = True
            kept, lines = [], []
            for row in rows:
                read += 1
                if cursor is not None:
                    record = row._mapping
                    value = record[cursor]
                    key = _row_key(record, key_cols or names)
                    if skip_seen and value == pos.watermark and key in pos.at_watermark:
                        continue  # read before, at the watermark: exactly once
                    # Every row read moves the position, a rejected one too: it is not read
                    # again (it is in the dead-letter queue).
                    if after.watermark is None or value > after.watermark:
                        after.watermark, after.at_watermark = value, {key}
                    elif value == after.watermark:
                        after.at_watermark.add(key)
                kept.append(row)
                lines.append(read)
            if not kept:
                continue  # every row of the chunk was read before: nothing to commit
            data, rejected = _typed(kept, names, schema, self.config.origin, lines)
            if self.config.reconcile is not None:
                data = sql_reconcile.flag(data, False)
            described = f"{data.num_rows:,} row(s)"
            if rejected is not None:
                described += f", {rejected.num_rows:,} rejected"
            yield SourceBatch(
                data, self._state(after), described, units=len(kept), rejected=rejected
            )

    def _state(self, after: Position) -> dict[str, Any]:
        state: dict[str, Any] = {
            "kind": self.kind,
            "watermark": _encode(after.watermark),
            "at_watermark": sorted(after.at_watermark),
            "loads": after.loads,
        }
        if self.config.reconcile is not None:
            state["reconciled_at"] = after.reconciled_at
            state["deleted_keys"] = after.deleted_keys
        return state

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        target = self.config.table or "query"
        details: dict[str, Any] = {
            "cursor": self.config.cursor,
            "watermark": _encode(pos.watermark),
        }
        if self.config.reconcile is not None:
            details["reconcile_every"] = self.config.reconcile.every
            details["reconciled_at"] = pos.reconciled_at
            details["deleted_keys"] = pos.deleted_keys
        return SourceStatus(
            kind=self.kind, target=target, consumed=pos.loads, pending=0, details=details
        )


def _arrow_type(sql_type: Any) -> Any:
    """The Arrow type of a reflected SQLAlchemy column type (None: infer from values)."""
    import pyarrow as pa
    import sqlalchemy as sa

    if isinstance(sql_type, sa.Boolean):
        return pa.bool_()
    if isinstance(sql_type, sa.SmallInteger | sa.Integer | sa.BigInteger):
        return pa.int64()
    if isinstance(sql_type, sa.Float):
        return pa.float64()
    if isinstance(sql_type, sa.Numeric):
        if sql_type.precision is None:
            return pa.decimal128(38, 18)
        return pa.decimal128(min(int(sql_type.precision), 38), int(sql_type.scale or 0))
    if isinstance(sql_type, sa.DateTime):
        return pa.timestamp("us", tz="UTC" if sql_type.timezone else None)
    if isinstance(sql_type, sa.Date):
        return pa.date32()
    if isinstance(sql_type, sa.String):
        return pa.string()
    if isinstance(sql_type, sa.LargeBinary):
        return pa.binary()
    return None


def _to_arrow(rows: list[Any], names: list[str], schema: dict[str, Any]) -> Any:
    """A chunk as Arrow, with the declared types where known; inferred decimals widened to
    DECIMAL(38, 18) so that chunks of a query agree."""
    import pyarrow as pa

    arrays = [_column([r[i] for r in rows], schema.get(name)) for i, name in enumerate(names)]
    return pa.table(arrays, names=names)


def _column(values: list[Any], typ: Any) -> Any:
    import pyarrow as pa

    if typ is not None and pa.types.is_decimal(typ):
        # SQLite returns a DECIMAL column's values as floats; Arrow takes only Decimals.
        values = [Decimal(repr(v)) if isinstance(v, float) else v for v in values]
    array = pa.array(values, type=typ) if typ is not None else pa.array(values)
    if typ is None and pa.types.is_decimal(array.type):
        array = array.cast(pa.decimal128(38, 18))
    return array


def _conversion_errors() -> tuple[type[Exception], ...]:
    import pyarrow as pa

    return (pa.ArrowInvalid, pa.ArrowTypeError, pa.ArrowNotImplementedError, OverflowError)


def _typed(
    rows: list[Any],
    names: list[str],
    schema: dict[str, Any],
    origin: str,
    lines: list[int] | None,
) -> tuple[Any, Any]:
    """(the chunk as Arrow, its rows that cannot be typed as dead letters or None).

    The chunk is converted whole; only when that fails is each failing column converted
    value by value, and a row with a value that does not convert is rejected — with the
    column, the type expected and the value found — while the other rows go on. A query's
    column (no declared type) that fails whole takes the type of its first value.
    """
    errors = _conversion_errors()
    try:
        return _to_arrow(rows, names, schema), None
    except errors:
        pass
    from lakeforge.sources import dead_letters

    types = dict(schema)
    bad: dict[int, str] = {}
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        try:
            _column(values, schema.get(name))
            continue
        except errors:
            pass
        typ = types[name] = schema.get(name) or _first_type(values)
        for j, value in enumerate(values):
            if j in bad:
                continue
            try:
                _column([value], typ)
            except errors as exc:
                bad[j] = f"column {name!r}: expected {typ}, found {_shown(value)}: {exc}"
    good = [row for j, row in enumerate(rows) if j not in bad]
    rejected = dead_letters.rejects(
        [
            (_raw(rows[j], names), error, origin, None if lines is None else lines[j])
            for j, error in sorted(bad.items())
        ]
    )
    return _to_arrow(good, names, types), rejected


def _first_type(values: list[Any]) -> Any:
    """The type of a column's first value that converts on its own (null: none does)."""
    import pyarrow as pa

    for value in values:
        if value is not None:
            try:
                return _column([value], None).type
            except _conversion_errors():
                continue
    return pa.null()


def _shown(value: Any, limit: int = 80) -> str:
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _raw(row: Any, names: list[str]) -> bytes:
    """A rejected row as JSON: JSON values as they are, times in ISO, any other value as its
    ``repr`` (bytes, decimals …), so nothing of it is lost."""
    import json

    def other(value: Any) -> str:
        if isinstance(value, dt.datetime | dt.date | dt.time):
            return value.isoformat()
        return repr(value)

    text = json.dumps(dict(zip(names, row, strict=True)), default=other, ensure_ascii=False)
    return text.encode("utf-8", "backslashreplace")


def _row_key(record: Any, columns: list[str]) -> str:
    raw = "\x1f".join(repr(record[c]) for c in columns)
    return hashlib.sha1(raw.encode()).hexdigest()[:20] if len(columns) > 1 else raw


def _minus(value: Any, lookback: str | float | None) -> Any:
    if lookback is None:
        return value
    from lakeforge.quality.spec import parse_duration

    if isinstance(value, dt.datetime | dt.date):
        return value - dt.timedelta(seconds=parse_duration(lookback))
    if isinstance(value, Decimal):
        return value - Decimal(str(lookback))
    if isinstance(value, int | float):
        return value - type(value)(float(lookback))
    return value


def _encode(value: Any) -> Any:
    """A watermark as JSON (tagged so it is decoded to the same type)."""
    if isinstance(value, dt.datetime):
        return {"t": "datetime", "v": value.isoformat()}
    if isinstance(value, dt.date):
        return {"t": "date", "v": value.isoformat()}
    if isinstance(value, Decimal):
        return {"t": "decimal", "v": str(value)}
    return value


def _decode(value: Any) -> Any:
    if isinstance(value, dict) and "t" in value:
        kind, text = value["t"], value["v"]
        if kind == "datetime":
            return dt.datetime.fromisoformat(text)
        if kind == "date":
            return dt.date.fromisoformat(text)
        if kind == "decimal":
            return Decimal(text)
    return value
