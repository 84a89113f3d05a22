"""Each benchmark runs at a tiny scale and writes its result JSON (proves `make bench` works)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest

# bench/ is a top-level folder of the repository, not part of the installed package: make it
# importable however pytest is started (`python -m pytest` adds the cwd, `pytest` does not).
REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))

from bench.__main__ import BENCHMARKS, main  # noqa: E402


@pytest.mark.parametrize("name", sorted(BENCHMARKS))
def test_benchmark_runs_and_writes_result(
    name: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    service = getattr(BENCHMARKS[name], "SERVICE", None)
    if service is not None:  # a benchmark that reads a broker (nats_ingest): probe it first
        from conftest import require_service

        require_service(service, BENCHMARKS[name].probe)
    # Spark's JVM start-up alone takes longer than this whole smoke test: its baseline runs
    # in `make bench`; here the windowed bench compares with its DuckDB floor instead.
    monkeypatch.setenv("LAKEFORGE_BENCH_SPARK", "0")
    # Great Expectations imports pyspark when it is installed (the bench extra), and
    # pyspark's import exits the process inside an xdist worker (no __main__ file). GX is
    # compared in `make bench`; the smoke test checks the Lakeforge path and its baseline.
    monkeypatch.setenv("LAKEFORGE_BENCH_GX", "0")
    results = tmp_path / "results"
    code = main(
        ["--only", name, "--scale", "0.001", "--repeats", "1", "--results-dir", str(results),
         "--workdir", str(tmp_path)]
    )  # fmt: skip
    assert code == 0
    payload = json.loads((results / f"{name}.json").read_text(encoding="utf-8"))
    assert payload["benchmark"] == name
    assert payload["lakeforge_median"] > 0 and payload["baseline_median"] > 0
    assert payload["ratio_median"] == pytest.approx(
        payload["lakeforge_median"] / payload["baseline_median"], rel=0.01
    )
    machine = payload["machine"]
    assert machine["cpu_count"] >= 1
    assert set(machine["versions"]) >= {"deltalake", "duckdb", "pyarrow", "polars"}
