"""The Kafka source against librdkafka's mock cluster (3 brokers, the real protocol): JSON
and Avro payloads, several partitions, dead letters with their offsets, reruns, offsets
committed to the group only after the Delta commit, and a restart that resumes from the
table whatever the group's committed offsets say."""

from __future__ import annotations

import io
import json
import socket
import struct
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.execution.executor import Runner
from lakeforge.execution.results import RunResult
from lakeforge.project.loader import load_project
from lakeforge.sources.kafka import KafkaConfig, KafkaSource, Position
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

DATASET = "raw"
GROUP = f"lakeforge.{DATASET}"
PARTITIONS = 4  # the mock cluster's default for a new topic


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


def table_offsets(root: Path) -> dict[str, dict[str, int]]:
    state = DeltaStore(str(root / "lakehouse")).state(DATASET)
    assert state is not None and state.last_commit is not None
    assert state.last_commit.source_state is not None
    return dict(state.last_commit.source_state["offsets"])


def produce(cluster: Any, topic: str, messages: list[tuple[int, bytes | None]]) -> list[int]:
    """Produce (partition, value) messages, keyed by their index; returns their offsets."""
    offsets: list[int] = [-1] * len(messages)

    def delivered(index: int) -> Callable[[Any, Any], None]:
        def callback(error: Any, msg: Any) -> None:
            assert error is None, error
            offsets[index] = msg.offset()

        return callback

    for index, (partition, value) in enumerate(messages):
        cluster.producer.produce(
            topic,
            value=value,
            key=f"k{index}".encode(),
            partition=partition,
            headers=[("h", f"v{index}".encode())],
            on_delivery=delivered(index),
        )
    assert cluster.producer.flush(10) == 0
    return offsets


def group_offsets(cluster: Any, topic: str) -> dict[int, int]:
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": GROUP})
    try:
        parts = [confluent_kafka.TopicPartition(topic, p) for p in range(PARTITIONS)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


def set_group_offsets(cluster: Any, topic: str, offsets: dict[int, int]) -> None:
    import confluent_kafka

    consumer = confluent_kafka.Consumer({"bootstrap.servers": cluster.bootstrap, "group.id": GROUP})
    try:
        consumer.commit(
            offsets=[confluent_kafka.TopicPartition(topic, p, o) for p, o in offsets.items()],
            asynchronous=False,
        )
    finally:
        consumer.close()


def kafka_source(cluster: Any, topic: str, **options: Any) -> str:
    fields = ", ".join(f"{k}: {v}" for k, v in options.items())
    return f"{{kind: kafka, brokers: '{cluster.bootstrap}', topic: {topic}" + (
        f", {fields}}}" if fields else "}"
    )


def test_json_partitions_dead_letters_reruns_and_new_messages(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    root = project(tmp_path, kafka_source(kafka_cluster, topic, max_messages_per_batch=7))
    messages: list[tuple[int, bytes | None]] = [
        (i % PARTITIONS, json.dumps({"id": i, "v": f"é{i}"}).encode()) for i in range(24)
    ]
    messages[5] = (1, b'{"id": 5, oops')
    messages[10] = (2, None)  # a tombstone: nothing to decode
    offsets = produce(kafka_cluster, topic, messages)

    first = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    good = [i for i in range(24) if i not in (5, 10)]
    assert [r["id"] for r in table] == good
    for r in table:
        i = r["id"]
        assert (r["_topic"], r["_partition"], r["_offset"]) == (topic, i % PARTITIONS, offsets[i])
        assert (r["_key"], r["v"]) == (f"k{i}", f"é{i}")
        assert r["_timestamp"].tzinfo is not None
        assert abs(r["_timestamp"].timestamp() - time.time()) < 120
    assert "_headers" not in table[0]
    task = first.tasks[0]
    assert task.metrics["source"]["batches"] == 4  # 24 messages, 7 a batch
    assert task.metrics["rows_dlq"] == 2 and task.rows_in == 24

    letters = sorted(rows(root, f"{DATASET}__dlq"), key=lambda r: r["source_file"])
    assert [(r["source_file"], r["line"]) for r in letters] == [
        (f"kafka://{topic}/1", offsets[5]),
        (f"kafka://{topic}/2", offsets[10]),
    ]
    assert letters[0]["raw"] == b'{"id": 5, oops' and "invalid JSON" in letters[0]["error"]
    assert letters[1]["error"] == "empty message"

    # The position is in the table, and committed to the group after it.
    ends = {p: 1 + max(offsets[i] for i in range(24) if i % PARTITIONS == p) for p in range(4)}
    assert table_offsets(root) == {topic: {str(p): ends[p] for p in range(PARTITIONS)}}
    assert group_offsets(kafka_cluster, topic) == ends

    # A rerun with nothing new is up to date: no new version.
    before = version(root)
    assert run(root).tasks[0].status == "up_to_date"
    assert version(root) == before

    # New messages are picked up, and only they.
    more = produce(kafka_cluster, topic, [(3, b'{"id": 100, "v": "x"}'), (0, b'{"id": 101}')])
    reasons = "; ".join(Runner(load_project(root)).plan()[0].reasons)
    assert "2 new message(s) in 2 partition(s)" in reasons
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [*good, 100, 101]
    assert group_offsets(kafka_cluster, topic) == {**ends, 3: more[0] + 1, 0: more[1] + 1}


def test_avro_payloads_headers_and_bytes_keys(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    import fastavro

    schema = {
        "type": "record",
        "name": "Reading",
        "fields": [{"name": "device", "type": "string"}, {"name": "temp", "type": "double"}],
    }
    (tmp_path / "reading.avsc").write_text(json.dumps(schema))
    parsed = fastavro.parse_schema(schema)

    def avro(record: dict[str, Any], confluent: bool = False) -> bytes:
        out = io.BytesIO()
        fastavro.schemaless_writer(out, parsed, record)
        return (b"\x00" + struct.pack(">I", 7) if confluent else b"") + out.getvalue()

    topic = kafka_topic()
    root = project(
        tmp_path,
        kafka_source(
            kafka_cluster,
            topic,
            payload="{format: avro, schema_file: reading.avsc}",
            headers="true",
            key_format="bytes",
        ),
    )
    offsets = produce(
        kafka_cluster,
        topic,
        [
            (0, avro({"device": "a", "temp": 21.5})),
            (1, avro({"device": "b", "temp": -3.0}, confluent=True)),
            (1, b"\x02"),  # truncated: not a record
        ],
    )
    run(root)
    table = sorted(rows(root), key=lambda r: r["device"])
    assert [(r["device"], r["temp"], r["_key"]) for r in table] == [
        ("a", 21.5, b"k0"),
        ("b", -3.0, b"k1"),
    ]
    assert table[0]["_headers"] == [{"key": "h", "value": b"v0"}]
    (letter,) = rows(root, f"{DATASET}__dlq")
    assert (letter["source_file"], letter["line"]) == (f"kafka://{topic}/1", offsets[2])
    assert letter["error"].startswith("invalid Avro")


def test_offsets_are_committed_to_the_group_only_after_the_delta_commit(
    tmp_path: Path,
    kafka_cluster: Any,
    kafka_topic: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    topic = kafka_topic()
    root = project(
        tmp_path,
        kafka_source(kafka_cluster, topic, max_messages_per_batch=3),
        "checks: [{type: range, column: id, max: 100}]\n",
    )
    # One partition, so the batches are [0 1 2] [3 4 5] [6 999 8]: the third is blocked.
    values = [json.dumps({"id": 999 if i == 7 else i}).encode() for i in range(9)]
    produce(kafka_cluster, topic, [(0, v) for v in values])
    seen: list[tuple[list[int], dict[int, int]]] = []
    original = KafkaSource.committed

    def committed(self: KafkaSource, state: dict[str, Any]) -> None:
        # At this moment the batch is in the table, and the group has not moved yet.
        seen.append((sorted(r["id"] for r in rows(root)), group_offsets(kafka_cluster, topic)))
        original(self, state)

    monkeypatch.setattr(KafkaSource, "committed", committed)
    blocked = Runner(load_project(root)).run()
    assert not blocked.ok
    assert [ids for ids, _ in seen] == [[0, 1, 2], [0, 1, 2, 3, 4, 5]]
    assert [group[0] for _, group in seen] == [-1001, 3]  # -1001: no offset committed yet
    assert group_offsets(kafka_cluster, topic)[0] == 6  # not 9: batch 3 was not published
    assert table_offsets(root) == {topic: {"0": 6, "1": 0, "2": 0, "3": 0}}


def test_a_restart_resumes_from_the_table_whatever_the_group_says(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    root = project(tmp_path, kafka_source(kafka_cluster, topic, max_messages_per_batch=5))
    produce(kafka_cluster, topic, [(i % 2, json.dumps({"id": i}).encode()) for i in range(10)])
    run(root)
    assert table_offsets(root)[topic] == {"0": 5, "1": 5, "2": 0, "3": 0}
    # The group's offsets are moved: behind the table on partition 0 (a commit that was
    # lost), ahead of it on partition 1 (someone else's consumer under the same group).
    set_group_offsets(kafka_cluster, topic, {0: 1, 1: 9})
    produce(kafka_cluster, topic, [(i % 2, json.dumps({"id": i}).encode()) for i in range(10, 14)])
    run(root)
    ids = [r["id"] for r in rows(root)]
    assert sorted(ids) == list(range(14)), "lost or duplicated messages"
    assert group_offsets(kafka_cluster, topic) == {0: 7, 1: 7, 2: 0, 3: 0}


def test_start_latest_reads_only_what_comes_after_the_first_run(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    root = project(tmp_path, kafka_source(kafka_cluster, topic, start="latest"))
    produce(kafka_cluster, topic, [(0, b'{"id": 1}'), (1, b'{"id": 2}')])
    first = run(root)
    assert first.tasks[0].metrics["source"]["batches"] == 0 and version(root) is None
    # The start is pinned in the group: what comes between two runs is not skipped.
    assert group_offsets(kafka_cluster, topic) == {0: 1, 1: 1, 2: 0, 3: 0}
    produce(kafka_cluster, topic, [(0, b'{"id": 3}'), (2, b'{"id": 4}')])
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [3, 4]
    # --full-refresh starts from `start` again: the latest offsets now, nothing to read.
    result = run(root, full_refresh=True)
    assert result.tasks[0].metrics["source"]["batches"] == 0
    assert sorted(r["id"] for r in rows(root)) == [3, 4]


def test_full_refresh_reads_the_topic_again(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    root = project(tmp_path, kafka_source(kafka_cluster, topic))
    produce(kafka_cluster, topic, [(p, json.dumps({"id": p}).encode()) for p in range(4)])
    run(root)
    run(root, full_refresh=True)
    assert sorted(r["id"] for r in rows(root)) == [0, 1, 2, 3]


def test_lag_in_status_and_source_metrics(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    produce(kafka_cluster, topic, [(0, b'{"id": 1}'), (0, b'{"id": 2}'), (3, b'{"id": 3}')])
    config = KafkaConfig(topic, brokers=kafka_cluster.bootstrap, max_messages_per_batch=2)
    source = KafkaSource(DATASET, tmp_path, config)
    status = source.status(source.recover([]))
    assert status.pending == 3
    assert status.details["lag"] == {topic: {"0": 2, "1": 0, "2": 0, "3": 1}}
    assert source.pending(source.recover([])) == "3 new message(s) in 2 partition(s)"
    batches = source.batches(source.recover([]))
    first = next(batches)
    source.committed(first.state)
    assert source.status(source.recover([first.state])).pending == 1
    for batch in batches:
        source.committed(batch.state)
    assert source.metrics() == {"lag": {topic: dict.fromkeys("0123", 0)}, "lag_total": 0}
    done = source.recover([batch.state])
    assert source.pending(done) is None and done.messages == 3


def test_the_cli_shows_offsets_and_lag(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    topic = kafka_topic()
    root = project(tmp_path, kafka_source(kafka_cluster, topic))
    produce(kafka_cluster, topic, [(1, b'{"a": 1}'), (1, b'{"a": 2}')])
    cli = CliRunner()
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert (entry["kind"], entry["consumed"], entry["pending"]) == ("kafka", 0, 2)
    run(root)
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    (entry,) = json.loads(listed.output)
    assert (entry["consumed"], entry["pending"], entry["group"]) == (2, 0, GROUP)
    assert entry["offsets"] == {topic: {"0": 0, "1": 2, "2": 0, "3": 0}}


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.fixture
def silent_server() -> Iterator[int]:
    """A port that accepts connections and never says anything."""
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(8)
    accepted: list[socket.socket] = []
    stop = threading.Event()

    def serve() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                accepted.append(listener.accept()[0])
            except OSError:
                continue

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    yield int(listener.getsockname()[1])
    stop.set()
    thread.join(5)
    for conn in accepted:
        conn.close()
    listener.close()


@pytest.mark.slow
@pytest.mark.parametrize("server", ["closed", "silent"])
def test_an_unreachable_cluster_is_a_quick_transient_error(
    tmp_path: Path, server: str, silent_server: int
) -> None:
    port = closed_port() if server == "closed" else silent_server
    config = KafkaConfig("t", brokers=f"127.0.0.1:{port}", timeout=1)
    source = KafkaSource(DATASET, tmp_path, config)
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match=f"Kafka at 127.0.0.1:{port}: no metadata"):
        source.pending(source.recover([]))
    with pytest.raises(TransientSourceError):
        list(source.batches(source.recover([])))
    assert "error" in source.status(source.recover([])).details
    assert time.monotonic() - started < 15


def test_a_topic_that_does_not_exist(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    source = KafkaSource(
        DATASET, tmp_path, KafkaConfig(kafka_topic(), brokers=kafka_cluster.bootstrap)
    )
    with pytest.raises(SourceError, match="does not exist") as info:
        list(source.batches(source.recover([])))
    assert not info.value.retryable


def test_a_payload_field_named_like_a_metadata_column(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    produce(kafka_cluster, topic, [(0, b'{"_offset": 1, "id": 2}')])
    source = KafkaSource(DATASET, tmp_path, KafkaConfig(topic, brokers=kafka_cluster.bootstrap))
    with pytest.raises(
        SourceError, match="'_offset' have the name of the source's metadata"
    ) as info:
        list(source.batches(source.recover([])))
    assert "metadata_prefix" in (info.value.hint or "")
    config = KafkaConfig(topic, brokers=kafka_cluster.bootstrap, metadata_prefix="_kafka_")
    (batch,) = KafkaSource(DATASET, tmp_path, config).batches(Position())
    assert batch.data.column("_offset").to_pylist() == [1]
    assert batch.data.column("_kafka_offset").to_pylist() == [0]


def test_configuration_errors(monkeypatch: pytest.MonkeyPatch) -> None:
    with pytest.raises(ValueError, match=r"'sasl\.password' is a secret"):
        KafkaConfig("t", brokers="b:9092", config={"sasl.password": "hunter2"})
    with pytest.raises(
        ValueError, match=r"'group\.id' is set by Lakeforge: use the source's 'group'"
    ):
        KafkaConfig("t", brokers="b:9092", config={"group.id": "x"})
    with pytest.raises(ValueError, match="topic or topics, not both"):
        KafkaConfig(brokers="b:9092", topic="a", topics=["b"])
    config = KafkaConfig(
        brokers="b1:9092, b2:9092",
        topic="a",
        config={"sasl.password": "${LF_KAFKA_PASSWORD}", "security.protocol": "SASL_SSL"},
    )
    assert (config.brokers, config.topics) == (["b1:9092", "b2:9092"], ["a"])
    monkeypatch.delenv("LF_KAFKA_PASSWORD", raising=False)
    with pytest.raises(SourceError, match=r"refers to \$\{LF_KAFKA_PASSWORD\}, which is not set"):
        config.resolved("raw")
    monkeypatch.setenv("LF_KAFKA_PASSWORD", "s3cret")
    assert config.resolved("raw")["sasl.password"] == "s3cret"


def test_sql_header_config_is_validated_with_its_location(tmp_path: Path) -> None:
    root = project(tmp_path, "{kind: kafka, brokers: 'b:9092', topic: t, max_message_per_batch: 2}")
    with pytest.raises(Exception, match="max_message_per_batch") as info:
        load_project(root)
    assert "raw.sql" in str(info.value)


def test_a_position_past_the_end_of_a_partition_is_an_error(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    """A topic deleted and created again starts its offsets at 0: the table's offsets are
    past its end, and reading on would skip its messages until they catch up."""
    topic = kafka_topic()
    produce(kafka_cluster, topic, [(0, b'{"id": 1}')])
    source = KafkaSource(DATASET, tmp_path, KafkaConfig(topic, brokers=kafka_cluster.bootstrap))
    position = Position({(topic, 0): 50, (topic, 1): 0, (topic, 2): 0, (topic, 3): 0})
    assert source.pending(position) == f"read past the end of {topic}/0 (see the run's error)"
    with pytest.raises(SourceError, match=f"{topic}/0 up to offset 50, past the partition's end"):
        list(source.batches(position))
    (batch,) = source.batches(source.fresh())  # what --full-refresh does
    assert batch.data.column("id").to_pylist() == [1]


def test_a_python_pipeline_declares_the_source_with_lf_kafka(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    (tmp_path / "pipelines").mkdir()
    (tmp_path / "lakeforge.yml").write_text("name: brokers\n")
    (tmp_path / "pipelines" / "ingest.py").write_text(
        "import lakeforge as lf\n\n\n"
        f"@lf.table(layer='bronze', source=lf.kafka({topic!r}, "
        f"brokers={kafka_cluster.bootstrap!r}, max_messages_per_batch=1))\n"
        "def raw(source):\n"
        "    return source.filter('id > 1')\n"
    )
    produce(kafka_cluster, topic, [(2, b'{"id": 1}'), (2, b'{"id": 2}'), (2, b'{"id": 3}')])
    result = run(tmp_path)
    assert result.tasks[0].metrics["source"]["batches"] == 3
    assert sorted(r["id"] for r in rows(tmp_path)) == [2, 3]


def test_several_topics_and_a_topic_added_later(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    """A topic added to ``topics`` is read from its first offset, whatever ``start`` says:
    ``start`` applies only when the table has no Kafka position at all."""
    first, second = kafka_topic(), kafka_topic()
    produce(kafka_cluster, first, [(0, b'{"id": 1}')])
    produce(kafka_cluster, second, [(1, b'{"id": 2}')])
    root = project(tmp_path, kafka_source(kafka_cluster, first, start="latest"))
    run(root)  # the first run pins `latest`: nothing read
    produce(kafka_cluster, first, [(0, b'{"id": 4}')])
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [4]
    (root / "models" / f"{DATASET}.sql").write_text(
        f"/* lakeforge\nsource: {{kind: kafka, brokers: '{kafka_cluster.bootstrap}', "
        f"topics: [{first}, {second}], start: latest}}\n*/\nSELECT * FROM source\n"
    )
    run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    assert [(r["id"], r["_topic"]) for r in table] == [(2, second), (4, first)]
    assert set(table_offsets(root)) == {first, second}
