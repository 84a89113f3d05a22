"""The Redis Streams source against a real Redis server (127.0.0.1:6379): consumer groups,
payloads in a field or as fields, dead letters, acknowledgements only after the commit, and
recovery of entries committed but not acknowledged."""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import redis

from conftest import TlsFiles, free_port
from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.execution.executor import Runner
from lakeforge.execution.results import RunResult
from lakeforge.project.loader import load_project
from lakeforge.sources.redis_streams import RedisStreamsConfig, RedisStreamsSource
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

DATASET = "raw"


@pytest.fixture
def client(redis_url: str) -> Iterator[redis.Redis]:
    conn = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=5)
    yield conn
    conn.close()


def project(root: Path, source: str, extra: str = "") -> Path:
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "lakeforge.yml").write_text("name: brokers\n")
    (root / "models" / f"{DATASET}.sql").write_text(
        f"/* lakeforge\nsource: {source}\n{extra}*/\nSELECT * FROM source\n"
    )
    return root


def run(root: Path, **kwargs: Any) -> RunResult:
    result = Runner(load_project(root)).run(**kwargs)
    assert result.ok, [str(t.error) for t in result.tasks]
    return result


def rows(root: Path, name: str = DATASET) -> list[dict[str, Any]]:
    store = DeltaStore(str(root / "lakehouse"))
    if store.version(name) is None:
        return []
    return store.read(name).to_table().to_pylist()


def version(root: Path) -> int | None:
    return DeltaStore(str(root / "lakehouse")).version(DATASET)


def add(client: redis.Redis, stream: str, *payloads: Any, field: str = "data") -> list[str]:
    ids = []
    for payload in payloads:
        fields = payload if isinstance(payload, dict) else {field: payload}
        ids.append(client.xadd(stream, fields).decode())
    return ids


def unacked(client: redis.Redis, stream: str, group: str = f"lakeforge.{DATASET}") -> int:
    return int(client.xpending(stream, group)["pending"])


def test_json_payloads_dead_letters_and_reruns(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    root = project(
        tmp_path,
        f"{{kind: redis_streams, streams: [{stream}], payload: {{field: data}}, "
        "max_messages_per_batch: 2}",
    )
    ids = add(client, stream, '{"id": 1, "v": "a"}', '{"id": 2, "v": "é"}', "not json")
    ids += add(client, stream, {"other": "x"})  # no `data` field
    ids += add(client, stream, '{"id": 3, "v": "c"}')

    first = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    assert [(r["id"], r["v"]) for r in table] == [(1, "a"), (2, "é"), (3, "c")]
    assert [r["_id"] for r in table] == [ids[0], ids[1], ids[4]]
    assert {r["_stream"] for r in table} == {stream}
    stamp = table[0]["_timestamp"]
    assert int(stamp.timestamp() * 1000) == int(ids[0].split("-")[0])
    assert stamp.tzinfo is not None
    task = first.tasks[0]
    assert task.metrics["source"]["batches"] == 3  # 5 entries, 2 a batch
    assert task.metrics["rows_dlq"] == 2 and task.rows_in == 5

    letters = sorted(rows(root, f"{DATASET}__dlq"), key=lambda r: r["line"])
    assert [r["source_file"] for r in letters] == [f"redis://{stream}"] * 2
    assert [r["line"] for r in letters] == [int(ids[2].split("-")[0]), int(ids[3].split("-")[0])]
    assert letters[0]["error"].startswith(f"entry {ids[2]}: invalid JSON")
    assert letters[0]["raw"] == b"not json"
    assert letters[1]["error"] == f"entry {ids[3]}: no field 'data' in the entry (it has: other)"
    assert unacked(client, stream) == 0

    # A rerun with nothing new is up to date: no new version.
    before = version(root)
    again = run(root)
    assert again.tasks[0].status == "up_to_date"
    assert version(root) == before

    # New entries are picked up, and only they.
    new = add(client, stream, '{"id": 4, "v": "d"}')
    assert "1 new entr(ies)" in "; ".join(Runner(load_project(root)).plan()[0].reasons)
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4]
    state = DeltaStore(str(root / "lakehouse")).state(DATASET)
    assert state is not None and state.last_commit is not None
    assert state.last_commit.source_state == {
        "kind": "redis_streams",
        "ids": {stream: new[0]},
        "entries": 6,
    }


def test_fields_as_columns_and_several_streams(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    orders, payments = redis_stream(), redis_stream()
    root = project(tmp_path, f"{{kind: redis_streams, streams: [{orders}, {payments}]}}")
    add(client, orders, {"id": "1", "name": "ä"}, {"id": "2", "extra": "x"})
    add(client, payments, {"id": "3", "amount": "9.50"})
    add(client, payments, {"id": "4", "bad": b"\xff\xfe"})
    result = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    # Every field of every entry is a text column (a key missing from the first entry is
    # not lost); metadata columns come last.
    assert [(r["id"], r["name"], r["extra"], r["amount"], r["_stream"]) for r in table] == [
        ("1", "ä", None, None, orders),
        ("2", None, "x", None, orders),
        ("3", None, None, "9.50", payments),
    ]
    letters = rows(root, f"{DATASET}__dlq")
    assert len(letters) == 1 and "field(s) 'bad' not UTF-8" in letters[0]["error"]
    assert letters[0]["source_file"] == f"redis://{payments}"
    assert result.tasks[0].metrics["source"]["units"] == 4


def test_xack_only_after_the_commit(
    tmp_path: Path,
    redis_stream: Callable[[], str],
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = redis_stream()
    root = project(
        tmp_path,
        f"{{kind: redis_streams, streams: [{stream}], payload: {{field: data}}, "
        "max_messages_per_batch: 3}",
    )
    add(client, stream, *(json.dumps({"id": i}) for i in range(1, 8)))
    seen: list[tuple[int, list[int], int]] = []
    original = RedisStreamsSource.committed

    def committed(self: RedisStreamsSource, state: dict[str, Any]) -> None:
        # At this moment the batch is in the table and its entries are still pending.
        seen.append((len(rows(root)), sorted(r["id"] for r in rows(root)), unacked(client, stream)))
        original(self, state)

    monkeypatch.setattr(RedisStreamsSource, "committed", committed)
    run(root)
    assert seen == [
        (3, [1, 2, 3], 3),
        (6, [1, 2, 3, 4, 5, 6], 3),
        (7, [1, 2, 3, 4, 5, 6, 7], 1),
    ]
    assert unacked(client, stream) == 0


def test_entries_committed_but_not_acknowledged_are_skipped_not_duplicated(
    tmp_path: Path,
    redis_stream: Callable[[], str],
    client: redis.Redis,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash between a batch's commit and its XACK leaves its entries pending: the next
    run acknowledges them without reading them again, then reads what is new."""
    stream = redis_stream()
    root = project(
        tmp_path,
        f"{{kind: redis_streams, streams: [{stream}], payload: {{field: data}}, "
        "max_messages_per_batch: 2}",
    )
    add(client, stream, *(json.dumps({"id": i}) for i in range(1, 6)))
    with monkeypatch.context() as patch:
        patch.setattr(RedisStreamsSource, "committed", lambda self, state: None)  # "crash"
        run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4, 5]
    assert unacked(client, stream) == 5
    add(client, stream, json.dumps({"id": 6}))
    second = run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4, 5, 6]
    assert unacked(client, stream) == 0
    assert second.tasks[0].metrics["source"]["batches"] == 1


def test_pending_entries_of_a_crashed_batch_are_read_once(
    tmp_path: Path,
    redis_stream: Callable[[], str],
    client: redis.Redis,
) -> None:
    """Entries delivered to the group but never committed — this consumer's from a killed
    run, another (gone) consumer's — are read on the next run, in id order, once."""
    stream = redis_stream()
    group = f"lakeforge.{DATASET}"
    root = project(
        tmp_path, f"{{kind: redis_streams, streams: [{stream}], payload: {{field: data}}}}"
    )
    add(client, stream, *(json.dumps({"id": i}) for i in range(1, 7)))
    client.xgroup_create(stream, group, id="0")
    client.xreadgroup(group, "lakeforge", {stream: ">"}, count=2)  # a killed run's batch
    client.xreadgroup(group, "old-worker", {stream: ">"}, count=2)  # a consumer now gone
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4, 5, 6]
    assert unacked(client, stream) == 0
    consumers = {c["name"].decode(): c["pending"] for c in client.xinfo_consumers(stream, group)}
    assert consumers == {"lakeforge": 0, "old-worker": 0}


def test_a_group_recreated_behind_the_table_reads_nothing_twice(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    group = f"lakeforge.{DATASET}"
    root = project(
        tmp_path, f"{{kind: redis_streams, streams: [{stream}], payload: {{field: data}}}}"
    )
    add(client, stream, json.dumps({"id": 1}), json.dumps({"id": 2}))
    run(root)
    client.xgroup_destroy(stream, group)  # e.g. a Redis restarted without persistence
    add(client, stream, json.dumps({"id": 3}))
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3]
    client.xgroup_destroy(stream, group)
    client.xgroup_create(stream, group, id="0")  # re-created at the start, by hand
    add(client, stream, json.dumps({"id": 4}))
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4]
    assert unacked(client, stream) == 0


def test_start_at_the_end_and_full_refresh(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    root = project(
        tmp_path,
        f'{{kind: redis_streams, streams: [{stream}], start: "$", payload: {{field: data}}}}',
    )
    add(client, stream, json.dumps({"id": 1}))
    run(root)  # creates the group at the stream's end: entry 1 is not read
    assert rows(root) == []
    add(client, stream, json.dumps({"id": 2}), json.dumps({"id": 3}))
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [2, 3]
    # --full-refresh reads again everything the stream holds, into a replaced table.
    run(root, full_refresh=True)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3]
    before = version(root)
    run(root)
    assert version(root) == before


def test_lag_in_status_and_task_metrics(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    config = RedisStreamsConfig(stream, payload={"field": "data"}, max_messages_per_batch=2)
    source = RedisStreamsSource(DATASET, tmp_path, config)
    add(client, stream, *(json.dumps({"id": i}) for i in range(3)))
    status = source.status(source.recover([]))
    assert (status.pending, status.details["lag"]) == (3, {stream: 3})
    assert source.pending(source.recover([])) == f"new entries in {stream} (group not created yet)"
    batches = source.batches(source.recover([]))
    first = next(batches)
    source.committed(first.state)
    assert source.status(source.recover([first.state])).details["lag"] == {stream: 1}
    for batch in batches:
        source.committed(batch.state)
    assert source.metrics() == {"lag": {stream: 0}, "lag_total": 0, "unacknowledged": {stream: 0}}


def test_a_payload_field_named_like_a_metadata_column(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    source = RedisStreamsSource(
        DATASET, tmp_path, RedisStreamsConfig(stream, payload={"field": "data"})
    )
    add(client, stream, json.dumps({"_id": "mongo-style"}))
    with pytest.raises(SourceError, match="'_id' have the name of the source's metadata"):
        list(source.batches(source.recover([])))
    renamed = RedisStreamsSource(
        DATASET,
        tmp_path,
        RedisStreamsConfig(stream, payload={"field": "data"}, metadata_prefix="_redis_"),
    )
    (batch,) = list(renamed.batches(renamed.recover([])))
    assert batch.data.column_names == ["_id", "_redis_stream", "_redis_id", "_redis_timestamp"]


def test_json_payloads_with_different_keys_keep_every_key(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    stream = redis_stream()
    source = RedisStreamsSource(
        DATASET, tmp_path, RedisStreamsConfig(stream, payload={"field": "data"})
    )
    add(client, stream, json.dumps({"id": 1}), json.dumps({"id": 2, "late": "x"}))
    (batch,) = list(source.batches(source.recover([])))
    assert batch.data.column("late").to_pylist() == [None, "x"]


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A TCP port on 127.0.0.1 that accepts connections and never answers."""
    server = socket.socket()
    server.bind(("127.0.0.1", 0))
    server.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        server.settimeout(0.1)
        while not stop.is_set():
            try:
                accepted.append(server.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    yield server.getsockname()[1]
    stop.set()
    thread.join(timeout=5)
    for conn in accepted:
        conn.close()
    server.close()


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.parametrize("server", ["closed", "silent"])
def test_an_unreachable_server_is_a_quick_transient_error(
    tmp_path: Path, server: str, silent_server: int
) -> None:
    port = closed_port() if server == "closed" else silent_server
    config = RedisStreamsConfig("s", url=f"redis://127.0.0.1:{port}/0", timeout=1)
    source = RedisStreamsSource(DATASET, tmp_path, config)
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match=f"Redis at redis://127.0.0.1:{port}/0"):
        source.pending(source.recover([]))
    with pytest.raises(TransientSourceError):
        list(source.batches(source.recover([])))
    status = source.status(source.recover([]))
    assert "error" in status.details
    assert time.monotonic() - started < 10


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="url holds a password"):
        RedisStreamsConfig("s", url="redis://:secret@127.0.0.1:6379/0")
    with pytest.raises(ValueError, match="payload format avro needs field"):
        RedisStreamsConfig("s", payload={"format": "avro", "schema_file": "a.avsc"})
    with pytest.raises(ValueError, match="start 'latest'"):
        RedisStreamsConfig("s", start="latest")
    assert RedisStreamsConfig(["a", "b"], start="1732000000000-0").streams == ["a", "b"]


def test_sql_header_config_is_validated_with_its_location(tmp_path: Path) -> None:
    root = project(tmp_path, "{kind: redis_streams, streams: [s], max_message_per_batch: 2}")
    with pytest.raises(Exception, match="max_message_per_batch") as info:
        load_project(root)
    assert "raw.sql" in str(info.value)


def test_a_key_that_is_not_a_stream(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    key = redis_stream()
    client.set(key, "x")
    source = RedisStreamsSource(DATASET, tmp_path, RedisStreamsConfig(key))
    with pytest.raises(SourceError, match="is not a stream") as info:
        list(source.batches(source.recover([])))
    assert not info.value.retryable


def test_the_cli_shows_the_position(
    tmp_path: Path, redis_stream: Callable[[], str], client: redis.Redis
) -> None:
    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    stream = redis_stream()
    root = project(tmp_path, f"{{kind: redis_streams, streams: [{stream}]}}")
    add(client, stream, {"a": "1"}, {"a": "2"})
    cli = CliRunner()
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert (entry["kind"], entry["consumed"], entry["pending"]) == ("redis_streams", 0, 2)
    run(root)
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    (entry,) = json.loads(listed.output)
    assert (entry["consumed"], entry["pending"], entry["lag"]) == (2, 0, {stream: 0})


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def redis_tls(tmp_path: Path, tls_files: TlsFiles, server_processes: Any) -> Callable[[bool], int]:
    """Start redis-servers that speak only TLS; ``start(auth_clients) -> port``."""
    binary = shutil.which("redis-server") or "/usr/bin/redis-server"
    f = tls_files

    def start(auth_clients: bool) -> int:
        port = free_port()
        server_processes(
            [binary, "--port", "0", "--tls-port", str(port), "--bind", "127.0.0.1",
             "--tls-cert-file", str(f.server_cert), "--tls-key-file", str(f.server_key),
             "--tls-ca-cert-file", str(f.ca),
             "--tls-auth-clients", "yes" if auth_clients else "no",
             "--save", "", "--appendonly", "no", "--dir", str(tmp_path)],
            port,
        )  # fmt: skip
        return port

    return start


def test_tls_with_a_private_ca_and_mutual_tls(
    tmp_path: Path, redis_tls: Callable[[bool], int], tls_files: TlsFiles
) -> None:
    f = tls_files
    for mutual in (False, True):
        port = redis_tls(mutual)
        writer = redis.Redis(
            host="127.0.0.1", port=port, ssl=True, ssl_ca_certs=str(f.ca),
            ssl_certfile=str(f.client_cert), ssl_keyfile=str(f.client_key),
        )  # fmt: skip
        add(writer, "events", *(json.dumps({"id": i}) for i in range(3)))
        writer.close()
        tls: dict[str, Any] = {"ca_file": str(f.ca)}
        if mutual:
            tls.update(cert_file=str(f.client_cert), key_file=str(f.client_key))
        source = {"kind": "redis_streams", "streams": "events", "payload": {"field": "data"},
                  "url": f"redis://127.0.0.1:{port}/0", "tls": tls}  # fmt: skip
        root = project(tmp_path / f"p-{mutual}", json.dumps(source))
        run(root)
        assert sorted(r["id"] for r in rows(root)) == [0, 1, 2], mutual


def test_tls_failures_say_what_to_fix(
    tmp_path: Path, redis_tls: Callable[[bool], int], tls_files: TlsFiles
) -> None:
    f = tls_files
    plain, mutual = redis_tls(False), redis_tls(True)

    def failure(name: str, port: int, tls: Any) -> str:
        source = {"kind": "redis_streams", "streams": "events", "timeout": 2,
                  "url": f"rediss://127.0.0.1:{port}/0", "tls": tls}  # fmt: skip
        result = Runner(load_project(project(tmp_path / name, json.dumps(source)))).run()
        assert not result.ok
        error = result.tasks[0].error
        return f"{error} {getattr(error, 'hint', '')}"

    assert "certificate is not trusted" in failure("a", plain, {"ca_file": str(f.other_ca)})
    assert "certificate is not trusted" in failure("b", plain, True)
    assert "client certificate" in failure("c", mutual, {"ca_file": str(f.ca)})
    message = failure("d", plain, {"ca_file": "ca/missing.pem"})
    assert "tls: ca_file ca/missing.pem does not exist" in message
    with pytest.raises(ValueError, match="unix:// socket does not speak TLS"):
        RedisStreamsConfig("s", url="unix:///tmp/redis.sock", tls=True)
    with pytest.raises(ValueError, match="server_name is not supported"):
        RedisStreamsConfig("s", tls={"server_name": "cache.internal"})
