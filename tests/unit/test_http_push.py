"""HTTP push: POST /ingest/{dataset} answered after the commit of the batch holding the
events (group commit); bad bodies refused whole; idempotency keys make retries safe."""

from __future__ import annotations

import json
import threading
import urllib.error
import urllib.request
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import pytest

from lakeforge.execution.executor import Runner
from lakeforge.project.loader import load_project
from lakeforge.sources import http_push
from lakeforge.sources.http_push import HttpPushConfig, PushBuffer, PushRequest, split_events
from lakeforge.storage.delta import DeltaStore
from lakeforge.streaming.loop import StreamLoop
from lakeforge.streaming.push_server import PushServer


def test_bodies_are_objects_arrays_or_ndjson() -> None:
    assert split_events(b'{"a": 1}') == ([b'{"a":1}'], [])
    assert split_events(b'[{"a": 1}, {"a": 2}]') == ([b'{"a":1}', b'{"a":2}'], [])
    assert split_events(b'{"a": 1}\n\n{"a": "\xc3\xa9"}\n') == (
        [b'{"a": 1}', b'{"a": "\xc3\xa9"}'],
        [],
    )
    assert split_events(b"")[1] == ["empty body"]
    assert split_events(b'[{"a": 1}, 2]') == ([], ["item 1: not a JSON object"])
    events, problems = split_events(b'{"a": 1}\n{oops\n[1]')
    assert events == [] and problems[0].startswith("line 2: invalid JSON")
    assert problems[1] == "line 3: not a JSON object"


class Stream:
    """A project with a push table, its stream loop and endpoint, in this process."""

    def __init__(self, root: Path, header: str = "") -> None:
        self.root = root
        (root / "models").mkdir(parents=True, exist_ok=True)
        (root / "lakeforge.yml").write_text("name: push\n")
        lines = [
            "/* lakeforge",
            "mode: streaming",
            "trigger: 50ms",
            "source: {kind: http_push, request_timeout: 20}",
            *header.splitlines(),
            "*/",
            "SELECT * FROM source",
        ]
        (root / "models" / "events.sql").write_text("\n".join(lines) + "\n")
        project = load_project(root)
        self.loop = StreamLoop(Runner(project))
        self.stop = threading.Event()
        self.server = PushServer("127.0.0.1", 0, {"events": HttpPushConfig(request_timeout=20)})
        self.server.start()
        self.thread = threading.Thread(target=self.loop.run, args=(self.stop,), daemon=True)
        self.thread.start()

    def post(self, body: bytes, key: str | None = None, path: str = "/ingest/events") -> Any:
        request = urllib.request.Request(self.server.address + path, data=body, method="POST")
        if key is not None:
            request.add_header("Idempotency-Key", key)
        try:
            with urllib.request.urlopen(request, timeout=30) as answer:
                return answer.status, json.loads(answer.read())
        except urllib.error.HTTPError as exc:
            return exc.code, json.loads(exc.read())

    def rows(self) -> list[dict[str, Any]]:
        store = DeltaStore(str(self.root / "lakehouse"))
        return store.read("events").to_table().to_pylist() if store.exists("events") else []

    def close(self) -> None:
        self.server.stop()
        self.stop.set()
        self.thread.join(timeout=30)
        http_push.buffer_of("events").close("stopped")


@pytest.fixture
def stream(tmp_path: Path) -> Iterator[Stream]:
    s = Stream(tmp_path / "p")
    try:
        yield s
    finally:
        s.close()


def test_an_answer_means_the_events_are_committed(stream: Stream) -> None:
    status, body = stream.post(b'{"id": 1, "v": "a"}\n{"id": 2, "v": "b"}\n')
    assert (status, body["events"]) == (200, 2)
    rows = stream.rows()  # read right after the answer: already in the table
    assert sorted(r["id"] for r in rows) == [1, 2]
    assert all(r["_received_at"] is not None for r in rows)


def test_concurrent_requests_share_commits(stream: Stream) -> None:
    def send(i: int) -> int:
        body = "".join(json.dumps({"id": i * 10 + j}) + "\n" for j in range(5)).encode()
        return int(stream.post(body)[0])

    with ThreadPoolExecutor(16) as pool:
        statuses = list(pool.map(send, range(40)))
    assert statuses == [200] * 40
    ids = sorted(r["id"] for r in stream.rows())
    assert ids == sorted(i * 10 + j for i in range(40) for j in range(5))
    flow = stream.loop.flows["events"]
    assert flow.batches < 40  # group commit: fewer commits than requests


def test_bad_bodies_unknown_datasets_and_repeated_keys(stream: Stream) -> None:
    status, body = stream.post(b'{"id": 1}\n{broken\n')
    assert status == 400 and body["problems"][0].startswith("line 2: invalid JSON")
    assert stream.post(b'{"id": 1}', path="/ingest/nope")[0] == 404
    assert stream.rows() == []
    assert stream.post(b'{"id": 7}', key="order-7")[1] == {"events": 1, "requests": 1}
    again = stream.post(b'{"id": 7}', key="order-7")
    assert again == (200, {"events": 1, "duplicate": True})
    assert [r["id"] for r in stream.rows()] == [7]


def test_committed_keys_survive_a_restart(tmp_path: Path) -> None:
    first = Stream(tmp_path / "p")
    try:
        assert first.post(b'{"id": 1}', key="k-1")[0] == 200
    finally:
        first.close()
    # A new process (e.g. after a crash between the commit and the answer): the client
    # sends the request again with its key; it is recognised from the table's commits.
    second = Stream(tmp_path / "p")
    try:
        assert second.post(b'{"id": 1}', key="k-1") == (200, {"events": 1, "duplicate": True})
        assert second.post(b'{"id": 2}', key="k-2")[0] == 200
        assert sorted(r["id"] for r in second.rows()) == [1, 2]
    finally:
        second.close()


def test_a_batch_that_is_not_committed_is_answered_503(tmp_path: Path) -> None:
    s = Stream(
        tmp_path / "p",
        header="expect: {v_positive: v >= 0}\non_violation: fail",
    )
    try:
        status, body = s.post(b'{"id": 1, "v": -5}')
        assert status == 503 and "not stored" in body["error"]
        assert s.rows() == []
        assert s.post(b'{"id": 2, "v": 5}')[0] == 200
        assert [r["id"] for r in s.rows()] == [2]
    finally:
        s.close()


def test_a_closed_buffer_releases_its_requests_and_a_new_endpoint_renews_it(
    tmp_path: Path,
) -> None:
    buffer = http_push.buffer_of("closing")
    waiting = PushRequest([b'{"a": 1}'], None)
    assert buffer.submit(waiting)
    buffer.close("not stored: the stream stopped")
    assert waiting.done.is_set() and waiting.status == 503
    assert not buffer.submit(PushRequest([b'{"a": 2}'], None))
    server = PushServer("127.0.0.1", 0, {"closing": HttpPushConfig()})
    try:
        renewed = http_push.buffer_of("closing")
        assert isinstance(renewed, PushBuffer) and renewed is not buffer and not renewed.closed
    finally:
        server.http.server_close()
