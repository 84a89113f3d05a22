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

When the source numbers its records (``row_column``), the records salvaged from a file keep
their ordinal in it: a rejected record keeps its slot, so the records after it are not
renumbered (:func:`renumber`; for CSV, :func:`csv_record_ordinals` maps DuckDB's reject
lines to records).
"""

from __future__ import annotations

import contextlib
import gzip
import os
import re
import tempfile
from collections.abc import Callable, Mapping, Sequence
from typing import Any

_MAX_RAW = 1 << 20  # bytes of a rejected record kept (a record is not a file)
# Reader options that decide how a CSV file splits into records.
_DIALECT_OPTIONS = {"delim", "sep", "delimiter", "separator", "quote", "escape", "header"}
_DIALECT_OPTIONS |= {"skip", "comment", "new_line", "strict_mode", "encoding", "compression"}


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
    row_column: str | None = None,
) -> tuple[Any | None, Any]:
    """(readable records or None, rejected records) of one file that failed to read.

    ``row_column``: the column in which ``read`` numbers the records it returns; it is set
    to each record's ordinal in the file (rejected records counted).
    """
    if file_format == "csv":
        return _salvage_csv(con, full_path, rel_path, error, read, options, row_column)
    if file_format == "ndjson":
        return _salvage_ndjson(full_path, rel_path, error, read, row_column)
    return None, rejects([(None, f"unreadable file: {error}", rel_path, None)])


def renumber(table: Any, column: str | None, rows: Sequence[int] | None) -> Any:
    """``table`` with its row-number ``column`` set to ``rows``; NULL when they are unknown
    or not one per record (a wrong number is worse than none)."""
    import pyarrow as pa

    if column is None or table is None or column not in table.column_names:
        return table
    if rows is None or len(rows) != table.num_rows:
        values = pa.nulls(table.num_rows, pa.int64())
    else:
        values = pa.array(rows, pa.int64())
    return table.set_column(table.column_names.index(column), column, values)


def _salvage_csv(
    con: Any,
    full_path: str,
    rel_path: str,
    error: str,
    read: Callable[..., Any],
    options: Mapping[str, Any],
    row_column: str | None,
) -> tuple[Any | None, Any]:
    import duckdb

    dialect = None
    try:
        good = read(full_path, {"store_rejects": True})
        found = con.execute(
            "SELECT csv_line, error_type, error_message, line FROM reject_errors ORDER BY line"
        ).fetchall()
        if found and row_column:
            dialect = csv_dialect(con)
    except duckdb.Error as exc:
        return None, rejects(
            [(None, f"unreadable file: {str(exc).splitlines()[0]}", rel_path, None)]
        )
    finally:
        _clear_rejects(con)
    rows = [
        ((line or "").encode(), f"{kind}: {message}", rel_path, int(number) if number else None)
        for line, kind, message, number in found
    ]
    if found and row_column:
        # Published rows keep their ordinals: the slots of the rejected records are skipped.
        ordinals = None
        lines = [r[3] for r in rows]
        if dialect is not None and None not in lines:
            with contextlib.suppress(OSError, ValueError):
                ordinals = csv_record_ordinals(decompressed(full_path), dialect, options)
        good = renumber(good, row_column, _remaining(ordinals, lines))
    return good, rejects(rows)


def csv_dialect(con: Any) -> tuple[str, str, int, bool] | None:
    """(quote, escape, skip_rows, has_header) of the last ``store_rejects`` read on ``con``
    — what DuckDB settled on, which sniffing the file again may not."""
    found = con.execute(
        "SELECT quote, escape, skip_rows, has_header FROM reject_scans ORDER BY scan_id DESC"
    ).fetchone()
    if found is None:
        return None
    quote, escape, skip, header = found
    return quote or "", escape or "", int(skip or 0), bool(header)


def csv_record_ordinals(
    content: bytes, dialect: tuple[str, str, int, bool], options: Mapping[str, Any]
) -> dict[int, int]:
    """DuckDB CSV line (as in ``reject_errors.line``: a record, or a blank line, counted
    from 1 with the header) → the record's ordinal among the data records (1-based).

    Only lines that start a record are keys; a record whose quoted value spans lines is
    one DuckDB line.
    """
    quote, escape, skip, header = dialect
    q = b"" if quote in ("", "(empty)") else quote.encode()
    e = b"" if escape in ("", "(empty)") or escape == quote else escape.encode()
    comment = str(options.get("comment") or "").encode()
    units: list[bool] = []  # per DuckDB line: does it hold a record?
    pieces = content.split(b"\n")
    if pieces and pieces[-1] == b"":
        pieces.pop()
    in_quotes = False
    for piece in pieces:
        if not in_quotes:
            text = piece.rstrip(b"\r")
            units.append(bool(text) and not (comment and text.startswith(comment)))
        if q:
            counted = re.sub(re.escape(e) + b".", b"", piece, flags=re.S) if e else piece
            in_quotes ^= counted.count(q) % 2 == 1
    ordinals: dict[int, int] = {}
    for index in range(skip + (1 if header else 0), len(units)):
        if units[index]:
            ordinals[index + 1] = len(ordinals) + 1
    return ordinals


def record_ordinals(
    con: Any,
    path: str,
    file_format: str,
    options: Mapping[str, Any],
    read: Callable[[str, dict[str, Any]], Any],
) -> dict[int, int] | None:
    """Line of a dead letter → its record's ordinal, for the file at ``path`` as it is now
    (``read``: the source's reader, for the CSV dialect); None when that cannot be told."""
    import duckdb

    try:
        content = decompressed(path)
        if file_format == "ndjson":
            return ndjson_line_ordinals(content)
        if file_format != "csv":
            return None
        read(path, {"store_rejects": True})
        # Without rejects the scan is not recorded; the file then reads as sniffed.
        dialect = csv_dialect(con) or _sniffed_dialect(con, path, options)
    except (OSError, ValueError, duckdb.Error):
        return None
    finally:
        if file_format == "csv":
            _clear_rejects(con)
    return None if dialect is None else csv_record_ordinals(content, dialect, options)


def _sniffed_dialect(
    con: Any, path: str, options: Mapping[str, Any]
) -> tuple[str, str, int, bool] | None:
    """(quote, escape, skip_rows, has_header) DuckDB's sniffer finds with the reader's
    dialect options."""
    given = {
        k: v
        for k, v in options.items()
        if k in _DIALECT_OPTIONS and isinstance(v, str | int | bool)
    }
    args = "".join(f", {k} := ${k}" for k in given)  # names: [a-z_]+, checked by the config
    found = con.execute(
        f"SELECT Quote, Escape, SkipRows, HasHeader FROM sniff_csv($path{args})",
        {"path": path, **given},
    ).fetchone()
    if found is None:
        return None
    return found[0] or "", found[1] or "", int(found[2] or 0), bool(found[3])


def _clear_rejects(con: Any) -> None:
    import duckdb

    for table in ("reject_errors", "reject_scans"):
        with contextlib.suppress(duckdb.Error):  # not created: nothing was rejected
            con.execute(f"DELETE FROM {table}").fetchall()


def ndjson_line_ordinals(content: bytes) -> dict[int, int]:
    """NDJSON line (1-based, blank lines counted) → the record's ordinal (blank lines not
    counted): the line numbers of dead letters and the row numbers of records."""
    ordinals: dict[int, int] = {}
    for number, line in enumerate(content.split(b"\n"), start=1):
        if line.strip():
            ordinals[number] = len(ordinals) + 1
    return ordinals


def ordinal_at(ordinals: Mapping[int, int], line: int, last: int | None = None) -> int | None:
    """The ordinal of the record at ``line``, or of the first record after it: DuckDB may
    give a CSV record the line of a blank line just before it. ``last``: the highest line
    in ``ordinals``, when known."""
    last = max(ordinals, default=0) if last is None else last
    while line <= last:
        if line in ordinals:
            return ordinals[line]
        line += 1
    return None


def _remaining(ordinals: Mapping[int, int] | None, rejected_lines: list[Any]) -> list[int] | None:
    """The ordinals of the records that were read: all but the rejected ones, in order."""
    if ordinals is None:
        return None
    last = max(ordinals, default=0)
    rejected = {ordinal_at(ordinals, int(line), last) for line in rejected_lines}
    if None in rejected:
        return None
    return [n for n in range(1, len(ordinals) + 1) if n not in rejected]


def _salvage_ndjson(
    full_path: str, rel_path: str, error: str, read: Callable[..., Any], row_column: str | None
) -> tuple[Any | None, Any]:
    import orjson

    try:
        content = _file_bytes(full_path)
    except (OSError, ValueError) as exc:
        return None, rejects([(None, f"unreadable file: {exc}", rel_path, None)])
    good_lines: list[bytes] = []
    good_rows: list[int] = []  # each good line's ordinal among the file's records
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
        good_rows.append(len(good_rows) + len(bad) + 1)
    if not good_lines:
        return None, rejects(bad)
    parts, unfit = _read_lines(good_lines, good_rows, read=read, row_column=row_column)
    if unfit:
        # Lines that parse as JSON but cannot be read (a value that does not fit a declared
        # column type): found by halving, so the readable lines around them are kept.
        ordinal_to_line = _line_numbers(content)
        bad += [(line, msg, rel_path, ordinal_to_line.get(n)) for line, msg, n in unfit]
        bad.sort(key=lambda b: b[3] or 0)
    if not parts:
        return None, rejects(bad)
    good = parts[0] if len(parts) == 1 else unify(parts)
    return good, rejects(bad)


def _read_lines(
    lines: list[bytes],
    ordinals: list[int],
    *,
    read: Callable[..., Any],
    row_column: str | None,
) -> tuple[list[Any], list[tuple[bytes, str, int]]]:
    """Read NDJSON ``lines`` (each valid JSON) as one table if possible; else halve them
    until the lines that cannot be read on their own are found. Returns the tables read
    (each numbered with its lines' ``ordinals``) and ``(line, error, ordinal)`` of the
    lines that could not be read."""
    import duckdb

    handle, temp = tempfile.mkstemp(suffix=".ndjson")
    try:
        with os.fdopen(handle, "wb") as out:
            out.write(b"\n".join(lines) + b"\n")
        # Types from every line, not a sample: a late line of another type widens the
        # column instead of failing the read.
        table = read(temp, {"sample_size": -1})
        return [renumber(table, row_column, ordinals)], []
    except duckdb.Error as exc:
        if len(lines) == 1:
            return [], [(lines[0], f"cannot read record: {_read_error(exc)}", ordinals[0])]
    finally:
        os.unlink(temp)
    mid = len(lines) // 2
    first = _read_lines(lines[:mid], ordinals[:mid], read=read, row_column=row_column)
    second = _read_lines(lines[mid:], ordinals[mid:], read=read, row_column=row_column)
    return first[0] + second[0], first[1] + second[1]


_WHERE = re.compile(r'\s*in file "[^"]*"(, in line \d+)?:?', re.I)


def _read_error(exc: Exception) -> str:
    """DuckDB's message without the temporary file it read (the origin says where)."""
    first = str(exc).splitlines()[0]
    return _WHERE.sub(":", first, count=1).replace("::", ":").strip()


def _line_numbers(content: bytes) -> dict[int, int]:
    """Record ordinal (non-blank lines, 1-based) → line number in the file."""
    out: dict[int, int] = {}
    for number, line in enumerate(content.split(b"\n"), start=1):
        if line.strip():
            out[len(out) + 1] = number
    return out


def decompressed(path: str) -> bytes:
    """The file's content, gzip or zstd decompressed (by its name)."""
    if path.lower().endswith((".zst", ".zstd")):
        import pyarrow as pa

        with pa.input_stream(path, compression="zstd") as fh:
            return bytes(fh.read())
    return _file_bytes(path)


def _file_bytes(path: str) -> bytes:
    lowered = path.lower()
    if lowered.endswith((".gz", ".gzip")):
        with gzip.open(path, "rb") as fh:
            return fh.read()
    if lowered.endswith((".zst", ".zstd")):
        raise ValueError("zstd-compressed: records cannot be salvaged one by one")
    with open(path, "rb") as fh:
        return fh.read()
