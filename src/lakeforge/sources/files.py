"""The file source: each file under a glob ingested exactly once, in order of arrival.

A ledger of ingested files (path → size, modification time) is the source's position. Each
batch's commit carries the ledger entries of the files it read; every commit while the
ledger is small, and every ``SNAPSHOT_EVERY``-th batch after that, carries the whole ledger
instead, so recovery reads back only as far as the newest snapshot. A file already in the
ledger whose size or modification time changed is *reported* (``lakeforge sources``, task
metrics) and ingested again only with ``allow_overwrites``.

Files are read by DuckDB (``read_csv`` / ``read_json`` / ``read_parquet``, gzip and zstd
included) with ``union_by_name``, so files with different columns land in one batch; the
write's schema policy then decides what a new column does to the table. Records that cannot
be read go to the dataset's dead-letter queue (``dead_letters.py``) and the batch goes on.
"""

from __future__ import annotations

import glob
import os
import re
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from lakeforge.errors import ConfigError, SourceError
from lakeforge.sources.base import Source, SourceBatch, SourceStatus

FileFormat = Literal["csv", "ndjson", "json", "parquet"]
SNAPSHOT_LIMIT = 5000  # ledger entries up to which every commit carries the whole ledger
SNAPSHOT_EVERY = 50
_FILE = "__lf_file"
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
        path: a glob relative to the project (``**`` recurses).
        format: ``csv``, ``ndjson``, ``json`` or ``parquet``; default from the extension
            (``.gz`` / ``.zst`` ignored).
        max_files_per_batch / max_bytes_per_batch: batch size limits (at least one file).
        file_column: column holding each record's file (path relative to the project);
            ``null`` for none.
        allow_overwrites: a changed file already ingested is ingested again.
        options: reader options passed to DuckDB (``header``, ``delim``, ``columns``,
            ``all_varchar`` …).
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
    allow_overwrites: bool = False
    options: dict[str, Any] = Field(default_factory=dict)

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
    """Ingested files: relative path → (size, mtime in ns)."""

    files: dict[str, tuple[int, int]]
    fresh: bool = False  # rebuilt from scratch: the next commit must carry a snapshot
    batches_since_snapshot: int = 0


@dataclass(frozen=True)
class _Found:
    path: str  # relative to the project (the ledger key)
    full: str
    size: int
    mtime_ns: int


class FilesSource(Source):
    """Files under a glob, each ingested once, oldest first."""

    kind = "files"

    def __init__(self, dataset: str, project_root: Path, config: FilesConfig) -> None:
        super().__init__(dataset, project_root)
        self.config = config
        self.format = config.file_format(dataset)

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
        files = {k: (int(v[0]), int(v[1])) for k, v in base.items()}
        for delta in reversed(deltas):
            files.update({k: (int(v[0]), int(v[1])) for k, v in delta.items()})
        return Ledger(files, batches_since_snapshot=len(deltas))

    def fresh(self) -> Ledger:
        return Ledger({}, fresh=True)

    # -- discovery ------------------------------------------------------------------------

    def _discover(self) -> list[_Found]:
        pattern = self.config.path
        if "://" in pattern:
            raise SourceError(
                f"{self.dataset}: object-store paths are not supported by the file source yet",
                dataset=self.dataset,
                hint="use a local path, or a mounted object store",
            )
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
            elif seen != (f.size, f.mtime_ns):
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
            entries = {f.path: (f.size, f.mtime_ns) for f in group}
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
            data, rejected = self._read(group)
            yield SourceBatch(
                data=data,
                rejected=rejected,
                state=state,
                description=f"{len(group)} file(s), {size:,} bytes",
                units=len(group),
            )

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
        con = duckdb.connect()
        try:
            if not readable:
                return self._empty(), None
            # CSV always goes file by file through DuckDB's reject capture: without it the
            # sniffer, faced with one malformed row, may settle on another delimiter and
            # read the whole file into one column — silently.
            if self.format != "csv":
                try:
                    return self._read_files(con, [f.full for f in readable]), None
                except duckdb.Error:
                    pass
            parts, rejected = [], []
            for f in readable:
                error = "the batch read failed"
                if self.format != "csv":
                    try:
                        parts.append(self._read_files(con, [f.full]))
                        continue
                    except duckdb.Error as exc:
                        error = str(exc).splitlines()[0]

                def read_one(path: str, extra: dict[str, Any], shown: str = f.full) -> Any:
                    return self._read_files(con, [path], extra, display=shown)

                good, bad = dead_letters.salvage(
                    con, f.full, f.path, self.format, self.config.options, error, read_one
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
        display: str | None = None,
    ) -> Any:
        """One DuckDB read of ``paths`` (raises duckdb.Error). ``display`` names the file
        in the file column when ``paths`` is a stand-in (salvaged records of a file)."""
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
        # DuckDB's file-name column under a name no data column has.
        select = f"* EXCLUDE ({_FILE})"
        params: dict[str, Any] = {"files": paths}
        if file_col:
            select += f", replace($shown, $prefix, '') AS {_quote(file_col)}"
            params["prefix"] = str(self.project_root).rstrip("/") + "/"
        if file_col and display is None:
            select = select.replace("$shown", _FILE)
        elif file_col:
            params["shown"] = display
        union = "" if options.get("store_rejects") else ", union_by_name := true"
        sql = f"SELECT {select} FROM {reader}($files, filename := '{_FILE}'{union}{args})"
        return con.execute(sql, params).to_arrow_table()

    def _empty(self) -> Any:
        import pyarrow as pa

        fields = [pa.field(self.config.file_column, pa.string())] if self.config.file_column else []
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
