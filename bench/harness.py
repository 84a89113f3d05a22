"""Timing and reporting shared by the benchmarks: alternating repetitions, machine info, JSON."""

from __future__ import annotations

import json
import os
import platform
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from importlib import metadata
from pathlib import Path
from typing import Any

RESULTS_DIR = Path(__file__).parent / "results"
_LIBRARIES = ("lakeforge", "deltalake", "duckdb", "pyarrow", "polars")


@dataclass
class Pair:
    """Repeated timings of the Lakeforge path and its baseline (seconds)."""

    lakeforge: list[float] = field(default_factory=list)
    baseline: list[float] = field(default_factory=list)

    def summary(self) -> dict[str, Any]:
        lf_med, base_med = statistics.median(self.lakeforge), statistics.median(self.baseline)
        lf_best, base_best = min(self.lakeforge), min(self.baseline)
        return {
            "repeats": len(self.lakeforge),
            "order": "alternating (odd repetitions run lakeforge first), after 1 warm-up each",
            "lakeforge_seconds": [round(t, 4) for t in self.lakeforge],
            "baseline_seconds": [round(t, 4) for t in self.baseline],
            "lakeforge_median": round(lf_med, 4),
            "baseline_median": round(base_med, 4),
            "lakeforge_best": round(lf_best, 4),
            "baseline_best": round(base_best, 4),
            "ratio_median": round(lf_med / base_med, 3),
            "ratio_best": round(lf_best / base_best, 3),
        }


def time_pair(
    lakeforge: Callable[[], object],
    baseline: Callable[[], object],
    *,
    repeats: int,
    warmup: int = 1,
    setup: Callable[[], object] | None = None,
    log: Callable[[str], None] = print,
) -> Pair:
    """Time both paths ``repeats`` times, alternating which goes first.

    ``warmup`` untimed runs of each path come first: one-time costs of the process (imports,
    DuckDB extension loading, first table creation, cold page cache) are not what is compared.
    ``setup`` (untimed) runs before every single run, e.g. to restore a fresh copy of a
    target table.
    """
    pair = Pair()
    for _ in range(warmup):
        for fn in (lakeforge, baseline):
            if setup is not None:
                setup()
            fn()
    for rep in range(repeats):
        order = [("lakeforge", lakeforge), ("baseline", baseline)]
        if rep % 2:
            order.reverse()
        for name, fn in order:
            if setup is not None:
                setup()
            start = time.perf_counter()
            fn()
            elapsed = time.perf_counter() - start
            getattr(pair, name).append(elapsed)
            log(f"  rep {rep + 1}/{repeats} {name:<9} {elapsed:8.3f} s")
    return pair


def machine_info() -> dict[str, Any]:
    versions = {}
    for lib in _LIBRARIES:
        try:
            versions[lib] = metadata.version(lib)
        except metadata.PackageNotFoundError:
            versions[lib] = None
    return {
        "cpu_count": os.cpu_count(),
        "affinity_cpus": len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else None,
        "platform": platform.platform(),
        "machine": platform.machine(),
        "processor": platform.processor() or None,
        "python": sys.version.split()[0],
        "versions": versions,
    }


def write_result(name: str, result: dict[str, Any], results_dir: Path | None = None) -> Path:
    """Write ``results_dir/<name>.json`` with the result, the time and the machine info."""
    folder = results_dir or RESULTS_DIR
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"{name}.json"
    payload = {
        "benchmark": name,
        "recorded_at": datetime.now(UTC).isoformat(timespec="seconds"),
        "machine": machine_info(),
        **result,
    }
    path.write_text(json.dumps(payload, indent=2, default=str) + "\n", encoding="utf-8")
    return path


def table_rows(path: str) -> int:
    """Row count of a Delta table at its current version."""
    from deltalake import DeltaTable

    return int(DeltaTable(path).to_pyarrow_dataset().count_rows())
