"""``lakeforge retry RUN_ID``: only what a run did not finish is built again — its failed
and skipped datasets, and of a partitioned dataset the partitions it left failed."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.metadata.intervals import IntervalLedger
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project

PIPELINE = """
import pathlib
import lakeforge as lf

BROKEN = pathlib.Path(__file__).parent.parent / "broken"

@lf.table
def flaky(raw):
    if BROKEN.exists():
        raise RuntimeError("the upstream API is down: " + BROKEN.read_text())
    return raw

@lf.table
def after(flaky):
    return flaky

@lf.table
def other(raw):
    return raw

@lf.table(partitions=lf.Daily(start="2024-01-01", end="2024-01-06", column="day"))
def daily(raw, context):
    p = context.partition
    if BROKEN.exists() and p.key in BROKEN.read_text():
        raise RuntimeError(f"cannot build {p.key}")
    return raw.filter(f"day >= DATE '{p.start:%Y-%m-%d}' AND day < DATE '{p.end:%Y-%m-%d}'")
"""


def make_project(root: Path) -> Path:
    (root / "pipelines").mkdir(parents=True)
    (root / "models").mkdir()
    (root / "lakeforge.yml").write_text("name: retry\n")
    (root / "models" / "raw.sql").write_text(
        "SELECT i AS id, DATE '2024-01-01' + CAST(i % 5 AS INTEGER) AS day FROM range(20) t(i)\n"
    )
    (root / "pipelines" / "p.py").write_text(textwrap.dedent(PIPELINE))
    return root


def cli(root: Path, *args: str) -> Any:
    return CliRunner().invoke(app, ["-C", str(root), *args])


def run_json(root: Path, *args: str) -> tuple[int, dict[str, Any]]:
    result = cli(root, *args, "--json")
    return result.exit_code, json.loads(result.stdout)


def test_retry_builds_only_the_failed_part_of_a_run(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    (root / "broken").write_text("flaky 2024-01-02 2024-01-04")
    code, first = run_json(root, "run")
    assert code == 1
    status = {t["dataset"]: t["status"] for t in first["tasks"]}
    assert status == {
        "raw": "success",
        "flaky": "failed",
        "after": "upstream_failed",
        "other": "success",
        "daily": "failed",
    }
    # Still broken: the retry fails again, the same way, and changes nothing else.
    code, again = run_json(root, "retry", first["run_id"])
    assert code == 1
    assert sorted(t["dataset"] for t in again["tasks"]) == ["after", "daily", "flaky"]

    (root / "broken").unlink()
    code, retried = run_json(root, "retry", first["run_id"][:18])  # a unique prefix
    assert code == 0, retried
    tasks = {t["dataset"]: t for t in retried["tasks"]}
    # Only the failed and skipped datasets; `raw` and `other` are not even planned.
    assert set(tasks) == {"flaky", "after", "daily"}
    assert all(t["status"] == "success" for t in tasks.values())
    # Of the partitioned dataset, only the two partitions the first run left failed.
    built = sorted(p["partition"] for p in tasks["daily"]["partitions"])
    assert built == ["2024-01-02", "2024-01-04"]
    project = load_project(root)
    with MetadataStore(project.metadata_url) as metadata:
        record = metadata.get_run(retried["run_id"])
        assert record.options["retry_of"] == first["run_id"]
        ledger = IntervalLedger(metadata).read(["daily"])["daily"]
    assert {k: e.status for k, e in ledger.items()} == {
        f"2024-01-0{d}": "built" for d in range(1, 6)
    }
    assert ledger["2024-01-02"].run_id == retried["run_id"]
    assert ledger["2024-01-01"].run_id == first["run_id"]

    # Retrying a run that left nothing to do builds nothing.
    code, nothing = run_json(root, "retry", retried["run_id"])
    assert code == 0 and nothing == {"retry_of": retried["run_id"], "datasets": [], "run": None}
    shown = cli(root, "retry", retried["run_id"])
    assert shown.exit_code == 0 and "nothing to retry" in shown.stdout


def test_retry_of_an_unknown_run_is_an_error(tmp_path: Path) -> None:
    root = make_project(tmp_path)
    result = cli(root, "retry", "no-such-run")
    assert result.exit_code == 1
    assert "no-such-run" in result.output
