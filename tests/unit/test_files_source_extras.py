"""The file source's row numbers (``row_column``): every format, compressed files, records
after a rejected one keep their positions, unicode, empty files, dead-letter replay; and
the object-store glob and option rules that need no store."""

from __future__ import annotations

import gzip
import json
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest
from test_files_source import project, run, write
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.errors import ConfigError
from lakeforge.sources import files as files_module
from lakeforge.sources.files import FilesConfig
from lakeforge.storage import objectstore
from lakeforge.storage.delta import DeltaStore


def rows(root: Path, table: str = "raw") -> list[dict[str, Any]]:
    return DeltaStore(str(root / "lakehouse")).read(table).to_table().to_pylist()


def positions(root: Path, column: str = "_source_row") -> dict[tuple[str, Any], Any]:
    """(file, id) → row number of every published record."""
    return {(r["_source_file"], r["id"]): r[column] for r in rows(root)}


def dead(root: Path) -> set[tuple[str, int | None]]:
    store = DeltaStore(str(root / "lakehouse"))
    if not store.exists("raw__dlq"):
        return set()
    return {(r["source_file"], r["line"]) for r in rows(root, "raw__dlq")}


def gz(path: Path, content: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    with gzip.open(path, "wb") as fh:
        fh.write(content)


def ndjson(ids: list[int]) -> bytes:
    return b"".join(json.dumps({"id": i, "v": f"r{i}"}).encode() + b"\n" for i in ids)


def csv(ids: list[int]) -> bytes:
    return b"id,v\n" + b"".join(f"{i},r{i}\n".encode() for i in ids)


@pytest.mark.parametrize("ext", ["ndjson", "ndjson.gz", "csv", "csv.gz", "json", "json.gz"])
def test_text_formats_number_each_files_records_from_one(tmp_path: Path, ext: str) -> None:
    root = project(tmp_path, ext=ext, extra=", row_column: true")
    fmt = ext.split(".")[0]
    encode = {"ndjson": ndjson, "csv": csv}.get(
        fmt, lambda ids: json.dumps([{"id": i, "v": f"r{i}"} for i in ids]).encode()
    )
    for name, ids in (("a", [10, 11, 12]), ("b", [20, 21])):
        path = root / "landing" / f"{name}.{ext}"
        if ext.endswith(".gz"):
            gz(path, encode(ids))
        else:
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_bytes(encode(ids))
    assert run(root).ok
    got = positions(root)
    assert got == {
        (f"landing/a.{ext}", 10): 1,
        (f"landing/a.{ext}", 11): 2,
        (f"landing/a.{ext}", 12): 3,
        (f"landing/b.{ext}", 20): 1,
        (f"landing/b.{ext}", 21): 2,
    }
    schema = DeltaStore(str(root / "lakehouse")).read("raw").to_table().schema
    assert schema.field("_source_row").type == pa.int64()


def test_large_files_keep_their_order_through_parallel_scans(tmp_path: Path) -> None:
    """Files big enough for DuckDB to scan in parallel, several per batch, each numbered
    in file order (the row number equals the id written on that row)."""
    root = tmp_path
    write(root, "lakeforge.yml", "name: big\n")
    (root / "landing").mkdir()
    n = 120_000
    for name in ("a", "b"):
        pq.write_table(
            pa.table({"id": list(range(1, n + 1))}),
            root / "landing" / f"{name}.parquet",
            row_group_size=7_000,
            compression="zstd",
        )
        gz(root / "landing" / f"{name}.ndjson.gz", ndjson(list(range(1, n + 1))))
    write(
        root,
        "models/raw_json.sql",
        """
        /* lakeforge
        source: {path: "landing/*.ndjson.gz", row_column: rn}
        */
        SELECT * FROM source
        """,
    )
    write(
        root,
        "models/raw.sql",
        """
        /* lakeforge
        source: {path: "landing/*.parquet", row_column: rn}
        */
        SELECT * FROM source
        """,
    )
    assert run(root).ok
    for table in ("raw", "raw_json"):
        found = DeltaStore(str(root / "lakehouse")).read(table).to_table()
        assert found.num_rows == 2 * n
        assert pc.all(pc.equal(found.column("rn"), found.column("id"))).as_py()


def test_records_after_a_rejected_line_keep_their_positions(tmp_path: Path) -> None:
    root = project(tmp_path, ext="ndjson*", extra=", format: ndjson, row_column: true")
    (root / "landing").mkdir()
    # Blank lines are not records; a rejected line keeps its slot.
    content = b'{"id": 1}\n\n{"id": 2}\n{"id": oops}\n   \n{"id": 4}\n{"id": 5}\n'
    (root / "landing" / "a.ndjson").write_bytes(content)
    gz(root / "landing" / "b.ndjson.gz", b'{"id": 7}\nnot json\n{"id": 9}\n')
    assert run(root).ok
    assert positions(root) == {
        ("landing/a.ndjson", 1): 1,
        ("landing/a.ndjson", 2): 2,
        ("landing/a.ndjson", 4): 4,
        ("landing/a.ndjson", 5): 5,
        ("landing/b.ndjson.gz", 7): 1,
        ("landing/b.ndjson.gz", 9): 3,
    }
    # Dead letters keep their line in the file (blank lines counted).
    assert dead(root) == {("landing/a.ndjson", 4), ("landing/b.ndjson.gz", 2)}


@pytest.mark.parametrize(
    ("compressed", "newline"), [(False, b"\n"), (True, b"\n"), (False, b"\r\n")]
)
def test_csv_rows_after_rejected_rows_keep_their_positions(
    tmp_path: Path, compressed: bool, newline: bytes
) -> None:
    ext = "csv.gz" if compressed else "csv"
    root = project(tmp_path, ext=ext, extra=", row_column: row")
    lines = [
        b"id,v",
        b"1,a",
        b"",  # a blank line: not a row
        b'2,"two' + newline + b'lines"',  # one row over two lines
        b"3,c,EXTRA",  # rejected: row 3
        b"4,d",
        b"5,e,F",  # rejected: row 5
        b"6,f",
        b"7,g",
        b"8,h",
    ]
    content = newline.join(lines) + newline
    path = root / "landing" / f"a.{ext}"
    if compressed:
        gz(path, content)
    else:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_bytes(content)
    assert run(root).ok
    got = {r["id"]: r["row"] for r in rows(root)}
    assert got == {1: 1, 2: 2, 4: 4, 6: 6, 7: 7, 8: 8}
    assert {line for _, line in dead(root)} == {5, 7}  # DuckDB's CSV lines (header is 1)


def test_csv_header_skip_and_quotes_spanning_rejects(tmp_path: Path) -> None:
    root = project(tmp_path, ext="csv", extra=", row_column: row, options: {skip: 2}")
    write(
        root,
        "landing/a.csv",
        'exported by x\nat noon\nid,v\n1,"a\n\nb"\n2,b,X\n3,"c,d"\n4,"e""f"\n',
    )
    assert run(root).ok
    assert {r["id"]: r["row"] for r in rows(root)} == {1: 1, 3: 3, 4: 4}


def test_unicode_and_empty_files(tmp_path: Path) -> None:
    root = project(tmp_path, ext="csv", extra=", row_column: true")
    write(root, "landing/ü.csv", "id,v\n1,Ünïcødé\n2,日本語\n3,\U0001f600\n")
    write(root, "landing/header_only.csv", "id,v\n")
    (root / "landing" / "empty.csv").write_bytes(b"")
    assert run(root).ok
    # The header-only file makes `id` text in this batch (columns are unified by name).
    assert positions(root) == {("landing/ü.csv", str(i)): i for i in (1, 2, 3)}
    nd = project(tmp_path / "nd", extra=", row_column: true")
    write(nd, "landing/a.ndjson", '{"id": 1, "v": "ß"}\n{"id": 2, "v": "\U0001f600"}\n')
    (nd / "landing" / "blank.ndjson").write_bytes(b"\n\n")
    (nd / "landing" / "empty.ndjson").write_bytes(b"")
    assert run(nd).ok
    assert positions(nd) == {("landing/a.ndjson", 1): 1, ("landing/a.ndjson", 2): 2}
    listed = json.loads(CliRunner().invoke(app, ["-C", str(nd), "sources", "--json"]).output)
    assert listed[0]["consumed"] == 2  # the empty file waits for content


def test_row_column_options(tmp_path: Path) -> None:
    assert FilesConfig("x/*.csv").row_column is None
    assert FilesConfig("x/*.csv", row_column=True).row_column == "_source_row"
    assert FilesConfig("x/*.csv", row_column=False).row_column is None
    with pytest.raises(ValueError, match="both"):
        FilesConfig("x/*.csv", row_column="_source_file")
    # Without a file column, and from Python.
    write(tmp_path, "lakeforge.yml", "name: py\n")
    write(
        tmp_path,
        "pipelines/p.py",
        """
        import lakeforge as lf

        @lf.table(layer="bronze",
                  source=lf.files("landing/*.ndjson", file_column=None, row_column="line_no"))
        def raw(source):
            return source
        """,
    )
    write(tmp_path, "landing/a.ndjson", '{"id": 5}\n{"id": 6}\n')
    assert run(tmp_path).ok
    assert sorted((r["id"], r["line_no"]) for r in rows(tmp_path)) == [(5, 1), (6, 2)]
    assert "_source_file" not in rows(tmp_path)[0]


def test_a_data_column_with_the_row_columns_name_is_an_error(tmp_path: Path) -> None:
    root = project(tmp_path, extra=", row_column: n")
    write(root, "landing/a.ndjson", '{"id": 1, "n": 7}\n')
    result = run(root)
    assert not result.ok
    assert "column 'n', the name of the row column" in str(result.tasks[0].error)


def test_replayed_records_keep_their_row_numbers(tmp_path: Path) -> None:
    root = project(tmp_path, ext="csv", extra=", row_column: true")
    write(root, "landing/a.csv", "id,v\n1,a\n2,b,extra\n3,c\n")
    assert run(root).ok
    assert positions(root) == {("landing/a.csv", 1): 1, ("landing/a.csv", 3): 3}
    project(tmp_path, ext="csv", extra=", row_column: true, options: {strict_mode: false}")
    out = CliRunner().invoke(app, ["-C", str(root), "dlq", "replay", "raw", "--json"])
    assert json.loads(out.output)["replayed"] == 1, out.output
    assert positions(root) == {
        ("landing/a.csv", 1): 1,
        ("landing/a.csv", 2): 2,
        ("landing/a.csv", 3): 3,
    }


def test_row_numbers_refuse_a_read_that_mixes_files() -> None:
    files = pa.array(["a", "a", "b", "a"]).dictionary_encode()
    with pytest.raises(files_module._Interleaved):
        files_module._row_numbers(files)
    ok = pa.array(["b", "b", "a", "c", "c", "c"]).dictionary_encode()
    assert files_module._row_numbers(ok).to_pylist() == [1, 2, 1, 1, 2, 3]


def test_the_default_read_is_unchanged(tmp_path: Path) -> None:
    """No row column: no row-number column, and the file column as before."""
    root = project(tmp_path)
    write(root, "landing/a.ndjson", '{"id": 1}\n')
    assert run(root).ok
    assert rows(root) == [{"id": 1, "_source_file": "landing/a.ndjson"}]


# -- object-store paths without a store ------------------------------------------------------


@pytest.mark.parametrize(
    ("pattern", "key", "matches"),
    [
        ("landing/*.json", "landing/a.json", True),
        ("landing/*.json", "landing/sub/a.json", False),
        ("landing/*.json", "landing/.hidden.json", False),
        ("landing/**/*.json", "landing/a.json", True),
        ("landing/**/*.json", "landing/x/y/a.json", True),
        ("landing/**/*.json", "landing/.tmp/a.json", False),
        ("landing/**", "landing/x/a.csv", True),
        ("landing/day=2024-0?-0[1-3]/*.csv", "landing/day=2024-01-02/a.csv", True),
        ("landing/day=2024-0?-0[!1-3]/*.csv", "landing/day=2024-01-02/a.csv", False),
        ("landing/a+b (1).json", "landing/a+b (1).json", True),
    ],
)
def test_object_globs_read_like_local_globs(pattern: str, key: str, matches: bool) -> None:
    assert objectstore.glob_matcher(pattern)(key) is matches


def test_object_uris_and_their_options(monkeypatch: pytest.MonkeyPatch) -> None:
    uri = objectstore.parse_uri("s3://bucket/landing/*.json")
    assert (uri.store, uri.bucket, uri.key) == ("s3", "bucket", "landing/*.json")
    assert uri.uri("landing/a.json") == "s3://bucket/landing/a.json"
    abfs = objectstore.parse_uri("abfs://box@acct.dfs.core.windows.net/in/*.csv")
    assert (abfs.bucket, abfs.account, abfs.key) == ("box", "acct", "in/*.csv")
    with pytest.raises(ConfigError, match="cannot carry credentials"):
        objectstore.parse_uri("s3://AKIA:secret@bucket/x.json")
    with pytest.raises(ConfigError, match="unsupported object store"):
        objectstore.parse_uri("ftp://host/x.json")
    with pytest.raises(ValueError, match="is a secret"):
        FilesConfig("s3://b/*.json", storage_options={"aws_secret_access_key": "plain"})
    with pytest.raises(ValueError, match="unknown storage option"):
        FilesConfig("s3://b/*.json", storage_options={"endpoint": "x"})
    with pytest.raises(ValueError, match="object-store paths"):
        FilesConfig("landing/*.json", storage_options={"region": "eu-west-1"})
    config = FilesConfig(
        "s3://b/*.json",
        storage_options={"AWS_ENDPOINT_URL": "http://127.0.0.1:9", "aws_secret_access_key": "${S}"},
    )
    monkeypatch.delenv("S", raising=False)
    with pytest.raises(ConfigError, match=r"refers to \$\{S\}, which is not set"):
        objectstore.resolve_options("s3", config.storage_options)
    monkeypatch.setenv("S", "hush")
    monkeypatch.setenv("AWS_REGION", "eu-west-1")
    assert objectstore.resolve_options("s3", config.storage_options) == {
        "endpoint_url": "http://127.0.0.1:9",
        "secret_key": "hush",
        "region": "eu-west-1",
    }
