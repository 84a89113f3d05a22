"""pgoutput messages → change records → the change feed as Arrow.

One record per row change, in the order the transaction made them:

- ``op``: ``r`` snapshot read, ``c`` insert, ``u`` update, ``d`` delete, ``t`` truncate;
- ``lsn``: the LSN of the transaction's commit record (int64); a snapshot row: the
  snapshot's LSN;
- ``ordinal``: the change's position in its transaction (0, 1, …); a snapshot row: ``-1``;
- ``seq``: ``lsn × 2³² + ordinal`` as ``decimal(38, 0)``, one number ordering every change;
- ``commit_ts`` (UTC) and ``tx_id`` (xid) of the transaction; null for snapshot rows;
- ``table``: ``schema.table``;
- the table's columns: the row after the change; for ``d`` the key columns only; for ``t``
  none;
- ``before``: the row before, as JSON of text values: the key of a delete (or of an update
  that changed it), the whole old row under REPLICA IDENTITY FULL; null when not sent;
- ``_unchanged_cols``: columns whose value the server did not send (unchanged TOASTed
  values): NULL in the record; the row keeps the value it has.

A snapshot at LSN ``s`` holds exactly the transactions whose commit record lies before
``s``, so ``s × 2³² − 1`` sorts a snapshot row after every change it contains and before
every change it does not.

An update that changes the key is two records: ``d`` of the old key, ``c`` of the new one
(a row keyed by the old key must go). A truncate is one ``t`` record per table.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

from lakeforge.errors import SourceError
from lakeforge.sources import pgoutput
from lakeforge.sources.pg_arrow import arrow_type, to_array
from lakeforge.sources.pg_replication import FEED_COLUMNS

if TYPE_CHECKING:
    import pyarrow as pa

    from lakeforge.sources.pg_replication import TableInfo

SNAPSHOT_ORDINAL = -1
VALUE_CACHE_KEYS = 200_000  # rows whose latest values are kept to fill unchanged TOAST values


def seq_of(lsn: int, ordinal: int) -> int:
    return (lsn << 32) + ordinal


@dataclass(slots=True)
class Change:
    op: str
    lsn: int
    ordinal: int
    commit_ts: int | None  # microseconds since the Unix epoch
    xid: int | None
    table: str
    values: dict[str, str | None]
    unchanged: list[str] | None = None
    before: dict[str, str | None] | None = None


class FeedSchema:
    """The feed's data columns and their Arrow types, over every captured table.

    A column name shared by two tables must have one type; a table's later schema (a
    Relation message after ``ALTER TABLE``) replaces its earlier one. Columns seen once stay
    for the run, so every batch has the same columns (a dropped column is NULL).
    """

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset
        self.types: dict[str, pa.DataType] = {}
        self._by_table: dict[str, dict[str, pa.DataType]] = {}

    def register(self, table: str, columns: list[tuple[str, int, int]]) -> None:
        mine = {name: arrow_type(oid, typmod) for name, oid, typmod in columns}
        for name, typ in mine.items():
            for other, theirs in self._by_table.items():
                if other != table and name in theirs and theirs[name] != typ:
                    raise SourceError(
                        f"{self.dataset}: column {name!r} is {typ} in {table} and "
                        f"{theirs[name]} in {other}: one feed cannot hold both",
                        dataset=self.dataset,
                        column=name,
                        hint="capture those tables with separate sources (one dataset each)",
                    )
        self._by_table[table] = mine
        for name, typ in mine.items():
            self.types[name] = typ


class ChangeDecoder:
    """Turns the messages of the stream into :class:`Change` records.

    ``skip``: (commit LSN, ordinal) — the records of that transaction before that ordinal
    are already in the table (a transaction split over batches, resumed after a crash).
    Ordinals count every change the slot sends, captured table or not, so they do not
    depend on the configuration.
    """

    def __init__(
        self,
        tables: dict[str, TableInfo],
        schema: FeedSchema,
        skip: tuple[int, int] | None = None,
    ) -> None:
        self.tables = tables
        self.schema = schema
        self.skip = skip
        self.relations: dict[int, pgoutput.Relation] = {}
        self.begin: pgoutput.Begin | None = None
        self.ordinal = 0
        self.commit: pgoutput.Commit | None = None
        # (table, key) → the row's latest values seen in this run's stream (bounded; a key of
        # one column is its value, of several a tuple)
        self._latest: dict[tuple[str, Any], dict[str, str | None]] = {}

    @property
    def in_transaction(self) -> bool:
        return self.begin is not None

    def handle(self, msg: pgoutput.Message) -> list[Change]:
        """The records of one message (none for Begin, Commit, Relation …)."""
        if isinstance(msg, pgoutput.Begin):
            self.begin, self.ordinal, self.commit = msg, 0, None
            return []
        if isinstance(msg, pgoutput.Commit):
            self.begin, self.commit = None, msg
            return []
        if isinstance(msg, pgoutput.Relation):
            self.relations[msg.relid] = msg
            if msg.qualified in self.tables:
                self.schema.register(
                    msg.qualified, [(c.name, c.type_oid, c.typmod) for c in msg.columns]
                )
            return []
        if isinstance(msg, pgoutput.Insert | pgoutput.Update | pgoutput.Delete):
            return self._row_change(msg)
        if isinstance(msg, pgoutput.Truncate):
            out = []
            for relid in msg.relids:
                rel = self._relation(relid)
                if rel.qualified in self.tables:
                    self._forget_table(rel.qualified)
                out.extend(self._emit("t", rel, {}))
            return out
        return []  # Origin, Type, LogicalMessage: nothing to record

    def _relation(self, relid: int) -> pgoutput.Relation:
        rel = self.relations.get(relid)
        if rel is None:
            raise SourceError(
                f"{self.schema.dataset}: the change stream refers to relation {relid} before "
                "describing it (a pgoutput protocol violation)",
                dataset=self.schema.dataset,
            )
        return rel

    def _emit(
        self,
        op: str,
        rel: pgoutput.Relation,
        values: dict[str, str | None],
        unchanged: list[str] | None = None,
        before: dict[str, str | None] | None = None,
    ) -> list[Change]:
        """A record at the next ordinal, unless it belongs to a table not captured or to
        the already committed part of a resumed transaction."""
        assert self.begin is not None, "a change outside a transaction"
        ordinal = self.ordinal
        self.ordinal += 1
        if rel.qualified not in self.tables:
            return []
        skip = self.skip
        if skip is not None and skip[0] == self.begin.final_lsn and ordinal < skip[1]:
            return []
        begin = self.begin
        return [
            Change(op, begin.final_lsn, ordinal, begin.commit_ts, begin.xid, rel.qualified,
                   values, unchanged or None, before)
        ]  # fmt: skip

    def _row_change(self, msg: pgoutput.Insert | pgoutput.Update | pgoutput.Delete) -> list[Change]:
        rel = self._relation(msg.relid)
        names = [c.name for c in rel.columns]
        table = rel.qualified
        info = self.tables.get(table)
        key_cols = list(info.key) if info is not None else [c.name for c in rel.columns if c.key]
        new_row = None if isinstance(msg, pgoutput.Delete) else msg.new
        if (
            new_row is not None
            and getattr(msg, "old", None) is None
            and pgoutput.UNCHANGED not in new_row
        ):
            # The common case: the whole new row, as text (binary transfer is not requested).
            values = cast("dict[str, str | None]", dict(zip(names, new_row, strict=True)))
            if info is not None:
                self._remember(table, values, key_cols, values)
            return self._emit("c" if isinstance(msg, pgoutput.Insert) else "u", rel, values)
        if isinstance(msg, pgoutput.Delete):
            old = _texts(names, msg.old)
            key = {k: old.get(k) for k in key_cols}
            if info is not None:
                self._forget(table, key, key_cols)
            # A "K" tuple has every column, NULL but the key: `before` is the key then.
            return self._emit("d", rel, key, before=old if msg.old_kind == "O" else key)
        new = _row(names, msg.new)
        old_key, full_old, before = None, None, None
        if isinstance(msg, pgoutput.Update) and msg.old is not None:
            old = _texts(names, msg.old)
            old_key = {k: old.get(k) for k in key_cols}
            full_old = old if msg.old_kind == "O" else None
            before = old if msg.old_kind == "O" else old_key
            for k in key_cols:  # a TOASTed key the update did not change
                if new.get(k) is pgoutput.UNCHANGED:
                    new[k] = old_key[k]
        new_key = {k: _text(new.get(k)) for k in key_cols}
        moved = old_key is not None and old_key != new_key
        unchanged = [n for n, v in new.items() if v is pgoutput.UNCHANGED]
        if unchanged and info is not None:
            found = old_key if moved and old_key is not None else new_key
            unchanged = self._fill(table, found, key_cols, new, unchanged, full_old)
        values = {n: _text(v) for n, v in new.items()}
        if info is not None:
            if moved and old_key is not None:
                self._forget(table, old_key, key_cols)
            if unchanged:
                self._forget(table, new_key, key_cols)
            else:
                self._remember(table, new_key, key_cols, values)
        if isinstance(msg, pgoutput.Insert):
            return self._emit("c", rel, values)
        if moved and old_key is not None:
            # The key changed: the old row goes, a new one comes.
            return self._emit("d", rel, old_key, before=before) + self._emit(
                "c", rel, values, unchanged
            )
        return self._emit("u", rel, values, unchanged, before=before)

    def _fill(
        self,
        table: str,
        key: dict[str, str | None],
        key_cols: list[str],
        new: dict[str, Any],
        unchanged: list[str],
        old_row: dict[str, str | None] | None,
    ) -> list[str]:
        """Fill unchanged TOASTed values from the old row (REPLICA IDENTITY FULL sends it
        whole) or from the row's latest values in this run; the columns still unknown."""
        one = len(key_cols) == 1
        latest = self._latest.get(
            (table, key[key_cols[0]] if one else tuple(key[k] for k in key_cols))
        )
        left = []
        for name in unchanged:
            if old_row is not None and name in old_row:
                new[name] = old_row[name]
            elif latest is not None and name in latest:
                new[name] = latest[name]
            else:
                left.append(name)
        return left

    def _remember(
        self, table: str, key: dict[str, str | None], key_cols: list[str], values: dict[str, Any]
    ) -> None:
        latest = self._latest
        slot = (table, key[key_cols[0]] if len(key_cols) == 1 else tuple(key[k] for k in key_cols))
        latest.pop(slot, None)  # re-inserted last: the oldest go first
        latest[slot] = values
        if len(latest) > VALUE_CACHE_KEYS:
            del latest[next(iter(latest))]

    def _forget(self, table: str, key: dict[str, str | None], key_cols: list[str]) -> None:
        get = key.get
        slot = (table, get(key_cols[0]) if len(key_cols) == 1 else tuple(get(k) for k in key_cols))
        self._latest.pop(slot, None)

    def _forget_table(self, table: str) -> None:
        for slot in [s for s in self._latest if s[0] == table]:
            del self._latest[slot]


def _text(value: pgoutput.Value) -> str | None:
    if value is None or value is pgoutput.UNCHANGED:
        return None
    return value.decode("utf-8") if isinstance(value, bytes) else str(value)


def _row(names: list[str], values: tuple[pgoutput.Value, ...]) -> dict[str, Any]:
    return dict(zip(names, values, strict=True))


def _texts(names: list[str], values: tuple[pgoutput.Value, ...] | None) -> dict[str, str | None]:
    """A row's sent values as text (unchanged ones left out)."""
    if values is None:
        return {}
    return {n: _text(v) for n, v in zip(names, values, strict=True) if v is not pgoutput.UNCHANGED}


def snapshot_changes(
    table: TableInfo, rows: list[tuple[str | None, ...]], lsn: int
) -> list[Change]:
    names = [c[0] for c in table.columns]
    return [
        Change(
            "r", lsn, SNAPSHOT_ORDINAL, None, None, table.name, dict(zip(names, row, strict=True))
        )
        for row in rows
    ]


def feed_schema(schema: FeedSchema) -> pa.Schema:
    import pyarrow as pa

    head = [
        pa.field("op", pa.string()),
        pa.field("lsn", pa.int64()),
        pa.field("ordinal", pa.int64()),
        pa.field("seq", pa.decimal128(38, 0)),
        pa.field("commit_ts", pa.timestamp("us", tz="UTC")),
        pa.field("tx_id", pa.int64()),
        pa.field("table", pa.string()),
    ]
    assert [f.name for f in head] == list(FEED_COLUMNS)
    data = [pa.field(name, typ) for name, typ in schema.types.items()]
    tail = [pa.field("before", pa.string()), pa.field("_unchanged_cols", pa.list_(pa.string()))]
    return pa.schema(head + data + tail)


def to_arrow(changes: list[Change], schema: FeedSchema) -> tuple[pa.Table, pa.Table | None]:
    """The records as the feed's Arrow table, and those with a value that does not fit its
    column's type as dead letters (None: all fit)."""
    import orjson
    import pyarrow as pa
    import pyarrow.compute as pc

    target = feed_schema(schema)
    arrays: list[Any] = [
        pa.array([c.op for c in changes], pa.string()),
        pa.array([c.lsn for c in changes], pa.int64()),
        pa.array([c.ordinal for c in changes], pa.int64()),
        pa.array([seq_of(c.lsn, c.ordinal) for c in changes], pa.decimal128(38, 0)),
        pa.array([c.commit_ts for c in changes], pa.int64()).cast(pa.timestamp("us", tz="UTC")),
        pa.array([c.xid for c in changes], pa.int64()),
        pa.array([c.table for c in changes], pa.string()),
    ]
    bad: dict[int, list[str]] = {}
    for name, typ in schema.types.items():
        array, errors = to_array([c.values.get(name) for c in changes], typ)
        arrays.append(array)
        for row, reason in errors.items():
            bad.setdefault(row, []).append(f"column {name!r}: {reason}")
    arrays.append(
        pa.array(
            [None if c.before is None else orjson.dumps(c.before).decode() for c in changes],
            pa.string(),
        )
    )
    arrays.append(pa.array([c.unchanged for c in changes], pa.list_(pa.string())))
    table = pa.Table.from_arrays(arrays, schema=target)
    if not bad:
        return table, None
    from lakeforge.sources import dead_letters

    keep = pa.array([i not in bad for i in range(len(changes))])
    rejected = dead_letters.rejects(
        [
            (
                orjson.dumps(
                    {
                        "op": c.op,
                        "table": c.table,
                        "lsn": pgoutput.format_lsn(c.lsn),
                        "ordinal": c.ordinal,
                        "values": c.values,
                        "before": c.before,
                    }
                ),
                "; ".join(bad[i]),
                f"postgres_cdc:{c.table}@{pgoutput.format_lsn(c.lsn)}",
                c.ordinal,
            )
            for i, c in enumerate(changes)
            if i in bad
        ]
    )
    return pc.filter(table, keep), rejected
