"""Crash tests of the Redis Streams and MQTT sources: ``kill -9`` of ``lakeforge run`` at
random moments while a producer keeps publishing.

For each broker a project ingests into a bronze table, a few messages a commit. A producer
thread publishes messages (``{"id": n, "payload": …}``) the whole time. Trial after trial,
``lakeforge run`` is started as a real process and SIGKILLed at a random moment — in
start-up (connecting, creating the group or session, recovering), while it reads, while it
commits, between a commit and its acknowledgements. The next trial's run then finds what the
killed one left: Redis entries delivered but not acknowledged (committed or not) in the
group's pending list; MQTT messages the broker delivers again (DUP), committed or not.

After every kill the table must hold no message twice and nothing that was never published.
At the end the producer stops, runs read the rest, and the table must hold every published
message exactly once (ids and a payload checksum), with one app transaction batch per data
commit; a further run must commit nothing (DESIGN §2.2, §2.5).

The seed is fixed (``LAKEFORGE_CRASH_SEED`` overrides it, ``LAKEFORGE_CRASH_TRIALS`` makes a
soak run); failure messages carry it and the log of the trials. Mosquitto keeps at most
``max_queued_messages`` (1000 by default) messages for an offline session, so the producer's
rate keeps the backlog well below that.
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
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

pytestmark = [pytest.mark.slow, pytest.mark.integration]

LAKEFORGE = [sys.executable, "-m", "lakeforge"]
SEED = int(os.environ.get("LAKEFORGE_CRASH_SEED", "20261122"))
TRIALS = int(os.environ.get("LAKEFORGE_CRASH_TRIALS", "20"))  # more for a soak run
DATASET = "raw"
BATCH = 5  # messages per commit
KILL_WINDOW_BATCHES = 4  # kills after a run's first commit spread over this many batches
RATE = 4.0  # messages a second while the trials run (about what a trial reads)
SCRATCH_MESSAGES = 10 * BATCH  # the timing run: ten commits
FINAL_RUNS = 20  # at most this many runs to read the rest at the end
# A failed run is acceptable only for these, and only when a rerun then succeeds: a writer
# that lost a commit race, or a lock held by another run.
RACE = re.compile(r"concurrent writer|commit conflict|lock", re.IGNORECASE)


# -- the CLI and the table ----------------------------------------------------------------


def make_project(root: Path, source: dict[str, Any]) -> Path:
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: crash\n")
    (root / "models" / f"{DATASET}.sql").write_text(
        f"/* lakeforge\nsource: {json.dumps(source)}\n*/\nSELECT id, payload FROM source\n"
    )
    return root


def env() -> dict[str, str]:
    return {**os.environ, "COLUMNS": "200"}


def lakeforge(project: Path, *args: str) -> subprocess.CompletedProcess[str]:
    """One uninterrupted CLI call."""
    return subprocess.run(
        [*LAKEFORGE, *args], cwd=project, capture_output=True, text=True, env=env(), timeout=300
    )


def delta_path(project: Path) -> str:
    return str(project / "lakehouse" / DATASET)


def version(project: Path) -> int | None:
    from deltalake import DeltaTable

    path = delta_path(project)
    return DeltaTable(path).version() if DeltaTable.is_deltatable(path) else None


def read_bronze(project: Path) -> list[dict[str, Any]]:
    """The table's rows read by delta-rs directly, not through Lakeforge ([] when absent)."""
    from deltalake import DeltaTable

    path = delta_path(project)
    if not DeltaTable.is_deltatable(path):
        return []
    return DeltaTable(path).to_pyarrow_table(columns=["id", "payload"]).to_pylist()


def checksum(pairs: Any) -> str:
    digest = hashlib.sha256()
    for key, value in sorted(pairs):
        digest.update(f"{key}\t{value}\n".encode())
    return digest.hexdigest()


def wait(proc: subprocess.Popen[bytes], deadline: float) -> bool:
    """Whether ``proc`` ended before the monotonic ``deadline``."""
    try:
        proc.wait(timeout=max(0.0, deadline - time.monotonic()))
    except subprocess.TimeoutExpired:
        return False
    return True


def wait_for_commit(proc: subprocess.Popen[bytes], log_dir: Path, after: int | None) -> bool:
    """Wait (deadline: a minute) until the commit after version ``after`` lands in the Delta
    log; False when the run ends first."""
    landed = log_dir / f"{0 if after is None else after + 1:020d}.json"
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:
        if landed.exists():
            return True
        if wait(proc, time.monotonic() + 0.002):
            return landed.exists()
    return False


def measure_timing(scratch: Path) -> tuple[float, float]:
    """(seconds from start to the first commit, seconds a batch) of one uninterrupted run on
    a scratch project holding ``SCRATCH_MESSAGES`` messages, measured now on this machine,
    from the commit timestamps."""
    from deltalake import DeltaTable

    started = time.time()
    measured = lakeforge(scratch, "run")
    assert measured.returncode == 0, f"{measured.stdout}\n{measured.stderr}"
    stamps = sorted(e["timestamp"] / 1000 for e in DeltaTable(delta_path(scratch)).history())
    assert len(stamps) >= 5, stamps
    first_commit = max(stamps[0] - started, 0.05)
    return first_commit, max((stamps[-1] - stamps[0]) / (len(stamps) - 1), 0.01)


@dataclass
class Producer:
    """Publishes ``{"id": n, "payload": …}`` messages through ``send`` at ``RATE`` a second
    in a thread; ``published`` (id → payload) is the oracle. A message is entered there
    before it is sent, so a row read from the table is always known."""

    send: Callable[[int, bytes], None]
    rng: random.Random
    published: dict[int, str] = field(default_factory=dict)
    lock: threading.Lock = field(default_factory=threading.Lock)
    stop: threading.Event = field(default_factory=threading.Event)
    error: list[BaseException] = field(default_factory=list)
    thread: threading.Thread | None = None

    def publish(self, count: int) -> None:
        for _ in range(count):
            with self.lock:
                mid = len(self.published) + 1
                payload = f"p{mid}-{self.rng.getrandbits(64):016x}-é"
                self.published[mid] = payload
            self.send(mid, json.dumps({"id": mid, "payload": payload}).encode())

    def start(self) -> None:
        def loop() -> None:
            try:
                while not self.stop.wait(1 / RATE):
                    self.publish(1)
            except BaseException as exc:  # reported by finish()
                self.error.append(exc)

        self.thread = threading.Thread(target=loop, daemon=True)
        self.thread.start()

    def finish(self) -> dict[int, str]:
        self.stop.set()
        if self.thread is not None:
            self.thread.join(timeout=30)
        assert not self.error, f"the producer failed: {self.error[0]!r}"
        with self.lock:
            return dict(self.published)


@dataclass
class Trials:
    """Runs ``lakeforge run`` on a project trial after trial, each SIGKILLed at a random
    moment, and keeps the log that failure messages carry."""

    project: Path
    rng: random.Random
    first_commit: float
    per_batch: float
    log: list[str] = field(default_factory=list)
    failures: list[str] = field(default_factory=list)
    kills: Counter[str] = field(default_factory=Counter)

    def context(self) -> str:
        return f"seed={SEED} (set LAKEFORGE_CRASH_SEED to vary); trials:\n  " + "\n  ".join(
            self.log
        )

    def run_and_kill(self, trial: int, out_dir: Path) -> None:
        # A third of the kills in start-up (up to the measured time of a first commit);
        # the rest after the run's first commit, over the reads, commits and
        # acknowledgements of the next batches.
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
        elif code != 0:
            message = err.read_text(errors="replace") + out.read_text(errors="replace")
            rerun = lakeforge(project, "run")
            self.log[-1] += f", rerun exit {rerun.returncode}"
            if not (RACE.search(message) and rerun.returncode == 0):
                self.failures.append(
                    f"trial {trial}: `lakeforge run` after a kill failed ({outcome}):\n{message}"
                    f"\nrerun (exit {rerun.returncode}):\n{rerun.stdout}\n{rerun.stderr}"
                )

    def check(self, trial: int, published: Callable[[int], str | None]) -> None:
        """What must never be seen in bronze, even right after a kill: a message twice, or
        a row that was never published."""
        rows = read_bronze(self.project)
        counts = Counter(r["id"] for r in rows)
        twice = sorted(rid for rid, n in counts.items() if n > 1)
        unknown = sorted(r["id"] for r in rows if published(r["id"]) != r["payload"])
        assert not twice and not unknown, (
            f"after trial {trial}: duplicated ids {twice[:20]}, unknown rows {unknown[:20]}\n"
            f"{self.context()}"
        )

    def finish(self, expected: dict[int, str]) -> None:
        """Runs until one commits nothing; then every published message in the table exactly
        once, one app transaction batch per data commit, and a further run that commits
        nothing."""
        from deltalake import DeltaTable

        project, context = self.project, self.context
        assert not self.failures, "\n\n".join(self.failures) + "\n" + context()
        for final in range(FINAL_RUNS):
            before = version(project)
            done = lakeforge(project, "run")
            assert done.returncode == 0, f"final run failed:\n{done.stdout}\n{done.stderr}"
            self.log.append(f"final run {final}: v{before} → v{version(project)}")
            if version(project) == before:
                break
        else:
            pytest.fail(f"{FINAL_RUNS} runs did not read everything\n{context()}")

        rows = read_bronze(project)
        ids = Counter(r["id"] for r in rows)
        want = Counter(expected.keys())
        missing, extra = sorted((want - ids).elements()), sorted((ids - want).elements())
        assert not missing and not extra, (
            f"{len(missing)} missing ids {missing[:20]}, {len(extra)} extra ids {extra[:20]} "
            f"(of {len(expected)} messages)\n{context()}"
        )
        stale = sorted(r["id"] for r in rows if expected[r["id"]] != r["payload"])
        assert checksum((r["id"], r["payload"]) for r in rows) == checksum(expected.items()), (
            f"payload checksum differs, ids {stale[:20]}\n{context()}"
        )

        # One app transaction batch per commit, numbered 1..n in log order.
        table = DeltaTable(delta_path(project))
        history = sorted(table.history(), key=lambda entry: entry["version"])
        data_commits = [e for e in history if e.get("operationMetrics", {}).get("num_added_rows")]
        batches = [e.get("lakeforge", {}).get("batch") for e in data_commits]
        txn = table.transaction_version(f"lakeforge/{DATASET}")
        assert txn == len(data_commits), f"app transaction {txn}, data commits {len(data_commits)}"
        assert batches == list(range(1, len(data_commits) + 1)), f"batches {batches}\n{context()}"

        before = table.version()
        again = lakeforge(project, "run")
        assert again.returncode == 0, f"{again.stdout}\n{again.stderr}\n{context()}"
        assert version(project) == before, f"a further run committed:\n{again.stdout}"

        assert self.kills["before any commit"] and self.kills["after a commit"], (
            f"kills {dict(self.kills)}: the timing did not cover both\n{context()}"
        )
        print(
            f"\nfirst commit after {self.first_commit:.2f}s, {self.per_batch:.3f}s a batch; "
            f"kills {dict(self.kills)}; {len(expected)} messages, {len(data_commits)} data "
            f"commits\n{context()}"
        )


def crash_trials(
    tmp_path: Path,
    project: Path,
    scratch: Path,
    scratch_producer: Producer,
    producer: Producer,
    rng: random.Random,
    inspect: Callable[[], str] | None = None,
) -> Trials:
    """Timing on the scratch project, then the trials while ``producer`` publishes;
    ``inspect`` describes what a kill left at the broker (added to each trial's log)."""
    started = time.monotonic()
    scratch_producer.publish(SCRATCH_MESSAGES)
    first_commit, per_batch = measure_timing(scratch)
    producer.publish(3 * BATCH)  # a backlog for the first trial
    producer.start()
    trials = Trials(project, rng, first_commit, per_batch)
    try:
        for trial in range(TRIALS):
            trials.run_and_kill(trial, tmp_path)
            if inspect is not None:
                trials.log[-1] += f"; {inspect()}"
            with producer.lock:
                known = dict(producer.published)
            trials.check(trial, known.get)
    finally:
        expected = producer.finish()
    trials.finish(expected)
    print(f"{TRIALS} trials in {time.monotonic() - started:.1f}s")
    return trials


# -- Redis Streams -------------------------------------------------------------------------


@pytest.fixture
def redis_client(redis_url: str) -> Iterator[Any]:
    import redis

    client = redis.Redis.from_url(redis_url, socket_connect_timeout=3, socket_timeout=10)
    yield client
    client.close()


def redis_project(root: Path, stream: str) -> Path:
    return make_project(
        root,
        {
            "kind": "redis_streams",
            "streams": [stream],
            "payload": {"field": "data"},
            "max_messages_per_batch": BATCH,
        },
    )


def test_kill_9_during_redis_streams_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path, redis_stream: Callable[[], str], redis_client: Any
) -> None:
    rng = random.Random(SEED)  # timing; message contents use their own

    def sender(stream: str) -> Callable[[int, bytes], None]:
        return lambda _mid, body: redis_client.xadd(stream, {"data": body})

    scratch_stream, stream = redis_stream(), redis_stream()
    group = f"lakeforge.{DATASET}"
    project = redis_project(tmp_path / "project", stream)
    left = Counter[str]()

    def pending_after_kill() -> str:
        """The group's pending entries the kill left: committed but not acknowledged (at or
        below the table's committed id), or delivered and not committed."""
        from deltalake import DeltaTable

        if not DeltaTable.is_deltatable(delta_path(project)):
            return "no table"
        state = DeltaTable(delta_path(project)).history(1)[0]["lakeforge"]["source_state"]
        top = tuple(int(p) for p in state["ids"][stream].split("-"))
        ids = [
            tuple(int(p) for p in e["message_id"].decode().split("-"))
            for e in redis_client.xpending_range(stream, group, "-", "+", 10_000)
        ]
        committed = sum(1 for i in ids if i <= top)
        left["committed, not acknowledged"] += committed
        left["delivered, not committed"] += len(ids) - committed
        return f"pending: {committed} committed, {len(ids) - committed} not committed"

    trials = crash_trials(
        tmp_path,
        project,
        redis_project(tmp_path / "scratch", scratch_stream),
        Producer(sender(scratch_stream), random.Random(SEED)),
        Producer(sender(stream), random.Random(SEED + 1)),
        rng,
        pending_after_kill,
    )
    # Everything committed was acknowledged in the end; the kills left entries pending
    # that the next run had to recover.
    assert int(redis_client.xpending(stream, group)["pending"]) == 0
    assert left["delivered, not committed"], f"{dict(left)}\n{trials.context()}"
    print(f"entries pending after the kills: {dict(left)}")


# -- MQTT ---------------------------------------------------------------------------------


class MqttPublisher:
    def __init__(self, host: str, port: int) -> None:
        import paho.mqtt.client as mqtt
        from paho.mqtt.enums import CallbackAPIVersion

        self.client = mqtt.Client(
            CallbackAPIVersion.VERSION2,
            client_id=f"lf-crash-pub-{uuid.uuid4().hex[:8]}",
            protocol=mqtt.MQTTv5,
        )
        self.client.connect(host, port)
        self.client.loop_start()
        self.lock = threading.Lock()

    def sender(self, topic: str) -> Callable[[int, bytes], None]:
        def send(_mid: int, body: bytes) -> None:
            with self.lock:
                info = self.client.publish(topic, body, qos=1)
            info.wait_for_publish(10)
            assert info.is_published(), f"the broker did not take message {_mid}"

        return send

    def close(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


def mqtt_project(root: Path, names: str, host: str, port: int) -> Path:
    project = make_project(
        root,
        {
            "kind": "mqtt",
            "host": host,
            "port": port,
            "topics": [f"{names}/+/events"],
            "client_id": f"{names}-bronze",
            "max_messages_per_batch": BATCH,
            "idle_seconds": 0.3,
            "max_batch_seconds": 1,
            "max_run_seconds": 3,  # the producer never pauses
            "session_expiry_seconds": 600,  # the broker forgets the test's session after it
        },
    )
    # The first run creates the session: from then on the broker keeps messages for it.
    first = lakeforge(project, "run")
    assert first.returncode == 0, f"{first.stdout}\n{first.stderr}"
    return project


def test_kill_9_during_mqtt_ingestion_loses_and_duplicates_nothing(
    tmp_path: Path, mqtt_broker: tuple[str, int], mqtt_names: str
) -> None:
    rng = random.Random(SEED)
    publisher = MqttPublisher(*mqtt_broker)
    try:
        crash_trials(
            tmp_path,
            mqtt_project(tmp_path / "project", mqtt_names, *mqtt_broker),
            mqtt_project(tmp_path / "scratch", f"{mqtt_names}-scratch", *mqtt_broker),
            Producer(publisher.sender(f"{mqtt_names}-scratch/s/events"), random.Random(SEED)),
            Producer(publisher.sender(f"{mqtt_names}/d/events"), random.Random(SEED + 1)),
            rng,
        )
    finally:
        publisher.close()
