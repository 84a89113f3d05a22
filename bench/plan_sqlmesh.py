"""The SQLMesh side of ``bench/plan.py``: the same generated DAG as a SQLMesh project of
``INCREMENTAL_BY_TIME_RANGE`` models (daily, 365 intervals each), and the time of
``sqlmesh plan`` on it after the same code changes.

SQLMesh pins its own sqlglot, older than Lakeforge's, so it is not installed next to
Lakeforge: the benchmark runs it from another environment, found through
``LAKEFORGE_BENCH_SQLMESH`` (a ``sqlmesh`` executable) or on ``PATH``. Without it the plan
benchmark says so and compares with the target only.

The state is brought to "every interval processed" the way SQLMesh allows without running
365 × N queries: ``sqlmesh plan --auto-apply --empty-backfill`` records the intervals as
processed. Then the models chosen as "code changed" for Lakeforge get the same edit, and
``sqlmesh plan --no-prompts`` (which computes the plan — snapshots, change categories,
missing intervals of the changed models and of everything downstream — prints it and
exits without applying) is timed as a subprocess, like ``lakeforge plan --json``.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time
from pathlib import Path
from typing import Any

ENV = "LAKEFORGE_BENCH_SQLMESH"
CONFIG = """gateways:
  local:
    connection:
      type: duckdb
      database: {db}
default_gateway: local
model_defaults:
  dialect: duckdb
  start: '{start}'
  cron: '@daily'
"""


def find_sqlmesh() -> str | None:
    """The ``sqlmesh`` executable to compare with, if any."""
    explicit = os.environ.get(ENV)
    if explicit:
        return explicit if Path(explicit).exists() else None
    return shutil.which("sqlmesh")


def version(sqlmesh: str) -> str:
    proc = subprocess.run([sqlmesh, "--version"], capture_output=True, text=True, check=False)
    return proc.stdout.strip() or proc.stderr.strip()


def _model_sql(m: Any, lakeforge_sql: str, shared: str, start: str) -> str:
    """A Lakeforge model's query as a SQLMesh model (same columns, same rows)."""
    body = lakeforge_sql.split("*/\n", 1)[1]
    body = body.replace("@start", "@start_date").replace("@end", "(@end_date + 1)")
    header = (
        f"MODEL (\n  name bench.{m.name},\n  kind INCREMENTAL_BY_TIME_RANGE (time_column d),\n"
        f"  start '{start}',\n  cron '@daily'\n);\n\n"
    )
    for up in m.inputs:
        body = body.replace(f"FROM {up} ", f"FROM bench.{up} ").replace(
            f"JOIN {up} ", f"JOIN bench.{up} "
        )
    body = body.replace(f"FROM {shared}\n", f"FROM bench.{shared}\n").replace(
        f"FROM {shared} ", f"FROM bench.{shared} "
    )
    return header + body


def write_project(root: Path, models: list[Any], sql_of: Any, shared_sql: str, start: str,
                  shared: str) -> None:  # fmt: skip
    """The SQLMesh project: ``config.yaml`` and one file per model."""
    (root / "models").mkdir(parents=True)
    (root / "config.yaml").write_text(
        CONFIG.format(db=root / "bench.duckdb", start=start), encoding="utf-8"
    )
    (root / "models" / f"{shared}.sql").write_text(
        f"MODEL (\n  name bench.{shared},\n  kind FULL\n);\n\n{shared_sql}", encoding="utf-8"
    )
    for m in models:
        (root / "models" / f"{m.name}.sql").write_text(
            _model_sql(m, sql_of(m, None), shared, start), encoding="utf-8"
        )


def change_models(root: Path, models: list[Any], names: list[str], sql_of: Any,
                  shared: str, start: str) -> None:  # fmt: skip
    """The same code change as the Lakeforge side's "code changed" models."""
    for m in models:
        if m.name in names:
            (root / "models" / f"{m.name}.sql").write_text(
                _model_sql(m, sql_of(m, m.factor + 1), shared, start), encoding="utf-8"
            )


def sqlmesh(sqlmesh_bin: str, root: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [sqlmesh_bin, "-p", str(root), *args], capture_output=True, text=True, env=env,
        stdin=subprocess.DEVNULL, check=False, cwd=root,  # its logs/ go to the project
    )  # fmt: skip
    if proc.returncode != 0:
        raise RuntimeError(
            f"sqlmesh {' '.join(args)} failed ({proc.returncode}): "
            f"{(proc.stdout + proc.stderr)[-3000:]}"
        )
    return proc


def apply_all(sqlmesh_bin: str, root: Path, now: str) -> float:
    """Record every interval complete at ``now`` as processed without computing it;
    seconds taken."""
    began = time.perf_counter()
    sqlmesh(sqlmesh_bin, root, *plan_args(now), "--auto-apply", "--empty-backfill")
    return time.perf_counter() - began


def plan_args(now: str) -> list[str]:
    """``sqlmesh plan`` as of ``now`` (the day after the last interval)."""
    return ["plan", "--no-prompts", "--skip-tests", "--execution-time", now]


def plan_output(root: Path) -> str:
    """``sqlmesh plan --explain`` as of the day after the last interval: its output."""
    from bench.plan import DAYS, _day

    binary = find_sqlmesh()
    assert binary is not None
    return sqlmesh(binary, root, *plan_args(_day(DAYS).isoformat()), "--explain").stdout


def check_changes(output: str, changed: list[str]) -> None:
    """SQLMesh saw the same code changes (it must plan them, or the timing means nothing)."""
    missing = [name for name in changed if f"bench.{name}" not in output]
    assert not missing, f"sqlmesh plan does not show the changed models {missing}: {output}"


def setup(workdir: Path, models: list[Any], planted: Any) -> Path:
    """The same project for SQLMesh, every interval recorded, then the same code changes."""
    from bench.plan import DAYS, SHARED, START, Model, _day

    binary = find_sqlmesh()
    assert binary is not None
    root = workdir / f"sqlmesh_{len(models)}"
    shared = (workdir / f"project_{len(models)}" / "models" / f"{SHARED}.sql").read_text()
    write_project(root, models, Model.sql, shared, START.isoformat(), SHARED)
    took = apply_all(binary, root, _day(DAYS).isoformat())
    changed = [m for m, own in planted.own.items() if "code changed" in own.values()]
    change_models(root, models, changed, Model.sql, SHARED, START.isoformat())
    print(f"  sqlmesh: {len(models)} models, every interval recorded in {took:.1f} s")
    return root
