"""The PostgreSQL side of the CDC source: checks, publication, slots, snapshots, the stream.

Everything that talks to the server is here, through psycopg2 (the ``postgres`` extra,
imported on first use through :func:`psycopg2_module`): psycopg2 has the replication
protocol (``LogicalReplicationConnection``); psycopg 3 does not.

- :class:`Server`: a normal connection; the setup checks (``wal_level``, slots, WAL
  senders, the REPLICATION privilege), the tables' columns and keys, the publication, the
  slot's state and the lag.
- :func:`create_slot`: ``CREATE_REPLICATION_SLOT … LOGICAL pgoutput EXPORT_SNAPSHOT`` on a
  replication connection: the slot's consistent point and a snapshot of the database
  exactly at it, which :class:`SnapshotReader` imports (``SET TRANSACTION SNAPSHOT``) to
  read tables in key order, chunk by chunk.
- :class:`ChangeStream`: ``START_REPLICATION`` of the slot with ``pgoutput`` (protocol 1),
  raw messages and the confirmed position (``send_feedback``).

Identifiers are quoted by ``psycopg2.sql``; values are bound parameters.
"""

from __future__ import annotations

import contextlib
import select
import time
from dataclasses import dataclass
from types import ModuleType
from typing import Any

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.sources.pg_arrow import SESSION_OPTIONS
from lakeforge.sources.pgoutput import parse_lsn

#: Columns of the change feed itself; a captured column may not have one of these names.
FEED_COLUMNS = ("op", "lsn", "ordinal", "seq", "commit_ts", "tx_id", "table")
FEED_TAIL = ("before", "_unchanged_cols")
RESERVED = frozenset(FEED_COLUMNS + FEED_TAIL)
SLOT_BUSY_WAIT = 15.0  # seconds to wait for a slot held by a walsender whose client died


def psycopg2_module() -> ModuleType:
    """psycopg2, or a ConfigError saying to install ``lakeforge[postgres]``."""
    from lakeforge.extras import require

    return require("psycopg2", what="the postgres_cdc source")


@dataclass(frozen=True)
class TableInfo:
    """A captured table as the catalog describes it now."""

    name: str  # schema.table
    relid: int
    columns: tuple[tuple[str, int, int], ...]  # (name, type OID, typmod), in column order
    key: tuple[str, ...]  # primary key, or the replica identity index
    identity: str  # relreplident: d(efault), f(ull), i(ndex), n(othing)

    @property
    def schema(self) -> str:
        return self.name.split(".", 1)[0]

    @property
    def table(self) -> str:
        return self.name.split(".", 1)[1]


@dataclass(frozen=True)
class SlotInfo:
    plugin: str | None
    database: str | None
    active_pid: int | None
    confirmed_flush: int | None
    restart_lsn: int | None
    wal_status: str | None


def _lsn(text: str | None) -> int | None:
    return None if text is None else parse_lsn(text)


def connect(dsn: str, dataset: str, *, timeout: float, replication: bool = False) -> Any:
    """A connection with the session settings of ``pg_arrow`` (errors made precise)."""
    psycopg2: Any = psycopg2_module()
    kwargs: dict[str, Any] = {
        "options": SESSION_OPTIONS,
        "connect_timeout": max(1, int(timeout)),
        "application_name": f"lakeforge:{dataset}"[:63],
    }
    if replication:
        from psycopg2.extras import LogicalReplicationConnection

        kwargs["connection_factory"] = LogicalReplicationConnection
    try:
        return psycopg2.connect(dsn, **kwargs)
    except psycopg2.OperationalError as exc:
        message = _first_line(exc)
        if "replication" in message and ("permission" in message or "must be" in message):
            raise SourceError(
                f"{dataset}: the replication connection was refused: {message}",
                dataset=dataset,
                hint="grant it: ALTER ROLE <user> WITH REPLICATION",
            ) from None
        if "pg_hba.conf" in message:
            raise SourceError(
                f"{dataset}: the server refused the connection: {message}",
                dataset=dataset,
                hint="allow this client in pg_hba.conf (a logical replication connection "
                "matches the database name, like a normal one) and reload the server",
            ) from None
        raise TransientSourceError(
            f"{dataset}: cannot connect to PostgreSQL: {message}", dataset=dataset
        ) from None


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0] if text else type(exc).__name__


def database_error(dataset: str, exc: Exception, doing: str) -> SourceError:
    """A psycopg2 error as a SourceError: connection trouble is transient, the rest not."""
    psycopg2 = psycopg2_module()
    message = f"{dataset}: {doing} failed: {_first_line(exc)}"
    if isinstance(exc, psycopg2.OperationalError | psycopg2.InterfaceError):
        return TransientSourceError(message, dataset=dataset)
    return SourceError(message, dataset=dataset)


class Server:
    """A normal (autocommit) connection for the checks and the catalog."""

    def __init__(self, dsn: str, dataset: str, timeout: float) -> None:
        self.dsn, self.dataset, self.timeout = dsn, dataset, timeout
        self.conn = connect(dsn, dataset, timeout=timeout)
        self.conn.autocommit = True
        self.version = int(self.conn.server_version)

    def close(self) -> None:
        self.conn.close()

    def __enter__(self) -> Server:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def rows(self, query: Any, params: Any = None) -> list[tuple[Any, ...]]:
        with self.conn.cursor() as cur:
            cur.execute(query, params)
            return list(cur.fetchall()) if cur.description else []

    def _fail(self, message: str, hint: str) -> SourceError:
        return SourceError(f"{self.dataset}: {message}", dataset=self.dataset, hint=hint)

    # -- setup checks -------------------------------------------------------------------------

    def check_logical(self, new_slots: int) -> None:
        """Raise a SourceError naming the setting or privilege that stops logical
        replication. ``new_slots``: slots this run creates (its own, a snapshot's)."""
        ((level, max_slots, max_senders, slots, senders, user, replication, superuser),) = (
            self.rows(
                "SELECT current_setting('wal_level'), "
                "current_setting('max_replication_slots')::int, "
                "current_setting('max_wal_senders')::int, "
                "(SELECT count(*) FROM pg_replication_slots), "
                "(SELECT count(*) FROM pg_stat_activity WHERE backend_type = 'walsender'), "
                "current_user, r.rolreplication OR EXISTS (SELECT 1 FROM pg_roles g "
                # Amazon RDS grants replication through membership of rds_replication.
                "WHERE g.rolname = 'rds_replication' AND pg_has_role(r.oid, g.oid, 'MEMBER')), "
                "r.rolsuper FROM pg_roles r WHERE r.rolname = current_user"
            )
        )
        if level != "logical":
            raise self._fail(
                f"wal_level is {level!r}, and log-based change data capture needs "
                "wal_level = logical",
                "set wal_level = logical in postgresql.conf (or run ALTER SYSTEM SET "
                "wal_level = logical) and restart PostgreSQL: wal_level is only read at "
                "server start, a reload is not enough",
            )
        if not (replication or superuser):
            raise self._fail(
                f"role {user!r} may not use replication (it has no REPLICATION attribute)",
                f'grant it: ALTER ROLE "{user}" WITH REPLICATION',
            )
        if max_slots - slots < new_slots:
            raise self._fail(
                f"max_replication_slots = {max_slots} and {slots} slot(s) exist: this run "
                f"needs {new_slots} more (the source's slot, or a temporary one for a "
                "snapshot)",
                "raise max_replication_slots in postgresql.conf and restart PostgreSQL, or "
                "drop slots nobody reads (SELECT slot_name, active FROM pg_replication_slots)",
            )
        if max_senders - senders < 1:
            raise self._fail(
                f"max_wal_senders = {max_senders} and {senders} WAL sender(s) are running: "
                "none is free for this source",
                "raise max_wal_senders in postgresql.conf and restart PostgreSQL",
            )

    def describe(self, names: list[str]) -> dict[str, TableInfo]:
        """Each table's columns and key; a precise error for a table that cannot be
        captured."""
        out: dict[str, TableInfo] = {}
        for name in names:
            schema, table = name.split(".", 1)
            found = self.rows(
                "SELECT c.oid, c.relkind, c.relreplident FROM pg_class c "
                "JOIN pg_namespace n ON n.oid = c.relnamespace "
                "WHERE n.nspname = %s AND c.relname = %s",
                (schema, table),
            )
            if not found:
                raise self._fail(
                    f"table {name} does not exist",
                    "write tables as schema.table, with the exact (case-sensitive) names",
                )
            relid, relkind, identity = found[0]
            if relkind != "r":
                raise self._fail(
                    f"{name} is not a plain table (relkind {relkind!r})",
                    "capture ordinary tables; partitioned tables and views are not supported",
                )
            columns = tuple(
                (n, int(t), int(m))
                for n, t, m in self.rows(
                    "SELECT attname, atttypid, atttypmod FROM pg_attribute WHERE attrelid = %s "
                    "AND attnum > 0 AND NOT attisdropped AND attgenerated = '' ORDER BY attnum",
                    (relid,),
                )
            )
            if clash := sorted(RESERVED & {c[0] for c in columns}):
                raise self._fail(
                    f"{name} has column(s) {', '.join(clash)}, a name the change feed uses "
                    "for itself",
                    "the feed's own columns are " + ", ".join(sorted(RESERVED)) + ": rename "
                    "the source column, or capture the table with another source",
                )
            key = self._key(relid, identity)
            if identity == "n":
                raise self._fail(
                    f"{name} has REPLICA IDENTITY NOTHING: its updates and deletes carry no key",
                    f"ALTER TABLE {name} REPLICA IDENTITY DEFAULT (with a primary key) or FULL",
                )
            if not key:
                raise self._fail(
                    f"{name} has no primary key: its rows cannot be identified",
                    f"add a primary key, or ALTER TABLE {name} REPLICA IDENTITY USING INDEX "
                    "<a unique index on NOT NULL columns>",
                )
            out[name] = TableInfo(name, int(relid), columns, key, identity)
        return out

    def _key(self, relid: int, identity: str) -> tuple[str, ...]:
        found = self.rows(
            "SELECT i.indisprimary, i.indisreplident, ARRAY(SELECT a.attname FROM "
            "unnest(i.indkey) WITH ORDINALITY k(attnum, ord) JOIN pg_attribute a "
            "ON a.attrelid = i.indrelid AND a.attnum = k.attnum ORDER BY k.ord) "
            "FROM pg_index i WHERE i.indrelid = %s AND (i.indisprimary OR i.indisreplident)",
            (relid,),
        )
        for primary, replident, cols in sorted(found, key=lambda r: not r[1]):
            if (identity == "i" and replident) or (identity != "i" and primary):
                return tuple(cols)
        return ()

    def published_columns(
        self, tables: dict[str, TableInfo], publication: str
    ) -> dict[str, TableInfo]:
        """PostgreSQL 15 publications may list columns (the stream then sends only those)
        or filter rows (not supported: the snapshot would not match the stream)."""
        if self.version < 150000 or not self.publication_exists(publication):
            return tables
        out = dict(tables)
        for schema, table, attnames, rowfilter in self.rows(
            "SELECT schemaname, tablename, attnames, rowfilter FROM pg_publication_tables "
            "WHERE pubname = %s",
            (publication,),
        ):
            name = f"{schema}.{table}"
            if name not in out:
                continue
            if rowfilter is not None:
                raise self._fail(
                    f"publication {publication} filters the rows of {name} ({rowfilter})",
                    "row filters are not supported: publish the whole table",
                )
            info = out[name]
            if attnames is not None and set(attnames) != {c[0] for c in info.columns}:
                if missing := [k for k in info.key if k not in attnames]:
                    raise self._fail(
                        f"publication {publication} leaves out the key column(s) "
                        f"{', '.join(missing)} of {name}",
                        "publish the key columns (or the whole table)",
                    )
                kept = tuple(c for c in info.columns if c[0] in set(attnames))
                out[name] = TableInfo(name, info.relid, kept, info.key, info.identity)
        return out

    # -- publication ----------------------------------------------------------------------

    def publication_exists(self, name: str) -> bool:
        return bool(self.rows("SELECT 1 FROM pg_publication WHERE pubname = %s", (name,)))

    def ensure_publication(self, name: str, tables: list[str]) -> str | None:
        """Create the publication (marked as Lakeforge's) or check it publishes every table
        and every kind of change; returns what it did (None: nothing)."""
        from psycopg2 import sql

        mark = f"managed by lakeforge for dataset {self.dataset}"
        found = self.rows(
            "SELECT p.puballtables, p.pubinsert, p.pubupdate, p.pubdelete, p.pubtruncate, "
            "obj_description(p.oid, 'pg_publication') FROM pg_publication p "
            "WHERE p.pubname = %s",
            (name,),
        )
        idents = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in tables)
        if not found:
            try:
                self.rows(sql.SQL("CREATE PUBLICATION {} FOR TABLE {}").format(
                    sql.Identifier(name), idents))  # fmt: skip
                self.rows(
                    sql.SQL("COMMENT ON PUBLICATION {} IS {}").format(
                        sql.Identifier(name), sql.Literal(mark)
                    )
                )
            except psycopg2_module().Error as exc:
                raise self._fail(
                    f"cannot create publication {name}: {_first_line(exc)}",
                    f"create it as a table owner: CREATE PUBLICATION {name} FOR TABLE "
                    + ", ".join(tables),
                ) from None
            return f"created publication {name}"
        alltables, *publishes, comment = found[0]
        kinds = ("insert", "update", "delete", "truncate")
        if not all(publishes):
            left = [k for k, on in zip(kinds, publishes, strict=True) if not on]
            raise self._fail(
                f"publication {name} does not publish {', '.join(left)}: the feed would miss "
                "those changes",
                f"ALTER PUBLICATION {name} SET (publish = 'insert, update, delete, truncate')",
            )
        if alltables:
            return None
        published = {
            f"{s}.{t}"
            for s, t in self.rows(
                "SELECT schemaname, tablename FROM pg_publication_tables WHERE pubname = %s",
                (name,),
            )
        }
        missing = [t for t in tables if t not in published]
        if not missing:
            return None
        if comment != mark:
            raise self._fail(
                f"publication {name} does not include {', '.join(missing)}",
                f"ALTER PUBLICATION {name} ADD TABLE {', '.join(missing)}",
            )
        add = sql.SQL(", ").join(sql.Identifier(*t.split(".", 1)) for t in missing)
        try:
            self.rows(sql.SQL("ALTER PUBLICATION {} ADD TABLE {}").format(
                sql.Identifier(name), add))  # fmt: skip
        except psycopg2_module().Error as exc:
            raise self._fail(
                f"cannot add {', '.join(missing)} to publication {name}: {_first_line(exc)}",
                f"as a table owner: ALTER PUBLICATION {name} ADD TABLE {', '.join(missing)}",
            ) from None
        return f"added {', '.join(missing)} to publication {name}"

    # -- slots and positions ----------------------------------------------------------------

    def slot(self, name: str) -> SlotInfo | None:
        status = "wal_status" if self.version >= 130000 else "NULL"
        found = self.rows(
            "SELECT plugin, database, active_pid, confirmed_flush_lsn::text, restart_lsn::text, "
            f"{status} FROM pg_replication_slots WHERE slot_name = %s",
            (name,),
        )
        if not found:
            return None
        plugin, database, pid, confirmed, restart, wal_status = found[0]
        return SlotInfo(plugin, database, pid, _lsn(confirmed), _lsn(restart), wal_status)

    def check_slot(self, name: str, info: SlotInfo) -> None:
        ((db,),) = self.rows("SELECT current_database()")
        if info.plugin != "pgoutput" or info.database != db:
            raise self._fail(
                f"replication slot {name} belongs to {info.plugin or 'physical replication'} "
                f"on database {info.database}, not to pgoutput on {db}",
                "give the source its own slot (slot: …) or drop that one",
            )
        if info.wal_status == "lost":
            raise self._fail(
                f"replication slot {name} lost WAL it still needed (wal_status = lost): the "
                "changes since the last run cannot be read any more",
                f"re-read everything: lakeforge run --full-refresh {self.dataset} (recreates "
                "the slot and snapshots the tables again)",
            )

    def wait_slot_free(self, name: str) -> SlotInfo | None:
        """The slot once no process streams it (a killed run's WAL sender ends when the
        server notices); a transient error if it stays busy."""
        deadline = time.monotonic() + SLOT_BUSY_WAIT
        while True:
            info = self.slot(name)
            if info is None or info.active_pid is None:
                return info
            if time.monotonic() >= deadline:
                raise TransientSourceError(
                    f"{self.dataset}: replication slot {name} is in use by server process "
                    f"{info.active_pid} (another consumer of the slot?)",
                    dataset=self.dataset,
                    hint="one reader per slot: stop the other one, or give this source its "
                    "own slot",
                )
            time.sleep(0.1)

    def drop_slot(self, name: str) -> None:
        if self.wait_slot_free(name) is not None:
            self.rows("SELECT pg_drop_replication_slot(%s)", (name,))

    def wal_lsn(self) -> int:
        """The server's WAL flushed so far: what a catch-up reads up to."""
        ((text,),) = self.rows("SELECT pg_current_wal_flush_lsn()::text")
        return parse_lsn(text)


def create_slot(dsn: str, dataset: str, name: str, *, temporary: bool, timeout: float) -> Any:
    """A replication connection that created slot ``name`` and exported its snapshot:
    (connection, consistent point, snapshot name). Keep the connection open, without
    another command on it, until the snapshot is imported."""
    conn = connect(dsn, dataset, timeout=timeout, replication=True)
    try:
        cur = conn.cursor()
        kind = "TEMPORARY LOGICAL" if temporary else "LOGICAL"
        cur.execute(f'CREATE_REPLICATION_SLOT "{name}" {kind} pgoutput EXPORT_SNAPSHOT')
        _, consistent, snapshot, _ = cur.fetchone()
    except psycopg2_module().Error as exc:
        conn.close()
        raise database_error(dataset, exc, f"creating replication slot {name}") from None
    return conn, parse_lsn(consistent), snapshot


class SnapshotReader:
    """A REPEATABLE READ transaction on an exported snapshot: tables in key order, chunks."""

    def __init__(self, dsn: str, dataset: str, snapshot: str, timeout: float) -> None:
        self.dataset = dataset
        self.conn = connect(dsn, dataset, timeout=timeout)
        self.conn.set_session(isolation_level="REPEATABLE READ", readonly=True)
        with self.conn.cursor() as cur:
            cur.execute("SET TRANSACTION SNAPSHOT %s", (snapshot,))

    def chunk(
        self, table: TableInfo, after: list[Any] | None, limit: int
    ) -> list[tuple[str | None, ...]]:
        """Up to ``limit`` rows past the key ``after`` (text values, in column order)."""
        from psycopg2 import sql

        # Columns are qualified (t.x): a bare name in ORDER BY would mean the output column,
        # x::text, and sort numbers as text.
        cols = sql.SQL(", ").join(
            sql.SQL("{}::text").format(sql.Identifier("t", c[0])) for c in table.columns
        )
        keys = sql.SQL(", ").join(sql.Identifier("t", k) for k in table.key)
        query = sql.SQL("SELECT {} FROM {} AS t").format(
            cols, sql.Identifier(table.schema, table.table)
        )
        params: list[Any] = []
        if after is not None:
            # Untyped literals take the key columns' types: ('42', 'abc') compares as the
            # key does, in the order ORDER BY reads it.
            marks = sql.SQL(", ").join(sql.Placeholder() for _ in table.key)
            query += sql.SQL(" WHERE ({}) > ({})").format(keys, marks)
            params.extend(after)
        query += sql.SQL(" ORDER BY {} LIMIT {}").format(keys, sql.Literal(limit))
        try:
            with self.conn.cursor() as cur:
                cur.execute(query, params)
                return list(cur.fetchall())
        except psycopg2_module().Error as exc:
            raise database_error(self.dataset, exc, f"reading {table.name}") from None

    def close(self) -> None:
        self.conn.close()


class ChangeStream:
    """``START_REPLICATION`` of a slot with pgoutput: raw messages and confirmations."""

    def __init__(self, dsn: str, dataset: str, timeout: float) -> None:
        self.dataset = dataset
        self.conn = connect(dsn, dataset, timeout=timeout, replication=True)
        self.cur = self.conn.cursor()
        #: the highest position confirmed to the server (send_feedback flush_lsn)
        self.confirmed = 0
        #: data_start of the last XLogData frame read (psycopg2 compares it, see postgres_cdc)
        self.last_data_start = 0

    def start(self, slot: str, publication: str, start_lsn: int) -> None:
        quoted = '"' + publication.replace('"', '""') + '"'
        try:
            self.cur.start_replication(
                slot_name=slot,
                decode=False,
                start_lsn=start_lsn,
                options={"proto_version": "1", "publication_names": quoted},
                status_interval=10,
            )
        except psycopg2_module().Error as exc:
            raise database_error(self.dataset, exc, f"streaming slot {slot}") from None
        self.confirm(start_lsn, force=False)

    @property
    def wal_end(self) -> int:
        """The server's position in the WAL as of the last frame or keepalive read."""
        return int(self.cur.wal_end)

    def read(self) -> tuple[int, bytes] | None:
        """The next message (data_start, payload), or None when none is waiting."""
        try:
            msg = self.cur.read_message()
        except psycopg2_module().Error as exc:
            raise database_error(self.dataset, exc, "reading the change stream") from None
        if msg is None:
            return None
        self.last_data_start = int(msg.data_start)
        return self.last_data_start, bytes(msg.payload)

    def wait(self, seconds: float) -> None:
        """Until data arrives or ``seconds`` pass."""
        select.select([self.cur], [], [], max(0.0, seconds))

    def ask_position(self) -> None:
        """Ask the server for a keepalive, which carries how far it has read the WAL."""
        try:
            self.cur.send_feedback(reply=True)
        except psycopg2_module().Error as exc:
            raise database_error(self.dataset, exc, "asking the server's position") from None

    def confirm(self, lsn: int, *, force: bool = True) -> None:
        """Tell the server everything before ``lsn`` is safely stored (flush position)."""
        if lsn <= self.confirmed and not force:
            return
        self.confirmed = max(self.confirmed, lsn)
        try:
            self.cur.send_feedback(
                write_lsn=self.confirmed,
                flush_lsn=self.confirmed,
                apply_lsn=self.confirmed,
                force=force,
            )
        except psycopg2_module().Error as exc:
            raise database_error(self.dataset, exc, "confirming a position") from None

    def close(self) -> None:
        with contextlib.suppress(Exception):  # a broken connection: nothing more to do
            self.conn.close()
