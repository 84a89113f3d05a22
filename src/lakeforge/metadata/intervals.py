"""The interval ledger: per dataset and partition, what is built, from which code and inputs.

Rows live in ``lf_intervals`` of the metadata store (one per partition, its latest state);
the Delta commit of each partition build also names the partition in its commit metadata,
so a ledger entry left ``running`` by a process that died is settled from the table
(``execution/intervals.py``) — the table stays the source of truth.
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any, NamedTuple

import orjson
from sqlalchemy import select, tuple_
from sqlalchemy.exc import IntegrityError

from lakeforge.metadata.models import INTERVAL_STATUSES, DefinitionRow, IntervalRow

if TYPE_CHECKING:
    from lakeforge.metadata.store import MetadataStore

_CHUNK = 500  # keys per IN (...) when reading many datasets
_NAIVE_LENGTH = len("2024-01-01 00:00:00.000000")  # how SQLite holds a UTC timestamp
_COLUMNS = (
    "dataset", "partition_key", "status", "fingerprint", "input_versions", "rows",
    "rows_before", "version", "run_id", "error", "updated_at", "built_at",
)  # fmt: skip


class IntervalRecord(NamedTuple):
    """One partition's entry in the ledger (immutable; a named tuple because plans read
    hundreds of thousands of them, and a tuple is made several times faster than a frozen
    dataclass).

    Attributes:
        status: ``running`` (a build started and has not been settled), ``built`` or
            ``failed``.
        fingerprint: code fingerprint of the last build (attempt).
        input_versions: the Delta version each input was pinned to.
        rows / rows_before: rows in the partition after and before the last build.
        version: the Delta version the build committed.
        built_at: when the partition was last built successfully.
    """

    dataset: str
    partition_key: str
    status: str
    fingerprint: str | None
    input_versions: dict[str, int]
    rows: int | None
    rows_before: int | None
    version: int | None
    run_id: str | None
    error: str | None
    updated_at: datetime
    built_at: datetime | None


class IntervalLedger:
    """Reads and writes ``lf_intervals`` through a :class:`MetadataStore`."""

    def __init__(self, metadata: MetadataStore) -> None:
        self.metadata = metadata

    def read(self, datasets: Iterable[str] | None = None) -> dict[str, dict[str, IntervalRecord]]:
        """Entries by dataset, then by partition key (all datasets when ``None``)."""
        cols = IntervalRow.__table__.c
        out: dict[str, dict[str, IntervalRecord]] = {}
        names = None if datasets is None else sorted(set(datasets))
        batches = (
            [None]
            if names is None
            else [names[i : i + _CHUNK] for i in range(0, len(names), _CHUNK)]
        )
        # Plans read every partition of every dataset (500 × 365 rows and more): the rows
        # are fetched as the driver returns them and decoded here in bulk, since
        # SQLAlchemy's per-value processing (JSON, UTC datetimes) and result rows took
        # most of the time. The statement is compiled for the store's dialect; its only
        # values are dataset names, rendered as escaped literals.
        columns = [cols[name] for name in _COLUMNS]
        record, loads, iso = IntervalRecord, orjson.loads, datetime.fromisoformat
        with self.metadata.session() as session:
            conn = session.connection()
            for batch in batches:
                query = select(*columns)
                if batch is not None:
                    query = query.where(cols.dataset.in_(batch))
                statement = str(
                    query.compile(dialect=conn.dialect, compile_kwargs={"literal_binds": True})
                )
                result: Iterable[tuple[Any, ...]] = conn.exec_driver_sql(statement).all()
                for (
                    dataset, key, status, fingerprint, versions, rows, rows_before, version,
                    run_id, error, updated_at, built_at,
                ) in result:  # fmt: skip
                    entries = out.get(dataset)
                    if entries is None:
                        entries = out[dataset] = {}
                    # Inline fast paths for SQLite's text (the common case), without calls.
                    versions = (
                        (loads(versions) or {}) if type(versions) is str else _versions(versions)
                    )
                    if type(updated_at) is str and len(updated_at) == _NAIVE_LENGTH:
                        updated_at = iso(updated_at + "+00:00")
                    else:
                        updated_at = _utc(updated_at)
                    if type(built_at) is str and len(built_at) == _NAIVE_LENGTH:
                        built_at = iso(built_at + "+00:00")
                    else:
                        built_at = _utc(built_at)
                    entries[key] = record(
                        dataset, key, status, fingerprint, versions, rows, rows_before,
                        version, run_id, error, updated_at, built_at,
                    )  # fmt: skip
        return out

    def start(self, dataset: str, key: str, *, run_id: str, fingerprint: str, at: datetime) -> None:
        """A build of the partition starts (the previous build's figures are kept)."""
        self._upsert(
            dataset, key, {"status": "running", "run_id": run_id, "fingerprint": fingerprint,
                           "error": None, "updated_at": at},
        )  # fmt: skip

    def finish(
        self,
        dataset: str,
        key: str,
        *,
        status: str,
        at: datetime,
        **values: Any,
    ) -> None:
        """A build ended: ``built`` (with fingerprint, input_versions, rows, rows_before,
        version, run_id) or ``failed`` (with error)."""
        if status not in INTERVAL_STATUSES:
            raise ValueError(f"unknown interval status {status!r}")
        fields = {"status": status, "updated_at": at, **values}
        if status == "built":
            fields["built_at"] = at
            fields.setdefault("error", None)
        self._upsert(dataset, key, fields)

    def forget(self, dataset: str, keys: Iterable[str] | None = None) -> int:
        """Drop entries (``--full-refresh`` rebuilds every partition from nothing)."""
        with self.metadata.session(write=True) as session:
            query = session.query(IntervalRow).filter(IntervalRow.dataset == dataset)
            if keys is not None:
                wanted = list(keys)
                query = query.filter(
                    tuple_(IntervalRow.dataset, IntervalRow.partition_key).in_(
                        [(dataset, k) for k in wanted]
                    )
                )
            return int(query.delete(synchronize_session=False))

    def _upsert(self, dataset: str, key: str, fields: dict[str, Any]) -> None:
        for attempt in (1, 2):
            try:
                with self.metadata.session(write=True) as session:
                    row = session.get(IntervalRow, (dataset, key))
                    if row is None:
                        row = IntervalRow(dataset=dataset, partition_key=key, input_versions={})
                        session.add(row)
                    for name, value in fields.items():
                        setattr(row, name, value)
                return
            except IntegrityError:
                # Another process inserted the same entry between our read and insert.
                if attempt == 2:
                    raise

    # -- definitions ----------------------------------------------------------------------

    def record_definition(
        self, dataset: str, fingerprint: str, language: str, definition: str, at: datetime
    ) -> None:
        """Keep the definition text a fingerprint stands for (once)."""
        try:
            with self.metadata.session(write=True) as session:
                if session.get(DefinitionRow, (fingerprint, dataset)) is None:
                    session.add(
                        DefinitionRow(
                            fingerprint=fingerprint,
                            dataset=dataset,
                            language=language,
                            definition=definition,
                            created_at=at,
                        )
                    )
        except IntegrityError:
            pass  # recorded concurrently by another build of the same code

    def definition(self, dataset: str, fingerprint: str) -> str | None:
        with self.metadata.session() as session:
            row = session.get(DefinitionRow, (fingerprint, dataset))
            return None if row is None else row.definition


def _versions(value: Any) -> dict[str, int]:
    """``input_versions`` as stored: JSON text (SQLite, MySQL) or decoded (PostgreSQL)."""
    if value is None:
        return {}
    if isinstance(value, str | bytes):
        value = orjson.loads(value)
    return dict(value)


def _utc(value: Any) -> datetime | None:
    """A stored timestamp as a UTC datetime (see ``UTCDateTime``: SQLite keeps ISO text)."""
    if value is None:
        return None
    if isinstance(value, str):
        try:  # naive UTC text: parsing it with its zone is 5x faster than replace(tzinfo=)
            return datetime.fromisoformat(value + "+00:00")
        except ValueError:
            value = datetime.fromisoformat(value)
    if value.tzinfo is None:
        return value.replace(tzinfo=UTC)
    return value.astimezone(UTC)
