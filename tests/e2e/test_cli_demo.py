"""The CLI on the example project, in a temp dir, as a user runs it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

LAKEFORGE = [sys.executable, "-m", "lakeforge"]


def cli(*args: str, cwd: Path, ok: bool = True) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "COLUMNS": "200"}
    proc = subprocess.run(
        [*LAKEFORGE, *args], cwd=cwd, capture_output=True, text=True, env=env, timeout=300
    )
    if ok:
        assert proc.returncode == 0, f"{args}: {proc.stdout}\n{proc.stderr}"
    return proc


@pytest.mark.slow
def test_demo_end_to_end(tmp_path: Path) -> None:
    cli("init", "shop", "--size", "5000", cwd=tmp_path)
    shop = tmp_path / "shop"
    first = json.loads(cli("run", "--json", cwd=shop).stdout)
    assert first["status"] == "success"
    built = {t["dataset"] for t in first["tasks"] if t["status"] == "success"}
    assert {"orders", "customers", "gold_daily_revenue", "gold_customer_lifetime_value"} <= built

    listing = {d["name"]: d for d in json.loads(cli("ls", "--json", cwd=shop).stdout)}
    versions = {n: d["version"] for n, d in listing.items()}
    # Quality: the zero-quantity lines were set aside, every row accounted for.
    lines = {t["dataset"]: t for t in first["tasks"]}["order_lines"]["metrics"]
    assert lines["rows_quarantined"] == listing["order_lines__quarantine"]["rows"] > 0
    assert lines["rows_candidate"] == lines["rows_published"] + lines["rows_quarantined"]
    assert first["checks"]["pass"] > 10 and "fail" not in first["checks"]
    latest = json.loads(cli("checks", "--json", cwd=shop).stdout)
    assert {r["dataset"] for r in latest} >= {"orders", "customers", "order_lines"}

    second = json.loads(cli("run", "--json", cwd=shop).stdout)
    assert {t["status"] for t in second["tasks"]} == {"up_to_date"}
    after = {d["name"]: d["version"] for d in json.loads(cli("ls", "--json", cwd=shop).stdout)}
    assert after == versions  # no new Delta versions

    shown = json.loads(cli("show", "orders", "--limit", "5", "--json", cwd=shop).stdout)
    assert len(shown["rows"]) == 5 and shown["version"] == "v0"
    assert "flowchart LR" in cli("dag", "--format", "mermaid", cwd=shop).stdout
    rows = json.loads(cli("sql", "select count(*) as n from orders", "--json", cwd=shop).stdout)
    assert rows[0]["n"] == listing["orders"]["rows"]
    history = json.loads(cli("history", "orders", "--json", cwd=shop).stdout)
    assert history[0]["run_id"] == first["run_id"]
    runs = json.loads(cli("history", "--json", cwd=shop).stdout)
    assert [r["id"] for r in runs[:2]] == [second["run_id"], first["run_id"]]
    opt = json.loads(
        cli("optimize", "orders", "--zorder", "customer_id", "--json", cwd=shop).stdout
    )
    assert opt["zorder"] == ["customer_id"]
    # Optimizing changes no rows: consumers stay up to date.
    third = json.loads(cli("run", "--json", cwd=shop).stdout)
    assert {t["status"] for t in third["tasks"]} == {"up_to_date"}
    vac = json.loads(
        cli("vacuum", "orders", "--retain", "168h", "--dry-run", "--json", cwd=shop).stdout
    )
    assert vac["dry_run"] is True
    assert (
        json.loads(
            cli("show", "orders", "--version", "0", "--limit", "1", "--json", cwd=shop).stdout
        )["version"]
        == "v0"
    )


def test_errors_are_one_line_with_hint_and_exit_codes(tmp_path: Path) -> None:
    (tmp_path / "lakeforge.yml").write_text("name: x\n")
    (tmp_path / "models").mkdir()
    (tmp_path / "models" / "a.sql").write_text("SELECT * FROM missing_table\n")
    proc = cli("run", cwd=tmp_path, ok=False)
    assert proc.returncode == 1
    assert "Traceback" not in proc.stderr
    assert "models/a.sql:1" in proc.stderr and "missing_table" in proc.stderr
    debug = cli("--debug", "run", cwd=tmp_path, ok=False)
    assert "Traceback" in debug.stderr
    usage = cli("run", "--no-such-flag", cwd=tmp_path, ok=False)
    assert usage.returncode == 2
    (tmp_path / "models" / "a.sql").write_text("SELECT 1 AS id\n")
    inside = cli("ls", "--json", cwd=tmp_path / "models")  # finds the project upwards
    assert [d["name"] for d in json.loads(inside.stdout)] == ["a"]


def test_help_is_fast() -> None:
    import time

    start = time.perf_counter()
    proc = subprocess.run([*LAKEFORGE, "--help"], capture_output=True, text=True, timeout=60)
    elapsed = time.perf_counter() - start
    assert proc.returncode == 0 and "run" in proc.stdout
    # Generous bound for a loaded CI machine; the import itself is ~0.2 s.
    assert elapsed < 2.0
    imported = subprocess.run(
        [
            sys.executable,
            "-c",
            "import sys, lakeforge.cli.app; heavy = ('duckdb', 'pyarrow', 'deltalake', "
            "'sqlalchemy', 'sqlglot'); print(sorted(m for m in heavy if m in sys.modules))",
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert imported.stdout.strip() == "[]"
