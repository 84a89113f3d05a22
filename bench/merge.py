"""Merge: a batch (≈50% updates of existing keys, 50% new keys) upserted into a big table.

Lakeforge: ``write_dataset`` of a ``Merge(keys=["id"])`` dataset (DuckDB preparation — null
and duplicate key checks, delete flags — then one ``DeltaTable.merge`` with Lakeforge's
commit metadata). Baseline: one direct
``DeltaTable.merge(...).when_matched_update_all().when_not_matched_insert_all()``.
Each measurement starts from a fresh copy of the target table (copied untimed).
"""

from __future__ import annotations

import shutil
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench.harness import table_rows, time_pair, write_result

DEFAULT_REPEATS = 3
NAME = "merge"
TARGET_ROWS = 10_000_000
BATCH_ROWS = 1_000_000
SEED = 11
_CHUNK = 1_000_000


def _rows(ids: Any, rng: Any) -> Any:
    """A table of ``ids`` with typical fact columns (ints, float, short strings, timestamp)."""
    import numpy as np
    import pyarrow as pa

    n = ids.size
    statuses = pa.array(["placed", "shipped", "delivered", "cancelled"])
    return pa.table(
        {
            "id": pa.array(ids, pa.int64()),
            "customer_id": pa.array(rng.integers(1, 100_000, n), pa.int64()),
            "quantity": pa.array(rng.integers(1, 10, n), pa.int32()),
            "amount": pa.array(np.round(rng.random(n) * 500, 2)),
            "status": statuses.take(pa.array(rng.integers(0, 4, n))),
            "updated_at": pa.array(
                (1_704_067_200 + rng.integers(0, 31_536_000, n)).astype("datetime64[s]")
            ).cast(pa.timestamp("us", "UTC")),
        }
    )


def build_target(path: Path, rows: int) -> None:
    """Write the target table in chunks (bounded memory), ids 0..rows-1."""
    import numpy as np
    from deltalake import write_deltalake

    rng = np.random.default_rng(SEED)
    for start in range(0, rows, _CHUNK):
        ids = np.arange(start, min(rows, start + _CHUNK))
        write_deltalake(str(path), _rows(ids, rng), mode="append")


def build_batch(target_rows: int, batch_rows: int) -> Any:
    """Half updates (random existing ids), half inserts (new ids), shuffled."""
    import numpy as np

    rng = np.random.default_rng(SEED + 1)
    updates = rng.choice(target_rows, batch_rows // 2, replace=False)
    inserts = np.arange(target_rows, target_rows + batch_rows - updates.size)
    ids = rng.permutation(np.concatenate([updates, inserts]))
    return _rows(ids, rng)


def baseline_merge(path: Path, batch: Any) -> dict[str, Any]:
    from deltalake import DeltaTable

    return (
        DeltaTable(str(path))
        .merge(batch, predicate="t.id = s.id", source_alias="s", target_alias="t")
        .when_matched_update_all()
        .when_not_matched_insert_all()
        .execute()
    )


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.errors import Location
    from lakeforge.graph.spec import Dataset, DatasetConfig, Merge
    from lakeforge.storage.delta import CommitInfo, DeltaStore
    from lakeforge.storage.write import write_dataset

    target_rows = max(100, round(TARGET_ROWS * scale))
    batch_rows = max(10, round(BATCH_ROWS * scale))
    pristine = workdir / "pristine"
    build_target(pristine, target_rows)
    batch = build_batch(target_rows, batch_rows)
    store = DeltaStore(str(workdir / "lakeforge"))
    ds = Dataset(
        name="facts",
        config=DatasetConfig(name="facts", write=Merge(keys=["id"])),
        location=Location("bench/merge.py", None),
    )
    lf_path, base_path = Path(store.uri(ds.name)), workdir / "baseline"

    def fresh_copies() -> None:
        for path in (lf_path, base_path):
            shutil.rmtree(path, ignore_errors=True)
            shutil.copytree(pristine, path)

    def lakeforge() -> None:
        info = CommitInfo(
            run_id="bench", dataset=ds.name, fingerprint="bench",
            batch=store.committed_batch(ds.name) + 1,
        )  # fmt: skip
        version = store.version(ds.name)
        write_dataset(store, ds, batch, info, target_version=version, now=datetime.now(UTC))

    pair = time_pair(
        lakeforge, lambda: baseline_merge(base_path, batch), repeats=repeats, setup=fresh_copies
    )
    expected = target_rows + (batch_rows - batch_rows // 2)
    # The last measurement left one of the two tables merged; the other was copied fresh.
    # Merge into both so the row counts compare the same operation.
    fresh_copies()
    lakeforge()
    baseline_merge(base_path, batch)
    rows = {"lakeforge": table_rows(str(lf_path)), "baseline": table_rows(str(base_path))}
    assert rows["lakeforge"] == rows["baseline"] == expected, (rows, expected)
    result = {
        "description": f"merge {batch_rows:,} rows (50% updates, 50% inserts) into {target_rows:,}",
        "lakeforge": 'write_dataset(store, Dataset(write=Merge(keys=["id"])), batch, ...)',
        "baseline": "DeltaTable.merge(...).when_matched_update_all()"
        ".when_not_matched_insert_all().execute()",
        "scale": scale,
        "target_rows": target_rows,
        "batch_rows": batch_rows,
        "rows_after": rows,
        **pair.summary(),
    }
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
