"""Event time on a streaming table: late data, dedup, windows and the state between batches.

:class:`EventTimeOperator` sits between a source batch and the table's transform (the
executor calls it in ``_ingest``). For each batch, against the state the previous batches
left (recovered from the table's newest commit):

1. **typing** — the ``event_time`` column (text is cast to ``TIMESTAMP``, offsets applied);
   a record without a valid event time goes to the dead-letter queue with the reason;
2. **late split** — against the watermark of the previous batches, an event whose windows
   are all closed (without a window: whose event time is before the watermark; for session
   windows too, since such an event could merge into a session already written) goes to
   ``<dataset>__late`` with the reason and the watermark — never dropped silently;
3. **dedup** — an event whose ``dedup.key`` was seen (in the state, or earlier in the batch)
   is dropped and counted (``rows_deduplicated``);
4. **watermark** — ``max(previous, newest event time − allowed_lateness)``;
5. **input** — the transform reads the events with ``window_start`` / ``window_end`` (one
   row per event and window): in ``append`` mode all events of the windows this batch
   closes (each window is written once), in ``update`` mode all events of the windows the
   new events touched (the write upserts them); without a window, the new events;
6. **state** — the events of windows still open and the dedup keys inside ``within`` of
   the watermark: a Parquet snapshot written before the commit and named in it
   (``state.py``).

A batch that closes no window still commits: no rows, its source position and its state.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any

from lakeforge.engines.connection import connect
from lakeforge.errors import ConfigError
from lakeforge.storage.write import q
from lakeforge.streaming.spec import WINDOW_END, WINDOW_START, micros
from lakeforge.streaming.state import StateStore
from lakeforge.streaming.watermark import Clock, shown, to_micros
from lakeforge.streaming.windows import ET, WE, WS, assign_sql, last_window_end, late_condition

if TYPE_CHECKING:
    import duckdb
    import pyarrow as pa

    from lakeforge.graph.spec import Dataset
    from lakeforge.storage.delta import DeltaStore

#: The key of a commit's source state that holds the streaming state's reference.
STREAM_KEY = "stream"
#: The source-state kind of a commit made only to advance an idle stream's watermark.
IDLE_KIND = "idle"
_SEQ = "__lf_seq"  # arrival order within a batch: the first of duplicates wins
_NEW = "__lf_new"
_KEY = "__lf_key"  # a state row that is a dedup key, not an event
_INTERNAL = (ET, _SEQ, _NEW, _KEY, WS, WE)


@dataclass
class Step:
    """What one batch became.

    Attributes:
        events: the transform's input (with ``window_start`` / ``window_end`` when windowed).
        rejected: records without a valid event time (dead letters, ``REJECT_SCHEMA``).
        late: late events, with ``_lf_late_reason`` and ``_lf_watermark``.
        rows_late / rows_deduplicated: counts of the two.
        rows_events: new events accepted into the windows (or passed through).
        windows: windows in the input (closed now in append mode, touched in update mode).
        batch_max_event_time: the newest accepted event time of the batch (microseconds).
        idle: the step only advanced an idle stream's watermark.
    """

    events: pa.Table
    rejected: pa.Table | None = None
    late: pa.Table | None = None
    rows_late: int = 0
    rows_deduplicated: int = 0
    rows_events: int = 0
    windows: int = 0
    batch_max_event_time: int | None = None
    idle: bool = False


@dataclass
class _Pending:
    clock: Clock
    table: pa.Table | None
    next_close: int | None
    step: Step
    reference: dict[str, Any] = field(default_factory=dict)


class EventTimeOperator:
    """The event-time part of a streaming table's micro-batches (see the module doc)."""

    def __init__(
        self,
        ds: Dataset,
        root: str,
        storage_options: dict[str, str] | None = None,
        *,
        file_column: str | None = None,
        row_column: str | None = None,
    ) -> None:
        config = ds.config
        assert config.event_time is not None
        self.ds = ds
        self.event_time = config.event_time
        self.window = config.window
        self.update = config.output_mode == "update"
        self.lateness = micros(config.allowed_lateness)
        self.dedup = config.dedup
        self.idle_timeout = None if config.idle_timeout is None else micros(config.idle_timeout)
        self.file_column = file_column
        self.row_column = row_column
        self.store = StateStore(root, ds.name, storage_options)
        self.clock = Clock()
        self.table: pa.Table | None = None
        self.next_close: int | None = None
        self._pending: _Pending | None = None
        self.last_step: Step | None = None
        self.reference: dict[str, Any] = {}
        self._con: duckdb.DuckDBPyConnection | None = None
        self._made: list[tuple[str, str]] = []

    @classmethod
    def of(cls, ds: Dataset, store: DeltaStore) -> EventTimeOperator | None:
        """The operator of ``ds`` (None when it declares no ``event_time``)."""
        if ds.config.event_time is None:
            return None
        source = ds.config.source
        return cls(
            ds,
            store.root,
            store.storage_options,
            file_column=getattr(source, "file_column", None),
            row_column=getattr(source, "row_column", None),
        )

    # -- recovery ---------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> None:
        """Restore the state the newest commit names (``committed``: source states, newest
        first; nothing, e.g. on ``--full-refresh``: start empty)."""
        for state in committed:
            stream = state.get(STREAM_KEY)
            if not isinstance(stream, dict):
                continue
            self.clock = Clock.from_state(stream)
            close = stream.get("next_close_us")
            self.next_close = None if close is None else int(close)
            self.table = self.store.read(stream["state"]) if stream.get("state") else None
            self.reference = stream
            return

    # -- one batch ---------------------------------------------------------------------------

    def before(self, data: pa.Table, now: datetime) -> Step:
        """Split, deduplicate and window a source batch; returns the transform's input."""
        self._require(data.column_names, [self.event_time], "the source's records")
        return self._run(data, now, None)

    def idle_step(self, now: datetime) -> Step | None:
        """A step with no new events that lets processing time close windows, when the
        stream has been idle for ``idle_timeout`` and that closes one (None otherwise)."""
        if self.idle_timeout is None or self.table is None or self.next_close is None:
            return None
        mark = self.clock.idle_watermark(self.lateness, self.idle_timeout, now)
        if mark is None or mark < self.next_close:
            return None
        return self._run(None, now, mark)

    def check_output(self, data: pa.Table) -> None:
        """A windowed table's output keeps the window: upserts and readers need it."""
        if self.window is not None:
            self._require(data.column_names, [WINDOW_START, WINDOW_END], "its output", True)

    def state_to_commit(self, batch: int, source_state: dict[str, Any]) -> dict[str, Any]:
        """Write batch ``batch``'s snapshot and return ``source_state`` naming it (the
        commit that carries it makes the state current)."""
        pending = self._pending
        assert pending is not None, "state_to_commit before before()"
        reference: dict[str, Any] = {**pending.clock.to_state(), "state": None, "rows": 0}
        if pending.table is not None and pending.table.num_rows:
            path, size = self.store.write(batch, pending.table)
            events = pending.table.num_rows - _count_keys(pending.table)
            reference.update(state=path, rows=pending.table.num_rows, bytes=size, events=events)
        reference["next_close_us"] = pending.next_close
        reference["next_close"] = shown(pending.next_close)
        pending.reference = reference
        return {**source_state, STREAM_KEY: reference}

    def committed(self, batch: int) -> None:
        """Batch ``batch`` (the one just prepared) is committed: its state is current and the
        snapshots before it are superseded."""
        pending = self._pending
        assert pending is not None
        self.clock, self.table, self.next_close = pending.clock, pending.table, pending.next_close
        self.reference = pending.reference
        self.last_step = pending.step
        self._pending = None
        self.store.delete_before(batch)

    def metrics(self) -> dict[str, Any]:
        """Where the stream stands, for the task's metrics."""
        ref = self.reference
        step = self.last_step
        return {
            "watermark": shown(self.clock.watermark),
            "max_event_time": shown(self.clock.max_event_time),
            "batch_max_event_time": None if step is None else shown(step.batch_max_event_time),
            "next_close": shown(self.next_close),
            "state_rows": int(ref.get("rows", 0) or 0),
            "state_bytes": int(ref.get("bytes", 0) or 0),
            "state_file": ref.get("state"),
        }

    # -- the work ----------------------------------------------------------------------------

    def close(self) -> None:
        """Release the DuckDB connection the steps share."""
        if self._con is not None:
            self._con.close()
            self._con = None

    def _connection(self) -> duckdb.DuckDBPyConnection:
        # One connection for all the batches of a build: opening one (and loading the time
        # zone support) costs more than a small batch's work.
        if self._con is None:
            self._con = connect()
            self._con.sql("SET TimeZone = 'UTC'")
        return self._con

    def _create(self, con: duckdb.DuckDBPyConnection, kind: str, name: str, sql: str) -> None:
        """``CREATE TEMP <kind> name AS sql``, dropped when the step ends."""
        con.sql(f"CREATE TEMP {kind} {name} AS {sql}")
        self._made.append((kind, name))

    def _run(self, data: pa.Table | None, now: datetime, forced: int | None) -> Step:
        con = self._connection()
        try:
            if self.table is not None:
                con.register("__lf_state", self.table)
            step, clock = self._admit(con, data, now)
            if forced is not None:
                clock = Clock(forced, clock.max_event_time, clock.last_arrival)
                step.idle = True
            step.events, table, close = self._window(con, clock, step)
        finally:
            while self._made:
                kind, name = self._made.pop()
                con.sql(f"DROP {kind} IF EXISTS {name}")
            for name in ("__lf_batch", "__lf_state"):
                with contextlib.suppress(Exception):  # registered only when there was one
                    con.unregister(name)
        self._pending = _Pending(clock, table, close, step)
        return step

    def _admit(
        self, con: duckdb.DuckDBPyConnection, data: pa.Table | None, now: datetime
    ) -> tuple[Step, Clock]:
        """Typing, late split and dedup of the new records into table ``accepted``, and the
        clock after them."""
        import pyarrow as pa

        step = Step(events=pa.table({}))
        if data is None:  # an idle step: no new record, the state's shape
            assert self.table is not None
            self._create(
                con,
                "TABLE",
                "accepted",
                f"SELECT * EXCLUDE ({_KEY}), 0::BIGINT AS {_SEQ} FROM __lf_state LIMIT 0",
            )
            return step, self.clock
        import numpy as np

        data = data.append_column(_SEQ, pa.array(np.arange(data.num_rows, dtype=np.int64)))
        con.register("__lf_batch", data)
        cast = self._cast(data.schema.field(self.event_time).type)
        bad = con.sql(
            f"SELECT * EXCLUDE ({_SEQ}) FROM __lf_batch WHERE {cast} IS NULL"
        ).to_arrow_table()
        if bad.num_rows:
            step.rejected = self._dead_letters(bad)
        ts = q(self.event_time)
        columns = ", ".join(
            f"{cast} AS {ts}" if c == self.event_time else q(c) for c in data.column_names
        )
        self._create(
            con,
            "TABLE",
            "fresh",
            f"SELECT {columns}, epoch_us({cast}) AS {ET} FROM __lf_batch WHERE {cast} IS NOT NULL",
        )
        fresh = "fresh"
        mark = self.clock.watermark
        if mark is not None:
            late = late_condition(self.window, mark)
            step.late = con.sql(
                f"SELECT * EXCLUDE ({ET}, {_SEQ}), {self._late_reason(mark)} AS _lf_late_reason, "
                f"make_timestamp({mark}::BIGINT)::TIMESTAMPTZ AS _lf_watermark "
                f"FROM fresh WHERE {late}"
            ).to_arrow_table()
            step.rows_late = step.late.num_rows
            fresh = f"(SELECT * FROM fresh WHERE NOT ({late}))"
        if self.dedup is not None:
            self._require(data.column_names, self.dedup.key, "the source's records")
            keys = ", ".join(q(k) for k in self.dedup.key)
            nulls = " OR ".join(f"{q(k)} IS NULL" for k in self.dedup.key)
            first = (
                f"SELECT * EXCLUDE (__lf_rn) FROM (SELECT *, CASE WHEN {nulls} THEN 1 ELSE "
                f"row_number() OVER (PARTITION BY {keys} ORDER BY {_SEQ}) END AS __lf_rn "
                f"FROM {fresh}) WHERE __lf_rn = 1"
            )
            if self.table is not None and _count_keys(self.table):
                on = " AND ".join(f"f.{q(k)} = s.{q(k)}" for k in self.dedup.key)
                first = (
                    f"SELECT f.* FROM ({first}) f ANTI JOIN "
                    f"(SELECT {keys} FROM __lf_state WHERE {_KEY}) s ON {on}"
                )
            self._create(con, "TABLE", "accepted", first)
            offered = _scalar(con, f"SELECT count(*) FROM {fresh}")
            step.rows_deduplicated = offered - _scalar(con, "SELECT count(*) FROM accepted")
        else:
            self._create(con, "VIEW", "accepted", f"SELECT * FROM {fresh}")
        row = _first_row(con, f"SELECT count(*), max({ET}) FROM accepted")
        assert row is not None
        step.rows_events = int(row[0])
        step.batch_max_event_time = None if row[1] is None else int(row[1])
        clock = self.clock.advanced(step.batch_max_event_time, self.lateness, now)
        return step, clock

    def _window(
        self, con: duckdb.DuckDBPyConnection, clock: Clock, step: Step
    ) -> tuple[pa.Table, pa.Table | None, int | None]:
        """The transform's input, the new state and the next window end to close."""
        previous, mark = self.clock.watermark, clock.watermark
        events = f"SELECT * EXCLUDE ({_SEQ}), true AS {_NEW} FROM accepted"
        if self.table is not None:
            events = (
                f"SELECT * EXCLUDE ({_KEY}), false AS {_NEW} FROM __lf_state WHERE NOT {_KEY} "
                f"UNION ALL BY NAME {events}"
            )
        self._create(con, "VIEW", "events", events)
        names = [c for c in con.sql("SELECT * FROM events LIMIT 0").columns if c not in _INTERNAL]
        keys = self._dedup_keys(con, mark)
        if self.window is None:
            select = ", ".join(q(c) for c in names)
            data = con.sql(f"SELECT {select} FROM events WHERE {_NEW}").to_arrow_table()
            return data, keys, None
        clash = [c for c in (WINDOW_START, WINDOW_END) if c in names]
        if clash:
            raise ConfigError(
                f"{self.ds.name}: the events already have a {clash[0]} column; a windowed "
                "table adds window_start and window_end itself",
                dataset=self.ds.name,
                location=self.ds.location,
                hint=f"rename {clash[0]} in the source or upstream",
            )
        self._require(names, self.window.by, "the events")
        self._create(con, "TABLE", "assigned", assign_sql(self.window, "events"))
        after = "TRUE" if previous is None else f"{WE} > {previous}"
        if not self.update:  # the windows this batch closes, each once
            closes = "FALSE" if mark is None else f"{WE} <= {mark}"
            chosen = f"SELECT * FROM assigned WHERE {after} AND {closes}"
        else:  # the windows the new events touched, all their events
            by = [q(c) for c in self.window.by]
            same = " AND ".join(
                [f"a.{c} IS NOT DISTINCT FROM t.{c}" for c in by]
                + [f"a.{WS} = t.{WS}", f"a.{WE} = t.{WE}"]
            )
            touched = ", ".join([*by, WS, WE])
            chosen = (
                f"SELECT a.* FROM assigned a SEMI JOIN (SELECT DISTINCT {touched} FROM assigned "
                f"WHERE {_NEW} AND {after}) t ON {same}"
            )
        self._create(con, "VIEW", "chosen", chosen)
        select = ", ".join(q(c) for c in names)
        data = con.sql(
            f"SELECT {select}, make_timestamp({WS})::TIMESTAMPTZ AS {q(WINDOW_START)}, "
            f"make_timestamp({WE})::TIMESTAMPTZ AS {q(WINDOW_END)} FROM chosen"
        ).to_arrow_table()
        group = ", ".join([*(q(c) for c in self.window.by), WS, WE])
        step.windows = _scalar(con, f"SELECT count(*) FROM (SELECT DISTINCT {group} FROM chosen)")
        open_after = "TRUE" if mark is None else f"{WE} > {mark}"
        close_row = _first_row(con, f"SELECT min({WE}) FROM assigned WHERE {open_after}")
        close = None if close_row is None or close_row[0] is None else int(close_row[0])
        end = last_window_end(self.window)
        if end is None:  # sessions: an event stays while its session is open
            kept = f"SELECT * EXCLUDE ({_NEW}, {WS}, {WE}) FROM assigned WHERE {open_after}"
        else:
            still = "TRUE" if mark is None else f"{end} > {mark}"
            kept = f"SELECT * EXCLUDE ({_NEW}) FROM events WHERE {still}"
        state = con.sql(f"SELECT *, false AS {_KEY} FROM ({kept})").to_arrow_table()
        if keys is not None:
            import pyarrow as pa

            state = pa.concat_tables([state, keys], promote_options="permissive")
        return data, state, close

    def _dedup_keys(self, con: duckdb.DuckDBPyConnection, mark: int | None) -> pa.Table | None:
        """The dedup keys to remember: those seen whose event time is within ``within`` of
        the watermark (rows of the state with only the key columns and the event time)."""
        if self.dedup is None:
            return None
        keys = ", ".join([*(q(k) for k in self.dedup.key), ET])
        bound = "TRUE" if mark is None else f"{ET} >= {mark - micros(self.dedup.within)}"
        union = f"SELECT {keys} FROM accepted"
        if self.table is not None and _count_keys(self.table):
            union += f" UNION ALL BY NAME SELECT {keys} FROM __lf_state WHERE {_KEY}"
        return con.sql(f"SELECT *, true AS {_KEY} FROM ({union}) WHERE {bound}").to_arrow_table()

    # -- helpers -----------------------------------------------------------------------------

    def _cast(self, arrow_type: Any) -> str:
        """SQL typing the event-time column as TIMESTAMPTZ (the session is UTC).

        One type whatever each batch's reader inferred (text in a batch with a bad value,
        TIMESTAMPTZ for ``...Z`` values, TIMESTAMP for naive ones), so the table and its
        windows keep one schema: naive times are taken as UTC, offsets are applied, text
        that is no time gives NULL (a dead letter)."""
        import pyarrow as pa

        column = q(self.event_time)
        if pa.types.is_timestamp(arrow_type):
            return f"CAST({column} AS TIMESTAMPTZ)"
        if pa.types.is_date(arrow_type):
            return f"CAST(CAST({column} AS TIMESTAMP) AS TIMESTAMPTZ)"
        if (
            pa.types.is_string(arrow_type)
            or pa.types.is_large_string(arrow_type)
            or pa.types.is_string_view(arrow_type)
        ):
            return f"TRY_CAST({column} AS TIMESTAMPTZ)"
        raise ConfigError(
            f"{self.ds.name}: event_time column {self.event_time!r} is {arrow_type}; it must "
            "be a timestamp, a date, or text holding one",
            dataset=self.ds.name,
            column=self.event_time,
            location=self.ds.location,
            hint="convert it upstream (e.g. to_timestamp(epoch_seconds))",
        )

    def _late_reason(self, mark: int) -> str:
        """SQL for each late event's reason, e.g. ``event time 2024-01-01 12:00:01 is before
        the watermark 2024-01-01 12:05:00``."""
        when = f"CAST(make_timestamp({ET}) AS VARCHAR)"
        watermark = f"CAST(make_timestamp({mark}::BIGINT) AS VARCHAR)"
        end = last_window_end(self.window)
        if end is None:
            return f"'event time ' || {when} || ' is before the watermark ' || {watermark}"
        which = "window" if self.window is not None and self.window.tumbling else "last window"
        return (
            f"'event time ' || {when} || ' is late: its {which} ended at ' || "
            f"CAST(make_timestamp({end}) AS VARCHAR) || ', at or before the watermark ' || "
            f"{watermark}"
        )

    def _dead_letters(self, bad: pa.Table) -> pa.Table:
        """Records without a valid event time, as dead letters (the record as JSON, why,
        and its file and line when the source gives them)."""
        import orjson

        from lakeforge.sources.dead_letters import rejects

        rows: list[tuple[bytes | None, str, str, int | None]] = []
        for record in bad.to_pylist():
            value = record.get(self.event_time)
            why = (
                f"event time {self.event_time} is NULL"
                if value is None
                else f"event time {self.event_time} {value!r} is not a timestamp"
            )
            file = record.get(self.file_column) if self.file_column else None
            line = record.get(self.row_column) if self.row_column else None
            raw = orjson.dumps(record, default=str)
            ordinal = None if line is None else int(line)
            rows.append((raw, why, "" if file is None else str(file), ordinal))
        return rejects(rows)

    def _require(
        self, found: list[str], wanted: list[str], where: str, output: bool = False
    ) -> None:
        missing = [c for c in wanted if c not in found]
        if not missing:
            return
        hint = (
            "select window_start and window_end (and group by them): SELECT device_id, "
            "window_start, window_end, count(*) AS n FROM source GROUP BY ALL"
            if output
            else "check event_time / window.by / dedup.key against the columns"
        )
        raise ConfigError(
            f"{self.ds.name}: {', '.join(missing)} not in {where} "
            f"({', '.join(c for c in found if c not in _INTERNAL) or 'no columns'})",
            dataset=self.ds.name,
            column=missing[0],
            location=self.ds.location,
            hint=hint,
        )


def _count_keys(table: pa.Table) -> int:
    import pyarrow.compute as pc

    if _KEY not in table.column_names:
        return 0
    return int(pc.sum(table.column(_KEY).cast("int64")).as_py() or 0)


def _scalar(con: duckdb.DuckDBPyConnection, sql: str) -> int:
    row = _first_row(con, sql)
    return int(row[0]) if row and row[0] is not None else 0


def _first_row(con: duckdb.DuckDBPyConnection, sql: str) -> tuple[Any, ...] | None:
    rows = con.sql(sql).fetchall()  # all: a result left unfetched blocks the connection
    return rows[0] if rows else None


def idle_reason(ds: Dataset, committed: Iterable[dict[str, Any]], now: datetime) -> str | None:
    """Why an event-time table with nothing new to read is due anyway: it has been idle for
    ``idle_timeout`` and processing time now closes a window (None otherwise). Reads only the
    newest commit's metadata (the planner calls it)."""
    config = ds.config
    if config.event_time is None or config.idle_timeout is None:
        return None
    for state in committed:
        stream = state.get(STREAM_KEY)
        if not isinstance(stream, dict):
            continue
        close = stream.get("next_close_us")
        if close is None:
            return None
        clock = Clock.from_state(stream)
        mark = clock.idle_watermark(
            micros(config.allowed_lateness), micros(config.idle_timeout), now
        )
        if mark is None or mark < int(close):
            return None
        idle = (to_micros(now) - to_micros(clock.last_arrival or now)) / 1e6
        return f"idle for {idle:.0f}s: processing time closes windows"
    return None
