"""Windowed aggregation on a stream: Lakeforge ``available_now`` vs Spark Structured Streaming.

The issue's bench (a): 1-minute tumbling windows, count and average per device, 50,000
devices at scale 1, over the same NDJSON files; a 10 s watermark; windows written once,
when the watermark closes them (append mode); one micro-batch per landing file.

- **Lakeforge**: a project with a streaming table (``mode: streaming``, file source with
  ``max_files_per_batch: 1``, ``event_time: ts``, ``allowed_lateness: 10s``,
  ``window: {tumbling: 1m, by: [device_id]}``) and the SQL ``SELECT device_id,
  window_start, window_end, count(*) AS n, avg(temp) AS avg_temp FROM source GROUP BY
  ALL``; timed as ``Runner.run(full_refresh=True)`` — what ``lakeforge run`` /
  ``lakeforge stream --available-now`` do, replaying every file: one Delta commit per file
  with its state snapshot, file ledger and late/dead-letter bookkeeping.
- **Spark** (target: Lakeforge ≥ 3× its throughput, i.e. ratio ≤ 0.33): ``local[2]``, file
  source (``maxFilesPerTrigger: 1``, the schema given), ``withWatermark("ts", "10
  seconds")``, ``groupBy(window(ts, "1 minute"), device_id)``, count and avg, Parquet sink
  in append mode, ``trigger(availableNow=True)``; ``spark.sql.shuffle.partitions=2`` (the
  default 200 would only slow it down on two cores) and no UI. The session is started once,
  untimed (JVM start-up is not what is compared); each repetition gets a new checkpoint and
  output folder. It runs where ``pyspark`` imports and Java is installed, unless
  ``LAKEFORGE_BENCH_SPARK=0``; otherwise the pair is Lakeforge vs a hand-written DuckDB
  batch query over all the files (no stream, no state, no Delta: a floor, not a rival) and
  the result says why Spark was skipped.

Both must produce the same windows (count and total of ``n`` asserted). The data is
deterministic: 1,000,000 events at scale 1 in 10 files of one minute each, event times
jittered by up to 5 s (no event is late).
"""

from __future__ import annotations

import importlib.util
import json
import os
import shutil
import time
from pathlib import Path
from typing import Any

from bench.harness import time_pair, write_result

DEFAULT_REPEATS = 2
NAME = "windowed"
TARGET_RATIO = 1 / 3  # Lakeforge ≥ 3× Spark's throughput
DEFAULT_EVENTS = 1_000_000
DEFAULT_DEVICES = 50_000
FILES = 10
LATENESS_SECONDS = 10
SEED = 20261203
BASE = 1_704_110_400  # 2024-01-01T12:00:00Z
TABLE = "device_minutes"
MODEL = f"""\
/* lakeforge
layer: silver
mode: streaming
trigger: available_now
source: {{kind: files, path: "landing/*.ndjson", max_files_per_batch: 1, file_column: null}}
event_time: ts
allowed_lateness: {LATENESS_SECONDS}s
window: {{tumbling: 1m, by: [device_id]}}
*/
SELECT device_id, window_start, window_end, count(*) AS n, avg(temp) AS avg_temp
FROM source GROUP BY ALL
"""


def generate(landing: Path, events: int, devices: int) -> None:
    """``FILES`` NDJSON files, file ``f`` holding the events of minute ``f`` (± 5 s)."""
    import numpy as np

    rng = np.random.default_rng(SEED)
    landing.mkdir(parents=True, exist_ok=True)
    per_file = max(1, events // FILES)
    for f in range(FILES):
        n = per_file if f < FILES - 1 else events - per_file * (FILES - 1)
        seconds = BASE + f * 60 + rng.integers(0, 60, n) + rng.integers(-5, 6, n)
        micros = rng.integers(0, 1_000_000, n)
        device = rng.integers(0, devices, n)
        temp = np.round(rng.normal(20.0, 5.0, n), 2)
        stamps = np.datetime_as_string(
            (seconds * 1_000_000 + micros).astype("datetime64[us]"), unit="us"
        )
        path = landing / f"events-{f:03d}.ndjson"
        with path.open("w", encoding="utf-8") as out:
            for d, ts, t in zip(device.tolist(), stamps.tolist(), temp.tolist(), strict=True):
                out.write(json.dumps({"device_id": d, "ts": ts + "Z", "temp": t}) + "\n")
        stamp = time.time() - 1000 + f  # arrival order = minute order
        os.utime(path, (stamp, stamp))


def scaffold(workdir: Path, events: int, devices: int) -> Path:
    root = workdir / "project"
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: bench_windowed\n")
    (root / "models" / f"{TABLE}.sql").write_text(MODEL)
    generate(root / "landing", events, devices)
    return root


def spark_skip_reason() -> str | None:
    """Why Spark does not run here (None: it does)."""
    if os.environ.get("LAKEFORGE_BENCH_SPARK", "1") == "0":
        return "LAKEFORGE_BENCH_SPARK=0"
    if importlib.util.find_spec("pyspark") is None:
        return "pyspark is not installed (pip install -e '.[spark]')"
    if shutil.which("java") is None and not os.environ.get("JAVA_HOME"):
        return "no Java runtime (Spark needs Java 17+)"
    return None


class SparkStream:
    """The same aggregation in Spark Structured Streaming (one session, started untimed)."""

    def __init__(self, landing: Path, workdir: Path) -> None:
        from pyspark.sql import SparkSession

        self.landing = landing
        self.workdir = workdir
        self.runs = 0
        self.spark = (
            SparkSession.builder.master("local[2]")
            .appName("lakeforge-bench-windowed")
            .config("spark.sql.shuffle.partitions", "2")
            .config("spark.ui.enabled", "false")
            .config("spark.ui.showConsoleProgress", "false")
            .config("spark.sql.session.timeZone", "UTC")
            .getOrCreate()
        )
        self.spark.sparkContext.setLogLevel("ERROR")
        self.output: Path | None = None

    def run(self) -> None:
        from pyspark.sql import functions as F
        from pyspark.sql import types as T

        self.runs += 1
        out = self.workdir / f"spark-out-{self.runs}"
        checkpoint = self.workdir / f"spark-checkpoint-{self.runs}"
        schema = T.StructType(
            [
                T.StructField("device_id", T.LongType()),
                T.StructField("ts", T.TimestampType()),
                T.StructField("temp", T.DoubleType()),
            ]
        )
        events = (
            self.spark.readStream.schema(schema)
            .option("maxFilesPerTrigger", 1)
            .json(str(self.landing))
        )
        windows = (
            events.withWatermark("ts", f"{LATENESS_SECONDS} seconds")
            .groupBy(F.window("ts", "1 minute"), "device_id")
            .agg(F.count("*").alias("n"), F.avg("temp").alias("avg_temp"))
        )
        query = (
            windows.writeStream.outputMode("append")
            .format("parquet")
            .option("path", str(out))
            .option("checkpointLocation", str(checkpoint))
            .trigger(availableNow=True)
            .start()
        )
        query.awaitTermination()
        self.output = out

    def totals(self) -> tuple[int, int]:
        """(windows, total n) of the last run's output."""
        assert self.output is not None
        frame = self.spark.read.parquet(str(self.output))
        row = frame.selectExpr("count(*)", "sum(n)").collect()[0]
        return int(row[0]), int(row[1] or 0)

    def stop(self) -> None:
        self.spark.stop()


def duckdb_batch(landing: Path) -> tuple[int, int]:
    """The closed windows in one hand-written DuckDB query over all files (no stream)."""
    import duckdb

    con = duckdb.connect()
    try:
        con.execute("SET TimeZone = 'UTC'")
        row = con.execute(
            f"""
            WITH ev AS (
                SELECT device_id, CAST(ts AS TIMESTAMPTZ) AS ts, temp
                FROM read_json('{landing}/*.ndjson', columns = {{device_id: 'BIGINT',
                     ts: 'VARCHAR', temp: 'DOUBLE'}})),
            mark AS (SELECT max(ts) - INTERVAL {LATENESS_SECONDS} SECOND AS wm FROM ev),
            w AS (
                SELECT device_id, time_bucket(INTERVAL 1 MINUTE, ts, TIMESTAMPTZ '1970-01-01')
                       AS window_start, count(*) AS n, avg(temp) AS avg_temp
                FROM ev GROUP BY ALL)
            SELECT count(*), sum(n) FROM w, mark WHERE window_start + INTERVAL 1 MINUTE <= wm
            """
        ).fetchall()[0]
    finally:
        con.close()
    return int(row[0]), int(row[1] or 0)


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    events = max(FILES * 20, round(DEFAULT_EVENTS * scale))
    devices = max(10, round(DEFAULT_DEVICES * scale))
    root = scaffold(workdir, events, devices)
    landing = root / "landing"
    landing_bytes = sum(f.stat().st_size for f in landing.glob("*.ndjson"))
    runner = Runner(load_project(root))

    def lakeforge() -> None:
        result = runner.run(full_refresh=True)
        if not result.ok:
            raise RuntimeError(f"lakeforge run failed: {result.tasks[0].error}")

    def lakeforge_totals() -> tuple[int, int]:
        table = runner.store.read(TABLE).to_table()
        import pyarrow.compute as pc

        return table.num_rows, int(pc.sum(table.column("n")).as_py() or 0)

    skipped = spark_skip_reason()
    spark: SparkStream | None = None
    if skipped is None:
        try:
            spark = SparkStream(landing, workdir)
        except Exception as exc:  # a JVM that will not start: say so, keep the floor
            skipped = f"Spark could not start: {type(exc).__name__}: {exc}"
    floor: dict[str, Any] = {}
    try:
        if spark is not None:
            pair = time_pair(lakeforge, spark.run, repeats=repeats)
            baseline_totals = spark.totals()
            baseline = "Spark Structured Streaming local[2], file source, availableNow"
        else:
            result_holder: dict[str, tuple[int, int]] = {}

            def floor_query() -> None:
                result_holder["t"] = duckdb_batch(landing)

            pair = time_pair(lakeforge, floor_query, repeats=repeats)
            baseline_totals = result_holder["t"]
            baseline = "hand-written DuckDB batch query over all files (Spark skipped)"
        if spark is not None:
            start = time.perf_counter()
            floor_totals = duckdb_batch(landing)
            floor = {
                "seconds": round(time.perf_counter() - start, 4),
                "windows": floor_totals[0],
                "note": "one DuckDB query over all files: no stream, no state, no Delta",
            }
    finally:
        if spark is not None:
            spark.stop()
    totals = lakeforge_totals()
    assert totals == baseline_totals, f"lakeforge {totals} vs baseline {baseline_totals}"
    summary = pair.summary()
    result: dict[str, Any] = {
        "description": f"{FILES} NDJSON files, {events:,} events, {devices:,} devices, "
        f"{landing_bytes / 2**20:.0f} MiB → 1-min windows",
        "lakeforge": "Runner(project).run(full_refresh=True) of a streaming table "
        "(available_now), one micro-batch per file",
        "baseline": baseline,
        "scale": scale,
        "events": events,
        "devices": devices,
        "windows": totals[0],
        "landing_bytes": landing_bytes,
        "events_per_second": {
            "lakeforge": round(events / summary["lakeforge_median"]),
            "baseline": round(events / summary["baseline_median"]),
        },
        "throughput_ratio": round(summary["baseline_median"] / summary["lakeforge_median"], 2),
        **summary,
    }
    if skipped is not None:
        result["spark"] = {"skipped": skipped}
        result["notes"] = [f"Spark skipped ({skipped}); baseline is the DuckDB batch floor"]
    else:
        from importlib import metadata

        result["spark"] = {
            "version": metadata.version("pyspark"),
            "target": "Lakeforge ≥ 3× Spark's throughput (ratio ≤ 0.33)",
        }
        result["duckdb_batch_floor"] = floor
        result["notes"] = [
            f"Lakeforge {result['throughput_ratio']}x Spark's throughput (target ≥ 3x)"
        ]
    eps = result["events_per_second"]
    print(f"  events/s (median): lakeforge {eps['lakeforge']:,}, baseline {eps['baseline']:,}")
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
