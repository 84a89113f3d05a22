"""The MQTT source against a real broker (Mosquitto on 127.0.0.1:1883): a persistent session
with manual acknowledgements, wildcards, dead letters, acknowledgements only after the
commit, and messages delivered again after a crash skipped (committed) or read (not)."""

from __future__ import annotations

import json
import shutil
import socket
import ssl
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import paho.mqtt.client as mqtt
import pytest
from paho.mqtt.enums import CallbackAPIVersion

from conftest import TlsFiles, free_port
from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.execution.executor import Runner
from lakeforge.execution.results import RunResult
from lakeforge.project.loader import load_project
from lakeforge.sources.mqtt import MqttConfig, MqttSource
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration

DATASET = "raw"


class Publisher:
    """A QoS 1 publisher; ``publish`` returns once the broker has the message."""

    def __init__(
        self, host: str, port: int, client_id: str, tls: ssl.SSLContext | None = None
    ) -> None:
        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2, client_id=client_id, protocol=mqtt.MQTTv5
        )
        if tls is not None:
            self.client.tls_set_context(tls)
        self.client.connect(host, port)
        self.client.loop_start()

    def publish(self, topic: str, *payloads: Any, retain: bool = False) -> None:
        for payload in payloads:
            body = payload if isinstance(payload, bytes | str) else json.dumps(payload)
            self.client.publish(topic, body, qos=1, retain=retain).wait_for_publish(5)

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


@pytest.fixture
def publisher(mqtt_broker: tuple[str, int], mqtt_names: str) -> Iterator[Publisher]:
    pub = Publisher(*mqtt_broker, f"{mqtt_names}-pub")
    yield pub
    pub.close()


def header(names: str, **extra: Any) -> str:
    fields = {
        "kind": "mqtt",
        "topics": [f"{names}/+/telemetry", f"{names}/alerts/#"],
        "client_id": f"{names}-bronze",
        "idle_seconds": 0.5,
        "session_expiry_seconds": 300,  # the broker forgets the test's session after it
        **extra,
    }
    return json.dumps(fields)


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


def test_messages_wildcards_dead_letters_and_reruns(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    root = project(tmp_path, header(mqtt_names, max_messages_per_batch=3))
    first = run(root)  # creates the session: from now on the broker keeps messages for it
    assert "(nothing new to read)" in first.tasks[0].reason and rows(root) == []

    n = mqtt_names
    publisher.publish(f"{n}/dev1/telemetry", {"id": 1, "t": 20.5}, {"id": 2, "t": 21.0})
    publisher.publish(f"{n}/dev2/telemetry", {"id": 3, "t": 19.0}, "not json")
    publisher.publish(f"{n}/alerts/fire/zone-1", {"id": 4, "t": 99.0}, b"")
    publisher.publish(f"{n}/other/topic", {"id": 99})  # not subscribed
    second = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    assert [(r["id"], r["_topic"]) for r in table] == [
        (1, f"{n}/dev1/telemetry"),
        (2, f"{n}/dev1/telemetry"),
        (3, f"{n}/dev2/telemetry"),
        (4, f"{n}/alerts/fire/zone-1"),
    ]
    assert all(r["_received_at"].tzinfo is not None for r in table)
    task = second.tasks[0]
    assert task.rows_in == 6 and task.metrics["rows_dlq"] == 2
    assert task.metrics["source"]["batches"] == 2  # 6 messages, 3 a batch
    letters = sorted(rows(root, f"{DATASET}__dlq"), key=lambda r: r["error"])
    assert [(r["source_file"], r["line"]) for r in letters] == [
        (f"mqtt://{n}/alerts/fire/zone-1", None),
        (f"mqtt://{n}/dev2/telemetry", None),
    ]
    assert letters[0]["error"] == "empty message"
    assert letters[1]["error"].startswith("invalid JSON") and letters[1]["raw"] == b"not json"

    # Nothing new: the broker is asked (each run), nothing is committed.
    before = version(root)
    again = run(root)
    assert "(nothing new to read)" in again.tasks[0].reason
    assert version(root) == before

    publisher.publish(f"{n}/dev3/telemetry", {"id": 5, "t": 1.0})
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2, 3, 4, 5]


def test_messages_published_while_no_run_is_connected_are_kept(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    root = project(tmp_path, header(mqtt_names))
    run(root)
    for i in range(50):  # the run is over: the broker queues them for the session
        publisher.publish(f"{mqtt_names}/d/telemetry", {"id": i})
    run(root)
    assert sorted(r["id"] for r in rows(root)) == list(range(50))


def test_acknowledged_only_after_the_commit(
    tmp_path: Path,
    publisher: Publisher,
    mqtt_names: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    root = project(tmp_path, header(mqtt_names, max_messages_per_batch=2))
    run(root)
    publisher.publish(f"{mqtt_names}/d/telemetry", *({"id": i} for i in range(5)))
    acked: list[tuple[int, list[int]]] = []
    original = MqttSource.committed

    def committed(self: MqttSource, state: dict[str, Any]) -> None:
        # Called with the batch in the table; its acknowledgements go out only now.
        table = sorted(r["id"] for r in rows(root))
        acked.append((len(self._unacked[state["messages"]]), table))
        original(self, state)

    monkeypatch.setattr(MqttSource, "committed", committed)
    run(root)
    assert acked == [(2, [0, 1]), (2, [0, 1, 2, 3]), (1, [0, 1, 2, 3, 4])]


def test_committed_but_unacknowledged_messages_are_skipped_when_delivered_again(
    tmp_path: Path,
    publisher: Publisher,
    mqtt_names: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash between a commit and its acknowledgements: the broker delivers the messages
    again (DUP, same packet ids); they are in the state's window, acknowledged and skipped.
    Identical payloads are different messages: each is kept once, and a new one with the
    same payload is read."""
    # (A batch holds them all: unacknowledged, the broker would send no more than a batch.)
    root = project(tmp_path, header(mqtt_names, max_messages_per_batch=10))
    run(root)
    topic = f"{mqtt_names}/d/telemetry"
    same = {"id": 0, "t": 1}
    publisher.publish(topic, same, same, {"id": 1, "t": 2}, {"id": 2, "t": 2}, {"id": 3, "t": 2})
    with monkeypatch.context() as patch:
        patch.setattr(MqttSource, "committed", lambda self, state: None)  # never acks
        run(root)
    assert len(rows(root)) == 5
    publisher.publish(topic, same)  # new, not a redelivery: read
    result = run(root)
    table = rows(root)
    assert len(table) == 6
    assert sorted(r["id"] for r in table) == [0, 0, 0, 1, 2, 3]
    assert result.tasks[0].rows_in == 1

    # All acknowledged now: nothing comes again.
    before = version(root)
    run(root)
    assert version(root) == before


def test_a_batch_that_was_not_committed_is_read_again(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    """A blocked batch (quality gate) is not committed and not acknowledged: the broker
    delivers it again (DUP), and it is read then — it is not in the window."""
    check = "checks: [{type: range, column: t, max: 50}]\n"
    root = project(tmp_path, header(mqtt_names), check)
    run(root)
    publisher.publish(f"{mqtt_names}/d/telemetry", {"id": 1, "t": 99}, {"id": 2, "t": 5})
    blocked = Runner(load_project(root)).run()
    assert not blocked.ok and rows(root) == []
    project(tmp_path, header(mqtt_names))  # the check is relaxed
    run(root)
    assert sorted(r["id"] for r in rows(root)) == [1, 2]


def test_id_field_skips_a_producers_duplicates(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    root = project(tmp_path, header(mqtt_names, id_field="event_id"))
    run(root)
    topic = f"{mqtt_names}/d/telemetry"
    publisher.publish(topic, {"event_id": "a", "v": 1}, {"event_id": "b", "v": 2})
    publisher.publish(topic, {"event_id": "a", "v": 1})  # the producer retried
    run(root)
    publisher.publish(topic, {"event_id": "b", "v": 2}, {"event_id": "c", "v": 3})
    second = run(root)
    assert sorted(r["event_id"] for r in rows(root)) == ["a", "b", "c"]
    assert second.tasks[0].rows_in == 1


def test_retained_messages_are_read_once(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    topic = f"{mqtt_names}/d/telemetry"
    publisher.publish(topic, {"id": 0}, retain=True)
    root = project(tmp_path, header(mqtt_names))
    try:
        run(root)  # the new subscription gets the retained message
        run(root)  # the session has the subscription: not sent again
        assert [r["id"] for r in rows(root)] == [0]
    finally:
        publisher.publish(topic, b"", retain=True)  # clears the retained message


def test_full_refresh_is_refused(tmp_path: Path, publisher: Publisher, mqtt_names: str) -> None:
    root = project(tmp_path, header(mqtt_names))
    run(root)
    publisher.publish(f"{mqtt_names}/d/telemetry", {"id": 1})
    run(root)
    refreshed = Runner(load_project(root)).run(full_refresh=True)
    assert not refreshed.ok
    assert "cannot read again what it has read" in str(refreshed.tasks[0].error)
    assert [r["id"] for r in rows(root)] == [1]


def test_the_run_stops_after_max_run_seconds_while_messages_keep_coming(
    tmp_path: Path, publisher: Publisher, mqtt_names: str
) -> None:
    root = project(tmp_path, header(mqtt_names, max_run_seconds=1.5, max_batch_seconds=0.5))
    run(root)
    stop = threading.Event()
    sent: list[int] = []

    def produce() -> None:
        while not stop.is_set():
            publisher.publish(f"{mqtt_names}/d/telemetry", {"id": len(sent)})
            sent.append(len(sent))
            time.sleep(0.02)

    thread = threading.Thread(target=produce)
    thread.start()
    try:
        started = time.monotonic()
        run(root)
        assert time.monotonic() - started < 1.5 + 5  # start-up and the last commit
    finally:
        stop.set()
        thread.join()
    run(root)  # the rest, now that the producer has stopped
    assert sorted(r["id"] for r in rows(root)) == sent


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


def test_an_unreachable_broker_is_a_quick_transient_error(
    tmp_path: Path, silent_server: int
) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        closed = sock.getsockname()[1]
    source = MqttSource(DATASET, tmp_path, MqttConfig("t/#", client_id="x", port=closed))
    started = time.monotonic()
    with pytest.raises(TransientSourceError, match=f"127.0.0.1:{closed} is not reachable"):
        source.pending(source.recover([]))
    with pytest.raises(TransientSourceError, match="is not reachable"):
        list(source.batches(source.recover([])))
    assert "error" in source.status(source.recover([])).details
    # A server that accepts the connection but never answers: no CONNACK within `timeout`.
    silent = MqttSource(
        DATASET, tmp_path, MqttConfig("t/#", client_id="x", port=silent_server, timeout=1)
    )
    with pytest.raises(TransientSourceError, match="did not accept the connection within 1s"):
        list(silent.batches(silent.recover([])))
    assert time.monotonic() - started < 10


def test_a_second_client_with_the_same_id_is_a_clear_error(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_names: str
) -> None:
    config = MqttConfig(
        f"{mqtt_names}/#", client_id=f"{mqtt_names}-c", idle_seconds=3, session_expiry_seconds=60
    )
    source = MqttSource(DATASET, tmp_path, config)
    thieves: list[Publisher] = []
    # Once the source is connected and waiting for messages, another client takes its
    # session over.
    timer = threading.Timer(1.0, lambda: thieves.append(Publisher(*mqtt_broker, config.client_id)))
    timer.start()
    try:
        with pytest.raises(TransientSourceError, match="closed the connection") as info:
            next(source.batches(source.recover([])))
        assert "same client_id" in (info.value.hint or "")
    finally:
        timer.join()
        for thief in thieves:
            thief.close()


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="'#' must be a whole level, and the last"):
        MqttConfig("a/#/b", client_id="x")
    with pytest.raises(ValueError, match="'\\+' must be a whole level"):
        MqttConfig("a/b+", client_id="x")
    with pytest.raises(ValueError, match="shared subscriptions"):
        MqttConfig("$share/g/a", client_id="x")
    with pytest.raises(ValueError, match="dedup_window 10 is below max_messages_per_batch"):
        MqttConfig("a", client_id="x", dedup_window=10, max_messages_per_batch=20)
    with pytest.raises(ValueError, match="dedup_window 40000 is too large without id_field"):
        MqttConfig("a", client_id="x", dedup_window=40000)
    assert MqttConfig("a", client_id="x", dedup_window=40000, id_field="id").window == 40000
    with pytest.raises(ValueError, match="client_id"):
        MqttConfig("a")  # type: ignore[call-arg]
    with pytest.raises(ValueError, match="qos"):
        MqttConfig("a", client_id="x", qos=0)  # type: ignore[arg-type]
    with pytest.raises(SourceError, match="MQTT_PW"):
        source = MqttSource(
            DATASET,
            Path("."),
            MqttConfig("a", client_id="x", username="u", password_env="MQTT_PW_UNSET_XYZ"),
        )
        list(source.batches(source.recover([])))


# -- TLS ------------------------------------------------------------------------------------


@pytest.fixture
def mosquitto_tls(tmp_path: Path, tls_files: TlsFiles, server_processes: Any) -> Any:
    """Start Mosquitto brokers with a TLS listener; ``start(require_certificate) -> port``."""
    binary = shutil.which("mosquitto") or "/usr/sbin/mosquitto"

    def start(require_certificate: bool) -> int:
        port = free_port()
        conf = tmp_path / f"mosquitto-{port}.conf"
        conf.write_text(
            "user root\npersistence false\nallow_anonymous true\n"
            f"listener {port} 127.0.0.1\n"
            f"cafile {tls_files.ca}\ncertfile {tls_files.server_cert}\n"
            f"keyfile {tls_files.server_key}\n"
            f"require_certificate {str(require_certificate).lower()}\n"
        )
        server_processes([binary, "-c", str(conf)], port)
        return port

    return start


def test_tls_with_a_private_ca_and_mutual_tls(
    tmp_path: Path, mosquitto_tls: Any, tls_files: TlsFiles, mqtt_names: str
) -> None:
    f = tls_files
    for mutual in (False, True):
        port = mosquitto_tls(mutual)
        context = ssl.create_default_context(cafile=str(f.ca))
        if mutual:
            context.load_cert_chain(str(f.client_cert), str(f.client_key))
        tls: dict[str, Any] = {"ca_file": str(f.ca)}
        if mutual:
            tls.update(cert_file=str(f.client_cert), key_file=str(f.client_key))
        root = project(
            tmp_path / f"p-{mutual}", header(mqtt_names, host="localhost", port=port, tls=tls)
        )
        run(root)  # creates the session
        publisher = Publisher("localhost", port, f"{mqtt_names}-pub", tls=context)
        try:
            publisher.publish(f"{mqtt_names}/dev1/telemetry", *({"id": i} for i in range(3)))
        finally:
            publisher.close()
        run(root)
        assert sorted(r["id"] for r in rows(root)) == [0, 1, 2], mutual


def test_tls_failures_say_what_to_fix(
    tmp_path: Path, mosquitto_tls: Any, tls_files: TlsFiles, mqtt_names: str
) -> None:
    f = tls_files
    plain, mutual = mosquitto_tls(False), mosquitto_tls(True)

    def failure(name: str, port: int, tls: Any) -> str:
        root = project(tmp_path / name, header(mqtt_names, port=port, tls=tls, timeout=2))
        result = Runner(load_project(root)).run()
        assert not result.ok
        error = result.tasks[0].error
        return f"{error} {getattr(error, 'hint', '')}"

    message = failure("a", plain, {"ca_file": str(f.other_ca)})
    assert "(TLS) is not reachable" in message and "certificate is not trusted" in message
    message = failure("b", plain, True)  # the system's CAs
    assert "certificate is not trusted" in message
    message = failure("c", mutual, {"ca_file": str(f.ca)})
    assert "client certificate" in message
    message = failure("d", plain, {"ca_file": "nowhere/ca.pem"})
    assert "tls: ca_file nowhere/ca.pem does not exist" in message
