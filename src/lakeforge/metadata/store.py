"""The metadata store: run, task and check-result history in SQLite (default) or PostgreSQL.

The executor records every run and every task here from many threads (and, with
PostgreSQL, from several worker processes); the CLI, the HTTP API and the planner read
it back. Each public call uses its own short session, so one :class:`MetadataStore` can
be shared by a whole thread pool.
"""

from __future__ import annotations

import math
import re
import sqlite3
import threading
import time
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from datetime import datetime
from functools import cache
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sqlalchemy import (
    Connection,
    Engine,
    String,
    case,
    create_engine,
    event,
    func,
    insert,
    null,
    select,
    text,
)
from sqlalchemy.engine import URL, make_url
from sqlalchemy.exc import ArgumentError, DBAPIError, IntegrityError, NoSuchModuleError
from sqlalchemy.orm import Session, selectinload, sessionmaker
from sqlalchemy.pool import StaticPool

from lakeforge.errors import LakeforgeError

if TYPE_CHECKING:
    from alembic.config import Config
    from alembic.script import ScriptDirectory
from lakeforge.metadata.models import (
    CHECK_ORIGINS,
    CHECK_STATUSES,
    RUN_STATUSES,
    TASK_STATUSES,
    CheckResultRecord,
    CheckResultRow,
    Run,
    RunRecord,
    StreamSummary,
    Task,
    TaskRecord,
)

MIGRATIONS_DIR = Path(__file__).parent / "migrations"
VERSION_TABLE = "lf_alembic_version"

# How long a SQLite writer waits for another writer's lock before giving up (seconds).
SQLITE_BUSY_TIMEOUT = 30.0
# Arbitrary constant shared by every Lakeforge process: the key of the PostgreSQL advisory
# lock that serialises schema upgrades.
PG_MIGRATION_LOCK_KEY = 0x1AEF0CE
# Execution option marking a connection that is about to write (SQLite: BEGIN IMMEDIATE).
_WRITE_OPTION = "lakeforge_write"
# Alembic's ``context``/``op`` are module-global proxies: two upgrades running at once in
# one process (on different databases) would clobber each other's migration context.
_ALEMBIC_LOCK = threading.Lock()
_CONFIG_HINT = "check metadata_url in lakeforge.yml or the LAKEFORGE_METADATA_URL variable"


def mask_url(url: str) -> str:
    """Return ``url`` with any password replaced by ``***``, fit for messages and logs.

    Args:
        url: a SQLAlchemy database URL, possibly malformed.

    Returns:
        The URL with the password (in the authority or a ``password=`` query parameter)
        hidden.
    """
    try:
        parsed = make_url(url)
    except ArgumentError:
        masked = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)
        return re.sub(r"([?&]password=)[^&]*", r"\1***", masked)
    shown = parsed.render_as_string(hide_password=True)
    return re.sub(r"([?&]password=)[^&]*", r"\1***", shown)


class MetadataStore:
    """Run and task history in a SQL database, upgraded to the current schema on open.

    Args:
        url: SQLAlchemy URL, e.g. ``sqlite:///.lakeforge/metadata.db`` or
            ``postgresql+psycopg2://user@host/db``.

    Raises:
        LakeforgeError: the URL is invalid, its driver is missing, or the database cannot
            be reached or upgraded.
    """

    def __init__(self, url: str) -> None:
        self.url = mask_url(url)
        self._engine = _create_engine(url, self.url)
        self._sessions = sessionmaker(self._engine, expire_on_commit=False)
        self._write_sessions = sessionmaker(
            self._engine.execution_options(**{_WRITE_OPTION: True}), expire_on_commit=False
        )
        try:
            _upgrade_schema(self._engine, self.url)
        except BaseException:
            self._engine.dispose()
            raise

    def __enter__(self) -> MetadataStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        """Release every pooled connection."""
        self._engine.dispose()

    # -- writes ---------------------------------------------------------------------------

    def start_run(
        self,
        run_id: str,
        *,
        project: str,
        selection: str | None,
        full_refresh: bool,
        started_at: datetime,
        options: dict[str, Any] | None = None,
    ) -> None:
        """Record a new run in status ``running``.

        Raises:
            LakeforgeError: a run with this id already exists.
        """
        _require_aware(started_at=started_at)
        run = Run(
            id=run_id,
            project=project,
            selection=selection,
            full_refresh=full_refresh,
            status="running",
            started_at=started_at,
            options=dict(options or {}),
            counts={},
            stream_id=(options or {}).get("stream"),
        )
        try:
            with self._session(write=True) as session:
                session.add(run)
        except IntegrityError as exc:
            raise LakeforgeError(
                f"run {run_id!r} already exists in the metadata store",
                hint="run ids must be unique; generate a new one for each run",
            ) from exc

    def finish_run(
        self, run_id: str, *, status: str, finished_at: datetime, error: str | None = None
    ) -> None:
        """Close a run and store how many of its tasks ended in each status.

        Raises:
            LakeforgeError: unknown run or status.
        """
        _check_status(status, RUN_STATUSES, "run")
        _require_aware(finished_at=finished_at)
        with self._session(write=True) as session:
            run = session.get(Run, run_id)
            if run is None:
                raise _no_run(run_id)
            rows = session.execute(
                select(Task.status, func.count()).where(Task.run_id == run_id).group_by(Task.status)
            ).all()
            run.status = status
            run.finished_at = finished_at
            run.error = error
            run.counts = {task_status: int(n) for task_status, n in rows}

    def start_task(
        self,
        run_id: str,
        *,
        dataset: str,
        layer: str | None,
        reason: str | None,
        started_at: datetime,
        partition_key: str | None = None,
    ) -> int:
        """Record a task that starts executing now.

        Returns:
            The task id, to pass to :meth:`finish_task`.

        Raises:
            LakeforgeError: the run does not exist.
        """
        _require_aware(started_at=started_at)
        return self._add_task(
            Task(
                run_id=run_id,
                dataset=dataset,
                partition_key=partition_key,
                layer=layer,
                status="running",
                reason=reason,
                started_at=started_at,
                attempts=1,
                input_versions={},
                metrics={},
            )
        )

    def finish_task(
        self,
        task_id: int,
        *,
        status: str,
        finished_at: datetime,
        attempts: int = 1,
        rows_in: int | None = None,
        rows_out: int | None = None,
        input_versions: dict[str, int] | None = None,
        output_version: int | None = None,
        fingerprint: str | None = None,
        error: str | None = None,
        metrics: dict[str, Any] | None = None,
    ) -> None:
        """Store the outcome of a task started with :meth:`start_task`.

        Raises:
            LakeforgeError: unknown task id or status.
        """
        _check_status(status, TASK_STATUSES, "task")
        _require_aware(finished_at=finished_at)
        with self._session(write=True) as session:
            task = session.get(Task, task_id)
            if task is None:
                raise LakeforgeError(
                    f"no task with id {task_id} in the metadata store at {self.url}",
                    hint="pass the id returned by start_task",
                )
            task.status = status
            task.finished_at = finished_at
            task.attempts = attempts
            task.rows_in = rows_in
            task.rows_out = rows_out
            task.input_versions = dict(input_versions or {})
            task.output_version = output_version
            task.fingerprint = fingerprint
            task.error = error
            task.metrics = dict(metrics or {})

    def record_task(
        self,
        run_id: str,
        *,
        dataset: str,
        layer: str | None,
        status: str,
        reason: str | None,
        at: datetime,
    ) -> int:
        """Record a task that did not execute (up_to_date, upstream_failed, skipped).

        Returns:
            The task id.

        Raises:
            LakeforgeError: the run does not exist or the status is not a final one.
        """
        _check_status(status, tuple(s for s in TASK_STATUSES if s != "running"), "task")
        _require_aware(at=at)
        return self._add_task(
            Task(
                run_id=run_id,
                dataset=dataset,
                layer=layer,
                status=status,
                reason=reason,
                started_at=at,
                finished_at=at,
                attempts=0,
                input_versions={},
                metrics={},
            )
        )

    def record_check_results(self, results: Sequence[CheckResultRecord]) -> None:
        """Store data-quality check results, all of them or none, in one transaction.

        The store assigns the ids (the records' ``id`` is ignored). A NaN ``value`` is
        stored as NULL, as SQLite would anyway, so history reads the same on every backend.

        Args:
            results: the results to add.

        Raises:
            LakeforgeError: a result names an unknown run or task, has an invalid status
                or origin, or a text field longer than its column.
            ValueError: a ``created_at`` is a naive datetime.
        """
        if not results:
            return
        rows = [_check_result_values(result) for result in results]
        try:
            with self._session(write=True) as session:
                session.execute(insert(CheckResultRow), rows)
        except IntegrityError as exc:
            raise self._missing_references(results) from exc

    # -- reads ----------------------------------------------------------------------------

    def list_runs(
        self, limit: int = 20, *, stream_id: str | None = None, micro_batches: bool = True
    ) -> list[RunRecord]:
        """Return the newest ``limit`` runs, newest first, without their tasks.

        Args:
            limit: at most this many runs.
            stream_id: only the micro-batch runs of this ``lakeforge stream``.
            micro_batches: False: leave out every stream's micro-batch runs.
        """
        query = select(Run).order_by(Run.started_at.desc(), Run.id.desc()).limit(limit)
        if stream_id is not None:
            query = query.where(Run.stream_id == stream_id)
        elif not micro_batches:
            query = query.where(Run.stream_id.is_(None))
        with self._session() as session:
            return [RunRecord.of(run, with_tasks=False) for run in session.scalars(query)]

    def list_streams(self, limit: int = 20) -> list[StreamSummary]:
        """Return the ``lakeforge stream`` runs' streams, the latest active first: how many
        micro-batch runs each recorded (and still holds), how many failed, and its last one."""
        last = func.max(Run.started_at).label("last")
        groups = (
            select(
                Run.stream_id,
                func.count().label("n"),
                func.min(Run.started_at).label("first"),
                last,
                func.sum(case((Run.status == "failed", 1), else_=0)).label("failed"),
            )
            .where(Run.stream_id.is_not(None))
            .group_by(Run.stream_id)
            .order_by(last.desc())
            .limit(limit)
        )
        with self._session() as session:
            summaries = []
            for stream_id, n, first, _last, failed in session.execute(groups).all():
                newest = session.scalars(
                    select(Run)
                    .where(Run.stream_id == stream_id)
                    .order_by(Run.started_at.desc(), Run.id.desc())
                    .limit(1)
                ).one()
                summaries.append(
                    StreamSummary(
                        stream_id=str(stream_id),
                        micro_batches=int(n),
                        failed=int(failed or 0),
                        first_started_at=first,
                        last=RunRecord.of(newest, with_tasks=False),
                    )
                )
            return summaries

    def get_run(self, run_id: str) -> RunRecord:
        """Return one run with its tasks.

        Args:
            run_id: the full run id or a prefix matching exactly one run.

        Raises:
            LakeforgeError: no run matches, or the prefix matches several runs.
        """
        with self._session() as session:
            run = session.get(Run, run_id, options=[selectinload(Run.tasks)])
            if run is not None:
                return RunRecord.of(run, with_tasks=True)
            if not run_id:
                raise _no_run(run_id)
            escaped = re.sub(r"([\\%_])", r"\\\1", run_id)
            matches = session.scalars(
                select(Run)
                .where(Run.id.like(f"{escaped}%", escape="\\"))
                .order_by(Run.started_at.desc())
                .limit(6)
                .options(selectinload(Run.tasks))
            ).all()
            if not matches:
                raise _no_run(run_id)
            if len(matches) > 1:
                shown = ", ".join(m.id for m in matches[:5])
                more = ", …" if len(matches) > 5 else ""
                raise LakeforgeError(
                    f"run id prefix {run_id!r} is ambiguous: {shown}{more}",
                    hint="type more characters of the run id",
                )
            return RunRecord.of(matches[0], with_tasks=True)

    def latest_run(self) -> RunRecord | None:
        """Return the most recently started run with its tasks, or ``None`` if none."""
        with self._session() as session:
            run = session.scalars(
                select(Run)
                .order_by(Run.started_at.desc(), Run.id.desc())
                .limit(1)
                .options(selectinload(Run.tasks))
            ).first()
            return None if run is None else RunRecord.of(run, with_tasks=True)

    def list_tasks(self, dataset: str | None = None, limit: int = 50) -> list[TaskRecord]:
        """Return the newest ``limit`` tasks, newest first, optionally of one dataset."""
        query = select(Task).order_by(Task.started_at.desc(), Task.id.desc()).limit(limit)
        if dataset is not None:
            query = query.where(Task.dataset == dataset)
        with self._session() as session:
            return [TaskRecord.of(task) for task in session.scalars(query)]

    def list_check_results(
        self,
        *,
        run_id: str | None = None,
        dataset: str | None = None,
        name: str | None = None,
        status: str | Sequence[str] | None = None,
        limit: int | None = None,
    ) -> list[CheckResultRecord]:
        """Return check results, newest first, filtered by every argument given.

        Args:
            run_id: only results of this run (full id).
            dataset: only results on this dataset.
            name: only results of checks with this name.
            status: only results with this status, or with any of these statuses.
            limit: at most this many results; all of them when ``None``.
        """
        query = select(CheckResultRow).order_by(
            CheckResultRow.created_at.desc(), CheckResultRow.id.desc()
        )
        if run_id is not None:
            query = query.where(CheckResultRow.run_id == run_id)
        if dataset is not None:
            query = query.where(CheckResultRow.dataset == dataset)
        if name is not None:
            query = query.where(CheckResultRow.name == name)
        if isinstance(status, str):
            query = query.where(CheckResultRow.status == status)
        elif status is not None:
            query = query.where(CheckResultRow.status.in_(list(status)))
        if limit is not None:
            query = query.limit(limit)
        with self._session() as session:
            return [CheckResultRecord.of(row) for row in session.scalars(query)]

    def metric_history(
        self,
        dataset: str,
        name: str,
        *,
        limit: int,
        published_only: bool = True,
        before_run: str | None = None,
    ) -> list[float]:
        """Return the latest measured values of one check on one dataset, newest first.

        Results without a value are skipped. Reads the ``(dataset, name, created_at)``
        index, so the cost depends on ``limit``, not on the length of the history.

        Args:
            dataset: the dataset checked.
            name: the check's name.
            limit: at most this many values.
            published_only: only results whose data was published.
            before_run: leave out the results of this run (typically the current one,
                whose values are being judged against the history).
        """
        query = (
            select(CheckResultRow.value)
            .where(
                CheckResultRow.dataset == dataset,
                CheckResultRow.name == name,
                CheckResultRow.value.is_not(None),
            )
            .order_by(CheckResultRow.created_at.desc(), CheckResultRow.id.desc())
            .limit(limit)
        )
        if published_only:
            query = query.where(CheckResultRow.published.is_(True))
        if before_run is not None:
            query = query.where(CheckResultRow.run_id != before_run)
        with self._session() as session:
            return [value for value in session.scalars(query) if value is not None]

    # -- internals ------------------------------------------------------------------------

    def _missing_references(self, results: Sequence[CheckResultRecord]) -> LakeforgeError:
        """Explain a foreign-key failure of :meth:`record_check_results`."""
        run_ids = {result.run_id for result in results}
        task_ids = {result.task_id for result in results if result.task_id is not None}
        with self._session() as session:
            known_runs = set(session.scalars(select(Run.id).where(Run.id.in_(run_ids))))
            known_tasks = set(session.scalars(select(Task.id).where(Task.id.in_(task_ids))))
        missing_runs = sorted(run_ids - known_runs)
        if missing_runs:
            return _no_run(missing_runs[0])
        missing_tasks = sorted(task_ids - known_tasks)
        return LakeforgeError(
            f"no task with id {missing_tasks[0] if missing_tasks else '?'} in the metadata "
            f"store at {self.url}",
            hint="pass the id returned by start_task or record_task, or None",
        )

    def _add_task(self, task: Task) -> int:
        try:
            with self._session(write=True) as session:
                session.add(task)
                session.flush()
                return task.id
        except IntegrityError as exc:
            raise _no_run(task.run_id) from exc

    @property
    def shared(self) -> bool:
        """Whether several machines may share this store (PostgreSQL), so locks must be
        taken in it rather than on the local disk."""
        return self._engine.dialect.name == "postgresql"

    @contextmanager
    def advisory_lock(self, key: str) -> Iterator[None]:
        """Hold an exclusive lock named ``key`` across every process using this store
        (PostgreSQL advisory lock; released by the server if the process dies). A no-op
        for SQLite, whose users share one machine and lock with files."""
        if not self.shared:
            yield
            return
        lock_id = text("SELECT hashtextextended(:key, 0)")
        try:
            conn = self._engine.connect()
        except DBAPIError as exc:
            raise _unavailable(self.url, exc) from exc
        try:
            ident = conn.execute(lock_id, {"key": key}).scalar_one()
            conn.execute(text("SELECT pg_advisory_lock(:id)"), {"id": ident})
            conn.commit()
            try:
                yield
            finally:
                conn.execute(text("SELECT pg_advisory_unlock(:id)"), {"id": ident})
                conn.commit()
        finally:
            conn.close()

    @contextmanager
    def session(self, *, write: bool = False) -> Iterator[Session]:
        """A short session in one transaction, for the store's companions (the ledger)."""
        with self._session(write=write) as session:
            yield session

    @contextmanager
    def _session(self, *, write: bool = False) -> Iterator[Session]:
        """One session per call, in one transaction; database outages become LakeforgeError."""
        maker = self._write_sessions if write else self._sessions
        try:
            with maker() as session, session.begin():
                yield session
        except IntegrityError:
            raise
        except DBAPIError as exc:
            raise _unavailable(self.url, exc) from exc


def _create_engine(url: str, shown_url: str) -> Engine:
    try:
        parsed = make_url(url)
    except ArgumentError as exc:
        raise LakeforgeError(
            f"invalid metadata store URL {shown_url!r}",
            hint="use e.g. sqlite:///path/metadata.db or postgresql+psycopg2://user@host/db; "
            + _CONFIG_HINT,
        ) from exc
    try:
        if parsed.get_backend_name() == "sqlite":
            return _create_sqlite_engine(parsed, shown_url)
        connect_args: dict[str, Any] = {}
        if parsed.get_backend_name() == "postgresql" and parsed.get_driver_name() in (
            "psycopg2",
            "psycopg",
        ):
            # Fail fast when the server is down instead of hanging on the OS TCP timeout.
            connect_args["connect_timeout"] = 10
        return create_engine(parsed, pool_pre_ping=True, connect_args=connect_args)
    except NoSuchModuleError as exc:
        raise LakeforgeError(
            f"unsupported metadata store URL {shown_url!r}: no such database dialect",
            hint="use a sqlite:// or postgresql+psycopg2:// URL; " + _CONFIG_HINT,
        ) from exc
    except ImportError as exc:
        raise LakeforgeError(
            f"the database driver for {shown_url!r} is not installed ({exc.name})",
            hint="install lakeforge[postgres] for PostgreSQL URLs",
        ) from exc


def _create_sqlite_engine(url: URL, shown_url: str) -> Engine:
    database = url.database or ""
    in_memory = database in ("", ":memory:") or "mode=memory" in database
    if not in_memory and not database.startswith("file:"):
        try:
            Path(database).expanduser().parent.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise LakeforgeError(
                f"cannot create the folder of the metadata store {shown_url!r}: {exc}",
                hint="check the path and its permissions; " + _CONFIG_HINT,
            ) from exc
    engine = create_engine(
        url,
        connect_args={
            "timeout": SQLITE_BUSY_TIMEOUT,
            "check_same_thread": False,
            # Driver autocommit: the events below emit BEGIN themselves, so that writers can
            # take the write lock up front (pysqlite's implicit BEGIN cannot).
            "isolation_level": None,
        },
        # One in-memory database only exists on one connection, so it must be shared.
        **({"poolclass": StaticPool} if in_memory else {}),
    )

    @event.listens_for(engine, "connect")
    def _configure(dbapi_conn: Any, _record: Any) -> None:
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute("PRAGMA foreign_keys=ON")
            if not in_memory:
                _enable_wal(cursor)
            cursor.execute("PRAGMA synchronous=NORMAL")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _begin(conn: Connection) -> None:
        # A deferred transaction that reads then writes fails with "database is locked"
        # without waiting when another writer got in first; IMMEDIATE waits for the lock.
        immediate = conn.get_execution_options().get(_WRITE_OPTION, False)
        conn.exec_driver_sql("BEGIN IMMEDIATE" if immediate else "BEGIN")

    return engine


def _enable_wal(cursor: Any) -> None:
    """Switch the file to WAL so readers (CLI, API) proceed while the executor writes.

    The mode is stored in the file, so only the first connection ever switches it. The
    switch needs an exclusive lock and SQLite does not apply the busy timeout to it, so a
    connection racing other openers of a fresh file polls until the deadline.
    """
    deadline = time.monotonic() + SQLITE_BUSY_TIMEOUT
    while True:
        try:
            if cursor.execute("PRAGMA journal_mode").fetchone()[0].lower() != "wal":
                cursor.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) and "busy" not in str(exc):
                raise
            if time.monotonic() > deadline:
                raise
            time.sleep(0.005)


@cache
def _script_directory() -> ScriptDirectory:
    from alembic.script import ScriptDirectory

    return ScriptDirectory.from_config(_alembic_config())


@cache
def _shipped_head() -> str | None:
    """The newest migration's revision, from the file names (``0006_schedules.py`` → 0006):
    migrations are numbered in sequence, one head. None when that cannot be told."""
    names = sorted(p.name for p in (MIGRATIONS_DIR / "versions").glob("[0-9][0-9][0-9][0-9]_*.py"))
    return names[-1][:4] if names else None


def _at_shipped_head(engine: Engine) -> bool:
    """Whether the store's schema is already at the shipped head — checked with one query,
    without importing alembic (most commands open a store that is up to date)."""
    head = _shipped_head()
    if head is None:
        return False
    try:
        with engine.connect() as conn:
            rows = conn.execute(text(f"SELECT version_num FROM {VERSION_TABLE}")).scalars().all()
    except DBAPIError:
        return False  # no version table yet (a new store), or unreadable: alembic decides
    return list(rows) == [head]


def _alembic_config() -> Config:
    from alembic.config import Config

    config = Config()
    # Config values go through ConfigParser interpolation, which treats % specially.
    config.set_main_option("script_location", str(MIGRATIONS_DIR).replace("%", "%%"))
    return config


def _current_heads(conn: Connection) -> set[str]:
    from alembic.runtime.migration import MigrationContext

    context = MigrationContext.configure(conn, opts={"version_table": VERSION_TABLE})
    return set(context.get_current_heads())


def _upgrade_schema(engine: Engine, shown_url: str) -> None:
    """Bring the schema to head; cheap when it already is, safe when racing other openers."""
    if _at_shipped_head(engine):
        return
    from alembic import command

    scripts = _script_directory()
    heads = set(scripts.get_heads())
    try:
        with engine.connect() as conn:
            current = _current_heads(conn)
        if current == heads:
            return
        _check_known(current, scripts, shown_url)
        # Serialise concurrent upgraders: the lock holder migrates, the others wait, then
        # see the schema at head and do nothing. SQLite: BEGIN IMMEDIATE takes the database
        # write lock; PostgreSQL: a transaction-scoped advisory lock (its DDL is transactional).
        with engine.execution_options(**{_WRITE_OPTION: True}).begin() as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(
                    text("SELECT pg_advisory_xact_lock(:key)"), {"key": PG_MIGRATION_LOCK_KEY}
                )
            current = _current_heads(conn)
            if current == heads:
                return
            _check_known(current, scripts, shown_url)
            config = _alembic_config()
            config.attributes["connection"] = conn
            with _ALEMBIC_LOCK:
                command.upgrade(config, "head")
    except DBAPIError as exc:
        raise _unavailable(shown_url, exc) from exc


def _check_known(current: set[str], scripts: ScriptDirectory, shown_url: str) -> None:
    known = {script.revision for script in scripts.walk_revisions()}
    unknown = current - known
    if unknown:
        raise LakeforgeError(
            f"the metadata store at {shown_url} has schema revision {', '.join(sorted(unknown))}, "
            "which this version of Lakeforge does not know",
            hint="a newer Lakeforge wrote to it: upgrade Lakeforge, or point this project "
            "at another metadata store",
        )


def _unavailable(shown_url: str, exc: DBAPIError) -> LakeforgeError:
    reason = str(exc.orig).strip().splitlines()[0] if exc.orig is not None else str(exc)
    hint = (
        "check that the file is a SQLite database and its folder is writable; "
        if shown_url.startswith("sqlite")
        else "check that the database server is running and reachable and the credentials "
        "are right; "
    )
    return LakeforgeError(
        f"metadata store at {shown_url} is unavailable: {reason}", hint=hint + _CONFIG_HINT
    )


def _no_run(run_id: str) -> LakeforgeError:
    return LakeforgeError(
        f"no run {run_id!r} in the metadata store",
        hint="list runs with `lakeforge history`; a unique prefix of a run id is enough",
    )


def _check_status(status: str, allowed: tuple[str, ...], kind: str) -> None:
    if status not in allowed:
        raise LakeforgeError(
            f"invalid {kind} status {status!r}",
            expected=" | ".join(allowed),
            found=status,
        )


_CHECK_TEXT_LIMITS = {
    column.name: column.type.length
    for column in CheckResultRow.__table__.columns
    if isinstance(column.type, String) and column.type.length is not None
}


def _check_result_values(result: CheckResultRecord) -> dict[str, Any]:
    """Validate one check result and turn it into the values of its row."""
    _check_status(result.status, CHECK_STATUSES, "check")
    if result.origin not in CHECK_ORIGINS:
        raise LakeforgeError(
            f"invalid check origin {result.origin!r} for check {result.name!r}",
            dataset=result.dataset,
            expected=" | ".join(CHECK_ORIGINS),
            found=result.origin,
        )
    _require_aware(created_at=result.created_at)
    values: dict[str, Any] = {
        column.name: getattr(result, column.name)
        for column in CheckResultRow.__table__.columns
        if column.name != "id"
    }
    for column, limit in _CHECK_TEXT_LIMITS.items():
        text_value = values[column]
        if text_value is not None and len(text_value) > limit:
            # PostgreSQL would reject it with an error that reads like an outage.
            raise LakeforgeError(
                f"check result {column} is {len(text_value)} characters long, "
                f"longer than the {limit} the metadata store keeps",
                dataset=result.dataset,
                column=column,
                expected=f"at most {limit} characters",
                found=text_value[:80] + ("…" if len(text_value) > 80 else ""),
            )
    if values["value"] is not None and math.isnan(values["value"]):
        values["value"] = None
    # SQL NULL rather than the JSON document "null", so that IS NULL finds it.
    if values["sample"] is None:
        values["sample"] = null()
    return values


def _require_aware(**values: datetime) -> None:
    for name, value in values.items():
        if value.tzinfo is None or value.utcoffset() is None:
            raise ValueError(
                f"{name}={value.isoformat()} is a naive datetime; the metadata store needs "
                "timezone-aware values, e.g. datetime.now(timezone.utc)"
            )
