"""HTTP push → bronze: requests/s and acknowledgement latency with a 200 ms group commit.

Lakeforge: a streaming table with ``source: {kind: http_push}`` and ``trigger: 200ms``, run by
the stream loop with its ``POST /ingest/{dataset}`` endpoint; each answer comes after the
commit of the batch holding the request's events. Baseline: a hand-written endpoint on the
same standard-library server that parses each request and appends it with
``write_deltalake`` before answering (a commit per request, no group commit). The same
clients (``CLIENTS`` threads, keep-alive off, ``EVENTS_PER_REQUEST`` NDJSON events a request)
send the same requests to both; the ratio is Lakeforge's time over the baseline's for all of
them, and the latencies are per request (send → answer).
"""

from __future__ import annotations

import statistics
import threading
import time
import urllib.request
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from bench.harness import table_rows, time_pair, write_result

NAME = "http_push"
DEFAULT_REQUESTS = 1500
MIN_REQUESTS = 64
EVENTS_PER_REQUEST = 10
CLIENTS = 128
DEFAULT_REPEATS = 2
TRIGGER = "200ms"


def bodies(count: int, offset: int) -> list[bytes]:
    import orjson

    return [
        b"".join(
            orjson.dumps(
                {
                    "event_id": (offset + i) * EVENTS_PER_REQUEST + j,
                    "device": f"d{j}",
                    "temp": 20.0 + j / 10,
                    "status": "ok",
                }
            )
            + b"\n"
            for j in range(EVENTS_PER_REQUEST)
        )
        for i in range(count)
    ]


def send_all(url: str, payloads: list[bytes]) -> list[float]:
    """POST every payload from ``CLIENTS`` threads; each request's latency (all must be 200)."""

    def send(body: bytes) -> float:
        began = time.perf_counter()
        request = urllib.request.Request(url, data=body, method="POST")
        with urllib.request.urlopen(request, timeout=60) as answer:
            answer.read()
            if answer.status != 200:
                raise RuntimeError(f"{url} answered {answer.status}")
        return time.perf_counter() - began

    with ThreadPoolExecutor(CLIENTS) as pool:
        return list(pool.map(send, payloads))


class _Server(ThreadingHTTPServer):
    request_queue_size = 1024
    daemon_threads = True


def baseline_server(path: str) -> ThreadingHTTPServer:
    """A commit per request: parse, append with write_deltalake, answer."""
    import orjson
    import pyarrow as pa
    from deltalake import write_deltalake

    lock = threading.Lock()

    class Handler(BaseHTTPRequestHandler):
        protocol_version = "HTTP/1.1"

        def do_POST(self) -> None:
            body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
            records = [orjson.loads(line) for line in body.splitlines() if line.strip()]
            with lock:  # one writer at a time, as a single process's Delta table needs
                write_deltalake(path, pa.Table.from_pylist(records), mode="append")
            reply = b'{"ok": true}'
            self.send_response(200)
            self.send_header("Content-Length", str(len(reply)))
            self.end_headers()
            self.wfile.write(reply)

        def log_message(self, *args: Any) -> None:
            pass

    return _Server(("127.0.0.1", 0), Handler)


def run(
    scale: float = 1.0,
    repeats: int = DEFAULT_REPEATS,
    *,
    workdir: Path,
    results_dir: Path | None = None,
) -> dict[str, Any]:
    from lakeforge.execution.executor import Runner
    from lakeforge.project.loader import load_project
    from lakeforge.sources.http_push import HttpPushConfig, buffer_of
    from lakeforge.streaming.loop import StreamLoop
    from lakeforge.streaming.push_server import PushServer

    count = max(MIN_REQUESTS, round(DEFAULT_REQUESTS * scale))
    root = workdir / "project"
    (root / "models").mkdir(parents=True)
    (root / "lakeforge.yml").write_text("name: push_bench\n", encoding="utf-8")
    (root / "models" / "events.sql").write_text(
        f"/* lakeforge\nlayer: bronze\nmode: streaming\ntrigger: {TRIGGER}\n"
        "source: {kind: http_push}\ncompaction: false\n*/\nSELECT * FROM source\n",
        encoding="utf-8",
    )
    runner = Runner(load_project(root))
    loop = StreamLoop(runner)
    stop = threading.Event()
    push = PushServer("127.0.0.1", 0, {"events": HttpPushConfig()})
    push.start()
    streaming = threading.Thread(target=loop.run, args=(stop,), daemon=True)
    streaming.start()
    base_path = str(workdir / "baseline" / "events")
    base = baseline_server(base_path)
    base_thread = threading.Thread(target=base.serve_forever, daemon=True)
    base_thread.start()
    base_url = "http://{}:{}/".format(*base.server_address[:2])
    sent = {"lakeforge": 0, "baseline": 0}
    latencies: dict[str, list[float]] = {"lakeforge": [], "baseline": []}

    def measured(kind: str, url: str) -> Callable[[], None]:
        def go() -> None:
            payloads = bodies(count, sent[kind])
            sent[kind] += count
            latencies[kind] = send_all(url, payloads)

        return go

    try:
        pair = time_pair(
            measured("lakeforge", f"{push.address}/ingest/events"),
            measured("baseline", base_url),
            repeats=repeats,
        )
    finally:
        push.stop()
        stop.set()
        streaming.join(timeout=60)
        buffer_of("events").close("benchmark over")
        base.shutdown()
        base.server_close()
    lf_rows = table_rows(runner.store.uri("events"))
    base_rows = table_rows(base_path)
    expected = sent["lakeforge"] * EVENTS_PER_REQUEST
    assert lf_rows == expected, f"lakeforge stored {lf_rows} of {expected} events"
    assert base_rows == sent["baseline"] * EVENTS_PER_REQUEST

    def quantiles(values: list[float]) -> dict[str, float]:
        ordered = sorted(values)
        return {
            "p50": round(statistics.median(ordered), 4),
            "p99": round(ordered[min(len(ordered) - 1, int(len(ordered) * 0.99))], 4),
        }

    summary = pair.summary()
    result: dict[str, Any] = {
        "description": f"{count:,} requests of {EVENTS_PER_REQUEST} NDJSON events from "
        f"{CLIENTS} clients → bronze",
        "lakeforge": f"StreamLoop + POST /ingest/events, http_push source, trigger {TRIGGER}",
        "baseline": "stdlib HTTP server, write_deltalake(mode='append') per request",
        "scale": scale,
        "requests": count,
        "requests_per_second": {
            "lakeforge": round(count / summary["lakeforge_median"]),
            "baseline": round(count / summary["baseline_median"]),
        },
        "ack_latency_seconds": {k: quantiles(v) for k, v in latencies.items()},
        "commits": loop.flows["events"].batches,
        **summary,
    }
    rps, lat = result["requests_per_second"], result["ack_latency_seconds"]
    print(
        f"  requests/s (median): lakeforge {rps['lakeforge']:,}, baseline {rps['baseline']:,}; "
        f"ack latency p50/p99: lakeforge {lat['lakeforge']['p50']:.3f}/"
        f"{lat['lakeforge']['p99']:.3f} s, baseline {lat['baseline']['p50']:.3f}/"
        f"{lat['baseline']['p99']:.3f} s"
    )
    result["path"] = str(write_result(NAME, result, results_dir))
    return result
