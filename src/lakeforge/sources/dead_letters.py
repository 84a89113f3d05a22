"""Salvage what can be read from a file that failed to read whole; the rest is rejected.

A rejected record keeps its raw bytes, the error and where it came from (file and line),
and goes to the dataset's dead-letter queue (``<dataset>__dlq``) in the same batch as the
records that could be read — nothing is dropped silently, and one bad line does not hold
back a whole batch.

- CSV: DuckDB's own reject capture (``store_rejects``): each malformed row with its line.
- NDJSON: each line is parsed on its own; lines that are not JSON (or not UTF-8) are
  rejected, the others are read together with types inferred from all of them.
- JSON documents, Parquet, and compressed files whose codec Python cannot open: the file
  is rejected as a whole, with the reader's error.
"""

from __future__ import annotations

import contextlib
import gzip
import os
import tempfile
from collections.abc import Callable
from typing import Any

_MAX_RAW = 1 << 20  # bytes of a rejected record kept (a record is not a file)


def reject_schema() -> Any:
    import pyarrow as pa

    return pa.schema(
        [
            pa.field("raw", pa.binary()),
            pa.field("raw_text", pa.string()),
            pa.field("error", pa.string()),
            pa.field("source_file", pa.string()),
            pa.field("line", pa.int64()),
        ]
    )


def rejects(rows: list[tuple[bytes | None, str, str, int | None]]) -> Any:
    """A reject table from (raw bytes, error, file, line) tuples."""
    import pyarrow as pa

    raw = [None if r[0] is None else r[0][:_MAX_RAW] for r in rows]
    return pa.table(
        [
            pa.array(raw, pa.binary()),
            pa.array([None if b is None else b.decode("utf-8", "replace") for b in raw]),
            pa.array([r[1] for r in rows], pa.string()),
            pa.array([r[2] for r in rows], pa.string()),
            pa.array([r[3] for r in rows], pa.int64()),
        ],
        schema=reject_schema(),
    )


def unify(parts: list[Any]) -> Any:
    """Concatenate tables read separately (their inferred types may differ): numeric types
    are promoted; a column whose types cannot be reconciled becomes text (JSON for nested
    values), so no record is lost over a type clash — the write's schema policy decides."""
    import pyarrow as pa

    try:
        return pa.concat_tables(parts, promote_options="permissive")
    except (pa.ArrowInvalid, pa.ArrowTypeError):
        pass
    types: dict[str, set[Any]] = {}
    for part in parts:
        for fld in part.schema:
            types.setdefault(fld.name, set()).add(fld.type)
    clashing = {name for name, seen in types.items() if len({str(t) for t in seen}) > 1}
    return pa.concat_tables(
        [_as_text(part, clashing) for part in parts], promote_options="permissive"
    )


def _as_text(table: Any, columns: set[str]) -> Any:
    import orjson
    import pyarrow as pa

    for name in columns & set(table.column_names):
        column = table.column(name)
        if pa.types.is_nested(column.type):
            values = [
                None if v is None else orjson.dumps(v, default=str).decode()
                for v in column.to_pylist()
            ]
            text = pa.array(values, pa.string())
        else:
            text = column.cast(pa.string())
        table = table.set_column(table.column_names.index(name), name, text)
    return table


def salvage(
    con: Any,
    full_path: str,
    rel_path: str,
    file_format: str,
    options: dict[str, Any],
    error: str,
    read: Callable[[str, dict[str, Any]], Any],
) -> tuple[Any | None, Any]:
    """(readable records or None, rejected records) of one file that failed to read."""
    if file_format == "csv":
        return _salvage_csv(con, full_path, rel_path, error, read)
    if file_format == "ndjson":
        return _salvage_ndjson(full_path, rel_path, error, read)
    return None, rejects([(None, f"unreadable file: {error}", rel_path, None)])


def _salvage_csv(
    con: Any, full_path: str, rel_path: str, error: str, read: Callable[..., Any]
) -> tuple[Any | None, Any]:
    import duckdb

    try:
        good = read(full_path, {"store_rejects": True})
        found = con.execute(
            "SELECT csv_line, error_type, error_message, line FROM reject_errors ORDER BY line"
        ).fetchall()
    except duckdb.Error as exc:
        return None, rejects(
            [(None, f"unreadable file: {str(exc).splitlines()[0]}", rel_path, None)]
        )
    finally:
        for table in ("reject_errors", "reject_scans"):
            with contextlib.suppress(duckdb.Error):  # not created: nothing was rejected
                con.execute(f"DELETE FROM {table}").fetchall()
    rows = [
        ((line or "").encode(), f"{kind}: {message}", rel_path, int(number) if number else None)
        for line, kind, message, number in found
    ]
    return good, rejects(rows)


def _salvage_ndjson(
    full_path: str, rel_path: str, error: str, read: Callable[..., Any]
) -> tuple[Any | None, Any]:
    import duckdb
    import orjson

    try:
        content = _file_bytes(full_path)
    except (OSError, ValueError) as exc:
        return None, rejects([(None, f"unreadable file: {exc}", rel_path, None)])
    good_lines: list[bytes] = []
    bad: list[tuple[bytes | None, str, str, int | None]] = []
    for number, line in enumerate(content.split(b"\n"), start=1):
        if not line.strip():
            continue
        try:
            orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            bad.append((line, f"invalid JSON: {exc}", rel_path, number))
            continue
        good_lines.append(line)
    if not good_lines:
        return None, rejects(bad)
    handle, temp = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(b"\n".join(good_lines) + b"\n")
        # Types from every line, not a sample: a late line of another type widens the
        # column instead of failing the read.
        good = read(temp, {"sample_size": -1})
    except duckdb.Error as exc:
        message = f"unreadable records: {str(exc).splitlines()[0]} (file read failed: {error})"
        return None, rejects(bad + [(line, message, rel_path, None) for line in good_lines])
    finally:
        os.unlink(temp)
    return good, rejects(bad)


def _file_bytes(path: str) -> bytes:
    lowered = path.lower()
    if lowered.endswith((".gz", ".gzip")):
        with gzip.open(path, "rb") as fh:
            return fh.read()
    if lowered.endswith((".zst", ".zstd")):
        raise ValueError("zstd-compressed: records cannot be salvaged one by one")
    with open(path, "rb") as fh:
        return fh.read()
