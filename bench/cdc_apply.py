"""AUTO-CDC apply: 1M change records applied to a 10M-row table (SCD1).

The feed mixes updates (several per key), inserts (some updated again in the batch),
deletes, re-inserts of keys deleted earlier, changes older than the table's row, late
changes older than a remembered delete, and exact duplicates, all shuffled. The table
already remembers 1% deleted keys (tombstones) from an earlier batch.

Lakeforge: ``write_dataset`` of a ``CDC(keys=["id"], sequence_by="lsn")`` dataset — it
validates the feed, resolves order and duplicates in DuckDB, records tombstones and applies
one ``DeltaTable.merge``. Baseline: the same net changes (computed untimed from the feed, the
table and the tombstones) applied by a hand-written ``DeltaTable.merge(...)
.when_matched_delete().when_matched_update_all().when_not_matched_insert_all()``. Both
must leave identical tables. Each measurement starts from fresh copies (copied untimed).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import time_pair, write_result
from bench.merge import _rows as fact_rows

DEFAULT_REPEATS = 3
NAME = "cdc_apply"
TARGET_RATIO = 1.5
TARGET_ROWS = 10_000_000
CHANGES = 1_000_000
SEED = 23
_CHUNK = 1_000_000
# Shares of the feed (the rest are updates of existing keys).
_INSERTS, _DELETES, _REINSERTS, _STALE, _LATE, _DUPLICATES = 0.20, 0.12, 0.01, 0.02, 0.01, 0.05


def _with_lsn(ids: Any, lsn: Any, op: str | Any, rng: Any) -> Any:
    import pyarrow as pa

    table = fact_rows(ids, rng).add_column(1, "lsn", pa.array(lsn, pa.int64()))
    ops = pa.array([op] * len(ids)) if isinstance(op, str) else pa.array(op)
    return table.append_column("op", ops)


def build_target(path: Path, rows: int) -> Any:
    """The table a CDC apply produced earlier: ids 0..rows-1, each with an lsn below ``rows``.
    Returns the lsn array (to place stale changes below it)."""
    import numpy as np
    from deltalake import write_deltalake

    rng = np.random.default_rng(SEED)
    lsns = rng.integers(0, rows, rows)
    for start in range(0, rows, _CHUNK):
        ids = np.arange(start, min(rows, start + _CHUNK))
        table = _with_lsn(ids, lsns[ids], "u", rng).drop_columns(["op"])
        write_deltalake(str(path), table, mode="append")
    return lsns


def build_feed(rows: int, changes: int, target_lsn: Any, deleted: Any, deleted_lsn: Any) -> Any:
    """The shuffled change records (see the module docstring)."""
    import numpy as np
    import pyarrow as pa

    rng = np.random.default_rng(SEED + 1)
    n = {
        name: max(1, round(changes * share))
        for name, share in [
            ("ins", _INSERTS),
            ("del", _DELETES),
            ("reins", _REINSERTS),
            ("stale", _STALE),
            ("late", _LATE),
            ("dup", _DUPLICATES),
        ]
    }
    n_upd = changes - sum(n.values())
    new_keys = np.arange(rows, rows + max(1, n["ins"] * 4 // 5))
    parts = [
        ("u", rng.choice(rows, n_upd)),  # with repeats: several changes of a key
        ("d", rng.choice(rows, n["del"], replace=False)),
        ("c", rng.choice(new_keys, n["ins"])),  # a new key's first change inserts it
        ("c", rng.choice(deleted, min(n["reins"], deleted.size), replace=False)),
    ]
    ids = np.concatenate([p[1] for p in parts])
    ops = np.concatenate([np.full(p[1].size, p[0]) for p in parts])
    lsn = rows + rng.permutation(ids.size)  # newer than every row, unique
    feed = _with_lsn(ids, lsn, ops, rng)
    stale_ids = rng.choice(rows, n["stale"], replace=False)
    stale = _with_lsn(stale_ids, rng.integers(0, target_lsn[stale_ids] + 1) - 1, "u", rng)
    late_at = rng.choice(deleted.size, min(n["late"], deleted.size), replace=False)
    late = _with_lsn(deleted[late_at], deleted_lsn[late_at] - 1, "c", rng)
    feed = pa.concat_tables([feed, stale, late])
    feed = pa.concat_tables([feed, feed.take(rng.choice(feed.num_rows, n["dup"]))])
    return feed.take(rng.permutation(feed.num_rows))


def net_changes(feed: Any, target: str, deleted: Any, deleted_lsn: Any) -> Any:
    """What the feed changes, computed the hand-written way (untimed): per id the newest
    record, unless a remembered delete or the table's row is at least as new."""
    import duckdb
    import pyarrow as pa
    from deltalake import DeltaTable

    con = duckdb.connect()
    con.register("feed", feed)
    con.register("target", DeltaTable(target).to_pyarrow_dataset())
    con.register("tomb", pa.table({"id": deleted, "lsn": deleted_lsn}))
    return con.execute(
        "SELECT f.* FROM feed f LEFT JOIN tomb d USING (id) LEFT JOIN target t USING (id) "
        "WHERE (d.lsn IS NULL OR f.lsn > d.lsn) AND (t.lsn IS NULL OR f.lsn > t.lsn) "
        "QUALIFY row_number() OVER (PARTITION BY f.id ORDER BY f.lsn DESC) = 1"
    ).to_arrow_table()


def baseline_merge(path: Path, net: Any) -> dict[str, Any]:
    from deltalake import DeltaTable

    return (
        DeltaTable(str(path))
        .merge(net, predicate="t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_delete(predicate="s.op = 'd'")
        .when_matched_update_all(predicate="s.op <> 'd'", except_cols=["op"])
        .when_not_matched_insert_all(predicate="s.op <> 'd'", except_cols=["op"])
        .execute()
    )


def fingerprint(path: Path) -> tuple[int, int, int]:
    """Rows, sum of lsn and an order-independent hash of every row."""
    import duckdb
    from deltalake import DeltaTable

    con = duckdb.connect()
    con.register("t", DeltaTable(str(path)).to_pyarrow_dataset())
    cols = "id, lsn, customer_id, quantity, amount, status, updated_at"
    count, lsn, digest = con.execute(
        f"SELECT count(*), sum(lsn), sum(hash({cols}) % 1000000007) FROM t"
    ).fetchall()[0]
    return int(count), int(lsn or 0), int(digest or 0)


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    import numpy as np

    from lakeforge.errors import Location
    from lakeforge.graph.spec import CDC, Dataset, DatasetConfig
    from lakeforge.storage.cdc_apply import tombstone_table
    from lakeforge.storage.delta import CommitInfo, DeltaStore
    from lakeforge.storage.write import write_dataset

    rows = max(1_000, round(TARGET_ROWS * scale))
    changes = max(100, round(CHANGES * scale))
    ds = Dataset(
        name="facts",
        config=DatasetConfig(name="facts", write=CDC(keys=["id"], sequence_by="lsn")),
        location=Location("bench/cdc_apply.py", None),
    )
    pristine = DeltaStore(str(workdir / "pristine"))
    target_lsn = build_target(Path(pristine.uri(ds.name)), rows)

    def apply(store: DeltaStore, feed: Any) -> None:
        info = CommitInfo(
            run_id="bench", dataset=ds.name, fingerprint="bench",
            batch=store.committed_batch(ds.name) + 1,
        )  # fmt: skip
        version = store.version(ds.name)
        write_dataset(store, ds, feed, info, target_version=version, now=datetime.now(UTC))

    # An earlier batch deleted 1% of keys the table never had: the table remembers them.
    rng = np.random.default_rng(SEED + 2)
    deleted = np.arange(2 * rows, 2 * rows + max(10, rows // 100))
    deleted_lsn = rng.integers(rows // 2, rows, deleted.size)
    apply(pristine, _with_lsn(deleted, deleted_lsn, "d", rng))
    feed = build_feed(rows, changes, target_lsn, deleted, deleted_lsn)
    net = net_changes(feed, pristine.uri(ds.name), deleted, deleted_lsn)

    store = DeltaStore(str(workdir / "lakeforge"))
    lf_path, base_path = Path(store.uri(ds.name)), workdir / "baseline"
    copies = [
        (Path(pristine.uri(ds.name)), lf_path),
        (Path(pristine.uri(tombstone_table(ds.name))), Path(store.uri(tombstone_table(ds.name)))),
        (Path(pristine.uri(ds.name)), base_path),
    ]

    def fresh_copies() -> None:
        for source, path in copies:
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(source, path)

    pair = time_pair(
        lambda: apply(store, feed),
        lambda: baseline_merge(base_path, net),
        repeats=repeats,
        setup=fresh_copies,
    )
    # The last measurement left one table applied, the other fresh: apply both, compare.
    fresh_copies()
    apply(store, feed)
    baseline_merge(base_path, net)
    tables = {"lakeforge": fingerprint(lf_path), "baseline": fingerprint(base_path)}
    assert tables["lakeforge"] == tables["baseline"], tables
    ops = {v["values"]: v["counts"] for v in feed.column("op").value_counts().to_pylist()}
    result = {
        "description": f"cdc apply {feed.num_rows:,} changes into {rows:,} rows "
        f"(net {net.num_rows:,})",
        "lakeforge": 'write_dataset(store, Dataset(write=CDC(keys=["id"], sequence_by="lsn")), '
        "feed, ...)",
        "baseline": "net changes precomputed untimed; DeltaTable.merge(net).when_matched_delete()"
        ".when_matched_update_all().when_not_matched_insert_all().execute()",
        "scale": scale,
        "target_rows": rows,
        "changes": feed.num_rows,
        "changes_by_op": ops,
        "net_changes": net.num_rows,
        "remembered_deletes": int(deleted.size),
        "rows_after": tables["lakeforge"][0],
        **pair.summary(),
    }
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
