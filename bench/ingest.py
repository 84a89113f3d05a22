"""File ingest: NDJSON landing files into one bronze Delta table, Lakeforge vs by hand vs dlt.

Lakeforge: a project whose bronze model reads the files through the file source
(``source: {kind: files, path: "landing/*.ndjson"}``, ``SELECT * FROM source``), timed as
``Runner.run(full_refresh=True)`` so every repetition reads every file again. The default
``max_files_per_batch`` (1000) puts all the files in one batch: one DuckDB read and one
Delta commit, the same shape as the baseline's one read and one write (with smaller batches
Lakeforge would make one commit per batch, which is what an incremental source wants, not
what a bulk load is compared on).

Baselines, same files, same process, same row counts asserted:

- **by hand** (target: Lakeforge ≤ 1.3× it): ``polars.scan_ndjson`` with every row used for
  inference plus the source file name, as Lakeforge adds ``_source_file``, and
  ``deltalake.write_deltalake(mode="overwrite")``. (polars leaves the ISO timestamps as
  strings; DuckDB, and so Lakeforge, and dlt parse them into timestamps.)
- **dlt** (target: Lakeforge ≥ 5× faster): dlt's filesystem source with its ``read_jsonl``
  reader into its filesystem destination with ``table_format="delta"`` and
  ``write_disposition="replace"``, default settings otherwise. One run, timed once (it is
  slow; imports untimed). It runs only where ``dlt`` imports (``pip install -e '.[bench]'``)
  and ``LAKEFORGE_BENCH_DLT`` is not ``0``; otherwise the result says it was skipped and why.

The landing data is deterministic (numpy, fixed seed): 1,000,000 events at scale 1 across
20 files, 11 fields — integers, floats, strings, booleans, ISO-8601 timestamps as strings,
a nested object, and nulls in several fields.
"""

from __future__ import annotations

import importlib.util
import os
import time
from pathlib import Path
from typing import Any

from bench.harness import table_rows, time_pair, write_result

DEFAULT_REPEATS = 5
NAME = "ingest"
TARGET_RATIO = 1.3
DLT_TARGET_SPEEDUP = 5.0
DEFAULT_EVENTS = 1_000_000
MAX_FILES = 20
MIN_ROWS_PER_FILE = 50
TABLE = "raw_events"
SEED = 20240601
EVENT_TYPES = ("page_view", "click", "search", "add_to_cart", "purchase", "logout")
COUNTRIES = ("US", "DE", "FR", "GB", "BR", "IN", "JP", "NL", "ES", "CA")
OS_NAMES = ("ios", "android", "windows", "macos", "linux")
BROWSERS = ("safari", "chrome", "firefox", "edge")
REFERRERS = ("https://search.example/", "https://social.example/feed", "https://news.example/")

MODEL = """\
/* lakeforge
layer: bronze
source: {kind: files, path: "landing/*.ndjson"}
*/
SELECT * FROM source
"""


def generate(landing: Path, events: int) -> list[Path]:
    """Deterministic NDJSON event files under ``landing``; returns them in arrival order."""
    import numpy as np
    import polars as pl

    rng = np.random.default_rng(SEED)
    n = events

    def pick(values: tuple[str, ...]) -> Any:
        return np.array(values)[rng.integers(0, len(values), n)]

    def nulls(share: float) -> Any:
        return rng.random(n) < share

    start = np.datetime64("2024-06-01T00:00:00", "ms")
    offsets = np.sort(rng.integers(0, 30 * 86_400_000, n)).astype("timedelta64[ms]")
    frame = pl.DataFrame(
        {
            "event_id": np.arange(1, n + 1, dtype=np.int64),
            "user_id": rng.integers(1, 200_000, n),
            "session": rng.integers(0, 2**40, n),
            "event_type": pick(EVENT_TYPES),
            "occurred_at": np.datetime_as_string(start + offsets, unit="ms"),
            "amount": np.round(rng.gamma(2.0, 25.0, n), 2),
            "amount_null": nulls(0.3),
            "quantity": rng.integers(1, 10, n),
            "quantity_null": nulls(0.2),
            "country": pick(COUNTRIES),
            "country_null": nulls(0.05),
            "is_mobile": rng.random(n) < 0.6,
            "os": pick(OS_NAMES),
            "browser": pick(BROWSERS),
            "app_version": rng.integers(100, 400, n),
            "app_version_null": nulls(0.1),
            "page": rng.integers(1, 5000, n),
            "referrer": pick(REFERRERS),
            "referrer_null": nulls(0.7),
        }
    )
    null_if = {c: f"{c}_null" for c in ("amount", "quantity", "country", "app_version", "referrer")}
    frame = frame.with_columns(
        pl.when(~pl.col(flag)).then(pl.col(col)).alias(col) for col, flag in null_if.items()
    ).select(
        "event_id",
        "user_id",
        pl.format("s-{}", pl.col("session").cast(pl.String)).alias("session_id"),
        "event_type",
        pl.format("{}Z", pl.col("occurred_at")).alias("occurred_at"),
        "amount",
        "quantity",
        "country",
        "is_mobile",
        pl.format("/p/{}", pl.col("page")).alias("page"),
        "referrer",
        pl.struct(
            pl.col("os"),
            pl.col("browser"),
            (pl.col("app_version") / 100).round(2).alias("app_version"),
        ).alias("device"),
    )
    landing.mkdir(parents=True, exist_ok=True)
    count = max(1, min(MAX_FILES, n // MIN_ROWS_PER_FILE))
    bounds = np.linspace(0, n, count + 1).astype(int)
    paths = []
    for i in range(count):
        path = landing / f"events-{i + 1:04d}.ndjson"
        frame.slice(bounds[i], bounds[i + 1] - bounds[i]).write_ndjson(path)
        tick = (1_717_200_000 + i) * 10**9  # arrival order = file order
        os.utime(path, ns=(tick, tick))
        paths.append(path)
    return paths


def scaffold(workdir: Path, events: int) -> Path:
    root = workdir / "project"
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: ingest_bench\n", encoding="utf-8")
    (root / "models" / f"{TABLE}.sql").write_text(MODEL, encoding="utf-8")
    generate(root / "landing", events)
    return root


def baseline_load(landing: Path, out: Path) -> int:
    """Hand-written bronze load: polars reads every file, write_deltalake overwrites."""
    import polars as pl
    from deltalake import write_deltalake

    frame = pl.scan_ndjson(
        str(landing / "*.ndjson"), infer_schema_length=None, include_file_paths="_source_file"
    )
    data = frame.with_columns(pl.col("_source_file").str.split("/").list.last()).collect()
    write_deltalake(str(out), data.to_arrow(), mode="overwrite")
    return data.height


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    events = max(MIN_ROWS_PER_FILE, round(DEFAULT_EVENTS * scale))
    root = scaffold(workdir, events)
    landing = root / "landing"
    files = sorted(landing.glob("*.ndjson"))
    landing_bytes = sum(f.stat().st_size for f in files)
    project = load_project(root)
    # Built once (metadata store migrations etc. are a per-process cost), then only run() is timed.
    runner = Runner(project)
    base_out = workdir / "baseline" / TABLE

    def lakeforge() -> None:
        result = runner.run(full_refresh=True)
        if not result.ok:
            raise RuntimeError(f"lakeforge ingest run failed: {result.to_dict()}")

    pair = time_pair(lakeforge, lambda: baseline_load(landing, base_out), repeats=repeats)
    lf_rows = table_rows(runner.store.uri(TABLE))
    base_rows = table_rows(str(base_out))
    assert lf_rows == base_rows == events, f"lakeforge {lf_rows}, baseline {base_rows}, {events}"
    summary = pair.summary()
    result: dict[str, Any] = {
        "description": f"{len(files)} NDJSON files, {events:,} events, "
        f"{landing_bytes / 2**20:.0f} MiB → bronze",
        "lakeforge": "Runner(project).run(full_refresh=True), file source, one batch",
        "baseline": "polars.scan_ndjson + deltalake.write_deltalake(mode='overwrite')",
        "scale": scale,
        "files": len(files),
        "rows": events,
        "landing_bytes": landing_bytes,
        "rows_per_second": {
            "lakeforge": round(events / summary["lakeforge_median"]),
            "baseline": round(events / summary["baseline_median"]),
        },
        **summary,
    }
    result["dlt"] = _dlt(landing, workdir / "dlt", events, summary["lakeforge_median"])
    rps = result["rows_per_second"]
    print(f"  rows/s (median): lakeforge {rps['lakeforge']:,}, baseline {rps['baseline']:,}")
    dlt = result["dlt"]
    if "skipped" in dlt:
        print(f"  dlt skipped: {dlt['skipped']}")
    else:
        print(
            f"  dlt {dlt['seconds']:.1f} s ({dlt['rows_per_second']:,} rows/s): Lakeforge "
            f"{dlt['speedup']}x faster (target ≥ {DLT_TARGET_SPEEDUP:g}x)"
        )
    result["path"] = str(write_result(NAME, result, results_dir))
    return result


def _dlt(landing: Path, out: Path, events: int, lakeforge_median: float) -> dict[str, Any]:
    """dlt loads the same files into a Delta table once (timed once: it is slow)."""
    if os.environ.get("LAKEFORGE_BENCH_DLT") == "0":
        return {"skipped": "LAKEFORGE_BENCH_DLT=0"}
    if importlib.util.find_spec("dlt") is None:
        return {"skipped": "dlt is not installed: pip install -e '.[bench]'"}
    # No usage telemetry from a benchmark; set before dlt reads its configuration.
    os.environ.setdefault("RUNTIME__DLTHUB_TELEMETRY", "false")
    import dlt
    from dlt.sources.filesystem import filesystem, read_jsonl

    pipeline = dlt.pipeline(
        pipeline_name="lakeforge_bench_ingest",
        destination=dlt.destinations.filesystem(bucket_url=str(out / "lake")),
        dataset_name="bronze",
        pipelines_dir=str(out / "pipelines"),
    )
    resource = (filesystem(bucket_url=str(landing), file_glob="*.ndjson") | read_jsonl()).with_name(
        TABLE
    )
    started = time.perf_counter()
    info = pipeline.run(resource, table_format="delta", write_disposition="replace")
    seconds = time.perf_counter() - started
    info.raise_on_failed_jobs()
    rows = table_rows(str(out / "lake" / "bronze" / TABLE))
    assert rows == events, f"dlt loaded {rows} rows, expected {events}"
    return {
        "how": "dlt filesystem source | read_jsonl → filesystem destination, "
        "table_format='delta', write_disposition='replace', default settings",
        "version": dlt.__version__,
        "seconds": round(seconds, 3),
        "rows_per_second": round(events / seconds),
        "speedup": round(seconds / lakeforge_median, 1),
        "target_speedup": DLT_TARGET_SPEEDUP,
    }
