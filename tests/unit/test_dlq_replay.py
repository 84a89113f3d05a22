"""`lakeforge dlq replay`: dead letters re-ingested once, after a fix; the rest stay."""

from __future__ import annotations

import json
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore


def project(root: Path, pattern: str, fmt: str, options: str = "") -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: replay\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "raw.sql").write_text(
        textwrap.dedent(
            f"""
            /* lakeforge
            source: {{path: "landing/{pattern}", format: {fmt}{options}}}
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    (root / "landing").mkdir(exist_ok=True)
    return root


def cli(root: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    return result


def ids(root: Path) -> list[Any]:
    table = DeltaStore(str(root / "lakehouse")).read("raw").to_table()
    return sorted(table.column("id").to_pylist())


def test_a_fixed_file_is_replayed_once(tmp_path: Path) -> None:
    root = project(tmp_path, "*.parquet", "parquet")
    pq.write_table(pa.table({"id": [1]}), root / "landing" / "good.parquet")
    (root / "landing" / "bad.parquet").write_bytes(b"PAR1 broken")
    assert Runner(load_project(root)).run().ok and ids(root) == [1]
    before = json.loads(cli(root, "dlq", "ls", "--json").output)
    assert before[0]["to_replay"] == 1
    pq.write_table(pa.table({"id": [2, 3]}), root / "landing" / "bad.parquet")  # fixed upstream
    out = cli(root, "dlq", "replay", "raw", "--json")
    assert out.exit_code == 0, out.output
    assert json.loads(out.output)["replayed"] == 1 and ids(root) == [1, 2, 3]
    shown = json.loads(cli(root, "dlq", "show", "raw", "--json").output)
    assert [r["replayed"] for r in shown] == [True]
    again = json.loads(cli(root, "dlq", "replay", "raw", "--json").output)
    assert again["replayed"] == 0 and ids(root) == [1, 2, 3]
    # The re-read file's new signature is in the ledger: not "changed", nothing to do.
    sources = json.loads(cli(root, "sources", "--json").output)[0]
    assert sources["changed_files"] == [] and sources["pending"] == 0
    assert Runner(load_project(root)).run().tasks[0].status == "up_to_date"


def test_csv_rows_replay_after_the_reader_options_change(tmp_path: Path) -> None:
    root = project(tmp_path, "*.csv", "csv")
    (root / "landing" / "a.csv").write_text("id,v\n1,a\n2,b,extra\n3,c\n")
    assert Runner(load_project(root)).run().ok and ids(root) == [1, 3]
    project(tmp_path, "*.csv", "csv", options=", options: {strict_mode: false}")
    out = json.loads(cli(root, "dlq", "replay", "raw", "--json").output)
    assert out["replayed"] == 1 and out["still_unreadable"] == 0
    assert ids(root) == [1, 2, 3]


def test_records_that_still_do_not_read_stay(tmp_path: Path) -> None:
    root = project(tmp_path, "*.ndjson", "ndjson")
    (root / "landing" / "a.ndjson").write_text('{"id": 1}\n{"id": 2, broken\n')
    assert Runner(load_project(root)).run().ok
    out = json.loads(cli(root, "dlq", "replay", "raw", "--json").output)
    assert out["replayed"] == 0 and out["still_unreadable"] == 1
    assert json.loads(cli(root, "dlq", "ls", "--json").output)[0]["to_replay"] == 1


def test_a_replay_that_did_not_commit_is_done_again_once(tmp_path: Path) -> None:
    root = project(tmp_path, "*.parquet", "parquet")
    (root / "models" / "raw.sql").write_text(
        (root / "models" / "raw.sql")
        .read_text()
        .replace("*/", "checks:\n  - {type: range, column: id, max: 100}\n*/")
    )
    pq.write_table(pa.table({"id": [1]}), root / "landing" / "good.parquet")
    (root / "landing" / "bad.parquet").write_bytes(b"PAR1 broken")
    assert Runner(load_project(root)).run().ok
    pq.write_table(pa.table({"id": [500]}), root / "landing" / "bad.parquet")
    blocked = cli(root, "dlq", "replay", "raw", "--json")
    assert blocked.exit_code == 1 and json.loads(blocked.output)["replayed"] == 0
    assert ids(root) == [1]  # nothing published, nothing marked replayed
    assert json.loads(cli(root, "dlq", "ls", "--json").output)[0]["to_replay"] == 1
    pq.write_table(pa.table({"id": [5]}), root / "landing" / "bad.parquet")
    done = json.loads(cli(root, "dlq", "replay", "raw", "--json").output)
    assert done["replayed"] == 1 and ids(root) == [1, 5]
    assert json.loads(cli(root, "dlq", "replay", "raw", "--json").output)["replayed"] == 0
    assert ids(root) == [1, 5]
