"""The HTTP endpoint of push sources: ``POST /ingest/{dataset}``, answered after the commit.

Started by ``lakeforge stream --http HOST:PORT`` for the streaming tables whose source is
``http_push`` (``sources/http_push.py`` has the semantics). Standard library only: one
thread per connection, each waiting on its request's commit.

Answers:

- ``200 {"events": n, "requests": r}``: stored (``"duplicate": true``: stored before, under
  the same ``Idempotency-Key``);
- ``400 {"error", "problems"}``: the body is not JSON objects (nothing stored);
- ``404``: no such push dataset here; ``413``: body over ``max_body_bytes``;
- ``503``: not stored (the batch failed, or the stream is stopping) — send it again;
- ``504``: no commit within ``request_timeout``: it may still be stored — send it again
  with the same ``Idempotency-Key`` to be sure it is stored once.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from lakeforge.sources.http_push import (
    HttpPushConfig,
    PushRequest,
    buffer_of,
    open_buffer,
    split_events,
)

_MAX_KEY = 200
_PREFIX = "/ingest/"


class _Server(ThreadingHTTPServer):
    # Many clients connect at once (each waits for its commit): the default backlog of 5
    # would reset their connections.
    request_queue_size = 1024


class PushServer:
    """Serves ``POST /ingest/{dataset}`` for ``datasets`` until :meth:`stop`."""

    def __init__(self, host: str, port: int, datasets: Mapping[str, HttpPushConfig]) -> None:
        self.datasets = dict(datasets)
        for name in self.datasets:
            open_buffer(name)  # a buffer closed by an earlier stream of this process is renewed
        server = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def do_GET(self) -> None:
                if self.path.rstrip("/") == "/health":
                    self._answer(200, {"datasets": sorted(server.datasets)})
                else:
                    self._answer(404, {"error": "POST /ingest/{dataset}; GET /health"})

            def do_POST(self) -> None:
                status, body = server.handle(self.path, dict(self.headers.items()), self._body)
                self._answer(status, body)

            def _body(self, limit: int) -> bytes | None:
                length = int(self.headers.get("Content-Length") or 0)
                if length > limit:
                    return None
                return self.rfile.read(length)

            def _answer(self, status: int, body: dict[str, Any]) -> None:
                data = json.dumps(body).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass  # requests are counted in the stream's metrics, not logged one by one

        self.http = _Server((host, port), Handler)
        self.http.daemon_threads = True
        self._thread = threading.Thread(
            target=self.http.serve_forever, kwargs={"poll_interval": 0.1}, daemon=True
        )

    @property
    def address(self) -> str:
        host, port = self.http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        """Stop accepting requests; the waiting ones are released by the buffers' close."""
        self.http.shutdown()
        self.http.server_close()

    def handle(self, path: str, headers: dict[str, str], read: Any) -> tuple[int, dict[str, Any]]:
        if not path.startswith(_PREFIX):
            return 404, {"error": "POST /ingest/{dataset}"}
        dataset = path[len(_PREFIX) :].strip("/")
        config = self.datasets.get(dataset)
        if config is None:
            return 404, {
                "error": f"no push dataset {dataset!r} here",
                "datasets": sorted(self.datasets),
            }
        body = read(config.max_body_bytes)
        if body is None:
            return 413, {"error": f"body over {config.max_body_bytes:,} bytes"}
        events, problems = split_events(body)
        if problems:
            return 400, {
                "error": "not stored: the body must be JSON objects",
                "problems": problems[:20],
            }
        key = next((v for k, v in headers.items() if k.lower() == "idempotency-key"), None)
        if key is not None and not 0 < len(key) <= _MAX_KEY:
            return 400, {"error": f"Idempotency-Key must be 1 to {_MAX_KEY} characters"}
        request = PushRequest(events, key)
        if not buffer_of(dataset).submit(request):
            return 503, {"error": "not stored: the stream is stopping"}
        if not request.done.wait(config.request_timeout):
            return 504, {
                "error": "no commit yet: it may still be stored; send it again with the same "
                "Idempotency-Key to store it once"
            }
        return request.status, request.outcome
