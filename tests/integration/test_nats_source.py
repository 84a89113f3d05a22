"""The NATS JetStream source against a real nats-server (127.0.0.1:4222): a durable pull
consumer with ack-all, subjects, dead letters, acks only after the Delta commit, and a
consumer brought back in step with the table after a crash on either side of a commit."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import socket
import threading
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from conftest import NATS_URL, JetStreamAdmin, TlsFiles, free_port
from lakeforge.errors import SourceError, TransientSourceError
from lakeforge.execution.executor import Runner
from lakeforge.execution.results import RunResult
from lakeforge.project.loader import load_project
from lakeforge.sources import nats as nats_module
from lakeforge.sources.nats import NatsSource, Position
from lakeforge.sources.nats_config import NatsConfig
from lakeforge.sources.nats_pull import Pulled, PullRequests
from lakeforge.storage.delta import DeltaStore

pytestmark = pytest.mark.integration


DATASET = "raw"
DURABLE = f"lakeforge_{DATASET}"


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


def ids(root: Path) -> list[int]:
    return sorted(r["id"] for r in rows(root))


def version(root: Path) -> int | None:
    return DeltaStore(str(root / "lakehouse")).version(DATASET)


def nats_source(stream: str, **options: Any) -> str:
    fields = "".join(f", {k}: {v}" for k, v in options.items())
    return f"{{kind: nats, stream: {stream}, subject: '{stream}.>'{fields}}}"


def publish(admin: Any, subject: str, *records: Any) -> list[int]:
    return [
        admin.publish(subject, r if isinstance(r, bytes) else json.dumps(r).encode())
        for r in records
    ]


def acked(admin: Any, stream: str) -> tuple[int, int]:
    """(ack floor's stream sequence, messages delivered and not acked) of the consumer."""
    info = admin.consumer_info(stream, DURABLE)
    return int(info.ack_floor.stream_seq), int(info.num_ack_pending)


def test_json_subjects_dead_letters_reruns_and_new_messages(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    stream = nats_stream()
    root = project(
        tmp_path,
        f"{{kind: nats, stream: {stream}, subject: '{stream}.orders.*', "
        "max_messages_per_batch: 4, headers: true}",
    )
    seqs = publish(nats_jetstream, f"{stream}.orders.eu", *({"id": i, "v": "a"} for i in range(5)))
    publish(nats_jetstream, f"{stream}.other", {"id": 99})  # not the source's subject
    seqs += publish(nats_jetstream, f"{stream}.orders.us", b"{oops", b"", {"id": 5, "v": "é"})
    nats_jetstream.publish(f"{stream}.orders.us", b'{"id": 6}', headers={"trace": "t-6"})
    seqs.append(seqs[-1] + 1)

    first = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    assert [r["id"] for r in table] == [0, 1, 2, 3, 4, 5, 6]
    assert [r["_stream_seq"] for r in table] == [*seqs[:5], seqs[7], seqs[8]]
    assert [r["_subject"] for r in table] == [f"{stream}.orders.eu"] * 5 + [
        f"{stream}.orders.us"
    ] * 2
    assert table[5]["v"] == "é" and table[0]["_timestamp"].tzinfo is not None
    assert abs(table[0]["_timestamp"].timestamp() - time.time()) < 120
    assert table[6]["_headers"] == [{"key": "trace", "value": "t-6"}]
    task = first.tasks[0]
    assert task.metrics["source"]["batches"] == 3  # 9 messages, 4 a batch
    assert task.metrics["rows_dlq"] == 2 and task.rows_in == 9

    letters = sorted(rows(root, f"{DATASET}__dlq"), key=lambda r: r["line"])
    assert [(r["source_file"], r["line"]) for r in letters] == [
        (f"nats://{stream}/{stream}.orders.us", seqs[5]),
        (f"nats://{stream}/{stream}.orders.us", seqs[6]),
    ]
    assert letters[0]["raw"] == b"{oops" and "invalid JSON" in letters[0]["error"]
    assert letters[1]["error"] == "empty message"
    assert acked(nats_jetstream, stream) == (seqs[-1], 0)
    state = DeltaStore(str(root / "lakehouse")).state(DATASET)
    assert state is not None and state.last_commit is not None
    assert state.last_commit.source_state == {"kind": "nats", "seq": seqs[-1], "messages": 9}

    # A rerun with nothing new is up to date: no new version.
    before = version(root)
    assert run(root).tasks[0].status == "up_to_date"
    assert version(root) == before

    # New messages are picked up, and only they.
    new = publish(nats_jetstream, f"{stream}.orders.eu", {"id": 7}, {"id": 8})
    reasons = "; ".join(Runner(load_project(root)).plan()[0].reasons)
    assert f"2 new message(s) in {stream}" in reasons
    run(root)
    assert ids(root) == list(range(9))
    assert acked(nats_jetstream, stream) == (new[-1], 0)


def test_acks_only_after_the_delta_commit(
    tmp_path: Path,
    nats_jetstream: Any,
    nats_stream: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    stream = nats_stream()
    root = project(tmp_path, nats_source(stream, max_messages_per_batch=3))
    seqs = publish(nats_jetstream, f"{stream}.a", *({"id": i} for i in range(7)))
    seen: list[tuple[list[int], tuple[int, int]]] = []
    original = NatsSource.committed

    def committed(self: NatsSource, state: dict[str, Any]) -> None:
        # At this moment the batch is in the table, and not acknowledged yet.
        seen.append((ids(root), acked(nats_jetstream, stream)))
        original(self, state)

    monkeypatch.setattr(NatsSource, "committed", committed)
    run(root)
    # Unacknowledged at each commit: the batch itself, and the next one, pulled while it was
    # processed (none after the last).
    assert seen == [
        ([0, 1, 2], (0, 3 + 3)),
        ([0, 1, 2, 3, 4, 5], (seqs[2], 3 + 1)),
        ([0, 1, 2, 3, 4, 5, 6], (seqs[5], 1)),
    ]
    assert acked(nats_jetstream, stream) == (seqs[-1], 0)


def test_messages_committed_but_not_acked_are_skipped_when_redelivered(
    tmp_path: Path,
    nats_jetstream: Any,
    nats_stream: Callable[[], str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """A crash between a batch's commit and its ack: JetStream redelivers the batch after
    ``ack_wait``; the next run acks those messages and skips them (they are in the table),
    and reads only what is new."""
    stream = nats_stream()
    root = project(tmp_path, nats_source(stream, max_messages_per_batch=2, ack_wait=1))
    publish(nats_jetstream, f"{stream}.a", *({"id": i} for i in range(5)))
    with monkeypatch.context() as patch:
        patch.setattr(NatsSource, "committed", lambda self, state: None)  # "crash"
        run(root)
    assert ids(root) == [0, 1, 2, 3, 4]
    assert acked(nats_jetstream, stream) == (0, 5)
    # Nothing new: the unacked messages are in the table, so nothing is pending.
    assert Runner(load_project(root)).plan()[0].reasons == []
    # JetStream redelivers them to the next pull once their ack_wait (1 s) is over.
    deadline = time.monotonic() + 10
    while True:
        info = nats_jetstream.consumer_info(stream, DURABLE)
        idle = dt.datetime.now(dt.UTC) - info.delivered.last_active
        if idle > dt.timedelta(seconds=1.5):
            break
        assert time.monotonic() < deadline, f"the consumer was active {idle} ago"
        time.sleep(0.1)
    fetched: list[int] = []
    original = PullRequests.pull

    async def pull(self: Any, *args: Any, **kwargs: Any) -> Pulled:
        got = await original(self, *args, **kwargs)
        fetched.extend(got.seqs)
        return got

    monkeypatch.setattr(PullRequests, "pull", pull)
    new = publish(nats_jetstream, f"{stream}.a", {"id": 5})
    second = run(root)
    assert sorted(fetched) == [1, 2, 3, 4, 5, 6], "the committed messages were not redelivered"
    assert ids(root) == [0, 1, 2, 3, 4, 5]
    assert second.tasks[0].metrics["source"]["units"] == 1
    assert acked(nats_jetstream, stream) == (new[0], 0)


def test_a_batch_delivered_but_never_committed_is_read_again_at_once(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    """A crash before a batch's commit leaves its messages delivered and unacked: the
    consumer is created again at the table's sequence, so they are read now (not after
    ``ack_wait``), and once."""
    stream = nats_stream()
    root = project(tmp_path, nats_source(stream))
    publish(nats_jetstream, f"{stream}.a", {"id": 0}, {"id": 1})
    run(root)
    publish(nats_jetstream, f"{stream}.a", *({"id": i} for i in range(2, 6)))
    # A killed run's fetch: delivered to the durable consumer, never acked.
    sub = nats_jetstream.run(nats_jetstream.js.pull_subscribe_bind(DURABLE, stream))
    got = nats_jetstream.run(sub.fetch(3, timeout=2))
    assert len(got) == 3
    nats_jetstream.run(sub.unsubscribe())
    reasons = "; ".join(Runner(load_project(root)).plan()[0].reasons)
    assert "3 delivered message(s) not committed" in reasons
    run(root)
    assert ids(root) == [0, 1, 2, 3, 4, 5]
    info = nats_jetstream.consumer_info(stream, DURABLE)
    assert (info.num_pending, info.num_ack_pending, info.num_redelivered) == (0, 0, 0)


def test_a_deleted_consumer_or_one_of_another_configuration_is_recreated_at_the_table(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    from nats.js.api import AckPolicy, ConsumerConfig

    stream = nats_stream()
    root = project(tmp_path, nats_source(stream))
    publish(nats_jetstream, f"{stream}.a", {"id": 0}, {"id": 1})
    run(root)
    nats_jetstream.run(nats_jetstream.js.delete_consumer(stream, DURABLE))
    publish(nats_jetstream, f"{stream}.a", {"id": 2})
    run(root)
    assert ids(root) == [0, 1, 2]
    # Someone re-creates it by hand, from the start and with explicit acks.
    nats_jetstream.run(nats_jetstream.js.delete_consumer(stream, DURABLE))
    config = ConsumerConfig(durable_name=DURABLE, ack_policy=AckPolicy.EXPLICIT)
    nats_jetstream.run(nats_jetstream.js.add_consumer(stream, config))
    publish(nats_jetstream, f"{stream}.a", {"id": 3})
    run(root)
    assert ids(root) == [0, 1, 2, 3]
    info = nats_jetstream.consumer_info(stream, DURABLE)
    assert info.config.ack_policy == AckPolicy.ALL and info.num_ack_pending == 0


def test_start_new_and_full_refresh(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    stream = nats_stream()
    root = project(tmp_path, nats_source(stream, start="new"))
    publish(nats_jetstream, f"{stream}.a", {"id": 0})
    first = run(root)
    assert first.tasks[0].metrics["source"]["batches"] == 0 and version(root) is None
    # The consumer keeps the start: what comes between two runs is read.
    publish(nats_jetstream, f"{stream}.a", {"id": 1}, {"id": 2})
    run(root)
    assert ids(root) == [1, 2]
    # --full-refresh starts from `start` again: new messages only, so nothing now.
    run(root, full_refresh=True)
    assert ids(root) == [1, 2]

    other = nats_stream()
    root = project(tmp_path / "all", nats_source(other))
    publish(nats_jetstream, f"{other}.a", {"id": 0}, {"id": 1})
    run(root)
    run(root, full_refresh=True)
    assert ids(root) == [0, 1]


def test_several_subjects(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    stream = nats_stream()
    root = project(
        tmp_path, f"{{kind: nats, stream: {stream}, subjects: ['{stream}.a', '{stream}.b']}}"
    )
    publish(nats_jetstream, f"{stream}.a", {"id": 0})
    publish(nats_jetstream, f"{stream}.c", {"id": 1})
    publish(nats_jetstream, f"{stream}.b", {"id": 2})
    server = nats_jetstream.nc.connected_server_version
    if (server.major, server.minor) >= (2, 10):
        run(root)
        assert ids(root) == [0, 2]
    else:  # filter_subjects came with nats-server 2.10
        result = Runner(load_project(root)).run()
        assert "needs NATS server 2.10 or later" in str(result.tasks[0].error)


def test_lag_in_status_and_source_metrics(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    stream = nats_stream()
    config = NatsConfig(stream, subject=f"{stream}.>", max_messages_per_batch=2)
    source = NatsSource(DATASET, tmp_path, config)
    publish(nats_jetstream, f"{stream}.a", *({"id": i} for i in range(3)))
    status = source.status(source.recover([]))
    assert (status.pending, status.details["lag"]) == (3, 3)
    assert source.pending(source.recover([])) == (
        f"3 new message(s) in {stream} (consumer not created yet)"
    )
    batches = source.batches(source.recover([]))
    first = next(batches)
    source.committed(first.state)
    for batch in batches:
        source.committed(batch.state)
    assert source.metrics() == {"lag": 0, "unacknowledged": 0}
    done = source.recover([batch.state, first.state])
    assert (done.seq, done.messages) == (3, 3)
    assert source.pending(done) is None
    assert source.status(done).details["lag"] == 0


def test_the_cli_shows_the_position(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    from typer.testing import CliRunner

    from lakeforge.cli.app import app

    stream = nats_stream()
    root = project(tmp_path, nats_source(stream))
    publish(nats_jetstream, f"{stream}.a", {"a": 1}, {"a": 2})
    cli = CliRunner()
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    assert listed.exit_code == 0, listed.output
    (entry,) = json.loads(listed.output)
    assert (entry["kind"], entry["consumed"], entry["pending"]) == ("nats", 0, 2)
    run(root)
    listed = cli.invoke(app, ["--project-dir", str(root), "sources", "--json"])
    (entry,) = json.loads(listed.output)
    assert (entry["consumed"], entry["pending"], entry["seq"], entry["durable"]) == (
        2,
        0,
        2,
        DURABLE,
    )


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


def closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@pytest.mark.slow
@pytest.mark.parametrize("server", ["closed", "silent"])
def test_an_unreachable_server_is_a_quick_transient_error(
    tmp_path: Path, server: str, silent_server: int
) -> None:
    port = closed_port() if server == "closed" else silent_server
    config = NatsConfig("S", servers=f"nats://127.0.0.1:{port}", timeout=1)
    source = NatsSource(DATASET, tmp_path, config)
    started = time.monotonic()
    with pytest.raises(
        TransientSourceError, match=f"cannot connect to NATS at nats://127.0.0.1:{port}"
    ):
        source.pending(source.recover([]))
    with pytest.raises(TransientSourceError):
        list(source.batches(source.recover([])))
    assert "error" in source.status(source.recover([])).details
    assert time.monotonic() - started < 15


def test_a_stream_that_does_not_exist(tmp_path: Path, nats_jetstream: Any) -> None:
    source = NatsSource(DATASET, tmp_path, NatsConfig("LF_TEST_NO_SUCH_STREAM"))
    with pytest.raises(SourceError, match="'LF_TEST_NO_SUCH_STREAM' does not exist") as info:
        list(source.batches(source.recover([])))
    assert not info.value.retryable
    with pytest.raises(SourceError, match="does not exist"):
        source.pending(source.recover([]))


def test_configuration_errors() -> None:
    with pytest.raises(ValueError, match="a secret"):
        NatsConfig("S", user="u", password="hunter2")
    with pytest.raises(ValueError, match="password needs user"):
        NatsConfig("S", password="${LF_NATS_PASSWORD}")
    with pytest.raises(ValueError, match="must not contain"):
        NatsConfig("S.x")
    with pytest.raises(ValueError, match="subject or subjects, not both"):
        NatsConfig("S", subject="a", subjects=["b"])
    config = NatsConfig(stream="S", subject="a.>", servers="nats://h1:4222, nats://h2:4222")
    assert (config.subjects, config.servers) == (["a.>"], ["nats://h1:4222", "nats://h2:4222"])


def test_sql_header_config_is_validated_with_its_location(tmp_path: Path) -> None:
    root = project(tmp_path, "{kind: nats, stream: S, max_message_per_batch: 2}")
    with pytest.raises(Exception, match="max_message_per_batch") as info:
        load_project(root)
    assert "raw.sql" in str(info.value)


def test_a_position_past_the_end_of_the_stream_is_an_error(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    """A stream deleted and created again starts its sequences at 1 again."""
    stream = nats_stream()
    publish(nats_jetstream, f"{stream}.a", {"id": 1})
    source = NatsSource(DATASET, tmp_path, NatsConfig(stream))
    position = Position(seq=40, messages=40)
    assert source.pending(position) == f"read past the end of {stream} (see the run's error)"
    with pytest.raises(SourceError, match="up to sequence 40, past its last message"):
        list(source.batches(position))
    (batch,) = source.batches(source.fresh())  # what --full-refresh does
    assert batch.data.column("id").to_pylist() == [1]


# -- the message path: the wire reader, or nats-py's subscription --------------------------


def spy_pullers(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """The names of the pull readers the NATS source uses from now on."""
    used: list[str] = []
    original = NatsSource._puller

    def puller(self: NatsSource, nc: Any) -> Any:
        chosen = original(self, nc)
        used.append(type(chosen).__name__)
        return chosen

    monkeypatch.setattr(NatsSource, "_puller", puller)
    return used


@pytest.fixture(params=["wire", "nats-py"])
def message_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> Iterator[str]:
    """Run a test over each message path; ``nats-py`` is what a creds file gets."""
    if request.param == "nats-py":
        monkeypatch.setattr(nats_module, "wire_credentials", lambda url, options: None)
    used = spy_pullers(monkeypatch)
    yield request.param
    assert set(used) == {"WirePuller" if request.param == "wire" else "Puller"}


def test_both_message_paths_read_headers_dead_letters_and_batches_alike(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str], message_path: str
) -> None:
    stream = nats_stream()
    root = project(tmp_path, nats_source(stream, max_messages_per_batch=3, headers="true"))
    publish(nats_jetstream, f"{stream}.a", *({"id": i, "v": "é" * i} for i in range(5)))
    publish(nats_jetstream, f"{stream}.b", b"{oops")
    nats_jetstream.publish(f"{stream}.b", b'{"id": 5}', headers={"trace": "t-5"})
    result = run(root)
    table = sorted(rows(root), key=lambda r: r["id"])
    assert [r["id"] for r in table] == [0, 1, 2, 3, 4, 5]
    assert table[4]["v"] == "éééé" and table[0]["_subject"] == f"{stream}.a"
    assert table[5]["_headers"] == [{"key": "trace", "value": "t-5"}]
    assert result.tasks[0].metrics["source"]["batches"] == 3
    letters = rows(root, f"{DATASET}__dlq")
    assert [(r["raw"], r["line"]) for r in letters] == [(b"{oops", 6)]
    assert acked(nats_jetstream, stream) == (7, 0)


@pytest.fixture
def nats_with_auth(tmp_path: Path, server_processes: Any) -> Callable[..., str]:
    """Start nats-server processes (JetStream on) with flags (credentials, TLS): a factory
    ``start(*flags) -> url``; the servers are stopped after the test."""
    binary = shutil.which("nats-server") or "/usr/sbin/nats-server"

    def start(*flags: str) -> str:
        port = free_port()
        store = tmp_path / f"nats-{port}"
        argv = [binary, "-a", "127.0.0.1", "-p", str(port), "-js", "-sd", str(store), *flags]
        server_processes(argv, port)
        return f"nats://127.0.0.1:{port}"

    return start


@pytest.mark.parametrize(
    ("flags", "source_auth", "url_auth"),
    [
        (("--user", "lf", "--pass", "s3cret"), "user: lf, password: '${NATS_PW}'", ""),
        (("--auth", "t0ken"), "token: '${NATS_TOKEN}'", ""),
        (("--user", "lf", "--pass", "s3cret"), "", "lf:s3cret@"),
    ],
    ids=["user-password", "token", "credentials-in-url"],
)
def test_the_wire_reader_authenticates_as_nats_py_does(
    tmp_path: Path,
    nats_with_auth: Callable[..., str],
    monkeypatch: pytest.MonkeyPatch,
    flags: tuple[str, ...],
    source_auth: str,
    url_auth: str,
) -> None:
    monkeypatch.setenv("NATS_PW", "s3cret")
    monkeypatch.setenv("NATS_TOKEN", "t0ken")
    url = nats_with_auth(*flags)
    admin_auth = "t0ken@" if "--auth" in flags else "lf:s3cret@"
    admin = JetStreamAdmin(url.replace("nats://", "nats://" + admin_auth))
    try:
        admin.run(admin.js.add_stream(name="AUTH", subjects=["AUTH.>"]))
        publish(admin, "AUTH.x", *({"id": i} for i in range(4)))
        server = url.replace("nats://", "nats://" + url_auth)
        extra = f", {source_auth}" if source_auth else ""
        root = project(tmp_path / "p", f"{{kind: nats, stream: AUTH, servers: '{server}'{extra}}}")
        used = spy_pullers(monkeypatch)
        run(root)
        assert ids(root) == [0, 1, 2, 3] and used == ["WirePuller"]
    finally:
        admin.close()


# -- TLS ------------------------------------------------------------------------------------


def tls_admin(url: str, files: TlsFiles, *, client_cert: bool = False) -> JetStreamAdmin:
    import ssl

    context = ssl.create_default_context(cafile=str(files.ca))
    if client_cert:
        context.load_cert_chain(str(files.client_cert), str(files.client_key))
    return JetStreamAdmin(url, tls=context)


def tls_project(root: Path, url: str, tls: str) -> Path:
    return project(root, f"{{kind: nats, stream: SAFE, servers: '{url}', tls: {tls}}}")


def test_tls_with_a_private_ca_and_mutual_tls_on_both_message_paths(
    tmp_path: Path,
    nats_with_auth: Callable[..., str],
    tls_files: TlsFiles,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    f = tls_files
    server = ("--tls", "--tlscert", str(f.server_cert), "--tlskey", str(f.server_key))
    for mutual in (False, True):
        flags = (*server, "--tlsverify", "--tlscacert", str(f.ca)) if mutual else server
        url = nats_with_auth(*flags)
        admin = tls_admin(url, f, client_cert=mutual)
        try:
            admin.run(admin.js.add_stream(name="SAFE", subjects=["SAFE.>"]))
            publish(admin, "SAFE.x", *({"id": i, "v": "ü"} for i in range(5)))
            client = f", cert_file: {f.client_cert}, key_file: {f.client_key}" if mutual else ""
            for path in ("wire", "nats-py"):
                root = tls_project(
                    tmp_path / f"{mutual}-{path}", url, f"{{ca_file: {f.ca}{client}}}"
                )
                with monkeypatch.context() as m:
                    if path == "nats-py":
                        m.setattr(nats_module, "wire_credentials", lambda url, options: None)
                    used = spy_pullers(m)
                    run(root)
                assert ids(root) == [0, 1, 2, 3, 4], (mutual, path)
                assert used == ["WirePuller" if path == "wire" else "Puller"]
                admin.run(admin.js.delete_consumer("SAFE", f"lakeforge_{DATASET}"))
        finally:
            admin.close()


def test_tls_failures_say_what_to_fix(
    tmp_path: Path, nats_with_auth: Callable[..., str], tls_files: TlsFiles
) -> None:
    f = tls_files
    server = ("--tls", "--tlscert", str(f.server_cert), "--tlskey", str(f.server_key))
    url = nats_with_auth(*server)
    mutual_url = nats_with_auth(*server, "--tlsverify", "--tlscacert", str(f.ca))

    def failure(root: Path) -> str:
        result = Runner(load_project(root)).run()
        assert not result.ok
        error = result.tasks[0].error
        return f"{error} {getattr(error, 'hint', '')}"

    # The server's certificate is signed by a CA the source does not trust.
    message = failure(tls_project(tmp_path / "a", url, f"{{ca_file: {f.other_ca}}}"))
    assert "certificate is not trusted" in message and "ca_file" in message
    message = failure(tls_project(tmp_path / "b", url, "true"))  # the system's CAs
    assert "certificate is not trusted" in message
    # The server wants a client certificate.
    message = failure(tls_project(tmp_path / "c", mutual_url, f"{{ca_file: {f.ca}}}"))
    assert "cannot connect to NATS" in message and "client certificate" in message
    # tls: asked of a server that does not speak it: refused, never sent in the clear.
    message = failure(tls_project(tmp_path / "d", NATS_URL, f"{{ca_file: {f.ca}}}"))
    assert "does not require TLS" in message and "not be encrypted" in message
    message = failure(tls_project(tmp_path / "e", url, "{ca_file: missing.pem}"))
    assert "tls: ca_file missing.pem does not exist" in message
    # verify: false accepts the certificate unchecked (a test bench).
    admin = tls_admin(url, f)
    try:
        admin.run(admin.js.add_stream(name="SAFE", subjects=["SAFE.>"]))
        publish(admin, "SAFE.x", {"id": 1})
    finally:
        admin.close()
    root = tls_project(tmp_path / "f", url, "{verify: false}")
    run(root)
    assert ids(root) == [1]
