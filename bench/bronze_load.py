"""Bronze load: the demo's landing files into the four bronze Delta tables.

Lakeforge: ``Runner.run("layer:bronze", full_refresh=True)`` on a scaffolded project (DuckDB
reads the files, one ``write_deltalake`` commit per table with Lakeforge's metadata).
Baseline: polars reads the same files (CSV as text, NDJSON with inferred types, plus the
source file name as Lakeforge adds it) and ``deltalake.write_deltalake(mode="overwrite")``
writes each into its own table.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from bench.harness import table_rows, time_pair, write_result

DEFAULT_REPEATS = 5
NAME = "bronze_load"
DEFAULT_ORDER_LINES = 1_000_000
# bronze table → (landing glob, reader)
SOURCES = {
    "raw_customers": ("customers/*.csv", "csv"),
    "raw_order_lines": ("order_lines/*.csv", "csv"),
    "raw_orders": ("orders/*.ndjson", "ndjson"),
    "raw_products": ("products/*.csv", "csv"),
}


def scaffold(workdir: Path, order_lines: int) -> Path:
    from lakeforge.project.scaffold import MIN_ORDER_LINES, scaffold_project

    root = workdir / "project"
    scaffold_project(root, size=max(MIN_ORDER_LINES, order_lines))
    return root


def baseline_load(landing: Path, out: Path) -> dict[str, int]:
    """Hand-written bronze load: polars readers + write_deltalake overwrite."""
    import polars as pl
    from deltalake import write_deltalake

    rows = {}
    for table, (pattern, kind) in SOURCES.items():
        source = str(landing / pattern)
        if kind == "csv":
            frame = pl.scan_csv(source, infer_schema=False, include_file_paths="_source_file")
        else:
            frame = pl.scan_ndjson(
                source, infer_schema_length=None, include_file_paths="_source_file"
            )
        data = frame.with_columns(pl.col("_source_file").str.split("/").list.last()).collect()
        write_deltalake(str(out / table), data.to_arrow(), mode="overwrite")
        rows[table] = data.height
    return rows


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    order_lines = round(DEFAULT_ORDER_LINES * scale)
    root = scaffold(workdir, order_lines)
    project = load_project(root)
    # Built once (metadata store migrations etc. are a per-process cost), then only run() is timed.
    runner = Runner(project)
    base_out = workdir / "baseline"

    def lakeforge() -> None:
        result = runner.run("layer:bronze", full_refresh=True)
        if not result.ok:
            raise RuntimeError(f"lakeforge bronze run failed: {result.to_dict()}")

    pair = time_pair(lakeforge, lambda: baseline_load(root / "landing", base_out), repeats=repeats)
    rows = {}
    for table in SOURCES:
        lf_rows = table_rows(runner.store.uri(table))
        base_rows = table_rows(str(base_out / table))
        assert lf_rows == base_rows, f"{table}: lakeforge {lf_rows} rows, baseline {base_rows}"
        rows[table] = lf_rows
    result = {
        "description": "landing CSV/NDJSON → 4 bronze Delta tables (full refresh)",
        "lakeforge": 'Runner(project).run("layer:bronze", full_refresh=True)',
        "baseline": "polars scan_csv/scan_ndjson + deltalake.write_deltalake(mode='overwrite')",
        "scale": scale,
        "order_lines": order_lines,
        "rows": rows,
        **pair.summary(),
    }
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
