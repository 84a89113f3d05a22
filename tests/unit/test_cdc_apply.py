"""AUTO-CDC apply (``write: {strategy: cdc}``) against in-memory models.

Hypothesis draws a change feed over a small key space — inserts, updates, deletes and
truncates, each with a unique sequence value — duplicates some records, shuffles them and
cuts them into batches. After every batch the Delta table must equal the model:

- SCD1: per key, the newest record after the last truncate; absent when that is a delete.
  This depends only on the records seen so far, never on their order or batching.
- SCD2: the versions a batch-by-batch replay of the documented rules produces; its current
  rows equal the SCD1 model.

Every batch is exactly one new version of the table, and the ``scope: table`` projection
(what checks see before the commit) equals the table after it.
"""

from __future__ import annotations

import itertools
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import duckdb
import pyarrow as pa
import pytest
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

import lakeforge as lf
from lakeforge.errors import ConfigError, DataError, Location, SchemaError
from lakeforge.graph.spec import CDC, Dataset, DatasetConfig
from lakeforge.storage.cdc_apply import cdc_scope, tombstone_table
from lakeforge.storage.delta import CommitInfo, DeltaStore
from lakeforge.storage.write import WriteResult, table_after_write_sql, write_dataset

PROPERTY = settings(
    max_examples=40,
    deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
T0 = datetime(2024, 1, 1, tzinfo=UTC)
Row = dict[str, Any]

FEED = pa.schema(
    [
        ("k", pa.int64()),
        ("lsn", pa.int64()),
        ("v", pa.string()),
        ("n", pa.int64()),
        ("op", pa.string()),
    ]
)
KEPT = ["k", "lsn", "v", "n"]  # op is dropped by default
HISTORY = [*KEPT, "valid_from", "valid_to", "is_current"]


def make_dataset(write: CDC, name: str = "t", **config: Any) -> Dataset:
    return Dataset(
        name=name,
        config=DatasetConfig(name=name, write=write, **config),
        location=Location("pipelines/t.py", 3),
    )


def feed(rows: list[tuple[Any, ...]], schema: pa.Schema = FEED) -> pa.Table:
    return pa.Table.from_pylist([dict(zip(schema.names, r, strict=True)) for r in rows], schema)


def write(
    store: DeltaStore, ds: Dataset, data: pa.Table, *, batch: int | None = None, now: datetime = T0
) -> WriteResult:
    number = store.committed_batch(ds.name) + 1 if batch is None else batch
    info = CommitInfo("run", ds.name, "fp", number)
    return write_dataset(store, ds, data, info, target_version=store.version(ds.name), now=now)


def rows(store: DeltaStore, name: str = "t") -> list[Row]:
    return store.open(name).to_pyarrow_table().to_pylist()


def _key(value: Any) -> tuple[bool, Any]:
    return (value is None, value if value is not None else 0)


def ordered(items: list[Row], columns: list[str]) -> list[tuple[Any, ...]]:
    return sorted(
        (tuple(r[c] for c in columns) for r in items), key=lambda r: tuple(_key(v) for v in r)
    )


@contextmanager
def fresh_store() -> Iterator[DeltaStore]:
    with tempfile.TemporaryDirectory() as root:
        yield DeltaStore(root)


def projection(store: DeltaStore, ds: Dataset, data: pa.Table) -> list[Row]:
    """The table as ``scope: table`` checks see it before the write (quality/gate.py)."""
    from lakeforge.engines.duckdb import register_table

    con = duckdb.connect()
    try:
        con.register("candidate", data)
        current = None
        version = store.version(ds.name)
        if version is not None:
            register_table(con, "current_rows", store.read(ds.name, version))
            current = "current_rows"
        scope = cdc_scope(con, store, ds, "candidate", current)
        sql = table_after_write_sql(ds, "candidate", current, None, scope)
        return con.execute(sql).to_arrow_table().to_pylist()
    finally:
        con.close()


# ---------------------------------------------------------------------------------------------
# Generated feeds: unique sequence values (like LSNs), few keys so they collide, NULLs and
# unicode in values, exact duplicates, shuffled arrival, random batching.

texts = st.sampled_from([None, "", "a", "b", "é", "日本", "o'k"])
numbers = st.one_of(st.none(), st.integers(min_value=-2, max_value=2))
# Truncates are rare: each one voids most of the feed before it.
operations = st.sampled_from(["c", "u", "u", "d", "d"] * 2 + ["t"])
# The hazards a feed can hold, pinned so every run checks them: a late insert after its key's
# delete, a late update after a truncate, a delete older than its key's row followed by an
# even older insert, a truncate arriving after rows newer than it.
HAZARDS = [
    [[(0, 2, "a", 1, "d")], [(0, 1, "b", None, "c")]],
    [[(0, 1, "a", 1, "c"), (None, 3, None, None, "t")], [(0, 2, "b", 2, "u")]],
    [[(0, 5, "a", 1, "c")], [(0, 3, None, None, "d")], [(0, 2, "b", 2, "c")]],
    [[(0, 4, "a", 1, "c"), (1, 1, "b", 1, "c")], [(None, 2, None, None, "t")]],
]


def with_hazards(test: Any) -> Any:
    for batches in HAZARDS:
        test = example(batches=batches)(test)
    return test


@st.composite
def change_batches(
    draw: st.DrawFn, truncates: bool = True, keys: int = 4, partial: bool = False
) -> list[list[tuple[Any, ...]]]:
    """Batches of change records; ``partial``: mostly NULL values (feeds of changed columns)."""
    v_values = st.sampled_from([None, None, "a", "b"]) if partial else texts
    n_values = st.sampled_from([None, None, 1, 2]) if partial else numbers
    size = draw(st.integers(min_value=1, max_value=16))
    records = []
    for seq in range(1, size + 1):
        if partial:
            op = draw(st.sampled_from(["c", "u", "u", "u", "u", "d", "t" if truncates else "u"]))
        else:
            op = draw(operations if truncates else st.sampled_from(["c", "u", "u", "d"]))
        key = None if op == "t" else draw(st.integers(min_value=0, max_value=keys - 1))
        records.append((key, seq, draw(v_values), draw(n_values), op))
    duplicates = draw(st.lists(st.sampled_from(records), max_size=4))
    arrival = draw(st.permutations(records + duplicates))
    cuts = sorted(draw(st.sets(st.integers(min_value=1, max_value=len(arrival)), max_size=4)))
    bounds = [0, *[c for c in cuts if c < len(arrival)], len(arrival)]
    return [list(arrival[a:b]) for a, b in itertools.pairwise(bounds)]


def scd1_model(seen: set[tuple[Any, ...]]) -> list[Row]:
    """Per key, the newest record after the last truncate, unless it is a delete."""
    truncated = max((r[1] for r in seen if r[4] == "t"), default=None)
    newest: dict[int, tuple[Any, ...]] = {}
    for r in seen:
        if r[4] == "t" or (truncated is not None and r[1] <= truncated):
            continue
        if r[0] not in newest or r[1] > newest[r[0]][1]:
            newest[r[0]] = r
    return [dict(zip(KEPT, r[:4], strict=True)) for r in newest.values() if r[4] != "d"]


class History:
    """SCD2 model: versions per key, replayed batch by batch with the documented rules."""

    def __init__(self) -> None:
        self.versions: dict[int, list[Row]] = {}
        self.deleted: dict[int, int] = {}  # key -> greatest applied delete
        self.truncated: int | None = None

    def newest(self, key: int) -> int | None:
        marks = [self.truncated, self.deleted.get(key)]
        for v in self.versions.get(key, []):
            marks += [v["lsn"], v["valid_to"]]
        present = [m for m in marks if m is not None]
        return max(present) if present else None

    def apply(self, batch: list[tuple[Any, ...]]) -> None:
        records = set(batch)
        truncates = sorted({r[1] for r in records if r[4] == "t"})
        fresh_truncate = bool(truncates) and (
            self.truncated is None or truncates[-1] > self.truncated
        )
        events: dict[int, list[tuple[int, int, tuple[Any, ...] | None]]] = {}
        for r in records:
            if r[4] == "t" or r[1] in truncates:
                continue
            top = self.newest(r[0])
            if top is None or r[1] > top:
                events.setdefault(r[0], []).append((r[1], 2 if r[4] == "d" else 3, r))
        if fresh_truncate:
            keys = set(events) | {
                k for k, chain in self.versions.items() if chain and chain[-1]["valid_to"] is None
            }
            for k in keys:
                top = self.newest(k)
                for w in truncates:
                    if top is None or w > top:
                        events.setdefault(k, []).append((w, 1, None))
        for k, items in events.items():
            chain = self.versions.setdefault(k, [])
            current = chain[-1] if chain and chain[-1]["valid_to"] is None else None
            for seq, kind, r in sorted(items, key=lambda e: (e[0], e[1])):
                if kind in (1, 2):
                    if current is not None:
                        current["valid_to"] = seq
                        current = None
                    if kind == 2:
                        self.deleted[k] = max(seq, self.deleted.get(k, seq))
                    continue
                assert r is not None
                values = {"k": k, "lsn": seq, "v": r[2], "n": r[3]}
                if current is not None and (current["v"], current["n"]) == (r[2], r[3]):
                    current.update(values)  # no tracked column changed: in place
                    continue
                if current is not None:
                    current["valid_to"] = seq
                current = {**values, "valid_from": seq, "valid_to": None}
                chain.append(current)
        if fresh_truncate:
            self.truncated = truncates[-1]

    def rows(self) -> list[Row]:
        return [
            {**v, "is_current": v["valid_to"] is None}
            for chain in self.versions.values()
            for v in chain
        ]


def check_tombstones(store: DeltaStore) -> None:
    """Bounded: at most one tombstone per key and one truncate watermark."""
    name = tombstone_table("t")
    if not store.exists(name):
        return
    marks = rows(store, name)
    deletes = [m["k"] for m in marks if m["_lf_kind"] == "delete"]
    assert len(deletes) == len(set(deletes))
    assert sum(m["_lf_kind"] == "truncate" for m in marks) <= 1


@pytest.mark.slow
@PROPERTY
@given(batches=change_batches())
@with_hazards
def test_scd1_equals_the_newest_change_per_key_whatever_the_order(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    seen: set[tuple[Any, ...]] = set()
    with fresh_store() as store:
        ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
        for batch in batches:
            data = feed(batch)
            expected_view = projection(store, ds, data)
            before = store.version("t")
            write(store, ds, data)
            assert store.version("t") == (0 if before is None else before + 1)
            seen.update(batch)
            table = rows(store)
            assert ordered(table, KEPT) == ordered(scd1_model(seen), KEPT)
            assert ordered(expected_view, KEPT) == ordered(table, KEPT)
            check_tombstones(store)


@pytest.mark.slow
@PROPERTY
@given(batches=change_batches())
@with_hazards
def test_scd2_keeps_a_version_per_change_and_its_current_rows_equal_scd1(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    seen: set[tuple[Any, ...]] = set()
    history = History()
    with fresh_store() as store:
        ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2))
        for batch in batches:
            before = store.version("t")
            write(store, ds, feed(batch))
            assert store.version("t") == (0 if before is None else before + 1)
            seen.update(batch)
            history.apply(batch)
            table = rows(store)
            assert ordered(table, HISTORY) == ordered(history.rows(), HISTORY)
            current = [r for r in table if r["is_current"]]
            assert ordered(current, KEPT) == ordered(scd1_model(seen), KEPT)
            check_tombstones(store)


class PartialRows:
    """SCD1 with ``ignore_null_updates``: a NULL keeps the value the row already has. Each
    batch applies, per key, the changes newer than its row, its delete and the last truncate,
    in sequence order, starting from the row (none after a delete or truncate)."""

    def __init__(self) -> None:
        self.rows: dict[int, Row] = {}
        self.deleted: dict[int, int] = {}
        self.truncated: int | None = None

    def apply(self, batch: list[tuple[Any, ...]]) -> None:
        records = set(batch)
        truncate = max((r[1] for r in records if r[4] == "t"), default=None)
        if truncate is not None and (self.truncated is None or truncate > self.truncated):
            self.rows = {k: r for k, r in self.rows.items() if r["lsn"] >= truncate}
            self.truncated = truncate
        changes: dict[int, list[tuple[Any, ...]]] = {}
        for r in records:
            floor = [self.truncated, self.deleted.get(r[0])]
            if r[0] in self.rows:
                floor.append(self.rows[r[0]]["lsn"])
            if r[4] != "t" and all(f is None or r[1] > f for f in floor):
                changes.setdefault(r[0], []).append(r)
        for k, items in changes.items():
            base: Row | None = self.rows.get(k)
            for r in sorted(items, key=lambda r: r[1]):
                if r[4] == "d":
                    base = None
                    continue
                old = base or {}
                base = {
                    "k": k,
                    "lsn": r[1],
                    "v": r[2] if r[2] is not None else old.get("v"),
                    "n": r[3] if r[3] is not None else old.get("n"),
                }
            last = max(items, key=lambda r: r[1])
            if last[4] == "d":
                self.rows.pop(k, None)
                self.deleted[k] = max(last[1], self.deleted.get(k, last[1]))
            else:
                assert base is not None
                self.rows[k] = base


@pytest.mark.slow
@PROPERTY
@given(batches=change_batches(keys=2, partial=True))  # late changes meet newer rows often
# A change older than the row must not lend its values to a newer one in the same batch.
@example(batches=[[(0, 2, "a", 1, "c")], [(0, 1, "b", None, "u"), (0, 3, None, 2, "u")]])
def test_scd1_ignore_null_updates_fills_nulls_from_the_row(
    batches: list[list[tuple[Any, ...]]],
) -> None:
    model = PartialRows()
    with fresh_store() as store:
        ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", ignore_null_updates=True))
        for batch in batches:
            data = feed(batch)
            expected_view = projection(store, ds, data)
            write(store, ds, data)
            model.apply(batch)
            table = rows(store)
            assert ordered(table, KEPT) == ordered(list(model.rows.values()), KEPT)
            assert ordered(expected_view, KEPT) == ordered(table, KEPT)
            check_tombstones(store)


def tombstones(store: DeltaStore) -> set[tuple[Any, ...]]:
    name = tombstone_table("t")
    return (
        {(m["_lf_key"], m["_lf_seq"]) for m in rows(store, name)} if store.exists(name) else set()
    )


@pytest.mark.slow
@settings(PROPERTY, max_examples=25)  # three writes more per example
@given(batches=change_batches(), scd_type=st.sampled_from([1, 2]))
def test_replaying_every_change_again_changes_no_row(
    batches: list[list[tuple[Any, ...]]], scd_type: int
) -> None:
    columns = KEPT if scd_type == 1 else HISTORY
    with fresh_store() as store:
        ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=scd_type))  # type: ignore[arg-type]
        for batch in batches:
            write(store, ds, feed(batch))
        table, remembered = rows(store), tombstones(store)
        replay = feed([r for batch in batches for r in batch])
        result = write(store, ds, replay)
        assert result.inserted == result.updated == result.deleted == 0
        assert ordered(rows(store), columns) == ordered(table, columns)
        # A delete older than its key's row leaves a redundant tombstone, which a replay may
        # drop; it never adds one.
        assert tombstones(store) <= remembered
        versions = (store.version("t"), store.version(tombstone_table("t")))
        write(store, ds, replay, batch=store.committed_batch("t"))  # same batch: skipped
        assert (store.version("t"), store.version(tombstone_table("t"))) == versions
        write(store, ds, replay)  # replayed once more: nothing left to change
        assert store.version(tombstone_table("t")) == versions[1]
        assert ordered(rows(store), columns) == ordered(table, columns)


# ---------------------------------------------------------------------------------------------
# Examples: semantics


def test_scd1_out_of_order_duplicates_deletes_and_a_late_insert(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    write(
        store,
        ds,
        feed(
            [
                (1, 3, "b", 2, "u"),
                (1, 1, "a", 1, "c"),
                (2, 2, "x", 0, "c"),
                (1, 3, "b", 2, "u"),  # an exact duplicate
                (2, 5, None, None, "d"),
            ]
        ),
    )
    assert rows(store) == [{"k": 1, "lsn": 3, "v": "b", "n": 2}]
    # The insert of key 2 arrives again, late: the delete (5) is newer, so it stays deleted.
    result = write(store, ds, feed([(2, 2, "x", 0, "c"), (1, 2, "older", 9, "u")]))
    assert result.stale_records == 1  # key 2's insert, voided by its tombstone
    assert rows(store) == [{"k": 1, "lsn": 3, "v": "b", "n": 2}]
    assert [(m["k"], m["_lf_seq"]) for m in rows(store, tombstone_table("t"))] == [(2, 5)]
    # A newer insert brings key 2 back; its tombstone is then dropped.
    write(store, ds, feed([(2, 6, "back", 1, "c")]))
    assert ordered(rows(store), KEPT) == [(1, 3, "b", 2), (2, 6, "back", 1)]
    assert rows(store, tombstone_table("t")) == []


def test_scd1_truncate_voids_older_changes_and_keeps_newer_ones(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    write(store, ds, feed([(1, 1, "a", 0, "c"), (2, 2, "b", 0, "c"), (3, 9, "late", 0, "c")]))
    write(
        store, ds, feed([(None, 5, None, None, "t"), (4, 6, "after", 0, "c"), (1, 4, "x", 1, "u")])
    )
    # Rows sequenced before the truncate are gone; 3 (lsn 9) came after it and stays.
    assert ordered(rows(store), KEPT) == [(3, 9, "late", 0), (4, 6, "after", 0)]
    write(store, ds, feed([(2, 3, "too late", 0, "u"), (5, 7, "new", 0, "c")]))
    assert ordered(rows(store), ["k"]) == [(3,), (4,), (5,)]
    marks = rows(store, tombstone_table("t"))
    assert [(m["_lf_kind"], m["_lf_seq"]) for m in marks] == [("truncate", 5)]


def test_scd2_versions_deletes_and_truncate(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2))
    write(
        store,
        ds,
        feed(
            [(1, 1, "a", 0, "c"), (1, 2, "b", 0, "u"), (2, 3, "x", 0, "c"), (1, 4, None, None, "d")]
        ),
    )
    write(
        store, ds, feed([(2, 5, "y", 0, "u"), (1, 3, "stale", 0, "u"), (None, 6, None, None, "t")])
    )
    history = [
        (r["k"], r["v"], r["valid_from"], r["valid_to"], r["is_current"]) for r in rows(store)
    ]
    assert sorted(history, key=lambda r: (r[0], r[2])) == [
        (1, "a", 1, 2, False),
        (1, "b", 2, 4, False),  # closed by the delete
        (2, "x", 3, 5, False),
        (2, "y", 5, 6, False),  # closed by the truncate
    ]


def test_scd2_track_columns_update_untracked_columns_in_place(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2, track_columns=["v"]))
    write(store, ds, feed([(1, 1, "a", 0, "c"), (1, 2, "a", 5, "u")]))
    write(store, ds, feed([(1, 3, "a", 6, "u"), (1, 4, "b", 6, "u")]))
    history = sorted(rows(store), key=lambda r: r["valid_from"])
    assert [(r["v"], r["n"], r["lsn"], r["valid_from"], r["valid_to"]) for r in history] == [
        ("a", 6, 3, 1, 4),  # n changed twice in place; lsn is the last change absorbed
        ("b", 6, 4, 4, None),
    ]


def test_ignore_null_updates_keep_existing_values_until_a_delete(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", ignore_null_updates=True))
    write(store, ds, feed([(1, 1, "a", 1, "c"), (2, 2, "b", 2, "c")]))
    # Within one batch and against the table: NULL means "unchanged".
    write(store, ds, feed([(1, 3, None, 7, "u"), (1, 4, None, None, "u"), (2, 5, "c", None, "u")]))
    assert ordered(rows(store), KEPT) == [(1, 4, "a", 7), (2, 5, "c", 2)]
    # After a delete there is nothing to keep: a later partial update starts from NULLs.
    write(store, ds, feed([(1, 6, None, None, "d"), (1, 7, None, 3, "c"), (2, 8, None, 9, "u")]))
    assert ordered(rows(store), KEPT) == [(1, 7, None, 3), (2, 8, "c", 9)]


def test_ignore_null_updates_never_take_values_from_a_superseded_change(
    tmp_path: Path,
) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", ignore_null_updates=True))
    write(store, ds, feed([(1, 5, "row", 1, "c")]))
    # lsn 3 is older than the row: it is void, and its "late" must not fill lsn 7's NULL.
    write(store, ds, feed([(1, 3, "late", None, "u"), (1, 7, None, 2, "u")]))
    assert rows(store) == [{"k": 1, "lsn": 7, "v": "row", "n": 2}]


def test_ignore_null_updates_in_scd2(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2, ignore_null_updates=True))
    write(store, ds, feed([(1, 1, "a", 1, "c")]))
    write(store, ds, feed([(1, 2, None, 2, "u"), (1, 3, None, None, "u")]))
    history = sorted(rows(store), key=lambda r: r["valid_from"])
    assert [(r["v"], r["n"], r["valid_from"], r["valid_to"]) for r in history] == [
        ("a", 1, 1, 2),
        ("a", 2, 2, None),  # lsn 3 changed nothing once its NULLs are filled: absorbed
    ]
    assert history[-1]["lsn"] == 3


def test_except_columns_decide_the_bookkeeping_kept(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            ("k", pa.int64()),
            ("lsn", pa.int64()),
            ("tx_id", pa.int64()),
            ("v", pa.string()),
            ("op", pa.string()),
        ]
    )
    store = DeltaStore(str(tmp_path))
    default = make_dataset(CDC(keys=["k"], sequence_by="lsn"), name="d")
    write(store, default, feed([(1, 1, 10, "a", "c")], schema))
    assert rows(store, "d") == [{"k": 1, "lsn": 1, "tx_id": 10, "v": "a"}]  # op dropped
    trimmed = make_dataset(
        CDC(keys=["k"], sequence_by="lsn", except_columns=["op", "tx_id"]), name="e"
    )
    write(store, trimmed, feed([(1, 1, 10, "a", "c")], schema))
    assert rows(store, "e") == [{"k": 1, "lsn": 1, "v": "a"}]
    kept = make_dataset(CDC(keys=["k"], sequence_by="lsn", except_columns=[]), name="f")
    write(store, kept, feed([(1, 1, 10, "a", "c")], schema))
    assert rows(store, "f") == [{"k": 1, "lsn": 1, "tx_id": 10, "v": "a", "op": "c"}]


def test_custom_conditions_timestamp_sequence_and_composite_keys(tmp_path: Path) -> None:
    schema = pa.schema(
        [
            ("tenant", pa.string()),
            ("id", pa.int32()),
            ("commit_ts", pa.timestamp("us", tz="UTC")),
            ("kind", pa.string()),
            ("amount", pa.float64()),
        ]
    )
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(
        CDC(
            keys=["tenant", "id"],
            sequence_by="commit_ts",
            op_column=None,
            delete_when="kind = 'DELETE'",
            truncate_when="kind = 'TRUNCATE'",
        )
    )
    t = [T0 + timedelta(seconds=i) for i in range(6)]
    write(
        store,
        ds,
        feed(
            [
                ("eu", 1, t[1], "INSERT", 1.0),
                ("us", 1, t[2], "INSERT", 2.0),
                ("eu", 1, t[3], "DELETE", None),
                ("eu", 2, t[0], "INSERT", 3.0),
            ],
            schema,
        ),
    )
    write(store, ds, feed([("eu", 1, t[2], "UPDATE", 9.0), ("us", 1, t[4], "UPDATE", 5.0)], schema))
    assert ordered(rows(store), ["tenant", "id", "amount", "kind"]) == [
        ("eu", 2, 3.0, "INSERT"),
        ("us", 1, 5.0, "UPDATE"),
    ]


def test_one_commit_per_batch_with_the_batch_recorded_and_replays_skipped(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    write(store, ds, feed([(1, 1, "a", 0, "c"), (2, 2, "b", 0, "c")]))
    changes = feed([(1, 3, "a2", 0, "u"), (2, 4, None, None, "d")])
    first = write(store, ds, changes)
    assert (first.version, first.updated, first.deleted) == (1, 1, 1)
    assert store.committed_batch("t") == 2
    state = store.state("t")
    assert state is not None and state.last_commit is not None
    assert state.last_commit.batch == 2 and state.last_commit.run_id == "run"
    assert store.history("t", 1)[0]["operation"] == "MERGE"
    # The same batch number again (a crashed run's retry): skipped, no new version anywhere.
    tomb = store.version(tombstone_table("t"))
    again = write(store, ds, changes, batch=2)
    assert again.skipped is not None and again.version is None
    assert store.version("t") == 1 and store.version(tombstone_table("t")) == tomb
    # The same changes as a new batch: one empty commit records the batch, no row changes.
    before = rows(store)
    replay = write(store, ds, changes)
    assert replay.version == 2 and (replay.updated, replay.deleted, replay.inserted) == (0, 0, 0)
    assert rows(store) == before
    assert store.version(tombstone_table("t")) == tomb


def test_tombstone_retention_forgets_old_deletes(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", tombstone_retention="1d"))
    write(store, ds, feed([(1, 5, "a", 0, "c"), (1, 6, None, None, "d")]), now=T0)
    write(store, ds, feed([(1, 4, "late", 0, "u")]), now=T0 + timedelta(hours=1))
    assert rows(store) == []  # remembered: the late update is void
    write(store, ds, feed([(2, 7, "b", 0, "c")]), now=T0 + timedelta(days=2))
    assert rows(store, tombstone_table("t")) == []  # older than the retention: purged
    write(store, ds, feed([(1, 4, "later", 0, "u")]), now=T0 + timedelta(days=2))
    assert ordered(rows(store), ["k", "v"]) == [(1, "later"), (2, "b")]


def test_full_refresh_forgets_the_old_tombstones(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    write(store, ds, feed([(1, 2, None, None, "d")]))
    assert len(rows(store, tombstone_table("t"))) == 1
    info = CommitInfo("run2", "t", "fp", store.committed_batch("t") + 1, full_refresh=True)
    write_dataset(store, ds, feed([(1, 1, "a", 0, "c")]), info, target_version=None, now=T0)
    assert rows(store) == [{"k": 1, "lsn": 1, "v": "a", "n": 0}]
    assert rows(store, tombstone_table("t")) == []


# ---------------------------------------------------------------------------------------------
# Examples: errors


def test_null_key_is_a_data_error_and_writes_nothing(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    write(store, ds, feed([(1, 1, "a", 0, "c")]))
    with pytest.raises(DataError) as err:
        write(store, ds, feed([(2, 2, "b", 0, "c"), (None, 3, "c", 0, "u")]))
    assert err.value.column == "k" and err.value.dataset == "t"
    assert "null key" in err.value.message and err.value.hint
    assert store.version("t") == 0
    # A truncate needs no key.
    write(store, ds, feed([(None, 4, None, None, "t")]))
    assert rows(store) == []


def test_null_sequence_is_a_data_error(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    with pytest.raises(DataError) as err:
        write(store, ds, feed([(1, None, "a", 0, "c"), (None, None, None, None, "t")]))
    assert err.value.column == "lsn"
    assert "2 change record(s) have a null sequence_by" in err.value.message
    assert not store.exists("t")


def test_different_records_with_one_key_and_sequence_are_ambiguous(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn"))
    with pytest.raises(DataError) as err:
        write(store, ds, feed([(7, 3, "x", 0, "u"), (7, 3, "y", 0, "u"), (8, 1, "z", 0, "c")]))
    assert "k=7, lsn=3" in err.value.message
    assert err.value.column == "lsn"
    assert not store.exists("t")


@pytest.mark.parametrize(
    ("write_config", "missing", "role"),
    [
        ({"keys": ["id"], "sequence_by": "lsn"}, "id", "cdc"),
        ({"keys": ["k"], "sequence_by": "seq"}, "seq", "cdc"),
        ({"keys": ["k"], "sequence_by": "lsn", "op_column": "operation"}, "operation", "op_column"),
        ({"keys": ["k"], "sequence_by": "lsn", "except_columns": ["tx"]}, "tx", "except_columns"),
        (
            {"keys": ["k"], "sequence_by": "lsn", "scd_type": 2, "track_columns": ["w"]},
            "w",
            "track_columns",
        ),
    ],
    ids=["key", "sequence", "op", "except", "track"],
)
def test_missing_columns_are_schema_errors(
    tmp_path: Path, write_config: dict[str, Any], missing: str, role: str
) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(**write_config))
    with pytest.raises(SchemaError) as err:
        write(store, ds, feed([(1, 1, "a", 0, "c")]))
    assert err.value.column == missing and err.value.dataset == "t"
    assert role in err.value.message
    # track_columns must be among the columns written (the op column is not).
    assert str(err.value.found) == (
        "k, lsn, v, n" if role == "track_columns" else "k, lsn, v, n, op"
    )
    assert err.value.location == Location("pipelines/t.py", 3)
    assert not store.exists("t")


@pytest.mark.parametrize(
    ("condition", "message"),
    [("op = = 'd'", "does not parse"), ("missing = 'd'", "does not run"), ("op", "BOOLEAN")],
    ids=["syntax", "unknown-column", "not-boolean"],
)
def test_bad_delete_when_is_a_config_error(tmp_path: Path, condition: str, message: str) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", delete_when=condition))
    with pytest.raises(ConfigError) as err:
        write(store, ds, feed([(1, 1, "a", 0, "c")]))
    assert message in err.value.message and "delete_when" in err.value.message
    assert err.value.dataset == "t"
    assert not store.exists("t")


def test_scd2_feed_with_a_bookkeeping_column_is_a_schema_error(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2, valid_from="v"))
    with pytest.raises(SchemaError) as err:
        write(store, ds, feed([(1, 1, "a", 0, "c")]))
    assert err.value.column == "v"


@pytest.mark.parametrize(
    ("config", "message"),
    [
        ({"except_columns": ["lsn"]}, "except_columns cannot drop lsn"),
        ({"track_columns": ["v"]}, "track_columns apply to scd_type: 2"),
        ({"scd_type": 3}, "scd_type"),
        ({"scd_type": 2, "valid_to": "valid_from"}, "distinct"),
        ({"tombstone_retention": "soon"}, "duration"),
    ],
)
def test_inconsistent_configuration_is_refused(config: dict[str, Any], message: str) -> None:
    with pytest.raises(ValidationError, match=message):
        DatasetConfig(write={"strategy": "cdc", "keys": ["k"], "sequence_by": "lsn", **config})


def test_yaml_shape_and_public_name() -> None:
    config = DatasetConfig(
        write={"strategy": "cdc", "keys": "id", "sequence_by": "lsn", "scd_type": 2}
    )
    assert isinstance(config.write, lf.CDC)
    assert config.write.keys == ["id"] and config.write.op_column == "op"
    assert "CDC" in dir(lf)


def test_table_scope_checks_are_refused_for_scd2(tmp_path: Path) -> None:
    store = DeltaStore(str(tmp_path))
    ds = make_dataset(CDC(keys=["k"], sequence_by="lsn", scd_type=2))
    with pytest.raises(ConfigError, match="scd_type: 2"):
        projection(store, ds, feed([(1, 1, "a", 0, "c")]))


# ---------------------------------------------------------------------------------------------
# Through a project: the SQL header, the quality gate's `scope: table` and the executor

CHANGES_MODEL = """\
/* lakeforge
write: {strategy: cdc, keys: [id], sequence_by: lsn}
checks:
  - {type: row_count, max: 2, scope: table, name: at_most_two_rows}
*/
SELECT * FROM read_csv('landing/changes.csv')
"""


def test_a_sql_model_applies_its_feed_and_table_checks_see_the_tombstones(tmp_path: Path) -> None:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    def feed_file(lines: list[str]) -> None:
        (tmp_path / "landing").mkdir(exist_ok=True)
        text = "\n".join(["op,id,lsn,v", *lines]) + "\n"
        (tmp_path / "landing/changes.csv").write_text(text, encoding="utf-8")

    (tmp_path / "lakeforge.yml").write_text("name: cdc\nthreads: 1\n", encoding="utf-8")
    (tmp_path / "models").mkdir()
    (tmp_path / "models/accounts.sql").write_text(CHANGES_MODEL, encoding="utf-8")
    store = DeltaStore(str(tmp_path / "lakehouse"))

    feed_file(["c,1,1,a", "c,2,2,b", "c,3,3,c", "d,3,4,"])
    first = Runner(load_project(tmp_path)).run()
    assert first.ok, first.to_dict()
    assert ordered(rows(store, "accounts"), ["id", "lsn", "v"]) == [(1, 1, "a"), (2, 2, "b")]
    # Key 3's insert again, without its delete: the tombstone keeps it out, so the table
    # checked before the commit has two rows, not three.
    feed_file(["c,3,3,c", "c,4,5,d", "d,1,6,"])
    second = Runner(load_project(tmp_path)).run()
    assert second.ok, second.to_dict()
    assert ordered(rows(store, "accounts"), ["id", "v"]) == [(2, "b"), (4, "d")]
    # A third row would break the table check: nothing is published.
    version = store.version("accounts")
    feed_file(["c,5,7,e"])
    third = Runner(load_project(tmp_path)).run()
    task = {t.dataset: t for t in third.tasks}["accounts"]
    assert task.status == "failed" and "at_most_two_rows" in str(task.error)
    assert store.version("accounts") == version
