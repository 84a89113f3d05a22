"""Column types in contracts: DuckDB's spelling, type families and how a type changed.

``physicalType`` is a DuckDB type, checked exactly as DuckDB spells it
(:func:`canonical_type`); ``logicalType`` is an ODCS logical type that accepts whole type
families (:func:`type_family`, :data:`LOGICAL_ACCEPTS`). :func:`type_change` tells a widening
(every old value fits the new type) from a narrowing or an incompatible change.
"""

from __future__ import annotations

import functools
import re
from typing import Literal


@functools.lru_cache(maxsize=1024)
def canonical_type(text: str) -> str:
    """DuckDB's own spelling of a type: ``int`` → ``INTEGER``, ``varchar(18)`` → ``VARCHAR``.

    Raises:
        ValueError: DuckDB does not know the type.
    """
    import duckdb

    try:
        return str(duckdb.sqltype(text))
    except duckdb.Error as exc:
        reason = str(exc).splitlines()[0].split(": ", 1)[-1]
        raise ValueError(f"physicalType {text!r} is not a DuckDB type ({reason})") from None


_FAMILIES = {
    "integer": "TINYINT SMALLINT INTEGER BIGINT HUGEINT UTINYINT USMALLINT UINTEGER UBIGINT "
    "UHUGEINT VARINT BIGNUM INT INT1 INT2 INT4 INT8 LONG SHORT SIGNED",
    "number": "FLOAT DOUBLE REAL DECIMAL NUMERIC FLOAT4 FLOAT8",
    "string": "VARCHAR TEXT STRING CHAR BPCHAR UUID JSON ENUM NVARCHAR",
    "boolean": "BOOLEAN BOOL LOGICAL",
    "date": "DATE",
    "time": "TIME TIMETZ TIME_NS",
    "timestamp": "TIMESTAMP TIMESTAMPTZ TIMESTAMP_S TIMESTAMP_MS TIMESTAMP_NS TIMESTAMP_US "
    "DATETIME",
    "object": "STRUCT MAP UNION",
    "binary": "BLOB BYTEA BINARY VARBINARY BIT BITSTRING",
    "interval": "INTERVAL",
}
_FAMILY_OF = {name: fam for fam, names in _FAMILIES.items() for name in names.split()}
_FAMILY_OF.update(
    {
        "DOUBLE PRECISION": "number",
        "TIMESTAMP WITH TIME ZONE": "timestamp",
        "TIME WITH TIME ZONE": "time",
    }
)
# A logicalType accepts these families (JSON Schema: every integer is a number).
LOGICAL_ACCEPTS = {
    "integer": {"integer"},
    "number": {"integer", "number"},
    "string": {"string"},
    "boolean": {"boolean"},
    "date": {"date"},
    "time": {"time"},
    "timestamp": {"timestamp"},
    "object": {"object"},
    "array": {"array"},
}


def type_family(type_name: str) -> str:
    """The family of a DuckDB type: ``integer``, ``number`` (floating and decimal),
    ``string``, ``boolean``, ``date``, ``time``, ``timestamp`` (with or without zone),
    ``object`` (STRUCT, MAP), ``array`` (LIST, ``T[]``), ``binary``, ``interval`` or
    ``other``."""
    text = " ".join(type_name.strip().upper().split())
    if text.endswith("]") or text.startswith("LIST"):
        return "array"
    return _FAMILY_OF.get(text.split("(", 1)[0].strip(), "other")


def logical_type_of(type_name: str) -> str | None:
    """The ODCS logicalType for a DuckDB type (None for binary, interval and others)."""
    family = type_family(type_name)
    return family if family in LOGICAL_ACCEPTS else None


_SIGNED_BITS = {"TINYINT": 8, "SMALLINT": 16, "INTEGER": 32, "BIGINT": 64, "HUGEINT": 128}
_UNSIGNED_BITS = {"UTINYINT": 8, "USMALLINT": 16, "UINTEGER": 32, "UBIGINT": 64, "UHUGEINT": 128}
_DIGITS = {(8, True): 3, (16, True): 5, (32, True): 10, (64, True): 19, (128, True): 39}
_DIGITS.update({(8, False): 3, (16, False): 5, (32, False): 10, (64, False): 20, (128, False): 39})
_TIMESTAMP_PRECISION = {"TIMESTAMP_S": 0, "TIMESTAMP_MS": 1, "TIMESTAMP": 2, "TIMESTAMP_NS": 3}
_DECIMAL = re.compile(r"^DECIMAL\((\d+),\s*(\d+)\)$")


def _widens(old: str, new: str) -> bool:
    """Every value of canonical DuckDB type ``old`` is a value of ``new``."""
    if old.endswith("[]") and new.endswith("[]"):
        return old == new or _widens(old[:-2], new[:-2])
    old_int = _SIGNED_BITS.get(old) or _UNSIGNED_BITS.get(old)
    if old_int is not None:
        signed = old in _SIGNED_BITS
        if new in _SIGNED_BITS:
            return _SIGNED_BITS[new] > old_int
        if new in _UNSIGNED_BITS:
            return not signed and _UNSIGNED_BITS[new] > old_int
        if new in ("FLOAT", "DOUBLE", "VARINT", "BIGNUM"):
            return True  # Avro's promotion rule: integers read as floating point
        match = _DECIMAL.match(new)
        return match is not None and int(match[1]) - int(match[2]) >= _DIGITS[(old_int, signed)]
    if old == "FLOAT":
        return new == "DOUBLE"
    old_dec, new_dec = _DECIMAL.match(old), _DECIMAL.match(new)
    if old_dec:
        if new == "DOUBLE":
            return True
        if new_dec:
            p1, s1, p2, s2 = (int(x) for x in (*old_dec.groups(), *new_dec.groups()))
            return s2 >= s1 and p2 - s2 >= p1 - s1
        return False
    if old == "DATE":
        return new in _TIMESTAMP_PRECISION
    if old in _TIMESTAMP_PRECISION and new in _TIMESTAMP_PRECISION:
        return _TIMESTAMP_PRECISION[new] > _TIMESTAMP_PRECISION[old]
    return new == "VARCHAR" and (old.startswith("ENUM(") or old in ("UUID", "JSON"))


def type_change(old: str, new: str) -> Literal["same", "widening", "narrowing", "incompatible"]:
    """How a column's canonical DuckDB type changed."""
    if old == new:
        return "same"
    if _widens(old, new):
        return "widening"
    if _widens(new, old):
        return "narrowing"
    return "incompatible"
