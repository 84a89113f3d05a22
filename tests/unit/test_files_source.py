"""The file source: each file ingested exactly once, batches, the ledger in the commits,
changed files, formats, full refresh, the quality gate per batch, and `lakeforge sources`."""

from __future__ import annotations

import gzip
import json
import os
import textwrap
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.errors import ConfigError
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.sources import files as files_module
from lakeforge.sources.files import FilesConfig, FilesSource
from lakeforge.storage.delta import DeltaStore, app_id

MODEL = """
/* lakeforge
layer: bronze
source: {{kind: files, path: "landing/*.{ext}", max_files_per_batch: {per_batch}{extra}}}
{more}*/
SELECT * FROM source
"""


def write(root: Path, rel: str, text: str) -> Path:
    path = root / rel
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(textwrap.dedent(text).lstrip("\n"))
    return path


def land(root: Path, name: str, ids: list[int], tick: int) -> Path:
    """An NDJSON landing file; ``tick`` orders arrival (modification time)."""
    path = write(
        root, f"landing/{name}", "".join(json.dumps({"id": i, "v": f"r{i}"}) + "\n" for i in ids)
    )
    os.utime(path, ns=(tick * 10**9, tick * 10**9))
    return path


def project(
    tmp_path: Path, *, ext: str = "ndjson", per_batch: int = 100, extra: str = "", more: str = ""
) -> Path:
    write(tmp_path, "lakeforge.yml", "name: ingest\n")
    write(
        tmp_path,
        "models/raw.sql",
        MODEL.format(ext=ext, per_batch=per_batch, extra=extra, more=more),
    )
    return tmp_path


def run(root: Path, **kw: Any) -> Any:
    result = Runner(load_project(root)).run(**kw)
    return result


def ids(root: Path) -> list[int]:
    return sorted(
        DeltaStore(str(root / "lakehouse")).read("raw").to_table().column("id").to_pylist()
    )


def test_each_file_is_ingested_once_and_new_files_are_picked_up(tmp_path: Path) -> None:
    root = project(tmp_path)
    land(root, "a.ndjson", [1, 2], tick=1)
    assert run(root).ok and ids(root) == [1, 2]
    store = DeltaStore(str(root / "lakehouse"))
    version = store.version("raw")
    second = run(root)
    assert second.tasks[0].status == "up_to_date" and store.version("raw") == version
    land(root, "b.ndjson", [3], tick=2)
    plan = Runner(load_project(root)).plan()
    assert plan[0].stale and plan[0].reason == "new file landing/b.ndjson"
    assert run(root).ok and ids(root) == [1, 2, 3]
    info = next(store.commit_infos("raw"))
    assert info.source_state is not None and set(info.source_state["files"]) == {
        "landing/a.ndjson",
        "landing/b.ndjson",
    }


def test_batches_follow_arrival_order_one_commit_each(tmp_path: Path) -> None:
    root = project(tmp_path, per_batch=2)
    for n, tick in ((3, 30), (1, 10), (2, 20), (4, 40), (5, 50)):
        land(root, f"f{n}.ndjson", [n], tick=tick)
    result = run(root)
    assert result.ok and result.tasks[0].metrics["source"] == {
        "batches": 3,
        "units": 5,
        "changed_files": [],
    }
    store = DeltaStore(str(root / "lakehouse"))
    assert store.open("raw").transaction_version(app_id("raw")) == 3
    batches = [sorted(i.source_state["files"]) for i in store.commit_infos("raw")]
    assert batches[-1] == ["landing/f1.ndjson", "landing/f2.ndjson"]  # oldest files first
    assert ids(root) == [1, 2, 3, 4, 5]


def test_a_changed_file_is_reported_and_reread_only_when_allowed(tmp_path: Path) -> None:
    root = project(tmp_path)
    land(root, "a.ndjson", [1], tick=1)
    assert run(root).ok
    land(root, "a.ndjson", [1, 9], tick=5)  # rewritten in place
    plan = Runner(load_project(root)).plan()
    assert not plan[0].stale
    listed = json.loads(CliRunner().invoke(app, ["-C", str(root), "sources", "--json"]).output)
    assert listed[0]["changed_files"] == ["landing/a.ndjson"] and listed[0]["pending"] == 0
    write(
        root,
        "models/raw.sql",
        MODEL.format(ext="ndjson", per_batch=100, extra=", allow_overwrites: true", more=""),
    )
    assert run(root).ok
    assert ids(root) == [1, 1, 9]  # append keeps what the earlier version of the file gave


def test_full_refresh_reingests_everything_once(tmp_path: Path) -> None:
    root = project(tmp_path, per_batch=1)
    land(root, "a.ndjson", [1], tick=1)
    land(root, "b.ndjson", [2], tick=2)
    assert run(root).ok
    assert run(root, full_refresh=True).ok
    assert ids(root) == [1, 2]
    assert run(root).tasks[0].status == "up_to_date"


def test_empty_files_and_formats(tmp_path: Path) -> None:
    root = project(tmp_path, ext="csv.gz", extra=", format: csv")
    (root / "landing").mkdir()
    with gzip.open(root / "landing/a.csv.gz", "wt") as fh:
        fh.write("id,v\n1,x\n2,y\n")
    (root / "landing/empty.csv.gz").write_bytes(b"")
    assert run(root).ok and ids(root) == [1, 2]
    listed = CliRunner().invoke(app, ["-C", str(root), "sources", "--json"]).output
    assert json.loads(listed)[0]["consumed"] == 1  # an empty file is not read (yet)
    with gzip.open(root / "landing/empty.csv.gz", "wt") as fh:
        fh.write("id,v\n3,z\n")  # it got its content: now it is read
    assert run(root).ok and ids(root) == [1, 2, 3]

    pq_root = project(tmp_path / "pq", ext="parquet")
    (pq_root / "landing").mkdir()
    pq.write_table(pa.table({"id": [5, 6], "v": ["a", "b"]}), pq_root / "landing" / "p.parquet")
    assert run(pq_root).ok and ids(pq_root) == [5, 6]
    rows = DeltaStore(str(pq_root / "lakehouse")).read("raw").to_table().to_pylist()
    assert {r["_source_file"] for r in rows} == {"landing/p.parquet"}


def test_python_table_with_a_source(tmp_path: Path) -> None:
    write(tmp_path, "lakeforge.yml", "name: py\n")
    write(
        tmp_path,
        "pipelines/p.py",
        """
        import lakeforge as lf

        @lf.table(layer="bronze", source=lf.files("landing/*.ndjson", file_column=None))
        def raw(source):
            return source.filter("id > 1")
        """,
    )
    land(tmp_path, "a.ndjson", [1, 2, 3], tick=1)
    result = run(tmp_path)
    assert result.ok, result.to_dict()
    table = DeltaStore(str(tmp_path / "lakehouse")).read("raw").to_table()
    assert (
        sorted(table.column("id").to_pylist()) == [2, 3]
        and "_source_file" not in table.column_names
    )


def test_a_blocked_batch_is_read_again_next_time(tmp_path: Path) -> None:
    root = project(tmp_path, per_batch=1, more="checks:\n  - {type: range, column: id, max: 10}\n")
    land(root, "a.ndjson", [1], tick=1)
    land(root, "b.ndjson", [99], tick=2)
    land(root, "c.ndjson", [3], tick=3)
    result = run(root)
    assert not result.ok and ids(root) == [1]  # a committed; b blocked; c not reached
    land(root, "b.ndjson", [2], tick=2)  # fixed at the source
    assert run(root).ok and ids(root) == [1, 2, 3]


def test_declaration_errors(tmp_path: Path) -> None:
    from lakeforge.graph.spec import DatasetConfig

    with pytest.raises(ValueError, match="replace the one before"):
        DatasetConfig.model_validate({"source": {"path": "x/*.csv"}, "write": "overwrite"})
    with pytest.raises(ConfigError, match="format"):
        FilesConfig("landing/*.dat").file_format()
    with pytest.raises(ValueError, match="option name"):
        FilesConfig("x/*.csv", options={"bad name": 1})


def test_ledger_recovers_from_snapshots_and_deltas(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(files_module, "SNAPSHOT_LIMIT", 2)
    monkeypatch.setattr(files_module, "SNAPSHOT_EVERY", 3)
    root = project(tmp_path, per_batch=1)
    for n in range(1, 9):
        land(root, f"f{n}.ndjson", [n], tick=n)
    assert run(root).ok
    store = DeltaStore(str(root / "lakehouse"))
    states = [i.source_state for i in store.commit_infos("raw")]
    assert [s["snapshot"] for s in reversed(states)] == [
        True,
        True,
        False,
        False,
        True,
        False,
        False,
        True,
    ]
    source = FilesSource("raw", root, FilesConfig("landing/*.ndjson"))
    ledger = source.recover(states)
    assert sorted(ledger.files) == [f"landing/f{n}.ndjson" for n in range(1, 9)]
    assert source.pending(ledger) is None and ids(root) == list(range(1, 9))


def test_published_batches_keep_their_check_results_when_a_later_one_is_blocked(
    tmp_path: Path,
) -> None:
    from lakeforge.metadata.store import MetadataStore

    root = project(tmp_path, per_batch=1, more="checks:\n  - {type: range, column: id, max: 10}\n")
    land(root, "a.ndjson", [1], tick=1)
    land(root, "b.ndjson", [99], tick=2)
    result = run(root)
    assert not result.ok and "the 1 batch(es) before it were" in str(result.tasks[0].error)
    with MetadataStore(load_project(root).metadata_url) as meta:
        recorded = meta.list_check_results(run_id=result.run_id)
    assert sorted((r.status, r.published) for r in recorded) == [("fail", False), ("pass", True)]


def test_a_data_column_named_filename_and_gzip_suffixes(tmp_path: Path) -> None:
    root = project(tmp_path, ext="ndjson.gzip", extra=", format: ndjson")
    (root / "landing").mkdir()
    with gzip.open(root / "landing" / "a.ndjson.gzip", "wb") as fh:
        fh.write(b'{"id": 1, "filename": "invoice.pdf"}\n')
    result = run(root)
    assert result.ok, [str(t.error) for t in result.tasks]
    row = DeltaStore(str(root / "lakehouse")).read("raw").to_table().to_pylist()[0]
    assert row["filename"] == "invoice.pdf" and row["_source_file"] == "landing/a.ndjson.gzip"
