"""Bad-input corpus for the file source: every record ends up in the table or in the
dead-letter queue (with its raw bytes, error, file and line), and the batch goes on."""

from __future__ import annotations

import gzip
import json
import textwrap
from pathlib import Path
from typing import Any

import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

HUGE = "x" * 2_000_000


def project(root: Path, pattern: str, fmt: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: corpus\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "raw.sql").write_text(
        textwrap.dedent(
            f"""
            /* lakeforge
            source: {{path: "landing/{pattern}", format: {fmt}}}
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    (root / "landing").mkdir(exist_ok=True)
    return root


def tables(root: Path) -> tuple[list[dict], list[dict]]:
    store = DeltaStore(str(root / "lakehouse"))
    rows = store.read("raw").to_table().to_pylist() if store.exists("raw") else []
    dead = store.read("raw__dlq").to_table().to_pylist() if store.exists("raw__dlq") else []
    return rows, dead


def test_ndjson_corpus_every_record_accounted_for(tmp_path: Path) -> None:
    root = project(tmp_path, "*.ndjson*", "ndjson")
    good = [{"id": i, "v": f"r{i}"} for i in range(1, 6)]
    lines = [json.dumps(r).encode() for r in good]
    corpus = {
        "ok.ndjson": b"\n".join(lines[:2]) + b"\n",
        "broken.ndjson": lines[2] + b'\n{"id": 90, bad}\n\n' + b"not json at all\n",
        "utf8.ndjson": b'{"id": 91, "v": "\xff"}\n' + lines[3] + b"\n",
        "types.ndjson": b'{"id": "ninety-two", "v": 1}\n' + lines[4] + b"\n",  # widened, kept
        "huge.ndjson": json.dumps({"id": 93, "v": HUGE}).encode() + b"\n",
        "missing.ndjson": b'{"v": "no id"}\n',
        "empty.ndjson": b"",
        "truncated.ndjson": b'{"id": 94, "v": "cut',
    }
    for name, content in corpus.items():
        (root / "landing" / name).write_bytes(content)
    with gzip.open(root / "landing" / "zipped.ndjson.gz", "wb") as fh:
        fh.write(b'{"id": 95, "v": "gz"}\n{oops\n')
    result = Runner(load_project(root)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    rows, dead = tables(root)
    # Non-blank lines in = rows published + dead letters.
    in_lines = (
        sum(1 for c in corpus.values() for line in c.split(b"\n") if line.strip()) + 2
    )  # the gzip file's two lines
    assert len(rows) + len(dead) == in_lines
    task = result.tasks[0]
    assert task.metrics["rows_dlq"] == len(dead)
    # The recorded identity (DESIGN §2.4): rows in = published + quarantined + dropped + DLQ.
    assert task.rows_in == in_lines
    assert task.rows_in == sum(
        task.metrics[k] for k in ("rows_published", "rows_quarantined", "rows_dropped", "rows_dlq")
    )
    by_file = {(d["source_file"], d["line"]) for d in dead}
    assert ("landing/broken.ndjson", 2) in by_file and ("landing/broken.ndjson", 4) in by_file
    assert ("landing/utf8.ndjson", 1) in by_file and ("landing/truncated.ndjson", 1) in by_file
    assert ("landing/zipped.ndjson.gz", 2) in by_file
    bad = next(d for d in dead if d["line"] == 2 and d["source_file"] == "landing/broken.ndjson")
    assert bad["raw"] == b'{"id": 90, bad}' and bad["error"].startswith("invalid JSON")
    assert any(len(r["v"] or "") == len(HUGE) for r in rows)  # huge values are not errors
    assert {r["_source_file"] for r in rows} >= {"landing/ok.ndjson", "landing/zipped.ndjson.gz"}
    # A second run reads nothing again.
    again = Runner(load_project(root)).run()
    assert again.tasks[0].status == "up_to_date" and tables(root) == (rows, dead)
    shown = json.loads(
        CliRunner().invoke(app, ["-C", str(root), "dlq", "show", "raw", "--json"]).output
    )
    assert len(shown) == len(dead) and all("error" in d for d in shown)


def test_csv_corpus_malformed_rows_go_to_the_dlq(tmp_path: Path) -> None:
    root = project(tmp_path, "*.csv", "csv")
    (root / "landing" / "a.csv").write_text("id,v\n1,a\n2,b,extra\n3,c\n")
    (root / "landing" / "b.csv").write_text("id,v\n4,d\n")
    result = Runner(load_project(root)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    rows, dead = tables(root)
    assert sorted(str(r["id"]) for r in rows) == ["1", "3", "4"]
    assert [(d["source_file"], d["line"], d["raw_text"]) for d in dead] == [
        ("landing/a.csv", 3, "2,b,extra")
    ]
    assert "TOO MANY COLUMNS" in dead[0]["error"]


def test_an_unreadable_parquet_file_is_rejected_whole(tmp_path: Path) -> None:
    import pyarrow as pa
    import pyarrow.parquet as pq

    root = project(tmp_path, "*.parquet", "parquet")
    pq.write_table(pa.table({"id": [1, 2]}), root / "landing" / "good.parquet")
    (root / "landing" / "bad.parquet").write_bytes(b"PAR1 this is not parquet")
    result = Runner(load_project(root)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    rows, dead = tables(root)
    assert sorted(r["id"] for r in rows) == [1, 2]
    assert [(d["source_file"], d["line"]) for d in dead] == [("landing/bad.parquet", None)]
    assert dead[0]["error"].startswith("unreadable file")
    listed = json.loads(CliRunner().invoke(app, ["-C", str(root), "dlq", "ls", "--json"]).output)
    assert listed[0]["dataset"] == "raw" and listed[0]["records"] == 1


def typed_project(root: Path) -> Path:
    """NDJSON with declared column types and a required key (an expectation)."""
    project(root, "*.ndjson", "ndjson")
    (root / "models" / "raw.sql").write_text(
        textwrap.dedent(
            """
            /* lakeforge
            source:
              path: "landing/*.ndjson"
              row_column: true
              options: {columns: {id: BIGINT, v: VARCHAR}}
            expect: {id_required: id IS NOT NULL}
            on_violation: quarantine
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    return root


def test_values_that_do_not_fit_declared_types_are_dead_letters_one_by_one(
    tmp_path: Path,
) -> None:
    root = typed_project(tmp_path)
    lines = [
        b'{"id": 1, "v": "a"}',
        b'{"id": "two", "v": "b"}',  # wrong type
        b"",
        b'{"v": "no id"}',  # missing required field -> quarantine
        b'{"id": 99999999999999999999999, "v": "over 64 bits"}',  # huge value
        b'{"id": 5, "v": "\xc3\xa9t\xc3\xa9 \xf0\x9f\x9a\x80"}',  # unicode is fine
        b'{"id": 6, bad json}',
        b'{"id": 7, "v": "last"}',
    ]
    (root / "landing" / "a.ndjson").write_bytes(b"\n".join(lines) + b"\n")
    result = Runner(load_project(root)).run()
    assert result.ok, [str(t.error) for t in result.tasks]
    rows, dead = tables(root)
    assert sorted((r["id"], r["_source_row"]) for r in rows) == [(1, 1), (5, 5), (7, 7)]
    assert [(d["line"], d["error"].split(":")[0]) for d in dead] == [
        (2, "cannot read record"),
        (5, "cannot read record"),
        (7, "invalid JSON"),
    ]
    assert '"two"' in dead[0]["error"] and "/tmp" not in dead[0]["error"]
    assert dead[1]["raw"] == lines[4]
    store = DeltaStore(str(root / "lakehouse"))
    quarantined = store.read("raw__quarantine").to_table().to_pylist()
    assert [q["v"] for q in quarantined] == ["no id"]
    task = result.tasks[0]
    metrics = task.metrics
    assert (metrics["rows_published"], metrics["rows_quarantined"], metrics["rows_dlq"]) == (
        3,
        1,
        3,
    )
    assert (
        task.rows_in
        == 7
        == sum(
            metrics[k] for k in ("rows_published", "rows_quarantined", "rows_dropped", "rows_dlq")
        )
    )


def test_files_appearing_or_vanishing_while_listed_are_neither_lost_nor_doubled(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import lakeforge.sources.files as files_module

    root = project(tmp_path, "*.ndjson", "ndjson")
    landing = root / "landing"
    (landing / "a.ndjson").write_bytes(b'{"id": 1}\n')
    (landing / "gone.ndjson").write_bytes(b'{"id": 2}\n')
    (landing / "never.ndjson").write_bytes(b'{"id": 4}\n')
    real_glob = files_module.glob.glob

    def racing_glob(pattern: str, **kw: Any) -> list[str]:
        listed = real_glob(pattern, **kw)
        if not (landing / "late.ndjson").exists():
            # A file lands just after a listing; another is deleted before the next one.
            (landing / "late.ndjson").write_bytes(b'{"id": 3}\n')
            (landing / "never.ndjson").unlink()
        return listed

    real_read = files_module.FilesSource._read

    def read_after_a_delete(self: Any, group: list[Any]) -> Any:
        # Deleted after this run listed and sized it, before it is read.
        (landing / "gone.ndjson").unlink(missing_ok=True)
        return real_read(self, group)

    monkeypatch.setattr(files_module.glob, "glob", racing_glob)
    monkeypatch.setattr(files_module.FilesSource, "_read", read_after_a_delete)
    first = Runner(load_project(root)).run()
    assert first.ok, [str(t.error) for t in first.tasks]
    rows, dead = tables(root)
    # The file deleted before the listing was never seen; the one deleted after it could
    # not be read: a dead letter says so, with its name, so nothing vanishes silently.
    assert [(d["source_file"], d["error"].split(":")[0]) for d in dead] == [
        ("landing/gone.ndjson", "unreadable file")
    ]
    assert {r["id"] for r in rows} <= {1, 3}
    # The file that appeared meanwhile is read once, by this run or the next.
    monkeypatch.undo()
    assert Runner(load_project(root)).run().ok
    assert sorted(r["id"] for r in tables(root)[0]) == [1, 3]
    assert Runner(load_project(root)).run().tasks[0].status == "up_to_date"
    assert sorted(r["id"] for r in tables(root)[0]) == [1, 3]
    assert len(tables(root)[1]) == 1
