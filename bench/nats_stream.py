"""NATS JetStream → bronze Delta, streaming at a 1 s trigger: the highest sustained rate.

Part of the ``nats_ingest`` benchmark. For each path, a process streams the stream into a
table while this process publishes JSON events to it at a fixed rate (core NATS publishes,
paced every 10 ms; JetStream stores them). A step at rate R publishes for ``warmup`` +
``measure`` seconds, then waits for every event to be in the table. Its end-to-end latency
of an event is the time from JetStream storing it (the message's timestamp, kept in the
``_timestamp`` column) to the Delta commit that published it (the commit's timestamp in
the log; files rewritten by a compaction are traced to the commit that first added their
rows). A rate is **sustained** when every event arrived within ``drain`` seconds of the
end of publishing and the p99 latency of the events published after the warm-up is at
most 2 s. The ladder starts at 50k events/s (the target), climbs by 10k while sustained,
and otherwise steps down until a rate is.

- **Lakeforge**: ``lakeforge stream`` (the CLI, as a user runs it) on a project whose
  bronze table reads the stream (``mode: streaming``, ``trigger: 1s``, NATS source with
  its defaults: 10,000 messages a batch, background compaction on).
- **by hand**: a nats-py ack-all pull consumer that, once a second, fetches what is there
  and appends each 10,000 messages with orjson + pyarrow + ``write_deltalake``, then acks.

All three processes (NATS server, publisher, stream) share the machine's cores.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
import statistics
import subprocess
import sys
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any
from urllib.parse import unquote

TRIGGER_SECONDS = 1.0
P99_LIMIT = 2.0
START_RATE = 50_000
RATE_STEP = 10_000
MIN_RATE = 10_000
MAX_RATE = 150_000
REPO = Path(__file__).resolve().parents[1]


@dataclass
class Step:
    """One rate of the ladder, for one path."""

    rate: int  # asked for, events/s
    published_rate: float  # what the publisher achieved
    events: int
    arrived: int  # events in the table when the drain ended
    p50: float | None
    p95: float | None
    p99: float | None
    max: float | None
    sustained: bool


def _percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


async def _publish(url: str, subject: str, bodies: list[bytes], rate: int, seconds: float) -> int:
    """Publish ``rate`` events/s for ``seconds`` (cycling through ``bodies``)."""
    import nats

    nc = await nats.connect(url, connect_timeout=5, pending_size=64 * 1024 * 1024)
    try:
        sent, start = 0, time.monotonic()
        if not seconds:  # one event
            await nc.publish(subject, bodies[0])
            await nc.flush()
            return 1
        while (elapsed := time.monotonic() - start) < seconds:
            due = min(int(rate * elapsed), int(rate * seconds))
            while sent < due:
                await nc.publish(subject, bodies[sent % len(bodies)])
                sent += 1
            await nc.flush()
            await asyncio.sleep(0.01)
        return sent
    finally:
        await nc.close()


def commit_latencies(table: Path) -> list[tuple[int, float]]:
    """``(stored at µs, seconds to its commit)`` of every row of ``table``, from its log."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    out: list[tuple[int, float]] = []
    for entry in sorted((table / "_delta_log").glob("*.json")):
        adds, committed, operation = [], None, None
        for line in entry.read_text(encoding="utf-8").splitlines():
            action = json.loads(line)
            if "add" in action:
                adds.append(unquote(action["add"]["path"]))
            elif "commitInfo" in action:
                committed = int(action["commitInfo"]["timestamp"])
                operation = action["commitInfo"].get("operation")
        if operation == "OPTIMIZE" or committed is None:
            continue  # a compaction's files hold rows committed earlier
        for path in adds:
            stored = pq.read_table(table / path, columns=["_timestamp"]).column(0)
            micros = stored.cast(pa.timestamp("us", tz="UTC")).cast(pa.int64()).to_pylist()
            out.extend((us, committed / 1000 - us / 1e6) for us in micros)
    return out


def _rows(table: Path) -> int:
    from deltalake import DeltaTable

    if not (table / "_delta_log").exists():
        return 0
    return int(DeltaTable(str(table)).to_pyarrow_dataset().count_rows())


class StreamProcess:
    """A streaming path in a process of its own, stopped with SIGINT (gracefully)."""

    def __init__(self, argv: list[str], cwd: Path, log: Path) -> None:
        self.log_path = log
        self._log = log.open("w")
        self.proc = subprocess.Popen(
            argv, cwd=cwd, stdout=self._log, stderr=subprocess.STDOUT, env=_env()
        )

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGINT)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self._log.close()


def _env() -> dict[str, str]:
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))
    return env


def lakeforge_process(workdir: Path, url: str, stream: str) -> tuple[StreamProcess, Path]:
    root = workdir / "project"
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: nats_stream_bench\n", encoding="utf-8")
    (root / "models" / "raw_events.sql").write_text(
        "/* lakeforge\nlayer: bronze\nmode: streaming\ntrigger: 1s\n"
        f"source: {{kind: nats, servers: '{url}', stream: {stream}}}\n*/\n"
        "SELECT * FROM source\n",
        encoding="utf-8",
    )
    lakeforge = Path(sys.executable).with_name("lakeforge")
    process = StreamProcess(
        [str(lakeforge), "stream", "raw_events", "--json"], root, workdir / "stream.log"
    )
    return process, root / "lakehouse" / "raw_events"


def baseline_process(workdir: Path, url: str, stream: str) -> tuple[StreamProcess, Path]:
    table = workdir / "baseline" / "raw_events"
    code = (
        "import asyncio, sys; from bench.nats_stream import baseline_stream; "
        "asyncio.run(baseline_stream(sys.argv[1], sys.argv[2], sys.argv[3]))"
    )
    process = StreamProcess(
        [sys.executable, "-c", code, url, stream, str(table)], workdir, workdir / "baseline.log"
    )
    return process, table


async def baseline_stream(url: str, stream: str, out: str, batch: int = 10_000) -> None:
    """The hand-written streaming loader (see the module); stops on SIGINT."""
    import nats
    import orjson
    import pyarrow as pa
    from deltalake import write_deltalake
    from nats.js.api import AckPolicy, ConsumerConfig

    stop = asyncio.Event()
    asyncio.get_running_loop().add_signal_handler(signal.SIGINT, stop.set)
    nc = await nats.connect(url, connect_timeout=5)
    js = nc.jetstream(timeout=30)
    durable = "bench_baseline_stream"
    with contextlib.suppress(nats.js.errors.NotFoundError):
        await js.delete_consumer(stream, durable)
    config = ConsumerConfig(durable_name=durable, ack_policy=AckPolicy.ALL, max_ack_pending=-1)
    await js.add_consumer(stream, config)
    sub = await js.pull_subscribe_bind(durable, stream)
    due = time.monotonic()
    try:
        while not stop.is_set():
            msgs: list[Any] = []
            while True:  # what is there now, a write each `batch` messages
                try:
                    msgs += await sub.fetch(256, timeout=0.05)
                except TimeoutError:  # nats-py's, or asyncio's when its deadline ran out
                    break
                if len(msgs) >= batch:
                    _baseline_write(msgs, out, orjson, pa, write_deltalake)
                    await msgs[-1].ack_sync(timeout=30)  # not 1 s: a loaded machine is slow
                    msgs = []
            if msgs:
                _baseline_write(msgs, out, orjson, pa, write_deltalake)
                await msgs[-1].ack_sync(timeout=30)  # not 1 s: a loaded machine is slow
            due += TRIGGER_SECONDS
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), max(0.0, due - time.monotonic()))
            due = max(due, time.monotonic())
    finally:
        await nc.close()


def _baseline_write(msgs: list[Any], out: str, orjson: Any, pa: Any, write: Any) -> None:
    records = [orjson.loads(m.data) for m in msgs]
    for record, m in zip(records, msgs, strict=True):
        meta = m.metadata
        record["_subject"] = m.subject
        record["_stream_seq"] = meta.sequence.stream
        record["_timestamp"] = meta.timestamp
    table = pa.Table.from_pylist(records)
    table = table.set_column(
        table.schema.get_field_index("_timestamp"),
        "_timestamp",
        table.column("_timestamp").cast(pa.timestamp("us", tz="UTC")),
    )
    write(out, table, mode="append")


def run_step(
    path: str,
    rate: int,
    *,
    url: str,
    workdir: Path,
    bodies: list[bytes],
    warmup: float,
    measure: float,
    drain: float,
    create_stream: Any,
    drop_stream: Any,
) -> Step:
    """One rate for one path: a fresh stream, table and process."""
    stream = f"LF_BENCH_S{os.getpid()}_{path[0]}{rate}"
    asyncio.run(create_stream(stream, []))
    step_dir = workdir / f"{path}-{rate}"
    step_dir.mkdir(parents=True)
    starter = lakeforge_process if path == "lakeforge" else baseline_process
    process, table = starter(step_dir, url, stream)
    try:
        # Ready once the first event is in its table (imports, connection, consumer made).
        asyncio.run(_publish(url, f"{stream}.events", bodies[:1], 1, 0.0))
        _wait_for_rows(table, 1, 60, process)
        started = time.time()
        sent = asyncio.run(_publish(url, f"{stream}.events", bodies, rate, warmup + measure))
        published = time.time()
        arrived = _wait_for_rows(table, sent + 1, drain, process)
    finally:
        process.stop()
        asyncio.run(drop_stream(stream))
    window_start = int((started + warmup) * 1e6)
    latencies = [s for us, s in commit_latencies(table) if us >= window_start]
    p99 = _percentile(latencies, 0.99) if latencies else None
    return Step(
        rate=rate,
        published_rate=round(sent / (published - started), 1),
        events=sent,
        arrived=arrived - 1,
        p50=round(statistics.median(latencies), 3) if latencies else None,
        p95=round(_percentile(latencies, 0.95), 3) if latencies else None,
        p99=None if p99 is None else round(p99, 3),
        max=round(max(latencies), 3) if latencies else None,
        sustained=arrived == sent + 1 and p99 is not None and p99 <= P99_LIMIT,
    )


def _wait_for_rows(table: Path, rows: int, seconds: float, process: StreamProcess) -> int:
    deadline = time.monotonic() + seconds
    have = _rows(table)
    while have < rows and time.monotonic() < deadline:
        if process.proc.poll() is not None:
            tail = process.log_path.read_text(encoding="utf-8", errors="replace")[-3000:]
            raise RuntimeError(
                f"the streaming process exited ({process.proc.returncode}); its output:\n{tail}"
            )
        time.sleep(0.2)
        have = _rows(table)
    return have


def ladder(path: str, scale: float, log: Any = print, **step: Any) -> dict[str, Any]:
    """The highest sustained rate of ``path`` (see the module); at a small ``scale`` (the
    smoke test) one short step at a low rate."""
    if scale < 0.1:
        rates_tried = [run_step(path, 500, **step)]
        best = rates_tried[0].rate if rates_tried[0].sustained else None
    else:
        rates_tried, best = [], None
        rate = START_RATE
        while MIN_RATE <= rate <= MAX_RATE:
            result = run_step(path, rate, **step)
            rates_tried.append(result)
            log(
                f"  {path:<9} {rate:>7,} ev/s: published {result.published_rate:>9,.0f}/s, "
                f"p50 {result.p50} s, p99 {result.p99} s, "
                f"{'sustained' if result.sustained else 'NOT sustained'}"
            )
            if result.sustained:
                best = rate
                if any(not r.sustained for r in rates_tried):
                    break  # the next rate up failed already
                rate += RATE_STEP
            else:
                if best is not None:
                    break
                rate -= RATE_STEP
    return {"max_sustained_rate": best, "steps": [asdict(r) for r in rates_tried]}
