"""All Delta I/O of Lakeforge: open, pinned reads, commits with metadata, history.

Every write Lakeforge makes is one Delta commit carrying

- an app transaction ``(app_id=lakeforge/<dataset>, version=<batch>)`` — the batch sequence
  number, so a replayed batch whose version is already committed is recognised and skipped;
- commit metadata under the key ``lakeforge``: run id, code fingerprint, input versions,
  external state and batch — read back by the planner, so the table is the source of truth.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import threading
from collections import OrderedDict
from collections.abc import Iterable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING, Any, Literal

from lakeforge.errors import CommitConflict, DatasetNotFound, StorageError

if TYPE_CHECKING:
    import pyarrow as pa
    import pyarrow.dataset as pads
    from deltalake import CommitProperties, DeltaTable

METADATA_KEY = "lakeforge"
# Operations that rewrite files without changing the rows a reader sees.
_MAINTENANCE_OPERATIONS = {
    "OPTIMIZE",
    "VACUUM START",
    "VACUUM END",
    "CHECKPOINT",
    "SET TBLPROPERTIES",
}


@dataclass(frozen=True)
class CommitInfo:
    """What one Lakeforge commit records about how its data was produced."""

    run_id: str
    dataset: str
    fingerprint: str
    batch: int
    input_versions: dict[str, int] = field(default_factory=dict)
    external_state: dict[str, str] = field(default_factory=dict)
    full_refresh: bool = False
    source_state: dict[str, Any] | None = None  # what a source consumed (DESIGN §2.2)
    partition: str | None = None  # the partition a partition build replaced
    # A rebuild caused only by a non-breaking code change: {"kind", "added": [columns]}.
    change: dict[str, Any] | None = None

    def to_metadata(self) -> dict[str, Any]:
        data = asdict(self)
        for optional in ("source_state", "partition", "change"):
            if data[optional] is None:
                del data[optional]
        return data

    @classmethod
    def from_metadata(cls, data: Any) -> CommitInfo | None:
        if not isinstance(data, dict):
            return None
        try:
            return cls(
                run_id=str(data["run_id"]),
                dataset=str(data["dataset"]),
                fingerprint=str(data["fingerprint"]),
                batch=int(data["batch"]),
                input_versions={k: int(v) for k, v in data.get("input_versions", {}).items()},
                external_state={k: str(v) for k, v in data.get("external_state", {}).items()},
                full_refresh=bool(data.get("full_refresh", False)),
                source_state=data.get("source_state")
                if isinstance(data.get("source_state"), dict)
                else None,
                partition=None if data.get("partition") is None else str(data["partition"]),
                change=data.get("change") if isinstance(data.get("change"), dict) else None,
            )
        except (KeyError, TypeError, ValueError):
            return None


@dataclass(frozen=True)
class TableState:
    """What the planner needs to know about a table, read from its log.

    Attributes:
        version: the table's current version.
        data_version: the newest version that changed rows (maintenance commits excluded).
        last_commit: the newest Lakeforge commit's metadata, if any.
        last_commit_version: its version.
    """

    version: int
    data_version: int
    last_commit: CommitInfo | None
    last_commit_version: int | None


@dataclass(frozen=True)
class PinnedTable:
    """A table at one version, as one or more pyarrow datasets whose union is the table.

    delta-rs writes strings as ``string_view`` in files produced by merge, delete and
    optimize, and plain ``string`` elsewhere; pyarrow cannot evaluate a pushed-down filter
    across the two, so files are grouped by their physical string layout, each group a
    dataset with a schema that matches its files.
    """

    name: str
    version: int
    parts: list[pads.Dataset]

    def count_rows(self) -> int:
        return sum(part.count_rows() for part in self.parts)

    def to_table(self) -> pa.Table:
        """Materialize the whole table (strings as plain ``string``)."""
        import pyarrow as pa

        schema = pa.schema(
            [
                pa.field(f.name, pa.string(), f.nullable) if pa.types.is_string_view(f.type) else f
                for f in self.parts[0].schema
            ]
        )
        return pa.concat_tables([part.to_table().cast(schema) for part in self.parts])


def split_by_string_layout(data: pads.Dataset) -> list[pads.Dataset]:
    """Group a dataset's fragments by which string columns their files store as views."""
    import pyarrow as pa
    import pyarrow.dataset as pads

    fragments = list(data.get_fragments())
    string_cols = [f.name for f in data.schema if pa.types.is_string(f.type)]
    if not string_cols or not fragments:
        return [data]
    groups: dict[frozenset[str], list[Any]] = {}
    for fragment in fragments:
        groups.setdefault(_view_columns(fragment, string_cols), []).append(fragment)
    if len(groups) == 1 and frozenset() in groups:
        return [data]
    parts = []
    for views, members in groups.items():
        schema = pa.schema(
            [
                pa.field(f.name, pa.string_view(), f.nullable) if f.name in views else f
                for f in data.schema
            ]
        )
        parts.append(pads.FileSystemDataset(members, schema, data.format, data.filesystem))
    return parts


_LAYOUTS: dict[str, frozenset[str]] = {}


def _view_columns(fragment: Any, string_cols: list[str]) -> frozenset[str]:
    # Data files are immutable, so a file's layout is cached by path.
    key = fragment.path
    cached = _LAYOUTS.get(key)
    if cached is None:
        import pyarrow as pa

        physical = fragment.physical_schema
        cached = frozenset(
            c
            for c in string_cols
            if c in physical.names and pa.types.is_string_view(physical.field(c).type)
        )
        _LAYOUTS[key] = cached
    return cached


_RECENT_COMMITS = 64
_CACHED_TABLES = 32  # open tables kept by a thread in a session (see DeltaStore)


def app_id(dataset: str) -> str:
    """The app transaction id of a dataset's flow."""
    return f"lakeforge/{dataset}"


class DeltaStore:
    """Delta tables of a project, one folder per dataset under a storage root.

    Opening a table reads its log from the last checkpoint: tens of milliseconds, which a
    task would pay several times a batch (its position, its batch number, the schema, the
    write). Within a :meth:`session` (a task: its dataset is locked), the thread keeps the
    tables it opened (at most ``_CACHED_TABLES``) and brings one up to date when it is asked
    for again, reading only the log entries added since. A Delta table only moves forward,
    so that snapshot is the newest, whoever wrote the entries. Outside a session every call
    opens the table: a table deleted and created again under a long-lived store (a
    benchmark's rounds) is never read through an older one's snapshot.
    """

    def __init__(self, root: str, storage_options: dict[str, str] | None = None) -> None:
        self.root = root.rstrip("/")
        self.storage_options = dict(storage_options or {}) or None
        self._local = threading.local()
        if "://" not in self.root:
            os.makedirs(self.root, exist_ok=True)

    @contextlib.contextmanager
    def session(self) -> Iterator[None]:
        """Within: this thread reuses the tables it opened (see the class); nestable."""
        local = self._local.__dict__
        if "tables" in local:
            yield
            return
        local["tables"] = OrderedDict()
        try:
            yield
        finally:
            del local["tables"]

    def _latest(self, dataset: str) -> DeltaTable:
        """The newest snapshot of ``dataset`` (see the class)."""
        tables: OrderedDict[str, DeltaTable] | None = self._local.__dict__.get("tables")
        if tables is None:
            return self._open(dataset)
        table = tables.pop(dataset, None)
        if table is not None and self._may_have_moved(dataset, table):
            try:
                table.update_incremental()
            except Exception:  # e.g. deleted meanwhile: opening it again says what is wrong
                table = None
        if table is None:
            table = self._open(dataset)
        tables[dataset] = table
        while len(tables) > _CACHED_TABLES:
            tables.popitem(last=False)
        return table

    def _may_have_moved(self, dataset: str, table: DeltaTable) -> bool:
        """Whether a commit may follow the cached snapshot. Versions are contiguous and each
        commit writes its own ``<version>.json``: on a local disk, one stat says whether the
        next exists (bringing a table up to date lists its whole log folder, which a
        stream's commits grow by thousands of files a day). Elsewhere: assume it may."""
        if "://" in self.root:
            return True
        log = f"{self.uri(dataset)}/_delta_log/{table.version() + 1:020d}.json"
        return os.path.exists(log)

    def uri(self, dataset: str) -> str:
        return f"{self.root}/{dataset}"

    def exists(self, dataset: str) -> bool:
        from deltalake import DeltaTable

        tables = self._local.__dict__.get("tables")
        if tables is not None and dataset in tables:
            return True  # open in this session (a table is not deleted under a task)
        return bool(DeltaTable.is_deltatable(self.uri(dataset), self.storage_options))

    def open(self, dataset: str, version: int | str | datetime | None = None) -> DeltaTable:
        """Open a table, optionally at a version or timestamp (time travel).

        The newest snapshot (no ``version``, or the newest's number, in a session) is the
        thread's cached table (see the class), shared by the callers of this thread: it must
        not be moved to another version.
        """
        if version is None:
            return self._latest(dataset)
        if isinstance(version, int) and "tables" in self._local.__dict__:
            latest = self._latest(dataset)
            if latest.version() == version:  # the pinned version is the newest: that table
                return latest
        table = self._open(dataset)
        try:
            table.load_as_version(version)
        except Exception as exc:
            raise DatasetNotFound(
                f"dataset {dataset!r} has no version {version} "
                f"(current version is {table.version()}): {exc}",
                dataset=dataset,
                hint="`lakeforge history " + dataset + "` lists the versions",
            ) from None
        return table

    def _open(self, dataset: str) -> DeltaTable:
        from deltalake import DeltaTable
        from deltalake.exceptions import TableNotFoundError

        try:
            return DeltaTable(self.uri(dataset), storage_options=self.storage_options)
        except TableNotFoundError:
            raise DatasetNotFound(
                f"dataset {dataset!r} has no table yet",
                dataset=dataset,
                hint="build it with `lakeforge run " + dataset + "`",
            ) from None

    def version(self, dataset: str) -> int | None:
        if not self.exists(dataset):
            return None
        return self.open(dataset).version()

    def read(self, dataset: str, version: int | str | datetime | None = None) -> PinnedTable:
        """The table pinned at ``version`` as pyarrow datasets (zero-copy for DuckDB)."""
        table = self.open(dataset, version)
        return PinnedTable(
            dataset, table.version(), split_by_string_layout(table.to_pyarrow_dataset())
        )

    def schema(self, dataset: str, version: int | None = None) -> pa.Schema | None:
        import pyarrow as pa

        if not self.exists(dataset):
            return None
        return pa.schema(self.open(dataset, version).schema().to_arrow())

    def state(self, dataset: str, *, scan: int = 50) -> TableState | None:
        """Current version, newest data-changing version and newest Lakeforge commit."""
        if not self.exists(dataset):
            return None
        table = self.open(dataset)
        version = table.version()
        data_version: int | None = None
        last: CommitInfo | None = None
        last_version: int | None = None
        for entry in table.history(scan):
            v = int(entry.get("version", -1))
            if data_version is None and entry.get("operation") not in _MAINTENANCE_OPERATIONS:
                data_version = v
            if last is None:
                info = CommitInfo.from_metadata(entry.get(METADATA_KEY))
                if info is not None:
                    last, last_version = info, v
            if data_version is not None and last is not None:
                break
        return TableState(
            version=version,
            data_version=version if data_version is None else data_version,
            last_commit=last,
            last_commit_version=last_version,
        )

    def commit_infos(self, dataset: str) -> Iterator[CommitInfo]:
        """Lakeforge's commit metadata of ``dataset``, newest first (empty when absent)."""
        for _, info in self.commits(dataset):
            yield info

    def commits(self, dataset: str) -> Iterator[tuple[int, CommitInfo]]:
        """``(version, metadata)`` of Lakeforge's commits, newest first (empty when absent)."""
        if not self.exists(dataset):
            return
        table = self.open(dataset)
        # Consumers usually stop at the newest commits (a source's position is in the newest
        # one, or in the newest snapshot): read the log's tail first, the rest only if asked.
        recent = table.history(_RECENT_COMMITS)
        entries: Iterable[dict[str, Any]] = recent
        if len(recent) == _RECENT_COMMITS:
            entries = itertools.chain(
                recent,
                (e for e in table.history() if int(e["version"]) < int(recent[-1]["version"])),
            )
        for entry in entries:
            info = CommitInfo.from_metadata(entry.get(METADATA_KEY))
            if info is not None:
                yield int(entry["version"]), info

    def data_commits_since(self, dataset: str, version: int) -> list[tuple[int, CommitInfo | None]]:
        """Commits after ``version`` that may have changed rows (maintenance excluded),
        newest first, with their Lakeforge metadata (None: another writer's)."""
        if not self.exists(dataset):
            return []
        table = self.open(dataset)
        out: list[tuple[int, CommitInfo | None]] = []
        for entry in table.history(max(0, table.version() - version)):
            v = int(entry["version"])
            if v <= version:
                break
            if entry.get("operation") in _MAINTENANCE_OPERATIONS:
                continue
            out.append((v, CommitInfo.from_metadata(entry.get(METADATA_KEY))))
        return out

    def committed_batch(self, dataset: str) -> int:
        """The newest batch sequence number committed for ``dataset`` (0 when none)."""
        if not self.exists(dataset):
            return 0
        return self.open(dataset).transaction_version(app_id(dataset)) or 0

    def history(self, dataset: str, limit: int | None = None) -> list[dict[str, Any]]:
        return list(self.open(dataset).history(limit))

    def commit_properties(self, info: CommitInfo) -> CommitProperties:
        from deltalake import CommitProperties, Transaction

        return CommitProperties(
            custom_metadata={METADATA_KEY: info.to_metadata()},
            app_transactions=[Transaction(app_id=app_id(info.dataset), version=info.batch)],
        )

    def commit_empty(self, dataset: str, schema: pa.Schema, info: CommitInfo) -> int:
        """Record a build that changed no rows (inputs consumed, output unchanged)."""
        # "merge": the batch may bring columns the table lacks (schema evolution), and an
        # exact-schema append of them would fail instead of recording the batch.
        self.write(dataset, schema.empty_table(), info, mode="append", schema_mode="merge")
        return self.open(dataset).version()

    def write(
        self,
        dataset: str,
        data: pa.Table,
        info: CommitInfo,
        *,
        mode: Literal["append", "overwrite"],
        partition_by: list[str] | None = None,
        schema_mode: Literal["merge", "overwrite"] | None = None,
        predicate: str | None = None,
    ) -> int:
        """One ``write_deltalake`` commit; returns the new version."""
        from deltalake import write_deltalake

        options: dict[str, Any] = {
            "mode": mode,
            "partition_by": partition_by or None,
            "schema_mode": schema_mode,
            "storage_options": self.storage_options,
            "commit_properties": self.commit_properties(info),
        }
        if predicate is not None:  # only an overwrite takes a predicate
            options["predicate"] = predicate
        # Into the open table when there is one: its snapshot moves to the new version (no
        # second read of the log, and the version returned is this commit's own).
        target: Any = self._latest(dataset) if self.exists(dataset) else self.uri(dataset)
        with translate_commit_errors(dataset):
            write_deltalake(target, data, **options)
        if isinstance(target, str):
            return self.open(dataset).version()
        return int(target.version())


class translate_commit_errors:
    """Turn delta-rs commit conflicts into :class:`CommitConflict` (retryable)."""

    def __init__(self, dataset: str) -> None:
        self.dataset = dataset

    def __enter__(self) -> None:
        return None

    def __exit__(self, exc_type: Any, exc: BaseException | None, tb: Any) -> None:
        if exc is None:
            return
        from deltalake.exceptions import CommitFailedError

        text = str(exc)
        if isinstance(exc, CommitFailedError) or "concurrent" in text.lower():
            raise CommitConflict(
                f"a concurrent writer committed to {self.dataset!r} first: {text}",
                dataset=self.dataset,
                hint="the task is retried automatically",
            ) from exc
        if isinstance(exc, OSError | RuntimeError) and not isinstance(exc, StorageError):
            raise StorageError(
                f"writing {self.dataset!r} failed: {text}", dataset=self.dataset
            ) from exc
