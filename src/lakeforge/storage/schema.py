"""Schema enforcement and evolution between a candidate batch and its target table.

Policies (``schema_evolution`` of a dataset):

- ``add_columns`` (default): new columns are added to the table; columns the batch lacks are
  written as null; a type that can be widened losslessly is cast; any other type change is an
  error naming column, expected and found type.
- ``fail``: any difference in columns or types is an error.
- ``rescue``: columns that do not fit (new, or of an incompatible type) are not added; their
  values go into a ``_rescued_data`` JSON column instead, so nothing is lost.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Literal

from lakeforge.errors import SchemaError
from lakeforge.graph.spec import RESCUE_COLUMN

if TYPE_CHECKING:
    import pyarrow as pa


@dataclass
class Aligned:
    """A batch made to fit its table, and how the commit must treat the schema."""

    data: pa.Table
    schema_mode: Literal["merge"] | None  # None: exact; "merge": adds columns
    added_columns: list[str]
    rescued_columns: list[str]


_UTC_NAMES = {"UTC", "Etc/UTC", "utc", "Z", "+00:00", "Etc/GMT", "GMT", "Universal", "Zulu"}


def normalize_for_delta(data: pa.Table, dataset: str) -> pa.Table:
    """Cast Arrow types Delta cannot store to the nearest type it can."""
    import pyarrow as pa

    fields = []
    changed = False
    for f in data.schema:
        t = _delta_type(f.type)
        if pa.types.is_null(t):
            raise SchemaError(
                f"column {f.name!r} has no type (every value is an untyped NULL)",
                dataset=dataset,
                column=f.name,
                hint=f"CAST it, e.g. CAST(NULL AS VARCHAR) AS {f.name}",
            )
        changed |= t != f.type
        fields.append(pa.field(f.name, t, f.nullable))
    if not changed:
        return data
    return data.cast(pa.schema(fields), safe=False)


def _delta_type(t: pa.DataType) -> pa.DataType:
    import pyarrow as pa

    if pa.types.is_uint8(t):
        return pa.int16()
    if pa.types.is_uint16(t):
        return pa.int32()
    if pa.types.is_uint32(t) or pa.types.is_uint64(t):
        return pa.int64()
    if pa.types.is_float16(t):
        return pa.float32()
    if pa.types.is_timestamp(t):
        tz = "UTC" if t.tz in _UTC_NAMES else t.tz
        if t.unit != "us" or tz != t.tz:
            return pa.timestamp("us", tz=tz)
    if pa.types.is_time(t):
        return pa.string()
    if pa.types.is_large_string(t) or pa.types.is_string_view(t):
        return pa.string()
    if pa.types.is_large_binary(t) or pa.types.is_binary_view(t):
        return pa.binary()
    if pa.types.is_dictionary(t):
        return _delta_type(t.value_type)
    if pa.types.is_list(t) or pa.types.is_large_list(t) or pa.types.is_list_view(t):
        return pa.list_(_delta_type(t.value_type))
    if pa.types.is_struct(t):
        return pa.struct([pa.field(f.name, _delta_type(f.type), f.nullable) for f in t])
    if pa.types.is_map(t):
        return pa.map_(_delta_type(t.key_type), _delta_type(t.item_type))
    return t


def widens_to(found: pa.DataType, expected: pa.DataType) -> bool:
    """Whether values of type ``found`` convert to ``expected`` without loss."""
    import pyarrow as pa

    if found == expected or pa.types.is_null(found):
        return True
    ints = [pa.int8(), pa.int16(), pa.int32(), pa.int64()]
    if found in ints and expected in ints:
        return ints.index(found) <= ints.index(expected)
    if found in ints[:3] and pa.types.is_floating(expected) and expected == pa.float64():
        return True
    if found == pa.float32() and expected == pa.float64():
        return True
    if pa.types.is_decimal(found) and pa.types.is_decimal(expected):
        return (
            found.scale <= expected.scale
            and found.precision - found.scale <= expected.precision - expected.scale
        )
    if found in ints and pa.types.is_decimal(expected):
        digits = {pa.int8(): 3, pa.int16(): 5, pa.int32(): 10, pa.int64(): 19}[found]
        return expected.precision - expected.scale >= digits
    return pa.types.is_date32(found) and pa.types.is_timestamp(expected)


def align(data: pa.Table, table_schema: pa.Schema | None, policy: str, dataset: str) -> Aligned:
    """Make ``data`` fit ``table_schema`` under ``policy`` (or raise a precise error)."""
    import pyarrow as pa

    data = normalize_for_delta(data, dataset)
    if table_schema is None:
        return Aligned(data, None, [], [])
    expected = {f.name: f for f in table_schema}
    found = {f.name: f for f in data.schema}
    new = [n for n in found if n not in expected and n != RESCUE_COLUMN]
    missing = [n for n in expected if n not in found]
    # Under "fail" even a lossless widening is drift: any type difference is an error.
    retyped = [
        n
        for n in found
        if n in expected
        and (
            found[n].type != expected[n].type
            if policy == "fail"
            else not widens_to(found[n].type, expected[n].type)
        )
    ]
    if policy == "fail" and (new or missing or retyped):
        _raise_drift(dataset, new, missing, retyped, expected, found, policy)
    if policy == "add_columns" and retyped:
        _raise_drift(dataset, [], [], retyped, expected, found, policy)
    rescued: list[str] = []
    if policy == "rescue" and (new or retyped):
        rescued = new + retyped
        data = _rescue(data, rescued, RESCUE_COLUMN in expected)
        found = {f.name: f for f in data.schema}
        new = [n for n in found if n not in expected]
        missing = [n for n in expected if n not in found]
    columns = []
    fields = []
    for name, f in expected.items():
        if name in found:
            col = data.column(name)
            if col.type != f.type:
                col = col.cast(f.type)
        else:
            col = pa.nulls(data.num_rows, type=f.type)
        columns.append(col)
        fields.append(pa.field(name, f.type, True))
    for name in new:
        columns.append(data.column(name))
        fields.append(pa.field(name, found[name].type, True))
    out = pa.Table.from_arrays(columns, schema=pa.schema(fields))
    return Aligned(out, "merge" if new else None, new, rescued)


def _rescue(data: pa.Table, names: list[str], table_has_rescue: bool) -> pa.Table:
    import orjson
    import pyarrow as pa

    values = {name: data.column(name).to_pylist() for name in names}
    previous = (
        data.column(RESCUE_COLUMN).to_pylist()
        if RESCUE_COLUMN in data.column_names
        else [None] * data.num_rows
    )
    rescued: list[str | None] = []
    for i in range(data.num_rows):
        prior = previous[i]
        row = orjson.loads(prior) if prior else {}
        row.update({n: values[n][i] for n in names if values[n][i] is not None})
        rescued.append(orjson.dumps(row, default=str).decode() if row else None)
    keep = [n for n in data.column_names if n not in names and n != RESCUE_COLUMN]
    out = data.select(keep)
    return out.append_column(RESCUE_COLUMN, pa.array(rescued, type=pa.string()))


def _raise_drift(
    dataset: str,
    new: list[str],
    missing: list[str],
    retyped: list[str],
    expected: dict[str, pa.Field],
    found: dict[str, pa.Field],
    policy: str,
) -> None:
    if retyped:
        col = retyped[0]
        raise SchemaError(
            f"column {col!r} changed type under schema_evolution={policy}",
            dataset=dataset,
            column=col,
            expected=str(expected[col].type),
            found=str(found[col].type),
            hint="CAST it to the table's type, use schema_evolution: rescue, "
            "or rebuild with --full-refresh",
        )
    if new:
        raise SchemaError(
            f"new column(s) {', '.join(map(repr, new))} under schema_evolution=fail",
            dataset=dataset,
            column=new[0],
            expected="no new columns",
            found=f"{len(new)} new",
            hint="set schema_evolution: add_columns to accept them",
        )
    raise SchemaError(
        f"column(s) {', '.join(map(repr, missing))} missing from the batch "
        "under schema_evolution=fail",
        dataset=dataset,
        column=missing[0],
        expected=", ".join(missing),
        found="absent",
        hint="select the column, or set schema_evolution: add_columns to write nulls",
    )
