"""The file source: each file under a glob ingested exactly once, in order of arrival.

The glob is a local path (relative to the project) or an object-store URI (``s3://``,
``gs://``, ``az://``; listed and fetched through ``storage/objectstore.py``). A ledger of
ingested files (path or URI → size, modification time; for objects also the ETag read) is
the source's position. Each
batch's commit carries the ledger entries of the files it read; every commit while the
ledger is small, and every ``SNAPSHOT_EVERY``-th batch after that, carries the whole ledger
instead, so recovery reads back only as far as the newest snapshot. A file already in the
ledger whose size or modification time changed is *reported* (``lakeforge sources``, task
metrics) and ingested again only with ``allow_overwrites``.

Files are read by DuckDB (``read_csv`` / ``read_json`` / ``read_parquet``, gzip and zstd
included) with ``union_by_name``, so files with different columns land in one batch; the
write's schema policy then decides what a new column does to the table. Records that cannot
be read go to the dataset's dead-letter queue (``dead_letters.py``) and the batch goes on.
Objects are copied to a temporary folder first and read the same way, so formats,
compression and dead letters behave alike. On request each record gets its file
(``file_column``) and its ordinal in that file (``row_column``), made from DuckDB's
file-name column on a scan that preserves insertion order.
"""

from __future__ import annotations

import contextlib
import glob
import os
import re
import shutil
import tempfile
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass, replace
from pathlib import Path, PurePosixPath
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from lakeforge.engines.connection import connect
from lakeforge.errors import ConfigError, SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus
from lakeforge.storage import objectstore

FileFormat = Literal["csv", "ndjson", "json", "parquet"]
SNAPSHOT_LIMIT = 5000  # ledger entries up to which every commit carries the whole ledger
SNAPSHOT_EVERY = 50
_FILE = "__lf_file"
ROW_COLUMN = "_source_row"  # the row column of `row_column: true`
_OPTION = re.compile(r"^[a-z_][a-z0-9_]*$")
_EXTENSIONS: dict[str, FileFormat] = {
    ".csv": "csv",
    ".tsv": "csv",
    ".ndjson": "ndjson",
    ".jsonl": "ndjson",
    ".json": "json",
    ".parquet": "parquet",
}


class FilesConfig(BaseModel):
    """``source: {kind: files, path: landing/orders/*.ndjson, ...}`` in a SQL header, or
    ``@lf.table(source=lf.files("landing/orders/*.ndjson", ...))`` in Python.

    Args:
        path: a glob relative to the project (``**`` recurses), or an object-store URI
            with a glob in its key (``s3://bucket/landing/*.ndjson``).
        format: ``csv``, ``ndjson``, ``json`` or ``parquet``; default from the extension
            (``.gz`` / ``.zst`` ignored).
        max_files_per_batch / max_bytes_per_batch: batch size limits (at least one file).
        file_column: column holding each record's file (path relative to the project, or
            the object's URI); ``null`` for none.
        row_column: column holding each record's ordinal in its file (1-based; CSV: data
            rows after the header, NDJSON: non-blank lines); ``true`` for ``_source_row``;
            ``null`` (default) for none.
        allow_overwrites: a changed file already ingested is ingested again.
        options: reader options passed to DuckDB (``header``, ``delim``, ``columns``,
            ``all_varchar`` …).
        storage_options: object-store settings (endpoint, region, credentials as
            ``${VAR}`` references); see ``storage/objectstore.py``.
    """

    model_config = ConfigDict(extra="forbid", frozen=True)

    kind: Literal["files"] = "files"
    path: str = Field(min_length=1)

    def __init__(self, path: str | None = None, /, **data: Any) -> None:
        # `lf.files("landing/*.csv", format="csv")`: the path may be given positionally.
        if path is not None:
            data["path"] = path
        super().__init__(**data)

    format: FileFormat | None = None
    max_files_per_batch: int = Field(default=1000, ge=1)
    max_bytes_per_batch: int | None = Field(default=None, ge=1)
    file_column: str | None = "_source_file"
    row_column: str | None = None
    allow_overwrites: bool = False
    options: dict[str, Any] = Field(default_factory=dict)
    storage_options: dict[str, str] = Field(default_factory=dict)

    @field_validator("row_column", mode="before")
    @classmethod
    def _row_column_shorthand(cls, value: Any) -> Any:
        if value is True:
            return ROW_COLUMN
        return None if value is False else value

    @model_validator(mode="after")
    def _columns_and_store(self) -> FilesConfig:
        if self.row_column is not None and self.row_column == self.file_column:
            raise ValueError(f"row_column and file_column are both {self.row_column!r}")
        if objectstore.is_uri(self.path):
            try:
                objectstore.parse_uri(self.path)
            except ConfigError as exc:
                raise ValueError(exc.message + (f" ({exc.hint})" if exc.hint else "")) from None
        objectstore.check_options(self.path, self.storage_options)
        return self

    @field_validator("options")
    @classmethod
    def _option_names(cls, value: dict[str, Any]) -> dict[str, Any]:
        for key in value:
            if not _OPTION.match(key):
                raise ValueError(f"reader option {key!r} is not a valid option name")
        return value

    def file_format(self, dataset: str | None = None) -> FileFormat:
        if self.format is not None:
            return self.format
        name = self.path.lower()
        for suffix in (".gz", ".zst", ".gzip", ".zstd"):
            name = name.removesuffix(suffix)
        for ext, fmt in _EXTENSIONS.items():
            if name.endswith(ext):
                return fmt
        raise ConfigError(
            f"{dataset + ': ' if dataset else ''}cannot tell the format of {self.path!r} "
            "from its extension",
            dataset=dataset,
            hint="set the source's format: csv, ndjson, json or parquet",
        )


@dataclass
class Ledger:
    """Ingested files: relative path or URI → (size, mtime in ns[, ETag of an object])."""

    files: dict[str, tuple[Any, ...]]
    fresh: bool = False  # rebuilt from scratch: the next commit must carry a snapshot
    batches_since_snapshot: int = 0


@dataclass(frozen=True)
class _Found:
    path: str  # relative to the project, or the object's URI (the ledger key)
    full: str  # where it is read: a local path (for an object: its copy, once fetched)
    size: int
    mtime_ns: int
    etag: str | None = None
    remote: str | None = None  # an object's path in its filesystem

    def signature(self) -> tuple[Any, ...]:
        base = (self.size, self.mtime_ns)
        return (*base, self.etag) if self.etag else base


class _Interleaved(Exception):
    """The records of one file did not come out of a multi-file read together."""


class FilesSource(Source):
    """Files under a glob, each ingested once, oldest first."""

    kind = "files"

    def __init__(self, dataset: str, project_root: Path, config: FilesConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.format = config.file_format(dataset)
        self.store = (
            objectstore.ObjectStore(config.path, config.storage_options, dataset)
            if objectstore.is_uri(config.path)
            else None
        )

    # -- position -------------------------------------------------------------------------

    def recover(self, committed: Iterable[dict[str, Any]]) -> Ledger:
        deltas: list[dict[str, Any]] = []
        base: dict[str, Any] = {}
        for state in committed:  # newest first
            # A dead-letter replay that re-read whole files records their new signatures.
            if state.get("kind") not in (self.kind, "dlq_replay"):
                continue
            if state.get("snapshot"):
                base = state.get("files", {})
                break
            deltas.append(state.get("files", {}))
        files = {k: _entry(v) for k, v in base.items()}
        for delta in reversed(deltas):
            files.update({k: _entry(v) for k, v in delta.items()})
        return Ledger(files, batches_since_snapshot=len(deltas))

    def fresh(self) -> Ledger:
        return Ledger({}, fresh=True)

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> list[_Found]:
        pattern = self.config.path
        if self.store is not None:
            objects = [
                _Found(o.uri, o.path, o.size, o.mtime_ns, remote=o.path) for o in self.store.list()
            ]
            return sorted(objects, key=lambda f: (f.mtime_ns, f.path))
        full = pattern if os.path.isabs(pattern) else str(self.project_root / pattern)
        found = []
        for path in glob.glob(full, recursive=True):
            try:
                st = os.stat(path)
            except OSError:
                continue  # vanished between listing and stat: seen next time if it returns
            if not os.path.isfile(path) or st.st_size == 0:
                # Empty: nothing to read yet (often still being written). It counts as new
                # once it has content.
                continue
            rel = os.path.relpath(path, self.project_root)
            found.append(_Found(rel, path, st.st_size, st.st_mtime_ns))
        # Order of arrival: modification time, then name for files written in the same tick.
        return sorted(found, key=lambda f: (f.mtime_ns, f.path))

    def _split(self, ledger: Ledger) -> tuple[list[_Found], list[_Found]]:
        """(files to ingest, changed files that will not be)."""
        new: list[_Found] = []
        changed: list[_Found] = []
        for f in self._discover():
            seen = ledger.files.get(f.path)
            if seen is None:
                new.append(f)
            elif tuple(seen[:2]) != (f.size, f.mtime_ns):  # an ETag is recorded, not compared
                (new if self.config.allow_overwrites else changed).append(f)
        return new, changed

    def pending(self, position: Any) -> str | None:
        new, _ = self._split(position)
        if not new:
            return None
        seen = position.files
        if len(new) == 1:
            what = "changed file" if new[0].path in seen else "new file"
            return f"{what} {new[0].path}"
        changed = sum(1 for f in new if f.path in seen)
        return f"{len(new) - changed} new file(s)" + (f", {changed} changed" if changed else "")

    def changed(self, position: Any) -> list[str]:
        """Files already ingested that changed since (reported, not re-read)."""
        return [f.path for f in self._split(position)[1]]

    # -- reading --------------------------------------------------------------------------

    def batches(self, position: Any) -> Iterator[SourceBatch]:
        ledger: Ledger = position
        new, _ = self._split(ledger)
        start = 0
        while start < len(new):
            group = [new[start]]
            size = new[start].size
            for f in new[start + 1 :]:
                if len(group) >= self.config.max_files_per_batch:
                    break
                limit = self.config.max_bytes_per_batch
                if limit is not None and size + f.size > limit:
                    break
                group.append(f)
                size += f.size
            start += len(group)
            with self._fetched(group) as local:
                data, rejected = self._read(local)
            entries = {f.path: f.signature() for f in local}
            ledger.files.update(entries)
            snapshot = (
                ledger.fresh
                or len(ledger.files) <= SNAPSHOT_LIMIT
                or ledger.batches_since_snapshot + 1 >= SNAPSHOT_EVERY
            )
            ledger.fresh = False
            ledger.batches_since_snapshot = 0 if snapshot else ledger.batches_since_snapshot + 1
            files_state = ledger.files if snapshot else entries
            state = {
                "kind": self.kind,
                "snapshot": snapshot,
                "files": {k: list(v) for k, v in files_state.items()},
            }
            yield SourceBatch(
                data=data,
                rejected=rejected,
                state=state,
                description=f"{len(group)} file(s), {size:,} bytes",
                units=len(group),
            )

    @contextlib.contextmanager
    def _fetched(self, group: list[_Found]) -> Iterator[list[_Found]]:
        """The group with each object copied to a local file (local files as they are); the
        copies are deleted afterwards (what was read is in memory by then)."""
        if self.store is None:
            yield group
            return
        folder = tempfile.mkdtemp(prefix="lakeforge-objects-")
        try:
            local = []
            for i, f in enumerate(group):
                dest = os.path.join(folder, f"{i:06d}{_suffix(f.path)}")
                etag = self.store.fetch(f.remote or f.full, dest)
                local.append(replace(f, full=dest, etag=etag))
            yield local
        finally:
            shutil.rmtree(folder, ignore_errors=True)

    @contextlib.contextmanager
    def local_copy(self, name: str) -> Iterator[str | None]:
        """A local path holding the file ``name`` (a ledger key) as it is now, or None when
        it is gone; an object is copied for the duration."""
        if self.store is None:
            full = name if os.path.isabs(name) else str(self.project_root / name)
            yield full if os.path.isfile(full) else None
            return
        uri = objectstore.parse_uri(name)
        remote = f"{uri.bucket}/{uri.key}"
        info = self.store.fs.get_file_info(remote)
        if not info.is_file:
            yield None
            return
        found = _Found(name, remote, int(info.size), int(info.mtime_ns or 0), remote=remote)
        with self._fetched([found]) as local:
            yield local[0].full

    def signature(self, name: str) -> list[Any] | None:
        """The ledger entry of the file ``name`` as it is now (None when it is gone)."""
        if self.store is None:
            try:
                st = os.stat(name if os.path.isabs(name) else self.project_root / name)
            except OSError:
                return None
            return [st.st_size, st.st_mtime_ns]
        uri = objectstore.parse_uri(name)
        info = self.store.fs.get_file_info(f"{uri.bucket}/{uri.key}")
        return [int(info.size), int(info.mtime_ns or 0)] if info.is_file else None

    def display(self, name: str, path: str) -> str | dict[str, str]:
        """How ``_read_files`` names, in the file column, records of ``name`` read from
        the local ``path`` (the file itself, its copy, or a stand-in of some records)."""
        if self.store is not None:
            return {path: name}
        return name if os.path.isabs(name) else str(self.project_root / name)

    def _read(self, group: list[_Found]) -> tuple[Any, Any]:
        """(records, rejected records) of the group's files.

        One DuckDB read of every file first (CSV: each file with reject capture); if it
        fails, each file alone, and within a file that fails, record by record
        (``dead_letters``): what cannot be read goes to the dead-letter queue with its raw
        bytes, the error and its file and line, and the rest of the batch goes on.
        """
        import duckdb
        import pyarrow as pa

        from lakeforge.sources import dead_letters

        readable = [f for f in group if f.size > 0]  # an empty file holds no records
        # Objects are read from their copies, named by their URIs.
        names = {f.full: f.path for f in readable} if self.store is not None else None
        con = connect()
        try:
            if not readable:
                return self._empty(), None
            # CSV always goes file by file through DuckDB's reject capture: without it the
            # sniffer, faced with one malformed row, may settle on another delimiter and
            # read the whole file into one column — silently.
            if self.format != "csv":
                try:
                    return self._read_files(con, [f.full for f in readable], display=names), None
                except (duckdb.Error, _Interleaved):
                    pass
            parts, rejected = [], []
            for f in readable:
                error = "the batch read failed"
                if self.format != "csv":
                    try:
                        parts.append(self._read_files(con, [f.full], display=names))
                        continue
                    except duckdb.Error as exc:
                        error = str(exc).splitlines()[0]

                def read_one(path: str, extra: dict[str, Any], f: _Found = f) -> Any:
                    shown = {path: f.path} if self.store is not None else f.full
                    return self._read_files(con, [path], extra, display=shown)

                good, bad = dead_letters.salvage(
                    con,
                    f.full,
                    f.path,
                    self.format,
                    self.config.options,
                    error,
                    read_one,
                    row_column=self.config.row_column,
                )
                if good is not None:
                    parts.append(good)
                rejected.append(bad)
            data = dead_letters.unify(parts) if parts else self._empty()
            return data, pa.concat_tables(rejected) if rejected else None
        finally:
            con.close()

    def _read_files(
        self,
        con: Any,
        paths: list[str],
        extra: dict[str, Any] | None = None,
        display: str | Mapping[str, str] | None = None,
    ) -> Any:
        """One DuckDB read of ``paths`` (raises duckdb.Error), in file order.

        ``display`` names the file in the file column: a full local path standing for the
        one file read (salvaged records of a file), or a mapping of the paths read to what
        they stand for (objects' copies → URIs). Without it, the path read, relative to the
        project.
        """
        reader = {
            "csv": "read_csv",
            "ndjson": "read_json",
            "json": "read_json",
            "parquet": "read_parquet",
        }[self.format]
        options = {**self.config.options, **(extra or {})}
        if self.format == "ndjson":
            options.setdefault("format", "newline_delimited")
        lowered = self.config.path.lower()
        if self.format != "parquet" and lowered.endswith((".gzip", ".zstd")):
            # DuckDB recognises .gz and .zst by name only.
            options.setdefault("compression", "gzip" if lowered.endswith(".gzip") else "zstd")
        args = "".join(f", {k} := {_literal(v)}" for k, v in options.items())
        file_col = self.config.file_column
        params: dict[str, Any] = {"files": paths}
        # With row numbers or several stand-ins, DuckDB's file-name column (under a name no
        # data column has) is kept, and the file and row columns are made from it in Arrow.
        in_arrow = self.config.row_column is not None or isinstance(display, Mapping)
        select = "*" if in_arrow else f"* EXCLUDE ({_FILE})"
        if file_col and not in_arrow:
            select += f", replace($shown, $prefix, '') AS {_quote(file_col)}"
            params["prefix"] = self._prefix()
            if display is None:
                select = select.replace("$shown", _FILE)
            else:
                params["shown"] = display
        union = "" if options.get("store_rejects") else ", union_by_name := true"
        sql = f"SELECT {select} FROM {reader}($files, filename := '{_FILE}'{union}{args})"
        table = con.execute(sql, params).to_arrow_table()
        return self._origin(table, display) if in_arrow else table

    def _prefix(self) -> str:
        return str(self.project_root).rstrip("/") + "/"

    def _origin(self, table: Any, display: str | Mapping[str, str] | None) -> Any:
        """``table`` with its file and row columns in place of DuckDB's file-name column.

        Raises _Interleaved when one file's records are not contiguous (their order in the
        file is then unknown): the caller reads file by file.
        """
        import pyarrow as pa
        import pyarrow.compute as pc

        files = pc.dictionary_encode(table.column(_FILE).combine_chunks())
        table = table.drop_columns([_FILE])
        file_col, row_col = self.config.file_column, self.config.row_column
        if file_col:
            prefix = self._prefix()
            names = []
            for value in files.dictionary.to_pylist():
                if isinstance(display, Mapping):
                    names.append(display.get(value, value))
                else:
                    names.append((display or value).replace(prefix, ""))
            column = pc.take(pa.array(names, pa.string()), files.indices)
            table = table.append_column(pa.field(file_col, pa.string()), column)
        if row_col:
            if row_col in table.column_names:
                raise SourceError(
                    f"{self.dataset}: the files have a column {row_col!r}, the name of the "
                    "row column",
                    dataset=self.dataset,
                    column=row_col,
                    hint="set the source's row_column to another name",
                )
            table = table.append_column(pa.field(row_col, pa.int64()), _row_numbers(files))
        return table

    def _empty(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(self.config.file_column, pa.string())] if self.config.file_column else []
        if self.config.row_column:
            fields.append(pa.field(self.config.row_column, pa.int64()))
        return pa.schema(fields).empty_table()

    # -- status ---------------------------------------------------------------------------

    def status(self, position: Any) -> SourceStatus:
        new, changed = self._split(position)
        return SourceStatus(
            kind=self.kind,
            target=self.config.path,
            consumed=len(position.files),
            pending=len(new),
            details={
                "format": self.format,
                "changed_files": [f.path for f in changed],
                "pending_bytes": sum(f.size for f in new),
            },
        )


def _entry(value: list[Any]) -> tuple[Any, ...]:
    """A ledger entry from its JSON form: [size, mtime_ns] or [size, mtime_ns, etag]."""
    base = (int(value[0]), int(value[1]))
    return (*base, str(value[2])) if len(value) > 2 and value[2] else base


def _suffix(name: str) -> str:
    """The extensions of ``name`` that DuckDB and the salvage read (``.csv.gz``), safe as
    part of a local file name."""
    suffix = "".join(PurePosixPath(name).suffixes[-2:])
    return re.sub(r"[^A-Za-z0-9._-]", "_", suffix)[-40:]


def _row_numbers(files: Any) -> Any:
    """1-based position of each row among its file's rows, from the dictionary-encoded
    file-name column of a read that keeps each file's records together and in order."""
    import numpy as np
    import pyarrow as pa

    codes = files.indices.to_numpy(zero_copy_only=False)
    n = len(codes)
    if n == 0:
        return pa.array([], pa.int64())
    starts = np.flatnonzero(np.concatenate(([True], codes[1:] != codes[:-1])))
    if len(starts) != len(files.dictionary):
        raise _Interleaved
    lengths = np.diff(np.append(starts, n))
    return pa.array(np.arange(1, n + 1, dtype=np.int64) - np.repeat(starts, lengths))


def _quote(name: str) -> str:
    from sqlglot import exp

    return exp.to_identifier(name, quoted=True).sql("duckdb")


def _literal(value: Any) -> str:
    """A reader option value as a DuckDB literal (structs for ``columns``)."""
    from sqlglot import exp

    if isinstance(value, dict):
        return "{" + ", ".join(f"{_literal(str(k))}: {_literal(v)}" for k, v in value.items()) + "}"
    if isinstance(value, list):
        return "[" + ", ".join(_literal(v) for v in value) + "]"
    return exp.convert(value).sql("duckdb")
