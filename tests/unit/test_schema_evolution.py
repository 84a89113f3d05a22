"""Schema evolution policies (add_columns, fail, rescue) through append, overwrite and merge.

Each test writes a first batch, then a second one whose schema drifts, and checks the table's
schema and content (or the error and an unchanged table) against what the policy promises.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakeforge.errors import Location, SchemaError
from lakeforge.graph.spec import RESCUE_COLUMN, Append, Dataset, DatasetConfig, Merge, Overwrite
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import WriteResult, write_dataset

STRATEGIES = {"append": Append(), "overwrite": Overwrite(), "merge": Merge(keys=["k"])}
Row = dict[str, Any]


def build(store: DeltaStore, strategy: str, policy: str, data: pa.Table) -> WriteResult:
    ds = Dataset(
        name="t",
        config=DatasetConfig(name="t", write=STRATEGIES[strategy], schema_evolution=policy),
        location=Location("test.py", 1),
    )
    info = CommitInfo("run", "t", "fp", store.committed_batch("t") + 1)
    return write_dataset(
        store,
        ds,
        data,
        info,
        target_version=store.version("t"),
        now=datetime(2024, 1, 1, tzinfo=UTC),
    )


def expected_rows(
    strategy: str, first: list[Row], second: list[Row], columns: list[str]
) -> list[Row]:
    """What the table holds after both batches; columns a batch lacks are null."""
    first = [{c: r.get(c) for c in columns} for r in first]
    second = [{c: r.get(c) for c in columns} for r in second]
    if strategy == "append":
        return first + second
    if strategy == "overwrite":
        return second
    by_key = {r["k"]: r for r in first}
    by_key.update({r["k"]: r for r in second})
    return list(by_key.values())


def rows(store: DeltaStore) -> list[Row]:
    return sorted(store.open("t").to_pyarrow_table().to_pylist(), key=lambda r: (r["k"], str(r)))


def by_key(items: list[Row]) -> list[Row]:
    return sorted(items, key=lambda r: (r["k"], str(r)))


FIRST = pa.table({"k": [1, 2], "x": pa.array([10, None], pa.int64()), "v": ["a", "é"]})


@pytest.fixture(params=list(STRATEGIES))
def strategy(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(str(tmp_path))


# ---------------------------------------------------------------------------------------------
# add_columns


def test_add_columns_adds_a_new_column(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "add_columns", FIRST)
    second = pa.table({"k": [2, 3], "x": [20, 30], "v": ["b", None], "w": ["ü", None]})
    result = build(store, strategy, "add_columns", second)
    assert result.version == 1
    assert result.added_columns == ["w"]
    assert set(store.schema("t").names) == {"k", "x", "v", "w"}  # type: ignore[union-attr]
    columns = ["k", "x", "v", "w"]
    expected = expected_rows(strategy, FIRST.to_pylist(), second.to_pylist(), columns)
    assert rows(store) == by_key(expected)


def test_add_columns_writes_a_missing_column_as_null(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "add_columns", FIRST)
    second = pa.table({"k": [2, 3], "v": ["b", "c"]})
    build(store, strategy, "add_columns", second)
    assert store.schema("t").names == ["k", "x", "v"]  # type: ignore[union-attr]
    expected = expected_rows(strategy, FIRST.to_pylist(), second.to_pylist(), ["k", "x", "v"])
    assert rows(store) == by_key(expected)


def test_add_columns_widens_int32_to_int64(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "add_columns", FIRST)
    second = pa.table({"k": [3], "x": pa.array([2**31 - 1], pa.int32()), "v": ["c"]})
    build(store, strategy, "add_columns", second)
    assert store.schema("t").field("x").type == pa.int64()  # type: ignore[union-attr]
    expected = expected_rows(strategy, FIRST.to_pylist(), second.to_pylist(), ["k", "x", "v"])
    assert rows(store) == by_key(expected)


def test_add_columns_rejects_string_into_int(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "add_columns", FIRST)
    with pytest.raises(SchemaError) as err:
        build(store, strategy, "add_columns", pa.table({"k": [3], "x": ["12"], "v": ["c"]}))
    assert err.value.column == "x"
    assert err.value.expected == "int64"
    assert err.value.found == "string"
    assert err.value.dataset == "t"
    assert "'x'" in str(err.value) and "int64" in str(err.value)
    assert store.version("t") == 0
    assert rows(store) == by_key(FIRST.to_pylist())


# ---------------------------------------------------------------------------------------------
# fail


@pytest.mark.parametrize(
    ("second", "column"),
    [
        (pa.table({"k": [3], "x": [1], "v": ["c"], "w": [True]}), "w"),
        (pa.table({"k": [3], "v": ["c"]}), "x"),
        (pa.table({"k": [3], "x": ["1"], "v": ["c"]}), "x"),
        (pa.table({"k": [3], "x": pa.array([1], pa.int32()), "v": ["c"]}), "x"),
    ],
    ids=["new-column", "missing-column", "string-for-int", "int32-for-int64"],
)
def test_fail_rejects_any_drift(
    store: DeltaStore, strategy: str, second: pa.Table, column: str
) -> None:
    build(store, strategy, "fail", FIRST)
    with pytest.raises(SchemaError) as err:
        build(store, strategy, "fail", second)
    assert err.value.column == column
    assert err.value.dataset == "t"
    assert store.version("t") == 0
    assert rows(store) == by_key(FIRST.to_pylist())


def test_fail_accepts_the_same_schema(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "fail", FIRST)
    second = pa.table({"k": [2], "x": pa.array([None], pa.int64()), "v": ["😀"]})
    result = build(store, strategy, "fail", second)
    assert result.version == 1
    expected = expected_rows(strategy, FIRST.to_pylist(), second.to_pylist(), ["k", "x", "v"])
    assert rows(store) == by_key(expected)


# ---------------------------------------------------------------------------------------------
# rescue


def test_rescue_keeps_new_and_incompatible_values_as_json(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "rescue", FIRST)
    second = pa.table(
        {
            "k": [2, 3, 4],
            "x": ["zwölf", None, "7"],
            "v": ["b", "c", None],
            "w": ["日本", None, None],
        }
    )
    result = build(store, strategy, "rescue", second)
    assert sorted(result.rescued_columns) == ["w", "x"]
    schema = store.schema("t")
    assert schema is not None
    assert "w" not in schema.names
    assert schema.field("x").type == pa.int64()
    assert RESCUE_COLUMN in schema.names
    rescued_second = [
        {"k": 2, "x": None, "v": "b", RESCUE_COLUMN: {"x": "zwölf", "w": "日本"}},
        {"k": 3, "x": None, "v": "c", RESCUE_COLUMN: None},
        {"k": 4, "x": None, "v": None, RESCUE_COLUMN: {"x": "7"}},
    ]
    columns = ["k", "x", "v", RESCUE_COLUMN]
    expected = expected_rows(strategy, FIRST.to_pylist(), rescued_second, columns)
    actual = [
        {**r, RESCUE_COLUMN: json.loads(r[RESCUE_COLUMN]) if r[RESCUE_COLUMN] else None}
        for r in rows(store)
    ]
    assert actual == by_key(expected)


def test_rescue_accepts_widening_without_rescuing(store: DeltaStore, strategy: str) -> None:
    build(store, strategy, "rescue", FIRST)
    second = pa.table({"k": [3], "x": pa.array([5], pa.int32()), "v": ["c"]})
    result = build(store, strategy, "rescue", second)
    assert result.rescued_columns == []
    assert store.schema("t").names == ["k", "x", "v"]  # type: ignore[union-attr]
    expected = expected_rows(strategy, FIRST.to_pylist(), second.to_pylist(), ["k", "x", "v"])
    assert rows(store) == by_key(expected)
