"""NATS JetStream → bronze Delta: sustained events/s and batch latency, Lakeforge vs by hand.

A stream on the NATS server at 127.0.0.1:4222 (``LAKEFORGE_BENCH_NATS`` overrides the URL)
holds N JSON events (200,000 at scale 1, 9 fields). Both paths read all of them through a
durable pull consumer, ``BATCH`` messages a batch, one Delta commit a batch:

- **Lakeforge**: a project whose bronze model reads the stream through the NATS source
  (``source: {kind: nats, …, max_messages_per_batch: BATCH}``, ``SELECT * FROM source``),
  timed as ``Runner.run(full_refresh=True)``: the consumer is created again at the start
  of the stream and every event is read again. Each batch is decoded (the shared payload
  decoder), transformed (DuckDB), audited, and committed with its sequence in the commit
  and its app transaction; the consumer is acked (ack-all) after each commit.
- **by hand** (the baseline): nats-py fetches from its own ack-all durable consumer,
  ``orjson.loads`` + ``pyarrow.Table.from_pylist`` make the batch (with the subject and
  stream sequence columns Lakeforge adds), ``deltalake.write_deltalake`` appends it
  (overwrites, for the first) and the batch's last message is acked. No exactly-once
  bookkeeping, no dead letters, no transform or checks.

Reported: the ratio of the two (time to ingest the whole stream; target: Lakeforge ≤ 1.5×
the baseline, which skips the transform, the audit and the exactly-once bookkeeping),
events per second, and each path's batch latency — the time between two commits (median
and p95, from the Delta commit timestamps). The machine has 2 cores; the NATS server runs
on it too.

Then both paths stream at a 1 s trigger while events are published at a fixed rate, and
the highest rate each sustains with p99 end-to-end latency ≤ 2 s is reported
(``streaming_1s_trigger``; see :mod:`bench.nats_stream`).
"""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import os
import statistics
import time
from pathlib import Path
from typing import Any

from bench import nats_stream
from bench.harness import table_rows, time_pair, write_result

DEFAULT_REPEATS = 3
NAME = "nats_ingest"
TARGET_RATIO = 1.5
DEFAULT_EVENTS = 200_000
MIN_EVENTS = 500
BATCH = 10_000
TABLE = "raw_events"
SEED = 20261203
URL = os.environ.get("LAKEFORGE_BENCH_NATS", "nats://127.0.0.1:4222")
#: What the benchmark needs running (the bench smoke test probes it first).
SERVICE = f"NATS JetStream at {URL}"


def probe() -> None:
    """Raise unless the NATS server answers with JetStream enabled."""

    async def check() -> None:
        import nats

        nc = await nats.connect(URL, connect_timeout=3, max_reconnect_attempts=1)
        try:
            await nc.jetstream().account_info()
        finally:
            await nc.close()

    asyncio.run(check())


def events(count: int) -> list[bytes]:
    """Deterministic JSON events (numpy, fixed seed)."""
    import numpy as np
    import orjson

    rng = np.random.default_rng(SEED)
    kinds = np.array(["page_view", "click", "search", "add_to_cart", "purchase"])
    countries = np.array(["US", "DE", "FR", "GB", "BR", "IN", "JP"])
    users = rng.integers(1, 100_000, count)
    kind = kinds[rng.integers(0, len(kinds), count)]
    country = countries[rng.integers(0, len(countries), count)]
    amount = np.round(rng.gamma(2.0, 25.0, count), 2)
    mobile = rng.random(count) < 0.6
    start = 1_717_200_000_000
    return [
        orjson.dumps(
            {
                "event_id": i + 1,
                "user_id": int(users[i]),
                "event_type": str(kind[i]),
                "occurred_at_ms": start + i * 37,
                "amount": float(amount[i]),
                "country": str(country[i]),
                "is_mobile": bool(mobile[i]),
                "page": f"/p/{int(users[i]) % 5000}",
                "device": {"os": "ios" if mobile[i] else "linux", "version": i % 40},
            }
        )
        for i in range(count)
    ]


async def _fill(stream: str, bodies: list[bytes]) -> None:
    """A fresh stream holding ``bodies`` (core publishes, then a wait for JetStream)."""
    import nats

    nc = await nats.connect(URL, connect_timeout=5)
    js = nc.jetstream(timeout=30)
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_stream(stream)
        await js.add_stream(name=stream, subjects=[f"{stream}.>"])
        for i, body in enumerate(bodies):
            await nc.publish(f"{stream}.events", body)
            if i % 5000 == 4999:
                await nc.flush()
        await nc.flush()
        deadline = time.monotonic() + 120
        while (await js.stream_info(stream)).state.messages < len(bodies):
            if time.monotonic() > deadline:
                raise RuntimeError(f"JetStream did not store {len(bodies)} messages in 2 min")
            await asyncio.sleep(0.05)
    finally:
        await nc.close()


async def _drop(stream: str) -> None:
    import nats

    nc = await nats.connect(URL, connect_timeout=5)
    try:
        await nc.jetstream().delete_stream(stream)
    finally:
        await nc.close()


async def baseline_load(stream: str, out: Path, count: int, batch: int) -> int:
    """Hand-written: an ack-all pull consumer, orjson + pyarrow, write_deltalake per batch."""
    import nats
    import orjson
    import pyarrow as pa
    from deltalake import write_deltalake
    from nats.js.api import AckPolicy, ConsumerConfig

    nc = await nats.connect(URL, connect_timeout=5)
    js = nc.jetstream(timeout=30)
    durable = "bench_baseline"
    try:
        with contextlib.suppress(nats.js.errors.NotFoundError):
            await js.delete_consumer(stream, durable)
        config = ConsumerConfig(
            durable_name=durable, ack_policy=AckPolicy.ALL, max_ack_pending=4 * batch
        )
        await js.add_consumer(stream, config)
        sub = await js.pull_subscribe_bind(durable, stream)
        read, first = 0, True
        while read < count:
            msgs: list[Any] = []
            while len(msgs) < batch and read + len(msgs) < count:
                msgs += await sub.fetch(min(256, batch - len(msgs)), timeout=5)
            records = [orjson.loads(m.data) for m in msgs]
            for record, m in zip(records, msgs, strict=True):
                record["_subject"] = m.subject
                record["_stream_seq"] = m.metadata.sequence.stream
            table = pa.Table.from_pylist(records)
            write_deltalake(str(out), table, mode="overwrite" if first else "append")
            await msgs[-1].ack_sync(timeout=30)  # not 1 s: a loaded machine is slow
            read += len(msgs)
            first = False
        return read
    finally:
        await nc.close()


def batch_latency(path: str) -> dict[str, float]:
    """Seconds between consecutive commits of the newest load (median, p95)."""
    from deltalake import DeltaTable

    history = sorted(DeltaTable(path).history(), key=lambda e: e["version"])
    # The newest load starts at its overwrite.
    start = max(
        i for i, e in enumerate(history) if "Overwrite" in str(e.get("operationParameters"))
    )
    stamps = [e["timestamp"] / 1000 for e in history[start:]]
    gaps = sorted(b - a for a, b in itertools.pairwise(stamps))
    if not gaps:
        return {"median": 0.0, "p95": 0.0, "commits": len(stamps)}
    p95 = gaps[min(len(gaps) - 1, round(0.95 * (len(gaps) - 1)))]
    return {
        "median": round(statistics.median(gaps), 4),
        "p95": round(p95, 4),
        "commits": len(stamps),
    }


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project

    count = max(MIN_EVENTS, round(DEFAULT_EVENTS * scale))
    batch = min(BATCH, max(1, count // 10))
    stream = f"LF_BENCH_{os.getpid()}"
    bodies = events(count)
    payload_bytes = sum(len(b) for b in bodies)
    asyncio.run(_fill(stream, bodies))
    try:
        root = workdir / "project"
        (root / "models").mkdir(parents=True)
        (root / "lakeforge.yml").write_text("name: nats_bench\n", encoding="utf-8")
        (root / "models" / f"{TABLE}.sql").write_text(
            f"/* lakeforge\nlayer: bronze\nsource: {{kind: nats, servers: '{URL}', "
            f"stream: {stream}, max_messages_per_batch: {batch}}}\n*/\nSELECT * FROM source\n",
            encoding="utf-8",
        )
        runner = Runner(load_project(root))
        base_out = workdir / "baseline" / TABLE

        def lakeforge() -> None:
            result = runner.run(full_refresh=True)
            if not result.ok:
                raise RuntimeError(f"lakeforge NATS ingest failed: {result.to_dict()}")

        def baseline() -> None:
            asyncio.run(baseline_load(stream, base_out, count, batch))

        pair = time_pair(lakeforge, baseline, repeats=repeats)
        lf_rows = table_rows(runner.store.uri(TABLE))
        base_rows = table_rows(str(base_out))
        assert lf_rows == base_rows == count, f"lakeforge {lf_rows}, baseline {base_rows}, {count}"
        latency = {
            "lakeforge": batch_latency(runner.store.uri(TABLE)),
            "baseline": batch_latency(str(base_out)),
        }
    finally:
        asyncio.run(_drop(stream))
    # Streaming, once the catch-up stream is gone (the server holds only the ladder's).
    sustained = {
        path: nats_stream.ladder(
            path,
            scale,
            url=URL,
            workdir=workdir / "stream",
            bodies=bodies,
            warmup=3.0 if scale >= 0.1 else 1.0,
            measure=8.0 * min(1.0, scale) if scale >= 0.1 else 2.0,
            drain=15.0,
            create_stream=_fill,
            drop_stream=_drop,
        )
        for path in ("lakeforge", "baseline")
    }
    summary = pair.summary()
    result: dict[str, Any] = {
        "description": f"{count:,} JSON events ({payload_bytes / 2**20:.0f} MiB) from "
        f"JetStream, {batch:,} a commit → bronze",
        "lakeforge": "Runner(project).run(full_refresh=True), NATS source",
        "baseline": "nats-py ack-all pull consumer + orjson + pyarrow + write_deltalake a batch",
        "scale": scale,
        "events": count,
        "batch": batch,
        "events_per_second": {
            "lakeforge": round(count / summary["lakeforge_median"]),
            "baseline": round(count / summary["baseline_median"]),
        },
        "batch_latency_seconds": latency,
        "streaming_1s_trigger": {
            "criterion": f"every event in the table, p99 end-to-end latency <= "
            f"{nats_stream.P99_LIMIT:g} s (JetStream store -> Delta commit)",
            **sustained,
        },
        **summary,
    }
    eps = result["events_per_second"]
    print(
        f"  events/s (median): lakeforge {eps['lakeforge']:,}, baseline {eps['baseline']:,}; "
        f"batch latency median/p95: lakeforge {latency['lakeforge']['median']:.3f}/"
        f"{latency['lakeforge']['p95']:.3f} s, baseline {latency['baseline']['median']:.3f}/"
        f"{latency['baseline']['p95']:.3f} s"
    )
    rates = {p: s["max_sustained_rate"] for p, s in sustained.items()}
    print(
        f"  streaming at a 1 s trigger, highest sustained rate (p99 <= {nats_stream.P99_LIMIT:g}"
        f" s): lakeforge {rates['lakeforge'] or 0:,} events/s, baseline "
        f"{rates['baseline'] or 0:,} events/s"
    )
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
