"""The SQL database source: full or incremental loads from PostgreSQL, MariaDB/MySQL, SQLite.

Incremental loads follow a cursor column (``updated_at``, an id …). The position is the
high watermark plus the keys of the rows already read *at* the watermark: each read takes
``cursor >= watermark`` in cursor order and skips those keys, so rows that share the
watermark value — including ones committed after the previous read — are read exactly once,
never lost by a ``>`` and never duplicated by a ``>=``. ``lookback`` re-reads a window
below the watermark for sources whose cursor values arrive late (rows are then read again:
pair it with a ``merge`` write keyed on the primary key).

Rows are streamed (server-side cursors where the driver has them) and committed in chunks
of ``chunk_rows``, each chunk one Delta commit carrying the position after it.
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
from lakeforge.sources.base import Source, SourceBatch, SourceStatus


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

    @model_validator(mode="after")
    def _one_of(self) -> SqlConfig:
        if (self.url is None) == (self.url_env is None):
            raise ValueError("give exactly one of url and url_env")
        if (self.table is None) == (self.query is None):
            raise ValueError("give exactly one of table and query")
        if self.lookback is not None and self.cursor is None:
            raise ValueError("lookback needs a cursor")
        return self

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
    """Watermark and the keys read at it (``None``: nothing read yet)."""

    watermark: Any = None
    at_watermark: set[str] = field(default_factory=set)
    loads: int = 0


class SqlSource(Source):
    """Rows of a table or query, incrementally by a cursor column or in full."""

    kind = "sql"

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

    def _select(
        self, position: Position | None, *, lookback: bool = True
    ) -> tuple[Any, dict[str, Any]]:
        import sqlalchemy as sa

        relation: Any
        if self.config.query is not None:
            relation = sa.text(f"({self.config.query.strip().rstrip(';')}) AS lf_src")
        else:
            assert self.config.table is not None
            relation = sa.table(self.config.table, schema=self.config.schema_name)
        query = sa.select(sa.text("*")).select_from(relation)
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
        return f"{fresh} new row(s)" if fresh > 0 else None

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        import sqlalchemy as sa

        pos: Position = position
        query, params = self._select(pos)
        key_cols = self.config.primary_key
        cursor = self.config.cursor
        try:
            with self._connect().connect() as conn:
                # Reflect before streaming: an unbuffered result (MySQL) blocks the connection.
                schema = self._arrow_schema(conn)
                result = conn.execution_options(stream_results=True).execute(query, params)
                names = list(result.keys())
                for name in [*key_cols, *([cursor] if cursor else [])]:
                    if name not in names:
                        raise SourceError(
                            f"{self.dataset}: column {name!r} is not in the source's rows",
                            dataset=self.dataset,
                            hint="found: " + ", ".join(names),
                        )
                watermark, at_mark = pos.watermark, set(pos.at_watermark)
                skip_seen = watermark is not None and self.config.lookback is None
                loads = pos.loads + 1
                loaded = False
                while True:
                    # A full load replaces the table: one batch, one commit, so readers never
                    # see a table half replaced. Incremental loads commit chunk by chunk.
                    rows = (
                        result.fetchall()
                        if cursor is None
                        else result.fetchmany(self.config.chunk_rows)
                    )
                    if not rows:
                        if cursor is None and not loaded:
                            # The source is empty: the full load makes the table empty too.
                            data = _to_arrow([], names, schema)
                            empty: dict[str, Any] = {"kind": self.kind, "loads": loads}
                            yield SourceBatch(data, empty, "0 rows (source is empty)")
                        break
                    loaded = True
                    kept = []
                    for row in rows:
                        if skip_seen and cursor is not None:
                            record = row._mapping
                            if record[cursor] == pos.watermark and (
                                _row_key(record, key_cols or names) in pos.at_watermark
                            ):
                                continue  # read before, at the watermark: exactly once
                        kept.append(row)
                    if cursor is not None and rows:
                        for row in rows:
                            value = row._mapping[cursor]
                            key = _row_key(row._mapping, key_cols or names)
                            if watermark is None or value > watermark:
                                watermark, at_mark = value, {key}
                            elif value == watermark:
                                at_mark.add(key)
                    if not kept:
                        continue  # every row of the chunk was read before: nothing to commit
                    data = _to_arrow(kept, names, schema)
                    state: dict[str, Any] = {
                        "kind": self.kind,
                        "watermark": _encode(watermark),
                        "at_watermark": sorted(at_mark),
                        "loads": loads,
                    }
                    yield SourceBatch(data, state, f"{len(kept):,} row(s)", units=len(kept))
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

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        target = self.config.table or "query"
        return SourceStatus(
            kind=self.kind,
            target=target,
            consumed=pos.loads,
            pending=0,
            details={"cursor": self.config.cursor, "watermark": _encode(pos.watermark)},
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

    arrays = []
    for i, name in enumerate(names):
        values = [r[i] for r in rows]
        typ = schema.get(name)
        array = pa.array(values, type=typ) if typ is not None else pa.array(values)
        if typ is None and pa.types.is_decimal(array.type):
            array = array.cast(pa.decimal128(38, 18))
        arrays.append(array)
    return pa.table(arrays, names=names)


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
