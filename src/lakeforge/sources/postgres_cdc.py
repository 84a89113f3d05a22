"""The PostgreSQL CDC source: an initial snapshot, then the change stream of a logical
replication slot (pgoutput), exactly once into one change-feed dataset.

Position (committed with every batch, recovered from the table):

- ``lsn``: the stream position — the end of the last transaction the table holds (or the
  slot's consistent point before any). The slot resumes after it.
- ``partial``: (commit LSN, ordinal) of a transaction split over batches: the records of it
  before that ordinal are in the table.
- ``tables``: per table, the LSN of the snapshot it was read at, whether the snapshot is
  complete, the key of the last row read, rows read.

**Snapshot handover.** The first run creates the slot with ``EXPORT_SNAPSHOT``: the slot's
consistent point ``c`` and a snapshot that holds exactly the transactions committed before
``c``. The tables are read on that snapshot, in key order, a commit per chunk (op ``r``,
``lsn = c``); then the stream starts at ``c``. No change is in both (the snapshot has the
transactions committing before ``c``, the stream those after) and none is in neither.

**A snapshot cut short** (a crash; the exported snapshot dies with its connection): the next
run takes a new snapshot at ``c'`` from a *temporary* slot (``EXPORT_SNAPSHOT`` again: an
exact LSN) and reads the unfinished tables on from their last key; tables added to the
configuration, and ``lakeforge cdc resnapshot``, read a table from its start the same way.
The slot itself is kept, so the stream still starts at the committed position: changes
between ``c`` and ``c'`` are read too. Rows read at ``c'`` then carry ``seq`` values newer
than those changes, so the feed stays exact when applied by ``seq`` (an older change never
overwrites a newer one: ``lf.CDC``); nothing is lost and no row is read twice.

**Exactly once.** A batch's records and its position are one commit. The slot's confirmed
position is sent to the server only in :meth:`PostgresCdcSource.committed`, after that
commit; a crash before it makes the server send the batch again, and the table's position
skips it (a split transaction: its committed part).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterable, Iterator
from copy import deepcopy
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from lakeforge.errors import SourceError
from lakeforge.sources import pgoutput
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.sources.pg_changes import (
    Change,
    ChangeDecoder,
    FeedSchema,
    snapshot_changes,
    to_arrow,
)
from lakeforge.sources.pg_replication import (
    ChangeStream,
    Server,
    SnapshotReader,
    TableInfo,
    create_slot,
)
from lakeforge.sources.postgres_cdc_config import PostgresCdcConfig, format_size

log = logging.getLogger(__name__)

KIND = "postgres_cdc"
IDLE_TIMEOUT = 30.0  # seconds without any progress from the server: the catch-up ends
ASK_AFTER = 2.0  # seconds idle (no ping from the server) before asking for its position


@dataclass
class TableProgress:
    """The snapshot of one table: at which LSN, done or not, the last key read, rows."""

    snapshot_lsn: int
    done: bool = False
    after: list[Any] | None = None
    rows: int = 0

    def to_json(self) -> dict[str, Any]:
        return {"snapshot_lsn": self.snapshot_lsn, "done": self.done, "after": self.after,
                "rows": self.rows}  # fmt: skip


@dataclass
class Position:
    lsn: int | None = None  # None: nothing read yet (the slot is created afresh)
    partial: tuple[int, int] | None = None
    tables: dict[str, TableProgress] = field(default_factory=dict)
    changes: int = 0  # change records streamed so far (snapshot rows not counted)
    commit_ts: int | None = None  # commit time of the newest transaction read (µs)
    lag_bytes: int | None = None
    lag_seconds: float | None = None

    def state(self, slot: str) -> dict[str, Any]:
        return {
            "kind": KIND,
            "slot": slot,
            "lsn": self.lsn,
            "lsn_text": None if self.lsn is None else pgoutput.format_lsn(self.lsn),
            "partial": None if self.partial is None else list(self.partial),
            "tables": {name: t.to_json() for name, t in sorted(self.tables.items())},
            "changes": self.changes,
            "commit_ts": self.commit_ts,
            "lag_bytes": self.lag_bytes,
            "lag_seconds": self.lag_seconds,
        }

    @classmethod
    def from_state(cls, state: dict[str, Any]) -> Position:
        partial = state.get("partial")
        return cls(
            lsn=state.get("lsn"),
            partial=None if partial is None else (int(partial[0]), int(partial[1])),
            tables={
                name: TableProgress(
                    int(t["snapshot_lsn"]), bool(t["done"]), t.get("after"), int(t.get("rows", 0))
                )
                for name, t in state.get("tables", {}).items()
            },
            changes=int(state.get("changes", 0)),
            commit_ts=state.get("commit_ts"),
            lag_bytes=state.get("lag_bytes"),
            lag_seconds=state.get("lag_seconds"),
        )


class PostgresCdcSource(Source):
    """Row changes of PostgreSQL tables, from a logical replication slot (pgoutput)."""

    kind = KIND
    replay_refusal = (
        "a CDC source's dead letters are not replayed: the rows are still in the database. "
        "Fix the cause, then read the table again: lakeforge cdc resnapshot DATASET TABLE"
    )

    def __init__(
        self,
        dataset: str,
        project_root: Path,
        config: PostgresCdcConfig,
        resnapshot: list[str] | None = None,
    ) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.slot = config.slot_name(dataset)
        self.publication = config.publication_name(dataset)
        self.resnapshot = list(resnapshot or [])
        unknown = [t for t in self.resnapshot if t not in config.tables]
        if unknown:
            raise SourceError(
                f"{dataset} does not capture {', '.join(unknown)}",
                dataset=dataset,
                hint="captured tables: " + ", ".join(config.tables),
            )
        #: why the executor builds it even when the plan says up to date (cdc resnapshot)
        self.reason = f"re-snapshot of {', '.join(self.resnapshot)}" if self.resnapshot else ""
        self._stream: ChangeStream | None = None
        self._metrics: dict[str, Any] = {}

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Position:
        for state in committed:  # newest first; each state is the whole position
            if state.get("kind") == KIND:
                return Position.from_state(state)
        return Position()

    def fresh(self) -> Position:
        return Position()

    def _to_snapshot(self, pos: Position) -> list[str]:
        return [
            t
            for t in self.config.tables
            if t in self.resnapshot or t not in pos.tables or not pos.tables[t].done
        ]

    def pending(self, position: Any) -> str | None:
        pos: Position = position
        if pos.lsn is None:
            return "initial snapshot" if self.config.snapshot else "new replication slot"
        if todo := self._to_snapshot(pos):
            return f"snapshot of {', '.join(todo)} to read"
        with self.server() as server:
            slot = server.slot(self.slot)
            if slot is None:
                return f"replication slot {self.slot} is missing"
            behind = server.wal_lsn() - max(pos.lsn, slot.confirmed_flush or 0)
        return f"{behind:,} byte(s) of WAL to read" if behind > 0 else None

    def server(self) -> Server:
        """A connection to the database (checks, catalog, slot state)."""
        config = self.config
        return Server(config.dsn(self.dataset), self.dataset, config.connect_timeout)

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        pos = deepcopy(position)
        assert isinstance(pos, Position)
        self._metrics = {}
        with self.server() as server:
            fresh = pos.lsn is None
            info = server.slot(self.slot)
            todo = self.config.tables if fresh else self._to_snapshot(pos)
            temp = 1 if todo and not fresh and (self.config.snapshot or self.resnapshot) else 0
            server.check_logical(new_slots=(1 if info is None else 0) + temp)
            tables = server.describe(self.config.tables)
            if note := server.ensure_publication(self.publication, self.config.tables):
                log.info("%s: %s", self.dataset, note)
            tables = server.published_columns(tables, self.publication)
            schema = FeedSchema(self.dataset)
            for table in tables.values():
                schema.register(table.name, list(table.columns))
            self.check_lag(server, "start")
            if fresh:
                if info is not None:
                    server.drop_slot(self.slot)  # nothing of it was committed
                yield from self._initial(tables, schema, pos)
            else:
                if info is None:
                    raise SourceError(
                        f"{self.dataset}: replication slot {self.slot} does not exist, yet the "
                        f"table has read up to {pgoutput.format_lsn(pos.lsn or 0)}: the "
                        "changes since cannot be read",
                        dataset=self.dataset,
                        hint=f"re-read everything: lakeforge run --full-refresh {self.dataset} "
                        "(creates the slot and snapshots the tables again)",
                    )
                server.check_slot(self.slot, info)
                server.wait_slot_free(self.slot)
                if todo:
                    yield from self._resnapshot(todo, tables, schema, pos)
            yield from self._catch_up(server, tables, schema, pos)
            self.check_lag(server, "end")

    def _initial(
        self, tables: dict[str, TableInfo], schema: FeedSchema, pos: Position
    ) -> Iterator[SourceBatch]:
        """Create the slot with an exported snapshot; read every table on it."""
        config = self.config
        dsn = config.dsn(self.dataset)
        conn, consistent, snapshot = create_slot(
            dsn, self.dataset, self.slot, temporary=False, timeout=config.connect_timeout
        )
        pos.lsn, pos.partial = consistent, None
        pos.tables = {t: TableProgress(consistent, done=not config.snapshot) for t in config.tables}
        if not config.snapshot:
            conn.close()
            # Commit the slot's starting point now: a later run must resume from it.
            yield self._batch([], schema, pos, "replication slot created (no snapshot)")
            return
        try:
            reader = SnapshotReader(dsn, self.dataset, snapshot, config.connect_timeout)
        finally:
            conn.close()  # the snapshot is imported (or failed): the slot stays
        yield from self._read_tables(reader, list(config.tables), tables, schema, pos)

    def _resnapshot(
        self, todo: list[str], tables: dict[str, TableInfo], schema: FeedSchema, pos: Position
    ) -> Iterator[SourceBatch]:
        """Read tables on a new snapshot, taken at an exact LSN from a temporary slot."""
        config = self.config
        # With `snapshot: false`, tables new to the configuration are captured from now on;
        # a re-snapshot asked for (lakeforge cdc resnapshot) is read all the same.
        later = [t for t in todo if not config.snapshot and t not in self.resnapshot]
        todo = [t for t in todo if t not in later]
        for t in later:
            pos.tables[t] = TableProgress(pos.lsn or 0, done=True)
        if not todo:
            yield self._batch([], schema, pos, f"capturing {', '.join(later)} from now on")
            return
        dsn = config.dsn(self.dataset)
        name = f"lakeforge_snap_{uuid.uuid4().hex[:16]}"
        conn, at, snapshot = create_slot(
            dsn, self.dataset, name, temporary=True, timeout=config.connect_timeout
        )
        try:
            reader = SnapshotReader(dsn, self.dataset, snapshot, config.connect_timeout)
        finally:
            conn.close()  # drops the temporary slot; the imported snapshot lives on
        for t in todo:
            progress = pos.tables.get(t)
            if progress is None or t in self.resnapshot:
                pos.tables[t] = TableProgress(at)
            else:  # cut short: on from the last key read, on the new snapshot
                progress.snapshot_lsn = at
        yield from self._read_tables(reader, todo, tables, schema, pos)

    def _read_tables(
        self,
        reader: SnapshotReader,
        names: list[str],
        tables: dict[str, TableInfo],
        schema: FeedSchema,
        pos: Position,
    ) -> Iterator[SourceBatch]:
        chunk = self.config.snapshot_chunk_rows
        unsaved = False
        try:
            for name in names:
                info, progress = tables[name], pos.tables[name]
                at = {c[0]: i for i, c in enumerate(info.columns)}
                order = [at[k] for k in info.key]
                while not progress.done:
                    rows = reader.chunk(info, progress.after, chunk)
                    progress.done = len(rows) < chunk
                    unsaved = True
                    if not rows:
                        continue
                    progress.after = [rows[-1][i] for i in order]
                    progress.rows += len(rows)
                    changes = snapshot_changes(info, rows, progress.snapshot_lsn)
                    described = f"{len(rows):,} snapshot row(s) of {name}"
                    yield self._batch(changes, schema, pos, described)
                    unsaved = False
        finally:
            reader.close()
        if unsaved:  # a table found empty, or ending on a full chunk: record that it is done
            yield self._batch([], schema, pos, "snapshot complete")

    def _batch(
        self, changes: list[Change], schema: FeedSchema, pos: Position, described: str
    ) -> SourceBatch:
        data, rejected = to_arrow(changes, schema)
        if rejected is not None:
            described += f", {rejected.num_rows:,} rejected"
        return SourceBatch(
            data, pos.state(self.slot), described, units=len(changes), rejected=rejected
        )

    # -- the stream -----------------------------------------------------------------------

    def _catch_up(
        self, server: Server, tables: dict[str, TableInfo], schema: FeedSchema, pos: Position
    ) -> Iterator[SourceBatch]:
        """Read the slot from ``pos.lsn`` up to the server's WAL position at the start, in
        batches. A streaming loop can call this again and again."""
        config = self.config
        assert pos.lsn is not None
        target = server.wal_lsn()
        slot = server.slot(self.slot)
        start = max(pos.lsn, slot.confirmed_flush or 0) if slot is not None else pos.lsn
        stream = ChangeStream(config.dsn(self.dataset), self.dataset, config.connect_timeout)
        self._stream = stream
        try:
            stream.start(self.slot, self.publication, start)
            decoder = ChangeDecoder(tables, schema, pos.partial)
            yield from _CatchUp(self, stream, decoder, schema, pos, target, start).run()
        finally:
            self._stream = None
            stream.close()

    def committed(self, state: dict[str, Any]) -> None:
        """The batch is in the table: confirm its position to the server (the slot may now
        free the WAL before it)."""
        if self._stream is not None and state.get("lsn") is not None:
            self._stream.confirm(int(state["lsn"]))

    # -- lag ------------------------------------------------------------------------------

    def check_lag(self, server: Server, when: str) -> None:
        """Record the slot's lag; past ``max_lag.warn`` warn; past ``max_lag.stop`` after a
        run has read what it could, fail the task."""
        slot = server.slot(self.slot)
        if slot is None or slot.confirmed_flush is None:
            return
        lag = max(0, server.wal_lsn() - slot.confirmed_flush)
        self._metrics[f"lag_bytes_{when}"] = lag
        limits = self.config.max_lag
        level = limits.level(lag)
        self._metrics["lag_guard"] = level
        if level == "ok":
            return
        message = (
            f"{self.dataset}: replication slot {self.slot} holds {format_size(lag)} of WAL "
            f"not yet read ({when} of the run)"
        )
        if level == "stop" and when == "end":
            raise SourceError(
                message + f", more than max_lag.stop ({format_size(limits.stop or 0)}): the "
                "feed does not keep up with the database",
                dataset=self.dataset,
                hint="run it more often or with larger batches (max_changes_per_batch); the "
                "server keeps that WAL until the slot has read it",
            )
        log.warning("%s (max_lag.%s)", message, level)

    def metrics(self) -> dict[str, Any]:
        """Task metrics of the last run: slot lag in bytes (start, end) and seconds, the
        lag guard's level."""
        return dict(self._metrics)

    # -- status ---------------------------------------------------------------------------

    def status(self, position: Any) -> SourceStatus:
        pos: Position = position
        snapshot = {
            name: {
                "done": t.done,
                "rows": t.rows,
                "at": pgoutput.format_lsn(t.snapshot_lsn),
                "last_key": t.after,
            }
            for name, t in sorted(pos.tables.items())
        }
        last = None if pos.commit_ts is None else _iso(pos.commit_ts)
        details = {
            "slot": self.slot,
            "publication": self.publication,
            "lsn": None if pos.lsn is None else pgoutput.format_lsn(pos.lsn),
            "last_commit": last,
            "snapshot": snapshot,
            "lag_bytes": pos.lag_bytes,
            "lag_seconds": pos.lag_seconds,
        }
        pending = sum(
            1 for t in self.config.tables if t not in pos.tables or not pos.tables[t].done
        )
        return SourceStatus(
            kind=KIND,
            target=", ".join(self.config.tables),
            consumed=pos.changes,
            pending=pending,
            details=details,
        )


def _iso(micros: int) -> str:
    return datetime.fromtimestamp(micros / 1e6, UTC).isoformat()


class _CatchUp:
    """One catch-up read of the stream: messages → records → batches, cut at transaction
    boundaries when possible.

    psycopg2 moves the confirmed position on by itself when a server keepalive arrives and
    the last frame read is at or before the position we confirmed (``send_feedback``): it
    assumes everything before the server's position is handled. A frame inside a
    transaction can start before that position (a Relation message starts at 0, a
    transaction that began early starts early). The keepalives the server sends by itself
    when it has sent everything come after a Commit: safe. A keepalive we ask for
    (``ask_position``, only when the server stays silent) may come in the middle of a
    transaction, so from then on, complete transactions we hold are committed before the
    next read whenever the last frame starts at or before the confirmed position: the
    confirmed position never passes a change that is not in the table.
    """

    def __init__(
        self,
        source: PostgresCdcSource,
        stream: ChangeStream,
        decoder: ChangeDecoder,
        schema: FeedSchema,
        pos: Position,
        target: int,
        start: int,
    ) -> None:
        self.source, self.stream, self.decoder = source, stream, decoder
        self.schema, self.pos, self.target = schema, pos, target
        self.pending: list[Change] = []
        self.complete = 0  # records of complete transactions at the head of `pending`
        # the end of the last complete transaction read (the slot's start: all before it is
        # in the table or of no captured table)
        self.complete_lsn = start
        self.complete_ts = pos.commit_ts
        self.first_at: float | None = None  # when the oldest pending record was read
        self.asked = False

    def run(self) -> Iterator[SourceBatch]:
        config = self.source.config
        stream, decoder = self.stream, self.decoder
        last_progress = time.monotonic()
        last_ask = 0.0
        seen_end = stream.wal_end
        max_changes, max_seconds = config.max_changes_per_batch, config.max_batch_seconds
        while True:
            if self.pending and (
                len(self.pending) >= max_changes
                or (self.complete and time.monotonic() - (self.first_at or 0) >= max_seconds)
            ):
                yield self._cut()
            if self.asked and self.complete and stream.last_data_start <= stream.confirmed:
                yield self._flush_complete()
            if not decoder.in_transaction and max(stream.wal_end, self.complete_lsn) >= self.target:
                break
            got = stream.read()
            now = time.monotonic()
            if got is None:
                if stream.wal_end != seen_end:
                    seen_end, last_progress = stream.wal_end, now
                if now - last_progress > IDLE_TIMEOUT:
                    log.warning(
                        "%s: the server sent nothing for %ss before reaching %s; the catch-up "
                        "ends at %s", self.source.dataset, IDLE_TIMEOUT,
                        pgoutput.format_lsn(self.target), pgoutput.format_lsn(stream.wal_end),
                    )  # fmt: skip
                    break
                if now - max(last_progress, last_ask) >= ASK_AFTER:
                    # The server pings when it has nothing more to send; it did not: ask it
                    # where it is, holding no complete transaction (see the class docstring).
                    if self.complete:
                        yield self._flush_complete()
                    stream.ask_position()
                    self.asked, last_ask = True, now
                stream.wait(0.2)
                continue
            last_progress = now
            msg = pgoutput.decode(got[1])
            records = decoder.handle(msg)
            if records:
                if self.first_at is None:
                    self.first_at = now
                self.pending.extend(records)
            if isinstance(msg, pgoutput.Commit):
                self.complete = len(self.pending)
                self.complete_lsn, self.complete_ts = msg.end_lsn, msg.commit_ts
        if self.complete:
            yield self._flush_complete()
        self._heartbeat()

    def _cut(self) -> SourceBatch:
        """A batch of the complete transactions held; or, when one transaction alone
        exceeds the batch size, of what is read of it (the position then says how far)."""
        if self.complete:
            return self._flush_complete()
        begin = self.decoder.begin
        assert begin is not None
        records, self.pending = self.pending, []
        self.first_at = None
        self.pos.partial = (begin.final_lsn, self.decoder.ordinal)
        return self._emit(records, f"part of transaction {begin.xid}")

    def _flush_complete(self) -> SourceBatch:
        records = self.pending[: self.complete]
        self.pending = self.pending[self.complete :]
        self.complete = 0
        self.first_at = time.monotonic() if self.pending else None
        self.pos.lsn, self.pos.partial = self.complete_lsn, None
        self.pos.commit_ts = self.complete_ts
        return self._emit(records, "")

    def _emit(self, records: list[Change], what: str) -> SourceBatch:
        pos = self.pos
        pos.changes += len(records)
        server_at = max(self.target, self.stream.wal_end)
        pos.lag_bytes = max(0, server_at - (pos.lsn or 0))
        if records and records[-1].commit_ts is not None:
            now_us = datetime.now(UTC).timestamp() * 1e6
            pos.lag_seconds = round(max(0.0, (now_us - records[-1].commit_ts) / 1e6), 3)
            self.source._metrics["lag_seconds"] = pos.lag_seconds
        txs = len({r.lsn for r in records})
        described = what or f"{len(records):,} change(s) in {txs:,} transaction(s)"
        if what:
            described += f": {len(records):,} change(s)"
        return self.source._batch(records, self.schema, pos, described)

    def _heartbeat(self) -> None:
        """Nothing read is left uncommitted: confirm the server's position, so that WAL of
        tables not captured (or of nothing) is not held back by the slot."""
        stream = self.stream
        if self.complete or self.pending:
            return
        stream.ask_position()
        stream.wait(0.5)  # the reply: a keepalive with the server's position
        at = stream.wal_end
        if stream.read() is None:
            at = stream.wal_end  # (a newer transaction instead: the position stays before it)
        at = max(at, self.complete_lsn)
        if at > stream.confirmed:
            stream.confirm(at)
