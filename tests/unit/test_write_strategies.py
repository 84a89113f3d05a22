"""Write strategies against simple in-memory models.

Hypothesis generates sequences of batches over a small key space (so keys collide), applies
them one batch at a time through :func:`write_dataset` to a real Delta table, and after each
batch the table must equal the model: a multiset (append), the last batch (overwrite), a dict
partition -> rows (replace_partitions), a dict key -> row (merge) or a dict key -> list of
versions (scd2). A batch the strategy must reject leaves the table and its version unchanged.
"""

from __future__ import annotations

import tempfile
from collections import Counter
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from lakeforge.errors import DataError, Location, SchemaError
from lakeforge.graph.spec import (
    SCD2,
    Append,
    Dataset,
    DatasetConfig,
    Merge,
    Overwrite,
    ReplacePartitions,
    WriteStrategy,
)
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import WriteResult, write_dataset

PROPERTY = settings(
    max_examples=25,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)

Row = dict[str, Any]

# ---------------------------------------------------------------------------------------------
# Harness


def make_dataset(name: str, write: WriteStrategy, **config: Any) -> Dataset:
    return Dataset(
        name=name,
        config=DatasetConfig(name=name, write=write, **config),
        location=Location("test.py", 1),
    )


def write(
    store: DeltaStore, ds: Dataset, data: pa.Table, *, now: datetime = T0, run_id: str = "run"
) -> WriteResult:
    """One build of ``ds``: the next batch number, pinned at the current version."""
    info = CommitInfo(run_id, ds.name, "fp", store.committed_batch(ds.name) + 1)
    return write_dataset(store, ds, data, info, target_version=store.version(ds.name), now=now)


def table_rows(store: DeltaStore, name: str) -> list[Row]:
    return store.open(name).to_pyarrow_table().to_pylist()


def _sortable(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def as_multiset(rows: list[Row], columns: list[str]) -> Counter[tuple[Any, ...]]:
    return Counter(tuple(row[c] for c in columns) for row in rows)


def sorted_rows(rows: list[Row], columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(row[c] for c in columns) for row in rows),
        key=lambda r: tuple(_sortable(v) for v in r),
    )


@contextmanager
def fresh_store() -> Iterator[DeltaStore]:
    # One table per hypothesis example: a function-scoped tmp_path would be shared.
    with tempfile.TemporaryDirectory() as root:
        yield DeltaStore(root)


def apply_batches(
    store: DeltaStore,
    ds: Dataset,
    batches: list[pa.Table],
    model_step: Callable[[pa.Table, int], bool],
    check: Callable[[], None],
) -> None:
    """Write each batch; ``model_step`` returns False when the write must fail with DataError.

    Every accepted write is exactly one new Delta version; a rejected one moves nothing.
    """
    for i, batch in enumerate(batches):
        before = store.version(ds.name)
        before_rows = table_rows(store, ds.name) if before is not None else None
        accepted = model_step(batch, i)
        if not accepted:
            with pytest.raises(DataError):
                write(store, ds, batch, now=T0 + timedelta(days=i))
            assert store.version(ds.name) == before
            if before_rows is not None:
                assert table_rows(store, ds.name) == before_rows
            continue
        result = write(store, ds, batch, now=T0 + timedelta(days=i))
        expected_version = 0 if before is None else before + 1
        assert result.version == expected_version
        assert store.version(ds.name) == expected_version
        check()


# ---------------------------------------------------------------------------------------------
# Generated values: few keys so they collide, unicode and nulls in values, ties in sequences.

keys = st.integers(min_value=0, max_value=3)
texts = st.sampled_from([None, "", "a", "b", "é", "日本", "😀", "o'k", 'q"uote'])
numbers = st.one_of(st.none(), st.integers(min_value=-3, max_value=3))
sequences = st.integers(min_value=0, max_value=6)
ops = st.sampled_from([None, "u", "d"])
partitions = st.sampled_from([None, "a", "b", "é", "o'k"])


def rows_of(row: st.SearchStrategy[tuple[Any, ...]], unique_by: Any = None) -> Any:
    """Batches of up to 5 rows; half of them free of duplicate keys so more batches apply."""
    free = st.lists(row, max_size=5)
    if unique_by is None:
        return free
    return st.one_of(free, st.lists(row, max_size=5, unique_by=unique_by))


def to_table(rows: list[tuple[Any, ...]], schema: pa.Schema) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema)


KV_SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string()), ("n", pa.int64())])
KV_ROW = st.tuples(keys, texts, numbers)


# ---------------------------------------------------------------------------------------------
# append / overwrite / replace_partitions


@PROPERTY
@given(batches=st.lists(rows_of(KV_ROW), min_size=1, max_size=4))
def test_append_is_multiset_union(batches: list[list[tuple[Any, ...]]]) -> None:
    model: Counter[tuple[Any, ...]] = Counter()
    with fresh_store() as store:
        ds = make_dataset("t", Append())

        def step(batch: pa.Table, _: int) -> bool:
            model.update(as_multiset(batch.to_pylist(), KV_SCHEMA.names))
            return True

        def check() -> None:
            assert as_multiset(table_rows(store, "t"), KV_SCHEMA.names) == model

        apply_batches(store, ds, [to_table(b, KV_SCHEMA) for b in batches], step, check)


@PROPERTY
@given(batches=st.lists(rows_of(KV_ROW), min_size=1, max_size=4))
def test_overwrite_keeps_only_the_last_batch(batches: list[list[tuple[Any, ...]]]) -> None:
    last: list[Row] = []
    with fresh_store() as store:
        ds = make_dataset("t", Overwrite())

        def step(batch: pa.Table, _: int) -> bool:
            last[:] = batch.to_pylist()
            return True

        def check() -> None:
            names = KV_SCHEMA.names
            assert as_multiset(table_rows(store, "t"), names) == as_multiset(last, names)

        apply_batches(store, ds, [to_table(b, KV_SCHEMA) for b in batches], step, check)


P_SCHEMA = pa.schema([("p", pa.string()), ("k", pa.int64()), ("v", pa.string())])


@PROPERTY
@given(batches=st.lists(rows_of(st.tuples(partitions, keys, texts)), min_size=1, max_size=4))
def test_replace_partitions_replaces_exactly_the_partitions_present(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    model: dict[str | None, list[Row]] = {}
    with fresh_store() as store:
        ds = make_dataset("t", ReplacePartitions(), partition_by=["p"])

        def step(batch: pa.Table, _: int) -> bool:
            by_partition: dict[str | None, list[Row]] = {}
            for row in batch.to_pylist():
                by_partition.setdefault(row["p"], []).append(row)
            model.update(by_partition)
            return True

        def check() -> None:
            expected = [row for rows in model.values() for row in rows]
            names = P_SCHEMA.names
            assert as_multiset(table_rows(store, "t"), names) == as_multiset(expected, names)

        apply_batches(store, ds, [to_table(b, P_SCHEMA) for b in batches], step, check)


# ---------------------------------------------------------------------------------------------
# merge


def _has_duplicates(items: list[Any]) -> bool:
    return len(set(items)) != len(items)


@PROPERTY
@given(batches=st.lists(rows_of(KV_ROW, unique_by=lambda r: r[0]), min_size=1, max_size=4))
def test_merge_without_sequence_is_last_writer_wins(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    model: dict[int, Row] = {}
    with fresh_store() as store:
        ds = make_dataset("t", Merge(keys=["k"]))

        def step(batch: pa.Table, _: int) -> bool:
            rows = batch.to_pylist()
            if _has_duplicates([r["k"] for r in rows]):
                return False
            model.update({r["k"]: r for r in rows})
            return True

        def check() -> None:
            names = KV_SCHEMA.names
            assert sorted_rows(table_rows(store, "t"), names) == sorted_rows(
                list(model.values()), names
            )

        apply_batches(store, ds, [to_table(b, KV_SCHEMA) for b in batches], step, check)


SEQ_SCHEMA = pa.schema(
    [("k", pa.int64()), ("s", pa.int64()), ("v", pa.string()), ("op", pa.string())]
)
SEQ_ROW = st.tuples(keys, sequences, texts, ops)


def _newest_per_key(rows: list[Row]) -> dict[int, Row] | None:
    """The record with the greatest sequence per key; None when two records of a key tie."""
    if _has_duplicates([(r["k"], r["s"]) for r in rows]):
        return None
    newest: dict[int, Row] = {}
    for r in rows:
        if r["k"] not in newest or r["s"] > newest[r["k"]]["s"]:
            newest[r["k"]] = r
    return newest


@PROPERTY
@given(
    batches=st.lists(rows_of(SEQ_ROW, unique_by=lambda r: (r[0], r[1])), min_size=1, max_size=4),
    with_deletes=st.booleans(),
)
def test_merge_with_sequence_keeps_the_newest_record(
    batches: list[list[tuple[Any, ...]]], with_deletes: bool
) -> None:
    model: dict[int, Row] = {}
    with fresh_store() as store:
        ds = make_dataset(
            "t",
            Merge(keys=["k"], sequence_by="s", delete_when="op = 'd'" if with_deletes else None),
        )

        def step(batch: pa.Table, _: int) -> bool:
            newest = _newest_per_key(batch.to_pylist())
            if newest is None:
                return False
            for k, r in newest.items():
                stored = model.get(k)
                if stored is not None and r["s"] < stored["s"]:
                    continue  # an older record never replaces a newer one
                if with_deletes and r["op"] == "d":
                    model.pop(k, None)  # a delete of a missing key inserts nothing
                else:
                    model[k] = r
            return True

        def check() -> None:
            names = SEQ_SCHEMA.names
            assert sorted_rows(table_rows(store, "t"), names) == sorted_rows(
                list(model.values()), names
            )

        apply_batches(store, ds, [to_table(b, SEQ_SCHEMA) for b in batches], step, check)


# ---------------------------------------------------------------------------------------------
# scd2

SCD_SCHEMA = pa.schema(
    [("k", pa.int64()), ("s", pa.int64()), ("v", pa.string()), ("n", pa.int64())]
)
SCD_ROW = st.tuples(keys, sequences, texts, st.sampled_from([None, 1]))
SCD_COLUMNS = [*SCD_SCHEMA.names, "valid_from", "valid_to", "is_current"]


def scd2_rows(versions: dict[int, list[Row]]) -> list[Row]:
    """Expected table rows: valid_to = next version's valid_from, is_current on the last."""
    out = []
    for chain in versions.values():
        for i, version in enumerate(chain):
            last = i == len(chain) - 1
            valid_to = None if last else chain[i + 1]["s"]
            out.append(
                {**version, "valid_from": version["s"], "valid_to": valid_to, "is_current": last}
            )
    return out


@PROPERTY
@given(batches=st.lists(rows_of(SCD_ROW, unique_by=lambda r: (r[0], r[1])), min_size=1, max_size=4))
def test_scd2_with_sequence_keeps_every_version(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    versions: dict[int, list[Row]] = {}
    with fresh_store() as store:
        ds = make_dataset("t", SCD2(keys=["k"], sequence_by="s"))

        def step(batch: pa.Table, _: int) -> bool:
            rows = batch.to_pylist()
            if _has_duplicates([(r["k"], r["s"]) for r in rows]):
                return False
            for r in sorted(rows, key=lambda r: r["s"]):
                chain = versions.setdefault(r["k"], [])
                if chain and r["s"] <= chain[-1]["s"]:
                    continue  # not newer than the current version: superseded
                if chain and (r["v"], r["n"]) == (chain[-1]["v"], chain[-1]["n"]):
                    continue  # same tracked values: no new version
                chain.append(r)
            return True

        def check() -> None:
            expected = scd2_rows(versions)
            assert sorted_rows(table_rows(store, "t"), SCD_COLUMNS) == sorted_rows(
                expected, SCD_COLUMNS
            )

        apply_batches(store, ds, [to_table(b, SCD_SCHEMA) for b in batches], step, check)


SNAPSHOT_SCHEMA = pa.schema([("k", pa.int64()), ("v", pa.string())])


@PROPERTY
@given(
    batches=st.lists(
        rows_of(st.tuples(keys, texts), unique_by=lambda r: r[0]), min_size=1, max_size=4
    )
)
def test_scd2_close_missing_closes_keys_absent_from_the_snapshot(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    versions: dict[int, list[Row]] = {}
    columns = ["k", "v", "valid_from", "valid_to", "is_current"]
    with fresh_store() as store:
        ds = make_dataset("t", SCD2(keys=["k"], close_missing=True))

        def step(batch: pa.Table, i: int) -> bool:
            now = T0 + timedelta(days=i)
            rows = batch.to_pylist()
            if _has_duplicates([r["k"] for r in rows]):
                return False
            present = {r["k"] for r in rows}
            for chain in versions.values():
                current = chain[-1]
                if current["valid_to"] is None and current["k"] not in present:
                    current["valid_to"] = now
            for r in rows:
                chain = versions.setdefault(r["k"], [])
                current = chain[-1] if chain and chain[-1]["valid_to"] is None else None
                if current is not None and current["v"] == r["v"]:
                    continue
                if current is not None:
                    current["valid_to"] = now
                chain.append({**r, "vf": now, "valid_to": None})
            return True

        def check() -> None:
            expected = [
                {
                    "k": v["k"],
                    "v": v["v"],
                    "valid_from": v["vf"],
                    "valid_to": v["valid_to"],
                    "is_current": v["valid_to"] is None,
                }
                for chain in versions.values()
                for v in chain
            ]
            assert sorted_rows(table_rows(store, "t"), columns) == sorted_rows(expected, columns)

        apply_batches(store, ds, [to_table(b, SNAPSHOT_SCHEMA) for b in batches], step, check)


# ---------------------------------------------------------------------------------------------
# structural errors


@pytest.mark.parametrize(
    "strategy",
    [Merge(keys=["k"]), Merge(keys=["k"], sequence_by="s"), SCD2(keys=["k"], sequence_by="s")],
    ids=["merge", "merge-seq", "scd2"],
)
def test_null_key_is_a_data_error_and_writes_nothing(tmp_path: Any, strategy: Any) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", strategy)
    write(store, ds, pa.table({"k": [1], "s": [1], "v": ["a"]}))
    with pytest.raises(DataError) as err:
        write(store, ds, pa.table({"k": [2, None], "s": [2, 2], "v": ["b", "c"]}))
    assert err.value.column == "k"
    assert "null key" in err.value.message
    assert store.version("t") == 0
    assert [(r["k"], r["s"], r["v"]) for r in table_rows(store, "t")] == [(1, 1, "a")]


@pytest.mark.parametrize(
    ("strategy", "partition_by", "missing"),
    [
        (Merge(keys=["id"]), [], "id"),
        (Merge(keys=["k"], sequence_by="seq"), [], "seq"),
        (SCD2(keys=["id"]), [], "id"),
        (Append(), ["day"], "day"),
        (ReplacePartitions(), ["day"], "day"),
        (Overwrite(), ["day"], "day"),
    ],
    ids=[
        "merge-key",
        "merge-sequence",
        "scd2-key",
        "append-part",
        "replace-part",
        "overwrite-part",
    ],
)
def test_missing_key_or_partition_column_is_a_schema_error(
    tmp_path: Any, strategy: Any, partition_by: list[str], missing: str
) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", strategy, partition_by=partition_by)
    with pytest.raises(SchemaError) as err:
        write(store, ds, pa.table({"k": [1], "v": ["a"]}))
    assert err.value.column == missing
    assert err.value.dataset == "t"
    assert "k, v" in str(err.value.found)
    assert not store.exists("t")


def test_scd2_rejects_output_that_already_has_bookkeeping_columns(tmp_path: Any) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", SCD2(keys=["k"]))
    with pytest.raises(SchemaError) as err:
        write(store, ds, pa.table({"k": [1], "is_current": [True]}))
    assert err.value.column == "is_current"


def test_merge_ties_in_sequence_name_the_key(tmp_path: Any) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", Merge(keys=["k"], sequence_by="s"))
    with pytest.raises(DataError) as err:
        write(store, ds, pa.table({"k": [7, 7, 8], "s": [3, 3, 1], "v": ["x", "y", "z"]}))
    assert "k=7" in err.value.message
    assert not store.exists("t")


def test_scd2_duplicate_keys_without_sequence_are_a_data_error(tmp_path: Any) -> None:
    # Regression: the duplicate report fetched the TIMESTAMPTZ valid_from through DuckDB's
    # Python conversion, which needs pytz, and crashed instead of raising DataError.
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", SCD2(keys=["k"]))
    with pytest.raises(DataError) as err:
        write(store, ds, pa.table({"k": [5, 5], "v": ["a", "b"]}))
    assert "k=5" in err.value.message
    assert not store.exists("t")


def test_merge_ties_on_a_timestamp_sequence_are_a_data_error(tmp_path: Any) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", Merge(keys=["k"], sequence_by="ts"))
    ts = pa.array([T0, T0], pa.timestamp("us", tz="UTC"))
    with pytest.raises(DataError) as err:
        write(store, ds, pa.table({"k": [1, 1], "ts": ts, "v": ["a", "b"]}))
    assert "k=1" in err.value.message


@pytest.mark.parametrize(
    "batch",
    [
        {"k": [], "s": [], "v": [], "op": []},
        {"k": [1], "s": [0], "v": ["older"], "op": ["u"]},
        {
            "k": [1, 9],
            "s": [0, 3],
            "v": ["older delete", "delete of a missing key"],
            "op": ["d"] * 2,
        },
    ],
    ids=["empty", "only-stale", "no-op-deletes"],
)
def test_merge_that_changes_no_rows_still_commits_once(
    tmp_path: Any, batch: dict[str, list[Any]]
) -> None:
    # Regression: delta-rs makes no commit for a merge that changes nothing, so the batch
    # (app transaction, run metadata) went unrecorded and would be replayed forever.
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", Merge(keys=["k"], sequence_by="s", delete_when="op = 'd'"))
    write(store, ds, to_table([(1, 5, "kept", "u")], SEQ_SCHEMA))
    result = write(store, ds, pa.Table.from_pydict(batch, SEQ_SCHEMA), run_id="second")
    assert result.version == 1
    assert store.version("t") == 1
    assert store.committed_batch("t") == 2
    state = store.state("t")
    assert state is not None and state.last_commit is not None
    assert state.last_commit.run_id == "second"
    assert table_rows(store, "t") == [{"k": 1, "s": 5, "v": "kept", "op": "u"}]


def test_scd2_unchanged_batch_with_an_untracked_new_column_commits_once(tmp_path: Any) -> None:
    # Regression: the empty commit appended the batch's schema exactly, so a column new to
    # the table made it fail with a raw SchemaMismatchError.
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", SCD2(keys=["k"], sequence_by="s", track_columns=["v"]))
    write(store, ds, pa.table({"k": [1], "s": [1], "v": ["a"]}))
    write(store, ds, pa.table({"k": [1], "s": [2], "v": ["a"], "note": ["ignored"]}))
    assert store.version("t") == 1
    assert store.committed_batch("t") == 2
    rows = table_rows(store, "t")
    assert [(r["k"], r["v"], r["valid_from"], r["is_current"]) for r in rows] == [(1, "a", 1, True)]


def test_replace_partitions_empty_batch_with_a_new_column_commits_once(tmp_path: Any) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset("t", ReplacePartitions(), partition_by=["p"])
    write(store, ds, pa.table({"p": ["a"], "v": [1]}))
    empty = pa.table(
        {
            "p": pa.array([], pa.string()),
            "v": pa.array([], pa.int64()),
            "w": pa.array([], pa.string()),
        }
    )
    result = write(store, ds, empty)
    assert result.version == 1
    assert store.committed_batch("t") == 2
    assert table_rows(store, "t") == [{"p": "a", "v": 1, "w": None}]


@pytest.mark.parametrize("kind", ["merge", "scd2"])
def test_null_sequence_values_are_a_data_error(tmp_path: Path, kind: str) -> None:
    import pyarrow as pa

    from lakeforge.errors import DataError, Location
    from lakeforge.graph.spec import SCD2, Dataset, DatasetConfig, Merge
    from lakeforge.storage.delta import CommitInfo, DeltaStore
    from lakeforge.storage.write import write_dataset

    strategy = (
        Merge(keys=["k"], sequence_by="s") if kind == "merge" else SCD2(keys=["k"], sequence_by="s")
    )
    ds = Dataset(
        name="t", config=DatasetConfig(name="t", write=strategy), location=Location("t.py", 1)
    )
    store = DeltaStore(str(tmp_path))
    batch = pa.table({"k": [1, 1], "s": pa.array([None, None], pa.int64()), "v": ["a", "b"]})
    with pytest.raises(DataError, match="null sequence_by"):
        write_dataset(
            store,
            ds,
            batch,
            CommitInfo("r", "t", "f", 1),
            target_version=None,
            now=datetime(2024, 1, 1, tzinfo=UTC),
        )
    assert store.version("t") is None
