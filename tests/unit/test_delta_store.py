"""DeltaStore: atomic publish, exactly-once replay, commit metadata, time travel, maintenance."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pyarrow as pa
import pytest

from lakeforge.errors import ConfigError, DatasetNotFound, Location
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
from lakeforge.storage.delta import METADATA_KEY, CommitInfo, DeltaStore, app_id
from lakeforge.storage.maintenance import DEFAULT_RETENTION, optimize, vacuum
from lakeforge.storage.write import WriteResult, write_dataset

NOW = datetime(2024, 1, 1, tzinfo=UTC)


def make_dataset(write: WriteStrategy, **config: Any) -> Dataset:
    return Dataset(
        name="t",
        config=DatasetConfig(name="t", write=write, **config),
        location=Location("test.py", 1),
    )


def info_for(store: DeltaStore, batch: int | None = None, run_id: str = "run") -> CommitInfo:
    return CommitInfo(
        run_id=run_id,
        dataset="t",
        fingerprint=f"fp-{run_id}",
        batch=store.committed_batch("t") + 1 if batch is None else batch,
        input_versions={"upstream": 3},
        external_state={"offset": "42"},
    )


def write(
    store: DeltaStore, ds: Dataset, data: pa.Table, info: CommitInfo, *, now: datetime = NOW
) -> WriteResult:
    return write_dataset(store, ds, data, info, target_version=store.version("t"), now=now)


def rows(store: DeltaStore, version: int | None = None) -> list[dict[str, Any]]:
    table = store.open("t", version).to_pyarrow_table().to_pylist()
    return sorted(table, key=lambda r: (r["k"], str(r)))


@pytest.fixture
def store(tmp_path: Path) -> DeltaStore:
    return DeltaStore(str(tmp_path))


STRATEGIES: dict[str, tuple[WriteStrategy, list[str]]] = {
    "append": (Append(), []),
    "overwrite": (Overwrite(), []),
    "replace_partitions": (ReplacePartitions(), ["p"]),
    "merge": (Merge(keys=["k"], sequence_by="s"), []),
    "scd2": (SCD2(keys=["k"], sequence_by="s"), []),
}


def batch(i: int) -> pa.Table:
    return pa.table({"k": [1, i + 1], "s": [i, i], "p": ["a", f"p{i}"], "v": [f"v{i}", "ß"]})


# ---------------------------------------------------------------------------------------------
# atomic publish + exactly-once


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_every_write_is_one_commit_carrying_txn_and_metadata(store: DeltaStore, name: str) -> None:
    strategy, partition_by = STRATEGIES[name]
    ds = make_dataset(strategy, partition_by=partition_by)
    for i in range(1, 4):
        before = store.version("t")
        info = info_for(store, run_id=f"r{i}")
        assert info.batch == i
        result = write(store, ds, batch(i), info, now=NOW + timedelta(days=i))
        expected = 0 if before is None else before + 1
        assert result.version == expected
        assert store.version("t") == expected
        assert store.open("t").transaction_version(app_id("t")) == i
        assert store.committed_batch("t") == i
        meta = store.history("t", 1)[0][METADATA_KEY]
        assert meta["run_id"] == f"r{i}"
        assert meta["fingerprint"] == f"fp-r{i}"
        assert meta["batch"] == i
        state = store.state("t")
        assert state is not None
        assert state.version == state.data_version == state.last_commit_version == expected
        assert state.last_commit == info


@pytest.mark.parametrize("name", list(STRATEGIES))
def test_replayed_batch_is_skipped_and_moves_nothing(store: DeltaStore, name: str) -> None:
    strategy, partition_by = STRATEGIES[name]
    ds = make_dataset(strategy, partition_by=partition_by)
    write(store, ds, batch(1), info_for(store))
    second = info_for(store)
    write(store, ds, batch(2), second)
    content = rows(store)
    for replay in (second, info_for(store, batch=1)):
        result = write(store, ds, batch(3), replay)
        assert result.skipped is not None
        assert str(replay.batch) in result.skipped
        assert result.version is None
        assert store.version("t") == 1
        assert rows(store) == content
    assert store.committed_batch("t") == 2


def test_scd2_empty_change_set_is_one_empty_commit(store: DeltaStore) -> None:
    ds = make_dataset(SCD2(keys=["k"], sequence_by="s"))
    write(store, ds, pa.table({"k": [1, 2], "s": [5, 5], "v": ["a", None]}), info_for(store))
    content = rows(store)
    # Same values later (no change) and an older record (stale): nothing to apply.
    unchanged = pa.table({"k": [1, 2], "s": [6, 4], "v": ["a", "late"]})
    result = write(store, ds, unchanged, info_for(store, run_id="again"))
    assert result.version == 1
    assert result.stale_records == 1
    assert result.inserted == result.updated == 0
    assert store.version("t") == 1
    assert rows(store) == content
    state = store.state("t")
    assert state is not None and state.last_commit is not None
    assert state.last_commit.run_id == "again"
    assert store.committed_batch("t") == 2


def test_full_refresh_replaces_table_and_schema_in_one_commit(store: DeltaStore) -> None:
    ds = make_dataset(Merge(keys=["k"]))
    write(store, ds, pa.table({"k": [1, 2], "v": ["a", "b"]}), info_for(store))
    info = info_for(store)
    result = write_dataset(
        store, ds, pa.table({"k": [3], "w": [1.5]}), info, target_version=None, now=NOW
    )
    assert result.version == 1
    assert store.schema("t").names == ["k", "w"]  # type: ignore[union-attr]
    assert rows(store) == [{"k": 3, "w": 1.5}]
    assert store.committed_batch("t") == 2


def test_absent_table(store: DeltaStore) -> None:
    assert not store.exists("t")
    assert store.version("t") is None
    assert store.committed_batch("t") == 0
    assert store.state("t") is None
    assert store.schema("t") is None
    with pytest.raises(DatasetNotFound) as err:
        store.open("t")
    assert err.value.dataset == "t"


# ---------------------------------------------------------------------------------------------
# time travel


def test_time_travel_reads_each_version(store: DeltaStore) -> None:
    ds = make_dataset(Merge(keys=["k"]))
    contents = []
    for i in range(3):
        data = pa.table({"k": [1, i + 2], "v": [f"v{i}", "ü"]})
        write(store, ds, data, info_for(store))
        contents.append(rows(store))
    for version, content in enumerate(contents):
        assert rows(store, version) == content
        assert sorted(store.read("t", version).to_table().to_pylist(), key=str) == sorted(
            content, key=str
        )
    with pytest.raises(DatasetNotFound) as err:
        store.open("t", 7)
    assert "version 7" in err.value.message and "current version is 2" in err.value.message


# ---------------------------------------------------------------------------------------------
# maintenance


def _appended(store: DeltaStore, n: int) -> Dataset:
    ds = make_dataset(Append())
    for i in range(n):
        data = pa.table({"k": [i, i + 100], "s": [i, -i], "v": ["x", None]})
        write(store, ds, data, info_for(store))
    return ds


def test_optimize_compacts_without_changing_rows(store: DeltaStore) -> None:
    _appended(store, 4)
    content = rows(store)
    files_before = len(store.open("t").file_uris())
    result = optimize(store, "t")
    assert files_before == 4
    assert result.files_removed == 4
    assert result.files_added == 1
    assert result.version == 4
    assert len(store.open("t").file_uris()) == 1
    assert rows(store) == content
    state = store.state("t")
    assert state is not None
    # Maintenance is not a data change; the planner still sees the last Lakeforge commit.
    assert (state.version, state.data_version, state.last_commit_version) == (4, 3, 3)


def test_optimize_z_order(store: DeltaStore) -> None:
    _appended(store, 3)
    content = rows(store)
    result = optimize(store, "t", zorder=["k", "s"])
    assert result.zorder == ["k", "s"]
    assert result.files_removed == 3
    assert rows(store) == content
    assert store.history("t", 1)[0]["operation"] == "OPTIMIZE"
    with pytest.raises(ConfigError) as err:
        optimize(store, "t", zorder=["nope"])
    assert err.value.column == "nope"


def test_vacuum_refuses_short_retention_unless_allowed(store: DeltaStore) -> None:
    _appended(store, 3)
    optimize(store, "t")
    with pytest.raises(ConfigError):
        vacuum(store, "t", retain=timedelta(hours=1))
    with pytest.raises(ConfigError):
        vacuum(store, "t", retain=DEFAULT_RETENTION - timedelta(hours=1), dry_run=True)
    # The default retention keeps the freshly replaced files.
    assert vacuum(store, "t", dry_run=True) == []
    planned = vacuum(store, "t", retain=timedelta(0), dry_run=True, allow_short_retention=True)
    assert len(planned) == 3
    deleted = vacuum(store, "t", retain=timedelta(0), allow_short_retention=True)
    assert sorted(deleted) == sorted(planned)
    assert len(rows(store)) == 6


def test_a_session_keeps_open_tables_and_sees_every_writers_commits(tmp_path: Path) -> None:
    """Within a session a table is opened once and brought up to date — by this store's
    writes and by another writer's — and a pinned version that is the newest is that
    table; outside one every call opens the table."""
    import pyarrow as pa

    store, other = DeltaStore(str(tmp_path)), DeltaStore(str(tmp_path))
    rows = pa.table({"id": [1]})
    info = CommitInfo(run_id="r", dataset="t", fingerprint="f", batch=1)
    store.write("t", rows, info, mode="append")
    assert store.open("t") is not store.open("t")  # no session: opened each time
    with store.session():
        first = store.open("t")
        assert store.open("t") is first and store.open("t", 0) is first
        version = other.write("t", rows, dataclasses.replace(info, batch=2), mode="append")
        assert store.version("t") == version == 1  # another writer's commit is seen
        assert store.open("t") is first and store.open("t", 0) is not first  # 0: time travel
        assert store.write("t", rows, dataclasses.replace(info, batch=3), mode="append") == 2
        assert store.committed_batch("t") == 3 and store.read("t").to_table().num_rows == 3
        with store.session():  # nested: the same cache
            assert store.open("t") is first
    assert store.open("t") is not first
