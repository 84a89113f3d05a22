"""The file source on an object store: ``s3://`` paths against moto's S3 server — every
format through the local read path, exactly once across runs, changed objects, dead letters
with their object URI and line, replay from the bucket, and no credentials at rest."""

from __future__ import annotations

import gzip
import io
import json
import textwrap
import uuid
from pathlib import Path
from typing import Any

import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from typer.testing import CliRunner

from lakeforge.cli.app import app
from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

KEY_ID = "LFTESTKEYID0001"
SECRET = "lf-test-secret-0c3b1e"


@pytest.fixture
def bucket(s3_endpoint: str, monkeypatch: pytest.MonkeyPatch) -> Any:
    """A new, empty bucket; credentials in the standard AWS environment variables."""
    import boto3

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_SESSION_TOKEN", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", KEY_ID)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", SECRET)
    monkeypatch.setenv("AWS_REGION", "us-east-1")
    client = boto3.client("s3", endpoint_url=s3_endpoint, region_name="us-east-1")
    name = f"lf-{uuid.uuid4().hex[:12]}"
    client.create_bucket(Bucket=name)
    return Bucket(client, name, s3_endpoint)


class Bucket:
    def __init__(self, client: Any, name: str, endpoint: str) -> None:
        self.client, self.name, self.endpoint = client, name, endpoint

    def put(self, key: str, body: bytes) -> str:
        self.client.put_object(Bucket=self.name, Key=key, Body=body)
        return f"s3://{self.name}/{key}"


def project(root: Path, source: str) -> Path:
    root.mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: objects\n")
    (root / "models").mkdir(exist_ok=True)
    (root / "models" / "raw.sql").write_text(
        textwrap.dedent(
            f"""
            /* lakeforge
            layer: bronze
            source: {source}
            */
            SELECT * FROM source
            """
        ).lstrip()
    )
    return root


def run(root: Path, **kw: Any) -> Any:
    return Runner(load_project(root)).run(**kw)


def table(root: Path, name: str = "raw") -> list[dict[str, Any]]:
    store = DeltaStore(str(root / "lakehouse"))
    return store.read(name).to_table().to_pylist() if store.exists(name) else []


def ndjson(*ids: int) -> bytes:
    return b"".join(json.dumps({"id": i, "v": f"r{i}"}).encode() + b"\n" for i in ids)


def cli(root: Path, *args: str) -> Any:
    result = CliRunner().invoke(app, ["-C", str(root), *args])
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def test_ndjson_objects_are_ingested_exactly_once(tmp_path: Path, bucket: Bucket) -> None:
    src = (
        f'{{path: "s3://{bucket.name}/landing/*.ndjson", '
        f'storage_options: {{endpoint_url: "{bucket.endpoint}"}}}}'
    )
    root = project(tmp_path, src)
    a = bucket.put("landing/a.ndjson", ndjson(1, 2))
    bucket.put("landing/sub/nested.ndjson", ndjson(99))  # `*` stays in its folder
    bucket.put("other/b.ndjson", ndjson(98))
    assert run(root).ok
    assert sorted((r["id"], r["_source_file"]) for r in table(root)) == [(1, a), (2, a)]
    store = DeltaStore(str(root / "lakehouse"))
    version = store.version("raw")

    # Nothing new: no new Delta version.
    again = run(root)
    assert again.ok and again.tasks[0].status == "up_to_date" and store.version("raw") == version

    # Files added later are picked up by the next run, and only they.
    b = bucket.put("landing/b.ndjson", ndjson(3))
    plan = Runner(load_project(root)).plan()
    assert plan[0].stale and plan[0].reason == f"new file {b}"
    assert run(root).ok
    assert sorted(r["id"] for r in table(root)) == [1, 2, 3]
    ledger = next(store.commit_infos("raw")).source_state["files"]
    assert set(ledger) == {a, b}
    size, mtime, etag = ledger[b]
    assert size == len(ndjson(3)) and mtime > 0 and len(etag) == 32  # the object's MD5 ETag

    listed = cli(root, "sources", "--json")[0]
    assert listed["target"] == f"s3://{bucket.name}/landing/*.ndjson"
    assert listed["consumed"] == 2 and listed["pending"] == 0


def test_a_changed_object_is_reported_and_reread_only_when_allowed(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)  # the endpoint from the environment
    pattern = f"s3://{bucket.name}/in/*.ndjson"
    root = project(tmp_path, f'{{path: "{pattern}"}}')
    a = bucket.put("in/a.ndjson", ndjson(1))
    assert run(root).ok
    bucket.put("in/a.ndjson", ndjson(1, 9))  # overwritten in place (another size)
    plan = Runner(load_project(root)).plan()
    assert not plan[0].stale
    listed = cli(root, "sources", "--json")[0]
    assert listed["changed_files"] == [a] and listed["pending"] == 0
    assert run(root).tasks[0].status == "up_to_date"
    assert sorted(r["id"] for r in table(root)) == [1]

    project(tmp_path, f'{{path: "{pattern}", allow_overwrites: true}}')
    assert run(root).ok
    assert sorted(r["id"] for r in table(root)) == [1, 1, 9]
    assert cli(root, "sources", "--json")[0]["changed_files"] == []


@pytest.mark.parametrize(
    ("pattern", "objects", "expected"),
    [
        (
            "csv/*.csv.gz",
            {"csv/a.csv.gz": gzip.compress(b"id,v\n1,x\n2,y\n")},
            [(1, 1), (2, 2)],
        ),
        (
            # `*/` would end the SQL header: YAML's `\/` escape keeps the `**` glob in it.
            "nd/**\\/*.ndjson.gz",
            {
                "nd/a.ndjson.gz": gzip.compress(ndjson(1, 2)),
                "nd/day=2/b.ndjson.gz": gzip.compress(ndjson(3)),
                "nd/.tmp/c.ndjson.gz": gzip.compress(ndjson(4)),  # hidden: not matched
            },
            [(1, 1), (2, 2), (3, 1)],
        ),
        ("pq/*.parquet", {"pq/a.parquet": None}, [(5, 1), (6, 2), (7, 3)]),
        ("js/*.json", {"js/a.json": b'[{"id": 4}, {"id": 8}]'}, [(4, 1), (8, 2)]),
    ],
)
def test_every_format_and_compression_with_row_numbers(
    tmp_path: Path,
    bucket: Bucket,
    pattern: str,
    objects: dict[str, bytes | None],
    expected: list[tuple[int, int]],
) -> None:
    for key, body in objects.items():
        if body is None:
            out = io.BytesIO()
            pq.write_table(pa.table({"id": [5, 6, 7]}), out, compression="zstd")
            body = out.getvalue()
        bucket.put(key, body)
    src = (
        f'{{path: "s3://{bucket.name}/{pattern}", row_column: true, '
        f'storage_options: {{AWS_ENDPOINT_URL: "{bucket.endpoint}", region: us-east-1}}}}'
    )
    root = project(tmp_path, src)
    result = run(root)
    assert result.ok, [str(t.error) for t in result.tasks]
    rows = table(root)
    assert sorted((r["id"], r["_source_row"]) for r in rows) == expected
    matched = {k for k in objects if "/." not in k}
    assert {r["_source_file"] for r in rows} == {f"s3://{bucket.name}/{k}" for k in matched}


def test_a_bad_line_goes_to_the_dlq_with_its_object_uri_and_line(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    root = project(tmp_path, f'{{path: "s3://{bucket.name}/landing/*.ndjson", row_column: true}}')
    uri = bucket.put("landing/a.ndjson", b'{"id": 1}\n{"id": 2, oops\n{"id": 3}\n')
    result = run(root)
    assert result.ok and result.tasks[0].metrics["rows_dlq"] == 1
    assert sorted((r["id"], r["_source_row"]) for r in table(root)) == [(1, 1), (3, 3)]
    (letter,) = table(root, "raw__dlq")
    assert (letter["source_file"], letter["line"]) == (uri, 2)
    assert letter["raw"] == b'{"id": 2, oops'


def test_a_whole_object_rejected_is_replayed_from_the_bucket(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("AWS_ENDPOINT_URL", bucket.endpoint)
    root = project(tmp_path, f'{{path: "s3://{bucket.name}/pq/*.parquet"}}')
    out = io.BytesIO()
    pq.write_table(pa.table({"id": [1]}), out)
    bucket.put("pq/good.parquet", out.getvalue())
    bad = bucket.put("pq/bad.parquet", b"PAR1 broken")
    assert run(root).ok and sorted(r["id"] for r in table(root)) == [1]
    assert [d["source_file"] for d in table(root, "raw__dlq")] == [bad]
    fixed = io.BytesIO()
    pq.write_table(pa.table({"id": [2, 3]}), fixed)
    bucket.put("pq/bad.parquet", fixed.getvalue())  # fixed upstream
    replayed = cli(root, "dlq", "replay", "raw", "--json")
    assert replayed["replayed"] == 1
    assert sorted((r["id"], r["_source_file"]) for r in table(root))[1:] == [(2, bad), (3, bad)]
    # The re-read object's new signature is in the ledger: not changed, nothing pending.
    listed = cli(root, "sources", "--json")[0]
    assert listed["changed_files"] == [] and listed["pending"] == 0


def test_credentials_are_not_stored_and_errors_do_not_show_them(
    tmp_path: Path, bucket: Bucket, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    monkeypatch.setenv("LANDING_SECRET", SECRET)
    src = (
        f'{{path: "s3://{bucket.name}/landing/*.ndjson", storage_options: '
        f'{{endpoint_url: "{bucket.endpoint}", aws_access_key_id: {KEY_ID}, '
        "aws_secret_access_key: '${LANDING_SECRET}'}}"
    )
    root = project(tmp_path, src)
    bucket.put("landing/a.ndjson", ndjson(1))
    result = run(root)
    assert result.ok, [str(t.error) for t in result.tasks]
    assert SECRET not in json.dumps(result.to_dict(), default=str)
    for path in root.rglob("*"):
        if path.is_file():
            assert SECRET.encode() not in path.read_bytes(), path

    # An unreachable endpoint: a clear error, the plan still works, no secret in sight.
    project(
        tmp_path,
        src.replace(bucket.endpoint, "http://127.0.0.1:9").replace("landing/", "later/"),
    )
    plan = Runner(load_project(root)).plan()
    assert "source not reachable" in plan[0].reason
    failed = run(root)
    assert not failed.ok
    message = str(failed.tasks[0].error)
    assert "s3://" in message and SECRET not in message
