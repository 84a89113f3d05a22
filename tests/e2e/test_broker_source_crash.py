"""Crash tests of the Kafka and NATS JetStream sources: ``kill -9`` of ``lakeforge run`` at
random moments while a producer keeps publishing.

For each broker a project ingests JSON messages into a bronze table, a few messages a
commit; some messages are not JSON and go to the dead-letter table. A producer thread in
this process publishes all along — to librdkafka's mock cluster, which lives in this
process (the child ``lakeforge run`` connects to its brokers), or to the NATS server on
127.0.0.1:4222. Trial after trial, ``lakeforge run`` is started as a real process and
SIGKILLed at a random moment: in start-up, while it reads, while it commits, between a
commit and the broker acknowledgement that follows it. After every kill the table must
hold no message twice, no message that was never published, and every good message up to
the position its last commit records. At the end, with the producer stopped, one
uninterrupted run must leave every published good message in the table exactly once
(message keys — (partition, offset) or stream sequence — and a payload checksum) and every
bad one in the dead-letter table exactly once, with one app transaction batch per commit;
a further run must commit nothing (DESIGN §2.2, §2.4, §2.5).

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the log of the trials.
"""

from __future__ import annotations

import hashlib
import json
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.slow

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261122"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))  # more for a soak run
DATASET = "raw"
DLQ = f"{DATASET}__dlq"
BATCH = 25  # messages a commit
RATE = 30  # messages a second the producer publishes
BAD_SHARE = 0.03  # messages that are not JSON (dead letters)
KILL_WINDOW_BATCHES = 4  # kills after a run's first commit spread over this many batches
MIN_BACKLOG = (KILL_WINDOW_BATCHES + 2) * BATCH  # messages waiting when a trial starts
# A failed run is acceptable only for these, and only when a rerun then succeeds: a writer
# that lost a commit race, or a lock held by another run.
RACE = re.compile(r"concurrent writer|commit conflict|lock", re.IGNORECASE)

Key = tuple[int, int]  # (partition, offset) for Kafka; (0, stream sequence) for NATS


@dataclass
class Published:
    """Every message the producer published, by its key: the oracle."""

    good: dict[Key, str] = field(default_factory=dict)  # key → payload
    bad: dict[Key, str] = field(default_factory=dict)  # key → raw text
    lock: threading.Lock = field(default_factory=threading.Lock)

    def add(self, key: Key, payload: str, is_bad: bool) -> None:
        with self.lock:
            (self.bad if is_bad else self.good)[key] = payload

    def snapshot(self) -> tuple[dict[Key, str], dict[Key, str]]:
        with self.lock:
            return dict(self.good), dict(self.bad)

    def count(self) -> int:
        with self.lock:
            return len(self.good) + len(self.bad)


class Producer:
    """Publishes at ``RATE`` messages a second from a thread until stopped; ``burst``
    publishes at once (a backlog for the next trial)."""

    def __init__(self, send: Callable[[int, bytes], None], flush: Callable[[], None]) -> None:
        self.send, self.flush = send, flush
        self.rng = random.Random(SEED + 1)
        self.next_id = 0
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.thread = threading.Thread(target=self._loop, daemon=True)

    def one(self) -> None:
        with self.lock:
            rid, self.next_id = self.next_id, self.next_id + 1
            if self.rng.random() < BAD_SHARE:
                body = f'{{"id": {rid}, "payload": oops'.encode()  # not JSON
            else:
                payload = f"p{rid}-{self.rng.getrandbits(64):016x}-é"
                body = json.dumps({"id": rid, "payload": payload}, ensure_ascii=False).encode()
            self.send(rid, body)

    def burst(self, count: int) -> None:
        for _ in range(count):
            self.one()
        self.flush()

    def _loop(self) -> None:
        while not self.stop.wait(1 / RATE):
            self.one()
        self.flush()

    def __enter__(self) -> Producer:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(30)


def record(published: Published, key: Key, body: bytes) -> None:
    text = body.decode()
    try:
        payload = json.loads(text)["payload"]
    except ValueError:
        published.add(key, text, is_bad=True)
    else:
        published.add(key, payload, is_bad=False)


# -- the CLI and the tables ---------------------------------------------------------------


def make_project(root: Path, source: str) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: crash\n")
    (root / "models" / f"{DATASET}.sql").write_text(
        f"/* lakeforge\nsource: {source}\n*/\nSELECT * FROM source\n"
    )
    return root


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True, env=env(), timeout=300
    )


def delta_path(project: Path, name: str = DATASET) -> str:
    return str(project / "lakehouse" / name)


def version(project: Path) -> int | None:
    from deltalake import DeltaTable

    path = delta_path(project)
    return DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None


def read(project: Path, name: str, columns: list[str]) -> list[dict[str, Any]]:
    from deltalake import DeltaTable

    path = delta_path(project, name)
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table(columns=columns).to_pylist()


def newest_state(project: Path) -> dict[str, Any] | None:
    from deltalake import DeltaTable

    if version(project) is None:
        return None
    for entry in DeltaTable(delta_path(project)).history():
        state = entry.get("lakeforge", {}).get("source_state")
        if state:
            return dict(state)
    return None


def checksum(pairs: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(pairs):
        digest.update(f"{key}\t{value}\n".encode())
    return digest.hexdigest()


def wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_for_commit(proc: subprocess.Popen[bytes], log_dir: Path, after: int | None) -> bool:
    """Wait (a minute at most) for the commit after version ``after``; False when the run
    ends first."""
    landed = log_dir / f"{0 if after is None else after + 1:020d}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if landed.exists():
            return True
        if wait(proc, time.monotonic() + 0.002):
            return landed.exists()
    return False


# -- the broker-neutral trials ------------------------------------------------------------


@dataclass
class Broker:
    """What differs between the brokers: how a row, a dead letter and the committed
    position map to message keys."""

    row_key: Callable[[dict[str, Any]], Key]
    row_columns: list[str]
    dead_key: Callable[[dict[str, Any]], Key]
    committed: Callable[[dict[str, Any] | None, Key], bool]  # the key is below the position
    # whether the broker was not told of the table's newest commit (killed in between)
    unacknowledged: Callable[[dict[str, Any] | None], bool]


@dataclass
class Trials:
    project: Path
    broker: Broker
    published: Published
    rng: random.Random
    first_commit: float = 1.0
    per_batch: float = 0.1
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)

    def context(self) -> str:
        return f"seed={SEED} (set LAKEFORGE_CRASH_SEED to vary); trials:\n  " + "\n  ".join(
            self.log
        )

    def rows(self) -> list[dict[str, Any]]:
        return read(self.project, DATASET, ["id", "payload", *self.broker.row_columns])

    def measure(self) -> None:
        """A first, uninterrupted run over the initial backlog: how long this machine takes
        to a first commit, and for a batch (from the commit timestamps)."""
        from deltalake import DeltaTable

        started = time.time()
        measured = lakeforge(self.project, "run")
        assert measured.returncode == 0, f"{measured.stdout}\n{measured.stderr}"
        stamps = sorted(
            e["timestamp"] / 1000 for e in DeltaTable(delta_path(self.project)).history()
        )
        assert len(stamps) >= 3, stamps
        self.first_commit = max(stamps[0] - started, 0.05)
        self.per_batch = max((stamps[-1] - stamps[0]) / (len(stamps) - 1), 0.01)
        self.log.append(
            f"timing run: first commit after {self.first_commit:.2f}s, "
            f"{self.per_batch:.3f}s a batch, {len(stamps)} commits"
        )

    def run_and_kill(self, trial: int, out_dir: Path) -> None:
        rng, project = self.rng, self.project
        in_start_up = rng.random() < 1 / 3
        delay = rng.uniform(
            0, self.first_commit if in_start_up else KILL_WINDOW_BATCHES * self.per_batch
        )
        before = version(project)
        out, err = out_dir / f"trial-{trial}.out", out_dir / f"trial-{trial}.err"
        with out.open("wb") as stdout, err.open("wb") as stderr:
            start = time.monotonic()
            proc = subprocess.Popen(
                [*LAKEFORGE, "run"], cwd=project, stdout=stdout, stderr=stderr, env=env()
            )
            try:
                if in_start_up:
                    kill_at: float | None = start + delay
                elif wait_for_commit(proc, Path(delta_path(project)) / "_delta_log", before):
                    kill_at = time.monotonic() + delay
                else:
                    kill_at = None
                if kill_at is not None and not wait(proc, kill_at):
                    proc.send_signal(signal.SIGKILL)
                code = proc.wait(timeout=120)
            finally:
                if proc.poll() is None:
                    proc.kill()
                    proc.wait()
        after = version(project)
        outcome = "killed" if code == -signal.SIGKILL else f"exit {code}"
        when = f"{delay:.2f}s after {'start' if in_start_up else 'its first commit'}"
        self.log.append(f"#{trial}: kill {when}, {outcome}, v{before} → v{after}")
        if code == -signal.SIGKILL:
            self.kills["after a commit" if after != before else "before any commit"] += 1
            if self.broker.unacknowledged(newest_state(project)):
                self.kills["between a commit and its acknowledgement"] += 1
                self.log[-1] += " (the broker was not told of the last commit)"
        elif code != 0:
            message = err.read_text(errors="replace") + out.read_text(errors="replace")
            rerun = lakeforge(project, "run")
            self.log[-1] += f", rerun exit {rerun.returncode}"
            if not (RACE.search(message) and rerun.returncode == 0):
                self.failures.append(
                    f"trial {trial}: `lakeforge run` after a kill failed ({outcome}):\n{message}"
                    f"\nrerun (exit {rerun.returncode}):\n{rerun.stdout}\n{rerun.stderr}"
                )

    def check(self, trial: int) -> None:
        """What must hold right after any kill."""
        good, _ = self.published.snapshot()
        rows = self.rows()
        keys = Counter(self.broker.row_key(r) for r in rows)
        problems: dict[str, Any] = {}
        if twice := sorted(k for k, n in keys.items() if n > 1):
            problems["twice"] = twice[:20]
        if strangers := sorted(
            self.broker.row_key(r) for r in rows if good.get(self.broker.row_key(r)) != r["payload"]
        ):
            problems["never_published"] = strangers[:20]
        state = newest_state(self.project)
        if missing := sorted(k for k in good if self.broker.committed(state, k) and k not in keys):
            problems["missing_below_the_committed_position"] = missing[:20]
        dead = Counter(
            self.broker.dead_key(r) for r in read(self.project, DLQ, ["source_file", "line"])
        )
        if dead_twice := sorted(k for k, n in dead.items() if n > 1):
            problems["dead_letters_twice"] = dead_twice[:20]
        assert not problems, f"after trial {trial}: {problems}\n{self.context()}"

    def finish(self) -> None:
        """With the producer stopped: one clean run, then every published message exactly
        once in the table or the dead-letter table, one app transaction batch per commit,
        and a further run that changes nothing."""
        from deltalake import DeltaTable

        project, context = self.project, self.context
        final = lakeforge(project, "run")
        assert final.returncode == 0, f"final run failed:\n{final.stdout}\n{final.stderr}"
        assert not self.failures, "\n\n".join(self.failures) + "\n" + context()

        good, bad = self.published.snapshot()
        rows = self.rows()
        keys = Counter(self.broker.row_key(r) for r in rows)
        want = Counter(good.keys())
        missing, extra = sorted((want - keys).elements()), sorted((keys - want).elements())
        assert not missing and not extra, (
            f"{len(missing)} missing {missing[:20]}, {len(extra)} extra {extra[:20]} "
            f"(of {len(good)} good messages)\n{context()}"
        )
        got = checksum((self.broker.row_key(r), r["payload"]) for r in rows)
        assert got == checksum(good.items()), f"payload checksum differs\n{context()}"
        letters = read(project, DLQ, ["source_file", "line", "raw_text"])
        dead = Counter(self.broker.dead_key(r) for r in letters)
        assert dead == Counter(bad.keys()), (
            f"dead letters {sorted(dead.elements())[:20]} vs bad {sorted(bad)[:20]}\n{context()}"
        )
        assert {self.broker.dead_key(r): r["raw_text"] for r in letters} == bad

        table = DeltaTable(delta_path(project))
        history = sorted(table.history(), key=lambda entry: entry["version"])
        batches = [e["lakeforge"]["batch"] for e in history if "lakeforge" in e]
        txn = table.transaction_version(f"lakeforge/{DATASET}")
        assert batches == list(range(1, len(batches) + 1)), f"batches {batches}\n{context()}"
        assert txn == len(batches), f"app transaction {txn}, commits {len(batches)}"

        before = table.version()
        again = lakeforge(project, "run")
        assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{context()}"
        assert version(project) == before, f"a further run committed:\n{again.stdout}"

        assert self.kills["before any commit"] and self.kills["after a commit"], (
            f"kills {dict(self.kills)}: the timing did not cover both\n{context()}"
        )
        print(
            f"\nkills {dict(self.kills)}; {len(good)} good and {len(bad)} bad messages, "
            f"{len(batches)} commits\n{context()}"
        )

    def go(self, producer: Producer, out_dir: Path) -> None:
        producer.burst(MIN_BACKLOG)
        self.measure()
        with producer:
            for trial in range(TRIALS):
                backlog = self.published.count() - len(self.rows())
                if backlog < MIN_BACKLOG:
                    producer.burst(MIN_BACKLOG - backlog)
                self.run_and_kill(trial, out_dir)
                self.check(trial)
        self.finish()


# -- Kafka --------------------------------------------------------------------------------


def test_kill_9_during_kafka_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path, kafka_cluster: Any, kafka_topic: Callable[[], str]
) -> None:
    topic = kafka_topic()
    published = Published()
    producer_client = kafka_cluster.producer

    def send(rid: int, body: bytes) -> None:
        def delivered(error: Any, msg: Any) -> None:
            assert error is None, error
            record(published, (msg.partition(), msg.offset()), body)

        producer_client.produce(topic, value=body, key=str(rid).encode(), on_delivery=delivered)
        producer_client.poll(0)

    def flush() -> None:
        assert producer_client.flush(10) == 0

    def below(state: dict[str, Any] | None, key: Key) -> bool:
        offsets = {} if state is None else state["offsets"].get(topic, {})
        return key[1] < int(offsets.get(str(key[0]), 0))

    def unacknowledged(state: dict[str, Any] | None) -> bool:
        committed = {} if state is None else state["offsets"].get(topic, {})
        group = group_offsets(kafka_cluster, topic)
        return any(group.get(int(p), -1) != o for p, o in committed.items())

    broker = Broker(
        row_key=lambda r: (r["_partition"], r["_offset"]),
        row_columns=["_partition", "_offset"],
        dead_key=lambda r: (int(r["source_file"].rsplit("/", 1)[1]), r["line"]),
        committed=below,
        unacknowledged=unacknowledged,
    )
    project = make_project(
        tmp_path / "project",
        f"{{kind: kafka, brokers: '{kafka_cluster.bootstrap}', topic: {topic}, "
        f"max_messages_per_batch: {BATCH}}}",
    )
    trials = Trials(project, broker, published, random.Random(SEED))
    trials.go(Producer(send, flush), tmp_path)
    # The offsets were committed back to the group after the last commit.
    state = newest_state(project)
    assert state is not None
    assert group_offsets(kafka_cluster, topic) == {
        int(p): o for p, o in state["offsets"][topic].items()
    }


def group_offsets(cluster: Any, topic: str) -> dict[int, int]:
    import confluent_kafka

    consumer = confluent_kafka.Consumer(
        {"bootstrap.servers": cluster.bootstrap, "group.id": f"lakeforge.{DATASET}"}
    )
    try:
        parts = [confluent_kafka.TopicPartition(topic, p) for p in range(4)]
        return {tp.partition: tp.offset for tp in consumer.committed(parts, timeout=10)}
    finally:
        consumer.close()


# -- NATS JetStream -----------------------------------------------------------------------


def test_kill_9_during_nats_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path, nats_jetstream: Any, nats_stream: Callable[[], str]
) -> None:
    stream = nats_stream()
    published = Published()
    # nats-py is asyncio: the producer thread has a connection and an event loop of its own.
    publisher = type(nats_jetstream)(nats_jetstream.url)

    def send(rid: int, body: bytes) -> None:
        seq = publisher.publish(f"{stream}.events", body)
        record(published, (0, seq), body)

    def below(state: dict[str, Any] | None, key: Key) -> bool:
        return state is not None and key[1] <= int(state["seq"])

    def unacknowledged(state: dict[str, Any] | None) -> bool:
        from nats.js.errors import NotFoundError

        try:  # a run killed while it re-created the consumer leaves none
            info = nats_jetstream.consumer_info(stream, f"lakeforge_{DATASET}")
        except NotFoundError:
            return False
        return state is not None and int(info.ack_floor.stream_seq) < int(state["seq"])

    broker = Broker(
        row_key=lambda r: (0, r["_stream_seq"]),
        row_columns=["_stream_seq"],
        dead_key=lambda r: (0, r["line"]),
        committed=below,
        unacknowledged=unacknowledged,
    )
    # A short ack_wait: messages committed but not acked when a run is killed are
    # redelivered within the test, and must be skipped.
    project = make_project(
        tmp_path / "project",
        f"{{kind: nats, stream: {stream}, subject: '{stream}.>', "
        f"max_messages_per_batch: {BATCH}, ack_wait: 2}}",
    )
    trials = Trials(project, broker, published, random.Random(SEED))
    try:
        trials.go(Producer(send, lambda: None), tmp_path)
    finally:
        publisher.close()
    info = nats_jetstream.consumer_info(stream, f"lakeforge_{DATASET}")
    state = newest_state(project)
    assert state is not None
    assert (info.num_pending, info.num_ack_pending) == (0, 0), info
    assert int(info.ack_floor.stream_seq) == int(state["seq"])
