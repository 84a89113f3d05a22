"""PostgreSQL values in their text output → Arrow, by the column's type OID and modifier.

The change stream (pgoutput) and the snapshot reads (``SELECT col::text``) both deliver
values as PostgreSQL's text output, under the session settings Lakeforge sets on every
connection (:data:`SESSION_OPTIONS`: UTC, ISO dates, hex bytea), so one conversion serves
both and a row read by the snapshot has exactly the types of the same row streamed.

- ``smallint``, ``integer``, ``bigint``, ``oid`` → ``int64`` (so ``ALTER … TYPE bigint``
  is no type change in the feed);
- ``real``, ``double precision`` → ``float64`` (``NaN`` and ``Infinity`` kept);
- ``numeric(p, s)`` with p ≤ 38 → ``decimal128(p, s)``; ``numeric`` without a precision (or
  p > 38) → ``string``, which is exact (Arrow has no unbounded decimal);
- ``boolean`` → ``bool``; ``date`` → ``date32``; ``timestamp`` → ``timestamp[us]``;
  ``timestamptz`` → ``timestamp[us, UTC]``; ``bytea`` → ``binary``;
- anything else (text, varchar, char, json, jsonb, uuid, time, interval, arrays, enums,
  ranges, network and user-defined types …) → ``string``, the text output.

A value that does not fit its Arrow type — ``NaN`` in a ``numeric(p, s)``, ``infinity`` in a
date or timestamp, a BC date, a year after 9999 — cannot be converted. :func:`to_array`
then says which rows failed and why, and the caller sends those rows to the dead-letter
queue with their text values, instead of guessing a value.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Final

if TYPE_CHECKING:
    import pyarrow as pa

#: Settings every connection (stream and snapshot) uses, so text output is the same.
SESSION_OPTIONS: Final = (
    "-c TimeZone=UTC -c DateStyle=ISO,YMD -c IntervalStyle=postgres "
    "-c bytea_output=hex -c extra_float_digits=1"
)

BOOL, BYTEA, INT8, INT2, INT4, OID = 16, 17, 20, 21, 23, 26
FLOAT4, FLOAT8, NUMERIC = 700, 701, 1700
DATE, TIMESTAMP, TIMESTAMPTZ = 1082, 1114, 1184
_INTEGERS: Final = frozenset({INT2, INT4, INT8, OID})
_FLOATS: Final = frozenset({FLOAT4, FLOAT8})


def arrow_type(type_oid: int, typmod: int) -> pa.DataType:
    """The Arrow type of a column of PostgreSQL type ``type_oid`` (modifier ``typmod``)."""
    import pyarrow as pa

    if type_oid in _INTEGERS:
        return pa.int64()
    if type_oid in _FLOATS:
        return pa.float64()
    if type_oid == BOOL:
        return pa.bool_()
    if type_oid == NUMERIC:
        if typmod >= 4:  # ((precision << 16) | scale) + VARHDRSZ
            precision, scale = ((typmod - 4) >> 16) & 0xFFFF, (typmod - 4) & 0xFFFF
            if 0 < precision <= 38 and scale <= precision:
                return pa.decimal128(precision, scale)
        return pa.string()
    if type_oid == DATE:
        return pa.date32()
    if type_oid == TIMESTAMP:
        return pa.timestamp("us")
    if type_oid == TIMESTAMPTZ:
        return pa.timestamp("us", tz="UTC")
    if type_oid == BYTEA:
        return pa.binary()
    return pa.string()


def to_array(values: list[str | None], typ: pa.DataType) -> tuple[pa.Array, dict[int, str]]:
    """The values as an Arrow array of ``typ``, and the rows whose value does not convert
    (index → reason; those rows are null in the array)."""
    import pyarrow as pa

    if pa.types.is_string(typ):
        return pa.array(values, pa.string()), {}
    if pa.types.is_boolean(typ):
        return pa.array([None if v is None else v[:1] == "t" for v in values], typ), {}
    if pa.types.is_binary(typ):
        return _column(values, typ, _bytea)
    try:
        return pa.array(values, pa.string()).cast(typ), {}
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        return _column(values, typ, None)


def _column(values: list[str | None], typ: pa.DataType, parse: Any) -> tuple[Any, dict[int, str]]:
    """Value by value: the ones that convert, and why the others do not."""
    import pyarrow as pa

    out: list[Any] = []
    bad: dict[int, str] = {}
    for i, value in enumerate(values):
        if value is None:
            out.append(None)
            continue
        try:
            out.append(parse(value) if parse else pa.array([value], pa.string()).cast(typ)[0])
        except (pa.ArrowInvalid, pa.ArrowNotImplementedError, ValueError) as exc:
            bad[i] = f"{_shown(value)} is not a valid {typ}: {str(exc).splitlines()[0]}"
            out.append(None)
    return pa.array(out, typ), bad


def _bytea(text: str) -> bytes:
    if not text.startswith("\\x"):
        raise ValueError("bytea not in hex output (bytea_output=hex)")
    return bytes.fromhex(text[2:])


def _shown(value: str, limit: int = 60) -> str:
    return repr(value) if len(value) <= limit else repr(value[: limit - 3] + "...")
