"""Alert delivery that never holds up a stream: channels sent to concurrently, and the
stream's alerts sent from a thread of their own, against real slow HTTP receivers."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest
import yaml

from lakeforge.execution.executor import Runner
from lakeforge.metadata.store import MetadataStore
from lakeforge.project.loader import load_project
from lakeforge.scheduling.alert_dispatch import AlertDispatcher
from lakeforge.streaming.loop import StreamLoop


class SlowReceiver:
    """Answers every POST with 200 after ``delay`` seconds; records (path, event, at)."""

    def __init__(self, delay: float) -> None:
        self.delay = delay
        self.received: list[tuple[str, dict[str, Any], float]] = []
        self.lock = threading.Lock()
        receiver = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                time.sleep(receiver.delay)
                with receiver.lock:
                    receiver.received.append((self.path, body, time.monotonic()))
                self.send_response(200)
                self.send_header("Content-Length", "2")
                self.end_headers()
                self.wfile.write(b"ok")

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        threading.Thread(
            target=self.server.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True
        ).start()

    def url(self, path: str) -> str:
        host, port = self.server.server_address[:2]
        return f"http://{host!s}:{port}{path}"

    def paths(self) -> list[str]:
        with self.lock:
            return [path for path, _, _ in self.received]


@pytest.fixture
def slow() -> Iterator[SlowReceiver]:
    receiver = SlowReceiver(delay=1.5)
    yield receiver
    receiver.server.shutdown()
    receiver.server.server_close()


def make_project(root: Path, channels: list[dict[str, Any]], models: dict[str, str]) -> Path:
    (root / "models").mkdir(parents=True)
    config = {"name": "alerting", "alerts": channels}
    (root / "lakeforge.yml").write_text(yaml.safe_dump(config))
    for name, sql in models.items():
        (root / "models" / f"{name}.sql").write_text(sql)
    return root


def hook(receiver: SlowReceiver, name: str) -> dict[str, Any]:
    return {"name": name, "type": "webhook", "url": receiver.url(f"/{name}"), "retries": 0}


BROKEN = "SELECT CAST('not a number' AS INTEGER) AS n"


def test_channels_are_sent_to_at_once(tmp_path: Path, slow: SlowReceiver) -> None:
    channels = [hook(slow, "a"), hook(slow, "b"), hook(slow, "c")]
    root = make_project(tmp_path / "p", channels, {"broken": BROKEN})
    started = time.monotonic()
    result = Runner(load_project(root)).run()
    took = time.monotonic() - started
    assert not result.ok
    assert sorted(slow.paths()) == ["/a", "/b", "/c"]
    # One after another would take 3 × 1.5 s; at once, about one delay.
    assert took < 1.5 * 3 - 0.5, took
    run = MetadataStore(load_project(root).metadata_url).get_run(result.run_id)
    assert run.options["alerts"] == {"sent": 3, "failed": []}


def test_a_runner_with_a_dispatcher_does_not_wait_for_its_channels(
    tmp_path: Path, slow: SlowReceiver
) -> None:
    root = make_project(tmp_path / "p", [hook(slow, "slack")], {"broken": BROKEN})
    project = load_project(root)
    runner = Runner(project)
    dispatcher = AlertDispatcher(project, runner.metadata)
    runner.alert_dispatcher = dispatcher
    try:
        started = time.monotonic()
        result = runner.run()
        assert time.monotonic() - started < slow.delay  # the message is still on its way
        assert not result.ok and slow.paths() == []
        assert dispatcher.wait_idle(10)
        ((path, body, _),) = slow.received
        assert path == "/slack" and "broken" in json.dumps(body)
        stored = runner.metadata.get_run(result.run_id)
        assert stored.options["alerts"] == {"sent": 1, "failed": []}
        # Nothing new to say: the next run observes, and sends nothing more.
        runner.run()
        assert dispatcher.wait_idle(10) and len(slow.received) == 1
    finally:
        dispatcher.close(10)


def test_an_unreachable_channel_stays_owed_and_is_sent_later(tmp_path: Path) -> None:
    import socket

    with socket.socket() as s:  # a port nothing listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    down = {"name": "down", "type": "webhook", "url": f"http://127.0.0.1:{port}/x", "retries": 0}
    root = make_project(tmp_path / "p", [down], {"broken": BROKEN})
    project = load_project(root)
    runner = Runner(project)
    dispatcher = AlertDispatcher(project, runner.metadata)
    runner.alert_dispatcher = dispatcher
    try:
        result = runner.run()
        assert dispatcher.wait_idle(10)
        summary = runner.metadata.get_run(result.run_id).options["alerts"]
        assert summary["sent"] == 0 and summary["failed"][0]["channel"] == "down"
    finally:
        dispatcher.close(10)
    # Still owed: the next delivery (here a plain run with the channel back) sends it.
    receiver = SlowReceiver(delay=0)
    try:
        up = {**down, "url": receiver.url("/x")}
        (root / "lakeforge.yml").write_text(yaml.safe_dump({"name": "alerting", "alerts": [up]}))
        Runner(load_project(root)).run()
        assert receiver.paths() == ["/x"]
    finally:
        receiver.server.shutdown()
        receiver.server.server_close()


@pytest.mark.slow
def test_a_stream_sends_its_alerts_in_the_background_and_before_it_stops(
    tmp_path: Path,
) -> None:
    slow = SlowReceiver(delay=4.0)
    stream = "/* lakeforge\nmode: streaming\ntrigger: 0\nsource: {path: 'landing/*.ndjson'}\n*/\n"
    root = make_project(
        tmp_path / "p",
        [hook(slow, "slack")],
        {"events": stream + "SELECT CAST(v AS INTEGER) AS v FROM source"},
    )
    (root / "landing").mkdir()
    (root / "landing" / "a.ndjson").write_text('{"v": "not a number"}\n')
    runner = Runner(load_project(root))
    started = time.monotonic()
    ended: list[float] = []
    loop = StreamLoop(
        runner,
        max_micro_batches=1,
        on_batch=lambda flow, task, result: ended.append(time.monotonic() - started),
    )
    try:
        loop.run(threading.Event())
        stopped = time.monotonic() - started
    finally:
        slow.server.shutdown()
        slow.server.server_close()
    assert runner.alert_dispatcher is None  # the loop's own, closed
    # The micro-batch ended before its alert could have been answered...
    assert ended and ended[0] < slow.delay, ended
    # ...and the stream's stop let that delivery finish.
    ((path, body, _),) = slow.received
    assert path == "/slack" and "events" in json.dumps(body)
    assert stopped >= slow.delay
